"""A slice's persistent state on the host: its home, keys, initscript and attributes.

The home (``<state>/slivers/<slice>``) holds ``authorized_keys`` for sshd, the login
record ``vsh-enter`` reads, and ``etc/`` (``rc.vinit``, ``slice.json``), which is mounted
into the sliver.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from slicectl.core.containerplan import SLIVER_ACCOUNTS_DIR, sliver_accounts
from slicectl.core.errors import ValidationError
from slicectl.core.poolplan import IDENTITY_FILE, identity_text
from slicectl.node.accounts import validate_contacts, validate_keys, write_atomic
from slicectl.node.nm.boundary import Accounts
from slicectl.node.store import SliverRow, Store

MAX_INITSCRIPT = 64 * 1024
MAX_DESCRIPTION = 2048


def validate_initscript(text: object) -> str:
    if not isinstance(text, str) or len(text.encode()) > MAX_INITSCRIPT or "\0" in text:
        raise ValidationError("initscript", f"a script of at most {MAX_INITSCRIPT} bytes",
                              text if not isinstance(text, str) else f"{len(text)} characters")
    return text


def validate_attrs(attrs: object) -> dict[str, Any]:
    """Optional sliver attributes given at bind: keys, contacts, description, initscript."""
    if attrs is None:
        return {}
    if not isinstance(attrs, dict):
        raise ValidationError("attrs", "a struct of keys, contacts, description, initscript",
                              attrs)
    out: dict[str, Any] = {}
    for key, value in attrs.items():
        if key == "keys":
            out["keys"] = validate_keys(value)
        elif key == "contacts":
            out["contacts"] = validate_contacts(value)
        elif key == "description":
            if not isinstance(value, str) or len(value) > MAX_DESCRIPTION:
                raise ValidationError("description", f"text of at most {MAX_DESCRIPTION} "
                                      "characters", value)
            out["description"] = value
        elif key == "initscript":
            out["initscript"] = validate_initscript(value)
        else:
            raise ValidationError(str(key), "one of keys, contacts, description, initscript",
                                  "an unknown attribute", as_text=True)
    return out


class SliceState:
    """Writes and removes what a slice keeps on the host.

    Args:
        slivers_dir: where slices' homes live.
        accounts: the host account layer.
        store: the node's database (the attributes' record).
        node_id: written into each sliver's ``slice.json``.
        engine_sock: the engine socket the login shell enters slivers through.
        nm_sock: the node manager's socket, through which the login shell wakes a dormant
            sliver before it enters it.
        pool_dir: where pooled slivers' ``etc`` directories live (``<xid>/etc``).
    """

    def __init__(self, slivers_dir: Path, accounts: Accounts, store: Store, node_id: str,
                 engine_sock: Path, nm_sock: Path, pool_dir: Path) -> None:
        self.slivers_dir = slivers_dir
        self.pool_dir = pool_dir
        self.accounts = accounts
        self.store = store
        self.node_id = node_id
        self.engine_sock = engine_sock
        self.nm_sock = nm_sock

    def home(self, name: str) -> Path:
        return self.slivers_dir / name

    def etc(self, name: str) -> Path:
        return self.home(name) / "etc"

    def set_attrs(self, sliver: SliverRow, extra: dict[str, Any]) -> None:
        """Record new attributes and write the files that carry them."""
        self.store.update_sliver(sliver.slice, **extra)
        if "keys" in extra:
            self.accounts.write_keys(self.home(sliver.slice), extra["keys"])
        if "initscript" in extra:
            self.accounts.write_initscript(self.etc(sliver.slice), extra["initscript"])

    def prepare(self, sliver: SliverRow) -> int:
        """Make the home, the host account and the files a sliver is created with; return
        the account's uid (recorded if it changed). Idempotent."""
        name = sliver.slice
        home, etc = self.home(name), self.etc(name)
        etc.mkdir(parents=True, exist_ok=True)
        home.chmod(0o755)
        uid = self.accounts.create(name, home)
        if uid != sliver.uid:
            self.store.update_sliver(name, uid=uid)
        self.accounts.write_keys(home, sliver.keys)
        self.accounts.write_initscript(etc, sliver.initscript)
        accounts = etc / SLIVER_ACCOUNTS_DIR
        accounts.mkdir(mode=0o755, exist_ok=True)
        for file, text in sliver_accounts(name, uid).items():
            write_atomic(accounts / file, text, 0o644)
        (etc / "slice.json").write_text(json.dumps(
            {"slice": name, "xid": sliver.xid, "uid": uid, "node": self.node_id}) + "\n")
        write_atomic(etc / IDENTITY_FILE, identity_text(name, uid), 0o644)
        return uid

    def adopt_etc(self, name: str, pooled_etc: Path) -> None:
        """Make a claimed pooled sliver's ``/etc/slicectl`` (``pooled_etc``, where its
        container mounts it from) the slice's ``etc``: a link from the slice's home, so
        the container keeps its mount source across restarts. Idempotent."""
        home, etc = self.home(name), self.etc(name)
        home.mkdir(parents=True, exist_ok=True)
        if etc.is_symlink() and etc.resolve() == pooled_etc.resolve():
            return
        if etc.is_symlink():
            etc.unlink()
        elif etc.exists():
            shutil.rmtree(etc)
        etc.symlink_to(pooled_etc)

    def write_login(self, name: str, container_id: str, uid: int) -> None:
        self.accounts.write_login(self.home(name), container=container_id,
                                  engine_sock=self.engine_sock, uid=uid, slice_name=name,
                                  nm_sock=self.nm_sock)

    def remove(self, name: str) -> None:
        """Remove the slice's host account and home (and a claimed pooled sliver's
        ``etc``, which its home links to)."""
        self.accounts.remove(name, self.home(name))
        etc = self.etc(name)
        if etc.is_symlink():
            pooled = etc.resolve().parent
            if pooled.parent == self.pool_dir.resolve():
                shutil.rmtree(pooled, ignore_errors=True)
        shutil.rmtree(self.home(name), ignore_errors=True)

    def pool_etc(self, xid: int) -> Path:
        return self.pool_dir / str(xid) / "etc"

    def orphans(self, known: set[str]) -> list[str]:
        """Our host accounts that no sliver row claims."""
        return [n for n in self.accounts.ours(self.slivers_dir) if n not in known]
