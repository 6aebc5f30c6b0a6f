"""Resource specifications (rspecs): parse, validate, combine and split them.

An rspec is plain data. It arrives as a YAML file or as an XML-RPC struct; both go through
:func:`parse_rspec`, which fills defaults and rejects unknown or ill-typed fields with a
one-line :class:`~slicectl.core.errors.ValidationError` naming the field.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from slicectl.core.errors import StateError, UsageError, ValidationError
from slicectl.core.units import iso, parse_instant

#: Shares are tenths of a percent of the node's CPU; at most this many are outstanding.
TOTAL_CPU_SHARES = 1000
DEFAULT_LIFETIME_S = 14 * 86400

SLICE_NAME = re.compile(r"^[a-z0-9]+_[a-z0-9_]+$")
SLICE_NAME_MAX = 32
#: A privileged operation's name (a script in the node's vsys directory).
VSYS_NAME = re.compile(r"^[a-z0-9_]+$")
VSYS_NAME_MAX = 64


def validate_slice_name(name: object) -> str:
    """Check a PlanetLab slice name: ``<site>_<name>``, lower case, at most 32 characters."""
    if not isinstance(name, str) or not SLICE_NAME.match(name) or len(name) > SLICE_NAME_MAX:
        raise ValidationError(
            "slice", f"a name like site_name matching {SLICE_NAME.pattern}, at most "
            f"{SLICE_NAME_MAX} characters", name,
        )
    return name


@dataclass(frozen=True)
class IntRange:
    lo: int
    hi: int


# Bounds of the integer fields. Upper bounds are sanity limits; what a node can honour is
# admission control's business (see slicectl.core.admission).
INT_FIELDS: dict[str, IntRange] = {
    "cpu_share": IntRange(1, TOTAL_CPU_SHARES),
    "mem_mb": IntRange(16, 1 << 22),
    "disk_mb": IntRange(16, 1 << 24),
    "nofile": IntRange(64, 1 << 20),
    "nproc": IntRange(16, 1 << 22),
    "net_min_kbit": IntRange(1, 100_000_000),
    "net_max_kbit": IntRange(1, 100_000_000),
    "net_max_kbyte_day": IntRange(0, 1 << 40),
}
BOOL_FIELDS = ("cpu_capped", "create_vm", "nm_privileged", "raw_sockets", "admin_sniffer",
               "admin")
#: The rights a split part may hold only if its parent does.
RIGHT_FLAGS = ("nm_privileged", "raw_sockets", "admin_sniffer", "create_vm", "admin")
PORT_FIELDS = ("tcp_ports", "udp_ports")
TIME_FIELDS = ("start", "end")

#: Quantities that add up when rspecs are combined and are subtracted by a split.
ADDITIVE = ("cpu_share", "mem_mb", "disk_mb", "nofile", "nproc", "net_min_kbit")


@dataclass(frozen=True)
class RSpec:
    """A validated resource specification. Times are seconds since the epoch (UTC)."""

    start: float
    end: float
    cpu_share: int = 1
    cpu_capped: bool = False
    mem_mb: int = 512
    disk_mb: int = 1024
    nofile: int = 1024
    nproc: int = 512
    net_min_kbit: int = 5
    net_max_kbit: int = 10_000
    #: Daily byte budget in kilobytes (0: none). Past 80% the ceiling drops so it lasts the day.
    net_max_kbyte_day: int = 0
    tcp_ports: tuple[int, ...] = field(default=())
    udp_ports: tuple[int, ...] = field(default=())
    create_vm: bool = True
    nm_privileged: bool = False
    raw_sockets: bool = True
    #: May read the node's administrative sniffer (every sliver's packets, by slice).
    admin_sniffer: bool = False
    #: Privileged operations (vsys scripts) the slice may call, by name.
    vsys: tuple[str, ...] = field(default=())
    #: The slice's overlay range for ``fd_tuntap`` (a CIDR; "": slicectl.core.vsys's
    #: default_vnet, a /24 derived from the slice name).
    vsys_vnet: str = ""
    #: The site's admin sliver (``site_admin``): may see every process of the node, kill
    #: or stop a sliver and lower the node's cap, through the NM's ``admin_*`` methods
    #: only. Never with ``nm_privileged``: it makes, keys and binds no sliver.
    admin: bool = False

    def ports(self) -> set[tuple[str, int]]:
        return {("tcp", p) for p in self.tcp_ports} | {("udp", p) for p in self.udp_ports}

    def to_wire(self) -> dict[str, Any]:
        """The rspec as a struct for XML-RPC or JSON: times as ISO 8601, ports as lists."""
        d = asdict(self)
        d["start"] = iso(self.start)
        d["end"] = iso(self.end)
        d["tcp_ports"] = list(self.tcp_ports)
        d["udp_ports"] = list(self.udp_ports)
        d["vsys"] = list(self.vsys)
        return d


FIELD_NAMES = tuple(f.name for f in fields(RSpec))


def _int(name: str, value: object) -> int:
    bounds = INT_FIELDS[name]
    expected = f"an integer from {bounds.lo} to {bounds.hi}"
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValidationError(name, expected, value)
    if not bounds.lo <= value <= bounds.hi:
        raise ValidationError(name, expected, value)
    return value


def _bool(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise ValidationError(name, "true or false", value)
    return value


def _ports(name: str, value: object) -> tuple[int, ...]:
    expected = "a list of distinct port numbers from 1 to 65535"
    if not isinstance(value, (list, tuple)):
        raise ValidationError(name, expected, value)
    seen: set[int] = set()
    for p in value:
        if isinstance(p, bool) or not isinstance(p, int) or not 1 <= p <= 65535 or p in seen:
            raise ValidationError(name, expected, value)
        seen.add(p)
    return tuple(sorted(seen))


def parse_vsys(value: object) -> tuple[str, ...]:
    """Operation names, each matching :data:`VSYS_NAME`; sorted, each once."""
    if not isinstance(value, (list, tuple)) or len(value) > 256 or not all(
            isinstance(v, str) and VSYS_NAME.match(v) and len(v) <= VSYS_NAME_MAX for v in value):
        raise ValidationError("vsys", f"a list of names matching {VSYS_NAME.pattern}", value)
    return tuple(sorted(set(value)))


def parse_vnet(value: object) -> str:
    """An IPv4 prefix from /16 to /30, host bits cleared ("": the default)."""
    try:
        net = ipaddress.IPv4Network(value, strict=False) if value else None
    except (ValueError, TypeError):
        net = None
    if value and (net is None or not 16 <= net.prefixlen <= 30):
        raise ValidationError("vsys_vnet", "an IPv4 prefix from /16 to /30, or empty",
                              str(value)[:40])
    return str(net or "")


def parse_rspec(data: object, now: float) -> RSpec:
    """Validate a mapping of rspec fields, filling defaults.

    Args:
        data: a mapping (from YAML or XML-RPC); ``None`` means all defaults.
        now: the current time, against which ``start``/``end`` durations are taken.

    Raises:
        ValidationError: for an unknown field, a wrong type or value, or ``end`` not after
            ``start`` and now.
    """
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ValidationError("rspec", "a mapping of field: value", data)
    values: dict[str, Any] = {}
    for key, value in data.items():
        if key not in FIELD_NAMES:
            raise ValidationError(
                str(key), f"a known rspec field ({', '.join(FIELD_NAMES)})",
                "an unknown field", as_text=True,
            )
        if key in INT_FIELDS:
            values[key] = _int(key, value)
        elif key in BOOL_FIELDS:
            values[key] = _bool(key, value)
        elif key in PORT_FIELDS:
            values[key] = _ports(key, value)
        elif key == "vsys":
            values[key] = parse_vsys(value)
        elif key == "vsys_vnet":
            values[key] = parse_vnet(value)
    start = parse_instant("start", data.get("start", "now"), now)
    end = parse_instant("end", data["end"], now) if "end" in data else max(start, now) + DEFAULT_LIFETIME_S
    if end <= start:
        raise ValidationError("end", f"a time after start ({iso(start)})", iso(end), as_text=True)
    if end <= now:
        raise ValidationError("end", f"a time in the future (now is {iso(now)})", iso(end),
                              as_text=True)
    spec = RSpec(start=start, end=end, **values)
    if spec.admin and spec.nm_privileged:
        raise ValidationError("admin", "false with nm_privileged (an admin sliver makes no "
                              "slivers)", True)
    if spec.net_max_kbit < spec.net_min_kbit:
        raise ValidationError(
            "net_max_kbit", f"at least net_min_kbit ({spec.net_min_kbit})", spec.net_max_kbit
        )
    return spec


def load_rspec_mapping(path: str | Path) -> dict[str, Any]:
    """Read a YAML rspec file into a mapping fit for the wire (times as ISO text).

    Raises:
        UsageError: the file cannot be read, is not YAML, or is not a mapping.
    """
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise UsageError(f"rspec file {path}: cannot read it ({e.strerror})") from e
    import yaml  # here, not at the top: the node agent carries this module into a sliver without PyYAML

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise UsageError(f"rspec file {path}: expected YAML, found a syntax error{where}") from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValidationError("rspec", "a mapping of field: value", data)
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, datetime):
            value = iso(value.timestamp() if value.tzinfo else
                        value.replace(tzinfo=UTC).timestamp())
        elif isinstance(value, date):
            value = value.isoformat()
        out[str(key)] = value
    return out


def load_rspec_file(path: str | Path, now: float) -> RSpec:
    """Read and validate a YAML rspec file (see :func:`load_rspec_mapping`)."""
    return parse_rspec(load_rspec_mapping(path), now)


def combine(specs: list[RSpec]) -> RSpec:
    """The effective rspec of a sliver that holds several rcaps.

    Quantities add up (shares capped at the node total), ceilings and flags take the
    largest, ports unite, and the window spans all of them. Daily byte budgets add up
    over the rcaps that have one: an rcap without a budget adds none and lifts none.
    """
    if not specs:
        raise StateError("combine: expected at least one rspec, found none")
    first = specs[0]
    if len(specs) == 1:
        return first
    sums = {name: sum(getattr(s, name) for s in specs) for name in ADDITIVE}
    sums["cpu_share"] = min(sums["cpu_share"], TOTAL_CPU_SHARES)
    return replace(
        first,
        start=min(s.start for s in specs),
        end=max(s.end for s in specs),
        net_max_kbit=max(max(s.net_max_kbit for s in specs), sums["net_min_kbit"]),
        # Budgets add up; an rcap without one (0) does not lift another's.
        net_max_kbyte_day=sum(s.net_max_kbyte_day for s in specs),
        tcp_ports=tuple(sorted({p for s in specs for p in s.tcp_ports})),
        udp_ports=tuple(sorted({p for s in specs for p in s.udp_ports})),
        cpu_capped=all(s.cpu_capped for s in specs),
        create_vm=any(s.create_vm for s in specs),
        nm_privileged=any(s.nm_privileged for s in specs),
        raw_sockets=any(s.raw_sockets for s in specs),
        admin_sniffer=any(s.admin_sniffer for s in specs),
        vsys=tuple(sorted({v for s in specs for v in s.vsys})),
        vsys_vnet=next((s.vsys_vnet for s in specs if s.vsys_vnet), ""),
        admin=any(s.admin for s in specs),
        **sums,
    )


def part_defaults(parent: RSpec) -> dict[str, Any]:
    """What a part split off ``parent`` has where the request is silent: the least of
    every quantity, the parent's window, ceilings and flags, no ports and (if the parent
    has a daily budget) none given, so the request must say how much of it moves."""
    out: dict[str, Any] = {name: INT_FIELDS[name].lo for name in ADDITIVE}
    out |= {"start": iso(parent.start), "end": iso(parent.end),
            "net_max_kbit": parent.net_max_kbit, "cpu_capped": parent.cpu_capped}
    out |= {flag: getattr(parent, flag) for flag in RIGHT_FLAGS}
    out |= {"vsys": list(parent.vsys), "vsys_vnet": parent.vsys_vnet}
    return out


def split(parent: RSpec, part: RSpec) -> RSpec:
    """Carve ``part`` off ``parent``; return what remains of the parent.

    The part must fit inside the parent: no more of any quantity (the daily byte budget
    too) than the parent has while leaving the parent at least each field's minimum, no
    ceiling or privilege the parent lacks, only ports the parent holds (they move to the
    part), and a window inside the parent's.

    Raises:
        ValidationError: naming the first field of ``part`` that does not fit.
    """
    remaining: dict[str, int] = {}
    for name in ADDITIVE:
        have, want = getattr(parent, name), getattr(part, name)
        lo = INT_FIELDS[name].lo
        if want > have - lo:
            raise ValidationError(
                name, f"at most {have - lo} (the rcap has {have} and keeps at least {lo})", want
            )
        remaining[name] = have - want
    budget = parent.net_max_kbyte_day
    if budget and not 0 < part.net_max_kbyte_day < budget:
        raise ValidationError("net_max_kbyte_day",
                              f"from 1 to {budget - 1} (the rcap's daily budget is {budget} "
                              "and it keeps at least 1)", part.net_max_kbyte_day)
    if budget:
        remaining["net_max_kbyte_day"] = budget - part.net_max_kbyte_day
    if part.net_max_kbit > parent.net_max_kbit:
        raise ValidationError("net_max_kbit", f"at most {parent.net_max_kbit}", part.net_max_kbit)
    for flag in RIGHT_FLAGS:
        if getattr(part, flag) and not getattr(parent, flag):
            raise ValidationError(flag, "false (the rcap does not grant it)", True)
    if parent.cpu_capped and not part.cpu_capped:
        raise ValidationError("cpu_capped", "true (the rcap is capped)", False)
    extra_ops = set(part.vsys) - set(parent.vsys)
    if extra_ops:
        raise ValidationError("vsys", f"operations the rcap grants {list(parent.vsys)}",
                              sorted(extra_ops))
    if part.vsys_vnet and parent.vsys_vnet and not ipaddress.IPv4Network(
            part.vsys_vnet).subnet_of(ipaddress.IPv4Network(parent.vsys_vnet)):
        raise ValidationError("vsys_vnet", f"a range inside the rcap's {parent.vsys_vnet}",
                              part.vsys_vnet)
    for name in PORT_FIELDS:
        extra = set(getattr(part, name)) - set(getattr(parent, name))
        if extra:
            raise ValidationError(name, f"ports the rcap holds {list(getattr(parent, name))}",
                                  sorted(extra))
    if part.start < parent.start or part.end > parent.end:
        raise ValidationError(
            "start/end", f"a window inside {iso(parent.start)} .. {iso(parent.end)}",
            f"{iso(part.start)} .. {iso(part.end)}", as_text=True,
        )
    rest = replace(
        parent,
        tcp_ports=tuple(p for p in parent.tcp_ports if p not in part.tcp_ports),
        udp_ports=tuple(p for p in parent.udp_ports if p not in part.udp_ports),
    )
    return replace(rest, **remaining)  # type: ignore[arg-type]
