"""The agent as its sliver carries it: a zip app that runs on a bare python3 (no site
packages, as Debian's python3 in the reference image), inside an initscript the node
manager accepts."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from slicectl.agent.bundle import SLIVER_CA, bundle, initscript
from slicectl.agent.main import SLIVER_NM_SOCK
from slicectl.core.containerplan import SLIVER_NM_DIR
from slicectl.node.nm.slicestate import MAX_INITSCRIPT
from slicectl.plc.credentials import NodeCredentials

pytestmark = pytest.mark.unit

CREDS = NodeCredentials("https://172.30.0.1:443/PLCAPI/", "/var/lib/slicectl/plc/plc.crt", 7,
                        "n7.example.org", "s3cret-key")
CA = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


def test_the_bundle_runs_without_site_packages(tmp_path: Path) -> None:
    app = tmp_path / "agent.pyz"
    app.write_bytes(bundle())
    run = subprocess.run([sys.executable, "-I", "-S", str(app), "run", "--once",
                          "--credentials", str(tmp_path / "none.json")],
                         capture_output=True, text=True, timeout=60, check=False)
    assert run.returncode == 2, run.stderr
    assert run.stderr.startswith("slicectl-agent: credentials ") and run.stderr.count("\n") == 1
    assert bundle() == bundle()  # the same code, the same bytes (the initscript's digest)
    assert f"{SLIVER_NM_DIR}/nm.sock" == SLIVER_NM_SOCK  # named in the agent, without the plans


def test_the_initscript_carries_everything_and_fits(tmp_path: Path) -> None:
    text = initscript(CREDS, CA, bundle())
    assert len(text.encode()) <= MAX_INITSCRIPT
    assert '"key": "s3cret-key"' in text and f'"cafile": "{SLIVER_CA}"' in text
    assert "MIIB" in text and text.startswith("#!/bin/sh\n")
    # it is a shell script sh accepts, and it writes what it says (run in a scratch root)
    script = text.replace("/var/lib/slicectl-agent", str(tmp_path)).replace(
        "( while :;", "exit 0; ( while :;")
    run = subprocess.run(["sh", "-c", script, "rc.vinit", "start"], capture_output=True,
                         text=True, timeout=30, check=False)
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "agent.pyz").read_bytes() == bundle()
    creds = NodeCredentials.read(tmp_path / "plc-node.json")
    assert creds.key == "s3cret-key" and creds.node_id == 7
    assert (tmp_path / "plc-node.json").stat().st_mode & 0o077 == 0
