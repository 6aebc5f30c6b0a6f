"""Wake rules of dormant slivers: a parked slice's reserved ports log to the wake group,
once, and the rules go when it wakes or goes away (iptables text captured, no kernel)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from slicectl.core.rspec import parse_rspec
from slicectl.node import firewall, network, tc
from slicectl.node.network import NodeNetwork
from slicectl.node.nm.boundary import NetIdentity
from slicectl.node.store import Store

pytestmark = pytest.mark.unit
NOW = 1_800_000_000.0


@pytest.fixture
def net(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[NodeNetwork, list[str]]:
    applied: list[str] = []
    monkeypatch.setattr(firewall, "apply", applied.append)
    for name in ("apply_sliver", "read_back", "redirect_to_ifb", "remove_sliver"):
        monkeypatch.setattr(tc, name, lambda *a: None)
    monkeypatch.setattr(tc, "read_classes_of", lambda ifb, ids: {})
    monkeypatch.setattr(network, "host_veth", lambda pid: "veth-t")
    n = NodeNetwork(Store(tmp_path / "nm.sqlite"), node_id="t", subnet="172.30.0.0/16",
                    bridge="br-t", ifb="ifb-t", clock=lambda: NOW)
    n.wake_group = 23552
    return n, applied


def ident(name: str = "pl_web", **rspec: Any) -> NetIdentity:
    return NetIdentity(name, 1, parse_rspec(rspec, NOW))


def lines(text: str) -> list[str]:
    """``-I 8080``-style lines, each standing for the rule in the forwarding chain and the
    one in the output chain (checked to come in that pair, in that order)."""
    out = []
    for ln in text.splitlines():
        if ln.startswith(("-I", "-D")):
            op, chain = ln.split()[:2]
            out.append((op, chain, ln.split("--dport ")[1].split()[0]))
    assert [c for _, c, _ in out] == ["SLICECTL-FWD-t", "SLICECTL-OUT-t"] * (len(out) // 2)
    return [f"{op} {port}" for op, _, port in out[::2]]


def test_park_logs_the_reserved_ports_once_and_attach_takes_them_out(
        net: tuple[NodeNetwork, list[str]]) -> None:
    n, applied = net
    web = ident(tcp_ports=[8080, 8443])
    n.apply_slice_ports("pl_web", web)
    applied.clear()
    n.park("pl_web")
    assert [lines(t) for t in applied] == [["-I 8080", "-I 8443"]]
    assert all("NFLOG" in ln and "--nflog-group 23552" in ln
               for ln in applied[0].splitlines() if ln.startswith("-I"))
    n.park("pl_web")
    assert len(applied) == 1, "parking twice adds no second rule"
    n.attach(web, 4242)
    assert lines(applied[-1]) == ["-D 8080", "-D 8443"]
    n.attach(web, 4243)
    assert len(applied) == 2


def test_a_parked_slice_whose_ports_change_changes_its_wake_rules(
        net: tuple[NodeNetwork, list[str]]) -> None:
    n, applied = net
    n.apply_slice_ports("pl_web", ident(tcp_ports=[8080]))
    n.park("pl_web")
    applied.clear()
    n.apply_slice_ports("pl_web", ident(tcp_ports=[9090]))
    assert len(applied) == 2 and lines(applied[1]) == ["-D 8080", "-I 9090"]
    n.detach(ident(tcp_ports=[9090]))
    assert lines(applied[-1]) == ["-D 9090"], "a dormant sliver destroyed leaves no rule"


def test_the_full_rebuild_keeps_the_wake_rules_of_parked_slices(
        net: tuple[NodeNetwork, list[str]]) -> None:
    n, applied = net
    n.park("pl_web")  # as reconcile does at start, before the ports are known
    assert applied == []
    n.apply_ports([ident(tcp_ports=[8080]), ident("pl_up", tcp_ports=[9000])])
    text = applied[-1]
    assert text.count("NFLOG") == 2 and '"slicectl-wake pl_web"' in text
    assert [ln.split()[1] for ln in text.splitlines() if "NFLOG" in ln] == [
        "SLICECTL-FWD-t", "SLICECTL-OUT-t"]


def test_without_a_group_no_rules(net: tuple[NodeNetwork, list[str]]) -> None:
    n, applied = net
    n.wake_group = None
    n.apply_slice_ports("pl_web", ident(tcp_ports=[8080]))
    applied.clear()
    n.park("pl_web")
    n.attach(ident(tcp_ports=[8080]), 4242)
    assert applied == []
