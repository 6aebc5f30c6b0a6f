"""Node policy: what the machine's owner sets and PLC cannot override.

Pure. Defaults are bounds a real measurement tool never reaches; they exist so that one
sliver cannot make a host daemon hold without end.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, fields

from slicectl.core.errors import ValidationError
from slicectl.core.rspec import validate_slice_name

#: A site's short name (PLC's ``login_base``), the part of a slice name before ``_``.
SITE_NAME = re.compile(r"^[a-z0-9]{1,20}$")
#: The most entries a list setting may hold.
MAX_LIST = 1024
#: What every refusal by a node's policy says (PLC's agent tells PLC on seeing it).
REFUSED = "refused by this node's policy"


@dataclass(frozen=True)
class NodePolicy:
    #: Open safe raw / sniffer sockets one sliver may hold at the shim.
    shim_sessions_per_sliver: int = 64
    #: Socket buffers (MiB, as set; the kernel holds up to twice) one sliver's sessions
    #: may make the shim hold.
    shim_buffer_mib_per_sliver: int = 256
    #: (proto, port) claims one sliver's shim sockets may hold.
    shim_claims_per_sliver: int = 64
    #: Connections one container (or the host) may hold open at the node manager.
    nm_connections_per_owner: int = 64
    #: Consumers one container may hold open at the admin sniffer.
    sniffer_consumers_per_owner: int = 8
    #: Admission overcommit of memory and sliver disk (sum of reservations over capacity).
    mem_overcommit: float = 2.0
    disk_overcommit: float = 2.0
    #: ... and of processes and open files (1: the kernel's own limits).
    nproc_overcommit: float = 1.0
    nofile_overcommit: float = 1.0
    #: ... and of CPU shares (1: shares are guarantees; more: a node of mostly dormant or
    #: idle slivers admits more slivers than it has shares, as PlanetLab's nodes did).
    cpu_overcommit: float = 1.0
    #: May slivers reach 169.254.0.0/16 (link-local, cloud metadata)?
    allow_link_local: bool = False
    #: The local administrator's bound on the node's outgoing cap (kbit/s; 0: none):
    #: ``net_cap_kbit`` is never set above it, by anyone.
    net_cap_max_kbit: int = 0
    #: Slices that may not have a sliver here, by name ...
    refused_slices: tuple[str, ...] = ()
    #: ... and by site (the part of the slice name before ``_``).
    refused_sites: tuple[str, ...] = ()
    #: Destination prefixes slivers may never send to (for example the site's own network).
    refused_prefixes: tuple[str, ...] = ()
    #: Seconds a vsys operation may run before its whole process group is killed.
    vsys_timeout_s: int = 30
    #: vsys calls one slice may have running at once.
    vsys_calls_per_slice: int = 4
    #: Pooled slivers (node setting ``warm_pool``) the node may make a minute, in the
    #: background: each costs what a sliver's creation does.
    warm_pool_fills_per_min: int = 30

    def refusal(self, slice_name: str) -> str | None:
        """Why this policy refuses a sliver of ``slice_name`` here (a text holding
        :data:`REFUSED`), or None."""
        if slice_name in self.refused_slices:
            return f"slice {slice_name}: {REFUSED} (refused_slices)"
        site = slice_name.split("_", 1)[0]
        if site in self.refused_sites:
            return f"slice {slice_name}: {REFUSED} (refused_sites: {site})"
        return None


#: Integer settings whose range is not 1 to 2**20.
INT_RANGES = {"net_cap_max_kbit": (0, 100_000_000), "warm_pool_fills_per_min": (1, 600)}


def _list_item(name: str, value: object) -> str:
    if name == "refused_slices":
        try:
            return validate_slice_name(value)
        except ValidationError:
            raise ValidationError(name, "slice names like site_name", value) from None
    if name == "refused_sites":
        if not isinstance(value, str) or not SITE_NAME.match(value):
            raise ValidationError(name, "site names (login_base: 1 to 20 of a-z, 0-9)", value)
        return value
    if not isinstance(value, str):
        raise ValidationError(name, "address prefixes like 192.0.2.0/24", value)
    try:
        return str(ipaddress.IPv4Network(value, strict=False))
    except ValueError:
        raise ValidationError(name, "IPv4 address prefixes like 192.0.2.0/24", value) from None


def parse_list(name: str, value: object) -> tuple[str, ...]:
    """A list setting: each entry checked and normalized, duplicates dropped, sorted."""
    if not isinstance(value, list) or len(value) > MAX_LIST:
        raise ValidationError(name, f"a list of at most {MAX_LIST} entries", value)
    return tuple(sorted({_list_item(name, v) for v in value}))


def parse_policy(data: object) -> NodePolicy:
    """A policy from a mapping (a YAML file's contents); unknown keys are refused.

    Raises:
        ValidationError: naming the first bad field.
    """
    if data is None:
        return NodePolicy()
    if not isinstance(data, dict):
        raise ValidationError("policy", "a mapping of settings", type(data).__name__,
                              as_text=True)
    known = {f.name: f for f in fields(NodePolicy)}
    out: dict[str, object] = {}
    for key, value in data.items():
        f = known.get(str(key))
        if f is None:
            raise ValidationError(str(key)[:40], f"one of {', '.join(known)}",
                                  "an unknown setting", as_text=True)
        default = getattr(NodePolicy(), f.name)
        if isinstance(default, tuple):
            value = parse_list(f.name, value)
        elif isinstance(default, bool):
            if not isinstance(value, bool):
                raise ValidationError(f.name, "true or false", value)
        elif isinstance(default, int):
            lo, hi = INT_RANGES.get(f.name, (1, 1 << 20))
            if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
                raise ValidationError(f.name, f"an integer from {lo} to {hi}", value)
        elif isinstance(value, bool) or not isinstance(value, (int, float)) \
                or not 1.0 <= float(value) <= 100.0:
            raise ValidationError(f.name, "a factor from 1 to 100", value)
        else:
            value = float(value)
        out[f.name] = value
    return NodePolicy(**out)  # type: ignore[arg-type]


def policy_data(policy: NodePolicy) -> dict[str, object]:
    """The policy as a policy file holds it (lists for list settings)."""
    return {f.name: list(v) if isinstance(v := getattr(policy, f.name), tuple) else v
            for f in fields(NodePolicy)}


def setting_value(name: str, text: str) -> object:
    """A setting's value from its text on a command line: ``true``/``false``, a number, or
    a comma-separated list (empty: none); checked by :func:`parse_policy` after.

    Raises:
        ValidationError: no such setting, or the text is not of its kind.
    """
    known = {f.name for f in fields(NodePolicy)}
    if name not in known:
        raise ValidationError("setting", f"one of {', '.join(sorted(known))}", name)
    default = getattr(NodePolicy(), name)
    if isinstance(default, tuple):
        return [v.strip() for v in text.split(",") if v.strip()]
    if isinstance(default, bool):
        if text not in ("true", "false"):
            raise ValidationError(name, "true or false", text)
        return text == "true"
    try:
        return int(text) if isinstance(default, int) else float(text)
    except ValueError:
        kind = "an integer" if isinstance(default, int) else "a number"
        raise ValidationError(name, kind, text) from None


def with_setting(policy: NodePolicy, name: str, text: str) -> NodePolicy:
    """``policy`` with one setting changed from its command-line text, all checked."""
    data = policy_data(policy)
    data[name] = setting_value(name, text)
    return parse_policy(data)
