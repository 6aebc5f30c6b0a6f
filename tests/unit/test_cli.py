"""The command line's parsing (no node needed)."""

from __future__ import annotations

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
