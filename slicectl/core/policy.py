"""Node policy: what the machine's owner sets and PLC cannot override.

Pure. Defaults are bounds a real measurement tool never reaches; they exist so that one
sliver cannot make a host daemon hold without end.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from slicectl.core.errors import ValidationError


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
        if isinstance(default, bool):
            if not isinstance(value, bool):
                raise ValidationError(f.name, "true or false", value)
        elif isinstance(default, int):
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 1 << 20:
                raise ValidationError(f.name, f"an integer from 1 to {1 << 20}", value)
        elif isinstance(value, bool) or not isinstance(value, (int, float)) \
                or not 1.0 <= float(value) <= 100.0:
            raise ValidationError(f.name, "a factor from 1 to 100", value)
        else:
            value = float(value)
        out[f.name] = value
    return NodePolicy(**out)  # type: ignore[arg-type]
