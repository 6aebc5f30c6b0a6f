"""A privileged slice gets no more than it holds (issue 11), asked through the node
manager's socket from inside a real nm_privileged sliver: no root-only rights, no
squatting another creator's slice name, split conserves the daily byte budget, admission
sums memory against the node."""

from __future__ import annotations

import json
import textwrap
from typing import Any

import docker

from slicectl.core.labels import SLIVER_NM_DIR

from .conftest import NMHandle, sliver_exec

#: Runs in a privileged sliver: each argv[1] line is a JSON [method, args...]; prints the
#: value or the fault of each, as JSON.
CALLS = r"""
import http.client, json, socket, sys, xmlrpc.client
class U(http.client.HTTPConnection):
    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.connect("NM_DIR/nm.sock")
out = []
for line in sys.argv[1].splitlines():
    method, *args = json.loads(line)
    c = U("x", timeout=120)
    c.request("POST", "/RPC2", xmlrpc.client.dumps(tuple(args), method, allow_none=True))
    try:
        out.append({"value": xmlrpc.client.loads(c.getresponse().read())[0][0]})
    except xmlrpc.client.Fault as f:
        out.append({"fault": f.faultString})
print(json.dumps(out, default=str))
""".replace("NM_DIR", SLIVER_NM_DIR)


def calls(engine: docker.DockerClient, sliver: dict[str, Any], *lines: list[Any]) -> list[Any]:
    status, out = sliver_exec(engine, sliver["container"], [
        "python3", "-c", textwrap.dedent(CALLS), "\n".join(json.dumps(x) for x in lines)])
    assert status == 0, out
    result: list[Any] = json.loads(out.strip().splitlines()[-1])
    return result


def test_a_privileged_slice_gets_no_more_than_it_holds(nm: NMHandle,
                                                       engine: docker.DockerClient) -> None:
    agent = dict(nm.call("bind", nm.slice("agent"), nm.call("acquire", {"nm_privileged": True})))
    rival = dict(nm.call("bind", nm.slice("rival"), nm.call("acquire", {"nm_privileged": True})))
    owned = nm.slice("owned")
    # Rights only root grants.
    res = calls(engine, agent, ["acquire", {"nm_privileged": True}],
                ["acquire", {"admin_sniffer": True}], ["acquire", {"tcp_ports": [80]}])
    assert "nm_privileged: expected false, only the node's root may grant it" in res[0]["fault"]
    assert "admin_sniffer: expected false" in res[1]["fault"]
    assert "port 80" in res[2]["fault"] and "cannot be reserved" in res[2]["fault"]
    # The agent binds a slice; the rival may neither manage it nor, once destroyed, take
    # its name.
    res = calls(engine, agent, ["acquire", {"end": "1d"}])
    rcap = res[0]["value"]
    res = calls(engine, agent, ["bind", owned, rcap], ["destroy", owned])
    assert res[0]["value"]["name"] == owned and res[1]["value"] is True
    res = calls(engine, rival, ["acquire", {"end": "1d"}])
    rival_rcap = res[0]["value"]
    res = calls(engine, rival, ["bind", owned, rival_rcap])
    assert f"the name belongs to slice:{agent['name']}" in res[0]["fault"]
    assert all(s["name"] != owned for s in nm.call("list"))
    # Split conserves the daily budget: no part may take all of it or more.
    res = calls(engine, rival, ["acquire", {"end": "1d", "net_max_kbyte_day": 1000, "cpu_share": 10,
                                            "mem_mb": 256}])
    budget = res[0]["value"]
    res = calls(engine, rival, ["split", budget, {"net_max_kbyte_day": 1000, "mem_mb": 64}],
                ["split", budget, {"net_max_kbyte_day": 400, "mem_mb": 64}],
                ["get_rspec", budget])
    assert "net_max_kbyte_day: expected from 1 to 999" in res[0]["fault"]
    part = res[1]["value"]
    assert res[2]["value"]["net_max_kbyte_day"] == 600
    assert nm.call("get_rspec", part)["net_max_kbyte_day"] == 400
    # Admission sums memory against the node (2x overcommit): a privileged slice cannot
    # hoard more than the node has.
    mem_mb = int(nm.call("status")["mem_mb"])
    res = calls(engine, rival, ["acquire", {"end": "1d", "mem_mb": mem_mb}],
                ["acquire", {"end": "1d", "mem_mb": mem_mb}],
                ["acquire", {"end": "1d", "mem_mb": mem_mb}])
    faults = [r.get("fault", "") for r in res]
    assert any("mem_mb: asked for" in f and "overcommit" in f for f in faults), faults
