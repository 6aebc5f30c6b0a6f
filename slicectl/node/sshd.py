"""The node's sshd for slices: ``ssh slice@node`` lands inside the slice's sliver.

slicectl runs its own sshd instance (config ``/etc/slicectl/sshd_config``) that admits
only slice accounts, by key, and forwards nothing: every session goes through the login
shell ``vsh`` into the sliver.
"""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path

from slicectl.core.errors import EngineError
from slicectl.core.labels import SLICE_GROUP
from slicectl.node.config import NodeConfig
from slicectl.node.dockerd import Say
from slicectl.node.hostcmd import run

SSHD = "/usr/sbin/sshd"
CONF_DIR = Path("/etc/slicectl")
LIB_DIR = Path("/usr/local/lib/slicectl")
SUDOERS = Path("/etc/sudoers.d/slicectl")
ASSETS = Path(__file__).resolve().parent / "assets"


def sshd_config(port: int, host_key: Path, pidfile: Path, group: str = SLICE_GROUP) -> str:
    """The sshd configuration text (pure)."""
    return "\n".join([
        "# slicectl: sshd for slice accounts; written by `slicectl node up`.",
        f"Port {port}",
        f"HostKey {host_key}",
        f"PidFile {pidfile}",
        f"AllowGroups {group}",
        "AuthorizedKeysFile %h/authorized_keys",
        "PubkeyAuthentication yes",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "PermitRootLogin no",
        "UsePAM no",
        "StrictModes yes",
        # Forwarding or user rc files would run on the host, outside the sliver.
        "AllowTcpForwarding no",
        "AllowStreamLocalForwarding no",
        "AllowAgentForwarding no",
        "X11Forwarding no",
        "PermitTunnel no",
        "PermitUserRC no",
        "PermitUserEnvironment no",
        "PrintMotd no",
        "PrintLastLog no",
        "AcceptEnv LANG LC_*",
        # Run through the login shell, so sftp (and scp, which uses it) runs in the sliver.
        "Subsystem sftp /usr/lib/openssh/sftp-server",
        "",
    ])


def sudoers_text(group: str = SLICE_GROUP) -> str:
    return (
        "# slicectl: slice accounts may run only the sliver entry program as root.\n"
        f'Defaults:%{group} !lecture, env_keep += "SSH_CONNECTION SSH_CLIENT SSH_TTY LANG"\n'
        f"%{group} ALL=(root) NOPASSWD: {LIB_DIR}/vsh-enter\n"
    )


def install_login() -> None:
    """Install the login shell, its root helper and the sudoers rule (idempotent)."""
    LIB_DIR.mkdir(parents=True, exist_ok=True)
    for name in ("vsh", "vsh-enter"):
        dst = LIB_DIR / name
        tmp = dst.with_name(f".{name}.tmp")
        shutil.copyfile(ASSETS / name, tmp)
        os.chmod(tmp, 0o755)
        os.replace(tmp, dst)
    tmp = SUDOERS.with_name(".slicectl.tmp")
    tmp.write_text(sudoers_text())
    os.chmod(tmp, 0o440)
    run(["visudo", "-c", "-q", "-f", str(tmp)], what="sudoers rule for slices")
    os.replace(tmp, SUDOERS)


def _alive(pidfile: Path) -> int | None:
    try:
        pid = int(pidfile.read_text().strip())
        exe = os.readlink(f"/proc/{pid}/exe")
    except (OSError, ValueError):
        return None
    return pid if exe.endswith("/sshd") else None


def ensure_sshd(cfg: NodeConfig, say: Say) -> None:
    """Write the config, make a host key, and start (or reload) the node's sshd."""
    if not Path(SSHD).exists():
        raise EngineError(f"{SSHD}: not installed; run scripts/install-host.sh")
    CONF_DIR.mkdir(parents=True, exist_ok=True)
    key = CONF_DIR / "ssh_host_ed25519_key"
    if not key.exists():
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)],
            what="sshd host key")
    pidfile = cfg.run_dir / "sshd.pid"
    conf = CONF_DIR / "sshd_config"
    text = sshd_config(cfg.ssh_port, key, pidfile)
    changed = not conf.exists() or conf.read_text() != text
    if changed:
        conf.write_text(text)
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    run([SSHD, "-t", "-f", str(conf)], what="sshd configuration check")
    pid = _alive(pidfile)
    if pid is not None:
        if changed:
            os.kill(pid, signal.SIGHUP)
            say(f"sshd (pid {pid}) reloaded its configuration")
        return
    run([SSHD, "-f", str(conf)], what=f"sshd on port {cfg.ssh_port}")
    say(f"sshd for slices listening on port {cfg.ssh_port}")


def stop_sshd(cfg: NodeConfig) -> None:
    pid = _alive(cfg.run_dir / "sshd.pid")
    if pid is not None:
        os.kill(pid, signal.SIGTERM)
