"""What the node manager shows of slivers and of the node."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

from slicectl.core.admission import NodeCapacity
from slicectl.core.containerplan import NodeFacts, container_name
from slicectl.core.units import iso
from slicectl.core.wire import SliverView
from slicectl.node.nm.boundary import Engine, Network
from slicectl.node.nm.callers import Caller, may_see, require_privileged, require_read
from slicectl.node.nm.rcaps import RcapBook
from slicectl.node.store import CREATING, DORMANT, STOPPED, RcapRow, Store


def shown_state(kept: str, engine_status: str) -> str:
    """The state a sliver is shown in: the engine's, except that a sliver the node made
    dormant shows ``dormant`` while its container is not running."""
    return DORMANT if kept == DORMANT and engine_status != "running" else engine_status


#: The events that stop a sliver (the last one says who stopped it).
STOP_ACTIONS = ("stop", "admin_stop")

class Views:
    """Reads only: slivers as ``slicectl show`` prints them, and the node's status."""

    def __init__(self, store: Store, engine: Engine, net: Network, rcaps: RcapBook,
                 facts: NodeFacts, capacity: NodeCapacity, node_id: str, code: str,
                 clock: Callable[[], float]) -> None:
        self.store = store
        self.engine = engine
        self.net = net
        self.rcaps = rcaps
        self.facts = facts
        self.capacity = capacity
        self.node_id = node_id
        self.code = code
        self.clock = clock
        self.started = clock()

    def describe(self, name: str, summary: dict[str, Any] | None = None,
                 rows: list[RcapRow] | None = None) -> SliverView:
        """The sliver as ``slicectl show`` prints it. With ``summary`` (from the engine's
        list) no further engine call is made and ``pid`` is left out; ``rows``: its bound
        rcaps, if already read."""
        sliver = self.store.get_sliver(name)
        rows = self.store.rcaps(name) if rows is None else rows
        spec = self.rcaps.effective(name, rows)
        info = SliverView(
            name=name, state=sliver.state, desired=sliver.desired,
            container=container_name(name), container_id=sliver.container_id,
            pid=None, address=None, xid=sliver.xid, uid=sliver.uid,
            rspec=spec.to_wire(), expires=iso(spec.end),
            created=iso(sliver.created), created_by=sliver.created_by,
            contacts=sliver.contacts, description=sliver.description,
            keys=len(sliver.keys), rcaps=[r.rcap for r in rows],
            net={"address": self.net.address(sliver.xid), **self.net.counters(name)},
            stopped=self.stopped(name) if sliver.desired == STOPPED else None,
        )
        if summary is not None:
            nets = (summary.get("NetworkSettings") or {}).get("Networks") or {}
            return replace(info, state=shown_state(sliver.state,
                                                   summary.get("State", sliver.state)),
                           address=(nets.get(self.facts.network) or {}).get("IPAddress") or None)
        st = self.engine.state(container_name(name))
        if st is None:
            return replace(info, state=sliver.state if sliver.state == CREATING else "missing")
        return replace(info, state=shown_state(sliver.state, st.status), pid=st.pid,
                       address=st.address, container_id=st.container_id)

    def stopped(self, name: str) -> dict[str, str] | None:
        """Who stopped the sliver, when and why (its last stop event)."""
        last = self.store.events(name, 1, STOP_ACTIONS)
        if not last:
            return None
        return {"by": last[0].who, "at": iso(last[0].at), "reason": last[0].detail}

    def get_sliver(self, caller: Caller, name: str) -> SliverView:
        require_read(caller, self.store.get_sliver(name))
        return self.describe(name)

    def list_slivers(self, caller: Caller) -> list[SliverView]:
        if not caller.reads_all:
            require_privileged(caller)
        summaries = self.engine.summaries()
        out = []
        for s in self.store.slivers():
            if not may_see(caller, s):
                continue
            rows = self.store.rcaps(s.slice)
            if not rows:
                continue  # being destroyed this moment: its rcaps went first
            out.append(self.describe(s.slice, summaries.get(s.slice, {"State": "missing"}), rows))
        return out

    def status(self, caller: Caller) -> dict[str, Any]:
        now = self.clock()
        live = self.rcaps.live()
        return {
            "node_id": self.node_id, "hostname": self.facts.hostname,
            "uptime_s": int(now - self.started), "engine": self.engine.version(),
            "image": self.facts.image, "cpus": self.facts.ncpus,
            "slivers": len(self.store.slivers()), "rcaps": len(live),
            "cpu_shares_outstanding": sum(r.rspec.cpu_share for r in live
                                          if r.rspec.start <= now),
            "cpu_shares_total": self.capacity.cpu_shares,
            "mem_mb": self.capacity.mem_mb, "disk_mb": self.capacity.disk_mb,
            "mem_mb_outstanding": sum(r.rspec.mem_mb for r in live if r.rspec.start <= now),
            "disk_mb_outstanding": sum(r.rspec.disk_mb for r in live if r.rspec.start <= now),
            "mem_overcommit": self.capacity.mem_overcommit,
            "disk_overcommit": self.capacity.disk_overcommit,
            "caller": caller.name, "code": self.code,
            "net_cap_kbit": self.net.cap_kbit,
            "net_guaranteed_kbit": sum(r.rspec.net_min_kbit for r in live if r.rspec.start <= now),
        }
