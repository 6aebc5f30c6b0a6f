"""The ``slicectl`` command line: one module per area (rcaps, slivers, node, plc, agent,
leases, testbed), each registering its commands; errors become one line and a non-zero
exit."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from slicectl.cli import agent, leases, node, plc, rcaps, slivers, testbed
from slicectl.cli.common import Handler
from slicectl.core.errors import SlicectlError
from slicectl.node.config import NodeConfig

AREAS = (rcaps, slivers, node, plc, agent, leases, testbed)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="slicectl", description="slicectl node control")
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    def add(name: str, handler: Handler, help_text: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help_text, description=help_text)
        sp.set_defaults(handler=handler)
        return sp

    for area in AREAS:
        area.register(add)
    return p


def main(argv: Sequence[str] | None = None, cfg: NodeConfig | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg = cfg or NodeConfig.from_env(os.environ)
        handler: Handler = args.handler
        return handler(args, cfg)
    except SlicectlError as e:
        print(f"slicectl: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # the reader went away (`slicectl node status | head`): stop quietly, as cat does
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())
