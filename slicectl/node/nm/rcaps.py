"""Rcap book-keeping: admission of rspecs, splitting, release, and what a slice holds."""

from __future__ import annotations

import logging
import re
import secrets
import threading
from collections.abc import Callable
from dataclasses import replace

from slicectl.core import admission
from slicectl.core.admission import NodeCapacity
from slicectl.core.errors import AdmissionError, PermissionDenied, StateError, ValidationError
from slicectl.core.rspec import RSpec, combine, parse_rspec, part_defaults, split
from slicectl.core.units import iso
from slicectl.core.wire import RcapInfo
from slicectl.node.nm.callers import Caller, may_grant, require_privileged
from slicectl.node.store import RcapRow, Store

log = logging.getLogger("slicectl.node.nm")

RCAP = re.compile(r"^[0-9a-f]{32}$")


def validate_rcap(rcap: object) -> str:
    if not isinstance(rcap, str) or not RCAP.match(rcap):
        raise ValidationError("rcap", "32 lowercase hex digits", rcap)
    return rcap


def owner_text(slice_name: str | None, rcap: str) -> str:
    return f"slice {slice_name}" if slice_name else f"unbound rcap {rcap[:8]}..."


def rcap_state(row: RcapRow, now: float) -> str:
    return "bound" if row.slice else "pending" if row.rspec.start > now else "usable"


#: Rights only the node's root grants (and the node agent ``admin``, see
#: :func:`~slicectl.node.nm.callers.may_grant`): a privileged slice gets no more than it holds.
ROOT_ONLY_RIGHTS = ("nm_privileged", "admin", "admin_sniffer")


def root_only_rights(caller: Caller, spec: RSpec) -> None:
    """Refuse an rspec with a right ``caller`` may not grant."""
    for right in ROOT_ONLY_RIGHTS:
        if getattr(spec, right) and not may_grant(caller, right, spec):
            who = "root or the node agent" if right == "admin" else "the node's root"
            extra = (" (the node agent only beside admin)"
                     if right == "admin_sniffer" and caller.agent else "")
            raise PermissionDenied(f"{right}: expected false, only {who}{extra} may grant "
                                   f"it, found true asked by {caller.name}")


class RcapBook:
    """The node's table of rcaps and the admission control in front of it.

    Args:
        store: the node's database.
        capacity: the node's limits.
        net_cap_kbit: the node's current outgoing cap (it changes live).
        clock: the current time.
        host_ports: (proto, port) of the host's own listeners, which no rcap may reserve.
    """

    def __init__(self, store: Store, capacity: NodeCapacity, net_cap_kbit: Callable[[], int],
                 clock: Callable[[], float],
                 host_ports: Callable[[], frozenset[tuple[str, int]]] = frozenset) -> None:
        self.store = store
        self.host_ports = host_ports
        self.capacity = capacity
        self.net_cap_kbit = net_cap_kbit
        self.clock = clock
        #: held while admitting: acquire, split, port claims and cap changes see one state
        self.lock = threading.Lock()

    def live(self) -> list[RcapRow]:
        now = self.clock()
        return [r for r in self.store.rcaps() if r.rspec.end > now]

    def acquire(self, caller: Caller, data: object) -> str:
        """Admit an rspec and return an rcap naming it.

        Raises:
            ValidationError, AdmissionError, PermissionDenied.
        """
        require_privileged(caller)
        spec = parse_rspec(data, self.clock())
        root_only_rights(caller, spec)
        taken = sorted(spec.ports() & self.host_ports())
        if taken:
            proto, port = taken[0]
            raise AdmissionError(f"{proto}_ports: port {port} has a listener on the node's host "
                                 "and cannot be reserved")
        with self.lock:
            live = self.live()
            outstanding = {owner_text(r.slice, r.rcap) + f" ({r.rcap[:8]})": r.rspec for r in live}
            owners = {
                key: owner_text(r.slice, r.rcap)
                for r in live if r.rspec.start < spec.end and spec.start < r.rspec.end
                for key in r.rspec.ports()
            }
            capacity = replace(self.capacity, net_cap_kbit=self.net_cap_kbit())
            admission.check(spec, outstanding, capacity, owners)
            rcap = secrets.token_hex(16)
            self.store.add_rcap(rcap, spec, caller.name)
        log.info("acquire %s by %s: %s", rcap, caller.name, spec.to_wire())
        return rcap

    def room(self, spec: RSpec, most: int) -> int:
        """How many more rcaps of ``spec`` (from 0 to ``most``) admission would grant now."""
        with self.lock:
            capacity = replace(self.capacity, net_cap_kbit=self.net_cap_kbit())
            return admission.room(spec, [r.rspec for r in self.live()], capacity, most)

    def held(self, caller: Caller, rcap: object) -> RcapRow:
        """The rcap's row, if ``caller`` holds it (root holds every rcap)."""
        row = self.store.get_rcap(validate_rcap(rcap))
        if not caller.is_root and row.owner != caller.name:
            raise PermissionDenied(f"rcap {row.rcap}: held by {row.owner}, not {caller.name}")
        return row

    def split(self, caller: Caller, rcap: object, data: object) -> str:
        """Carve the part ``data`` describes off ``rcap``; return the new rcap."""
        require_privileged(caller)
        with self.lock:
            row = self.held(caller, rcap)
            if row.slice is not None:
                raise StateError(f"rcap {row.rcap}: expected an unbound rcap, found it bound to "
                                 f"slice {row.slice}")
            fields = {**part_defaults(row.rspec), **data} if isinstance(data, dict) else data
            part = parse_rspec(fields, self.clock())
            remaining = split(row.rspec, part)
            child = secrets.token_hex(16)
            with self.store.tx():
                self.store.set_rcap_rspec(row.rcap, remaining)
                self.store.add_rcap(child, part, caller.name, parent=row.rcap)
        log.info("split %s -> %s by %s", row.rcap, child, caller.name)
        return child

    def info(self, caller: Caller, rcap: object) -> RcapInfo:
        row = self.held(caller, rcap)
        return RcapInfo(rcap=row.rcap, state=rcap_state(row, self.clock()), slice=row.slice,
                        owner=row.owner, parent=row.parent, rspec=row.rspec.to_wire(),
                        created=iso(row.created))

    def listing(self, caller: Caller) -> list[RcapInfo]:
        require_privileged(caller)
        return [self.info(caller, r.rcap) for r in self.store.rcaps()
                if caller.is_root or r.owner == caller.name]

    def effective(self, name: str, rows: list[RcapRow] | None = None) -> RSpec:
        """The combined rspec of every rcap bound to slice ``name``."""
        rows = self.store.rcaps(name) if rows is None else rows
        if not rows:
            raise StateError(f"slice {name}: expected at least one bound rcap, found none")
        return combine([r.rspec for r in rows])

    def by_slice(self) -> dict[str, list[RSpec]]:
        """Every bound rspec by slice, from one read."""
        out: dict[str, list[RSpec]] = {}
        for r in self.store.rcaps():
            if r.slice is not None:
                out.setdefault(r.slice, []).append(r.rspec)
        return out

    def peak_guaranteed_kbit(self) -> int:
        """The highest bandwidth guarantee outstanding at any one time."""
        live = self.live()
        return max((admission.peak_overlap(r.rspec, [x.rspec for x in live], "net_min_kbit")[0]
                    for r in live), default=0)
