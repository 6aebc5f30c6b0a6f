"""A dead host daemon comes back within a second under the node's supervisor, and what it
left is cleared: SIGKILL the shim, the NM and the sniffer of a private node (by the pid
the supervisor reports), while a sliver holds a claim."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from typing import Any

import docker

from slicectl.core.supervision import DaemonState
from slicectl.node.daemons import (
    NM,
    SHIM,
    SNIFFER,
    HostDaemon,
    daemon_state,
    nm_answers,
    shim_ready,
    sniffer_ready,
)
from slicectl.node.shim import DROP_COMMENT

from .conftest import NMHandle, make_sliver, sliver_exec, wait_for
from .test_sniffer import Reader

HOLD = """
import saferaw, sys, time
s = saferaw.socket("udp"); s.bind(int(sys.argv[1]))
time.sleep(600)
"""

BIND = """
import saferaw, sys
s = saferaw.socket("udp"); s.bind(int(sys.argv[1])); print("bound")
"""

SEND = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for _ in range(3):
    s.sendto(b"x" * 10, (sys.argv[1], int(sys.argv[2])))
"""


def running(h: NMHandle, d: HostDaemon) -> DaemonState:
    """The daemon's state once its supervisor calls it RUNNING."""
    wait_for(lambda: daemon_state(h.cfg, d).state == "RUNNING", timeout=10,
             what=f"{d.name} RUNNING")
    return daemon_state(h.cfg, d)


def kill_and_see_it_back(h: NMHandle, d: HostDaemon) -> int:
    """SIGKILL ``d`` by the pid its supervisor reports; assert a new one runs within 1 s."""
    before = running(h, d)
    assert before.pid is not None
    os.kill(before.pid, signal.SIGKILL)
    started = time.monotonic()

    def back() -> bool:
        pid = daemon_state(h.cfg, d).pid
        return pid is not None and pid != before.pid and os.path.exists(f"/proc/{pid}")

    wait_for(back, timeout=1.0, what=f"{d.name} running again")
    assert time.monotonic() - started < 1.0
    new = daemon_state(h.cfg, d).pid
    assert new is not None
    return new


def status_of(h: NMHandle, d: HostDaemon) -> dict[str, Any]:
    cp = h.cli("node", "status", "-o", "json")
    assert cp.returncode == 0, cp.stderr
    out: dict[str, Any] = json.loads(cp.stdout)["daemons"][d.name]
    return out


def restarts_reach_one(h: NMHandle, d: HostDaemon, pid: int) -> None:
    wait_for(lambda: status_of(h, d)["restarts"] == 1, timeout=5, what=f"{d.name} restarts=1")
    st = status_of(h, d)
    assert (st["pid"], st["program"]) == (pid, f"slicectl-{d.name}-{h.cfg.node_id}")
    assert st["state"] in ("STARTING", "RUNNING") and st["uptime_s"] is not None


def drop_rules(engine: docker.DockerClient, container: str) -> list[str]:
    pid = engine.containers.get(container).attrs["State"]["Pid"]
    rules = subprocess.run(["nsenter", "-t", str(pid), "-n", "iptables", "-w", "-S", "INPUT"],
                           capture_output=True, text=True, check=True).stdout
    return [r for r in rules.splitlines() if DROP_COMMENT in r]


def hold_claim(dnm: NMHandle, engine: docker.DockerClient, a: dict[str, Any],
               port: int) -> None:
    engine.containers.get(a["container"]).exec_run(["python3", "-c", HOLD, str(port)],
                                                   detach=True)
    wait_for(lambda: [c["port"] for c in dnm.call("list_claims")] == [port],
             what="the sliver's claim")
    # The shim claims the port, then adds the rule.
    wait_for(lambda: drop_rules(engine, a["container"]), what="the shim's DROP rule")


def bind_works(engine: docker.DockerClient, a: dict[str, Any], port: int) -> None:
    code, out = sliver_exec(engine, a["container"], ["python3", "-c", BIND, str(port)])
    assert code == 0 and "bound" in out, out


def test_a_killed_shim_is_back_and_its_claims_and_drop_rules_are_gone(
        dnm: NMHandle, engine: docker.DockerClient) -> None:
    a = make_sliver(dnm, "held")
    hold_claim(dnm, engine, a, 41234)
    pid = kill_and_see_it_back(dnm, SHIM)
    wait_for(lambda: shim_ready(dnm.cfg), timeout=10, what="the new shim's socket")
    # Cleared before the new shim listens: nothing of the dead one's is left.
    assert dnm.call("list_claims") == []
    assert drop_rules(engine, a["container"]) == []
    bind_works(engine, a, 41234)  # a new session; the port is free again
    restarts_reach_one(dnm, SHIM, pid)


def test_a_killed_node_manager_is_back_and_serves(dnm: NMHandle,
                                                  engine: docker.DockerClient) -> None:
    a = make_sliver(dnm, "nmheld")
    hold_claim(dnm, engine, a, 41235)
    pid = kill_and_see_it_back(dnm, NM)
    wait_for(lambda: nm_answers(dnm.cfg), timeout=30, what="the NM answering")
    # The shim still holds the claim's session: the claim is kept, not a leftover.
    assert [c["port"] for c in dnm.call("list_claims")] == [41235]
    assert dnm.call("get_sliver", a["name"])["state"] == "running"
    b = make_sliver(dnm, "after")  # binds work again
    bind_works(engine, b, 41236)
    restarts_reach_one(dnm, NM, pid)


def test_a_killed_sniffer_is_back_and_a_new_consumer_gets_records(
        dnm: NMHandle, engine: docker.DockerClient) -> None:
    a = make_sliver(dnm, "sniffed")
    old = Reader(str(dnm.cfg.sniffer_dir / "records.sock"))
    pid = kill_and_see_it_back(dnm, SNIFFER)
    old.thread.join(5)
    assert not old.thread.is_alive()  # the dead sniffer's consumer saw its end
    old.close()
    wait_for(lambda: sniffer_ready(dnm.cfg), timeout=10, what="the new sniffer's socket")
    reader = Reader(str(dnm.cfg.sniffer_dir / "records.sock"))
    try:
        wait_for(lambda: reader.hello.get("node") == dnm.cfg.node_id, what="hello")
        sliver_exec(engine, a["container"], ["python3", "-c", SEND, "198.18.255.1", "7999"])
        wait_for(lambda: any(r.dport == 7999 for r in reader.records), what="new records")
        assert {reader.slices[str(r.xid)] for r in reader.records if r.dport == 7999} == {
            a["name"]}
    finally:
        reader.close()
    restarts_reach_one(dnm, SNIFFER, pid)
