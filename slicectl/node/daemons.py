"""Node bring-up and control: the engine, the image, sshd, and the node manager process."""

from __future__ import annotations

import itertools
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from slicectl import code_hash
from slicectl.core.errors import ConnectionFailed, EngineError
from slicectl.ipc.rpc import Client
from slicectl.node.config import NodeConfig
from slicectl.node.dockerd import Say, ensure_network, start_engine
from slicectl.node.engine import engine_client
from slicectl.node.image import ensure_reference_image
from slicectl.node.sshd import ensure_sshd, install_login

LOG_DIR = Path("/var/log/slicectl")


def config_env(cfg: NodeConfig) -> dict[str, str]:
    """The environment that makes a child process see ``cfg`` (inverse of from_env)."""
    return {
        "SLICECTL_NODE_ID": cfg.node_id,
        "SLICECTL_STATE_DIR": str(cfg.state_dir),
        "SLICECTL_RUN_DIR": str(cfg.run_dir),
        "SLICECTL_ENGINE_SOCK": str(cfg.engine_sock),
        "SLICECTL_NETWORK": cfg.network,
        "SLICECTL_SUBNET": cfg.subnet,
        "SLICECTL_BRIDGE": cfg.bridge,
        "SLICECTL_IFB": cfg.ifb,
        "SLICECTL_CGROUP_PARENT": cfg.cgroup_parent,
        "SLICECTL_IMAGE": cfg.image,
        "SLICECTL_SSH_PORT": str(cfg.ssh_port),
        "SLICECTL_HOSTNAME": cfg.hostname,
        "SLICECTL_OPERATOR": cfg.operator,
    }


def nm_client(cfg: NodeConfig, timeout: float = 300) -> Client:
    return Client(cfg.nm_sock, timeout=timeout)


@dataclass(frozen=True)
class HostDaemon:
    """A host-side node daemon run as ``python -m <module>``. Its pidfile holds its pid and
    the code hash it runs, so a daemon running stale code is told apart and restarted."""

    name: str
    module: str
    args: tuple[str, ...] = ()

    def pidfile(self, cfg: NodeConfig) -> Path:
        return cfg.run_dir / f"{self.name}.pid"

    def default_log(self, cfg: NodeConfig) -> Path:
        return LOG_DIR / f"{self.name}-{cfg.node_id}.log"


NM = HostDaemon("nm", "slicectl.node.nm.daemon")
SNIFFER = HostDaemon("sniffer", "slicectl.node.sniffer")
SHIM = HostDaemon("shim", "slicectl.node.shim")


def daemon_logging() -> None:
    """Log lines as every node daemon writes them to its log file."""
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")


def write_pidfile(path: Path) -> None:
    path.write_text(f"{os.getpid()} {code_hash()}\n")


def remove_pidfile(path: Path) -> None:
    """Remove the pidfile if it is still this process's."""
    try:
        if path.read_text().split()[0] == str(os.getpid()):
            path.unlink()
    except (OSError, IndexError):
        pass


def daemon_running(cfg: NodeConfig, d: HostDaemon) -> tuple[int, str] | None:
    """(pid, code hash) of the running daemon, checked against /proc; None if none runs."""
    try:
        fields = d.pidfile(cfg).read_text().split()
        pid, code = int(fields[0]), (fields[1] if len(fields) > 1 else "")
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError, IndexError):
        return None
    return (pid, code) if runs_our_module(cmdline) else None


def runs_our_module(cmdline: list[bytes]) -> bool:
    """Whether a command line is ``python -m slicectl...``: the pidfile's process is then
    one of our daemons, also one started under an older module name (it runs stale code
    and is restarted), and a reused pid of another program is not mistaken for it."""
    return any(a == b"-m" and b.split(b".")[0] == b"slicectl"
               for a, b in itertools.pairwise(cmdline))


def serve_daemon(pidfile: Path, stop: threading.Event, run: Callable[[], None],
                 close: Callable[[], None]) -> None:
    """Run a daemon's loop: SIGTERM/SIGINT set ``stop``; the pidfile (pid and code hash)
    exists while it runs; ``close`` runs however the loop ends."""
    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    write_pidfile(pidfile)
    try:
        run()
    finally:
        close()
        remove_pidfile(pidfile)


def daemon_pid(cfg: NodeConfig, d: HostDaemon) -> int | None:
    running = daemon_running(cfg, d)
    return running[0] if running else None


def nm_pid(cfg: NodeConfig) -> int | None:
    return daemon_pid(cfg, NM)


def nm_answers(cfg: NodeConfig) -> bool:
    try:
        nm_client(cfg, timeout=10).call("status")
        return True
    except ConnectionFailed:
        return False


def socket_answers(path: Path, kind: int = socket.SOCK_STREAM) -> Callable[[NodeConfig], bool]:
    """A readiness check: a unix socket at ``path`` accepts a connection."""
    def check(cfg: NodeConfig) -> bool:
        with socket.socket(socket.AF_UNIX, kind) as s:
            try:
                s.connect(str(path))
                return True
            except OSError:
                return False
    return check


def start_daemon(cfg: NodeConfig, d: HostDaemon, ready: Callable[[NodeConfig], bool],
                 say: Say, log_path: Path | None = None, timeout_s: float = 120) -> int:
    """Start ``d`` unless it runs this code and is ready; return its pid.

    Raises:
        EngineError: it exited or did not become ready in time (the message names its log).
    """
    running = daemon_running(cfg, d)
    if running is not None:
        pid, code = running
        if code == code_hash() and ready(cfg):
            return pid
        say(f"{d.name} (pid {pid}) runs other code ({code or 'unknown'}); restarting it")
        stop_daemon(cfg, d)
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    log_path = log_path or d.default_log(cfg)
    env = {**os.environ, **config_env(cfg)}
    with open(log_path, "ab") as logf:
        proc = subprocess.Popen([sys.executable, "-m", d.module, *d.args], env=env,
                                stdin=subprocess.DEVNULL, stdout=logf, stderr=logf,
                                start_new_session=True, close_fds=True)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log_path.read_text(errors="replace").strip().splitlines()[-2:]
            raise EngineError(f"{d.name} exited with status {proc.returncode}: "
                              f"{' | '.join(tail)} (log: {log_path})")
        if daemon_pid(cfg, d) == proc.pid and ready(cfg):
            say(f"{d.name} {cfg.node_id} running (pid {proc.pid})")
            return proc.pid
        time.sleep(0.05)
    raise EngineError(f"{d.name}: not ready within {timeout_s:.0f}s (log: {log_path})")


def stop_daemon(cfg: NodeConfig, d: HostDaemon, timeout_s: float = 15) -> bool:
    """Stop ``d`` (SIGTERM, then SIGKILL); False if it was not running."""
    pid = daemon_pid(cfg, d)
    if pid is None:
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not Path(f"/proc/{pid}").exists() or daemon_pid(cfg, d) is None:
            return True
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    return True


def start_nm(cfg: NodeConfig, say: Say, log_path: Path | None = None,
             timeout_s: float = 120) -> int:
    """Start the node manager daemon unless it answers with this code; return its pid."""
    return start_daemon(cfg, NM, nm_answers, say, log_path, timeout_s)


def stop_nm(cfg: NodeConfig, timeout_s: float = 15) -> bool:
    """Stop the node manager (SIGTERM, then SIGKILL). Slivers keep running."""
    return stop_daemon(cfg, NM, timeout_s)


def sniffer_ready(cfg: NodeConfig) -> bool:
    return socket_answers(cfg.sniffer_dir / "records.sock")(cfg)


def shim_ready(cfg: NodeConfig) -> bool:
    return socket_answers(cfg.shim_dir / "raw.sock", socket.SOCK_SEQPACKET)(cfg)


#: The node's host daemons in start order, with their readiness checks.
HOST_DAEMONS: tuple[tuple[HostDaemon, Callable[[NodeConfig], bool]], ...] = (
    (NM, nm_answers), (SNIFFER, sniffer_ready), (SHIM, shim_ready),
)


def start_host_daemons(cfg: NodeConfig, say: Say,
                       log_for: Callable[[HostDaemon], Path | None] = lambda d: None) -> None:
    for d, ready in HOST_DAEMONS:
        start_daemon(cfg, d, ready, say, log_for(d))


def stop_host_daemons(cfg: NodeConfig) -> list[str]:
    """Stop the daemons in reverse order; the names of those that were running."""
    return [d.name for d, _ in reversed(HOST_DAEMONS) if stop_daemon(cfg, d)]


def prepare(cfg: NodeConfig, env: Mapping[str, str], say: Say) -> str:
    """Everything but the node manager: engine, network, image, login shell, sshd."""
    for d in (cfg.state_dir, cfg.run_dir):
        d.mkdir(parents=True, exist_ok=True)
    os.chmod(cfg.state_dir, 0o755)
    start_engine(cfg, say)
    client = engine_client(cfg.engine_url)
    try:
        ensure_network(client, cfg.network, cfg.subnet, cfg.bridge)
        tag = ensure_reference_image(client, env, say)
    finally:
        client.close()
    install_login()
    ensure_sshd(cfg, say)
    return tag
