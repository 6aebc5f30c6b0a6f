"""The warm pool's plans and decisions, and the node manager's use of it, on fakes at the
engine boundary with a real SQLite store."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from slicectl.core.containerplan import NodeFacts
from slicectl.core.errors import ValidationError
from slicectl.core.labels import LABEL_SLICE
from slicectl.core.netplan import sliver_address
from slicectl.core.poolplan import (
    FillBudget,
    fills_due,
    identity_text,
    pool_name,
    pool_plan,
    pool_xid,
    profile,
)
from slicectl.core.rspec import parse_rspec
from slicectl.node.config import NodeConfig
from slicectl.node.daemons import config_env
from slicectl.node.engine import waits_for_usr1
from slicectl.node.store import CREATING, POOL_READY

from .nm_fakes import END, ROOT, FakeNode, fake_node

pytestmark = pytest.mark.unit

NOW = 1_800_000_000.0
FACTS = NodeFacts(node_id="n1", ncpus=2, image="sha256:ref", image_bytes=0, network="slicectl",
                  cgroup_parent="/slicectl", hostname="node.test", nm_sock_dir=Path("/run/nm"),
                  shim_dir=Path("/run/raw"), vsys_dir=Path("/run/vsys"))


@pytest.fixture
def node(tmp_path: Path) -> FakeNode:
    n = fake_node(tmp_path, now=NOW)
    n.nm.set_node(ROOT, "warm_pool", 2)
    assert n.nm.pool.fill() == 2
    return n


# plans --------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "xid"), [
    ("slicepool-n1-7", 7), ("/slicepool-n1-12", 12), ("slicepool-n2-7", None),
    ("slicepool-n1-", None), ("slicepool-n1-7x", None), ("sliver-pl_a", None),
    ("slicepool-n1-1-2", None),
])
def test_a_pooled_name_gives_its_xid_only_on_its_own_node(name: str, xid: int | None) -> None:
    assert pool_xid("n1", name) == xid
    if xid is not None:
        assert pool_name("n1", xid) == name.removeprefix("/")


@pytest.mark.parametrize(("rspec", "fits"), [
    ({}, True),
    ({"cpu_share": 5, "mem_mb": 300, "nproc": 100, "net_max_kbit": 500, "tcp_ports": [8080]},
     True),
    ({"nofile": 4096}, False),
    ({"disk_mb": 2048}, False),
    ({"raw_sockets": False}, False),
    ({"vsys": ["fd_tuntap"]}, False),
    ({"nm_privileged": True}, False),
])
def test_the_profile_compares_what_the_engine_fixes_at_creation(rspec: dict[str, Any],
                                                                fits: bool) -> None:
    default = profile(parse_rspec({}, NOW), FACTS)
    assert (profile(parse_rspec(rspec, NOW), FACTS) == default) is fits


def test_a_pooled_plan_is_a_slivers_without_a_slice(tmp_path: Path) -> None:
    plan = pool_plan(9, tmp_path / "etc", parse_rspec({}, NOW), FACTS)
    kw = plan.kwargs
    assert plan.name == kw["name"] == "slicepool-n1-9"
    assert LABEL_SLICE not in kw["labels"] and kw["labels"]["org.slicectl.kind"] == "sliver"
    assert kw["environment"] == {"SLICECTL_XID": "9"}
    assert kw["networking_config"]["slicectl"]["IPAMConfig"]["IPv4Address"] == \
        sliver_address(FACTS.subnet, 9)
    assert [m["Source"] for m in kw["mounts"]] == [str(tmp_path / "etc"), "/run/raw"]
    assert kw["cap_drop"] == ["ALL"]


def test_the_identity_file_is_lines_the_init_reads() -> None:
    assert identity_text("pl_a", 20001) == "slice=pl_a\nuid=20001\n"


@pytest.mark.parametrize(("target", "per_min", "held", "recent", "due"), [
    (0, 30, 0, [], 0),
    (4, 30, 0, [], 4),
    (4, 30, 3, [], 1),
    (4, 30, 5, [], 0),
    (4, 2, 0, [NOW - 10], 1),
    (4, 2, 0, [NOW - 10, NOW - 20], 0),
    (4, 2, 0, [NOW - 61, NOW - 70], 2),
])
def test_fills_are_what_the_target_misses_within_the_budget(
        target: int, per_min: int, held: int, recent: list[float], due: int) -> None:
    assert fills_due(FillBudget(target, per_min), held, recent, NOW) == due


@pytest.mark.parametrize(("sigcgt", "waits"), [
    ("0000000000000200", True), ("0000000000010000", False), ("0000000000000000", False),
    ("0000000000004a02", True),
])
def test_only_an_init_that_catches_usr1_is_sent_one(sigcgt: str, waits: bool) -> None:
    assert waits_for_usr1(f"Name:\tsh\nSigIgn:\t0000000000000000\nSigCgt:\t{sigcgt}\n") is waits
    assert not waits_for_usr1("Name:\tsh\n")


# the node manager ------------------------------------------------------------------------


def pooled(node: FakeNode) -> dict[str, str]:
    return {c.id: n for n, c in node.engine.containers.items() if n.startswith("slicepool-")}


def test_the_pool_is_made_started_confined_and_ready(node: FakeNode) -> None:
    rows = node.store.pool()
    assert [(r.xid, r.state) for r in rows] == [(1, POOL_READY), (2, POOL_READY)]
    for r in rows:
        name = pool_name("n1", r.xid)
        assert node.engine.containers[name].status == "running"
        assert ("confine", name) in node.engine.calls
        assert node.nm.state.pool_etc(r.xid).is_dir()
    assert node.nm.status(ROOT)["pool_ready"] == 2


def test_a_bind_takes_a_pooled_sliver_and_personalizes_it(node: FakeNode) -> None:
    before = pooled(node)
    node.engine.calls.clear()
    rcap = node.nm.acquire(ROOT, {"end": END, "cpu_share": 4, "mem_mb": 200})
    info = node.nm.bind(ROOT, "pl_a", rcap, {"keys": []})
    assert info.container_id in before and info.xid == 1
    c = node.engine.containers["sliver-pl_a"]
    assert c.id == info.container_id and c.resources["cpu_shares"] == 4 * 256
    kinds = [k for k, _ in node.engine.calls]
    assert "create" not in kinds and "start" not in kinds
    # its namespace's limits again: the engine may have restarted it since it was made
    assert ("confine", "sliver-pl_a") in node.engine.calls
    assert kinds.index("rename") < kinds.index("update") < kinds.index("nudge")

    assert node.net.attached["pl_a"].xid == 1
    etc = node.nm.state.etc("pl_a")
    assert etc.is_symlink() and etc.resolve() == node.nm.state.pool_etc(1).resolve()
    assert (etc / "identity").read_text() == identity_text("pl_a", node.accounts.users["pl_a"])
    assert [r.xid for r in node.store.pool()] == [2]
    assert node.nm.pool.kicked.is_set()


def test_a_default_bind_leaves_the_pooled_limits_as_they_are(node: FakeNode) -> None:
    node.engine.calls.clear()
    node.nm.bind(ROOT, "pl_d", node.nm.acquire(ROOT, {"end": END}))
    kinds = [k for k, _ in node.engine.calls]
    assert "update" not in kinds and "read_back" in kinds

def test_a_cold_sliver_never_gets_a_pooled_xid(node: FakeNode) -> None:
    rcap = node.nm.acquire(ROOT, {"end": END, "nofile": 4096})
    info = node.nm.bind(ROOT, "pl_cold", rcap)
    assert info.xid == 3 and info.container_id not in pooled(node)
    assert ("create", "sliver-pl_cold") in node.engine.calls
    assert not node.nm.state.etc("pl_cold").is_symlink()


def test_a_pooled_container_removed_from_outside_gives_the_bind_a_new_one(
        node: FakeNode) -> None:
    # The bind's transaction takes the ready row; its container is gone by the claim.
    del node.engine.containers["slicepool-n1-1"]
    node.engine.calls.clear()
    info = node.nm.bind(ROOT, "pl_a", node.nm.acquire(ROOT, {"end": END}))
    assert info.xid == 1 and ("create", "sliver-pl_a") in node.engine.calls
    c = node.engine.containers["sliver-pl_a"]
    assert c.id == info.container_id and c.status == "running"
    assert node.store.get_sliver("pl_a").container_id == c.id
    assert not node.nm.state.etc("pl_a").is_symlink()


def test_destroying_a_pooled_sliver_leaves_nothing(node: FakeNode) -> None:
    rcap = node.nm.acquire(ROOT, {"end": END})
    node.nm.bind(ROOT, "pl_a", rcap)
    node.nm.destroy(ROOT, "pl_a")
    assert "sliver-pl_a" not in node.engine.containers
    assert not node.nm.state.pool_etc(1).parent.exists()
    assert not node.nm.state.home("pl_a").exists()


def test_a_claim_a_killed_nm_left_before_the_rename_is_finished(node: FakeNode) -> None:
    rcap = node.nm.acquire(ROOT, {"end": END})
    prof = node.nm.pool.profile_of(node.store.get_rcap(rcap).rspec)
    row, new = node.store.begin_bind("pl_a", rcap, "root", {}, 100, pool_profile=prof)
    assert new and row.state == CREATING and row.xid == 1
    assert "slicepool-n1-1" in node.engine.containers  # killed here: not renamed yet
    node.nm.reconcile()
    c = node.engine.containers["sliver-pl_a"]
    assert c.id == row.container_id and c.status == "running"
    assert node.store.get_sliver("pl_a").state == "running"
    assert [r.xid for r in node.store.pool()] == [2]


def test_reconcile_removes_what_is_not_a_ready_running_pooled_sliver(node: FakeNode) -> None:
    node.engine.containers["slicepool-n1-2"].status = "exited"
    xid = node.store.reserve_pool("{}", 100)  # a fill killed half-way
    stray = node.nm.state.pool_dir / "77"
    stray.mkdir()
    actions = node.nm.reconcile()
    assert [r.xid for r in node.store.pool()] == [1]
    assert set(pooled(node).values()) == {"slicepool-n1-1"}
    assert not stray.exists() and not node.nm.state.pool_etc(xid).parent.exists()
    assert sum("removed pooled sliver" in a for a in actions) == 2


def test_a_smaller_target_removes_ready_pooled_slivers(node: FakeNode) -> None:
    assert node.nm.set_node(ROOT, "warm_pool", 1)["warm_pool"] == 1
    assert [r.xid for r in node.store.pool()] == [1]
    assert set(pooled(node).values()) == {"slicepool-n1-1"}
    node.nm.set_node(ROOT, "warm_pool", 0)
    assert pooled(node) == {} and node.store.pool() == []


@pytest.mark.parametrize("value", [-1, 65, True, "2", 1.5])
def test_the_target_is_checked(node: FakeNode, value: object) -> None:
    with pytest.raises(ValidationError, match="warm_pool"):
        node.nm.set_node(ROOT, "warm_pool", value)


def test_the_pool_keeps_no_more_than_admission_has_room_for(node: FakeNode) -> None:
    # The fake node has 24,000 MB x 2 overcommit; a pooled sliver's rspec asks 512 MB.
    big = node.nm.acquire(ROOT, {"end": END, "mem_mb": 24_000})
    node.nm.acquire(ROOT, {"end": END, "mem_mb": 23_000})
    node.nm.pool.fill()
    assert len(node.store.pool()) == 2, "a full pool asks again only once a minute"
    node.nm.pool.clock = lambda: NOW + 61
    node.nm.pool.fill()
    assert [r.xid for r in node.store.pool()] == [1], "room for one: the other is removed"
    assert "slicepool-n1-2" not in node.engine.containers
    node.nm.acquire(ROOT, {"end": END, "mem_mb": 600})
    assert node.nm.pool.fill() == 0 and node.store.pool() == []
    assert not any(n.startswith("slicepool-") for n in node.engine.containers)
    node.nm.release(ROOT, big)  # room again: the pool fills back to its target
    assert node.nm.pool.fill() == 2 and len(node.store.pool()) == 2


def test_removing_ready_ones_spares_one_a_bind_took_meanwhile(node: FakeNode) -> None:
    # A smaller target (or less room) lists the ready ones; a bind takes one before they go.
    listed = node.store.pool()
    info = node.nm.bind(ROOT, "pl_a", node.nm.acquire(ROOT, {"end": END}))
    node.nm.pool.shed(listed, 0)
    c = node.engine.containers["sliver-pl_a"]
    assert c.id == info.container_id and c.status == "running"
    assert (node.nm.state.etc("pl_a") / "identity").is_file(), "its etc is the sliver's now"
    assert node.store.pool() == [] and "slicepool-n1-2" not in node.engine.containers


def test_a_pooled_sliver_being_removed_keeps_its_xid_and_is_taken_by_no_bind(
        node: FakeNode) -> None:
    seen: list[tuple[list[int], int]] = []
    remove = node.engine.remove

    def slow_remove(name: str) -> bool:  # what another thread sees while the engine works
        if name == "slicepool-n1-2":
            seen.append(([r.xid for r in node.store.pool()], node.nm.status(ROOT)["pool_ready"]))
            info = node.nm.bind(ROOT, "pl_b", node.nm.acquire(ROOT, {"end": END, "nofile": 4096}))
            assert info.xid == 3, "the xid of a container being removed is not free yet"
        return remove(name)

    node.engine.remove = slow_remove  # type: ignore[method-assign]
    node.nm.pool.shed(node.store.pool(), 1)
    assert seen == [([1, 2], 1)]
    assert [r.xid for r in node.store.pool()] == [1]


def test_a_failed_fill_leaves_nothing(node: FakeNode) -> None:
    node.nm.set_node(ROOT, "warm_pool", 3)
    node.engine.fail_start.add("slicepool-n1-3")
    with pytest.raises(Exception, match="fake failure"):
        node.nm.pool.fill()
    assert [r.xid for r in node.store.pool()] == [1, 2]
    assert "slicepool-n1-3" not in node.engine.containers
    assert not node.nm.state.pool_etc(3).parent.exists()


@pytest.mark.parametrize(("text", "want"), [(None, 2), ("0", 0), ("5", 5), ("64", 64)])
def test_the_node_configuration_gives_the_target_until_it_is_set(
        tmp_path: Path, text: str | None, want: int) -> None:
    env = {"SLICECTL_STATE_DIR": str(tmp_path)}
    if text is not None:
        env["SLICECTL_WARM_POOL"] = text
    cfg = NodeConfig.from_env(env)
    assert cfg.warm_pool == want
    assert config_env(cfg)["SLICECTL_WARM_POOL"] == str(want)


@pytest.mark.parametrize("text", ["-1", "65", "two", ""])
def test_a_bad_configured_target_is_refused(tmp_path: Path, text: str) -> None:
    with pytest.raises(ValidationError, match="SLICECTL_WARM_POOL"):
        NodeConfig.from_env({"SLICECTL_STATE_DIR": str(tmp_path), "SLICECTL_WARM_POOL": text})


def test_the_setting_overrides_the_configured_target(tmp_path: Path) -> None:
    n = fake_node(tmp_path, now=NOW)
    assert n.nm.status(ROOT)["warm_pool"] == 2
    n.nm.set_node(ROOT, "warm_pool", 0)
    assert n.nm.status(ROOT)["warm_pool"] == 0 and n.nm.pool.fill() == 0
