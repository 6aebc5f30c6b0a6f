"""The counter poll's fold: changed readings only, in one write (an idle node writes nothing)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from slicectl.core.netplan import parent_classid
from slicectl.core.rspec import parse_rspec
from slicectl.node import tc
from slicectl.node.network import NodeNetwork, utc_day
from slicectl.node.nm.boundary import NetIdentity
from slicectl.node.store import Store

pytestmark = pytest.mark.unit
NOW = 1_800_000_000.0


def reading(xid: int, nbytes: int, packets: int) -> tc.ClassStats:
    return tc.ClassStats(parent_classid(xid), 0, 0, 0, nbytes, packets, 0)


@pytest.fixture
def net(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[NodeNetwork, list[Any]]:
    store = Store(tmp_path / "nm.sqlite")
    writes: list[Any] = []
    real = store.add_usages

    def counted(day: str, readings: Any) -> None:
        readings = list(readings)
        writes.append(readings)
        real(day, readings)

    monkeypatch.setattr(store, "add_usages", counted)
    return NodeNetwork(store, node_id="t", subnet="172.30.0.0/16", bridge="br-t", ifb="ifb-t",
                       clock=lambda: NOW), writes


def test_only_changed_counters_are_written_and_in_one_transaction(
        net: tuple[NodeNetwork, list[Any]], monkeypatch: pytest.MonkeyPatch) -> None:
    network, writes = net
    slivers = [NetIdentity(f"pl_{i}", i, parse_rspec({}, NOW)) for i in range(1, 101)]
    held = {parent_classid(i): reading(i, 100 * i, i) for i in range(1, 101)}
    monkeypatch.setattr(tc, "read_classes", lambda ifb: held)
    network.poll(slivers)
    assert len(writes) == 1 and len(writes[0]) == 100
    network.poll(slivers)  # nothing moved: nothing written
    assert len(writes) == 1
    held[parent_classid(7)] = reading(7, 5000, 20)
    network.poll(slivers)
    assert writes[-1] == [("pl_7", 5000, 20)]
    assert network.store.usage("pl_7", utc_day(NOW)) == (5000, 20)
    assert network.store.usage("pl_8", utc_day(NOW)) == (800, 8)
