"""The lease service's status file: every request with what became of it. Pure."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from slicectl.core.units import iso

from .plan import Lease
from .requests import Request


def status(requests: Sequence[Request], leases: Mapping[str, Lease], now: float,
           last_error: str = "") -> dict[str, Any]:
    """``active`` (with end times), ``ended``, ``refused`` (with the node manager's
    reason), ``waiting`` (not served yet: new, or failed and tried again at ``retry_at``)."""
    out: dict[str, list[dict[str, Any]]] = {"active": [], "ended": [], "refused": [],
                                            "waiting": []}
    for r in requests:
        lease = leases.get(r.key)
        entry: dict[str, Any] = {"slice": r.slice, "id": r.key}
        if lease is None or lease.state == "binding":
            out["waiting"].append(entry)
        elif lease.state == "failed":
            out["waiting"].append({**entry, "reason": lease.reason, "tries": lease.tries,
                                   "retry_at": iso(lease.retry_at)})
        elif lease.state == "refused":
            out["refused"].append({**entry, "reason": lease.reason})
        else:
            entry |= {"start": iso(lease.start), "end": iso(lease.end)}
            if lease.state == "active":
                out["active"].append({**entry, "left_s": max(0, round(lease.end - now))})
            else:
                out["ended"].append({**entry, **({"reason": lease.reason} if lease.reason
                                                 else {})})
    listed = {r.key for r in requests}
    for key, lease in sorted(leases.items()):  # dropped from the list, still running
        if key not in listed and lease.state == "active":
            out["active"].append({"slice": lease.slice, "id": key, "start": iso(lease.start),
                                  "end": iso(lease.end), "left_s": max(0, round(lease.end - now)),
                                  "unlisted": True})
    return {"updated": iso(now), "requests": len(requests), "last_error": last_error, **out}
