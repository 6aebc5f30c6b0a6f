"""The site's admin sliver on a real node (issue 15): a sliver with the ``admin`` right
and the admin sniffer, its tools installed by the initscript the node manager gives the
agent, used from inside it. First what it cannot do, then what it can."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import docker
import pytest

from slicectl.core.netplan import handle
from slicectl.node import tc
from slicectl.node.config import NodeConfig
from slicectl.testbed.drive import tcpdump_read
from slicectl.testbed.privnode import log_path, private_node, service_ports

from .conftest import NMHandle, make_sliver, sliver_exec
from .test_local_policy import set_policy
from .test_privileged import calls


def until(check: Callable[[], Any], what: str, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(0.3)
    pytest.fail(f"timed out waiting for {what}")


def admin_sliver(nm: NMHandle, engine: docker.DockerClient) -> dict[str, Any]:
    """The admin sliver as the agent makes it: the admin right, the admin sniffer, the
    node manager's admin tools as its initscript; once its pl-* commands are installed."""
    tools = nm.call("admin_tools")
    assert tools["slice"] == nm.cfg.admin_slice
    rcap = nm.call("acquire", {"admin": True, "admin_sniffer": True})
    view = dict(nm.call("bind", tools["slice"], rcap, {"initscript": tools["initscript"]}))
    until(lambda: sliver_exec(engine, view["container"], ["test", "-x",
                                                          "/usr/local/bin/pl-tcpdump"])[0] == 0,
          "the admin tools installed by the initscript")
    return view


def run(engine: docker.DockerClient, sliver: dict[str, Any], script: str) -> tuple[int, str]:
    return sliver_exec(engine, sliver["container"], ["sh", "-c", script])


# what it cannot do -----------------------------------------------------------------------

def test_the_admin_cannot_key_bind_or_manage_slivers(nm: NMHandle,
                                                     engine: docker.DockerClient) -> None:
    victim = make_sliver(nm, "victim")
    admin = admin_sliver(nm, engine)
    v = victim["name"]
    res = calls(engine, admin, ["set_keys", v, ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAed x"]],
                ["acquire", {}], ["acquire", {"admin": True}], ["bind", v, "0" * 32],
                ["split", "0" * 32, {}], ["destroy", v], ["release", victim["rcaps"][0]],
                ["get_keys", v], ["set_initscript", v, "#!/bin/sh\n"], ["set_node",
                                                                          "net_cap_kbit", 1],
                ["stop", v], ["net_map"], ["admin_tools"])
    for r in res:
        assert "may call only" in r.get("fault", ""), r
        assert "(the site's admin)" in r["fault"]
    assert nm.call("get_sliver", v)["state"] == "running"
    assert nm.call("get_sliver", v)["keys"] == 0
    # the admin may not give the admin right to another slice's sliver nor act on itself
    res = calls(engine, admin, ["admin_stop", admin["name"]], ["admin_kill", admin["name"], []])
    assert all("an admin sliver; the site's admin acts only on slices' slivers" in r["fault"]
               for r in res), res
    # a privileged slice (a slice creation service, not the agent) cannot grant admin
    svc = make_sliver(nm, "svc", nm_privileged=True)
    res = calls(engine, svc, ["acquire", {"admin": True}])
    assert "admin: expected false, only root or the node agent may grant it" in res[0]["fault"]


def test_the_admin_cannot_reach_a_slivers_files_or_the_engine(
        nm: NMHandle, engine: docker.DockerClient) -> None:
    victim = make_sliver(nm, "victim")
    status, _ = run(engine, victim, "echo s3cret-in-victim > /root/victim-secret")
    assert status == 0
    admin = admin_sliver(nm, engine)
    # no mount of another sliver: the file is nowhere in the admin's tree, and the
    # victim's processes are not in its pid namespace (no /proc/PID/root to walk into)
    status, out = run(engine, admin, "grep -rs s3cret-in-victim / --exclude-dir=proc "
                      "--exclude-dir=sys -l; ls /proc/*/root/root/victim-secret 2>&1")
    assert "s3cret-in-victim" not in out and "victim-secret" not in out.replace(
        "/proc/*/root/root/victim-secret", ""), out
    victim_pid = int(nm.call("get_sliver", victim["name"])["pid"])
    status, out = run(engine, admin, f"cat /proc/{victim_pid}/root/root/victim-secret")
    assert status != 0 and "s3cret" not in out
    # the engine's socket is not there: the only sockets it can reach are the node
    # manager's, the admin sniffer's and the raw-socket shim's
    _, out = run(engine, admin, "find / -xdev -type s 2>/dev/null; find /run -type s "
                 "2>/dev/null; ls /run/slicectl")
    assert set(out.split()) <= {"/run/slicectl/sniffer/records.sock",
                                "/run/slicectl/raw/shim.sock", "nm", "sniffer", "raw",
                                "vsys"}, out  # vsys: the image's empty mount point
    for path in (str(nm.cfg.engine_sock), "/var/run/docker.sock", "/run/docker.sock",
                 "/run/containerd/containerd.sock", "/run/slicectl/docker.sock"):
        status, out = run(engine, admin, f"test -e {path}")
        assert status != 0, f"{path} in the admin sliver"
    status, out = run(engine, admin, "test -S /run/slicectl/nm/nm.sock")
    assert status == 0, out


def test_the_admin_is_not_host_root(nm: NMHandle, engine: docker.DockerClient) -> None:
    admin = admin_sliver(nm, engine)
    before = Path("/proc/sys/net/ipv4/ip_default_ttl").read_text()
    status, out = run(engine, admin, "echo 7 > /proc/sys/net/ipv4/ip_default_ttl")
    assert status != 0, out
    assert Path("/proc/sys/net/ipv4/ip_default_ttl").read_text() == before
    status, out = run(engine, admin, "grep CapEff /proc/self/status")
    cap_eff = int(out.split()[1], 16)
    assert not cap_eff & (1 << 21), f"CAP_SYS_ADMIN in {out}"  # CAP_SYS_ADMIN
    status, out = run(engine, admin, "mount -t tmpfs x /mnt")
    assert status != 0, out
    # its uid 0 is not the host's: its user namespace maps it elsewhere
    status, out = run(engine, admin, "cat /proc/self/uid_map")
    assert status == 0 and out.split()[0] == "0" and out.split()[1] != "0", out


def test_the_admin_cannot_raise_the_cap_above_the_owners_bound(
        nm: NMHandle, engine: docker.DockerClient) -> None:
    set_policy(nm, "net_cap_max_kbit", "20000")
    admin = admin_sliver(nm, engine)
    status, out = run(engine, admin, "pl-cap 30000 2>&1 >/dev/null")
    assert status == 1, out
    assert out.startswith("pl-cap: net_cap_kbit: expected at most the 20000 kbit/s") and \
        "net_cap_max_kbit" in out and out.count("\n") == 1, out
    assert nm.call("status")["net_cap_kbit"] == 20_000


# what it can do ------------------------------------------------------------------------------

def loop_pid(engine: docker.DockerClient, admin: dict[str, Any], slice_name: str) -> int | None:
    status, out = run(engine, admin, f"pl-ps {slice_name}")
    assert status == 0, out
    for line in out.splitlines()[1:]:
        cols = line.split()
        if cols[0] == slice_name and "while" in line:
            return int(cols[1])
    return None


def test_the_admin_sees_and_kills_a_cpu_loop_and_stops_a_slice(
        nm: NMHandle, engine: docker.DockerClient) -> None:
    victim = make_sliver(nm, "victim")
    v = victim["name"]
    engine.containers.get(victim["container"]).exec_run(
        ["python3", "-c", "while 1: pass"], detach=True)
    admin = admin_sliver(nm, engine)
    pid = until(lambda: loop_pid(engine, admin, v), "the loop in pl-ps")
    # host pids: the loop is this pid on the host, in the victim's container
    assert "while 1: pass" in Path(f"/proc/{pid}/cmdline").read_bytes().decode().replace(
        "\0", " ")
    status, out = run(engine, admin, "pl-top -n 1 -d 1 -l 5")
    assert status == 0 and re.search(rf"^{v}\s+{pid}\s+\d+\.\d", out, re.M), out
    # not the host's processes, nor another slice's
    status, out = run(engine, admin, f"pl-kill {v} {os.getpid()} 2>&1 >/dev/null")
    assert status == 1 and out.startswith(f"pl-kill: pid {os.getpid()}: expected a process "
                                          f"of slice {v}'s sliver, found a process of the "
                                          "host"), out
    status, out = run(engine, admin, f"pl-kill {v} {pid} --reason 'a runaway loop'")
    assert status == 0 and f"killed 1 process(es) of {v}: {pid}" in out, out
    until(lambda: not Path(f"/proc/{pid}").exists() or
          " Z " in Path(f"/proc/{pid}/stat").read_text(), "the loop to die")
    assert nm.call("get_sliver", v)["state"] == "running"  # its init lives
    status, out = run(engine, admin, f"pl-stop {v} --reason 'abuse report 7'")
    assert status == 0, out
    got = nm.call("get_sliver", v)
    assert got["desired"] == "stopped" and got["stopped"]["by"] == f"slice:{admin['name']}"
    status, out = run(engine, admin, f"pl-start {v}")
    assert status == 0 and nm.call("get_sliver", v)["state"] == "running", out
    events = [(e["who"], e["action"], e["detail"]) for e in nm.call("events", v)]
    who = f"slice:{admin['name']}"
    assert (who, "admin_kill", f"pids {pid}: a runaway loop") in events
    assert (who, "admin_stop", "abuse report 7") in events
    assert (who, "admin_start", "") in events
    shown = nm.cli("node", "events", "--slice", v)
    assert shown.returncode == 0 and "admin_stop" in shown.stdout and who in shown.stdout


def test_the_admin_caps_the_node_and_the_kernel_says_so(
        nm: NMHandle, engine: docker.DockerClient) -> None:
    admin = admin_sliver(nm, engine)
    status, out = run(engine, admin, "pl-cap 12345 --reason 'the uplink is full'")
    assert status == 0 and "net_cap_kbit 12345" in out, out
    assert tc.read_classes(nm.cfg.ifb)[handle(0xC000)].ceil_bps == 12345 * 125
    events = [(e["who"], e["action"], e["detail"]) for e in nm.call("events")]
    assert (f"slice:{admin['name']}", "admin_cap", "net_cap_kbit=12345: the uplink is full") \
        in events


def test_the_admin_captures_a_slices_packets(dnm: NMHandle, engine: docker.DockerClient,
                                             tmp_path: Path) -> None:
    victim = make_sliver(dnm, "victim")
    admin = admin_sliver(dnm, engine)
    v = victim["name"]
    engine.containers.get(victim["container"]).exec_run(
        ["python3", "-c", "import socket, time\ns = socket.socket(socket.AF_INET, "
         "socket.SOCK_DGRAM)\nwhile 1:\n    s.sendto(b'x' * 100, ('198.18.77.7', 9999))\n"
         "    time.sleep(0.2)"], detach=True)
    _, out = run(engine, admin, f"timeout 60 pl-tcpdump -c 3 slice {v} and udp "
                      "> /tmp/cap.pcap 2> /tmp/cap.list; echo rc=$?; cat /tmp/cap.list; "
                      "echo; base64 -w0 /tmp/cap.pcap")
    assert "rc=0" in out, out
    lines = out.splitlines()
    assert [ln for ln in lines if ln.startswith(("1 ", "2 ", "3 "))] == [f"1 {v}", f"2 {v}",
                                                                          f"3 {v}"], out
    got = tcpdump_read(lines[-1], tmp_path)
    assert len(got) == 3 and all("> 198.18.77.7.9999: UDP, length 100" in g for g in got), got


def test_the_admin_reads_the_audit_pages_in_a_terminal(node_cfg: NodeConfig,
                                                       engine: docker.DockerClient) -> None:
    with private_node(node_cfg, engine, daemons=True, services=service_ports()) as cfg:
        nm = NMHandle(cfg=cfg, tag=cfg.state_dir.name, log_path=log_path(cfg))
        victim = make_sliver(nm, "victim")
        admin = admin_sliver(nm, engine)
        engine.containers.get(victim["container"]).exec_run(
            ["python3", "-c", "import socket, time\ns = socket.socket(socket.AF_INET, "
             "socket.SOCK_DGRAM)\nwhile 1:\n    s.sendto(b'x', ('198.18.77.8', 7777))\n"
             "    time.sleep(0.2)"], detach=True)
        def audited() -> str | None:  # found at the sliver's gateway: the node
            status, out = run(engine, admin, f"pl-audit 198.18.77.8 --port {cfg.audit_port}")
            assert status == 0, out
            return out if victim["name"] in out else None

        out = until(audited, "the victim's packets on the audit pages", timeout=90)
        assert "dst: 198.18.77.8" in out and "rows: " in out, out
        status, out = run(engine, admin, f"pl-audit not-an-ip --port {cfg.audit_port} 2>&1")
        assert status == 1 and out.startswith("pl-audit: audit pages at ") and \
            out.count("\n") == 1, out
