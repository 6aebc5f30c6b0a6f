"""The agent's sliver, as ``slicectl node up`` makes it: the node's bootstrap slice
(:data:`AGENT_SLICE`), ``nm_privileged``, whose initscript carries the agent, PLC's
certificate and the node's PLC credentials (:mod:`slicectl.agent.bundle`).

Made by host root through the node manager's socket like any sliver; a changed bundle or
credentials (new code, a new key) replace the initscript and restart the sliver; a rcap
near its end is renewed.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from slicectl.core.errors import NotFoundError
from slicectl.core.units import iso
from slicectl.plc.credentials import NodeCredentials

from .bundle import bundle, initscript

#: The node agent's slice on every node.
AGENT_SLICE = "slicectl_agent"
#: What the agent's sliver holds (it makes slivers, it runs none of a slice's work).
AGENT_RSPEC: dict[str, Any] = {"nm_privileged": True, "cpu_share": 20, "mem_mb": 256,
                               "disk_mb": 256, "raw_sockets": False}
#: The rcap's lifetime, and how close to its end ``node up`` renews it.
LIFETIME_S = 365 * 86400
RENEW_BEFORE_S = 60 * 86400

NM = Callable[..., Any]


def agent_initscript(creds: NodeCredentials, ca_file: Path | None) -> str:
    ca = ca_file.read_text() if ca_file is not None and ca_file.exists() else None
    return initscript(creds, ca, bundle())


def ensure_agent_sliver(nm: NM, creds: NodeCredentials, ca_file: Path | None, state: Path,
                        say: Callable[[str], None], now: float | None = None,
                        name: str = AGENT_SLICE) -> str:
    """Make the agent's sliver ``name``, or bring it up to date; what was done (one line).

    ``state``: where the digest of the initscript it was given is kept (the node manager
    does not give initscripts back). ``name``: another than :data:`AGENT_SLICE` only for
    private test nodes, which share the host's accounts."""
    now = time.time() if now is None else now
    script = agent_initscript(creds, ca_file)
    digest = hashlib.sha256(script.encode()).hexdigest()
    mark = state / f"{name}-initscript.sha256"
    try:
        info = nm("get_sliver", name)
    except NotFoundError:
        info = None
    if info is None:
        rcap = nm("acquire", {**AGENT_RSPEC, "end": iso(now + LIFETIME_S)})
        nm("bind", name, rcap, {"initscript": script, "keys": [],
                                       "description": "the node agent (PLC's node manager)"})
        mark.write_text(digest)
        done = f"made the agent's sliver {name}"
    else:
        done = f"the agent's sliver {name} is up to date"
        if (mark.read_text().strip() if mark.exists() else "") != digest:
            nm("set_initscript", name, script)
            nm("stop", name)
            nm("start", name)
            mark.write_text(digest)
            done = f"gave the agent's sliver {name} new code or credentials and restarted it"
        end = info.get("rspec", {}).get("end")
        if isinstance(end, str) and _epoch(end) - now < RENEW_BEFORE_S:
            old = list(info.get("rcaps") or [])
            rcap = nm("acquire", {**AGENT_RSPEC, "end": iso(now + LIFETIME_S)})
            nm("bind", name, rcap)
            for r in old:
                nm("release", r)
            done += "; renewed its rcap"
    say(done)
    return done


def _epoch(text: str) -> float:
    from slicectl.core.units import parse_instant

    return parse_instant("end", text, 0)
