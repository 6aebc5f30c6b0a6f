"""The lease service's calls on the node manager, and its record (on disk in its sliver,
written whole before each bind and after every action, so a restart neither makes a lease
twice nor forgets one)."""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from slicectl.core.errors import (
    NotFoundError,
    PermissionDenied,
    SlicectlError,
    UsageError,
    ValidationError,
)
from slicectl.core.units import human_duration, iso, parse_instant
from slicectl.plc.credentials import write_secret

from .plan import Action, Lease, Mine, retry_after_s

log = logging.getLogger("slicectl.leases")

#: ``nm(method, *args)``: a call on the node manager (ipc.rpc.Client.call).
NM = Callable[..., Any]
#: Refusals the node manager gives for good: the name is another creator's, the request
#: is bad. Any other failure (no room now, the node manager away) is tried again later.
FINAL = (PermissionDenied, ValidationError, UsageError)
_LEASE_FIELDS = {f.name for f in fields(Lease)}


@dataclass
class Record:
    leases: dict[str, Lease] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path) -> Record:
        try:
            data = json.loads(path.read_text())
            return cls({k: Lease(**{f: v for f, v in entry.items() if f in _LEASE_FIELDS})
                        for k, entry in data.get("leases", {}).items()})
        except FileNotFoundError:
            return cls()
        except (OSError, ValueError, TypeError, AttributeError) as e:
            # kept aside, not lost: the slivers it made are found again by name (adopt)
            log.warning("record %s: expected the service's JSON record, found %s; kept as "
                        "%s.bad, starting afresh", path, e, path.name)
            with contextlib.suppress(OSError):
                path.replace(path.with_name(path.name + ".bad"))
            return cls()

    def save(self, path: Path) -> None:
        write_secret(path, {"leases": {k: asdict(v) for k, v in sorted(self.leases.items())}})


def mine(nm: NM, now: float) -> dict[str, Mine]:
    """The slivers the node manager lists for the caller (a privileged slice sees only the
    ones it made)."""
    out: dict[str, Mine] = {}
    for s in nm("list"):
        rspec = dict(s.get("rspec") or {})
        end = parse_instant("end", rspec.get("end", s.get("expires", "now")), now)
        out[str(s["name"])] = Mine(end, tuple(s.get("rcaps") or ()))
    return out


def _quietly(nm: NM, *call: Any) -> None:
    """A call whose failure changes nothing (the node manager freed it at the end)."""
    with contextlib.suppress(SlicectlError):
        nm(*call)


def _create(nm: NM, action: Action, record: Record, save: Callable[[], None],
            now: float) -> str:
    r = action.request
    assert r is not None
    old = record.leases.get(r.key)
    end = now + r.duration_s
    try:
        rcap = str(nm("acquire", {**dict(r.rspec), "end": iso(end)}))
        record.leases[r.key] = Lease(r.key, r.slice, r.digest, "binding", rcap, now, end)
        save()  # a crash from here on is found on restart: adopt, or abandon and again
        try:
            nm("bind", r.slice, rcap, {
                "keys": list(r.keys), "initscript": r.initscript,
                "description": f"a lease of {human_duration(r.duration_s)} from the lease "
                               "service"})
        except SlicectlError:
            _quietly(nm, "release", rcap)  # nothing half-done: the rcap goes back
            raise
    except FINAL as e:
        record.leases[r.key] = Lease(r.key, r.slice, r.digest, "refused", reason=str(e))
        return f"refused {r.slice}: {e}"
    except SlicectlError as e:
        tries = old.tries + 1 if old is not None and old.state == "failed" else 1
        wait = retry_after_s(tries)
        record.leases[r.key] = Lease(r.key, r.slice, r.digest, "failed", reason=str(e),
                                     retry_at=now + wait, tries=tries)
        return f"failed {r.slice} (try {tries}, again in {wait:.0f}s): {e}"
    record.leases[r.key] = Lease(r.key, r.slice, r.digest, "active", rcap, now, end)
    return f"leased {r.slice} until {iso(end)}"


def apply(nm: NM, action: Action, record: Record, save: Callable[[], None],
          now: float) -> str:
    """One action; the record follows what the node now has. What was done (one line)."""
    lease = record.leases.get(action.key)
    if action.kind == "create":
        return _create(nm, action, record, save, now)
    if action.kind == "adopt":
        r = action.request
        if lease is None:
            assert r is not None
            lease = Lease(r.key, r.slice, r.digest, "active", action.rcap, now, action.end)
        record.leases[action.key] = replace(lease, state="active", end=action.end)
        return f"found {action.slice} made before a restart; its lease ends {iso(action.end)}"
    if action.kind == "abandon":
        _quietly(nm, "release", action.rcap)
        record.leases.pop(action.key, None)
        return f"gave back the rcap of {action.slice}'s interrupted bind"
    assert lease is not None
    if action.kind == "end":
        with contextlib.suppress(NotFoundError):  # the node manager may have been first
            nm("destroy", action.slice)
        _quietly(nm, "release", action.rcap)
        _quietly(nm, "release_name", action.slice)  # the name is free for others again
        record.leases[action.key] = replace(lease, state="ended", end=min(lease.end, now))
        return f"ended {action.slice}'s lease"
    if action.kind == "lost":
        _quietly(nm, "release", action.rcap)
        record.leases[action.key] = replace(lease, state="ended", end=now,
                                            reason="removed from the node before its end")
        return f"{action.slice} was removed before its lease ended"
    raise ValueError(f"action: expected create, adopt, abandon, end or lost, found {action.kind}")
