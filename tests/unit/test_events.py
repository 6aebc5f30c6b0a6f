"""The node's events: what was done to the node and its slivers, by whom, and who may read
them; a stopped sliver says who stopped it, when and why."""

from __future__ import annotations

from pathlib import Path

import pytest

from slicectl.core.errors import PermissionDenied, ValidationError
from slicectl.core.policy import NodePolicy
from slicectl.node import store as store_module
from slicectl.node.store import EVENTS_KEPT, Store
from tests.unit.nm_fakes import END, ROOT, SERVICE, bound, fake_node, plain, privileged

pytestmark = pytest.mark.unit


def test_actions_are_recorded_with_who_did_them(tmp_path: Path) -> None:
    node = fake_node(tmp_path, policy=NodePolicy(refused_slices=("pl_no",)))
    agent = privileged("pl_agent")
    bound(node, "pl_a", by=agent)
    node.nm.set_keys(agent, "pl_a", [])
    node.nm.stop(agent, "pl_a", "stopped by PLC: the slice's enabled tag is 0 or less")
    node.nm.start(ROOT, "pl_a")
    node.nm.set_node(ROOT, "net_cap_kbit", 50_000)
    with pytest.raises(PermissionDenied):
        node.nm.bind(agent, "pl_no", node.nm.acquire(agent, {"end": END}))
    node.nm.destroy(agent, "pl_a")
    got = [(e["who"], e["action"], e["slice"]) for e in node.nm.events(ROOT)]
    assert got == [("slice:pl_agent", "bind", "pl_a"), ("slice:pl_agent", "set_keys", "pl_a"),
                   ("slice:pl_agent", "stop", "pl_a"), ("root", "start", "pl_a"),
                   ("root", "set", ""), ("slice:pl_agent", "refused", "pl_no"),
                   ("slice:pl_agent", "destroy", "pl_a")]
    assert node.nm.events(ROOT)[4]["detail"] == "net_cap_kbit=50000"
    assert node.nm.events(ROOT)[5]["detail"].endswith("(refused_slices)")
    assert [e["action"] for e in node.nm.events(ROOT, "pl_a", 2)] == ["start", "destroy"]


def test_a_stopped_sliver_says_who_stopped_it_when_and_why(tmp_path: Path) -> None:
    node = fake_node(tmp_path)
    agent = privileged("pl_agent")
    bound(node, "pl_a", by=agent)
    assert node.nm.get_sliver(ROOT, "pl_a").stopped is None
    view = node.nm.stop(agent, "pl_a", "stopped by PLC: the slice's enabled tag is 0 or less")
    assert view.stopped == {"by": "slice:pl_agent", "at": "2027-01-15T08:00:00Z",
                            "reason": "stopped by PLC: the slice's enabled tag is 0 or less"}
    assert [s.stopped for s in node.nm.list_slivers(SERVICE)] == [view.stopped]
    assert node.nm.start(agent, "pl_a").stopped is None
    for bad in ("x" * 201, "line\nbreak", 7):
        with pytest.raises(ValidationError, match="^reason: expected printable text"):
            node.nm.stop(agent, "pl_a", bad)


def test_who_may_read_events(tmp_path: Path) -> None:
    node = fake_node(tmp_path)
    bound(node, "pl_a", by=privileged("pl_agent"))
    bound(node, "pl_b")
    assert len(node.nm.events(SERVICE)) == 2
    assert [e["slice"] for e in node.nm.events(plain("pl_a"), "pl_a")] == ["pl_a"]
    assert [e["slice"] for e in node.nm.events(privileged("pl_agent"), "pl_a")] == ["pl_a"]
    for caller, slice_name in ((plain("pl_a"), ""), (plain("pl_a"), "pl_b"),
                               (privileged("pl_agent"), "pl_b"), (privileged("pl_agent"), "")):
        with pytest.raises(PermissionDenied):
            node.nm.events(caller, slice_name)
    with pytest.raises(ValidationError, match="^limit"):
        node.nm.events(ROOT, "", 0)


def test_old_events_go(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert EVENTS_KEPT == 100_000
    monkeypatch.setattr(store_module, "EVENTS_KEPT", 3000)
    store = Store(tmp_path / "nm.sqlite")
    for i in range(4000):
        store.add_event(float(i), "root", "set", None, str(i))
    kept = store.events(limit=10)
    assert [e.detail for e in kept][-1] == "3999"
    with store.tx() as db:
        assert db.execute("SELECT COUNT(*) FROM events").fetchone()[0] == 3000


def test_expiry_is_recorded_by_the_node(tmp_path: Path) -> None:
    node = fake_node(tmp_path)
    node.nm.bind(ROOT, "pl_a", node.nm.acquire(ROOT, {"end": "2027-01-15T09:00:00Z"}))
    node.nm.rcaps.clock = node.nm.reconciler.clock = lambda: 1_900_000_000.0
    assert node.nm.expire() == ["expired slice pl_a"]
    assert [(e["who"], e["action"], e["slice"]) for e in node.nm.events(ROOT)][-1] == (
        "node", "expire", "pl_a")
