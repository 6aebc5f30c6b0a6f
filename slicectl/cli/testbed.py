"""``slicectl testbed up|down|status``: PLC and N nodes on this machine (compose/testbed.yml)."""

from __future__ import annotations

import argparse
import os

from slicectl.cli.common import AddCommand, output_flag, print_json
from slicectl.core.errors import StateError
from slicectl.node.config import NodeConfig
from slicectl.node.dockerd import Say
from slicectl.testbed import lifecycle
from slicectl.testbed.layout import DEFAULT_PROJECT, DEFAULT_SUBNET, MAX_NODES, layout


def _print_status(st: dict[str, object], output: str) -> None:
    if output == "json":
        print_json(st)
        return
    plc = st["plc"]
    assert isinstance(plc, dict)
    print(f"{'project:':12}{st['project']} (db {st['db']}, engine {st['engine']})")
    print(f"{'plc:':12}{plc['url']} {plc['state']} (CA {plc['cafile']}, root {plc['root_file']})")
    nodes = st["nodes"]
    assert isinstance(nodes, list)
    for n in nodes:
        print(f"{n['name'] + ':':12}{n['hostname']} {n['address']} node_id={n['node_id']} "
              f"{n['state']}")


def cmd_testbed(args: argparse.Namespace, cfg: NodeConfig) -> int:
    say = Say(quiet=getattr(args, "quiet", False))
    if args.testbed_cmd == "up":
        lay = layout(args.nodes, args.project, args.db, args.subnet)
        _print_status(lifecycle.up(lay, os.environ, say), args.output)
    elif args.testbed_cmd == "down":
        try:
            lay = lifecycle.saved_layout(args.project)
        except StateError:
            lay = layout(1, args.project)  # nothing saved: remove what carries its label
        lifecycle.down(lay, say)
    else:
        _print_status(lifecycle.status(lifecycle.saved_layout(args.project)), args.output)
    return 0


def register(add: AddCommand) -> None:
    sp = add("testbed", cmd_testbed, "PLC and several nodes on this machine, in containers")
    sub = sp.add_subparsers(dest="testbed_cmd", required=True, metavar="ACTION")
    up = sub.add_parser("up", help="build what is missing, start PLC and N nodes, wait for them")
    up.add_argument("--nodes", type=int, default=3, help=f"1 to {MAX_NODES} (default 3)")
    up.add_argument("--db", choices=("sqlite", "postgres"), default="sqlite")
    up.add_argument("--subnet", default=DEFAULT_SUBNET, help="the testbed network's addresses")
    up.add_argument("--quiet", action="store_true")
    output_flag(up)
    down = sub.add_parser("down", help="remove everything the testbed made")
    down.add_argument("--quiet", action="store_true")
    st = sub.add_parser("status", help="PLC's URL, CA and root file; each node's name, "
                                       "address, node id and state")
    output_flag(st)
    for p in (up, down, st):
        p.add_argument("--project", default=DEFAULT_PROJECT,
                       help=f"compose project name (default {DEFAULT_PROJECT})")
