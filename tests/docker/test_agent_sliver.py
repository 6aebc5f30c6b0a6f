"""The node agent as a node runs it: in its own nm_privileged sliver, made as `node up`
makes it, reaching a real PLC from inside the sliver. A slice added in PLC becomes an
ssh-able sliver within seconds; a key follows; another creator's sliver is left alone."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import docker
import pytest

from slicectl.core.errors import NotFoundError
from slicectl.node.config import NodeConfig
from slicectl.testbed.plc import stop_server

from .agent_node import SECOND_KEY, agent_node, until
from .test_ssh import ssh

pytestmark = pytest.mark.docker

def test_the_agent_in_its_sliver_follows_plc(node_cfg: NodeConfig, engine: docker.DockerClient,
                                             ssh_key: Path, tmp_path: Path) -> None:
    with agent_node(node_cfg, engine, tmp_path) as an:
        cfg, nm, root, creds, inside, agent, said, srv = (
            an.cfg, an.nm, an.root, an.creds, an.inside, an.agent, an.said, an.srv)
        tag = an.tag
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
        until(lambda: has(name), 60, "the slice's sliver")
        until(lambda: ssh(cfg, ssh_key, name, "true").returncode == 0, 30, "ssh")
        assert nm("get_sliver", name)["created_by"] == f"slice:{agent}"

        # a key reaches the node through the change notice, not the minute's poll
        root.AddPersonKey(pid, {"key_type": "ssh", "key": SECOND_KEY})
        assert until(lambda: has(name, keys=2), 30, "the new key") < 10

        # another creator's sliver: root makes one; the agent never removes it
        other = f"t{tag}_other"
        nm("bind", other, nm("acquire", {"cpu_share": 1}), {"keys": []})
        root.DeleteSliceFromNodes(name, [creds.node_id])
        until(lambda: not has(name, keys=2), 30, "the removal")
        time.sleep(1)
        names = {s["name"] for s in nm("list")}
        assert other in names and name not in names and agent in names

        # the agent tells the node manager how PLC answers (node status, the sensors)
        def report() -> dict[str, Any]:
            return {r["slice"]: r for r in nm("services")}.get(agent, {})

        until(lambda: report().get("state") == "ok", 30, "the agent's report")
        assert report()["kind"] == "agent" and report()["authority"] == inside.url
        stop_server(srv)
        until(lambda: report().get("state") == "unreachable", 30, "PLC away in the report")
        assert report()["failures_in_a_row"] >= 1 and report()["last_error"]
        assert has(agent, keys=0) and has(other, keys=0)  # nothing was destroyed
