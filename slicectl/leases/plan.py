"""What the lease service must do now: its requests, what it made for each (its record),
the slivers the node manager shows it (only its own) and the time. Pure: no I/O.

A lease is ``binding`` (rcap acquired, bind under way: a crash here is found on restart),
``active`` until its end, then ``ended``; a request the node refused for good (the name is
another creator's, the rspec is bad) is ``refused`` until the request changes; one that
failed otherwise (no room now) is ``failed`` and tried again after a growing wait.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from .requests import Request

STATES = ("binding", "active", "ended", "refused", "failed")
#: Waits between tries of a failed request: the first, and at most.
RETRY_S = (5.0, 600.0)


@dataclass(frozen=True)
class Lease:
    """What the service did for one request (its record's entry)."""

    key: str
    slice: str
    digest: str
    state: str
    rcap: str = ""
    start: float = 0.0
    end: float = 0.0
    reason: str = ""
    retry_at: float = 0.0
    tries: int = 0


@dataclass(frozen=True)
class Mine:
    """A sliver the node manager lists for the service (it lists only those it made)."""

    end: float
    rcaps: tuple[str, ...] = ()


@dataclass(frozen=True)
class Action:
    """``create`` (acquire, bind), ``end`` (destroy, release: the lease is over),
    ``lost`` (the sliver went before its end: root removed it), ``abandon`` (a bind a crash
    interrupted: give the rcap back, the request is made again), ``adopt`` (a sliver the
    service made whose record was lost or whose bind a crash interrupted after it took)."""

    kind: str
    key: str
    slice: str
    request: Request | None = None
    rcap: str = ""
    end: float = 0.0


def retry_after_s(tries: int) -> float:
    """How long a request that failed ``tries`` times waits before the next try."""
    return min(RETRY_S[1], RETRY_S[0] * 2.0 ** max(tries - 1, 0))


def plan(requests: Sequence[Request], leases: Mapping[str, Lease], mine: Mapping[str, Mine],
         now: float) -> list[Action]:
    """The actions due now, ends first (they free what the creates need)."""
    first: list[Action] = []
    held: set[str] = set()  # slice names a live lease keeps (a new request waits for them)
    ending: set[str] = set()
    dropped: set[str] = set()
    for key in sorted(leases):
        lease = leases[key]
        if lease.state == "active":
            if lease.end <= now:
                first.append(Action("end", key, lease.slice, rcap=lease.rcap))
                ending.add(lease.slice)
            elif lease.slice not in mine:
                first.append(Action("lost", key, lease.slice, rcap=lease.rcap))
            else:
                held.add(lease.slice)
        elif lease.state == "binding":
            if lease.slice in mine:
                first.append(Action("adopt", key, lease.slice, rcap=lease.rcap,
                                    end=mine[lease.slice].end))
                held.add(lease.slice)
            else:
                first.append(Action("abandon", key, lease.slice, rcap=lease.rcap))
                dropped.add(key)
    known = {lease.slice for lease in leases.values() if lease.state in ("active", "binding")}
    then: list[Action] = []
    for r in requests:
        got = None if r.key in dropped else leases.get(r.key)
        if got is not None:
            if got.state in ("active", "binding", "ended"):
                continue
            if got.digest == r.digest and (got.state == "refused" or now < got.retry_at):
                continue
        if r.slice in held or r.slice in ending:
            continue  # another lease holds the name now; this one waits for its end
        if r.slice in mine and r.slice not in known:
            m = mine[r.slice]
            then.append(Action("adopt", r.key, r.slice, r, m.rcaps[0] if m.rcaps else "",
                               m.end))
        else:
            then.append(Action("create", r.key, r.slice, r))
        held.add(r.slice)
    return first + then


def wake_at(leases: Mapping[str, Lease], now: float, period_s: float) -> float:
    """When the service should look again: the next lease end or retry, or a period on."""
    due = [lease.end for lease in leases.values() if lease.state == "active"]
    due += [lease.retry_at for lease in leases.values() if lease.state == "failed"]
    return min([now + period_s, *(t for t in due if t > now)])
