"""The command line's parsing (no node needed)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from slicectl.cli import build_parser
from slicectl.cli.slivers import exec_request
from slicectl.core.errors import UsageError


@pytest.mark.parametrize(("argv", "root", "command"), [
    (["exec", "pl_a", "--", "id", "-u"], False, ["id", "-u"]),
    (["exec", "pl_a", "--root", "--", "id", "-u"], True, ["id", "-u"]),
    (["exec", "--root", "pl_a", "--", "id"], True, ["id"]),
    (["exec", "pl_a", "id", "--root"], False, ["id", "--root"]),
])
def test_exec_takes_root_before_or_after_the_slice(argv: list[str], root: bool,
                                                   command: list[str]) -> None:
    args = build_parser().parse_args(argv)
    assert args.slice == "pl_a"
    assert exec_request(args) == (root, command)


def test_exec_needs_a_command() -> None:
    with pytest.raises(UsageError, match="^exec: expected a command"):
        exec_request(build_parser().parse_args(["exec", "pl_a", "--root", "--"]))


def test_every_area_registers_its_commands() -> None:
    sub = next(a for a in build_parser()._actions if a.dest == "cmd")
    assert {"acquire", "bind", "rcap", "create", "list", "show", "delete", "start", "stop",
            "keys", "initscript", "exec", "node"} <= set(sub.choices)  # type: ignore[arg-type]


def test_a_reader_that_goes_away_ends_the_command_quietly() -> None:
    """`slicectl node status | head -1`: no traceback when head has gone."""
    chatty = ("import sys; from slicectl import cli; from slicectl.cli import testbed; "
              "testbed.cmd_testbed = lambda a, c: [print('x' * 100) for _ in range(20000)] "
              "and 0; sys.exit(cli.main(['testbed', 'down']))")
    proc = subprocess.run(["sh", "-c", f"'{sys.executable}' -c \"{chatty}\" | head -c 1"],
                          capture_output=True, text=True, check=False,
                          cwd=Path(__file__).resolve().parents[2])
    assert proc.stdout == "x"
    assert "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr, proc.stderr


def test_testbed_commands_take_the_documented_options() -> None:
    args = build_parser().parse_args(["testbed", "up", "--nodes", "5", "--db", "postgres",
                                      "-o", "json"])
    assert (args.nodes, args.db, args.output, args.project) == (5, "postgres", "json",
                                                               "slicectl-testbed")
    assert build_parser().parse_args(["testbed", "status", "-o", "json"]).output == "json"
    assert build_parser().parse_args(["testbed", "down"]).testbed_cmd == "down"
