"""Batched safe raw sockets end to end: a sliver's send_many goes through the shim's
recvmmsg/sendmmsg path, and each packet of a batch is checked on its own."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import docker

from slicectl.node import shim

from .conftest import NMHandle, Outside, make_sliver, wait_for
from .test_saferaw import run_py, run_py_watched

BATCH = """
import json, saferaw, socket, sys
dst = sys.argv[1]
s = saferaw.socket("udp")
s.bind(40400)
me = s.address
def pkt(src, n):
    return saferaw.packet(src, dst, 17, saferaw.udp_segment(src, dst, 40400, 9, b"b" * n))
# A sliver may change its own copy of the checks: the shim's are the ones that count.
saferaw.check_outgoing = lambda p, b: None
batch = [pkt(me, 11), pkt(me, 12), pkt("203.0.113.9", 13), pkt(me, 14), pkt(me, 15)]
sent = s.send_many(batch)
s.sock.settimeout(3)
errors = []
try:
    while True:
        m = s.sock.recv(70000)
        if m[:1] == b"E":
            errors.append(json.loads(m[1:])["reason"])
            break
except socket.timeout:
    pass
print(json.dumps({"sent": sent, "errors": errors}))
"""


def test_send_many_with_a_spoofed_packet_in_the_middle(dnm: NMHandle,
                                                       engine: docker.DockerClient,
                                                       outside: Outside, tmp_path: Path) -> None:
    a = make_sliver(dnm, "batch")
    code, out, lines = run_py_watched(engine, a, outside, tmp_path / "wire.pcap",
                                      f"udp and dst host {outside.address}", BATCH,
                                      outside.address)
    assert code == 0, out
    assert json.loads(out) == {"sent": 5, "errors": ["spoofed-source"]}
    # The four good ones reached the outside (masqueraded), in order; the spoofed one
    # (length 13) did not.
    assert [ln.rsplit("length ", 1)[1] for ln in lines] == ["11", "12", "14", "15"], lines
    assert all(f"> {outside.address}.9: UDP" in ln for ln in lines), lines
    stats = shim.stats(dnm.cfg)
    assert stats["sent"] == 4, stats
    refused = {r["reason"]: r["count"] for r in stats["refused"] if r["slice"] == a["name"]}
    assert refused == {"spoofed-source": 1}, stats
    # The session's DROP rule goes with its socket.
    pid = int(engine.containers.get(a["container"]).attrs["State"]["Pid"])

    def no_drop_rule() -> bool:
        rules = subprocess.run(["nsenter", f"--net=/proc/{pid}/ns/net", "iptables", "-S",
                                "INPUT"], capture_output=True, text=True, check=True).stdout
        return shim.DROP_COMMENT not in rules

    wait_for(no_drop_rule, what="the shim removing the session's DROP rule")


OUTLIVED = """
import os, saferaw, sys, time
s = saferaw.socket("udp")
s.bind(40401)
if os.fork() == 0:
    # The child keeps the socket after the process that opened it has exited.
    os.close(1)
    os.close(2)
    time.sleep(3)
    os._exit(0)
print(os.getpid())
"""


def drop_rules(pid: int) -> list[str]:
    rules = subprocess.run(["nsenter", f"--net=/proc/{pid}/ns/net", "iptables", "-S", "INPUT"],
                           capture_output=True, text=True, check=True).stdout
    return [r for r in rules.splitlines() if shim.DROP_COMMENT in r]


def test_the_drop_rule_goes_when_the_opener_exited_before_the_socket_closed(
        dnm: NMHandle, engine: docker.DockerClient) -> None:
    # The shim must remove the rule in the sliver's network even though the pid that
    # named that network (the process that connected) no longer exists.
    a = make_sliver(dnm, "outlive")
    code, out = run_py(engine, a, OUTLIVED)
    assert code == 0, out
    init = int(engine.containers.get(a["container"]).attrs["State"]["Pid"])
    assert [r for r in drop_rules(init) if "--dport 40401" in r], drop_rules(init)
    wait_for(lambda: not drop_rules(init), what="the shim removing the outlived session's rule")
