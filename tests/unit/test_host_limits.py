"""The NM raises the host's limits that slivers are charged to, and never lowers one."""

from __future__ import annotations

from pathlib import Path

import pytest

from slicectl.core.netplan import MAX_NET_XID
from slicectl.core.userns import host_limits
from slicectl.node.nm.daemon import PID_MAX_LIMIT, raise_host_limits

pytestmark = pytest.mark.unit


def test_host_limits_are_raised_and_never_lowered(tmp_path: Path) -> None:
    keys = [*host_limits(MAX_NET_XID), "kernel/pid_max", "kernel/keys/maxkeys",
            "kernel/keys/maxbytes"]
    for key in keys:
        (tmp_path / key).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / key).write_text("100\n")
    higher = next(k for k in keys if k != "kernel/pid_max")
    (tmp_path / higher).write_text(f"{1 << 40}\n")
    raise_host_limits(tmp_path)
    assert int((tmp_path / "kernel/pid_max").read_text()) == PID_MAX_LIMIT
    assert int((tmp_path / "kernel/keys/maxkeys").read_text()) >= 10_000  # a sliver each
    assert int((tmp_path / higher).read_text()) == 1 << 40  # never lowered
    for key, value in host_limits(MAX_NET_XID).items():
        if key != higher:
            assert int((tmp_path / key).read_text()) == value
