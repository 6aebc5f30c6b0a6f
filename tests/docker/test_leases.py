"""Two slice creation services side by side on one node (the paper's unbundled management):
the node agent makes slice A from a real PLC, the lease service makes slice B from its
request list, each from its own privileged sliver through the same node manager socket.
Neither can see nor manage the other's sliver; the agent's sync leaves B alone although PLC
does not list it; B ends at its lease's end and A does not; a request for the name the
agent holds is refused and reported; a new request list restarts the service and its
leases survive."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import docker
import pytest
import yaml

from slicectl.core.errors import NotFoundError
from slicectl.node.config import NodeConfig

from .agent_node import SECOND_KEY, agent_node, until
from .test_privileged import calls
from .test_ssh import ssh

pytestmark = pytest.mark.docker

#: B's lease: long enough for the checks below, short enough to watch it end.
LEASE_S = 60


def test_two_slice_creation_services_keep_to_their_own(
        node_cfg: NodeConfig, engine: docker.DockerClient, ssh_key: Path,
        tmp_path: Path) -> None:
    with agent_node(node_cfg, engine, tmp_path) as an:
        cfg, nm, root, creds, node, agent, tag = (
            an.cfg, an.nm, an.root, an.creds, an.node, an.agent, an.tag)
        leases = f"t{tag}_leases"  # private nodes share the host's accounts

        def has(n: str, keys: int | None = None) -> bool:
            try:
                info = nm("get_sliver", n)
            except NotFoundError:
                return False
            return bool(info["state"] == "running" and keys in (None, info["keys"]))

        def names() -> set[str]:
            return {str(s["name"]) for s in nm("list")}

        # Slice A, from PLC through the agent.
        site = f"s{tag}"
        root.AddSite({"login_base": site, "name": "Leases", "abbreviated_name": site,
                      "enabled": True, "max_slices": 10})
        pid = root.AddPerson({"email": f"u@{site}.org", "first_name": "U", "last_name": "S"})
        root.AddPersonToSite(pid, site)
        root.AddRoleToPerson("user", pid)
        root.UpdatePerson(pid, {"enabled": True})
        pub = Path(f"{ssh_key}.pub").read_text().strip()
        root.AddPersonKey(pid, {"key_type": "ssh", "key": pub})
        slice_a = f"{site}_a"
        root.AddSlice({"name": slice_a, "url": "https://example.org", "description": "A"})
        root.AddPersonToSlice(pid, slice_a)
        root.AddSliceToNodes(slice_a, [creds.node_id])
        until(lambda: has(slice_a, keys=1), 60, "slice A from the agent")

        # Slice B, from the lease service's list (with a request for A's name).
        slice_b, slice_d = f"t{tag}_b", f"t{tag}_d"
        listing: list[dict[str, Any]] = [
            {"slice": slice_b, "keys": [pub], "duration": f"{LEASE_S}s", "cpu_share": 2,
             "mem_mb": 128},
            {"slice": slice_a, "duration": "10m"},
        ]
        (tmp_path / "requests.yaml").write_text(yaml.safe_dump({"requests": listing}))
        up = node.cli("leases", "up", "--requests", str(tmp_path / "requests.yaml"),
                      "--name", leases)
        assert up.returncode == 0, up.stderr
        assert f"made the lease service's sliver {leases}" in up.stdout
        until(lambda: has(slice_b, keys=1), 60, "slice B from the lease service")
        leased_at = time.monotonic()
        b_info = nm("get_sliver", slice_b)
        assert b_info["created_by"] == f"slice:{leases}"
        assert nm("get_sliver", slice_a)["created_by"] == f"slice:{agent}"

        # (b) The attack: each service, from inside its sliver, at the other's sliver.
        svc, ag = nm("get_sliver", leases), nm("get_sliver", agent)
        for me, mine, theirs in ((svc, slice_b, slice_a), (ag, slice_a, slice_b)):
            res = calls(engine, me, ["list"], ["destroy", theirs], ["stop", theirs],
                        ["set_keys", theirs, []], ["get_keys", theirs])
            seen = {s["name"] for s in res[0]["value"]}
            assert mine in seen and theirs not in seen, (me["name"], seen)
            assert {agent, leases}.isdisjoint(seen)
            refused = (f"slice {theirs}: slice:{me['name']} did not create it and may not "
                       "manage it")
            for r in res[1:]:
                assert r.get("fault", "").endswith(refused), (me["name"], r)
        assert has(slice_a, keys=1) and has(slice_b, keys=1)

        # (a) The agent converges while B runs (a key for A's member): B stays.
        root.AddPersonKey(pid, {"key_type": "ssh", "key": SECOND_KEY})
        until(lambda: has(slice_a, keys=2), 30, "the new key on A")
        time.sleep(1)
        assert has(slice_b, keys=1)

        # (c) B is ssh-able with the lease's key.
        until(lambda: ssh(cfg, ssh_key, slice_b, "true").returncode == 0, 30, "ssh to B")

        # (e) The request for A's name is refused, and the status says why.
        def status() -> dict[str, Any]:
            out = node.cli("leases", "status", "--name", leases, "-o", "json")
            assert out.returncode == 0, out.stderr
            data: dict[str, Any] = json.loads(out.stdout)
            return data

        st = status()
        assert [a["slice"] for a in st["active"]] == [slice_b]
        (refusal,) = st["refused"]
        assert refusal["slice"] == slice_a
        # the node manager's own line: A exists, and it is the agent's
        assert refusal["reason"] == (f"slice {slice_a}: slice:{leases} did not create it "
                                     "and may not manage it")
        text = node.cli("leases", "status", "--name", leases).stdout
        assert f"refused  {slice_a}" in text and f"active   {slice_b}" in text
        # both services tell the node manager how they are doing, each as itself
        until(lambda: {r["slice"] for r in nm("services")} >= {agent, leases}, 90,
               "both services' reports")
        told = {r["slice"]: r for r in nm("services")}
        assert (told[agent]["kind"], told[leases]["kind"]) == ("agent", "leases")
        assert told[leases]["slivers"] == 1 and told[agent]["state"] == "ok"

        # A new list replaces the initscript and restarts the service; B survives.
        listing.append({"slice": slice_d, "duration": "10m"})
        (tmp_path / "requests.yaml").write_text(yaml.safe_dump({"requests": listing}))
        up = node.cli("leases", "up", "--requests", str(tmp_path / "requests.yaml"),
                      "--name", leases)
        assert up.returncode == 0, up.stderr
        assert "new initscript and restarted it" in up.stdout
        until(lambda: has(slice_d), 60, "slice D after the update")
        assert time.monotonic() - leased_at < LEASE_S - 5, "too slow to check B survived"
        again = nm("get_sliver", slice_b)
        assert (again["created"], again["rcaps"]) == (b_info["created"], b_info["rcaps"])
        assert [a["slice"] for a in status()["active"]] == [slice_b, slice_d]

        # (d) B's lease ends: B goes, A stays untouched.
        until(lambda: slice_b not in names(), LEASE_S + 30, "the end of B's lease")
        until(lambda: any(e["slice"] == slice_b for e in status()["ended"]), 30,
               "B reported ended")
        assert has(slice_a, keys=2) and has(slice_d)
        assert ssh(cfg, ssh_key, slice_a, "true").returncode == 0
