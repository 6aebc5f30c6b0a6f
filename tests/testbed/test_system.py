"""PLCAPI.md's system steps on three nodes: a site, its PI and user, slices on every node
reached with `ssh slice@node`, and what PLC's changes, outages and a node's restart do.

Timeouts are generous (a loaded two-core machine runs three nodes here);
bench/testbed_bench.py measures how fast."""

from __future__ import annotations

import json
import time
import urllib.request
import xmlrpc.client
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from slicectl.testbed.drive import Node, Site, Testbed, ssh, ssh_ok, tcpdump_read, until

APPEAR_S = 30


@pytest.fixture(scope="module")
def site(testbed: Testbed, tmp_path_factory: pytest.TempPathFactory) -> Site:
    return Site(testbed, "sys", tmp_path_factory.mktemp("keys"))


@pytest.fixture(scope="module")
def exp(site: Site) -> Iterator[str]:
    """The PI's slice on every node, with the user as a member."""
    name = site.slice("exp", [site.pi, site.user])
    for node in site.tb.nodes:
        until(lambda n=node: ssh_ok(site.user.key, name, n), APPEAR_S, f"{name} on {node.name}")
    yield name
    site.call(site.pi, "DeleteSlice", name)


def test_a_slice_on_every_node_runs_commands_over_ssh(site: Site, exp: str) -> None:
    for node in site.tb.nodes:
        assert ssh(site.user.key, exp, node, "true").returncode == 0
        assert ssh(site.user.key, exp, node, "false").returncode != 0
        assert ssh(site.user.key, exp, node, "no-such-command-here").returncode == 127
        ps = ssh(site.user.key, exp, node, "ps ax")
        assert ps.returncode == 0 and "ps ax" in ps.stdout
        # the sliver is the node's: its hostname and its node manager's record
        assert ssh(site.user.key, exp, node, "hostname").returncode == 0
        info = site.tb.slicectl(node, "show", exp)
        assert info["created_by"] == "slice:slicectl_agent" and info["state"] == "running"


def test_initscripts_by_name_and_by_code_run_in_every_sliver(site: Site) -> None:
    root, auth = site.tb.proxy(), site.tb.root_auth()
    if not root.GetInitScripts(auth, {"name": "tbstamp"}):
        root.AddInitScript(auth, {"name": "tbstamp", "enabled": True,
                                  "script": "#!/bin/sh\necho by-name > /tmp/stamp\n"})
    named = site.slice("byname", tags={"initscript": "tbstamp"})
    coded = site.slice("bycode", tags={"initscript_code": "#!/bin/sh\necho by-code > /tmp/stamp\n"})
    try:
        for name, word in ((named, "by-name"), (coded, "by-code")):
            for node in site.tb.nodes:
                until(lambda n=node, s=name, w=word: ssh(site.pi.key, s, n, "cat /tmp/stamp")
                      .stdout.strip() == w, APPEAR_S, f"{name}'s stamp on {node.name}", pause=0.5)
    finally:
        for name in (named, coded):
            site.call(site.pi, "DeleteSlice", name)


def test_a_key_added_in_plc_works_everywhere_and_a_removed_member_is_refused(
        site: Site, exp: str, tmp_path: Path) -> None:
    newcomer = site.person("newcomer@sys.example.org", "user", tmp_path)
    for node in site.tb.nodes:
        assert not ssh_ok(newcomer.key, exp, node)
    site.call(site.pi, "AddPersonToSlice", newcomer.person_id, exp)
    for node in site.tb.nodes:
        until(lambda n=node: ssh_ok(newcomer.key, exp, n), 10, f"new key on {node.name}")
    site.call(site.pi, "DeletePersonFromSlice", newcomer.person_id, exp)
    for node in site.tb.nodes:
        until(lambda n=node: not ssh_ok(newcomer.key, exp, n), 10, f"removal on {node.name}")
        assert ssh_ok(site.user.key, exp, node)  # the others keep their access


def test_delete_slice_from_one_node_leaves_the_others_and_adding_it_back_works(
        site: Site, exp: str) -> None:
    first, *rest = site.tb.nodes
    site.call(site.pi, "DeleteSliceFromNodes", exp, [first.hostname])
    until(lambda: exp not in site.tb.slivers(first), APPEAR_S, f"{exp} gone from {first.name}")
    assert not ssh_ok(site.user.key, exp, first)
    for path in (f"/var/lib/slicectl/slivers/{exp}", f"/home/{exp}"):
        assert site.tb.on_node(first, "test", "-e", path).returncode != 0, path
    for node in rest:
        assert ssh_ok(site.user.key, exp, node)
    site.call(site.pi, "AddSliceToNodes", exp, [first.hostname])
    until(lambda: ssh_ok(site.user.key, exp, first), APPEAR_S, f"{exp} back on {first.name}")


def test_renewal_keeps_the_slivers_and_expiry_removes_them_everywhere(site: Site) -> None:
    name = site.slice("brief")
    for node in site.tb.nodes:
        until(lambda n=node: ssh_ok(site.pi.key, name, n), APPEAR_S, f"{name} on {node.name}")
    created = {n.name: site.tb.slicectl(n, "show", name)["created"] for n in site.tb.nodes}
    later = int(time.time()) + 7 * 86400
    site.call(site.pi, "UpdateSlice", name, {"expires": later})
    for node in site.tb.nodes:  # the rcap's end follows the renewal; the sliver stays
        until(lambda n=node: abs(_end(site.tb, n, name) - later) < 5, APPEAR_S,
              f"renewal on {node.name}", pause=0.5)
        assert site.tb.slicectl(node, "show", name)["created"] == created[node.name]
    site.tb.proxy().UpdateSlice(site.tb.root_auth(), name, {"expires": int(time.time()) + 20})
    for node in site.tb.nodes:
        until(lambda n=node: name not in site.tb.slivers(n), 90, f"expiry on {node.name}", pause=1)
        assert not ssh_ok(site.pi.key, name, node)


def _end(tb: Testbed, node: Node, name: str) -> float:
    from datetime import datetime
    end = tb.slicectl(node, "show", name)["rspec"]["end"]
    return datetime.fromisoformat(str(end).replace("Z", "+00:00")).timestamp()


def test_plc_down_for_a_minute_keeps_slivers_and_nodes_converge_on_its_return(
        site: Site, exp: str) -> None:
    tb = site.tb
    plc = tb.lay.container("plc")
    tb.docker("stop", plc)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            for node in tb.nodes:
                assert ssh_ok(site.user.key, exp, node), f"{exp} on {node.name} while PLC is down"
            time.sleep(10)
        for node in tb.nodes:
            agent = tb.slicectl(node, "node", "status")["agent"]
            assert agent["state"] == "unreachable" and agent["failures_in_a_row"] >= 1, agent
    finally:
        tb.docker("start", plc)
    from slicectl.node.dockerd import Say
    from slicectl.testbed import lifecycle
    lifecycle.wait_plc(tb.lay, Say(quiet=True))
    returned = time.monotonic()
    fresh = site.slice("fresh")
    try:
        for node in tb.nodes:
            until(lambda n=node: ssh_ok(site.pi.key, fresh, n), 20, f"{fresh} on {node.name}")
        assert time.monotonic() - returned < 30
        for node in tb.nodes:
            until(lambda n=node: tb.slicectl(n, "node", "status")["agent"]["state"] == "ok", 20,
                  f"agent on {node.name} reports PLC ok")
    finally:
        site.call(site.pi, "DeleteSlice", fresh)


def test_a_restarted_node_brings_its_slivers_back_as_plc_has_them(site: Site, exp: str) -> None:
    tb = site.tb
    node = tb.nodes[-1]
    tb.docker("restart", "-t", "60", node.container)
    from slicectl.node.dockerd import Say
    from slicectl.testbed import lifecycle
    lifecycle.wait_nodes(tb.lay, Say(quiet=True), timeout_s=300)
    until(lambda: ssh_ok(site.user.key, exp, node), 60, f"{exp} back on {node.name}")
    auth = {"AuthMethod": "password", "Username": site.pi.email, "AuthString": site.pi.password}
    in_plc = {s["name"] for s in tb.proxy().GetSlices(auth, {"name": f"{site.login_base}_*"},
                                                     ["name", "node_ids"])
              if node.node_id in s["node_ids"]}
    until(lambda: {s for s in tb.slivers(node) if s.startswith(f"{site.login_base}_")} == in_plc,
          60, f"{node.name}'s slivers match PLC")


def test_cross_node_traffic_shows_on_the_senders_audit_page_with_its_contacts(
        site: Site) -> None:
    tb = site.tb
    a, b = tb.nodes[0], tb.nodes[1]
    name = site.slice("talk", [site.user], tags={"tcp_ports": "8123"}, nodes=[a, b])
    try:
        for node in (a, b):
            until(lambda n=node: ssh_ok(site.user.key, name, n), APPEAR_S, f"{name} on {node.name}")
        # a listener in B's sliver on its reserved port; A's sliver connects to B's address
        ssh(site.user.key, name, b, "nohup sh -c 'echo hello-from-b | nc -l -p 8123 -q 1' "
            ">/dev/null 2>&1 &")
        got = ""
        deadline = time.monotonic() + 30
        while "hello-from-b" not in got and time.monotonic() < deadline:
            got = ssh(site.user.key, name, a, f"nc -w 3 {b.address} 8123 </dev/null").stdout
            time.sleep(0.5)
        assert "hello-from-b" in got
        url = f"http://{a.address}/dst/{b.address}?format=json"

        def page() -> str:
            with urllib.request.urlopen(url, timeout=10) as r:
                return r.read().decode()

        until(lambda: name in page(), 90, f"{name} on {a.name}'s audit page for {b.address}",
              pause=2)
        text = json.dumps(json.loads(page()))
        assert site.user.email in text and site.pi.email in text
    finally:
        site.call(site.pi, "DeleteSlice", name)


def fault(call: Callable[[], Any]) -> str:
    try:
        call()
    except xmlrpc.client.Fault as f:
        return f.faultString
    raise AssertionError("expected a fault")


def test_a_slice_the_pi_may_not_make_is_refused_by_plc(site: Site) -> None:
    msg = fault(lambda: site.call(site.user, "AddSlice", {"name": "sys_byuser"}))
    assert msg


def test_plc_stops_a_slice_everywhere_and_the_audit_pages_say_who_and_when(site: Site) -> None:
    tb = site.tb
    name = site.slice("halt")
    try:
        for node in tb.nodes:
            until(lambda n=node: ssh_ok(site.pi.key, name, n), APPEAR_S, f"{name} on {node.name}")
        root, auth = tb.proxy(), tb.root_auth()
        tag = root.AddSliceTag(auth, name, "enabled", "0")
        for node in tb.nodes:  # bench/testbed_bench.py measures how fast; here: it happens
            until(lambda n=node: tb.slicectl(n, "show", name)["desired"] == "stopped", 20,
                  f"{name} stopped on {node.name}", pause=0.2)
            info = tb.slicectl(node, "show", name)
            assert info["stopped"]["by"] == "slice:slicectl_agent"
            assert info["stopped"]["reason"].startswith("stopped by PLC")
            assert not ssh_ok(site.pi.key, name, node)
        url = f"http://{tb.nodes[0].address}/slice/{name}?format=json"

        def stopped() -> str:
            with urllib.request.urlopen(url, timeout=10) as r:
                return str(json.loads(r.read().decode()).get("stopped", ""))

        until(lambda: "by slice:slicectl_agent: stopped by PLC" in stopped(), 60,
              f"the audit page of {name} saying it was stopped", pause=2)
        root.UpdateSliceTag(auth, tag, "1")
        for node in tb.nodes:
            until(lambda n=node: ssh_ok(site.pi.key, name, n), APPEAR_S,
                  f"{name} running again on {node.name}")
    finally:
        site.call(site.pi, "DeleteSlice", name)


def test_the_sites_pi_as_site_admin_sees_kills_and_caps(site: Site, exp: str,
                                                        tmp_path: Path) -> None:
    """ssh site_admin@node with the key of a PI of the node's site: pl-ps shows a CPU loop
    in a slice's sliver, pl-kill kills it, pl-cap sets the node's cap, pl-tcpdump captures
    the slice's packets for tcpdump; the node's events say who."""
    tb = site.tb
    node = tb.nodes[0]
    root: Any = tb.proxy()
    node_site = root.GetNodes(tb.root_auth(), node.node_id, ["site_id"])[0]["site_id"]
    base = root.GetSites(tb.root_auth(), node_site, ["login_base"])[0]["login_base"]
    pi = Site(tb, base, site.pi.key.parent).pi  # a PI of the node's own site
    until(lambda: ssh_ok(pi.key, "site_admin", node), APPEAR_S, "site_admin on the node")
    ssh(site.user.key, exp, node, "nohup python3 -c 'while 1: pass' >/dev/null 2>&1 &")

    def loop() -> int | None:
        out = ssh(pi.key, "site_admin", node, f"pl-ps {exp}").stdout
        pids = [int(ln.split()[1]) for ln in out.splitlines()[1:] if "while 1" in ln]
        return pids[0] if pids else None

    until(lambda: loop() is not None, 30, "the loop in pl-ps")
    pid = loop()
    out = ssh(pi.key, "site_admin", node, f"pl-kill {exp} {pid} --reason testbed")
    assert out.returncode == 0 and f"killed 1 process(es) of {exp}" in out.stdout, out.stderr
    until(lambda: loop() is None, 30, "the loop gone")
    # a cap above the default rspec's net_max_kbit (10,000): below it, the node would
    # admit no default sliver, so later tests' slices would never come on this node
    try:
        out = ssh(pi.key, "site_admin", node, "pl-cap 77777")
        assert out.returncode == 0 and "net_cap_kbit 77777" in out.stdout, out.stderr
        # pl-tcpdump captures the slice's packets (to another node), each shown with its slice
        far = tb.nodes[1].address
        ssh(site.user.key, exp, node, "nohup python3 -c 'import socket, time\ns = socket.socket("
            "socket.AF_INET, socket.SOCK_DGRAM)\nfor i in range(300):\n    s.sendto(b\"x\" * 100, "
            f"(\"{far}\", 9999))\n    time.sleep(0.2)' >/dev/null 2>&1 &")
        out = ssh(pi.key, "site_admin", node, f"timeout 50 pl-tcpdump -c 3 slice {exp} and udp "
                  "> /tmp/cap.pcap 2> /tmp/cap.list; echo rc=$?; cat /tmp/cap.list; echo; "
                  "base64 -w0 /tmp/cap.pcap", timeout=60)
        lines = out.stdout.splitlines()
        assert "rc=0" in lines, out.stdout + out.stderr
        assert [ln for ln in lines if ln[:2] in ("1 ", "2 ", "3 ")] == [
            f"1 {exp}", f"2 {exp}", f"3 {exp}"], out.stdout
        got = tcpdump_read(lines[-1], tmp_path)
        assert len(got) == 3 and all(f"> {far}.9999: UDP, length 100" in g for g in got), got
        events = tb.slicectl(node, "node", "events")
        assert any(e["who"] == "slice:site_admin" and e["action"] == "admin_kill"
                   for e in events), events
    finally:
        out = ssh(pi.key, "site_admin", node, "pl-cap 100000")  # the node's default again
        assert out.returncode == 0, out.stderr
