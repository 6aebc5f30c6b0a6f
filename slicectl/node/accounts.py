"""Host accounts for slices: ``ssh slice@node`` logs into one, whose shell enters the sliver.

Each slice has a host account named after it, in group ``slicectl-slices``, whose home is
the sliver's state directory (root-owned). sshd reads ``authorized_keys`` there at every
login, so key changes take effect at once. ``login.json`` tells the login shell which
container to enter; only root writes either file.
"""

from __future__ import annotations

import json
import os
import pwd
import re
from pathlib import Path

from slicectl.core.errors import StateError, ValidationError
from slicectl.core.labels import SLICE_GROUP
from slicectl.node.hostcmd import run

ACCOUNT_GECOS = "slicectl slice"
UID_MIN, UID_MAX = 20000, 59999
LOGIN_SHELL = Path("/usr/local/lib/slicectl/vsh")

_KEY = re.compile(
    r"^(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp(256|384|521)|sk-ssh-ed25519@openssh\.com|"
    r"sk-ecdsa-sha2-nistp256@openssh\.com) [A-Za-z0-9+/]+={0,3}( [^\r\n]*)?$"
)
_EMAIL = re.compile(r"^[^@\s<>\"']+@[^@\s<>\"']+$")


def validate_keys(keys: object) -> list[str]:
    """OpenSSH public keys, one per entry, without options (no ``command=``).

    Raises:
        ValidationError: naming the first bad entry.
    """
    if not isinstance(keys, (list, tuple)):
        raise ValidationError("keys", "a list of OpenSSH public keys", keys)
    out: list[str] = []
    for i, key in enumerate(keys):
        if not isinstance(key, str) or not _KEY.match(key.strip()):
            shown = key if not isinstance(key, str) or len(key) < 60 else key[:57] + "..."
            raise ValidationError(f"keys[{i}]", "an OpenSSH public key such as "
                                  "'ssh-ed25519 AAAA... comment'", shown)
        out.append(key.strip())
    return out


def validate_contacts(contacts: object) -> list[str]:
    if not isinstance(contacts, (list, tuple)):
        raise ValidationError("contacts", "a list of e-mail addresses", contacts)
    for i, c in enumerate(contacts):
        if not isinstance(c, str) or not _EMAIL.match(c) or len(c) > 254:
            raise ValidationError(f"contacts[{i}]", "an e-mail address", c)
    return list(contacts)


def write_atomic(path: Path, text: str, mode: int) -> None:
    """Replace ``path`` with ``text`` at once (a reader sees the old file or the new)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


class HostAccounts:
    """Creates and removes the host side of slices: accounts and their files."""

    def __init__(self, group: str = SLICE_GROUP, shell: Path = LOGIN_SHELL) -> None:
        self.group = group
        self.shell = shell

    def ensure_group(self) -> None:
        run(["groupadd", "-f", self.group], what=f"group {self.group}")

    def create(self, name: str, home: Path) -> int:
        """Create (or adopt our own existing) account ``name``; return its uid.

        Raises:
            StateError: an account of that name exists that slicectl did not make.
        """
        try:
            pw = pwd.getpwnam(name)
        except KeyError:
            pw = None
        if pw is not None:
            if pw.pw_gecos != ACCOUNT_GECOS or Path(pw.pw_dir) != home:
                raise StateError(
                    f"slice {name}: expected no host account of that name, found one "
                    f"slicectl did not create (home {pw.pw_dir})"
                )
            return pw.pw_uid
        self.ensure_group()
        run(
            ["useradd", "--no-create-home", "--home-dir", str(home), "--shell", str(self.shell),
             "--gid", self.group, "--comment", ACCOUNT_GECOS, "--no-user-group",
             "-K", f"UID_MIN={UID_MIN}", "-K", f"UID_MAX={UID_MAX}",
             # a slice account maps no subordinate ids: slivers' user namespaces are the
             # engine's (dockerd.REMAP_USER), never a slice's
             "-K", "SUB_UID_COUNT=0", "-K", "SUB_GID_COUNT=0", "--password", "*", name],
            what=f"host account for slice {name}",
        )
        return pwd.getpwnam(name).pw_uid

    def remove(self, name: str, home: Path) -> None:
        """Remove account ``name`` if it is ours (and this node's); absent is fine."""
        try:
            pw = pwd.getpwnam(name)
        except KeyError:
            return
        if pw.pw_gecos == ACCOUNT_GECOS and Path(pw.pw_dir) == home:
            # --root / (a chroot to where it is) makes userdel skip its check for
            # processes of the user, a read of every process of the host: 20 ms here, 94
            # ms with 2,500 more (a node of 1,000 slivers). --force removes a busy
            # account all the same, and the sliver's processes went with its container.
            run(["userdel", "--force", "--root", "/", name],
                what=f"host account for slice {name}")

    def ours(self, homes_under: Path) -> list[str]:
        """Names of our accounts whose home lies under ``homes_under``."""
        return [
            pw.pw_name for pw in pwd.getpwall()
            if pw.pw_gecos == ACCOUNT_GECOS and Path(pw.pw_dir).parent == homes_under
        ]

    @staticmethod
    def write_keys(home: Path, keys: list[str]) -> None:
        write_atomic(home / "authorized_keys", "".join(k + "\n" for k in keys), 0o644)

    @staticmethod
    def write_login(home: Path, *, container: str, engine_sock: Path, uid: int,
                    slice_name: str, nm_sock: Path) -> None:
        info = {"container": container, "engine_sock": str(engine_sock), "uid": uid,
                "home": f"/home/{slice_name}", "slice": slice_name, "nm_sock": str(nm_sock)}
        write_atomic(home / "login.json", json.dumps(info) + "\n", 0o644)

    @staticmethod
    def write_initscript(etc: Path, text: str) -> None:
        if text:
            write_atomic(etc / "rc.vinit", text if text.endswith("\n") else text + "\n", 0o755)
        else:
            (etc / "rc.vinit").unlink(missing_ok=True)
