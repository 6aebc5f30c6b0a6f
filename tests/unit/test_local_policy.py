"""The local administrator's policy: what it refuses, how a setting is read from the command
line, and that PLC's agent (a privileged slice) or root cannot bind past it."""

from __future__ import annotations

from pathlib import Path

import pytest

from slicectl.core.errors import PermissionDenied, ValidationError
from slicectl.core.netplan import chain_names, firewall_rules
from slicectl.core.policy import NodePolicy, parse_policy, policy_data, setting_value, with_setting
from slicectl.node.network import NodeNetwork
from slicectl.node.store import Store
from tests.unit.nm_fakes import END, ROOT, bound, fake_node, privileged

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(("data", "expect"), [
    ({"refused_slices": ["pl_b", "pl_a", "pl_a"]}, NodePolicy(refused_slices=("pl_a", "pl_b"))),
    ({"refused_sites": ["princeton"]}, NodePolicy(refused_sites=("princeton",))),
    ({"refused_prefixes": ["192.0.2.7/24"]}, NodePolicy(refused_prefixes=("192.0.2.0/24",))),
    ({"net_cap_max_kbit": 0}, NodePolicy()),
    ({"net_cap_max_kbit": 50_000}, NodePolicy(net_cap_max_kbit=50_000)),
    ({"refused_slices": "pl_a"}, "refused_slices: expected a list of at most 1024 entries"),
    ({"refused_slices": ["Not A Slice"]}, "refused_slices: expected slice names"),
    ({"refused_sites": ["pl_x"]}, "refused_sites: expected site names"),
    ({"refused_prefixes": ["10.0.0.0/33"]}, "refused_prefixes: expected IPv4 address prefixes"),
    ({"refused_prefixes": [7]}, "refused_prefixes: expected address prefixes"),
    ({"net_cap_max_kbit": -1}, "net_cap_max_kbit: expected an integer from 0 to 100000000"),
])
def test_parse_list_and_bound_settings(data: object, expect: object) -> None:
    if isinstance(expect, NodePolicy):
        assert parse_policy(data) == expect
    else:
        with pytest.raises(ValidationError, match=f"^{expect}"):
            parse_policy(data)


@pytest.mark.parametrize(("key", "text", "value"), [
    ("refused_slices", "pl_a, pl_b", ["pl_a", "pl_b"]),
    ("refused_slices", "", []),
    ("allow_link_local", "true", True),
    ("mem_overcommit", "3.5", 3.5),
    ("net_cap_max_kbit", "20000", 20000),
    ("net_cap_max_kbit", "lots", "net_cap_max_kbit: expected an integer, found 'lots'"),
    ("allow_link_local", "yes", "allow_link_local: expected true or false"),
    ("no_such", "1", "setting: expected one of"),
])
def test_setting_value_from_the_command_line(key: str, text: str, value: object) -> None:
    if isinstance(value, str):
        with pytest.raises(ValidationError, match=f"^{value}"):
            setting_value(key, text)
    else:
        assert setting_value(key, text) == value


def test_with_setting_checks_the_whole_policy_and_keeps_the_rest() -> None:
    p = with_setting(NodePolicy(mem_overcommit=3.0), "refused_sites", "evil,princeton")
    assert p == NodePolicy(mem_overcommit=3.0, refused_sites=("evil", "princeton"))
    assert parse_policy(policy_data(p)) == p
    with pytest.raises(ValidationError, match="^refused_sites"):
        with_setting(p, "refused_sites", "Bad Site")


@pytest.mark.parametrize(("name", "why"), [
    ("pl_banned", "slice pl_banned: refused by this node's policy (refused_slices)"),
    ("evil_web", "slice evil_web: refused by this node's policy (refused_sites: evil)"),
    ("pl_fine", None),
    ("evilish_web", None),
])
def test_refusal(name: str, why: str | None) -> None:
    policy = NodePolicy(refused_slices=("pl_banned",), refused_sites=("evil",))
    assert policy.refusal(name) == why


def test_binds_past_the_policy_are_refused_for_everyone(tmp_path: Path) -> None:
    node = fake_node(tmp_path, policy=NodePolicy(refused_sites=("evil",), net_cap_max_kbit=20_000))
    for caller in (ROOT, privileged("pl_agent")):
        rcap = node.nm.acquire(caller, {"end": END})
        with pytest.raises(PermissionDenied, match=r"refused by this node's policy \(refused_sites"):
            node.nm.bind(caller, "evil_web", rcap)
    assert node.store.find_sliver("evil_web") is None and node.engine.containers == {}
    with pytest.raises(ValidationError, match=r"^net_cap_kbit: expected at most the 20000 "
                                              r"kbit/s this node's policy allows"):
        node.nm.set_node(ROOT, "net_cap_kbit", 20_001)
    assert node.nm.set_node(ROOT, "net_cap_kbit", 20_000)["net_cap_kbit"] == 20_000


def test_the_cap_never_reads_above_the_bound(tmp_path: Path) -> None:
    store = Store(tmp_path / "nm.sqlite")
    store.set_setting("net_cap_kbit", "90000")  # set before the owner bounded it
    net = NodeNetwork(store, node_id="t", subnet="172.30.0.0/16", bridge="br-t", ifb="ifb-t",
                      cap_max_kbit=30_000)
    assert net.cap_kbit == 30_000
    assert NodeNetwork(store, node_id="t", subnet="172.30.0.0/16", bridge="br-t",
                       ifb="ifb-t").cap_kbit == 90_000


def test_refused_prefixes_are_walls_before_any_accept() -> None:
    text = firewall_rules([], "slicectl0", "172.30.0.0/16", chain_names("node"),
                          refused_prefixes=("192.0.2.0/24", "198.51.100.0/24"))
    fwd = [ln for ln in text.splitlines() if ln.startswith("-A SLICECTL-FWD ")]
    assert fwd[2:] == [f'-A SLICECTL-FWD -i slicectl0 -d {p} -m comment --comment "slicectl '
                       'policy refused_prefixes" -j REJECT --reject-with icmp-admin-prohibited'
                       for p in ("192.0.2.0/24", "198.51.100.0/24")]


def test_a_slice_refused_after_its_bind_is_stopped_at_start_and_cannot_start(
        tmp_path: Path) -> None:
    node = fake_node(tmp_path)
    agent = privileged("pl_agent")
    bound(node, "evil_web", by=agent)
    bound(node, "pl_fine", by=agent)
    # the owner refuses the site; the node manager restarts and reads the new policy
    node.nm.policy = NodePolicy(refused_sites=("evil",))
    assert node.nm.reconcile() == [
        "stopped evil_web: slice evil_web: refused by this node's policy (refused_sites: evil)"]
    assert node.engine.containers["sliver-evil_web"].status == "exited"
    assert node.engine.containers["sliver-pl_fine"].status == "running"
    view = node.nm.get_sliver(ROOT, "evil_web")
    assert view.desired == "stopped" and view.stopped is not None
    assert view.stopped["by"] == "node" and "refused_sites" in view.stopped["reason"]
    with pytest.raises(PermissionDenied, match="refused_sites"):
        node.nm.start(agent, "evil_web")
    assert node.nm.reconcile() == []
    node.nm.destroy(agent, "evil_web")  # what is there may still be removed
