"""Node bring-up and control: the engine, the image, sshd, and the node manager process."""

from __future__ import annotations

import functools
import itertools
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

import slicectl
from slicectl import code_hash
from slicectl.core.errors import ConnectionFailed, EngineError
from slicectl.core.supervision import DaemonState, Program, RestartPolicy
from slicectl.ipc.rpc import Client
from slicectl.node.config import NodeConfig
from slicectl.node.dockerd import Say, ensure_network, start_engine
from slicectl.node.engine import engine_client
from slicectl.node.image import ensure_reference_image
from slicectl.node.sshd import ensure_sshd, install_login
from slicectl.node.supervisor import Supervisord, Systemd, kill_unsupervised, node_supervisor

LOG_DIR = Path("/var/log/slicectl")
#: How the supervisor treats every host daemon (restart at once, logs rotate at 10 MiB).
POLICY = RestartPolicy()
#: Supervisor states that, after we started a daemon, say it died.
DOWN = ("FATAL", "BACKOFF", "STOPPED", "EXITED")
#: Longest log record a daemon writes, its traceback included (bytes of UTF-8).
MAX_LOG_RECORD = 4096


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
        "SLICECTL_SENSORS_PORT": str(cfg.sensors_port),
        "SLICECTL_AUDIT_PORT": str(cfg.audit_port),
        "SLICECTL_OFFERS_DNS": "1" if cfg.offers_dns else "0",
        "SLICECTL_PLC_PORT": str(cfg.plc_port),
        "SLICECTL_AGENT_SLICE": cfg.agent_slice,
        "SLICECTL_ADMIN_SLICE": cfg.admin_slice,
        "SLICECTL_WARM_POOL": str(cfg.warm_pool),
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
VSYS = HostDaemon("vsys", "slicectl.node.vsys")


def bound_record(text: str, limit: int = MAX_LOG_RECORD) -> str:
    """``text`` cut to ``limit`` bytes of UTF-8, saying how much was cut: no record, message
    or traceback (a slice can put its bytes into both) makes a log line longer."""
    data = text.encode("utf-8", "replace")
    if len(data) <= limit:
        return text
    note = f" ... [{len(data) - limit} bytes cut]"
    keep = data[:max(0, limit - len(note))].decode("utf-8", "ignore")
    return keep + note


class BoundedFormatter(logging.Formatter):
    """A formatter whose every record (traceback and stack included) is at most
    ``limit`` bytes."""

    def __init__(self, fmt: str, limit: int = MAX_LOG_RECORD) -> None:
        super().__init__(fmt)
        self.limit = limit

    def format(self, record: logging.LogRecord) -> str:
        return bound_record(super().format(record), self.limit)


def daemon_logging(limit: int = MAX_LOG_RECORD) -> None:
    """Log lines as every node daemon writes them to its log file (stderr, which the
    supervisor writes to a size-rotated file or the journal), each at most ``limit``
    bytes."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(BoundedFormatter("%(asctime)s %(name)s %(levelname)s %(message)s",
                                          limit))
    logging.basicConfig(level=logging.INFO, handlers=[handler], force=True)


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


def listen_for_slivers(path: Path, backlog: int) -> socket.socket:
    """A SOCK_SEQPACKET socket listening at ``path`` (its directory made), open to any
    process of a sliver (who it is comes from its credentials, never from the mode);
    swapped in atomically, so a client never finds a half-made socket."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".new")
    tmp.unlink(missing_ok=True)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        listener.bind(str(tmp))
        os.chmod(tmp, 0o666)
        listener.listen(backlog)
        os.replace(tmp, path)
    except BaseException:
        listener.close()
        raise
    return listener


def source_root() -> Path:
    """The directory holding the ``slicectl`` package this process runs: supervised daemons
    run there (``python -m`` puts it first on their path), so a worktree's daemons run
    the worktree's code."""
    return Path(slicectl.__file__).resolve().parents[1]


def program_name(cfg: NodeConfig, d: HostDaemon) -> str:
    return f"slicectl-{d.name}-{cfg.node_id}"


def program(cfg: NodeConfig, d: HostDaemon, log_path: Path) -> Program:
    """``d`` of node ``cfg`` as a supervised program (pure). Its environment carries the
    code hash, so that a supervisor told of new code restarts it."""
    src = str(source_root())
    env = {**config_env(cfg), "PYTHONPATH": src, "PYTHONUNBUFFERED": "1", "LANG": "C.UTF-8",
           "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
           "SLICECTL_CODE": code_hash()}
    return Program(name=program_name(cfg, d), argv=(sys.executable, "-m", d.module, *d.args),
                   cwd=src, log=str(log_path), env=tuple(sorted(env.items())),
                   description=f"slicectl {d.name} of node {cfg.node_id}",
                   after=() if d == NM else (program_name(cfg, NM),))


@functools.cache
def supervisor() -> Supervisord | Systemd:
    """The node's supervisor (systemd when PID 1, else our supervisord); one per process,
    as its code is."""
    src = str(source_root())
    return node_supervisor(POLICY, (sys.executable, "-m", "slicectl.node.restarts"), src,
                           (("PYTHONPATH", src), ("SLICECTL_CODE", code_hash())))


def install_programs(cfg: NodeConfig, log_for: Callable[[HostDaemon], Path | None],
                     owner_pid: int | None = None) -> None:
    """Give the supervisor this node's daemons (none is started here). ``owner_pid``: a
    private node's, removed with :func:`remove_programs` or once that process is gone."""
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    sup = supervisor()
    sup.install(cfg.node_id, [program(cfg, d, log_for(d) or d.default_log(cfg))
                              for d, _ in HOST_DAEMONS], owner_pid)


def remove_programs(cfg: NodeConfig) -> None:
    """Stop and forget this node's programs (a private node's teardown)."""
    supervisor().remove(cfg.node_id)


def daemon_state(cfg: NodeConfig, d: HostDaemon) -> DaemonState:
    return supervisor().state(program_name(cfg, d))


def start_daemon(cfg: NodeConfig, d: HostDaemon, ready: Callable[[NodeConfig], bool],
                 say: Say, log_path: Path | None = None, timeout_s: float = 120) -> int:
    """Have the supervisor run ``d`` (installed by :func:`install_programs`) and wait until
    it is ready; return its pid. One running stale code, or unsupervised (started by an
    older slicectl), is replaced.

    Raises:
        EngineError: it died or did not become ready in time (the message names its log).
    """
    sup = supervisor()
    name = program_name(cfg, d)
    log_path = log_path or d.default_log(cfg)
    st = sup.state(name)
    if st.state == "ABSENT":
        raise EngineError(f"{name}: expected a program installed in {sup.kind}, found none "
                          "(install_programs first)")
    running = daemon_running(cfg, d)
    if running is not None and running[0] != st.pid:
        say(f"{d.name} (pid {running[0]}) runs unsupervised; replacing it")
        kill_unsupervised(running[0])
        running = None
    if running is not None and running[1] != code_hash():
        say(f"{d.name} (pid {running[0]}) runs other code ({running[1] or 'unknown'}); "
            "restarting it")
        sup.stop(name)
    elif st.state in ("RUNNING", "STARTING") and st.pid and ready(cfg):
        return st.pid
    # One the supervisor is bringing back (it died young: BACKOFF) is waited for; one we
    # start and that dies is reported.
    ours = False
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        st = sup.state(name)
        if not ours and st.state in ("STOPPED", "EXITED", "FATAL"):
            sup.start(name)
            ours = True
        elif st.state == "ABSENT" or (ours and st.state in DOWN):
            raise EngineError(f"{d.name}: expected it running, found {st.state} under "
                              f"{sup.kind} ({st.detail or 'no detail'}): "
                              f"{sup.log_tail(str(log_path))} (log: {log_path})")
        elif st.pid and daemon_pid(cfg, d) == st.pid and ready(cfg):
            say(f"{d.name} {cfg.node_id} running under {sup.kind} (pid {st.pid})")
            return st.pid
        time.sleep(0.05)
    raise EngineError(f"{d.name}: not ready within {timeout_s:.0f}s (log: {log_path})")


def stop_daemon(cfg: NodeConfig, d: HostDaemon, timeout_s: float = 15) -> bool:
    """Stop ``d`` (the supervisor sends SIGTERM, then SIGKILL) and keep it stopped; also
    an unsupervised one. False if it was not running."""
    sup = supervisor()
    st = sup.state(program_name(cfg, d))
    was = st.state in ("RUNNING", "STARTING", "BACKOFF")
    if was:
        sup.stop(st.name)
    pid = daemon_pid(cfg, d)
    if pid is not None and pid != st.pid:
        kill_unsupervised(pid, timeout_s)
        was = True
    return was


def start_nm(cfg: NodeConfig, say: Say, log_path: Path | None = None,
             timeout_s: float = 120) -> int:
    """Start the node manager daemon (installed by :func:`install_programs`) unless it
    answers with this code; return its pid."""
    return start_daemon(cfg, NM, nm_answers, say, log_path, timeout_s)


def stop_nm(cfg: NodeConfig, timeout_s: float = 15) -> bool:
    """Stop the node manager (SIGTERM, then SIGKILL). Slivers keep running."""
    return stop_daemon(cfg, NM, timeout_s)


def sniffer_ready(cfg: NodeConfig) -> bool:
    return socket_answers(cfg.sniffer_dir / "records.sock")(cfg)


def shim_ready(cfg: NodeConfig) -> bool:
    return socket_answers(cfg.shim_dir / "raw.sock", socket.SOCK_SEQPACKET)(cfg)


def vsys_ready(cfg: NodeConfig) -> bool:
    return socket_answers(cfg.vsys_dir / "vsys.sock", socket.SOCK_SEQPACKET)(cfg)


#: The node's host daemons in start order, with their readiness checks.
HOST_DAEMONS: tuple[tuple[HostDaemon, Callable[[NodeConfig], bool]], ...] = (
    (NM, nm_answers), (SNIFFER, sniffer_ready), (SHIM, shim_ready), (VSYS, vsys_ready),
)


def start_host_daemons(cfg: NodeConfig, say: Say,
                       log_for: Callable[[HostDaemon], Path | None] = lambda d: None,
                       owner_pid: int | None = None) -> None:
    """Install the node's daemons in the supervisor and start them in order."""
    install_programs(cfg, log_for, owner_pid)
    for d, ready in HOST_DAEMONS:
        start_daemon(cfg, d, ready, say, log_for(d))


def restart_running(cfg: NodeConfig, say: Say) -> list[str]:
    """Restart those of the node's daemons that run now, in order (so that they read the
    node policy again); the names of those restarted. Slivers keep running."""
    running = [(d, ready) for d, ready in HOST_DAEMONS if stop_daemon(cfg, d)]
    for d, ready in running:
        start_daemon(cfg, d, ready, say)
    return [d.name for d, _ in running]


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
