"""The agent as its sliver runs it (see :mod:`slicectl.sliverapp.bundle`): the agent and
the standard library-only modules it imports, with the node's PLC credentials and PLC's
certificate.

Pure: files in, text out.
"""

from __future__ import annotations

import json
from pathlib import Path

from slicectl.plc.credentials import NodeCredentials
from slicectl.sliverapp import bundle as app

from .main import SLIVER_CREDENTIALS, SLIVER_STATE

ROOT = app.ROOT
#: What the bundle holds beside :data:`slicectl.sliverapp.bundle.COMMON` (paths under the
#: checkout); a test runs it with ``python3 -I`` and no site packages, so a missing import
#: fails there.
MODULES = (
    "slicectl/agent/*.py", "slicectl/core/units.py",
    "slicectl/core/rspec.py", "slicectl/core/labels.py",
    "slicectl/plc/__init__.py", "slicectl/plc/auth.py", "slicectl/plc/credentials.py",
)
#: Where the sliver keeps the bundle, PLC's certificate and the agent's log.
SLIVER_BUNDLE = f"{SLIVER_STATE}/agent.pyz"
SLIVER_CA = f"{SLIVER_STATE}/plc-ca.pem"
SLIVER_LOG = "/var/log/slicectl-agent.log"


def bundle(root: Path = ROOT) -> bytes:
    """The zip application (the same bytes for the same code)."""
    return app.bundle(MODULES, "slicectl.agent.main", root)


def initscript(creds: NodeCredentials, ca_pem: str | None, code: bytes) -> str:
    """The agent sliver's /etc/rc.vinit: write the bundle, the certificate and the
    credentials (mode 0600), then keep the agent running (restarted 2 s after it exits)."""
    inside = NodeCredentials(creds.url, SLIVER_CA if ca_pem else None, creds.node_id,
                             creds.hostname, creds.key)
    files = [(SLIVER_CA, ca_pem.strip())] if ca_pem else []
    files.append((SLIVER_CREDENTIALS, json.dumps(inside.to_json())))
    return app.initscript("the slicectl node agent (written by `slicectl node up`)",
                          SLIVER_STATE, SLIVER_BUNDLE, code, files,
                          ["run", "--credentials", SLIVER_CREDENTIALS], SLIVER_LOG)
