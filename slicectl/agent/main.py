"""The agent's command line, the same on the host (``slicectl agent run``) and inside its
sliver (``python3 slicectl-agent.pyz run``, see :mod:`slicectl.agent.bundle`). Standard
library only."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from slicectl.core.errors import SlicectlError, UsageError
from slicectl.core.labels import SLIVER_NM_DIR
from slicectl.ipc.rpc import Client
from slicectl.plc.credentials import NodeCredentials

from .daemon import PERIOD_S, Status, run, step, tell_node
from .plcview import PLCView

#: Where the node's PLC credentials are (on the host, and in the agent's sliver).
CREDENTIALS = Path("/etc/slicectl/plc-node.json")
#: The node manager's socket and the agent's state, inside its sliver.
SLIVER_NM_SOCK = f"{SLIVER_NM_DIR}/nm.sock"
SLIVER_STATE = "/var/lib/slicectl-agent"
#: The credentials inside the sliver (its /etc/slicectl is the node's, read-only).
SLIVER_CREDENTIALS = f"{SLIVER_STATE}/plc-node.json"


def add_arguments(r: argparse.ArgumentParser, nm_socket: str, state: str,
                  credentials: str = str(CREDENTIALS)) -> None:
    """The options of ``run``; ``nm_socket`` and ``state`` name their defaults in the help
    (the caller fills them in when they are not given)."""
    r.add_argument("--credentials", default=credentials,
                   help=f"the node's PLC credentials (default {credentials})")
    r.add_argument("--nm-socket", help=f"the node manager's socket (default {nm_socket})")
    r.add_argument("--state", help=f"record and status directory (default {state})")
    r.add_argument("--period", type=float, default=PERIOD_S, help="seconds between polls")
    r.add_argument("--once", action="store_true", help="one poll and convergence, then exit")


def serve(args: argparse.Namespace) -> int:
    """Run the agent as ``args`` say; the exit status."""
    path = Path(args.credentials)
    try:
        creds = NodeCredentials.read(path)
    except (OSError, ValueError, KeyError) as e:
        raise UsageError(f"credentials {path}: expected the node's PLC credentials "
                         f"(url, cafile, node_id, hostname, key), found {e}") from e
    nm = Client(Path(args.nm_socket)).call
    state = Path(args.state)
    record, status_path = state / "record.json", state / "status.json"
    plc = PLCView(creds)
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if args.once:
        status = Status()
        step(plc, nm, record, status)
        status.save(status_path)
        tell_node(nm, status, creds.url)
        print(json.dumps({"plc": status.plc, "changes": status.last_changes,
                          "failed": status.failed}))
        return 0 if status.plc == "ok" and not status.failed else 1
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: stop.set())
    run(plc, nm, record, status_path, stop, period_s=args.period, authority=creds.url)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """The bundle's entry point (in the agent's sliver)."""
    p = argparse.ArgumentParser(prog="slicectl-agent", description="the slicectl node agent")
    sub = p.add_subparsers(dest="cmd", required=True)
    add_arguments(sub.add_parser("run", help="poll PLC and converge"), SLIVER_NM_SOCK,
                  SLIVER_STATE, SLIVER_CREDENTIALS)
    args = p.parse_args(argv)
    args.nm_socket = args.nm_socket or SLIVER_NM_SOCK
    args.state = args.state or SLIVER_STATE
    try:
        return serve(args)
    except SlicectlError as e:
        print(f"slicectl-agent: {e}", file=sys.stderr)
        return e.exit_code
