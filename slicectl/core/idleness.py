"""When a running sliver counts as idle, and when idleness makes it dormant. Pure.

A sliver is idle while it runs nothing but its init (docker-init and the reference image's
``slicectl-vinit``, which ends in ``sleep``), nobody is logged in (a login is a process in
the sliver) and its bandwidth class has sent nothing since the last reading. Idle for the
node's ``dormant_after_s`` (0: never), it is stopped and becomes dormant.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Processes of a sliver that does nothing: docker-init and the init's final ``sleep``.
INIT_PIDS = 2
#: The longest idleness period a node may set (a week).
MAX_DORMANT_AFTER_S = 7 * 86400


@dataclass(frozen=True)
class IdleMark:
    """Since when a sliver has looked idle, and the class counters it had then."""

    since: float
    sent: tuple[int, int] | None


def idle_step(mark: IdleMark | None, now: float, pids: int | None,
              sent: tuple[int, int] | None, after_s: int) -> tuple[IdleMark | None, bool]:
    """One look at a running sliver: its new mark and whether to make it dormant now.

    Args:
        mark: what the last look left (None: never looked, or active then).
        now: the time of this look.
        pids: processes in the sliver's cgroup now (None: unreadable, so not idle).
        sent: its class's (bytes, packets) sent counters as last folded (None: none yet).
        after_s: the node's period (0: slivers never become dormant).
    """
    if after_s <= 0 or pids is None or pids > INIT_PIDS:
        return None, False
    if mark is None or mark.sent != sent:
        return IdleMark(now, sent), False
    return mark, now - mark.since >= after_s
