"""The node manager: the one privileged, local-only authority on a node.

It turns rspecs into rcaps (``acquire``, ``split``, ``release``) and rcaps into slivers
(``bind``), and keeps slivers in the state the database says they should be in
(``reconcile``, ``expire``). This class is the face the RPC API calls; each job is done by
a part with its collaborators passed in:

- :class:`~slicectl.node.nm.rcaps.RcapBook`: rcaps and admission;
- :class:`~slicectl.node.nm.lifecycle.Slivers`: bind, create, change, stop, destroy;
- :class:`~slicectl.node.nm.slicestate.SliceState`: a slice's keys, initscript, home;
- :class:`~slicectl.node.nm.ports.PortBook`: reserved ports and socket claims;
- :class:`~slicectl.node.nm.reconcile.Reconciler`: reconcile and expiry;
- :class:`~slicectl.node.nm.dormancy.Dormancy`: idle slivers go dormant, and wake;
- :class:`~slicectl.node.nm.views.Views`: what callers are shown;
- :class:`~slicectl.node.nm.callers.Callers`: who is calling, and the rules of who may.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from slicectl import code_hash
from slicectl.core.admission import NodeCapacity
from slicectl.core.containerplan import NodeFacts
from slicectl.core.errors import NotFoundError, PermissionDenied, StateError, ValidationError
from slicectl.core.netplan import sliver_xid_range
from slicectl.core.policy import NodePolicy
from slicectl.core.procs import Proc, kill_targets, validate_pids
from slicectl.core.rspec import VSYS_NAME, validate_slice_name
from slicectl.core.units import iso
from slicectl.core.wire import NetEntry, RcapInfo, SliverView
from slicectl.node.accounts import validate_keys
from slicectl.node.config import NodeConfig
from slicectl.node.network import utc_day
from slicectl.node.nm.admin import ProcTable
from slicectl.node.nm.boundary import Accounts, Engine, Network
from slicectl.node.nm.callers import (
    Caller,
    Callers,
    require_admin,
    require_name,
    require_privileged,
    require_read,
    require_root,
)
from slicectl.node.nm.dormancy import Dormancy
from slicectl.node.nm.lifecycle import Slivers
from slicectl.node.nm.pool import WarmPool
from slicectl.node.nm.ports import DESTROYED, LIVE, PortBook
from slicectl.node.nm.rcaps import RCAP, RcapBook
from slicectl.node.nm.reconcile import Reconciler
from slicectl.node.nm.reports import ServiceReports
from slicectl.node.nm.slicestate import SliceState, validate_attrs, validate_initscript
from slicectl.node.nm.views import STOP_ACTIONS, Views
from slicectl.node.procfs import PinnedPeer
from slicectl.node.store import DORMANT, RUNNING, STOPPED, Store

log = logging.getLogger("slicectl.node.nm")

USAGE_KEEP_DAYS = 7


#: Why a sliver the site's admin stopped does not start for its creator (the agent
#: recognises it: :data:`slicectl.agent.sync.ADMIN_STOPPED`).
ADMIN_STOPPED = "the site's admin stopped it"


def validate_reason(reason: object) -> str:
    if not isinstance(reason, str) or len(reason) > 200 or not reason.isprintable():
        raise ValidationError("reason", "printable text of at most 200 characters", reason)
    return reason
#: What ``set_node`` changes.
NODE_SETTINGS = ("net_cap_kbit", "dormant_after_s", "warm_pool")


class NodeManager:
    """Node manager logic. Thread-safe: the RPC server calls it from many threads.

    Args:
        cfg: the node's configuration.
        store: the node's database.
        engine: the node's sliver containers.
        accounts: the host account layer.
        facts: the node facts container plans need (image, CPUs, network, ...).
        capacity: the node's limits for admission control.
        net: the node's sliver network (bandwidth classes, ports, counters).
        clock: returns the current time (tests pass their own).
        host_ports: the host's own listening (proto, port)s, which no rcap may reserve.
        policy: the local administrator's node policy (slices and sites it refuses, the
            bound on the node's cap); PLC's view never overrides it.
    """

    def __init__(self, cfg: NodeConfig, store: Store, engine: Engine, accounts: Accounts,
                 facts: NodeFacts, capacity: NodeCapacity, net: Network,
                 clock: Callable[[], float] = time.time,
                 host_ports: Callable[[], frozenset[tuple[str, int]]] = frozenset,
                 policy: NodePolicy | None = None) -> None:
        self.store = store
        self.policy = policy or NodePolicy()
        self.net = net
        self.clock = clock
        self.rcaps = RcapBook(store, capacity, lambda: net.cap_kbit, clock, host_ports)
        self.ports = PortBook(store, net, self.rcaps, clock)
        self.state = SliceState(cfg.slivers_dir, accounts, store, cfg.node_id, cfg.engine_sock,
                                cfg.nm_sock, cfg.state_dir / "pool")
        max_xid = sliver_xid_range(cfg.subnet)[1]
        self.pool = WarmPool(store, engine, self.state, facts, max_xid, clock,
                             self.policy.warm_pool_fills_per_min, cfg.warm_pool,
                             room=self.rcaps.room)
        self.slivers = Slivers(store, engine, net, self.state, self.rcaps, self.ports, facts,
                               max_xid, clock, self.pool)
        self.reconciler = Reconciler(store, self.slivers, clock,
                                     lambda name: self.event("node", "expire", name))
        self.dormancy = Dormancy(store, self.slivers, facts.cgroup_parent, clock)
        self.reports = ServiceReports(clock)
        self.views = Views(store, engine, net, self.rcaps, facts, capacity, cfg.node_id,
                           code_hash(), clock)
        self.callers = Callers(store.sliver_in, self._rights, engine.service_of,
                               cfg.agent_slice)
        self.agent_slice, self.admin_slice = cfg.agent_slice, cfg.admin_slice
        self._admin_tools: str | None = None
        self.procs = ProcTable(self.callers.slice_in, engine.service_of)

    def _rights(self, name: str) -> tuple[bool, bool]:
        spec = self.rcaps.effective(name)
        return spec.nm_privileged, spec.admin

    # rcaps ----------------------------------------------------------------------------

    def acquire(self, caller: Caller, data: object) -> str:
        return self.rcaps.acquire(caller, data)

    def split(self, caller: Caller, rcap: object, data: object) -> str:
        return self.rcaps.split(caller, rcap, data)

    def release(self, caller: Caller, rcap: object) -> bool:
        """Give back an rcap. A bound rcap may go only if its sliver keeps another."""
        require_privileged(caller)
        row = self.rcaps.held(caller, rcap)
        if row.slice is None:
            self.store.delete_rcap(row.rcap)
        else:
            self.slivers.release_bound(row)
        return True

    def rcap_info(self, caller: Caller, rcap: object) -> RcapInfo:
        return self.rcaps.info(caller, rcap)

    def list_rcaps(self, caller: Caller) -> list[RcapInfo]:
        return self.rcaps.listing(caller)

    def get_rspec(self, caller: Caller, name: object) -> dict[str, Any]:
        """The rspec of an rcap, or the effective rspec of a slice's sliver."""
        if isinstance(name, str) and RCAP.match(name):
            return dict(self.rcaps.info(caller, name).rspec)
        sliver = self.slivers.managed(caller, name)
        return self.rcaps.effective(sliver.slice).to_wire()

    # slivers --------------------------------------------------------------------------

    def bind(self, caller: Caller, slice_name: object, rcap: object,
             attrs: object = None) -> SliverView:
        """Bind ``rcap`` to a slice: create and start its sliver, or add to an existing one.

        ``attrs`` may carry keys, contacts, description and initscript for a new sliver
        (for an existing one, they replace the current values). A slice or site the node's
        policy refuses is refused, whoever asks.
        """
        refusal = self.policy.refusal(validate_slice_name(slice_name))
        if refusal is not None:
            self.event(caller.name, "refused", str(slice_name), refusal)
            raise PermissionDenied(refusal)
        name = self.slivers.bind(caller, slice_name, rcap, attrs)
        self.event(caller.name, "bind", name)
        return self.views.describe(name)

    def event(self, who: str, action: str, slice_name: str | None, detail: str = "") -> None:
        """Record what was done, by whom (``slicectl node events`` shows it)."""
        self.store.add_event(self.clock(), who, action, slice_name, detail)

    def events(self, caller: Caller, slice_name: object = "", limit: object = 100
               ) -> list[dict[str, Any]]:
        """The latest events (oldest first): of the node, for root and the node services;
        of one sliver, also for its creator and the slice itself."""
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 10_000:
            raise ValidationError("limit", "an integer from 1 to 10000", limit)
        if slice_name == "":
            if not caller.reads_all:
                raise PermissionDenied(f"caller {caller.name}: the node's events are for root "
                                       "and the node services; ask for one slice's")
            rows = self.store.events(limit=limit)
        else:
            name = validate_slice_name(slice_name)
            if not caller.reads_all:
                require_read(caller, self.store.get_sliver(name))
            rows = self.store.events(name, limit)
        return [{"at": iso(r.at), "who": r.who, "action": r.action, "slice": r.slice or "",
                 "detail": r.detail} for r in rows]

    def destroy(self, caller: Caller, slice_name: object) -> bool:
        """Stop and remove a sliver and free every resource bound to it."""
        name = validate_slice_name(slice_name)
        with self.slivers.locked(name):
            self.slivers.managed(caller, name)
            self.slivers.destroy(name)
        self.event(caller.name, "destroy", name)
        log.info("destroy %s by %s", name, caller.name)
        return True

    def release_name(self, caller: Caller, slice_name: object) -> bool:
        """Give up the ownership of a slice name that has no sliver here (its owner or
        root), so another creator may bind it."""
        require_privileged(caller)
        name = validate_slice_name(slice_name)
        with self.slivers.locked(name):
            owner = self.store.name_owner(name)
            if owner is None:
                raise NotFoundError(f"slice {name}: expected an owned name, found none")
            require_name(caller, name, owner)
            if self.store.find_sliver(name) is not None:
                raise StateError(f"slice {name}: expected no sliver, found one; destroy it "
                                 "first")
            self.store.release_name(name)
        log.info("release name %s (of %s) by %s", name, owner, caller.name)
        return True

    def start(self, caller: Caller, slice_name: object) -> SliverView:
        return self._set_desired(caller, slice_name, RUNNING)

    def stop(self, caller: Caller, slice_name: object, reason: object = "") -> SliverView:
        """Stop a sliver; ``reason`` (at most 200 characters) is kept with who stopped it
        and when, and shown with the sliver (``stopped``) and on the audit pages."""
        return self._set_desired(caller, slice_name, STOPPED, validate_reason(reason))

    def _set_desired(self, caller: Caller, slice_name: object, desired: str,
                     reason: str = "", admin: bool = False) -> SliverView:
        """Start or stop a sliver: its creator or root; with ``admin``, root or the site's
        admin sliver (``admin_start``/``admin_stop``), on any sliver but the node agent's
        and the admin slivers. A sliver the site's admin stopped is started again only by
        root or the admin: PLC's view does not override the site's."""
        name = validate_slice_name(slice_name)
        refusal = self.policy.refusal(name) if desired == RUNNING else None
        if refusal is not None:
            raise PermissionDenied(refusal)
        with self.slivers.locked(name):
            if admin:
                self._admin_target(caller, name)
            else:
                self.slivers.managed(caller, name)
            if desired == RUNNING:
                if not (admin or caller.is_root):
                    self._not_admin_stopped(name)
                self.dormancy.used(name)
            self.slivers.set_desired(name, desired)
        action = ("admin_" if admin else "") + ("start" if desired == RUNNING else "stop")
        self.event(caller.name, action, name, reason)
        return self.views.describe(name)

    def _not_admin_stopped(self, name: str) -> None:
        last = self.store.events(name, 1, STOP_ACTIONS)
        if last and last[0].action == "admin_stop":
            why = f": {last[0].detail}" if last[0].detail else ""
            raise PermissionDenied(
                f"slice {name}: {ADMIN_STOPPED} ({last[0].who} at {iso(last[0].at)}{why}); "
                "only root or the site's admin may start it")

    def wake(self, caller: Caller, slice_name: object) -> bool:
        """Make a sliver that is meant to run ready to be entered: start it if it is
        dormant, and count it as used now, so that it is not made dormant while a login
        enters it (root: the login shell calls this; or the slice's creator). Returns
        whether it was dormant."""
        name = validate_slice_name(slice_name)
        with self.slivers.locked(name):
            self.slivers.managed(caller, name)
            woke = self.dormancy.wake(name)
        if woke:
            self.event(caller.name, "wake", name)
        return woke

    def get_keys(self, caller: Caller, slice_name: object) -> list[str]:
        return self.slivers.managed(caller, slice_name).keys

    def set_keys(self, caller: Caller, slice_name: object, keys: object) -> bool:
        checked = validate_keys(keys)
        self.slivers.set_attrs(caller, slice_name, {"keys": checked})
        self.event(caller.name, "set_keys", str(slice_name), f"{len(checked)} keys")
        return True

    def set_initscript(self, caller: Caller, slice_name: object, text: object) -> bool:
        """Store the sliver's /etc/rc.vinit; it runs at every start of the sliver from the
        next one on (set within a moment of the bind, it may also run in the first boot)."""
        self.slivers.set_attrs(caller, slice_name, {"initscript": validate_initscript(text)})
        return True

    def wake_on_connection(self, name: str) -> None:
        """A connection came for a reserved port of dormant slice ``name`` (the node's
        wake rule logged it): start the sliver, if it is still dormant."""
        with self.slivers.locked(name):
            sliver = self.store.find_sliver(name)
            if sliver is not None and sliver.state == DORMANT and sliver.desired == RUNNING:
                self.dormancy.wake(name)
                self.event("node", "wake", name, "a connection to a reserved port")

    def set_info(self, caller: Caller, slice_name: object, info: object) -> bool:
        """A sliver's ``description`` and ``contacts`` (what the audit pages show of it)."""
        attrs = validate_attrs(info)
        extra = sorted(set(attrs) - {"description", "contacts"})
        if extra:
            raise ValidationError("info", "a struct of description, contacts",
                                  ", ".join(extra), as_text=True)
        self.slivers.set_attrs(caller, slice_name, attrs)
        return True

    def sliver_started(self, name: str) -> None:
        self.slivers.started(name)

    # views ------------------------------------------------------------------------------

    def describe(self, name: str) -> SliverView:
        return self.views.describe(name)

    def get_sliver(self, caller: Caller, slice_name: object) -> SliverView:
        return self.views.get_sliver(caller, validate_slice_name(slice_name))

    def list_slivers(self, caller: Caller) -> list[SliverView]:
        return self.views.list_slivers(caller)

    def status(self, caller: Caller) -> dict[str, Any]:
        return {**self.views.status(caller), "dormant_after_s": self.dormancy.after_s,
                "dormant": self.dormancy.count(), **self.pool.counts()}

    # slice creation services ------------------------------------------------------------

    def report_service(self, caller: Caller, report: object) -> bool:
        """A slice creation service (a privileged slice, or root) says how it is doing:
        see :mod:`slicectl.node.nm.reports`."""
        require_privileged(caller)
        self.reports.put(caller.slice or "root", report)
        return True

    def services(self, caller: Caller) -> list[dict[str, Any]]:
        """The last report of every slice creation service on this node (root and the
        node services; a privileged slice sees its own)."""
        live = {s.slice for s in self.store.slivers()} | {"root"}
        rows = self.reports.view(live)
        if caller.reads_all:
            return rows
        require_privileged(caller)
        return [r for r in rows if r["slice"] == caller.slice]

    # node services: the raw-socket shim and the admin sniffer -----------------------

    def net_map(self, caller: Caller) -> list[NetEntry]:
        """Every sliver's network identity and socket rights, from the database alone
        (no engine call): what the shim and the admin sniffer need to tag and check."""
        require_root(caller, "net_map")
        return self.ports.net_map()

    def net_map_since(self, caller: Caller, generation: object) -> dict[str, Any]:
        """The net map if it may have changed since ``generation`` (what a previous call
        returned; -1 at first), else none of it: ``{"generation", "changed", "entries"}``.
        A poller of an unchanged node costs one read, not one of every sliver."""
        require_root(caller, "net_map_since")
        if isinstance(generation, bool) or not isinstance(generation, int):
            raise ValidationError("generation", "an integer (-1 at first)", generation)
        now = self.store.net_generation()
        if now == generation:
            return {"generation": now, "changed": False, "entries": []}
        return {"generation": now, "changed": True, "entries": self.ports.net_map()}

    def claim_port(self, caller: Caller, slice_name: object, proto: object, port: object,
                   kind: object) -> bool:
        require_root(caller, "claim_port")
        return self.ports.claim(slice_name, proto, port, kind)

    def release_port(self, caller: Caller, slice_name: object, proto: object, port: object,
                     kind: object) -> bool:
        require_root(caller, "release_port")
        return self.ports.release(slice_name, proto, port, kind)

    def release_claims(self, caller: Caller) -> int:
        """Forget every socket's port (the shim calls this when it starts afresh)."""
        require_root(caller, "release_claims")
        return self.ports.release_all()

    def list_claims(self, caller: Caller) -> list[dict[str, Any]]:
        require_privileged(caller)
        return self.ports.claims()

    def vsys_event(self, caller: Caller, slice_name: object, op: object,
                   detail: object) -> bool:
        """Record a privileged operation a slice called (the vsys daemon, as root)."""
        require_root(caller, "vsys_event")
        name = validate_slice_name(slice_name)
        if not isinstance(op, str) or not VSYS_NAME.match(op) or len(op) > 64:
            raise ValidationError("op", f"an operation name matching {VSYS_NAME.pattern}", op)
        if not isinstance(detail, str) or len(detail) > 200:
            raise ValidationError("detail", "text of at most 200 characters", detail)
        self.event("vsys", f"vsys {op}", name, detail)
        return True

    # the node ---------------------------------------------------------------------------

    def set_node(self, caller: Caller, name: object, value: object) -> dict[str, Any]:
        """Change a node setting live (root on the node only): ``net_cap_kbit``, the node's
        outgoing cap; ``dormant_after_s``, the idleness after which a sliver goes dormant
        (0: never); ``warm_pool``, how many pooled slivers the node keeps ready (0: none)."""
        if not caller.is_root:
            raise PermissionDenied(f"caller {caller.name}: node settings are for root on the node")
        if name == "dormant_after_s":
            after = self.dormancy.set_after(value)
            self.event(caller.name, "set", None, f"dormant_after_s={after}")
            log.info("node setting dormant_after_s = %d by %s", after, caller.name)
            return self.status(caller)
        if name == "warm_pool":
            target = self.pool.set_target(value)
            self.event(caller.name, "set", None, f"warm_pool={target}")
            log.info("node setting warm_pool = %d by %s", target, caller.name)
            return self.status(caller)
        if name != "net_cap_kbit":
            raise ValidationError("setting", f"one of: {', '.join(NODE_SETTINGS)}", name)
        self._set_cap(caller, value, "set")
        return self.status(caller)

    def _set_cap(self, caller: Caller, value: object, action: str, reason: str = "") -> int:
        """Set the node's outgoing cap (never above the local policy's bound) and record
        who did it."""
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 100_000_000:
            raise ValidationError("net_cap_kbit", "an integer from 1 to 100000000", value)
        bound = self.policy.net_cap_max_kbit
        if bound and value > bound:
            raise ValidationError("net_cap_kbit", f"at most the {bound} kbit/s this node's "
                                  "policy allows (net_cap_max_kbit)", value)
        peak = self.rcaps.peak_guaranteed_kbit()
        with self.rcaps.lock:
            self.net.set_cap(value, peak, self.ports.identities(LIVE | {DESTROYED}))
        self.event(caller.name, action, None,
                   f"net_cap_kbit={value}" + (f": {reason}" if reason else ""))
        log.info("node setting net_cap_kbit = %d by %s", value, caller.name)
        return value

    # the site's admin sliver ------------------------------------------------------------

    def _admin_target(self, caller: Caller, name: str) -> None:
        """Root or the admin sliver may act on ``name``'s sliver, unless it is the node
        agent's or an admin sliver (the site acts on slices, not on PLC's agent)."""
        require_admin(caller, f"slice {name}")
        sliver = self.store.get_sliver(name)
        if caller.is_root:
            return
        if name == self.agent_slice or self.rcaps.effective(name).admin:
            what = "the node agent's" if name == self.agent_slice else "an admin"
            raise PermissionDenied(f"slice {sliver.slice}: {what} sliver; the site's admin acts "
                                   "only on slices' slivers")

    def admin_tools(self, caller: Caller) -> dict[str, str]:
        """The site's admin sliver as the node agent makes it: its slice name and its
        initscript, which installs the admin tools of this node manager's code (root or
        the agent)."""
        if not (caller.is_root or caller.agent):
            raise PermissionDenied(f"admin_tools: expected root or the node agent, found "
                                   f"{caller.name}")
        if self._admin_tools is None:
            from slicectl.admintools.bundle import initscript
            self._admin_tools = initscript()
        return {"slice": self.admin_slice, "initscript": self._admin_tools}

    def admin_ps(self, caller: Caller) -> list[Proc]:
        """Every process of the node: host pid, slice (``host``, ``service:NAME``,
        ``other`` for containers that are not this node's), pid in its sliver, CPU and
        memory, command line."""
        require_admin(caller, "admin_ps")
        return self.procs.scan()

    def admin_kill(self, caller: Caller, slice_name: object, pids: object = (),
                   reason: object = "") -> list[int]:
        """Kill processes of a slice's sliver (no pids: all but its init); a pid of the
        host, a node service or another slice is refused. Returns the pids killed."""
        name = validate_slice_name(slice_name)
        wanted, why = validate_pids(pids), validate_reason(reason)
        self._admin_target(caller, name)
        cid = self.store.get_sliver(name).container_id
        if not cid:
            raise StateError(f"slice {name}: expected a container, found none")
        killed = self.procs.kill(kill_targets(self.procs.scan(), name, wanted), cid)
        self.event(caller.name, "admin_kill", name,
                   f"pids {' '.join(map(str, killed)) or 'none'}" + (f": {why}" if why else ""))
        return killed

    def admin_stop(self, caller: Caller, slice_name: object, reason: object = "") -> SliverView:
        """Stop any slice's sliver; only root or the admin start it again."""
        return self._set_desired(caller, slice_name, STOPPED, validate_reason(reason), admin=True)

    def admin_start(self, caller: Caller, slice_name: object, reason: object = "") -> SliverView:
        return self._set_desired(caller, slice_name, RUNNING, validate_reason(reason), admin=True)

    def admin_cap(self, caller: Caller, kbit: object, reason: object = "") -> dict[str, Any]:
        """Set the node's outgoing cap, never above the local policy's
        ``net_cap_max_kbit``."""
        require_admin(caller, "admin_cap")
        self._set_cap(caller, kbit, "admin_cap", validate_reason(reason))
        return self.status(caller)

    def poll_network(self) -> None:
        """Fold kernel traffic counters into the database; apply daily budgets; make
        slivers idle long enough dormant."""
        self.net.poll(self.ports.identities(frozenset({RUNNING})))
        self.store.prune_usage(utc_day(self.clock() - USAGE_KEEP_DAYS * 86400))
        after, dormant = self.dormancy.check()
        for name in dormant:
            self.event("node", "dormant", name, f"idle for {after} s")

    def reconcile(self) -> list[str]:
        """Finish binds a killed node manager left in ``creating``, recreate lost
        containers, start slivers that should run, finish destroys, and remove our
        containers and accounts that no sliver row claims; then stop the slivers of
        slices the node's policy now refuses."""
        actions = self.reconciler.reconcile()
        actions += self.pool.reconcile({s.xid for s in self.store.slivers()})
        return actions + self.apply_refusals()

    def apply_refusals(self) -> list[str]:
        """Stop the slivers meant to run of slices the node's policy refuses (refused
        after they were bound); the reason names the policy. Returns what was done."""
        done = []
        for s in self.store.slivers():
            why = self.policy.refusal(s.slice)
            if why is None or s.desired != RUNNING:
                continue
            with self.slivers.locked(s.slice):
                self.slivers.set_desired(s.slice, STOPPED)
            self.event("node", "stop", s.slice, why)
            log.info("reconcile: stopped %s: %s", s.slice, why)
            done.append(f"stopped {s.slice}: {why}")
        return done

    def expire(self) -> list[str]:
        return self.reconciler.expire()

    def caller_for(self, peer: PinnedPeer) -> Caller:
        """Identify a peer pinned at connect time: host root, a sliver of this node, or
        a node service."""
        return self.callers.identify(peer)
