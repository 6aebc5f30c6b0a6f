"""Safe raw sockets end to end: real packets between slivers, the node and namespaces
acting as the outside (a router and a host behind it), with tcpdump watching the wire."""

from __future__ import annotations

import json
import secrets
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import pytest

from slicectl.node import shim

from .conftest import NMHandle, Outside, gateway, make_sliver, sliver_exec, wait_for


@dataclass
class Routed:
    """node -- router -- far host, in two namespaces beyond the node."""

    router: str
    router_addr: str
    far: str
    far_addr: str


def sh(cmd: str) -> None:
    subprocess.run(cmd.split(), check=True, capture_output=True)


@pytest.fixture
def routed() -> Iterator[Routed]:
    tag = secrets.token_hex(3)
    third = int(tag[:2], 16)
    r_ns, f_ns = f"slicectl-rtr-{tag}", f"slicectl-far-{tag}"
    h_if, r_if, r2_if, f_if = f"slcrh{tag}", f"slcrr{tag}", f"slcrf{tag}", f"slcff{tag}"
    node_a, rtr_a = f"198.19.{third}.1", f"198.19.{third}.2"
    rtr2_a, far_a = f"198.19.{third}.5", f"198.19.{third}.6"
    cmds = [
        f"ip netns add {r_ns}", f"ip netns add {f_ns}",
        f"ip link add {h_if} type veth peer name {r_if}", f"ip link set {r_if} netns {r_ns}",
        f"ip addr add {node_a}/30 dev {h_if}", f"ip link set {h_if} up",
        f"ip -n {r_ns} addr add {rtr_a}/30 dev {r_if}", f"ip -n {r_ns} link set {r_if} up",
        f"ip -n {r_ns} link add {r2_if} type veth peer name {f_if}",
        f"ip -n {r_ns} link set {f_if} netns {f_ns}",
        f"ip -n {r_ns} addr add {rtr2_a}/30 dev {r2_if}", f"ip -n {r_ns} link set {r2_if} up",
        f"ip -n {f_ns} addr add {far_a}/30 dev {f_if}", f"ip -n {f_ns} link set {f_if} up",
        f"ip -n {f_ns} link set lo up", f"ip -n {r_ns} link set lo up",
        f"ip -n {f_ns} route add default via {rtr2_a}",
        f"ip -n {r_ns} route add default via {node_a}",
        f"ip netns exec {r_ns} sysctl -qw net.ipv4.ip_forward=1",
        f"ip route add 198.19.{third}.4/30 via {rtr_a}",
    ]
    try:
        for c in cmds:
            sh(c)
        yield Routed(r_ns, rtr_a, f_ns, far_a)
    finally:
        for c in (f"ip route del 198.19.{third}.4/30", f"ip link del {h_if}",
                  f"ip netns del {r_ns}", f"ip netns del {f_ns}"):
            subprocess.run(c.split(), capture_output=True, check=False)


class Capture:
    """tcpdump in a namespace, writing a pcap file, stopped by its pid."""

    def __init__(self, ns: str, path: Path, bpf: str) -> None:
        self.path = path
        # --immediate-mode: without it packets wait up to a second in the capture ring.
        self.proc = subprocess.Popen(["ip", "netns", "exec", ns, "tcpdump", "-i", "any", "-n",
                                      "--immediate-mode", "-U", "-w", str(path), *bpf.split()],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        # tcpdump says "listening on" when the capture is live.
        assert self.proc.stderr is not None
        seen = ""
        while "listening" not in seen:
            line = self.proc.stderr.readline().decode()
            assert line, f"tcpdump did not start: {seen}"
            seen += line

    def stop(self) -> list[str]:
        time.sleep(0.3)
        self.proc.terminate()
        self.proc.wait(10)
        out = subprocess.run(["tcpdump", "-nr", str(self.path)], capture_output=True,
                             text=True, check=False)
        return [ln for ln in out.stdout.splitlines() if ln.strip()]


def run_py(engine: docker.DockerClient, info: dict[str, Any], script: str, *args: str,
           user: str = "root") -> tuple[int, str]:
    return sliver_exec(engine, info["container"], ["python3", "-c", script, *args], user=user)


def run_py_watched(engine: docker.DockerClient, info: dict[str, Any], outside: Outside,
                   pcap: Path, bpf: str, script: str, *args: str) -> tuple[int, str, list[str]]:
    """Run ``script`` in the sliver with tcpdump watching the outside's wire for ``bpf``:
    (exit status, output, the packets tcpdump saw)."""
    cap = Capture(outside.ns, pcap, bpf)
    try:
        code, out = run_py(engine, info, script, *args)
    finally:
        lines = cap.stop()
    return code, out, lines


def test_plping_round_trips(dnm: NMHandle, engine: docker.DockerClient, outside: Outside) -> None:
    a = make_sliver(dnm, "ping")
    code, out = sliver_exec(engine, a["container"],
                            ["plping", "-c", "3", "-i", "0.2", outside.address], user=str(a["uid"]))
    assert code == 0, out
    assert f"PING {outside.address}" in out
    assert "3 packets transmitted, 3 received, 0% packet loss" in out
    assert out.count(f"bytes from {outside.address}: icmp_seq=") == 3
    assert "rtt min/avg/max/mdev" in out


def test_pltraceroute_shows_the_hops(dnm: NMHandle, engine: docker.DockerClient,
                                     routed: Routed) -> None:
    a = make_sliver(dnm, "trace")
    code, out = sliver_exec(engine, a["container"],
                            ["pltraceroute", "-q", "2", "-w", "2", "-m", "6", routed.far_addr],
                            user=str(a["uid"]))
    assert code == 0, out
    lines = out.strip().splitlines()
    assert lines[0].startswith(f"traceroute to {routed.far_addr}")
    hops = [ln.split()[1] for ln in lines[1:]]
    assert hops == [gateway(dnm), routed.router_addr, routed.far_addr], out
    assert all(ln.count(" ms") == 2 for ln in lines[1:]), out


UDP_EXCHANGE = """
import saferaw, select, sys
dst, dport = sys.argv[1], int(sys.argv[2])
s = saferaw.socket("udp")
s.bind(40100)
s.sendto(saferaw.udp_segment(s.address, dst, 40100, dport, b"hello raw"), (dst, 0))
assert select.select([s], [], [], 5)[0], "no reply"
pkt = s.recv()
ihl = (pkt[0] & 15) * 4
print(pkt[ihl + 8:].decode(), int.from_bytes(pkt[ihl:ihl + 2], "big"))
"""

UDP_ECHO = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], int(sys.argv[2])))
s.settimeout(20)
data, peer = s.recvfrom(2048)
s.sendto(data.upper(), peer)
"""


def test_udp_exchange_built_by_hand(dnm: NMHandle, engine: docker.DockerClient,
                                    outside: Outside, tmp_path: Path) -> None:
    a = make_sliver(dnm, "udp")
    server = subprocess.Popen(["ip", "netns", "exec", outside.ns, "python3", "-c", UDP_ECHO,
                               outside.address, "7777"])
    cap = Capture(outside.ns, tmp_path / "icmp.pcap", "icmp")
    try:
        time.sleep(0.3)
        code, out = run_py(engine, a, UDP_EXCHANGE, outside.address, "7777")
        assert code == 0, out
        assert out.split() == ["HELLO", "RAW", "7777"], out
    finally:
        server.wait(10)
        lines = cap.stop()
    # The sliver's kernel had no socket on 40100, yet sent no port unreachable.
    assert lines == [], lines


TCP_BY_HAND = """
import saferaw, select, struct, sys
dst, dport = sys.argv[1], int(sys.argv[2])
s = saferaw.socket("tcp")
s.bind(40200)
me = s.address
def seg(seq, ack, flags, data=b""):
    s.sendto(saferaw.tcp_segment(me, dst, 40200, dport, seq, ack, flags, data), (dst, 0))
def recv():
    assert select.select([s], [], [], 5)[0], "timeout"
    p = s.recv(); ihl = (p[0] & 15) * 4
    seq, ack = struct.unpack_from("!II", p, ihl + 4)
    off = (p[ihl + 12] >> 4) * 4
    return seq, ack, p[ihl + 13], p[ihl + off:]
seg(1000, 0, 0x02)
seq, ack, flags, _ = recv()
assert flags & 0x12 == 0x12 and ack == 1001, (flags, ack)
nxt = seq + 1
req = b"GET / HTTP/1.0\\r\\n\\r\\n"
seg(1001, nxt, 0x10)
seg(1001, nxt, 0x18, req)
body = b""
while True:
    sq, ak, fl, data = recv()
    if data and sq == nxt:
        body += data; nxt += len(data)
    if fl & 0x01:
        nxt += 1; seg(1001 + len(req), nxt, 0x11); break
    seg(1001 + len(req), nxt, 0x10)
print(body.split(b"\\r\\n")[0].decode())
"""


def test_tcp_handshake_built_by_hand_leaks_no_rst(dnm: NMHandle, engine: docker.DockerClient,
                                                  outside: Outside, tmp_path: Path) -> None:
    a = make_sliver(dnm, "tcp")
    www = tmp_path / "www"
    www.mkdir()
    (www / "index.html").write_text("raw tcp works\n")
    server = subprocess.Popen(["ip", "netns", "exec", outside.ns, "python3", "-m", "http.server",
                               "8088", "--bind", outside.address, "--directory", str(www)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: outside.run("python3", "-c", f"import socket; socket.create_connection("
                                     f"('{outside.address}', 8088), 1)").returncode == 0,
                 what="the outside web server")
        cap = Capture(outside.ns, tmp_path / "rst.pcap",
                      f"tcp[tcpflags] & tcp-rst != 0 and not src host {outside.address}")
        code, out = run_py(engine, a, TCP_BY_HAND, outside.address, "8088")
        assert code == 0, out
        assert out.strip() == "HTTP/1.0 200 OK", out
    finally:
        server.terminate()
        server.wait(10)
        lines = cap.stop()
    assert lines == [], f"RSTs on the wire: {lines}"


FUZZ = """
import json, random, saferaw, socket, struct, sys
from saferaw.packet import packet, udp_segment, tcp_segment, icmp_echo
dst, n = sys.argv[1], int(sys.argv[2])
s = saferaw.socket("udp")
s.bind(40300)
me = s.address
rnd = random.Random(7)
def spoof():
    src = "%d.%d.%d.%d" % tuple(rnd.randrange(1, 255) for _ in range(4))
    return packet(src, dst, 17, udp_segment(src, dst, 40300, 9, b"x"))
def foreign():
    p = rnd.choice([p for p in range(1, 65536, 97) if p != 40300])
    return packet(me, dst, 17, udp_segment(me, dst, p, 9, b"x"))
def proto():
    return rnd.choice([packet(me, dst, 6, tcp_segment(me, dst, 40300, 9, 1, 0, 2)),
                       packet(me, dst, 1, icmp_echo(5, 1)),
                       packet(me, dst, rnd.choice([47, 50, 132]), b"\\0" * 16)])
def malformed():
    good = bytearray(packet(me, dst, 17, udp_segment(me, dst, 40300, 9, b"xyz")))
    kind = rnd.randrange(5)
    if kind == 0: return bytes(good[:rnd.randrange(0, 20)])
    if kind == 1: good[0] = rnd.choice([0x35, 0x65, 0x44, 0x4f]); return bytes(good)
    if kind == 2: good[2:4] = struct.pack("!H", len(good) + rnd.randrange(1, 99)); return bytes(good)
    if kind == 3: good[6:8] = struct.pack("!H", 0x2000 | rnd.randrange(0, 99)); return bytes(good)
    return bytes(good[:rnd.randrange(20, 27)])
kinds = [spoof, foreign, proto, malformed]
for i in range(n):
    s.sock.send(kinds[i % 4]())          # past the client's own checks: the shim decides
for i in range(5):
    s.sendto(udp_segment(me, dst, 40300, 10, b"good"), (dst, 0))
errors = 0
s.sock.settimeout(3)
try:
    while errors < n:
        m = s.sock.recv(70000)
        if m[:1] == b"E":
            errors += 1
except socket.timeout:
    pass
print(json.dumps({"errors": errors}))
"""


def test_fuzzed_bad_packets_never_reach_the_wire(dnm: NMHandle, engine: docker.DockerClient,
                                                 outside: Outside, tmp_path: Path) -> None:
    a = make_sliver(dnm, "fuzz")
    n = 4000
    code, out, lines = run_py_watched(engine, a, outside, tmp_path / "wire.pcap",
                                      f"ip and dst host {outside.address}", FUZZ,
                                      outside.address, str(n))
    assert code == 0, out
    assert json.loads(out)["errors"] == n
    stats = shim.stats(dnm.cfg)
    assert stats["sent"] == 5, stats
    assert len(lines) == 5 and all(".10: UDP, length 4" in ln for ln in lines), lines
    refused = {r["reason"]: r["count"] for r in shim.stats(dnm.cfg)["refused"]
               if r["slice"] == a["name"]}
    assert sum(refused.values()) == n
    assert {"spoofed-source", "foreign-port", "wrong-protocol", "malformed", "fragment"} <= set(refused)


RIGHTS = """
import errno, json, saferaw, socket, sys
out = {}
def attempt(name, f):
    try:
        f(); out[name] = "ok"
    except OSError as e:
        out[name] = errno.errorcode.get(e.errno, str(e.errno)) + ": " + str(e.strerror)
def bind(proto, port):
    return lambda: saferaw.socket(proto).bind(port)
k = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); k.bind(("0.0.0.0", 41000))
attempt("kernel_port", bind("udp", 41000))
attempt("reserved_elsewhere", bind("udp", int(sys.argv[1])))
attempt("node_service", bind("tcp", 33080))
attempt("bad_proto", lambda: saferaw.socket("sctp"))
held = saferaw.socket("tcp"); held.bind(41001)
attempt("sniff_own", lambda: saferaw.sniffer("tcp", 41001))
print(json.dumps(out))
"""


def test_rights_and_port_ownership(dnm: NMHandle, engine: docker.DockerClient) -> None:
    owner = make_sliver(dnm, "owner", udp_ports=[6001])
    a = make_sliver(dnm, "user")
    norights = make_sliver(dnm, "noraw", raw_sockets=False)
    code, out = run_py(engine, a, RIGHTS, "6001")
    assert code == 0, out
    got = json.loads(out)
    assert got["kernel_port"].startswith("EADDRINUSE") and "socket of this sliver" in got["kernel_port"]
    assert got["reserved_elsewhere"].startswith("EADDRINUSE") and owner["name"] in got["reserved_elsewhere"]
    assert got["node_service"].startswith("EACCES")
    assert got["bad_proto"].startswith("EPROTONOSUPPORT")
    assert got["sniff_own"] == "ok"
    code, out = run_py(engine, norights, "import saferaw; saferaw.socket('udp')")
    assert code != 0 and "PermissionError" in out and "raw_sockets" in out, out
    # Every claim went with its socket.
    wait_for(lambda: dnm.call("list_claims") == [], what="claims released")


PLABDUMP = "plabdump -p tcp -c 6 8080 | tcpdump -nr - > /tmp/dump.txt 2>&1"


def test_plabdump_output_reads_with_tcpdump(dnm: NMHandle, engine: docker.DockerClient) -> None:
    a = make_sliver(dnm, "dump")
    c = engine.containers.get(a["container"])
    c.exec_run(["python3", "-m", "http.server", "8080"], detach=True, user=str(a["uid"]))
    addr = a["net"]["address"]

    def get() -> subprocess.CompletedProcess[str]:
        return subprocess.run(["curl", "-s", "-m", "5", f"http://{addr}:8080/"],
                              capture_output=True, text=True, check=False)

    wait_for(lambda: get().returncode == 0, what="the web server in the sliver")
    c.exec_run(["sh", "-c", PLABDUMP], detach=True, user=str(a["uid"]))
    wait_for(lambda: "plabdump" in sliver_exec(engine, a["container"], ["ps", "-eo", "args"])[1],
             what="plabdump running")
    time.sleep(0.5)
    res = get()
    assert res.returncode == 0, res.stderr

    def dumped() -> str:
        return sliver_exec(engine, a["container"], ["cat", "/tmp/dump.txt"])[1]

    wait_for(lambda: dumped().count(" IP ") >= 6, what="six packets in plabdump's output")
    text = dumped()
    assert f"{addr}.8080: Flags [S]" in text, text
    assert f"IP {addr}.8080 > " in text and "Flags [S.]" in text, text
