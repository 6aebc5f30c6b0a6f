"""A node's sliver network: bandwidth classes, the port manager and traffic counters.

Decides with :mod:`slicectl.core.netplan`, acts with :mod:`slicectl.node.tc` and
:mod:`slicectl.node.firewall`. The node manager calls it when slivers start, change, stop and
go away; a timer calls :meth:`NodeNetwork.poll` to fold kernel counters into the database
and to apply daily byte budgets.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from pyroute2 import IPRoute

from slicectl.core.errors import EngineError, ValidationError
from slicectl.core.netplan import (
    PortGrant,
    SliverTc,
    chain_names,
    firewall_rules,
    grants_delta,
    host_rules,
    parent_classid,
    port_grants,
    sliver_address,
    sliver_tc,
    wake_delta,
)
from slicectl.core.rspec import RSpec
from slicectl.node import firewall, tc
from slicectl.node.nm.boundary import NetIdentity
from slicectl.node.store import Store

log = logging.getLogger("slicectl.node.network")

DEFAULT_CAP_KBIT = 100_000
BUDGET_THRESHOLD = 0.8


def utc_day(now: float) -> str:
    return datetime.fromtimestamp(now, tz=UTC).strftime("%Y-%m-%d")


def budget_ceil_kbit(spec: RSpec, used_bytes: int, now: float) -> int | None:
    """The ceiling a daily byte budget imposes now, or None while under 80% of it.

    Past the threshold the ceiling is what spreads the rest evenly over the rest of the
    (UTC) day, never below the sliver's guaranteed rate.
    """
    budget = spec.net_max_kbyte_day * 1000
    if not budget or used_bytes < BUDGET_THRESHOLD * budget:
        return None
    day_end = (int(now) // 86400 + 1) * 86400
    left_s = max(day_end - now, 1.0)
    remaining = max(budget - used_bytes, 0)
    return max(spec.net_min_kbit, min(spec.net_max_kbit, int(remaining * 8 / 1000 / left_s)))


def host_veth(pid: int) -> str:
    """The host-side name of the veth whose peer is the sliver's eth0 (pid: its init)."""
    path = Path(f"/proc/{pid}/root/sys/class/net/eth0/iflink")
    try:
        peer = int(path.read_text())
    except (OSError, ValueError) as e:
        raise EngineError(f"sliver pid {pid}: cannot read its eth0 peer from {path}") from e
    with IPRoute() as ipr:
        links = ipr.get_links(peer)
    if not links:
        raise EngineError(f"sliver pid {pid}: no host interface with index {peer}")
    return str(links[0].get_attr("IFLA_IFNAME"))


class NodeNetwork:
    """Bandwidth, ports and counters of one node manager's slivers."""

    def __init__(self, store: Store, *, node_id: str, subnet: str, bridge: str, ifb: str,
                 clock: Callable[[], float] = time.time,
                 sliver_services: tuple[tuple[str, int], ...] = (),
                 allow_link_local: bool = False, cap_max_kbit: int = 0,
                 refused_prefixes: tuple[str, ...] = ()) -> None:
        self.store = store
        #: node policy: the bound on the cap (0: none), destinations slivers never reach
        self.cap_max_kbit = cap_max_kbit
        self.refused_prefixes = refused_prefixes
        #: (proto, port) of host services meant for slivers (the sensor server, DNS).
        self.sliver_services = sliver_services
        self.allow_link_local = allow_link_local
        self.subnet = subnet
        self.bridge = bridge
        self.ifb = ifb
        self.chains = chain_names(node_id)
        self.clock = clock
        self.sys_net = Path("/sys/class/net")
        self._lock = threading.Lock()
        #: slice -> its host-side veth, recorded at attach (read for received counters)
        self._veths: dict[str, str] = {}
        #: slice -> the reserved ports its rules in our chains forward now
        self._grants: dict[str, tuple[PortGrant, ...]] = {}
        #: slice -> the last class counters folded in (an unchanged reading is skipped)
        self._folded: dict[str, tuple[int, int]] = {}
        #: dormant slices: stopped, classes and ports kept (see :meth:`park`)
        self._parked: set[str] = set()
        #: the NFLOG group wake rules log to (None: connections wake no sliver)
        self.wake_group: int | None = None

    @property
    def cap_kbit(self) -> int:
        """The node's outgoing cap: as set, never above node policy's bound."""
        cap = int(self.store.setting("net_cap_kbit", str(DEFAULT_CAP_KBIT)))
        return min(cap, self.cap_max_kbit) if self.cap_max_kbit else cap

    def setup(self) -> None:
        tc.ensure_tree(self.ifb, self.cap_kbit)
        firewall.ensure_jumps(self.chains)
        text = host_rules(self.bridge, self.chains, self.sliver_services, self.allow_link_local)
        with self._lock:
            firewall.apply(text)
        firewall.read_back(text, "filter", self.chains["host"])

    def teardown(self) -> None:
        """Remove the whole tree and our chains (for a node manager that goes away)."""
        tc.remove_tree(self.ifb)
        firewall.remove(self.chains)

    def address(self, xid: int) -> str:
        return sliver_address(self.subnet, xid)

    def plan(self, ident: NetIdentity) -> SliverTc:
        used, _ = self.store.usage(ident.slice, utc_day(self.clock()))
        ceil = budget_ceil_kbit(ident.rspec, used, self.clock())
        return sliver_tc(ident.xid, self.address(ident.xid), ident.rspec, self.cap_kbit, ceil)

    def attach(self, ident: NetIdentity, pid: int) -> None:
        """Give a running sliver its classes and send its veth's traffic through them."""
        plan = self.plan(ident)
        with self._lock:
            if plan.parent_class not in tc.read_classes_of(self.ifb, [plan.parent_class]):
                self.store.reset_last_usage(ident.slice)
                self._folded.pop(ident.slice, None)
            tc.apply_sliver(self.ifb, plan)
            tc.read_back(self.ifb, plan)
            veth = host_veth(pid)
            tc.redirect_to_ifb(veth, self.ifb)
            self._veths[ident.slice] = veth
            self._unpark(ident.slice)

    def update(self, ident: NetIdentity) -> None:
        plan = self.plan(ident)
        with self._lock:
            tc.update_classes(self.ifb, plan)
            tc.read_back(self.ifb, plan)

    def detach(self, ident: NetIdentity) -> None:
        """Fold the final counters in, then remove the sliver's classes and filters."""
        with self._lock:
            self._fold([ident], tc.read_classes_of(self.ifb, [parent_classid(ident.xid)]))
            tc.remove_sliver(self.ifb, self.plan(ident))
            self._veths.pop(ident.slice, None)
            self._folded.pop(ident.slice, None)
            self._unpark(ident.slice)

    def apply_ports(self, slivers: list[NetIdentity]) -> None:
        """Rebuild the port manager's chains from the reserved ports of all slivers (at
        start, and when a change of one slice's rules did not apply)."""
        grants = port_grants((s.slice, self.address(s.xid), s.rspec) for s in slivers)
        with self._lock:
            firewall.apply(firewall_rules(grants, self.bridge, self.subnet, self.chains,
                                          self.allow_link_local, frozenset(self._parked),
                                          self.wake_group, self.refused_prefixes))
            self._grants = {}
            for g in grants:
                self._grants[g.slice] = (*self._grants.get(g.slice, ()), g)

    def apply_slice_ports(self, slice_name: str, ident: NetIdentity | None) -> None:
        """Make one slice's rules forward its reserved ports (none when ``ident`` is None:
        the sliver is gone), touching no other slice's rules; nothing to do for a slice
        whose ports did not change, as most slivers reserve none.

        Raises:
            EngineError: the delta did not apply (a rule was changed from outside); the
                caller rebuilds the chains with :meth:`apply_ports`.
        """
        new = () if ident is None else tuple(
            port_grants([(ident.slice, self.address(ident.xid), ident.rspec)]))
        with self._lock:
            old = self._grants.get(slice_name, ())
            text = grants_delta(old, new, self.bridge, self.subnet, self.chains)
            if text is None:
                return
            firewall.apply(text)
            if slice_name in self._parked:
                self._wake_rules(old, new)
            if new:
                self._grants[slice_name] = new
            else:
                self._grants.pop(slice_name, None)

    def set_cap(self, kbit: int, guaranteed_kbit: int, slivers: list[NetIdentity]) -> None:
        """Change the node cap live; it may not fall under the guarantees granted."""
        if kbit < guaranteed_kbit:
            raise ValidationError("net_cap_kbit", f"at least the {guaranteed_kbit} kbit/s "
                                  "guaranteed to slivers", kbit)
        self.store.set_setting("net_cap_kbit", str(kbit))
        with self._lock:
            tc.ensure_tree(self.ifb, kbit)
            for s in slivers:
                tc.update_classes(self.ifb, self.plan(s))

    def _fold(self, slivers: list[NetIdentity], held: dict[int, tc.ClassStats]) -> None:
        """Fold the readings that changed since the last fold into the database, in one
        transaction (an idle node writes nothing)."""
        readings = []
        for s in slivers:
            stats = held.get(parent_classid(s.xid))
            if stats is not None and self._folded.get(s.slice) != (stats.bytes, stats.packets):
                readings.append((s.slice, stats.bytes, stats.packets))
        if readings:
            self.store.add_usages(utc_day(self.clock()), readings)
            self._folded.update((name, (b, p)) for name, b, p in readings)

    def poll(self, slivers: list[NetIdentity]) -> None:
        """Fold kernel counters into today's totals and apply budget ceilings. The one
        dump of the tree is taken outside the lock, so binds never wait on it."""
        held = tc.read_classes(self.ifb)
        with self._lock:
            self._fold(slivers, held)
            for s in slivers:
                if s.rspec.net_max_kbyte_day:
                    plan = self.plan(s)
                    if held.get(plan.parent_class) and \
                            held[plan.parent_class].ceil_bps != plan.classes[0].ceil_kbit * 125:
                        tc.update_classes(self.ifb, plan)
                        log.info("slice %s: daily budget sets ceil to %d kbit/s", s.slice,
                                 plan.classes[0].ceil_kbit)

    def sent(self, slice_name: str) -> tuple[int, int] | None:
        """The (bytes, packets) its classes had sent at the last fold (None: none yet)."""
        return self._folded.get(slice_name)

    def park(self, slice_name: str) -> None:
        """The sliver stopped and keeps its classes and ports (it went dormant): forget
        its veth, which went with it, and have connections to its reserved ports logged to
        the wake group (:meth:`attach` at its next start finds the classes in place and
        takes the wake rules out). Idempotent."""
        with self._lock:
            self._veths.pop(slice_name, None)
            if slice_name not in self._parked:
                self._parked.add(slice_name)
                self._wake_rules((), self._grants.get(slice_name, ()))

    def _unpark(self, slice_name: str) -> None:
        if slice_name in self._parked:
            self._parked.discard(slice_name)
            self._wake_rules(self._grants.get(slice_name, ()), ())

    def _wake_rules(self, old: tuple[PortGrant, ...], new: tuple[PortGrant, ...]) -> None:
        if self.wake_group is None:
            return
        text = wake_delta(old, new, self.bridge, self.chains, self.wake_group)
        if text is not None:
            firewall.apply(text)

    def counters(self, slice_name: str) -> dict[str, int]:
        """Sent: today's totals (kept across restarts). Received: what the running sliver's
        veth delivered to it since it was attached (the host side's transmit counters)."""
        sent, packets = self.store.usage(slice_name, utc_day(self.clock()))
        rx = {"bytes_received": 0, "packets_received": 0}
        veth = self._veths.get(slice_name)
        if veth is not None:
            stats = self.sys_net / veth / "statistics"
            with contextlib.suppress(OSError, ValueError):  # the veth went with its sliver
                rx = {"bytes_received": int((stats / "tx_bytes").read_text()),
                      "packets_received": int((stats / "tx_packets").read_text())}
        return {"bytes_sent_today": sent, "packets_sent_today": packets, **rx}
