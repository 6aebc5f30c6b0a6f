"""The node's processes as the site's admin sliver sees them (``pl-ps``, ``pl-kill``):
``/proc`` texts parsed into rows, and which pids a kill may touch. Pure: texts in, rows
and decisions out (:mod:`slicectl.node.nm.admin` reads ``/proc`` and acts).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from slicectl.core.errors import PermissionDenied, ValidationError

#: What the slice column says of a process of the host, or of a container that is no
#: sliver or service of this node.
HOST, OTHER = "host", "other"


@dataclass(frozen=True)
class ProcStat:
    """The fields of ``/proc/PID/stat`` a process table needs (times in clock ticks)."""

    comm: str
    utime: int
    stime: int
    start: int
    rss_pages: int


def parse_stat(text: str) -> ProcStat:
    """Parse ``/proc/PID/stat`` (the command name may hold spaces and parentheses: it
    ends at the last ``)``).

    Raises:
        ValidationError: the text is not a stat line.
    """
    head, sep, tail = text.rpartition(")")
    cols = tail.split()
    if not sep or "(" not in head or len(cols) < 22:
        raise ValidationError("/proc/PID/stat", "a stat line", text[:60])
    try:
        # tail starts at field 3 (state): utime 14, stime 15, starttime 22, rss 24
        return ProcStat(comm=head.split("(", 1)[1], utime=int(cols[11]), stime=int(cols[12]),
                        start=int(cols[19]), rss_pages=int(cols[21]))
    except ValueError as e:
        raise ValidationError("/proc/PID/stat", "a stat line", text[:60]) from e


def inner_pid(status_text: str) -> int | None:
    """The pid in the process's own (innermost) pid namespace, from the ``NSpid`` line
    of ``/proc/PID/status``; None without one."""
    for line in status_text.splitlines():
        if line.startswith("NSpid:"):
            cols = line.split()[1:]
            return int(cols[-1]) if cols and cols[-1].isdigit() else None
    return None


@dataclass(frozen=True)
class Proc:
    """One process of the node: its host pid, whose it is (a slice, ``service:NAME``,
    ``host`` or ``other``), its pid inside its sliver (1: the sliver's init), CPU seconds
    used, share of one CPU over its life, resident memory and command line."""

    pid: int
    slice: str
    inner_pid: int | None
    cpu_s: float
    cpu_pct: float
    rss_kb: int
    command: str


def proc_row(pid: int, owner: str, stat: ProcStat, inner: int | None, cmdline: bytes,
             uptime_s: float, hz: int, page_kb: int) -> Proc:
    """A :class:`Proc` from what ``/proc`` said (``ps``'s %cpu: CPU time over the
    process's life)."""
    cpu_s = (stat.utime + stat.stime) / hz
    life = uptime_s - stat.start / hz
    args = cmdline.rstrip(b"\0").replace(b"\0", b" ").decode(errors="replace")
    command = "".join(c if c.isprintable() else "?" for c in (args or f"[{stat.comm}]"))
    return Proc(pid=pid, slice=owner, inner_pid=inner, cpu_s=round(cpu_s, 2),
                cpu_pct=round(100 * cpu_s / life, 1) if life > 0 else 0.0,
                rss_kb=stat.rss_pages * page_kb, command=command[:200])


def validate_pids(pids: object) -> list[int]:
    """A list of positive process ids (empty: every process of the slice but its init)."""
    expected = "a list of process ids (positive integers)"
    if not isinstance(pids, (list, tuple)):
        raise ValidationError("pids", expected, pids)
    for p in pids:
        if isinstance(p, bool) or not isinstance(p, int) or p <= 0:
            raise ValidationError("pids", expected, pids)
    return sorted(set(pids))


def kill_targets(procs: Iterable[Proc], slice_name: str, pids: list[int]) -> list[int]:
    """The host pids ``pl-kill slice_name pids`` kills: each named pid if it is a process
    of that slice's sliver; with no pids, every process of the sliver but its init.

    Raises:
        PermissionDenied: a named pid is no process of the slice's sliver (the host's,
            another slice's, a node service's, or none), naming whose it is.
    """
    table = {p.pid: p for p in procs}
    if not pids:
        return sorted(p.pid for p in table.values()
                      if p.slice == slice_name and p.inner_pid != 1)
    for pid in pids:
        p = table.get(pid)
        if p is None or p.slice != slice_name:
            whose = "no such process" if p is None else (
                "a process of the host" if p.slice in (HOST, OTHER) else
                f"a process of {p.slice}")
            raise PermissionDenied(f"pid {pid}: expected a process of slice {slice_name}'s "
                                   f"sliver, found {whose}")
    return pids
