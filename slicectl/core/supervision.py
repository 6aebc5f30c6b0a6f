"""How the node's host daemons are supervised, as data: programs, restart policy, and their
renderings as supervisord program sections and systemd units (pure, no I/O).

A node picks one supervisor: systemd when it is PID 1 (a real Debian node), else our own
supervisord instance (Debian's ``supervisor``; containers and these machines). Either one
restarts a dead daemon at once (``Restart=always``, ``RestartSec=200ms``; supervisord
``autorestart=true``: a daemon that ran past ``startsecs`` is respawned immediately, one that
dies sooner backs off 1 s, 2 s, ... up to ``startretries``) and bounds its log files
(supervisord rotates by size; journald bounds the journal).
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from slicectl.core.errors import ValidationError

SUPERVISORD = "supervisord"
SYSTEMD = "systemd"

#: Program names: a daemon's name, a dash, and its node id (letters, digits, dashes).
NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-")


@dataclass(frozen=True)
class RestartPolicy:
    """When and how fast a supervisor brings a daemon back, and how much log it keeps."""

    restart_ms: int = 200          # systemd RestartSec
    startsecs: int = 1             # supervisord: running this long counts as started
    startretries: int = 30         # supervisord: quick deaths in a row before FATAL
    stop_wait_s: int = 15          # SIGTERM, then SIGKILL after this long
    log_max_bytes: int = 10 << 20  # a log file rotates at this size ...
    log_backups: int = 3           # ... keeping this many old ones


@dataclass(frozen=True)
class Program:
    """One supervised daemon: ``argv`` run in ``cwd`` with ``env`` added, its stdout and
    stderr to ``log``. ``keep_children``: stopping it signals only the main process (the
    engine's container shims and sshd's sessions outlive a restart)."""

    name: str
    argv: tuple[str, ...]
    cwd: str
    log: str
    env: tuple[tuple[str, str], ...] = ()
    description: str = ""
    after: tuple[str, ...] = ()
    keep_children: bool = False

    def __post_init__(self) -> None:
        if not self.name or not set(self.name) <= NAME_CHARS:
            raise ValidationError("program name", "lower-case letters, digits and dashes",
                                  self.name)
        if not self.argv:
            raise ValidationError(f"program {self.name}: argv", "a command", self.argv)


def pick_backend(pid1_comm: str) -> str:
    """``systemd`` when PID 1 is systemd (``/proc/1/comm``), else ``supervisord``."""
    return SYSTEMD if pid1_comm.strip() == "systemd" else SUPERVISORD


# supervisord --------------------------------------------------------------------------

def _sv_escape(text: str) -> str:
    """supervisord expands ``%(name)s`` in values: a literal ``%`` is ``%%``."""
    return text.replace("%", "%%")


def _sv_quote(key: str, value: str) -> str:
    """supervisord reads ``environment`` with a non-POSIX shlex (no backslash escapes) and
    strips quote characters off each value's ends: a value is quoted with the kind it does
    not hold, and one holding both, or starting or ending with one, is refused."""
    q = '"' if '"' not in value else "'"
    if q in value or (value and (value[0] in "'\"" or value[-1] in "'\"")):
        raise ValidationError(f"environment {key}", "a value supervisord can quote (not both "
                              "quote kinds, none at its ends)", value)
    return q + value + q


def _sv_env(env: Sequence[tuple[str, str]]) -> str:
    return ",".join(f"{k}={_sv_escape(_sv_quote(k, v))}" for k, v in env)


def supervisord_program(p: Program, policy: RestartPolicy) -> str:
    """The ``[program:NAME]`` section for ``p``. Programs do not start with supervisord
    (``slicectl node up`` starts them in order, waiting for each to answer)."""
    lines = [
        f"[program:{p.name}]",
        f"command={_sv_escape(shlex.join(p.argv))}",
        f"directory={_sv_escape(p.cwd)}",
        "autostart=false",
        "autorestart=true",
        f"startsecs={policy.startsecs}",
        f"startretries={policy.startretries}",
        "stopsignal=TERM",
        f"stopwaitsecs={policy.stop_wait_s}",
        f"stopasgroup={'false' if p.keep_children else 'true'}",
        f"killasgroup={'false' if p.keep_children else 'true'}",
        "redirect_stderr=true",
        # supervisord expands a log file's name once more (for %(program_name)s).
        f"stdout_logfile={_sv_escape(_sv_escape(p.log))}",
        f"stdout_logfile_maxbytes={policy.log_max_bytes}",
        f"stdout_logfile_backups={policy.log_backups}",
    ]
    if p.env:
        lines.append(f"environment={_sv_env(p.env)}")
    return "\n".join(lines) + "\n"


def supervisord_file(programs: Sequence[Program], policy: RestartPolicy,
                     owner_pid: int | None = None) -> str:
    """One node's include file: its programs; ``owner_pid`` marks a private node's file
    so that one whose owner died can be found and removed (:func:`owner_of`)."""
    head = "; slicectl: written by slicectl; a node's supervised daemons\n"
    if owner_pid is not None:
        head += f"; owner-pid: {owner_pid}\n"
    return head + "\n".join(supervisord_program(p, policy) for p in programs)


def owner_of(text: str) -> int | None:
    """The owner pid :func:`supervisord_file` wrote, or None."""
    for line in text.splitlines():
        if line.startswith("; owner-pid: ") and line[13:].strip().isdigit():
            return int(line[13:].strip())
    return None


@dataclass(frozen=True)
class SupervisordPaths:
    """Where our own supervisord instance keeps its socket, pidfile, log and includes."""

    socket: str
    pidfile: str
    logfile: str
    include_dir: str
    counts: str


def supervisord_main(paths: SupervisordPaths, policy: RestartPolicy,
                     listener_argv: Sequence[str], listener_cwd: str,
                     listener_env: Sequence[tuple[str, str]] = ()) -> str:
    """Our supervisord instance's own configuration: a root-only socket of its own (never
    a system supervisord's), its log rotated by size, the node files included, and the
    event listener that counts restarts (supervisord itself keeps no count)."""
    env = [f"environment={_sv_env(listener_env)}"] if listener_env else []
    return "\n".join([
        "; slicectl: our own supervisord instance, written by `slicectl node up`",
        "[unix_http_server]",
        f"file={_sv_escape(paths.socket)}",
        "chmod=0700",
        "",
        "[supervisord]",
        f"logfile={_sv_escape(paths.logfile)}",
        f"logfile_maxbytes={policy.log_max_bytes}",
        f"logfile_backups={policy.log_backups}",
        "loglevel=info",
        f"pidfile={_sv_escape(paths.pidfile)}",
        "nodaemon=false",
        "minfds=4096",
        "",
        "[rpcinterface:supervisor]",
        "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface",
        "",
        "[supervisorctl]",
        f"serverurl=unix://{_sv_escape(paths.socket)}",
        "",
        "[eventlistener:slicectl-restarts]",
        f"command={_sv_escape(shlex.join([*listener_argv, paths.counts]))}",
        f"directory={_sv_escape(listener_cwd)}",
        "events=PROCESS_STATE_STARTING",
        "autostart=true",
        "autorestart=true",
        "startsecs=0",
        "stdout_logfile=NONE",
        f"stderr_logfile={_sv_escape(paths.logfile)}.listener",
        f"stderr_logfile_maxbytes={policy.log_max_bytes}",
        f"stderr_logfile_backups={policy.log_backups}",
        *env,
        "",
        "[include]",
        f"files={_sv_escape(paths.include_dir)}/*.conf",
        "",
    ])


#: supervisord's states a restart counts from: the supervisor brought a dead daemon back.
RESTART_FROM = frozenset({"EXITED", "BACKOFF"})


def count_start(counts: Mapping[str, int], event: Mapping[str, str]) -> dict[str, int]:
    """Fold one PROCESS_STATE_STARTING event into the restart counts: a start from EXITED
    or BACKOFF is a restart; a start from STOPPED or FATAL (an operator's) resets to 0."""
    name = event.get("processname", "")
    out = dict(counts)
    if not name:
        return out
    out[name] = out.get(name, 0) + 1 if event.get("from_state") in RESTART_FROM else 0
    return out


def parse_event_header(line: str) -> dict[str, str]:
    """``key:value`` pairs separated by spaces (an event's header or payload)."""
    return dict(tok.split(":", 1) for tok in line.split() if ":" in tok)


# systemd --------------------------------------------------------------------------------

def _sd_escape(text: str) -> str:
    """systemd expands ``%`` specifiers and ``$`` variables: both are doubled."""
    return text.replace("%", "%%").replace("$", "$$")


def _sd_quote(arg: str) -> str:
    return '"' + arg.replace("\\", "\\\\").replace('"', '\\"') + '"'


def systemd_unit(p: Program, policy: RestartPolicy) -> str:
    """The ``.service`` unit for ``p``: restarted 200 ms after any exit, never given up on,
    its output to the journal (journald bounds its size and rate)."""
    after = " ".join(["network.target", *(f"{a}.service" for a in p.after)])
    lines = [
        "# slicectl: written by slicectl; a node's supervised daemon",
        "[Unit]",
        f"Description={p.description or p.name}",
        f"After={after}",
        "StartLimitIntervalSec=0",
        "",
        "[Service]",
        "Type=simple",
        f"ExecStart={' '.join(_sd_escape(_sd_quote(a)) for a in p.argv)}",
        f"WorkingDirectory={_sd_escape(p.cwd)}",
        *(f"Environment={_sd_escape(_sd_quote(f'{k}={v}'))}" for k, v in p.env),
        "Restart=always",
        f"RestartSec={policy.restart_ms}ms",
        f"TimeoutStopSec={policy.stop_wait_s}s",
        f"KillMode={'process' if p.keep_children else 'control-group'}",
        "StandardOutput=journal",
        "StandardError=journal",
        f"SyslogIdentifier={p.name}",
        "",
    ]
    return "\n".join(lines)


@dataclass(frozen=True)
class DaemonState:
    """What a supervisor says of one daemon."""

    name: str
    state: str          # RUNNING, STARTING, BACKOFF, STOPPED, FATAL, EXITED, ABSENT
    pid: int | None
    uptime_s: float | None
    restarts: int
    detail: str = field(default="", compare=False)


def systemd_state(name: str, show: Mapping[str, str], now_monotonic_us: int) -> DaemonState:
    """A :class:`DaemonState` from ``systemctl show`` properties (``ActiveState``,
    ``SubState``, ``MainPID``, ``NRestarts``, ``ExecMainStartTimestampMonotonic``)."""
    active, sub = show.get("ActiveState", ""), show.get("SubState", "")
    state = {"active": "RUNNING", "activating": "STARTING", "deactivating": "STOPPING",
             "failed": "FATAL"}.get(active, "STOPPED")
    if active == "activating" and sub == "auto-restart":
        state = "BACKOFF"
    if show.get("LoadState") == "not-found":
        state = "ABSENT"
    pid = int(show.get("MainPID", "0") or 0) or None
    started = int(show.get("ExecMainStartTimestampMonotonic", "0") or 0)
    uptime = (now_monotonic_us - started) / 1e6 if pid and started else None
    return DaemonState(name, state, pid, uptime, int(show.get("NRestarts", "0") or 0),
                       f"{active}/{sub}")


def parse_systemctl_show(text: str) -> dict[str, str]:
    """``systemctl show -p ...`` output (``Key=value`` lines) as a mapping."""
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def supervisord_state(name: str, info: Mapping[str, object] | None,
                      counts: Mapping[str, int]) -> DaemonState:
    """A :class:`DaemonState` from supervisord's ``getProcessInfo`` struct (None: no such
    program) and the listener's restart counts."""
    if info is None:
        return DaemonState(name, "ABSENT", None, None, 0)
    state = str(info.get("statename", "UNKNOWN"))
    pid = int(str(info.get("pid", 0))) or None
    start, now = int(str(info.get("start", 0))), int(str(info.get("now", 0)))
    uptime = float(now - start) if pid and start else None
    return DaemonState(name, state, pid, uptime, counts.get(name, 0),
                       str(info.get("spawnerr", "") or info.get("description", "")))
