"""Admission control: can the node honour one more rspec beside those outstanding?

Pure: takes the candidate, the outstanding rspecs (acquired, bound or not, not yet
expired) and the node's capacity, and raises :class:`AdmissionError` with the reason.
Reservations are checked over time: two rspecs only compete where their windows overlap.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from slicectl.core.errors import AdmissionError
from slicectl.core.rspec import TOTAL_CPU_SHARES, RSpec
from slicectl.core.units import iso

#: Node service ports no sliver may reserve: ssh, the traffic auditor, the sensor server.
NODE_SERVICE_PORTS: frozenset[tuple[str, int]] = frozenset(
    {("tcp", 22), ("tcp", 80), ("tcp", 33080), ("udp", 33080)}
)


@dataclass(frozen=True)
class NodeCapacity:
    """What one node can give: used as the upper bound of every single reservation."""

    mem_mb: int
    disk_mb: int
    net_cap_kbit: int = 100_000
    max_nofile: int = 1 << 20
    max_nproc: int = 1 << 22
    cpu_shares: int = TOTAL_CPU_SHARES
    reserved_ports: frozenset[tuple[str, int]] = field(default=NODE_SERVICE_PORTS)


def peak_overlap(candidate: RSpec, others: Iterable[RSpec], attr: str) -> tuple[int, float]:
    """The largest sum of ``attr`` over ``others`` at any instant in candidate's window.

    Returns the peak and the instant it is reached (the candidate's start if nothing
    overlaps).
    """
    overlapping = [o for o in others if o.start < candidate.end and candidate.start < o.end]
    # The sum only rises at a start, so it peaks at one of these instants.
    instants = sorted({candidate.start} | {o.start for o in overlapping if o.start > candidate.start})
    best, when = 0, candidate.start
    for t in instants:
        total = sum(getattr(o, attr) for o in overlapping if o.start <= t < o.end)
        if total > best:
            best, when = total, t
    return best, when


def check(
    candidate: RSpec,
    outstanding: Mapping[str, RSpec],
    capacity: NodeCapacity,
    port_owners: Mapping[tuple[str, int], str] | None = None,
) -> None:
    """Admit ``candidate`` or raise the first reason the node cannot honour it.

    Args:
        candidate: the rspec asked for.
        outstanding: rspecs already granted, by an owner description used in messages
            (for example ``"slice pl_alpha"`` or ``"rcap 1f2e..."``).
        capacity: the node's limits.
        port_owners: who holds each reserved (protocol, port) now, for messages; defaults
            to the owners derived from ``outstanding``.

    Raises:
        AdmissionError: naming the resource, what was asked, and what is left.
    """
    singles = (
        ("mem_mb", capacity.mem_mb, "MB of memory on this node"),
        ("disk_mb", capacity.disk_mb, "MB of sliver disk on this node"),
        ("net_max_kbit", capacity.net_cap_kbit, "kbit/s node bandwidth cap"),
        ("nofile", capacity.max_nofile, "open files (fs.nr_open)"),
        ("nproc", capacity.max_nproc, "processes (kernel.pid_max)"),
    )
    for attr, limit, what in singles:
        asked = getattr(candidate, attr)
        if asked > limit:
            raise AdmissionError(f"{attr}: asked for {asked}, but the node has {limit} {what}")

    others = list(outstanding.values())
    peak, when = peak_overlap(candidate, others, "cpu_share")
    if peak + candidate.cpu_share > capacity.cpu_shares:
        free = capacity.cpu_shares - peak
        raise AdmissionError(
            f"cpu_share: asked for {candidate.cpu_share}, but only {free} of "
            f"{capacity.cpu_shares} shares are free at {iso(when)}"
        )
    peak, when = peak_overlap(candidate, others, "net_min_kbit")
    if peak + candidate.net_min_kbit > capacity.net_cap_kbit:
        free = capacity.net_cap_kbit - peak
        raise AdmissionError(
            f"net_min_kbit: asked for a guarantee of {candidate.net_min_kbit} kbit/s, but only "
            f"{free} of the node cap of {capacity.net_cap_kbit} kbit/s are free at {iso(when)}"
        )

    for proto, port in sorted(candidate.ports()):
        if (proto, port) in capacity.reserved_ports:
            raise AdmissionError(
                f"{proto}_ports: port {port} is a node service port and cannot be reserved"
            )
    owners: dict[tuple[str, int], str] = dict(port_owners or {})
    if port_owners is None:
        for owner, spec in outstanding.items():
            if spec.start < candidate.end and candidate.start < spec.end:
                for key in spec.ports():
                    owners.setdefault(key, owner)
    for proto, port in sorted(candidate.ports()):
        if (proto, port) in owners:
            raise AdmissionError(
                f"{proto}_ports: port {port} is already reserved by {owners[(proto, port)]}"
            )
