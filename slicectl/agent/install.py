"""The agent's sliver, as ``slicectl node up`` makes it: the node's bootstrap slice
(:data:`AGENT_SLICE`), ``nm_privileged``, whose initscript carries the agent, PLC's
certificate and the node's PLC credentials (:mod:`slicectl.agent.bundle`), made and kept
up to date by :func:`slicectl.sliverapp.install.ensure_sliver`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from slicectl.core.labels import AGENT_SLICE
from slicectl.plc.credentials import NodeCredentials
from slicectl.sliverapp.install import NM, ensure_sliver

from .bundle import bundle, initscript

__all__ = ["AGENT_RSPEC", "AGENT_SLICE", "agent_initscript", "ensure_agent_sliver"]
#: What the agent's sliver holds (it makes slivers, it runs none of a slice's work).
AGENT_RSPEC: dict[str, Any] = {"nm_privileged": True, "cpu_share": 20, "mem_mb": 256,
                               "disk_mb": 256, "raw_sockets": False}


def agent_initscript(creds: NodeCredentials, ca_file: Path | None) -> str:
    ca = ca_file.read_text() if ca_file is not None and ca_file.exists() else None
    return initscript(creds, ca, bundle())


def ensure_agent_sliver(nm: NM, creds: NodeCredentials, ca_file: Path | None, state: Path,
                        say: Callable[[str], None], now: float | None = None,
                        name: str = AGENT_SLICE) -> str:
    """Make the agent's sliver ``name``, or bring it up to date (new code or credentials
    restart it; a rcap near its end is renewed); what was done (one line).

    ``name``: another than :data:`AGENT_SLICE` only for private test nodes, which share
    the host's accounts."""
    return ensure_sliver(nm, name, AGENT_RSPEC, agent_initscript(creds, ca_file),
                         "the node agent (PLC's node manager)", "the agent's sliver", state,
                         say, now)
