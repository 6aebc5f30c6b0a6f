"""Dormant slivers on the real engine and kernel: an idle sliver stops and keeps its
classes; ``ssh slice@node``, ``start`` and a connection to a reserved port (from outside or
from the host) wake it; a login keeps it awake; a restarted node manager keeps it
dormant."""

from __future__ import annotations

import secrets
import subprocess
import time
from pathlib import Path
from typing import Any

import docker
import pytest

from slicectl.core.netplan import parent_classid
from slicectl.core.userns import SLIVER_LIMITS
from slicectl.node import tc
from slicectl.node.network import host_veth

from .conftest import NMHandle, Outside, sliver_exec, wait_for
from .test_ssh import ssh

AFTER_S = 3


def state(nm: NMHandle, name: str) -> str:
    return str(nm.call("get_sliver", name)["state"])


@pytest.fixture
def idle_sliver(nm: NMHandle, ssh_key: Path) -> dict[str, Any]:
    set_ = nm.cli("node", "set", "dormant_after_s", str(AFTER_S))
    assert set_.returncode == 0, set_.stderr
    assert set_.stdout.strip() == f"slicectl: dormant_after_s = {AFTER_S}"
    key = Path(f"{ssh_key}.pub").read_text().strip()
    rcap = nm.call("acquire", {"net_min_kbit": 100, "tcp_ports": [41234]})
    return dict(nm.call("bind", nm.slice("idle"), rcap, {"keys": [key]}))


def test_an_idle_sliver_goes_dormant_and_keeps_its_classes(
        nm: NMHandle, engine: docker.DockerClient, idle_sliver: dict[str, Any]) -> None:
    name = idle_sliver["name"]
    veth = host_veth(engine.containers.get(idle_sliver["container"]).attrs["State"]["Pid"])
    assert Path(f"/sys/class/net/{veth}/brport").exists()
    wait_for(lambda: state(nm, name) == "dormant", timeout=AFTER_S + 15, what="dormancy")
    c = engine.containers.get(idle_sliver["container"])
    assert c.status == "exited" and not c.attrs["State"]["Pid"]
    assert not Path(f"/sys/class/net/{veth}").exists(), "its port on the bridge is gone"
    assert parent_classid(idle_sliver["xid"]) in tc.read_classes(nm.cfg.ifb)
    shown = nm.cli("show", name)
    assert shown.returncode == 0 and "dormant" in shown.stdout, shown.stdout
    status = nm.call("status")
    assert status["dormant"] == 1 and status["dormant_after_s"] == AFTER_S
    nat = subprocess.run(["iptables-save", "-t", "nat"], capture_output=True, text=True,
                         check=True).stdout
    assert any("41234" in line and idle_sliver["net"]["address"] in line
               for line in nat.splitlines()), "its reserved port still forwards to it"
    assert "now dormant" in nm.log()


def test_ssh_wakes_a_dormant_sliver_transparently(
        nm: NMHandle, engine: docker.DockerClient, ssh_key: Path,
        idle_sliver: dict[str, Any]) -> None:
    name = idle_sliver["name"]
    wait_for(lambda: state(nm, name) == "dormant", timeout=AFTER_S + 15, what="dormancy")
    out = ssh(nm.cfg, ssh_key, name, "echo awake; id -un")
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["awake", name]
    assert state(nm, name) == "running"
    # woken with its limits and network, as at its first start
    for key, want in SLIVER_LIMITS.items():
        code, text = sliver_exec(engine, idle_sliver["container"],
                                 ["cat", f"/proc/sys/user/{key}"])
        assert code == 0 and int(text) == want, key
    filters = subprocess.run(["tc", "filter", "show", "dev", nm.cfg.ifb], capture_output=True,
                             text=True, check=True).stdout
    assert filters.strip(), "its traffic goes through the node's classes again"
    code, _ = sliver_exec(engine, idle_sliver["container"], ["sh", "-c", "test -d /home/" + name])
    assert code == 0, "its files are still there"
    for status in (0, 1, 127):
        command = {0: "true", 1: "false", 127: "no-such-command-here"}[status]
        wait_for(lambda: state(nm, name) == "dormant", timeout=AFTER_S + 15,
                 what="dormancy again")
        assert ssh(nm.cfg, ssh_key, name, command).returncode == status


def test_a_login_keeps_a_sliver_awake(nm: NMHandle, ssh_key: Path,
                                      idle_sliver: dict[str, Any]) -> None:
    name = idle_sliver["name"]
    out = ssh(nm.cfg, ssh_key, name, f"sleep {AFTER_S * 4}; echo done")
    assert out.returncode == 0 and out.stdout.strip() == "done", out.stderr
    assert "now dormant" not in nm.log(), "it went dormant under a login"
    wait_for(lambda: state(nm, name) == "dormant", timeout=AFTER_S + 15, what="dormancy")


def test_start_wakes_and_a_restarted_node_manager_keeps_dormant(
        nm: NMHandle, engine: docker.DockerClient, idle_sliver: dict[str, Any]) -> None:
    name = idle_sliver["name"]
    wait_for(lambda: state(nm, name) == "dormant", timeout=AFTER_S + 15, what="dormancy")
    nm.kill()
    nm.start()
    assert state(nm, name) == "dormant"
    assert engine.containers.get(idle_sliver["container"]).status == "exited"
    started = nm.cli("start", name)
    assert started.returncode == 0, started.stderr
    assert state(nm, name) == "running"
    assert engine.containers.get(idle_sliver["container"]).status == "running"
    stop = nm.cli("node", "set", "dormant_after_s", "0")
    assert stop.returncode == 0, stop.stderr
    bad = nm.cli("node", "set", "dormant_after_s", "99999999")
    assert bad.returncode != 0
    assert "dormant_after_s: expected an integer from 0 (never) to 604800" in bad.stderr


SERVE_ONCE = """#!/bin/sh
# at every start: answer one connection on the reserved port, for at most 8 s
cd /tmp && nohup timeout 8 python3 -c '
import socket
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", PORT))
s.listen()
c, _ = s.accept()
c.recv(1000)
c.sendall(b"HTTP/1.0 200 OK\\r\\n\\r\\nawake\\n")
c.close()
' > /dev/null 2>&1 &
"""


def test_a_connection_to_a_reserved_port_wakes_a_dormant_sliver(
        nm: NMHandle, engine: docker.DockerClient, outside: Outside) -> None:
    port = 42000 + secrets.randbelow(1000)
    assert nm.cli("node", "set", "dormant_after_s", str(AFTER_S)).returncode == 0
    rcap = nm.call("acquire", {"tcp_ports": [port]})
    info = nm.call("bind", nm.slice("portwake"), rcap,
                   {"initscript": SERVE_ONCE.replace("PORT", str(port))})
    name = info["name"]
    wait_for(lambda: state(nm, name) == "dormant", timeout=AFTER_S + 30,
             what="dormancy after the first start's server timed out")
    save = subprocess.run(["iptables-save", "-t", "filter"], capture_output=True, text=True,
                          check=True).stdout
    assert f'--nflog-prefix "slicectl-wake {name}"' in save
    t0 = time.monotonic()
    out = outside.run("curl", "-sS", "-m", "15", f"http://{outside.node_address}:{port}/",
                      timeout=30)
    took = time.monotonic() - t0
    assert out.returncode == 0 and out.stdout == "awake\n", (out.stderr, took, nm.log()[-2000:])
    assert state(nm, name) == "running"
    save = subprocess.run(["iptables-save", "-t", "filter"], capture_output=True, text=True,
                          check=True).stdout
    assert f"slicectl-wake {name}" not in save, "the wake rule goes with the wake"
    # A connection the host itself makes to the node's address leaves through OUTPUT, not
    # FORWARD: it must wake the sliver as well.
    wait_for(lambda: state(nm, name) == "dormant", timeout=AFTER_S + 30,
             what="dormancy again after the served connection")
    mine = subprocess.run(["curl", "-sS", "-m", "15", f"http://{outside.node_address}:{port}/"],
                          capture_output=True, text=True, timeout=30)
    assert mine.returncode == 0 and mine.stdout == "awake\n", (mine.stderr, nm.log()[-2000:])
    assert state(nm, name) == "running"
