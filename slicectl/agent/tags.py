"""A sliver's PLC attributes (slice tags) as the rspec the agent asks the node manager for.

PlanetLab's rules (../shared/PLCAPI.md): a missing or malformed tag takes its default,
and the sliver is made anyway; the agent reports each such tag once per slice.

=================  ===========================================  =======================
tag                rspec field                                   default
=================  ===========================================  =======================
cpu_share          cpu_share (1..1000 shares of the node)        1
cpu_pct            > 0: cpu_capped, cpu_share = 10 x percent     0 (no cap)
net_min_rate       net_min_kbit (kbit/s)                         the rspec's (5)
net_max_rate       net_max_kbit (kbit/s)                         the rspec's (10,000)
net_max_kbyte      net_max_kbyte_day (daily budget, KiB)         0 (none)
disk_max           disk_mb (KiB in the tag, rounded up to MiB)   the rspec's (1,024 MiB)
memory / mem_max   mem_mb (MiB)                                  the rspec's (512)
nofile_hard        nofile                                        the rspec's (1,024)
nproc_hard         nproc                                         the rspec's (512)
enabled            <= 0: the sliver is stopped                   1
vsys               vsys (an operation name; several tags, or     none
                   names separated by commas or spaces)
vsys_vnet          vsys_vnet (the overlay range, a CIDR)         a /24 from the name
=================  ===========================================  =======================

Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from slicectl.core.errors import ValidationError
from slicectl.core.rspec import INT_FIELDS, TOTAL_CPU_SHARES, parse_vnet, parse_vsys

#: tag -> (rspec field, the tag's unit in the field's: the tag's integer is divided by
#: it, rounded up)
_SCALE: dict[str, tuple[str, int]] = {
    "cpu_share": ("cpu_share", 1),
    "net_min_rate": ("net_min_kbit", 1),
    "net_max_rate": ("net_max_kbit", 1),
    "net_max_kbyte": ("net_max_kbyte_day", 1),
    "disk_max": ("disk_mb", 1024),
    "memory": ("mem_mb", 1),
    "mem_max": ("mem_mb", 1),
    "nofile_hard": ("nofile", 1),
    "nproc_hard": ("nproc", 1),
}
#: Tags the agent reads besides the resource ones (not reported as unknown).
#: slicectl's tags: the node ports reserved for the sliver ("8080,9000").
PORT_TAGS = frozenset({"tcp_ports", "udp_ports"})
OTHER_TAGS = frozenset({"cpu_pct", "enabled", "initscript", "initscript_code", "vref",
                        "vsys", "vsys_vnet", "hmac", "ssh_key"})


@dataclass(frozen=True)
class Resources:
    """What a sliver's tags ask of the node."""

    rspec: dict[str, Any]
    enabled: bool
    #: One line per tag that was missing its meaning (malformed, out of range, unknown).
    problems: tuple[str, ...]


def _int(text: str) -> int | None:
    try:
        return int(text.strip(), 10)
    except (ValueError, AttributeError):
        return None


def vsys_tags(attributes: Sequence[Mapping[str, Any]]) -> tuple[dict[str, Any], list[str]]:
    """Every ``vsys`` tag adds its names (one, or a list split by commas or spaces);
    the first ``vsys_vnet`` sets the overlay range; a problem line per bad value."""
    names: list[str] = []
    out: dict[str, Any] = {}
    problems: list[str] = []
    for a in attributes:
        tag, text = str(a.get("tagname", "")), str(a.get("value") or "")
        try:
            if tag == "vsys":
                names += parse_vsys(text.replace(",", " ").split() or [""])
            elif tag == "vsys_vnet" and tag not in out:
                out[tag] = parse_vnet(text.strip())
        except ValidationError as e:
            out.setdefault(tag, "")
            problems.append(f"{tag}: expected {e.expected}, found {text[:40]!r}; ignored")
    out = {k: v for k, v in out.items() if v and k == "vsys_vnet"}
    if names:
        out["vsys"] = sorted(set(names))
    return out, problems


def resources(attributes: Sequence[Mapping[str, Any]]) -> Resources:
    """The rspec fields (without start and end) and the enabled flag of one sliver.

    Node-scoped tags come first in GetSlivers' attributes and the first of a name wins
    (but every ``vsys`` tag counts).
    """
    seen: dict[str, str] = {}
    for a in attributes:
        name, value = str(a.get("tagname", "")), a.get("value")
        if name and name not in seen:
            seen[name] = "" if value is None else str(value)
    rspec, problems = vsys_tags(attributes)
    for tag, text in sorted(seen.items()):
        if tag in _SCALE:
            field, per = _SCALE[tag]
            n = _int(text)
            bounds = INT_FIELDS[field]
            value = None if n is None else -(-n // per)
            if value is None or not bounds.lo <= value <= bounds.hi:
                problems.append(f"{tag}: expected an integer giving {field} from {bounds.lo} "
                                f"to {bounds.hi}, found {text[:40]!r}; using the default")
                continue
            rspec[field] = value
        elif tag in PORT_TAGS:
            ports = [_int(w) for w in text.replace(",", " ").split()]
            if not ports or any(n is None or not 1 <= n <= 65535 for n in ports):
                problems.append(f"{tag}: expected port numbers separated by commas, found "
                                f"{text[:40]!r}; no {tag[:3].upper()} port reserved")
                continue
            rspec[tag] = sorted({n for n in ports if n is not None})
        elif tag not in OTHER_TAGS:
            problems.append(f"{tag}: not a tag this node knows; ignored")
    pct = _int(seen.get("cpu_pct", "0") or "0")
    if pct is None or not 0 <= pct <= 100:
        problems.append(f"cpu_pct: expected an integer from 0 to 100, found "
                        f"{seen['cpu_pct'][:40]!r}; no cap")
    elif pct > 0:
        rspec["cpu_capped"] = True
        rspec["cpu_share"] = max(1, pct * TOTAL_CPU_SHARES // 100)
    lo, hi = rspec.get("net_min_kbit"), rspec.get("net_max_kbit")
    if lo is not None and hi is not None and hi < lo:
        problems.append(f"net_max_rate: expected at least net_min_rate ({lo}), found {hi}; "
                        "using net_min_rate")
        rspec["net_max_kbit"] = lo
    enabled_text = seen.get("enabled", "1")
    enabled_n = _int(enabled_text or "1")
    if enabled_n is None:
        problems.append(f"enabled: expected an integer, found {enabled_text[:40]!r}; enabled")
    return Resources(rspec, enabled_n is None or enabled_n > 0, tuple(problems))


def initscript(sliver: Mapping[str, Any], initscripts: Sequence[Mapping[str, Any]]
               ) -> tuple[str, str | None]:
    """The sliver's initscript text ('' for none) and a problem line, if any:
    ``initscript_code`` wins over ``initscript`` (a name among the node's initscripts)."""
    tags: dict[str, Any] = {}
    for a in sliver.get("attributes", []):
        tags.setdefault(str(a.get("tagname", "")), a.get("value"))
    code = tags.get("initscript_code")
    if code:
        return str(code), None
    name = tags.get("initscript")
    if not name:
        return "", None
    for s in initscripts:
        if s.get("name") == name and s.get("enabled", True):
            return str(s.get("script", "")), None
    return "", f"initscript: expected the name of an enabled initscript, found {str(name)[:40]!r}"
