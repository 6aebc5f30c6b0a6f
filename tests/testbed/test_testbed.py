"""The testbed itself: PLC and three nodes, each a machine of its own that joined PLC the
way a real one does, driven from outside by what `slicectl testbed status` gives."""

from __future__ import annotations

import json
import ssl
import subprocess
import sys
import urllib.request
import xmlrpc.client
from pathlib import Path

from slicectl.agent.install import AGENT_SLICE
from slicectl.node.image import REFERENCE_REPO
from slicectl.testbed.drive import Testbed
from slicectl.testbed.layout import TESTBEDS_DIR


def test_status_gives_a_script_everything_to_drive_the_testbed(testbed: Testbed) -> None:
    out = subprocess.run([sys.executable, "-m", "slicectl.cli", "testbed", "status", "--project",
                          testbed.lay.project, "-o", "json"], capture_output=True, text=True,
                         check=True).stdout
    st = json.loads(out)
    assert st["plc"]["url"] == f"https://{testbed.lay.plc_address}/PLCAPI/"
    root = json.loads(Path(st["plc"]["root_file"]).read_text())  # as /etc/slicectl/plc-root.json
    assert root["url"] == st["plc"]["url"] and root["cafile"] == st["plc"]["cafile"]
    ctx = ssl.create_default_context(cafile=st["plc"]["cafile"])  # verifies PLC's certificate
    plc = xmlrpc.client.ServerProxy(st["plc"]["url"], allow_none=True, context=ctx)
    auth = {k: root[k] for k in ("AuthMethod", "Username", "AuthString")}
    assert plc.AuthCheck(auth) == 1
    by_host = {n["hostname"]: n["node_id"] for n in plc.GetNodes(auth, {}, ["hostname", "node_id"])}
    assert [(n["name"], n["state"]) for n in st["nodes"]] == [
        (n.name, "ready") for n in testbed.nodes]
    for n in st["nodes"]:
        assert by_host[n["hostname"]] == n["node_id"]
        assert n["address"] in {x.address for x in testbed.nodes}
    assert str(TESTBEDS_DIR) in st["plc"]["root_file"]


def test_each_node_is_a_machine_with_its_own_engine_name_and_agent(testbed: Testbed) -> None:
    engines, hostnames = set(), set()
    for node in testbed.nodes:
        hostnames.add(testbed.on_node(node, "hostname", "-f").stdout.strip())
        info = testbed.on_node(node, "docker", "-H", "unix:///run/slicectl/docker.sock", "info",
                               "--format", "{{.ID}} {{.Driver}}", check=True).stdout.split()
        engines.add(info[0])
        assert info[1] == "btrfs"  # sliver disk quotas hold on every node
        images = testbed.on_node(node, "docker", "-H", "unix:///run/slicectl/docker.sock",
                                 "images", "--format", "{{.Repository}}", check=True).stdout
        assert REFERENCE_REPO in images.split()  # loaded, not built, on the node
        status = testbed.slicectl(node, "node", "status")
        assert status["agent"]["state"] == "ok", status["agent"]
        assert status["agent"]["kind"] == "agent"
        assert AGENT_SLICE in testbed.slivers(node)
    assert hostnames == {n.hostname for n in testbed.nodes}
    assert len(engines) == len(testbed.nodes)


def test_plc_knows_each_node_contacted_it(testbed: Testbed) -> None:
    nodes = testbed.proxy().GetNodes(testbed.root_auth(), [n.node_id for n in testbed.nodes],
                                     ["hostname", "last_contact"])
    assert len(nodes) == len(testbed.nodes)
    assert all(n["last_contact"] for n in nodes), nodes


def test_each_nodes_audit_page_answers_on_its_own_address(testbed: Testbed) -> None:
    for node in testbed.nodes:
        with urllib.request.urlopen(f"http://{node.address}/", timeout=10) as r:
            page = r.read().decode()
        assert r.status == 200
        assert node.hostname in page
