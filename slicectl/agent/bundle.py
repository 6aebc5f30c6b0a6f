"""The agent as its sliver runs it: a zip application of the agent and the standard
library-only modules it imports, carried in the sliver's initscript with the node's PLC
credentials and PLC's certificate. The sliver thus holds everything the agent needs,
survives being recreated (the node manager keeps the initscript), and nothing of the
host is mounted into it but the node manager's socket (``nm_privileged``).

Pure: files in, text out.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import zipfile
from pathlib import Path

from slicectl.plc.credentials import NodeCredentials

from .main import SLIVER_CREDENTIALS, SLIVER_STATE

ROOT = Path(__file__).resolve().parents[2]
#: What the bundle holds (paths under the checkout); a test runs it with ``python3 -I``
#: and no site packages, so a missing import fails there.
MODULES = (
    "slicectl/__init__.py", "slicectl/agent/*.py",
    "slicectl/core/__init__.py", "slicectl/core/errors.py", "slicectl/core/units.py",
    "slicectl/core/rspec.py", "slicectl/core/containerplan.py", "slicectl/core/labels.py",
    "slicectl/core/netplan.py", "slicectl/ipc/*.py",
    "slicectl/plc/__init__.py", "slicectl/plc/auth.py", "slicectl/plc/credentials.py",
)
MAIN = b"from slicectl.agent.main import main\nraise SystemExit(main())\n"
#: Where the sliver keeps the bundle, PLC's certificate and the agent's log.
SLIVER_BUNDLE = f"{SLIVER_STATE}/agent.pyz"
SLIVER_CA = f"{SLIVER_STATE}/plc-ca.pem"
SLIVER_LOG = "/var/log/slicectl-agent.log"


def bundle(root: Path = ROOT) -> bytes:
    """The zip application (the same bytes for the same code: fixed times, sorted)."""
    files = sorted({p for pattern in MODULES for p in root.glob(pattern)})
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as z:
        for path, data in [("__main__.py", MAIN),
                           *((str(p.relative_to(root)), p.read_bytes()) for p in files)]:
            info = zipfile.ZipInfo(path, date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            z.writestr(info, data)
    return out.getvalue()


def initscript(creds: NodeCredentials, ca_pem: str | None, code: bytes) -> str:
    """The agent sliver's /etc/rc.vinit: write the bundle, the certificate and the
    credentials (mode 0600), then keep the agent running (restarted 2 s after it exits)."""
    inside = NodeCredentials(creds.url, SLIVER_CA if ca_pem else None, creds.node_id,
                             creds.hostname, creds.key)
    digest = hashlib.sha256(code).hexdigest()[:12]
    b64 = base64.encodebytes(code).decode()
    ca = f"cat > {SLIVER_CA} <<'SLICECTL_CA'\n{ca_pem.strip()}\nSLICECTL_CA\n" if ca_pem else ""
    return (
        "#!/bin/sh\n"
        f"# the slicectl node agent (written by `slicectl node up`; bundle {digest})\n"
        "set -eu\n"
        '[ "${1:-start}" = start ] || exit 0\n'
        "umask 077\n"
        f"mkdir -p {SLIVER_STATE}\n"
        f"base64 -d > {SLIVER_BUNDLE} <<'SLICECTL_BUNDLE'\n{b64}SLICECTL_BUNDLE\n"
        f"{ca}"
        f"cat > {SLIVER_CREDENTIALS} <<'SLICECTL_CREDS'\n{json.dumps(inside.to_json())}\n"
        "SLICECTL_CREDS\n"
        f"( while :; do python3 -I {SLIVER_BUNDLE} run --credentials {SLIVER_CREDENTIALS} "
        f">> {SLIVER_LOG} 2>&1 < /dev/null; "
        "sleep 2; done ) &\n"
    )
