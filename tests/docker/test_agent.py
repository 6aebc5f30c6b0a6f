"""The node agent against a real PLC (``slicectl plc serve``) and a real private node
manager: PLC's view becomes slivers one can ssh into, changes follow, and PLC going away
changes nothing on the node."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from slicectl.agent.daemon import Status, step
from slicectl.agent.plcview import PLCView
from slicectl.agent.sync import Record
from slicectl.plc.client import PLC, Login
from slicectl.plc.credentials import NodeCredentials
from slicectl.plc.hosting import register_node
from slicectl.testbed.plc import Server, start_server, stop_server

from .conftest import NMHandle
from .test_ssh import ssh

pytestmark = pytest.mark.docker

OTHER_KEY = ("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAedTThpXyowOnVlyTamP51PoT4OP2uPOGgEKsAZjr81 "
             "second@example.org")


def plc_and_node(plc: Server, nm: NMHandle, site: str, title: str
                 ) -> tuple[PLC, NodeCredentials]:
    """PLC as root, this node registered in it, and a site ``site``."""
    root = PLC(Login(plc.url, plc.root, plc.cafile))
    creds: NodeCredentials = register_node(root, nm.cfg.with_(hostname=f"n{nm.tag}.test"))
    root.AddSite({"login_base": site, "name": title, "abbreviated_name": site,
                  "enabled": True, "max_slices": 10})
    return root, creds


@pytest.fixture
def plc(tmp_path: Path) -> Iterator[Server]:
    state = tmp_path / "plc"
    state.mkdir()
    srv = start_server(state, None, plain=False)
    yield srv
    stop_server(srv)


def test_the_agent_turns_plc_slices_into_slivers(plc: Server, nm: NMHandle, ssh_key: Path,
                                                 tmp_path: Path) -> None:
    site = f"s{nm.tag}"
    root, creds = plc_and_node(plc, nm, site, "Agent test")
    pid = root.AddPerson({"email": f"u@{site}.org", "first_name": "U", "last_name": "Ser",
                          "password": "pw"})
    root.AddPersonToSite(pid, site)
    root.AddRoleToPerson("user", pid)
    root.UpdatePerson(pid, {"enabled": True})
    root.AddPersonKey(pid, {"key_type": "ssh", "key": Path(f"{ssh_key}.pub").read_text().strip()})
    name = f"{site}_exp"
    root.AddSlice({"name": name, "url": "https://example.org", "description": "agent test"})
    root.AddPersonToSlice(pid, name)
    root.AddSliceTag(name, "cpu_share", "7")
    root.AddSliceTag(name, "initscript_code", "#!/bin/sh\necho stamped > /tmp/stamp\n")
    root.AddSliceToNodes(name, [creds.node_id])

    view, record, status = PLCView(creds), tmp_path / "agent" / "record.json", Status()
    assert step(view, nm.call, record, status)
    admin = nm.cfg.admin_slice  # the site's admin sliver comes with the first step
    assert status.failed == [] and status.last_changes == [f"create {name}",
                                                           f"create {admin}"], status
    assert nm.call("get_sliver", admin)["keys"] == 0  # the site has no PI or tech with keys
    info = nm.call("get_sliver", name)
    assert info["rspec"]["cpu_share"] == 7 and info["keys"] == 1
    out = ssh(nm.cfg, ssh_key, name, "true")
    assert out.returncode == 0, out.stderr
    assert ssh(nm.cfg, ssh_key, name, "false").returncode != 0
    assert ssh(nm.cfg, ssh_key, name, "no-such-command-here").returncode == 127
    stamp = "for i in $(seq 100); do test -e /tmp/stamp && exec cat /tmp/stamp; sleep 0.1; done"
    assert ssh(nm.cfg, ssh_key, name, stamp).stdout.strip() == "stamped"  # initscript_code

    # a new member key reaches the sliver with the next step; nothing else changes
    root.AddPersonKey(pid, {"key_type": "ssh", "key": OTHER_KEY})
    assert step(view, nm.call, record, status)
    assert status.last_changes == [f"set_keys {name}"] and nm.call("get_sliver", name)["keys"] == 2

    # a second creator's sliver on the node is never touched
    other = f"t{nm.tag}_other"
    nm.call("bind", other, nm.call("acquire", {"cpu_share": 1}), {"keys": []})
    # PLC away (nothing answers at its address): nothing changes, the status says why
    away = PLCView(NodeCredentials("https://127.0.0.1:1/PLCAPI/", plc.cafile, creds.node_id,
                                   creds.hostname, creds.key))
    assert not step(away, nm.call, record, status)
    assert status.plc == "unreachable" and "127.0.0.1:1" in status.last_error
    assert {s["name"] for s in nm.call("list")} == {name, other, admin}

    # PLC back: removing the slice from the node removes the sliver, and only it
    root.DeleteSliceFromNodes(name, [creds.node_id])
    assert step(view, nm.call, record, status)
    assert status.plc == "ok" and status.last_changes == [f"destroy {name}"]
    assert {s["name"] for s in nm.call("list")} == {other, admin}
    assert set(Record.load(record).made) == {admin}


def test_the_sites_pis_and_techs_log_in_to_the_admin_sliver(plc: Server, nm: NMHandle,
                                                            ssh_key: Path,
                                                            tmp_path: Path) -> None:
    """ssh site_admin@node with a key the site's PI has in PLC; the tools work there; the
    key goes when the PI is disabled."""
    site = f"a{nm.tag}"
    root, creds = plc_and_node(plc, nm, site, "Admin")  # (the node is at the host's site)
    admin = nm.cfg.admin_slice
    view, record, status = PLCView(creds), tmp_path / "agent" / "record.json", Status()
    assert step(view, nm.call, record, status)
    assert status.last_changes == [f"create {admin}"] and nm.call("get_sliver", admin)["keys"] == 0
    pi = root.AddPerson({"email": f"pi@{site}.org", "first_name": "P", "last_name": "I",
                         "password": "pw"})
    root.AddPersonToSite(pi, root.GetNodes(creds.node_id)[0]["site_id"])  # the node's site
    root.AddRoleToPerson("pi", pi)
    root.UpdatePerson(pi, {"enabled": True})
    root.AddPersonKey(pi, {"key_type": "ssh", "key": Path(f"{ssh_key}.pub").read_text().strip()})
    assert step(view, nm.call, record, status)
    assert status.last_changes == [f"set_keys {admin}"], status
    info = nm.call("get_sliver", admin)
    assert info["keys"] == 1 and info["rspec"]["admin"] is True
    assert info["rspec"]["admin_sniffer"] is True and info["rspec"]["nm_privileged"] is False
    wait = "for i in $(seq 100); do test -x /usr/local/bin/pl-ps && break; sleep 0.1; done; "
    out = ssh(nm.cfg, ssh_key, admin, wait + "pl-ps | head -1; pl-ps | grep -c .")
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[:5] == ["SLICE", "PID", "%CPU", "RSS", "COMMAND"], out.stdout
    root.UpdatePerson(pi, {"enabled": False})
    assert step(view, nm.call, record, status)
    assert nm.call("get_sliver", admin)["keys"] == 0
    assert ssh(nm.cfg, ssh_key, admin, "true").returncode != 0


def test_plc_shows_why_a_nodes_policy_refuses_a_slice(plc: Server, nm: NMHandle,
                                                      tmp_path: Path) -> None:
    site = f"r{nm.tag}"
    root, creds = plc_and_node(plc, nm, site, "Refused")
    name = f"{site}_exp"
    root.AddSlice({"name": name, "url": "https://example.org", "description": "refused"})
    root.AddSliceToNodes(name, [creds.node_id])
    out = nm.cli("node", "policy", "set", "refused_sites", site)
    assert out.returncode == 0, out.stderr
    view, record, status = PLCView(creds), tmp_path / "agent" / "record.json", Status()
    assert step(view, nm.call, record, status)
    assert status.failed == [] and name not in {s["name"] for s in nm.call("list")}
    states = root.GetSliverStates(name)
    assert [(s["state"], s["detail"]) for s in states] == [
        ("refused", f"slice {name}: refused by this node's policy (refused_sites: {site})")]
    assert [r for r in nm.call("list_rcaps") if r["slice"] != nm.cfg.admin_slice] == [], \
        "the refused bind's rcap went back"
