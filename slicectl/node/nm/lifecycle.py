"""Sliver lifecycle: bind an rcap to a slice, make its sliver exist and run, change its
resources, stop, start and destroy it. Every step is recorded before it acts, so that
:mod:`slicectl.node.nm.reconcile` can finish or undo what a killed NM left."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from slicectl.core.containerplan import (
    NodeFacts,
    SliverIdentity,
    container_name,
    container_plan,
    resource_update,
)
from slicectl.core.errors import StateError
from slicectl.core.rspec import RSpec, validate_slice_name
from slicectl.core.units import iso
from slicectl.node.nm.boundary import Engine, Network
from slicectl.node.nm.callers import Caller, require_manage, require_name, require_privileged
from slicectl.node.nm.pool import WarmPool
from slicectl.node.nm.ports import DESTROYED, PortBook
from slicectl.node.nm.rcaps import RcapBook
from slicectl.node.nm.slicestate import SliceState, validate_attrs
from slicectl.node.store import CREATING, DORMANT, RUNNING, RcapRow, SliverRow, Store

log = logging.getLogger("slicectl.node.nm")


def bind_refusal(row: RcapRow, name: str, existing: SliverRow | None, now: float) -> str | None:
    """Why ``row`` cannot be bound now to slice ``name`` (whose sliver is ``existing``), or
    None."""
    if row.rspec.start > now:
        return f"rcap {row.rcap}: usable from {iso(row.rspec.start)}, now is {iso(now)}"
    if row.rspec.end <= now:
        return f"rcap {row.rcap}: expired at {iso(row.rspec.end)}"
    if existing is not None and existing.desired == DESTROYED:
        return f"slice {name}: expected a live sliver, found one being destroyed; try again"
    if existing is None and not row.rspec.create_vm:
        return (f"rcap {row.rcap}: has create_vm false, so it can only add to an existing "
                f"sliver, and slice {name} has none here")
    return None


class Slivers:
    """Creates, changes and removes slivers.

    Args:
        store: the node's database.
        engine: the node's sliver containers.
        net: the node's sliver network.
        state: slices' persistent host state.
        rcaps: the rcap table.
        ports: the port space.
        facts: what container plans need to know of the node.
        max_xid: the highest xid the node's network can address.
        clock: the current time.
        pool: the warm pool new slivers are taken from when one fits.
    """

    def __init__(self, store: Store, engine: Engine, net: Network, state: SliceState,
                 rcaps: RcapBook, ports: PortBook, facts: NodeFacts, max_xid: int,
                 clock: Callable[[], float], pool: WarmPool) -> None:
        self.store = store
        self.engine = engine
        self.net = net
        self.state = state
        self.rcaps = rcaps
        self.ports = ports
        self.facts = facts
        self.max_xid = max_xid
        self.clock = clock
        self.pool = pool
        self._locks_guard = threading.Lock()
        self._slice_locks: dict[str, threading.Lock] = {}
        #: slice -> pid of the sliver init its network was last attached to
        self._attached: dict[str, int] = {}

    @contextmanager
    def locked(self, name: str) -> Iterator[None]:
        """Serialize everything done to one slice's sliver."""
        with self._locks_guard:
            lock = self._slice_locks.setdefault(name, threading.Lock())
        with lock:
            yield

    def attach(self, sliver: SliverRow, spec: RSpec | None = None, *,
               unless_attached: bool = False) -> None:
        """Give a running sliver its user-namespace limits and bandwidth classes
        (``unless_attached``: not again to the same init, as when the engine reports the
        start of a sliver the node manager itself started and attached)."""
        name = container_name(sliver.slice)
        st = self.engine.state(name)
        if st is not None and st.status == "running" and st.pid:
            if unless_attached and self._attached.get(sliver.slice) == int(st.pid):
                return
            self.engine.confine(name, int(st.pid))
            self.net.attach(self.ports.ident(sliver, spec), int(st.pid))
            self._attached[sliver.slice] = int(st.pid)

    # bind ---------------------------------------------------------------------------

    def bind(self, caller: Caller, slice_name: object, rcap: object, attrs: object) -> str:
        """Bind ``rcap`` to a slice: create and start its sliver, or add to an existing one.
        Returns the slice name."""
        require_privileged(caller)
        name = validate_slice_name(slice_name)
        extra = validate_attrs(attrs)
        row = self.rcaps.held(caller, rcap)
        with self.locked(name):
            existing = self.store.find_sliver(name)
            if existing is not None:
                require_manage(caller, existing)
            refusal = bind_refusal(row, name, existing, self.clock())
            if refusal is not None:
                raise StateError(refusal)
            require_name(caller, name, self.store.name_owner(name))
            claimed = self.store.claim_name(name, caller.name)
            # a new sliver has this rcap alone: a pooled one fits if made for its profile
            fits = self.pool.profile_of(row.rspec) if existing is None else None
            try:
                sliver, new = self.store.begin_bind(name, row.rcap, caller.name, extra,
                                                    self.max_xid, pool_profile=fits)
            except BaseException:
                if claimed:
                    self.store.release_name(name)
                raise
            try:
                if new:
                    self.materialize(sliver)
                else:
                    if extra:
                        self.state.set_attrs(sliver, extra)
                    self.apply_resources(self.store.get_sliver(name))
            except BaseException:
                self._undo_bind(name, row.rcap, new)
                if claimed:
                    self.store.release_name(name)
                raise
        log.info("bind %s to %s by %s (%s)", row.rcap, name, caller.name,
                 "new sliver" if new else "added")
        return name

    def _undo_bind(self, name: str, rcap: str, new: bool) -> None:
        """Leave nothing half-done: unbind the rcap and, for a new sliver, remove it all."""
        try:
            self.store.unbind_rcap(rcap)
            if new:
                self.teardown(name)
                self.store.delete_sliver(name)
                self.ports.sync_slice(name)
            else:
                self.apply_resources(self.store.get_sliver(name))
        except Exception:  # the original error matters more; reconcile finishes the rest
            log.exception("undo of bind %s -> %s failed", rcap, name)

    def materialize(self, sliver: SliverRow) -> None:
        """Make every piece of a sliver exist and run, from a pooled sliver the bind took
        or anew. Idempotent, so reconcile can finish a bind that a killed node manager left
        half-way. Reads the slice's rcaps once."""
        name = sliver.slice
        pooled = self.pool.claim(sliver)
        uid = self.state.prepare(sliver)
        spec = self.rcaps.effective(name)
        plan = container_plan(SliverIdentity(name, sliver.xid, uid, self.state.etc(name)), spec,
                              self.facts)
        cid = pooled or self.engine.create(plan)
        if cid != sliver.container_id:
            self.store.update_sliver(name, container_id=cid)
        if sliver.desired == RUNNING:
            st = self.engine.state(plan.name)
            warm = pooled is not None and st is not None and st.status == "running"
            if st is None or st.status != "running":
                self.engine.start(plan.name)
            resources = resource_update(spec, self.facts.ncpus)
            if pooled is not None and resources != self.pool.resources():
                self.engine.update(plan.name, resources)  # it was made for the default
            self.engine.read_back(plan.name, resources)
            # confined again even if pooled: the engine may have restarted it since
            self.attach(sliver, spec)
            if warm and st is not None and st.pid:
                self.engine.nudge(int(st.pid))  # its init goes on as the slice's
        self.ports.sync_slice(name, spec)
        self.state.write_login(name, cid, uid)
        self.store.update_sliver(name, state=sliver.desired)

    def apply_resources(self, sliver: SliverRow) -> None:
        """Apply the slice's current rcaps to its running container and classes."""
        cname = container_name(sliver.slice)
        st = self.engine.state(cname)
        if st is None:
            return
        spec = self.rcaps.effective(sliver.slice)
        resources = resource_update(spec, self.facts.ncpus)
        self.engine.update(cname, resources)
        if st.status == "running":
            self.engine.read_back(cname, resources)
        self.net.update(self.ports.ident(sliver, spec))
        self.ports.sync_slice(sliver.slice, spec)

    def teardown(self, name: str) -> None:
        """Remove the container, the bandwidth classes, the host account and the state
        directory of a sliver (its ports go with the next ``ports.sync_slice``)."""
        removed = self.engine.remove(container_name(name))
        self._attached.pop(name, None)
        sliver = self.store.find_sliver(name)
        if sliver is not None:
            if not removed and sliver.container_id:  # a pooled one taken, not yet renamed
                self.engine.remove(sliver.container_id)
            self.net.detach(self.ports.ident(sliver))
        self.state.remove(name)

    # lifecycle ------------------------------------------------------------------------

    def destroy(self, name: str) -> None:
        """Record the intent, then remove everything (reconcile finishes an interrupted one)."""
        self.store.update_sliver(name, desired=DESTROYED)
        self.teardown(name)
        self.store.delete_sliver(name)
        self.ports.sync_slice(name)

    def set_desired(self, name: str, desired: str) -> None:
        sliver = self.store.get_sliver(name)
        self.store.update_sliver(name, desired=desired)
        cname = container_name(name)
        if self.engine.state(cname) is None:
            self.materialize(self.store.get_sliver(name))
        elif desired == RUNNING:
            self.engine.start(cname)
            self.attach(sliver)
        else:
            self.engine.stop(cname)
        self.store.update_sliver(name, state=desired)

    def make_dormant(self, name: str) -> None:
        """Stop an idle sliver that is meant to run: its memory and its bridge port go,
        its container, classes, ports and files stay (the caller holds its lock)."""
        self.engine.stop(container_name(name))
        self._attached.pop(name, None)
        self.net.park(name)
        self.store.update_sliver(name, state=DORMANT)

    def wake(self, name: str) -> bool:
        """Start a dormant sliver and give it its limits and network again (the caller
        holds its lock). Returns whether it was dormant.

        Raises:
            StateError: the sliver is not meant to run (stopped, or still being made).
        """
        sliver = self.store.get_sliver(name)
        if sliver.desired != RUNNING or sliver.state == CREATING:
            raise StateError(f"slice {name}: expected a sliver meant to run, found it "
                             f"{sliver.state} (desired {sliver.desired}); start it first")
        if sliver.state != DORMANT:
            return False
        self.engine.start(container_name(name))
        self.attach(sliver)
        self.store.update_sliver(name, state=RUNNING)
        return True

    def managed(self, caller: Caller, slice_name: object) -> SliverRow:
        """The sliver of ``slice_name`` if ``caller`` may manage it."""
        sliver = self.store.get_sliver(validate_slice_name(slice_name))
        require_manage(caller, sliver)
        return sliver

    def set_attrs(self, caller: Caller, slice_name: object, extra: dict[str, Any]) -> None:
        name = validate_slice_name(slice_name)
        with self.locked(name):
            self.state.set_attrs(self.managed(caller, name), extra)

    def release_bound(self, row: RcapRow) -> None:
        """Give back a bound rcap; its sliver must keep another."""
        assert row.slice is not None
        with self.locked(row.slice):
            if len(self.store.rcaps(row.slice)) <= 1:
                raise StateError(f"rcap {row.rcap}: it is the last rcap of slice {row.slice}; "
                                 "delete the slice instead")
            self.store.delete_rcap(row.rcap)
            self.apply_resources(self.store.get_sliver(row.slice))

    def started(self, name: str) -> None:
        """The engine (re)started a sliver on its own: give it its network again (a
        dormant one, started from outside the node manager, is running again)."""
        with self.locked(name):
            sliver = self.store.find_sliver(name)
            if sliver is None or sliver.desired != RUNNING or sliver.state == CREATING:
                return
            self.attach(sliver, unless_attached=True)
            if sliver.state == DORMANT and name in self._attached:
                self.store.update_sliver(name, state=RUNNING)

