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

#: Node service ports no sliver may reserve: ssh, the traffic auditor, PLC (where the
#: machine hosts it, HTTPS), the sensor server.
NODE_SERVICE_PORTS: frozenset[tuple[str, int]] = frozenset(
    {("tcp", 22), ("tcp", 80), ("tcp", 443), ("tcp", 33080), ("udp", 33080)}
)


@dataclass(frozen=True)
class NodeCapacity:
    """What one node can give: the upper bound of every single reservation, and, times
    its overcommit factor (node policy), of the sum of those outstanding at any time."""

    mem_mb: int
    disk_mb: int
    net_cap_kbit: int = 100_000
    #: Per-process ceiling of open files (fs.nr_open).
    max_nofile: int = 1 << 20
    #: Processes the kernel can hold (kernel.pid_max).
    max_nproc: int = 1 << 22
    #: Open files the kernel can hold (fs.file-max).
    total_nofile: int = 1 << 40
    cpu_shares: int = TOTAL_CPU_SHARES
    reserved_ports: frozenset[tuple[str, int]] = field(default=NODE_SERVICE_PORTS)
    mem_overcommit: float = 2.0
    disk_overcommit: float = 2.0
    nproc_overcommit: float = 1.0
    nofile_overcommit: float = 1.0
    cpu_overcommit: float = 1.0

    def pools(self) -> tuple[tuple[str, int, str], ...]:
        """(rspec field, what all outstanding reservations may sum to, its name)."""
        return (
            ("cpu_share", int(self.cpu_shares * self.cpu_overcommit),
             f"{self.cpu_shares} shares x {self.cpu_overcommit:g} overcommit"),
            ("net_min_kbit", self.net_cap_kbit,
             f"the node cap of {self.net_cap_kbit} kbit/s (guarantees)"),
            ("mem_mb", int(self.mem_mb * self.mem_overcommit),
             f"{self.mem_mb} MB of memory x {self.mem_overcommit:g} overcommit"),
            ("disk_mb", int(self.disk_mb * self.disk_overcommit),
             f"{self.disk_mb} MB of sliver disk x {self.disk_overcommit:g} overcommit"),
            ("nproc", int(self.max_nproc * self.nproc_overcommit),
             f"{self.max_nproc} processes (kernel.pid_max) x {self.nproc_overcommit:g}"),
            ("nofile", int(self.total_nofile * self.nofile_overcommit),
             f"{self.total_nofile} open files (fs.file-max) x {self.nofile_overcommit:g}"),
        )


def peaks(candidate: RSpec, others: Iterable[RSpec],
          attrs: tuple[str, ...]) -> dict[str, tuple[int, float]]:
    """For each of ``attrs``, the largest sum over ``others`` at any instant in the
    candidate's window, and the first instant it is reached (the candidate's start if
    nothing overlaps). One sweep over the windows' edges: O(n log n)."""
    events: list[tuple[float, int, RSpec]] = []
    for o in others:
        if o.start < candidate.end and candidate.start < o.end:
            events.append((max(o.start, candidate.start), 1, o))
            events.append((o.end, 0, o))  # at equal times ends come first: [start, end)
    events.sort(key=lambda e: (e[0], e[1]))
    running = dict.fromkeys(attrs, 0)
    best = {a: (0, candidate.start) for a in attrs}
    i = 0
    while i < len(events):
        t = events[i][0]
        while i < len(events) and events[i][0] == t:
            _, kind, o = events[i]
            for a in attrs:
                running[a] += getattr(o, a) if kind else -getattr(o, a)
            i += 1
        if t < candidate.end:
            for a in attrs:
                if running[a] > best[a][0]:
                    best[a] = (running[a], t)
    return best


def peak_overlap(candidate: RSpec, others: Iterable[RSpec], attr: str) -> tuple[int, float]:
    """The largest sum of ``attr`` over ``others`` at any instant in candidate's window,
    and the instant it is reached (see :func:`peaks`)."""
    return peaks(candidate, others, (attr,))[attr]


def _singles(capacity: NodeCapacity) -> tuple[tuple[str, int, str], ...]:
    """(rspec field, the bound of any one reservation, its name)."""
    return (
        ("mem_mb", capacity.mem_mb, "MB of memory on this node"),
        ("disk_mb", capacity.disk_mb, "MB of sliver disk on this node"),
        ("net_max_kbit", capacity.net_cap_kbit, "kbit/s node bandwidth cap"),
        ("nofile", capacity.max_nofile, "open files (fs.nr_open)"),
        ("nproc", capacity.max_nproc, "processes (kernel.pid_max)"),
    )


def room(candidate: RSpec, outstanding: Iterable[RSpec], capacity: NodeCapacity,
         most: int) -> int:
    """How many reservations like ``candidate`` (without ports) the node would still admit
    beside ``outstanding``, counting each against the sums: from 0 to ``most``."""
    if any(getattr(candidate, attr) > limit for attr, limit, _ in _singles(capacity)):
        return 0
    pools = capacity.pools()
    found = peaks(candidate, outstanding, tuple(p[0] for p in pools))
    fit = most
    for attr, limit, _ in pools:
        asked = getattr(candidate, attr)
        if asked > 0:
            fit = min(fit, max(0, limit - found[attr][0]) // asked)
    return max(0, fit)


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
    for attr, limit, what in _singles(capacity):
        asked = getattr(candidate, attr)
        if asked > limit:
            raise AdmissionError(f"{attr}: asked for {asked}, but the node has {limit} {what}")

    pools = capacity.pools()
    found = peaks(candidate, outstanding.values(), tuple(p[0] for p in pools))
    for attr, limit, what in pools:
        peak, when = found[attr]
        asked = getattr(candidate, attr)
        if peak + asked > limit:
            raise AdmissionError(
                f"{attr}: asked for {asked}, but only {max(0, limit - peak)} of {what} "
                f"are free at {iso(when)}"
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
