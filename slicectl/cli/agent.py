"""``slicectl agent run``: the node agent (PLC's per-node resource manager)."""

from __future__ import annotations

import argparse
import json
import signal
import threading
from pathlib import Path

from slicectl.agent.daemon import PERIOD_S, Status, run, step
from slicectl.agent.plcview import PLCView
from slicectl.cli.common import AddCommand
from slicectl.core.errors import UsageError
from slicectl.ipc.rpc import Client
from slicectl.node.config import NodeConfig
from slicectl.node.daemons import daemon_logging
from slicectl.plc.hosting import NODE_CREDENTIALS, NodeCredentials


def cmd_agent(args: argparse.Namespace, cfg: NodeConfig) -> int:
    creds_path = Path(args.credentials)
    try:
        creds = NodeCredentials.read(creds_path)
    except (OSError, ValueError, KeyError) as e:
        raise UsageError(f"credentials {creds_path}: expected the node's PLC credentials "
                         f"(url, cafile, node_id, hostname, key), found {e}") from e
    nm = Client(Path(args.nm_socket) if args.nm_socket else cfg.nm_sock).call
    state = Path(args.state) if args.state else cfg.state_dir / "agent"
    record, status_path = state / "record.json", state / "status.json"
    plc = PLCView(creds)
    daemon_logging()
    if args.once:
        status = Status()
        step(plc, nm, record, status)
        status.save(status_path)
        print(json.dumps({"plc": status.plc, "changes": status.last_changes,
                          "failed": status.failed}))
        return 0 if status.plc == "ok" and not status.failed else 1
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: stop.set())
    run(plc, nm, record, status_path, stop, period_s=args.period)
    return 0


def register(add: AddCommand) -> None:
    sp = add("agent", cmd_agent, "the node agent: turn PLC's view of this node into slivers")
    sub = sp.add_subparsers(dest="agent_cmd", required=True, metavar="ACTION")
    r = sub.add_parser("run", help="poll PLC and converge (until stopped, or --once)")
    r.add_argument("--credentials", default=str(NODE_CREDENTIALS),
                   help=f"the node's PLC credentials (default {NODE_CREDENTIALS})")
    r.add_argument("--nm-socket", help="the node manager's socket (default: this node's)")
    r.add_argument("--state", help="record and status directory (default: STATE/agent)")
    r.add_argument("--period", type=float, default=PERIOD_S, help="seconds between polls")
    r.add_argument("--once", action="store_true", help="one poll and convergence, then exit")
