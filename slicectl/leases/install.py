"""The lease service's sliver, as ``slicectl leases up`` makes it (host root, through the
node manager's socket): ``nm_privileged``, its initscript carrying the service and its
request list (:mod:`slicectl.sliverapp`). A new list or new code replaces the initscript
and restarts the sliver; the leases it made survive (its record is on its disk, and their
slivers are never touched by a restart of their creator)."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from slicectl.sliverapp import bundle as app
from slicectl.sliverapp.install import NM, ensure_sliver

from .main import SLIVER_LOG, SLIVER_REQUESTS, SLIVER_STATE
from .requests import Request

#: The lease service's slice (``slicectl leases up --name`` picks another).
LEASES_SLICE = "slicectl_leases"
#: What its sliver holds: it makes slivers, it runs none of a slice's work.
LEASES_RSPEC: dict[str, Any] = {"nm_privileged": True, "cpu_share": 10, "mem_mb": 128,
                                "disk_mb": 128, "raw_sockets": False}
#: What the bundle holds beside :data:`slicectl.sliverapp.bundle.COMMON` (not this
#: module: it runs on the host).
MODULES = (
    "slicectl/leases/__init__.py", "slicectl/leases/requests.py", "slicectl/leases/plan.py",
    "slicectl/leases/apply.py", "slicectl/leases/report.py", "slicectl/leases/service.py",
    "slicectl/leases/main.py", "slicectl/core/units.py", "slicectl/core/rspec.py",
    "slicectl/plc/__init__.py", "slicectl/plc/credentials.py",
)
SLIVER_BUNDLE = f"{SLIVER_STATE}/leases.pyz"


def bundle(root: Path = app.ROOT) -> bytes:
    return app.bundle(MODULES, "slicectl.leases.main", root)


def leases_initscript(requests: Sequence[Request], code: bytes | None = None) -> str:
    """The service sliver's /etc/rc.vinit: the bundle and the request list (as JSON)."""
    listing = json.dumps({"requests": [r.to_json() for r in requests]}, indent=1)
    return app.initscript("the slicectl lease service (written by `slicectl leases up`)",
                          SLIVER_STATE, SLIVER_BUNDLE, bundle() if code is None else code,
                          [(SLIVER_REQUESTS, listing)], ["run"], SLIVER_LOG)


def ensure_leases_sliver(nm: NM, requests: Sequence[Request], state: Path,
                         say: Callable[[str], None], name: str = LEASES_SLICE,
                         now: float | None = None) -> str:
    """Make the service's sliver ``name`` serving ``requests``, or bring it up to date."""
    return ensure_sliver(nm, name, LEASES_RSPEC, leases_initscript(requests),
                         "the lease service (short-lived slices from a request list)",
                         "the lease service's sliver", state, say, now)
