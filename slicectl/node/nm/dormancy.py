"""Dormant slivers: a sliver idle for the node's ``dormant_after_s`` is stopped, keeping
its container, classes, ports and files, and starts again at its next use.

Idleness is decided by :func:`slicectl.core.idleness.idle_step` from two kernel readings
taken once per counter poll for all running slivers: the processes in each sliver's pids
cgroup (a login is a process in the sliver) and its classes' sent counters. What wakes a
dormant sliver: ``wake`` (the login shell calls it before it enters, so ``ssh
slice@node`` simply works) and ``start``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from slicectl.core.errors import ValidationError
from slicectl.core.idleness import INIT_PIDS, MAX_DORMANT_AFTER_S, IdleMark, idle_step
from slicectl.node.nm.lifecycle import Slivers
from slicectl.node.store import DORMANT, RUNNING, Store

log = logging.getLogger("slicectl.node.nm")

SETTING = "dormant_after_s"


def validate_dormant_after(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) \
            or not 0 <= value <= MAX_DORMANT_AFTER_S:
        raise ValidationError(SETTING, f"an integer from 0 (never) to {MAX_DORMANT_AFTER_S} "
                              "seconds", value)
    return value


class Dormancy:
    """Marks idle slivers and makes them dormant.

    Args:
        store: the node's database (the setting, the slivers).
        slivers: the sliver lifecycle (its per-slice locks, stop and start).
        cgroup_parent: the cgroup parent of sliver containers (for their pids counts).
        clock: the current time.
    """

    def __init__(self, store: Store, slivers: Slivers, cgroup_parent: str,
                 clock: Callable[[], float]) -> None:
        self.store = store
        self.slivers = slivers
        self.cgroup_parent = cgroup_parent
        self.clock = clock
        self._guard = threading.Lock()
        self._marks: dict[str, IdleMark] = {}
        #: a count of uses, and slice -> the count at its last use: a sliver used after a
        #: look began is not made dormant by that look
        self._uses = 0
        self._used: dict[str, int] = {}

    @property
    def after_s(self) -> int:
        return int(self.store.setting(SETTING, "0"))

    def set_after(self, value: object) -> int:
        after = validate_dormant_after(value)
        self.store.set_setting(SETTING, str(after))
        return after

    def used(self, name: str) -> None:
        """``name`` is in use now (woken, started, entered): its idleness starts again."""
        with self._guard:
            self._uses += 1
            self._used[name] = self._uses
            self._marks.pop(name, None)

    def check(self) -> tuple[int, list[str]]:
        """One look at every running sliver; make those idle long enough dormant. Returns
        the node's period and the slices made dormant."""
        after = self.after_s
        with self._guard:
            if after <= 0:
                self._marks.clear()
                return after, []
            began = self._uses
        rows = [(s.slice, s.container_id) for s in self.store.slivers()
                if s.state == RUNNING and s.desired == RUNNING and s.container_id]
        pids = self.slivers.engine.pid_counts(self.cgroup_parent, [cid for _, cid in rows])
        now = self.clock()
        due = []
        with self._guard:
            marks: dict[str, IdleMark] = {}
            for name, cid in rows:
                if self._used.get(name, 0) > began:
                    continue
                mark, dormant = idle_step(self._marks.get(name), now, pids.get(cid),
                                          self.slivers.net.sent(name), after)
                if mark is not None:
                    marks[name] = mark
                if dormant:
                    due.append(name)
            self._marks = marks
            self._used = {k: v for k, v in self._used.items() if v > began}
        return after, [name for name in due if self._sleep(name, began, after)]

    def _sleep(self, name: str, began: int, after: int) -> bool:
        with self.slivers.locked(name):
            with self._guard:
                if self._used.get(name, 0) > began:
                    return False
            sliver = self.store.find_sliver(name)
            if sliver is None or sliver.state != RUNNING or sliver.desired != RUNNING \
                    or not sliver.container_id:
                return False
            cid = sliver.container_id
            if self.slivers.engine.pid_counts(self.cgroup_parent, [cid]).get(
                    cid, INIT_PIDS + 1) > INIT_PIDS:
                return False  # someone logged in since the look
            try:
                self.slivers.make_dormant(name)
            except Exception:
                log.exception("slice %s: could not make it dormant", name)
                return False
            with self._guard:
                self._marks.pop(name, None)
        log.info("slice %s: idle for %d s, now dormant", name, after)
        return True

    def wake(self, name: str) -> bool:
        """Start ``name`` if it is dormant, and count it as used (the caller holds its
        lock). Returns whether it was dormant."""
        self.used(name)
        woke = self.slivers.wake(name)
        if woke:
            log.info("slice %s: woken", name)
        return woke

    def count(self) -> int:
        return sum(1 for s in self.store.slivers() if s.state == DORMANT)
