"""Who is asking the sensor server, and what it may have. Pure decisions, no I/O.

The sensor server listens on the node's host network; the node firewall lets a request in
only on ``lo`` or the node's bridge. A request's source address is therefore either the
node's own (a loopback address, or an address of one of the host's interfaces) or a
sliver's: a sliver's address is a function of its xid and it can neither change nor
forge it (no CAP_NET_RAW; the shim checks every source address). So the source address
identifies the caller:

- the node sees everything;
- a sliver sees its own slice's connection attempts, or every slice's if its rspec holds
  ``admin_sniffer`` (the right to read the administrative sniffer);
- an address that is neither gets nothing (:class:`PermissionDenied`, a 403).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from slicectl.core.errors import PermissionDenied, SlicectlError


@dataclass(frozen=True)
class Viewer:
    """The identified caller of one request.

    Args:
        source: the request's source address.
        slice: the caller's slice, or None for the node itself.
        sees_all: may read every slice's connection attempts.
    """

    source: str
    slice: str | None
    sees_all: bool

    @property
    def is_node(self) -> bool:
        return self.slice is None

    @property
    def scope(self) -> str | None:
        """The one slice whose rows this caller may see, or None for all of them."""
        return None if self.sees_all else self.slice

    def sees(self, slice_name: str) -> bool:
        return self.sees_all or slice_name == self.slice


class TooManyStreams(SlicectlError):
    """A streaming request beyond a bound (answered 429 or 503, see ``status``)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _address(source: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        addr = ipaddress.ip_address(source)
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def node_viewer(source: str, local: Collection[str]) -> Viewer | None:
    """The node itself when ``source`` is a loopback address or one of ``local`` (the
    host's own addresses), else None."""
    addr = _address(source)
    if addr is not None and (addr.is_loopback or str(addr) in local):
        return Viewer(str(addr), None, True)
    return None


def sliver_address(sliver: Mapping[str, Any]) -> str | None:
    """A sliver's address as the NM's ``list`` gives it: the engine's, else the planned one
    (a function of the xid)."""
    address = sliver.get("address") or (sliver.get("net") or {}).get("address")
    return str(address) if address else None


def sliver_viewer(source: str, slivers: Iterable[Mapping[str, Any]],
                  node_id: str) -> Viewer:
    """The sliver whose address is ``source``.

    Raises:
        PermissionDenied: no sliver of this node has that address (fail closed).
    """
    addr = _address(source)
    if addr is not None:
        for s in slivers:
            if sliver_address(s) == str(addr):
                rspec = s.get("rspec") or {}
                return Viewer(str(addr), str(s["name"]), rspec.get("admin_sniffer") is True)
    raise PermissionDenied(f"source {source or '(none)'}: expected the node or a sliver of "
                           f"node {node_id}, found neither")


def admit_stream(viewer: Viewer, open_from_source: int, open_total: int,
                 per_source: int, total: int) -> None:
    """Whether one more streaming response may open. The node is bounded only by the
    server's total; each sliver (one source address) also by ``per_source``.

    Raises:
        TooManyStreams: 429 past the per-source bound, 503 past the server's total.
    """
    if open_total >= total:
        raise TooManyStreams(503, f"streaming clients: expected at most {total} on this "
                                  f"server, found {open_total} open; try later")
    if not viewer.is_node and open_from_source >= per_source:
        raise TooManyStreams(429, f"streaming clients from {viewer.source}: expected at most "
                                  f"{per_source}, found {open_from_source} open")
