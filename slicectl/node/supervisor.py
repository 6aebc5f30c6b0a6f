"""The supervisor that keeps the node's host daemons running: systemd when it is PID 1,
else our own supervisord instance (config and socket under ``/run/slicectl/supervisor``,
never a system supervisord's). Both take the programs of :mod:`slicectl.core.supervision`.

Each node (the node itself, or a private test node) installs its programs as one file,
named by its node id; removing the node removes exactly those programs.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import subprocess
import time
import xmlrpc.client
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

from slicectl.core.errors import EngineError
from slicectl.core.supervision import (
    SUPERVISORD,
    DaemonState,
    Program,
    RestartPolicy,
    SupervisordPaths,
    owner_of,
    parse_systemctl_show,
    pick_backend,
    supervisord_file,
    supervisord_main,
    supervisord_state,
    systemd_state,
    systemd_unit,
)
from slicectl.ipc.rpc import unix_proxy
from slicectl.node.hostcmd import run
from slicectl.node.restarts import forget as forget_counts
from slicectl.node.restarts import load as load_counts

SUPERVISORD_BIN = "/usr/bin/supervisord"
SUP_DIR = Path("/run/slicectl/supervisor")
LOG_DIR = Path("/var/log/slicectl")

# supervisord's XML-RPC fault codes (supervisor.xmlrpc.Faults)
BAD_NAME, ALREADY_STARTED, NOT_RUNNING, ALREADY_ADDED, STILL_RUNNING = 10, 60, 70, 90, 91


class Supervisor(Protocol):
    """What the node asks of a supervisor."""

    kind: str

    def install(self, node: str, programs: Sequence[Program], owner_pid: int | None) -> None:
        """Make ``programs`` the node's programs; a changed one is stopped (started again
        by the caller), one no longer listed is stopped and forgotten."""

    def start(self, name: str) -> None: ...

    def stop(self, name: str) -> None: ...

    def state(self, name: str) -> DaemonState: ...

    def remove(self, node: str) -> None:
        """Stop and forget every program of ``node``."""

    def remove_orphans(self) -> list[str]:
        """Remove private nodes whose owning process is gone; their node ids."""


def alive(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()


def _tail(path: str, n: int = 3) -> str:
    try:
        lines = Path(path).read_text(errors="replace").strip().splitlines()[-n:]
    except OSError:
        return "no log"
    return " | ".join(lines)


class Supervisord:
    """Our own supervisord instance, started on first use, driven over XML-RPC."""

    kind = SUPERVISORD

    def __init__(self, policy: RestartPolicy, listener_argv: Sequence[str], cwd: str,
                 listener_env: Sequence[tuple[str, str]] = (), base: Path = SUP_DIR,
                 log_dir: Path = LOG_DIR) -> None:
        self.policy = policy
        self.listener_argv = tuple(listener_argv)
        self.listener_env = tuple(listener_env)
        self.cwd = cwd
        self.base = base
        self.paths = SupervisordPaths(
            socket=str(base / "supervisor.sock"), pidfile=str(base / "supervisord.pid"),
            logfile=str(log_dir / "supervisord.log"), include_dir=str(base / "conf.d"),
            counts=str(base / "restarts.json"))

    @property
    def conf(self) -> Path:
        return self.base / "supervisord.conf"

    def _call(self, method: str, *args: object, timeout: float = 60) -> Any:
        """``supervisor.<method>(*args)``; faults and socket errors come back raw."""
        proxy = unix_proxy(Path(self.paths.socket), timeout)
        return getattr(proxy.supervisor, method)(*args)

    def answers(self) -> bool:
        try:
            return bool(self._call("getState", timeout=5)["statename"] == "RUNNING")
        except (OSError, xmlrpc.client.Error):
            return False

    def ensure_running(self, timeout_s: float = 30) -> None:
        """Start our supervisord unless it answers (idempotent); one that answers with an
        older configuration (the listener's code changed) reloads it.

        Raises:
            EngineError: supervisor is not installed, or did not answer in time.
        """
        text = supervisord_main(self.paths, self.policy, self.listener_argv, self.cwd,
                                self.listener_env)
        if self.answers():
            if not self.conf.exists() or self.conf.read_text() != text:
                with self._lock():
                    self.conf.write_text(text)
                    self._update()
            return
        if not Path(SUPERVISORD_BIN).exists():
            raise EngineError(f"{SUPERVISORD_BIN}: not installed; run scripts/install-host.sh")
        Path(self.paths.include_dir).mkdir(parents=True, exist_ok=True)
        os.chmod(self.base, 0o700)
        Path(self.paths.logfile).parent.mkdir(parents=True, exist_ok=True)
        with self._lock():
            self.conf.write_text(text)
            if self.answers():
                return
            # A clean environment: programs get only what their sections say.
            env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                   "LANG": "C.UTF-8"}
            with open(self.paths.logfile + ".start", "ab") as err:
                rc = subprocess.call([SUPERVISORD_BIN, "-c", str(self.conf)], env=env,
                                     stdin=subprocess.DEVNULL, stdout=err, stderr=err,
                                     start_new_session=True, close_fds=True)
            if rc != 0:
                raise EngineError(f"supervisord -c {self.conf}: expected exit status 0, found "
                                  f"{rc}: {_tail(self.paths.logfile + '.start')}")
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline:
                if self.answers():
                    return
                time.sleep(0.05)
        raise EngineError(f"supervisord at {self.paths.socket}: expected it to answer within "
                          f"{timeout_s:.0f}s, found silence (log: {self.paths.logfile})")

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        """One writer of the include files and of supervisord's program table at a time."""
        self.base.mkdir(parents=True, exist_ok=True)
        with open(self.base / ".lock", "w") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            yield

    def _file(self, node: str) -> Path:
        return Path(self.paths.include_dir) / f"{node}.conf"

    def _update(self) -> None:
        """Apply the include files as ``supervisorctl update`` does."""
        added, changed, removed = self._call("reloadConfig")[0]
        for name in [*removed, *changed]:
            with contextlib.suppress(xmlrpc.client.Fault):
                self._call("stopProcessGroup", name, True,
                           timeout=self.policy.stop_wait_s + 30)
            with contextlib.suppress(xmlrpc.client.Fault):
                self._call("removeProcessGroup", name)
        for name in [*changed, *added]:
            try:
                self._call("addProcessGroup", name)
            except xmlrpc.client.Fault as f:
                if f.faultCode != ALREADY_ADDED:
                    raise

    def install(self, node: str, programs: Sequence[Program], owner_pid: int | None) -> None:
        self.ensure_running()
        text = supervisord_file(programs, self.policy, owner_pid)
        path = self._file(node)
        with self._lock():
            if not path.exists() or path.read_text() != text:
                tmp = path.with_suffix(".new")
                tmp.write_text(text)
                os.replace(tmp, path)
            self._update()

    def start(self, name: str) -> None:
        try:
            self._call("startProcess", name, False)
        except xmlrpc.client.Fault as f:
            if f.faultCode != ALREADY_STARTED:
                raise EngineError(f"supervisord: start {name} failed: {f.faultString}") from None

    def stop(self, name: str) -> None:
        timeout = self.policy.stop_wait_s + 30
        try:
            self._call("stopProcess", name, True, timeout=timeout)
        except xmlrpc.client.Fault as f:
            if f.faultCode not in (NOT_RUNNING, BAD_NAME):
                raise EngineError(f"supervisord: stop {name} failed: {f.faultString}") from None
        except OSError:
            pass  # no supervisord: nothing runs under it

    def counts(self) -> dict[str, int]:
        return load_counts(Path(self.paths.counts))

    def state(self, name: str) -> DaemonState:
        try:
            info = self._call("getProcessInfo", name, timeout=10)
        except xmlrpc.client.Fault as f:
            if f.faultCode != BAD_NAME:
                raise EngineError(f"supervisord: state of {name}: {f.faultString}") from None
            info = None
        except OSError:
            info = None
        return supervisord_state(name, info, self.counts())

    def remove(self, node: str) -> None:
        path = self._file(node)
        if not path.exists():
            return
        names = [ln[9:-1] for ln in path.read_text(errors="replace").splitlines()
                 if ln.startswith("[program:") and ln.endswith("]")]
        with self._lock():
            path.unlink()
            if self.answers():
                self._update()
        forget_counts(Path(self.paths.counts), names)

    def remove_orphans(self) -> list[str]:
        gone = []
        for path in sorted(Path(self.paths.include_dir).glob("*.conf")):
            owner = owner_of(path.read_text(errors="replace"))
            if owner is not None and not alive(owner):
                gone.append(path.stem)
        for node in gone:
            self.remove(node)
        return gone

    def log_tail(self, log: str) -> str:
        return _tail(log)


class Systemd:
    """Units under systemd: persistent ones in ``/etc/systemd/system`` for the node,
    runtime ones in ``/run/systemd/system`` for private nodes (gone at reboot)."""

    kind = "systemd"
    UNIT_DIRS = (Path("/etc/systemd/system"), Path("/run/systemd/system"))

    def __init__(self, policy: RestartPolicy) -> None:
        self.policy = policy

    @staticmethod
    def _marker(node: str) -> str:
        return f"# slicectl-node: {node}\n"

    def _units(self, node: str) -> list[Path]:
        marker = self._marker(node)
        return [p for d in self.UNIT_DIRS if d.is_dir() for p in d.glob("slicectl-*.service")
                if marker in p.read_text(errors="replace")]

    def install(self, node: str, programs: Sequence[Program], owner_pid: int | None) -> None:
        where = self.UNIT_DIRS[0] if owner_pid is None else self.UNIT_DIRS[1]
        where.mkdir(parents=True, exist_ok=True)
        owner = f"# owner-pid: {owner_pid}\n" if owner_pid is not None else ""
        wanted = {where / f"{p.name}.service":
                  self._marker(node) + owner + systemd_unit(p, self.policy) for p in programs}
        changed = [path for path, text in wanted.items()
                   if not path.exists() or path.read_text() != text]
        stale = [p for p in self._units(node) if p not in wanted]
        for p in stale:
            run(["systemctl", "stop", p.name], what=f"stop {p.name}", check=False)
            p.unlink()
        for path in changed:
            path.write_text(wanted[path])
        if changed or stale:
            run(["systemctl", "daemon-reload"], what="systemctl daemon-reload")
        for path in changed:
            run(["systemctl", "try-restart", path.name], what=f"restart {path.name}",
                check=False)

    def start(self, name: str) -> None:
        run(["systemctl", "start", "--no-block", f"{name}.service"], what=f"start {name}")

    def stop(self, name: str) -> None:
        run(["systemctl", "stop", f"{name}.service"], what=f"stop {name}", check=False,
            timeout=self.policy.stop_wait_s + 30)

    def state(self, name: str) -> DaemonState:
        cp = run(["systemctl", "show", "-p", "LoadState,ActiveState,SubState,MainPID,NRestarts,"
                  "ExecMainStartTimestampMonotonic", f"{name}.service"],
                 what=f"state of {name}", check=False)
        return systemd_state(name, parse_systemctl_show(cp.stdout), time.monotonic_ns() // 1000)

    def remove(self, node: str) -> None:
        units = self._units(node)
        for p in units:
            run(["systemctl", "stop", p.name], what=f"stop {p.name}", check=False)
            p.unlink()
        if units:
            run(["systemctl", "daemon-reload"], what="systemctl daemon-reload")
            run(["systemctl", "reset-failed", *(p.name for p in units)], what="reset-failed",
                check=False)

    def remove_orphans(self) -> list[str]:
        gone = set()
        for p in self.UNIT_DIRS[1].glob("slicectl-*.service"):
            text = p.read_text(errors="replace")
            owner = next((int(ln.split(":")[1]) for ln in text.splitlines()
                          if ln.startswith("# owner-pid:")), None)
            node = next((ln.split(":", 1)[1].strip() for ln in text.splitlines()
                         if ln.startswith("# slicectl-node:")), None)
            if owner is not None and node and not alive(owner):
                gone.add(node)
        for node in sorted(gone):
            self.remove(node)
        return sorted(gone)

    def log_tail(self, log: str) -> str:
        return "see journalctl"


def pid1() -> str:
    try:
        return Path("/proc/1/comm").read_text()
    except OSError:
        return ""


def node_supervisor(policy: RestartPolicy, listener_argv: Sequence[str], cwd: str,
                    listener_env: Sequence[tuple[str, str]] = ()) -> Supervisord | Systemd:
    """systemd if it is PID 1, else our supervisord (see :func:`pick_backend`)."""
    if pick_backend(pid1()) == SUPERVISORD:
        return Supervisord(policy, listener_argv, cwd, listener_env)
    return Systemd(policy)


def kill_unsupervised(pid: int, timeout_s: float = 15) -> None:
    """SIGTERM an unsupervised daemon (one an older slicectl started), SIGKILL if it stays."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, 15)
    deadline = time.monotonic() + timeout_s
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        if alive(pid):
            os.kill(pid, 9)

