"""``make up``'s PLC step against a real server: this node registered once, however often
it runs, and credentials that log the node in."""

from __future__ import annotations

from pathlib import Path

from slicectl.node.config import NodeConfig
from slicectl.plc.auth import hmac_value
from slicectl.plc.client import PLC, Login
from slicectl.plc.credentials import NodeCredentials
from slicectl.plc.hosting import plc_hostname, register_node
from slicectl.testbed.plc import Server


def _cfg(tmp_path: Path, hostname: str) -> NodeConfig:
    return NodeConfig(node_id="t", state_dir=tmp_path, run_dir=tmp_path,
                      engine_sock=tmp_path / "e.sock", hostname=hostname,
                      operator="ops@example.org")


def test_registering_this_node_is_idempotent_and_its_key_logs_it_in(
        server: Server, tmp_path: Path) -> None:
    plc = PLC(Login(server.url, server.root, server.cafile))
    cfg = _cfg(tmp_path, "Hosted_Node")
    first = register_node(plc, cfg)
    again = register_node(plc, cfg)
    assert first == again  # one site, one node, the same key
    assert first.hostname == "hosted-node.localdomain"
    assert [n["hostname"] for n in plc.GetNodes({"hostname": first.hostname})] == [first.hostname]
    assert len(plc.GetSites({"login_base": "local"})) == 1

    path = tmp_path / "plc-node.json"
    first.write(path)
    assert path.stat().st_mode & 0o777 == 0o600
    creds = NodeCredentials.read(path)
    auth = {"AuthMethod": "hmac", "node_id": creds.node_id, "value": hmac_value(creds.key, [])}
    assert server.proxy().GetSlivers(auth)["node_id"] == creds.node_id


def test_hostnames_become_fully_qualified() -> None:
    cfg = _cfg(Path("/nonexistent"), "")
    assert plc_hostname(cfg) == "node.localdomain"
    assert plc_hostname(cfg.with_(hostname="n1.example.org")) == "n1.example.org"
    assert plc_hostname(cfg.with_(hostname="-a b.")) == "a-b.localdomain"


def test_a_node_joins_with_the_key_its_admin_handed_over(server: Server, tmp_path: Path) -> None:
    import pytest

    from slicectl.agent.join import join
    from slicectl.core.errors import ConnectionFailed

    plc = PLC(Login(server.url, server.root, server.cafile))
    site = plc.AddSite({"name": "Join", "abbreviated_name": "J", "login_base": "join"})
    nid = plc.AddNode(site, {"hostname": "n1.join.example"})
    key = plc.GetNodeKey(nid)
    (tmp_path / "plnode.txt").write_text(f"NODE_ID={nid}\nNODE_KEY={key}\n")
    creds = join(server.url, tmp_path / "plnode.txt", server.cafile, None, tmp_path / "c.json")
    assert creds == NodeCredentials.read(tmp_path / "c.json")
    assert (creds.node_id, creds.hostname, creds.key) == (nid, "n1.join.example", key)
    (tmp_path / "wrong").write_text(f"NODE_ID={nid}\nNODE_KEY=not-{key}\n")
    with pytest.raises(ConnectionFailed, match="fault 103"):
        join(server.url, tmp_path / "wrong", server.cafile, None, tmp_path / "d.json")
    assert not (tmp_path / "d.json").exists()
