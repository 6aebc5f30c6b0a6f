"""The node's port space: reserved ports (the port manager's chains) and the ports that
slices' safe raw and sniffer sockets hold (claims the shim makes)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from slicectl.core.admission import NODE_SERVICE_PORTS
from slicectl.core.errors import AdmissionError, PermissionDenied, SlicectlError, ValidationError
from slicectl.core.rspec import RSpec, combine, parse_rspec, validate_slice_name
from slicectl.core.vsys import slice_vnet
from slicectl.core.wire import NetEntry
from slicectl.node.nm.boundary import NetIdentity, Network
from slicectl.node.nm.rcaps import RcapBook
from slicectl.node.store import RUNNING, STOPPED, SliverRow, Store

log = logging.getLogger("slicectl.node.nm")

DESTROYED = "destroyed"
LIVE = frozenset({RUNNING, STOPPED})


def identity_spec(specs: list[RSpec], now: float) -> RSpec:
    """A sliver's network rspec. One whose last rcap was just unbound (an undone bind)
    still needs an identity to have its classes removed; the defaults serve."""
    return combine(specs) if specs else parse_rspec({}, now)


class PortBook:
    """Reserved ports and socket claims.

    Args:
        store: the node's database.
        net: the node's network (it applies the port manager's chains).
        rcaps: the rcap table (slivers' reservations).
        clock: the current time.
    """

    def __init__(self, store: Store, net: Network, rcaps: RcapBook,
                 clock: Callable[[], float]) -> None:
        self.store = store
        self.net = net
        self.rcaps = rcaps
        self.clock = clock

    def identities(self, desired: frozenset[str] = LIVE) -> list[NetIdentity]:
        """Identities of all slivers in a desired state, from one read of the rcaps."""
        by_slice = self.rcaps.by_slice()
        now = self.clock()
        return [NetIdentity(s.slice, s.xid, identity_spec(by_slice.get(s.slice, []), now))
                for s in self.store.slivers() if s.desired in desired]

    def ident(self, sliver: SliverRow, spec: RSpec | None = None) -> NetIdentity:
        """One sliver's network identity (``spec``: its combined rspec, if just read;
        else its rcaps are read)."""
        if spec is None:
            spec = identity_spec([r.rspec for r in self.store.rcaps(sliver.slice)], self.clock())
        return NetIdentity(sliver.slice, sliver.xid, spec)

    def sync(self) -> None:
        """Make the port manager's chains match the reserved ports of all slivers."""
        self.net.apply_ports(self.identities())

    def sync_slice(self, name: str, spec: RSpec | None = None) -> None:
        """Make the chains match one slice's reserved ports (none once its sliver is gone
        or being destroyed): reads that slice's rows only. A change that does not apply
        (a rule removed from outside) rebuilds the chains from all slivers. ``spec``: the
        slice's combined rspec, if the caller has just read it."""
        sliver = self.store.find_sliver(name)
        ident = self.ident(sliver, spec) if sliver is not None and sliver.desired in LIVE \
            else None
        try:
            self.net.apply_slice_ports(name, ident)
        except SlicectlError as e:
            log.warning("slice %s: its port rules did not apply (%s); rebuilding the chains",
                        name, e)
            self.sync()

    def net_map(self) -> list[NetEntry]:
        """Every sliver's network identity and socket rights, from the database alone."""
        by_container = {s.slice: s.container_id for s in self.store.slivers()}
        return [
            NetEntry(slice=i.slice, xid=i.xid, address=self.net.address(i.xid),
                     container_id=by_container.get(i.slice) or "",
                     raw_sockets=i.rspec.raw_sockets, admin_sniffer=i.rspec.admin_sniffer,
                     tcp_ports=list(i.rspec.tcp_ports), udp_ports=list(i.rspec.udp_ports),
                     vsys=list(i.rspec.vsys), vsys_vnet=slice_vnet(i.slice, i.rspec))
            for i in self.identities()
        ]

    def claim(self, slice_name: object, proto: object, port: object, kind: object) -> bool:
        """Record that a slice's safe raw (``raw``) or sniffer (``sniff``) socket holds a
        port. Refused if the port is a node service's, reserved to another slice, or held
        by another slice's socket."""
        name = validate_slice_name(slice_name)
        if proto not in ("tcp", "udp") or kind not in ("raw", "sniff"):
            raise ValidationError("proto/kind", "tcp or udp / raw or sniff", f"{proto}/{kind}",
                                  as_text=True)
        if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
            raise ValidationError("port", "a port number from 1 to 65535", port)
        with self.rcaps.lock:
            if (proto, port) in NODE_SERVICE_PORTS:
                raise PermissionDenied(f"{proto} port {port}: a node service's, not a slice's")
            for ident in self.identities():
                if ident.slice != name and (proto, port) in ident.rspec.ports():
                    raise AdmissionError(f"{proto} port {port}: expected a free port, found it "
                                         f"reserved to slice {ident.slice}")
            for c_proto, c_port, c_slice, _ in self.store.claims():
                if (c_proto, c_port) == (proto, port) and c_slice != name:
                    raise AdmissionError(f"{proto} port {port}: expected a free port, found it "
                                         f"held by a socket of slice {c_slice}")
            self.store.get_sliver(name)
            self.store.add_claim(proto, port, name, kind)
        return True

    def release(self, slice_name: object, proto: object, port: object, kind: object) -> bool:
        if not isinstance(slice_name, str) or not isinstance(proto, str) \
                or not isinstance(port, int) or not isinstance(kind, str):
            raise ValidationError("release_port", "slice, proto, port, kind",
                                  (slice_name, proto, port, kind), as_text=True)
        return self.store.delete_claims(proto, port, slice_name, kind) > 0

    def release_all(self) -> int:
        return self.store.delete_claims()

    def claims(self) -> list[dict[str, Any]]:
        return [{"proto": p, "port": n, "slice": s, "kind": k}
                for p, n, s, k in self.store.claims()]
