"""``slicectl leases up|status``: the lease service, a second slice creation service in its
own privileged sliver (:mod:`slicectl.leases`)."""

from __future__ import annotations

import argparse
import time

from slicectl.cli.common import AddCommand, output_flag, print_json, read_text
from slicectl.cli.inside import sliver_json
from slicectl.core.errors import UsageError, ValidationError
from slicectl.core.rspec import validate_slice_name
from slicectl.leases.install import LEASES_SLICE, ensure_leases_sliver, leases_initscript
from slicectl.leases.main import SLIVER_LOG, SLIVER_STATE
from slicectl.leases.requests import load_requests
from slicectl.node.config import NodeConfig
from slicectl.node.daemons import nm_client
from slicectl.node.dockerd import Say
from slicectl.node.engine import engine_client
from slicectl.node.nm.slicestate import MAX_INITSCRIPT


def _name(args: argparse.Namespace) -> str:
    try:
        return validate_slice_name(args.name)
    except ValidationError as e:
        raise UsageError(f"--name: {e.message.removeprefix('slice: ')}") from None


def _up(args: argparse.Namespace, cfg: NodeConfig) -> int:
    name = _name(args)
    requests = load_requests(read_text(args.requests, "request list"), args.requests)
    size = len(leases_initscript(requests).encode())
    if size > MAX_INITSCRIPT:
        raise UsageError(f"request list {args.requests}: expected it to fit in the service's "
                         f"initscript ({MAX_INITSCRIPT} bytes with the service), found "
                         f"{size} bytes; split it or shorten its initscripts")
    say = Say(quiet=args.quiet)
    cfg.state_dir.mkdir(parents=True, exist_ok=True)
    ensure_leases_sliver(nm_client(cfg).call, requests, cfg.state_dir, say, name=name)
    say(f"{len(requests)} request(s); `slicectl leases status` shows what became of them")
    return 0


def _what(kind: str, e: dict[str, object]) -> str:
    if kind == "active":
        return f"until {e['end']} ({e['left_s']}s left)"
    if kind == "waiting":
        return (f"try {e['tries']} failed, again at {e['retry_at']}: {e['reason']}"
                if "reason" in e else "not served yet")
    if kind == "refused":
        return str(e["reason"])
    return f"{e['start']} .. {e['end']}" + (f" ({e['reason']})" if "reason" in e else "")


def _lines(st: dict[str, object]) -> list[str]:
    out = [f"updated {st.get('updated')}, {st.get('requests', 0)} request(s)"
           + (f"; last error: {st['last_error']}" if st.get("last_error") else "")]
    for kind in ("active", "waiting", "refused", "ended"):
        entries = st.get(kind)
        for e in entries if isinstance(entries, list) else []:
            out.append(f"{kind:8} {e['slice']:32} {_what(kind, e)}")
    return out


def _status(args: argparse.Namespace, cfg: NodeConfig) -> int:
    name = _name(args)
    client = engine_client(cfg.engine_url)
    try:
        st = sliver_json(cfg, client, name, f"{SLIVER_STATE}/status.json")
    finally:
        client.close()
    if st is None:
        raise UsageError(f"lease service {name}: expected its sliver on this node, found none "
                         "(slicectl leases up --requests FILE makes it)")
    if not st:
        st = {"updated": None, "last_error": "no status yet (the service is starting, or "
                                             f"failing: see its log {SLIVER_LOG} in {name})"}
    if args.output == "json":
        print_json(st)
    else:
        print("\n".join(_lines(st)))
    return 0


def cmd_leases(args: argparse.Namespace, cfg: NodeConfig) -> int:
    started = time.monotonic()
    if args.leases_cmd == "up":
        code = _up(args, cfg)
        if not args.quiet:
            print(f"done in {time.monotonic() - started:.1f}s")
        return code
    return _status(args, cfg)


def register(add: AddCommand) -> None:
    sp = add("leases", cmd_leases, "the lease service: short-lived slices from a request list, "
                                   "made from its own privileged sliver")
    sub = sp.add_subparsers(dest="leases_cmd", required=True, metavar="ACTION")
    up = sub.add_parser("up", help="make or update the service's sliver with a request list "
                                   "(its leases survive)")
    up.add_argument("--requests", required=True, metavar="FILE",
                    help="the request list (YAML or JSON)")
    up.add_argument("--name", default=LEASES_SLICE, help=f"its slice (default {LEASES_SLICE})")
    up.add_argument("--quiet", action="store_true")
    st = sub.add_parser("status", help="what became of each request (read from its sliver)")
    st.add_argument("--name", default=LEASES_SLICE, help=f"its slice (default {LEASES_SLICE})")
    output_flag(st)
