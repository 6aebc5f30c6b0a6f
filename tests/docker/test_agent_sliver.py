"""The node agent as a node runs it: in its own nm_privileged sliver, made as `node up`
makes it, reaching a real PLC from inside the sliver. A slice added in PLC becomes an
ssh-able sliver within seconds; a key follows; another creator's sliver is left alone."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import docker
import pytest

from slicectl.agent.install import ensure_agent_sliver
from slicectl.core.errors import NotFoundError
from slicectl.core.netplan import node_gateway
from slicectl.ipc.rpc import Client
from slicectl.node.config import NodeConfig
from slicectl.plc.client import PLC, Login
from slicectl.plc.credentials import NodeCredentials
from slicectl.plc.hosting import register_node
from slicectl.testbed.plc import start_server, stop_server
from slicectl.testbed.privnode import free_port, private_node

from .test_ssh import ssh

pytestmark = pytest.mark.docker

SECOND_KEY = ("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAedTThpXyowOnVlyTamP51PoT4OP2uPOGgEKsAZjr81 "
              "second@example.org")


def _until(cond: Callable[[], bool], timeout: float, what: str) -> float:
    started = time.monotonic()
    while not cond():
        assert time.monotonic() - started < timeout, f"{what}: not within {timeout} s"
        time.sleep(0.05)
    return time.monotonic() - started


def test_the_agent_in_its_sliver_follows_plc(node_cfg: NodeConfig, engine: docker.DockerClient,
                                             ssh_key: Path, tmp_path: Path) -> None:
    port = free_port()
    with private_node(node_cfg, engine, plc_port=port) as cfg:
        gw = node_gateway(cfg.subnet)
        (tmp_path / "plc").mkdir()
        srv = start_server(tmp_path / "plc", None, plain=False, host="0.0.0.0", port=port,
                           cert_names=(gw,))
        try:
            nm = Client(cfg.nm_sock, timeout=300).call
            root = PLC(Login(srv.url, srv.root, srv.cafile))
            tag = cfg.state_dir.name
            creds = register_node(root, cfg.with_(hostname=f"n{tag}.test"))
            inside = NodeCredentials(f"https://{gw}:{port}/PLCAPI/", srv.cafile, creds.node_id,
                                     creds.hostname, creds.key)
            said: list[str] = []
            agent = f"t{tag}_agent"  # not AGENT_SLICE: private nodes share the host's accounts
            ensure_agent_sliver(nm, inside, Path(str(srv.cafile)), cfg.state_dir, said.append,
                                name=agent)
            assert said == [f"made the agent's sliver {agent}"]
            assert nm("get_sliver", agent)["rspec"]["nm_privileged"] is True

            site = f"s{tag}"
            root.AddSite({"login_base": site, "name": "Agent sliver", "abbreviated_name": site,
                          "enabled": True, "max_slices": 10})
            pid = root.AddPerson({"email": f"u@{site}.org", "first_name": "U", "last_name": "S"})
            root.AddPersonToSite(pid, site)
            root.AddRoleToPerson("user", pid)
            root.UpdatePerson(pid, {"enabled": True})
            root.AddPersonKey(pid, {"key_type": "ssh",
                                    "key": Path(f"{ssh_key}.pub").read_text().strip()})
            name = f"{site}_live"
            root.AddSlice({"name": name, "url": "https://example.org", "description": "live"})
            root.AddPersonToSlice(pid, name)

            def has(n: str, keys: int = 1) -> bool:
                try:
                    info = nm("get_sliver", n)
                except NotFoundError:
                    return False
                return bool(info["state"] == "running" and info["keys"] == keys)

            root.AddSliceToNodes(name, [creds.node_id])
            # the agent's first poll may still be starting: generous, not a speed claim
            _until(lambda: has(name), 60, "the slice's sliver")
            _until(lambda: ssh(cfg, ssh_key, name, "true").returncode == 0, 30, "ssh")
            assert nm("get_sliver", name)["created_by"] == f"slice:{agent}"

            # a key reaches the node through the change notice, not the minute's poll
            root.AddPersonKey(pid, {"key_type": "ssh", "key": SECOND_KEY})
            assert _until(lambda: has(name, keys=2), 30, "the new key") < 10

            # another creator's sliver: root makes one; the agent never removes it
            other = f"t{tag}_other"
            nm("bind", other, nm("acquire", {"cpu_share": 1}), {"keys": []})
            root.DeleteSliceFromNodes(name, [creds.node_id])
            _until(lambda: not has(name, keys=2), 30, "the removal")
            time.sleep(1)
            names = {s["name"] for s in nm("list")}
            assert other in names and name not in names and agent in names

            # the agent tells the node manager how PLC answers (node status, the sensors)
            def report() -> dict[str, Any]:
                return {r["slice"]: r for r in nm("services")}.get(agent, {})

            _until(lambda: report().get("state") == "ok", 30, "the agent's report")
            assert report()["kind"] == "agent" and report()["authority"] == inside.url
            stop_server(srv)
            _until(lambda: report().get("state") == "unreachable", 30, "PLC away in the report")
            assert report()["failures_in_a_row"] >= 1 and report()["last_error"]
            assert has(agent, keys=0) and has(other, keys=0)  # nothing was destroyed
        finally:
            stop_server(srv)
