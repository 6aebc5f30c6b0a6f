"""The lease service's command line, inside its sliver (``python3 -I leases.pyz run``, see
:mod:`slicectl.leases.install`). Standard library only."""

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
from slicectl.ipc.rpc import Client

from .requests import load_requests
from .service import PERIOD_S, run, step

#: Inside the service's sliver: the node manager's socket (``core.containerplan``'s
#: SLIVER_NM_DIR, named here so the bundle need not carry the container plans; a test
#: holds them equal), the service's state and log.
SLIVER_NM_SOCK = "/run/slicectl/nm/nm.sock"
SLIVER_STATE = "/var/lib/slicectl-leases"
SLIVER_REQUESTS = f"{SLIVER_STATE}/requests.json"
SLIVER_LOG = "/var/log/slicectl-leases.log"


def serve(args: argparse.Namespace) -> int:
    path = Path(args.requests)
    try:
        text = path.read_text()
    except OSError as e:
        raise UsageError(f"request list {path}: cannot read it ({e.strerror})") from e
    requests = load_requests(text, str(path))
    nm = Client(Path(args.nm_socket)).call
    state = Path(args.state)
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if args.once:
        state.mkdir(parents=True, exist_ok=True)
        step(nm, requests, state, period_s=args.period)
        print(json.dumps(json.loads((state / "status.json").read_text())))
        return 0
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: stop.set())
    run(nm, requests, state, stop, period_s=args.period)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="slicectl-leases",
                                description="short-lived slices from a list of requests")
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="serve the request list (until stopped, or --once)")
    r.add_argument("--requests", default=SLIVER_REQUESTS,
                   help=f"the request list, JSON (default {SLIVER_REQUESTS})")
    r.add_argument("--nm-socket", default=SLIVER_NM_SOCK)
    r.add_argument("--state", default=SLIVER_STATE, help="record and status directory")
    r.add_argument("--period", type=float, default=PERIOD_S,
                   help="seconds between looks when no lease ends sooner")
    r.add_argument("--once", action="store_true", help="one look, print the status, exit")
    args = p.parse_args(argv)
    try:
        return serve(args)
    except SlicectlError as e:
        print(f"slicectl-leases: {e}", file=sys.stderr)
        return e.exit_code
