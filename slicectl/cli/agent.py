"""``slicectl agent run``: the node agent (PLC's per-node resource manager), on the host.
On a node it runs in its own sliver instead (:mod:`slicectl.agent.bundle`)."""

from __future__ import annotations

import argparse

from slicectl.agent.main import add_arguments, serve
from slicectl.cli.common import AddCommand
from slicectl.node.config import NodeConfig


def cmd_agent(args: argparse.Namespace, cfg: NodeConfig) -> int:
    args.nm_socket = args.nm_socket or str(cfg.nm_sock)
    args.state = args.state or str(cfg.state_dir / "agent")
    return serve(args)


def register(add: AddCommand) -> None:
    sp = add("agent", cmd_agent, "the node agent: turn PLC's view of this node into slivers")
    sub = sp.add_subparsers(dest="agent_cmd", required=True, metavar="ACTION")
    add_arguments(sub.add_parser("run", help="poll PLC and converge (until stopped, or --once)"),
                  "this node's", "STATE/agent")
