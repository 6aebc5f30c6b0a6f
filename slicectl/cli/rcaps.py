"""rcaps on the command line: acquire, bind, and show, split, release or list."""

from __future__ import annotations

import argparse

from slicectl.cli.common import AddCommand, output_flag, print_json
from slicectl.core.rspec import load_rspec_mapping
from slicectl.core.wire import RcapInfo, SliverView, from_struct
from slicectl.node.config import NodeConfig
from slicectl.node.daemons import nm_client


def cmd_acquire(args: argparse.Namespace, cfg: NodeConfig) -> int:
    print(nm_client(cfg).call("acquire", load_rspec_mapping(args.file)))
    return 0


def cmd_bind(args: argparse.Namespace, cfg: NodeConfig) -> int:
    info = from_struct(SliverView, nm_client(cfg).call("bind", args.slice, args.rcap, {}))
    print(f"{info.name}: {info.state} ({info.container})")
    return 0


def cmd_rcap(args: argparse.Namespace, cfg: NodeConfig) -> int:
    nm = nm_client(cfg)
    if args.rcap_cmd == "show":
        print_json(nm.call("rcap_info", args.rcap))
    elif args.rcap_cmd == "split":
        print(nm.call("split", args.rcap, load_rspec_mapping(args.file)))
    elif args.rcap_cmd == "release":
        nm.call("release", args.rcap)
    elif args.rcap_cmd == "list":
        raw = nm.call("list_rcaps")
        rows = [from_struct(RcapInfo, r) for r in raw]
        if args.output == "json":
            print_json(raw)
        else:
            print(f"{'RCAP':32}  {'STATE':8} {'SLICE':20} {'SHARE':>5} {'END'}")
            for r in rows:
                print(f"{r.rcap:32}  {r.state:8} {r.slice or '-':20} "
                      f"{r.rspec['cpu_share']:>5} {r.rspec['end']}")
    return 0


def register(add: AddCommand) -> None:
    sp = add("acquire", cmd_acquire, "admit an rspec (YAML file) and print its rcap")
    sp.add_argument("file")
    sp = add("bind", cmd_bind, "bind an rcap to a slice, creating its sliver")
    sp.add_argument("slice")
    sp.add_argument("rcap")
    sp = add("rcap", cmd_rcap, "show, split, release or list rcaps")
    rsub = sp.add_subparsers(dest="rcap_cmd", required=True, metavar="ACTION")
    rsub.add_parser("show").add_argument("rcap")
    r = rsub.add_parser("split")
    r.add_argument("rcap")
    r.add_argument("file")
    rsub.add_parser("release").add_argument("rcap")
    output_flag(rsub.add_parser("list"))
