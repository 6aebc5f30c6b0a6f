"""The local administrator's policy on a real node: ``slicectl node policy set`` restarts
the node manager, which then refuses a site's binds, walls a destination prefix off from
slivers in the kernel, and keeps the node's cap under the owner's bound."""

from __future__ import annotations

import json

import docker
import pytest

from slicectl.core.errors import PermissionDenied, ValidationError
from slicectl.core.netplan import handle
from slicectl.node import tc

from .conftest import NMHandle, Outside, make_sliver, sliver_exec


def set_policy(nm: NMHandle, key: str, value: str) -> str:
    out = nm.cli("node", "policy", "set", key, value)
    assert out.returncode == 0, out.stderr
    assert "restarted nm" in out.stdout, out.stdout
    return out.stdout


def test_a_refused_site_cannot_bind_and_a_bad_value_changes_nothing(nm: NMHandle) -> None:
    site = nm.slice("x").split("_", 1)[0]
    early = nm.call("bind", nm.slice("early"), nm.call("acquire", {}))["name"]
    set_policy(nm, "refused_sites", f"{site},othersite")
    info = nm.call("get_sliver", early)  # bound before the refusal: stopped, and says why
    assert (info["state"], info["desired"]) == ("exited", "stopped")
    assert info["stopped"]["by"] == "node" and "refused_sites" in info["stopped"]["reason"]
    with pytest.raises(PermissionDenied, match="refused_sites"):
        nm.call("start", early)
    with pytest.raises(PermissionDenied, match=f"refused by this node's policy "
                                               rf"\(refused_sites: {site}\)"):
        nm.call("bind", nm.slice("web"), nm.call("acquire", {}))
    shown = json.loads(nm.cli("node", "policy", "show", "-o", "json").stdout)
    assert shown["policy"]["refused_sites"] == sorted([site, "othersite"])
    bad = nm.cli("node", "policy", "set", "refused_prefixes", "10.0.0.0/33")
    assert bad.returncode != 0
    assert "refused_prefixes: expected IPv4 address prefixes" in bad.stderr
    assert json.loads(nm.cli("node", "policy", "show", "-o", "json").stdout) == shown
    set_policy(nm, "refused_sites", "")
    assert nm.call("bind", nm.slice("web"), nm.call("acquire", {}))["state"] == "running"
    assert nm.call("start", early)["state"] == "running"


def test_a_refused_prefix_is_unreachable_from_slivers(
        nm: NMHandle, engine: docker.DockerClient, outside: Outside) -> None:
    info = make_sliver(nm, "wall")

    def ping() -> int:
        code, _ = sliver_exec(engine, info["container"],
                              ["ping", "-n", "-q", "-c", "1", "-W", "2", outside.address])
        return code

    assert ping() == 0
    set_policy(nm, "refused_prefixes", f"{outside.address}/32")
    assert ping() != 0, "the refused prefix is still reachable"
    set_policy(nm, "refused_prefixes", "")
    assert ping() == 0


def test_the_cap_stays_under_the_owners_bound(nm: NMHandle) -> None:
    nm.call("set_node", "net_cap_kbit", 50_000)
    set_policy(nm, "net_cap_max_kbit", "20000")
    assert nm.call("status")["net_cap_kbit"] == 20_000
    assert tc.read_classes(nm.cfg.ifb)[handle(0xC000)].ceil_bps == 20_000 * 125
    with pytest.raises(ValidationError, match="net_cap_kbit: expected at most the 20000"):
        nm.call("set_node", "net_cap_kbit", 30_000)
    refused = nm.cli("node", "set", "net_cap_kbit", "30000")
    assert refused.returncode != 0 and "net_cap_max_kbit" in refused.stderr
