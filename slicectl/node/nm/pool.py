"""The warm pool: slivers made, started and networked before any bind, so that a bind of
a new slice only claims and personalizes one (see :mod:`slicectl.core.poolplan`).

The node setting ``warm_pool`` (``slicectl node set warm_pool N``; 0: none; until it is
set, the node configuration's, ``SLICECTL_WARM_POOL``, by default 2) is how many the node
keeps ready; node policy's ``warm_pool_fills_per_min`` bounds how
many it makes a minute, one at a time, in the background. A pooled sliver is recorded
before its container exists and is ready only once started and confined; a bind takes a
ready one in the same transaction that makes its sliver row, so two binds never take the
same, and a node manager killed at any point leaves rows that reconcile finishes or undoes.
"""

from __future__ import annotations

import logging
import shutil
import threading
from collections.abc import Callable
from typing import Any

from slicectl.core.containerplan import NodeFacts, container_name, resource_update
from slicectl.core.errors import EngineError, ValidationError
from slicectl.core.poolplan import (
    MAX_WARM_POOL,
    FillBudget,
    fills_due,
    pool_name,
    pool_plan,
    profile,
)
from slicectl.core.rspec import RSpec, parse_rspec
from slicectl.node.nm.boundary import Engine
from slicectl.node.nm.slicestate import SliceState
from slicectl.node.store import CREATING, POOL_READY, PoolRow, SliverRow, Store

log = logging.getLogger("slicectl.node.nm")

SETTING = "warm_pool"
#: A full pool asks admission for its room again after this long (a short one before each
#: fill): reading every outstanding rcap is not free on a node of thousands.
ROOM_RECHECK_S = 60.0


def validate_warm_pool(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_WARM_POOL:
        raise ValidationError(SETTING, f"an integer from 0 (none) to {MAX_WARM_POOL}", value)
    return value


class WarmPool:
    """Keeps pooled slivers ready and hands them to binds.

    Args:
        store: the node's database (the pool's rows, the setting).
        engine: the node's sliver containers.
        state: slices' host state (pooled slivers' ``etc`` directories).
        facts: what container plans need to know of the node.
        max_xid: the highest xid the node's network can address.
        clock: the current time.
        fills_per_min: node policy's bound on pooled slivers made a minute.
        default_target: how many to keep until the node setting is set.
        room: how many slivers of the pool's rspec admission would still grant beside the
            outstanding rcaps, up to the number given: the pool keeps no more than that,
            so its slivers never hold what the node has promised to reservations.
    """

    def __init__(self, store: Store, engine: Engine, state: SliceState, facts: NodeFacts,
                 max_xid: int, clock: Callable[[], float], fills_per_min: int,
                 default_target: int = 0,
                 room: Callable[[RSpec, int], int] = lambda spec, most: most) -> None:
        self.store = store
        self.engine = engine
        self.state = state
        self.facts = facts
        self.max_xid = max_xid
        self.clock = clock
        self.fills_per_min = fills_per_min
        self.default_target = default_target
        self.room = room
        self.kicked = threading.Event()
        self._fill_lock = threading.Lock()
        self._recent: list[float] = []
        self._room_checked = float("-inf")

    @property
    def target(self) -> int:
        return int(self.store.setting(SETTING, str(self.default_target)))

    def set_target(self, value: object) -> int:
        """Change how many pooled slivers the node keeps; extra ready ones are removed."""
        target = validate_warm_pool(value)
        self.store.set_setting(SETTING, str(target))
        self.shed(self.store.pool(), target)
        self.kicked.set()
        return target

    def spec(self) -> RSpec:
        """The rspec pooled slivers are made for: the default one."""
        return parse_rspec({}, self.clock())

    def resources(self) -> dict[str, Any]:
        """The CPU, memory and pid limits pooled slivers are made with."""
        return resource_update(self.spec(), self.facts.ncpus)

    def profile_of(self, spec: RSpec) -> str:
        return profile(spec, self.facts)

    def counts(self) -> dict[str, int]:
        rows = self.store.pool()
        ready = sum(1 for r in rows if r.state == POOL_READY)
        making = sum(1 for r in rows if r.state == CREATING)
        return {"warm_pool": self.target, "pool_ready": ready, "pool_making": making}

    # making -----------------------------------------------------------------------------

    def fill(self) -> int:
        """Make the pooled slivers the target misses, within the budget and the room
        admission leaves; return how many were made. Ready ones beyond that room are
        removed. One at a time (a second caller waits)."""
        made = 0
        with self._fill_lock:
            while True:
                now = self.clock()
                self._recent = [t for t in self._recent if now - t < 60.0]
                rows = self.store.pool()
                target = keep = self.target
                if target and (len(rows) < target or now - self._room_checked >= ROOM_RECHECK_S):
                    keep = min(target, self.room(self.spec(), target))
                    self._room_checked = now
                if len(rows) > keep:
                    self.shed(rows, keep)
                    rows = self.store.pool()
                due = fills_due(FillBudget(keep, self.fills_per_min), len(rows), self._recent,
                                now)
                if due <= 0:
                    return made
                self._recent.append(now)
                self.make_one()
                made += 1

    def make_one(self) -> int:
        """Make, start and confine one pooled sliver; return its xid. Nothing of it is
        left if any step fails."""
        spec = self.spec()
        xid = self.store.reserve_pool(self.profile_of(spec), self.max_xid)
        name = pool_name(self.facts.node_id, xid)
        try:
            etc = self.state.pool_etc(xid)
            shutil.rmtree(etc.parent, ignore_errors=True)
            etc.mkdir(mode=0o755, parents=True)
            etc.parent.chmod(0o755)
            cid = self.engine.create(pool_plan(xid, etc, spec, self.facts))
            self.store.update_pool(xid, container_id=cid)
            self.engine.start(name)
            st = self.engine.state(name)
            if st is None or st.status != "running" or not st.pid:
                raise EngineError(f"container {name}: expected it running after start, found "
                                  f"{st.status if st else 'none'}")
            self.engine.confine(name, int(st.pid))
            self.store.update_pool(xid, state=POOL_READY)
        except BaseException:
            self.discard(xid)
            raise
        log.info("warm pool: %s ready", name)
        return xid

    def shed(self, rows: list[PoolRow], keep: int) -> None:
        """Remove ready pooled slivers until at most ``keep`` remain (a smaller target, or
        less room: reservations now hold what they would)."""
        for row in [r for r in rows if r.state == POOL_READY][keep:]:
            if self.discard(row.xid, ready_only=True):
                log.info("warm pool: removed %s, keeping at most %d",
                         pool_name(self.facts.node_id, row.xid), keep)

    def discard(self, xid: int, *, ready_only: bool = False) -> bool:
        """Remove a pooled sliver that no bind took: its container, directory and row
        (last: until then its xid, the container's address, is not given to another).
        With ``ready_only``, only if its row is still ready: it is marked as being removed
        first, in one statement, so that no bind takes it meanwhile (a bind that took it
        already keeps it). Returns whether it was removed."""
        if ready_only and not self.store.take_ready_pool(xid):
            return False
        try:
            self.engine.remove(pool_name(self.facts.node_id, xid))
        finally:
            shutil.rmtree(self.state.pool_etc(xid).parent, ignore_errors=True)
            self.store.delete_pool(xid)
        return True

    def run(self, stop: threading.Event) -> None:
        """The background filler: on a change (a take, a new target) and every 5 s."""
        while not stop.is_set():
            self.kicked.clear()
            try:
                self.fill()
            except Exception:
                log.exception("warm pool: making a pooled sliver failed; trying again in 30 s")
                stop.wait(30)
            self.kicked.wait(5)

    # claiming ---------------------------------------------------------------------------

    def claim(self, sliver: SliverRow) -> str | None:
        """Turn the pooled container a bind took (the row's container) into the slice's
        sliver: its name, and its ``etc`` as the slice's. Returns its id, or None if the
        row's container is not a pooled one (any more). Idempotent."""
        pooled_etc = self.state.pool_etc(sliver.xid)
        if sliver.state != CREATING or not sliver.container_id or not pooled_etc.is_dir():
            return None
        if not self.engine.rename(sliver.container_id, container_name(sliver.slice)):
            return None
        self.state.adopt_etc(sliver.slice, pooled_etc)
        self.kicked.set()
        return sliver.container_id

    # reconcile --------------------------------------------------------------------------

    def reconcile(self, live_xids: set[int]) -> list[str]:
        """Remove pooled slivers that are not ready and running as recorded, pooled
        containers without a row and pooled directories of neither a row nor a sliver
        (``live_xids``: the xids of sliver rows)."""
        actions: list[str] = []
        listed = self.engine.pool_summaries()
        rows = self.store.pool()
        for row in rows:
            summary = listed.pop(row.xid, None)
            if row.state == POOL_READY and summary is not None \
                    and summary.get("State") == "running" and summary.get("Id") == row.container_id:
                continue
            self.discard(row.xid)
            actions.append(f"removed pooled sliver {pool_name(self.facts.node_id, row.xid)} "
                           f"({row.state}, container {summary.get('State') if summary else 'gone'})")
        for xid in listed:
            self.engine.remove(pool_name(self.facts.node_id, xid))
            actions.append(f"removed orphan pooled container {pool_name(self.facts.node_id, xid)}")
        keep = {str(r.xid) for r in rows} | {str(x) for x in live_xids}
        if self.state.pool_dir.is_dir():
            for d in self.state.pool_dir.iterdir():
                if d.name not in keep:
                    shutil.rmtree(d, ignore_errors=True)
        for a in actions:
            log.info("reconcile: %s", a)
        self.kicked.set()
        return actions
