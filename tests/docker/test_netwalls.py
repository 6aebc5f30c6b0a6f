"""The host and its networks, attacked from real slivers: host listeners are walled off,
no packet leaves with a sliver's private source, the shim refuses source routes, reserved
destinations and ICMP errors about packets the sliver never received, and link-local
addresses are reachable only when node policy allows."""

from __future__ import annotations

import json
import secrets
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from slicectl.core.netplan import chain_names
from slicectl.node import shim
from slicectl.node.config import NodeConfig
from slicectl.testbed.privnode import log_path, private_node, service_ports

from .conftest import (
    NMHandle,
    Outside,
    free_port,
    gateway,
    make_sliver,
    sliver_exec,
    veth_namespace,
    wait_for,
)
from .test_saferaw import Capture, run_py, run_py_watched

#: Every private address a sliver can have (the node's 172.30/16, private nodes' 172.31/16).
PRIVATE_SOURCES = "src net 172.16.0.0/12"


@pytest.fixture(scope="module")
def wnm(node_cfg: NodeConfig, engine: docker.DockerClient) -> Iterator[NMHandle]:
    """A private node with its shim and its sensor server (on a free port)."""
    with private_node(node_cfg, engine, daemons=True, services=service_ports()) as cfg:
        yield NMHandle(cfg=cfg, tag=cfg.state_dir.name, log_path=log_path(cfg))


class Listener:
    """A TCP listener on the host that accepts and closes, run by this test's process."""

    def __init__(self, address: str, port: int) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((address, port))
        self.sock.listen(16)
        self.address, self.port = address, port

    def close(self) -> None:
        self.sock.close()


CONNECT = """
import errno, json, socket, sys
out = {}
for target in sys.argv[1:]:
    host, port = target.rsplit(":", 1)
    s = socket.socket()
    s.settimeout(3)
    try:
        s.connect((host, int(port)))
        out[target] = "connected"
    except OSError as e:
        out[target] = errno.errorcode.get(e.errno, "timeout") if e.errno else "timeout"
    finally:
        s.close()
print(json.dumps(out))
"""


def connect_from(engine: docker.DockerClient, info: dict[str, object],
                 *targets: str) -> dict[str, str]:
    code, out = sliver_exec(engine, str(info["container"]),
                            ["python3", "-c", CONNECT, *targets], user=str(info["uid"]))
    assert code == 0, out
    return dict(json.loads(out))


def test_host_listeners_are_unreachable_but_the_sensor_server(
        wnm: NMHandle, engine: docker.DockerClient, outside: Outside) -> None:
    a = make_sliver(wnm, "wall")
    gw, port = gateway(wnm), free_port()
    # One listener on the node's bridge address (the slivers' gateway), one on another
    # host address (the host side of the outside veth).
    listeners = [Listener(gw, port), Listener(outside.node_address, port)]
    try:
        for li in listeners:  # the host itself reaches both
            socket.create_connection((li.address, li.port), 2).close()
        got = connect_from(engine, a, f"{gw}:{port}", f"{outside.node_address}:{port}",
                           f"{gw}:{wnm.cfg.sensors_port}")
    finally:
        for li in listeners:
            li.close()
    assert got == {f"{gw}:{port}": "ECONNREFUSED",
                   f"{outside.node_address}:{port}": "ECONNREFUSED",
                   f"{gw}:{wnm.cfg.sensors_port}": "connected"}, got
    code, out = sliver_exec(engine, a["container"], [
        "curl", "-sS", "-m", "5", f"http://{gw}:{wnm.cfg.sensors_port}/cpus"])
    assert code == 0 and out.splitlines()[0] == "cpus", out
    # The node's own sshd and auditor ports are host listeners too.
    assert set(connect_from(engine, a, f"{gw}:22").values()) == {"ECONNREFUSED"}
    rules = subprocess.run(["iptables", "-w", "-S", chain_names(wnm.cfg.node_id)["host"]],
                           capture_output=True, text=True, check=True).stdout
    assert f"! -i {wnm.cfg.bridge} -j RETURN" in rules and "--dport " \
        f"{wnm.cfg.sensors_port}" in rules


INVALID = """
import json, saferaw, struct, sys
from saferaw.packet import packet, tcp_segment, udp_segment
dst = sys.argv[1]
t = saferaw.socket("tcp"); t.bind(40500)
u = saferaw.socket("udp"); u.bind(40501)
me = t.address
def tcp(flags, bad_sum=False, dport=9):
    seg = bytearray(tcp_segment(me, dst, 40500, dport, 1000, 0, flags))
    if bad_sum:
        seg[16] ^= 0x5A
    return packet(me, dst, 6, bytes(seg))
sent = 0
# Odd flag sets, none of which opens or belongs to a connection.
for flags in (0x00, 0x01, 0x03, 0x04, 0x06, 0x07, 0x11, 0x14, 0x29, 0x3F, 0xC1):
    for _ in range(3):
        t.send(tcp(flags)); sent += 1
for _ in range(3):                      # a SYN with a bad checksum
    t.send(tcp(0x02, bad_sum=True)); sent += 1
for _ in range(3):                      # UDP with a bad checksum
    seg = bytearray(udp_segment(me, dst, 40501, 9, b"bad"))
    seg[6] ^= 0x5A
    u.send(packet(me, dst, 17, bytes(seg))); sent += 1
for _ in range(2):                      # good ones, to see NAT at work
    t.send(tcp(0x02, dport=10)); sent += 1
    u.sendto(udp_segment(me, dst, 40501, 10, b"good"), (dst, 0)); sent += 1
print(json.dumps({"sent": sent, "address": me}))
"""


def test_invalid_packets_never_leave_with_a_private_source(
        wnm: NMHandle, engine: docker.DockerClient, outside: Outside, tmp_path: Path) -> None:
    a = make_sliver(wnm, "invalid")
    before = shim.stats(wnm.cfg).get("sent", 0)
    leaked = Capture(outside.ns, tmp_path / "leak.pcap", f"ip and {PRIVATE_SOURCES}")
    arrived = Capture(outside.ns, tmp_path / "all.pcap", f"ip and dst host {outside.address}")
    try:
        code, out = run_py(engine, a, INVALID, outside.address)
    finally:
        leaks, seen = leaked.stop(), arrived.stop()
    assert code == 0, out
    sent = json.loads(out)["sent"]
    assert shim.stats(wnm.cfg).get("sent", 0) - before == sent  # the shim let every one through
    assert leaks == [], f"{len(leaks)} packets left with a private source: {leaks[:5]}"
    # The good ones arrived, masqueraded to the node's address; nothing else did.
    assert len(seen) == 4 and all(f"IP {outside.node_address}." in ln for ln in seen), seen
    counters = subprocess.run(["iptables", "-w", "-L", chain_names(wnm.cfg.node_id)["fwd"],
                               "-v", "-x", "-n"], capture_output=True, text=True,
                              check=True).stdout
    invalid = next(ln for ln in counters.splitlines() if "ctstate INVALID" in ln)
    assert int(invalid.split()[0]) >= sent - 4, counters


REFUSALS = """
import json, saferaw, socket, struct, sys
from saferaw.packet import checksum, packet, udp_segment, icmp_echo
dst = sys.argv[1]
u = saferaw.socket("udp"); u.bind(40600)
i = saferaw.socket("icmp"); i.bind_icmp_id(4242)
me = u.address
def to(d, options=b""):
    return packet(me, d, 17, udp_segment(me, d, 40600, 9, b"x"), options=options)
def err(quoted, icmp_type=3, d=dst):
    msg = struct.pack("!BBHI", icmp_type, 3, 0, 0) + quoted[:28]
    return packet(me, d, 1, msg[:2] + struct.pack("!H", checksum(msg)) + msg[4:])
udp_in = packet(dst, me, 17, udp_segment(dst, me, 9, 40600, b"q"))
cases = {
    "lsrr": (u, to(dst, bytes([131, 7, 4, 198, 18, 0, 9, 0]))),
    "ssrr": (u, to(dst, bytes([137, 7, 4, 198, 18, 0, 9, 0]))),
    "router-alert": (u, to(dst, bytes([148, 4, 0, 0]))),
    "this-network": (u, to("0.1.2.3")),
    "loopback": (u, to("127.0.0.1")),
    "multicast": (u, to("224.0.0.251")),
    "reserved": (u, to("240.0.0.1")),
    "broadcast": (u, to("255.255.255.255")),
    "metadata": (u, to("169.254.169.254")),
    "quotes-own-packet": (u, err(packet(me, dst, 17, udp_segment(me, dst, 40600, 9, b"q")))),
    "quotes-other-dst": (u, err(packet(dst, "172.31.255.1", 17,
                                       udp_segment(dst, "172.31.255.1", 9, 40600, b"q")))),
    "error-to-third-party": (u, err(udp_in, d="198.18.255.9")),
    "redirect": (u, err(udp_in, icmp_type=5)),
    "icmp-quotes-own-echo": (i, err(packet(me, dst, 1, icmp_echo(4242, 1)))),
}
out = {}
for name, (s, pkt) in cases.items():
    s.sock.send(pkt)                    # past the client's own checks: the shim decides
    s.sock.settimeout(3)
    m = s.sock.recv(70000)
    out[name] = json.loads(m[1:])["reason"] if m[:1] == b"E" else "sent"
# The lawful counterparts go out.
u.send(to(dst, bytes([7, 7, 4, 0, 0, 0, 0, 0])))   # record route is allowed
u.send(err(udp_in))                                 # quotes a packet it could have received
u.sock.settimeout(1)
out["lawful"] = "sent"
try:                                                # no refusal comes back for them
    while True:
        m = u.sock.recv(70000)
        if m[:1] == b"E":
            out["lawful"] = json.loads(m[1:])
except socket.timeout:
    pass
print(json.dumps(out))
"""


def test_shim_refuses_source_routes_reserved_destinations_and_foreign_quotes(
        wnm: NMHandle, engine: docker.DockerClient, outside: Outside, tmp_path: Path) -> None:
    a = make_sliver(wnm, "refuse")
    before = shim.stats(wnm.cfg).get("sent", 0)
    code, out, lines = run_py_watched(engine, a, outside, tmp_path / "wire.pcap",
                                      f"ip and dst host {outside.address}", REFUSALS,
                                      outside.address)
    assert code == 0, out
    got = json.loads(out)
    dest = {k: "destination" for k in ("this-network", "loopback", "multicast", "reserved",
                                       "broadcast", "metadata")}
    quote = {k: "foreign-quote" for k in ("quotes-own-packet", "quotes-other-dst",
                                          "error-to-third-party", "icmp-quotes-own-echo")}
    assert got == {"lawful": "sent", "lsrr": "source-route", "ssrr": "source-route",
                   "router-alert": "ip-option", "redirect": "icmp-type", **dest, **quote}, got
    # The two lawful packets went out, masqueraded: the record-route UDP opened a flow, and
    # the ICMP error quotes a packet of that flow's reply direction (conntrack RELATED; the
    # quote is translated too). Nothing else reached the wire.
    wait_for(lambda: shim.stats(wnm.cfg).get("sent", 0) - before == 2, what="two packets sent")
    assert len(lines) == 2, lines
    assert f"IP {outside.node_address}.40600 > {outside.address}.9: UDP" in lines[0], lines
    assert f"IP {outside.node_address} > {outside.address}: ICMP {outside.node_address} udp " \
        "port 40600 unreachable" in lines[1], lines
    refused = {r["reason"] for r in shim.stats(wnm.cfg)["refused"] if r["slice"] == a["name"]}
    assert {"source-route", "ip-option", "destination", "foreign-quote", "icmp-type"} <= refused


@pytest.fixture
def link_local() -> Iterator[Outside]:
    """A namespace on 169.254.<n>.0/30 behind the node: .1 the host's, .2 beyond it."""
    with veth_namespace("ll", f"169.254.{100 + secrets.randbelow(150)}") as o:
        yield o


RAW_TO = """
import json, saferaw, sys
from saferaw.packet import udp_segment
u = saferaw.socket("udp"); u.bind(40700)
try:
    u.sendto(udp_segment(u.address, sys.argv[1], 40700, 9, b"x"), (sys.argv[1], 0))
    print(json.dumps("sent"))
except PermissionError as e:
    print(json.dumps(str(e)))
"""


@pytest.mark.parametrize("allow", [False, True], ids=["policy-default", "policy-allows"])
def test_link_local_only_when_policy_allows(node_cfg: NodeConfig, engine: docker.DockerClient,
                                            link_local: Outside, allow: bool) -> None:
    policy = {"allow_link_local": True} if allow else {}
    with private_node(node_cfg, engine, daemons=True, policy=policy) as cfg:
        nm = NMHandle(cfg=cfg, tag=cfg.state_dir.name, log_path=log_path(cfg))
        a = make_sliver(nm, "ll")
        port = free_port()
        far = subprocess.Popen(["ip", "netns", "exec", link_local.ns, "python3", "-c",
                                "import socket, sys; s = socket.socket(); s.bind((sys.argv[1], "
                                "int(sys.argv[2]))); s.listen(8); [s.accept() for _ in "
                                "range(8)]", link_local.address, str(port)])
        near = Listener(link_local.node_address, port)
        try:
            wait_for(lambda: subprocess.run(
                ["ip", "netns", "exec", link_local.ns, "ss", "-ltnH", f"sport = :{port}"],
                capture_output=True, text=True).stdout.strip() != "", what="the far listener")
            far_t, near_t = f"{link_local.address}:{port}", f"{link_local.node_address}:{port}"
            got = connect_from(engine, a, far_t, near_t)
            code, raw = run_py(engine, a, RAW_TO, link_local.address)
        finally:
            near.close()
            far.kill()
            far.wait(10)
    assert code == 0, raw
    # The node went with everything it made: none of its chains or jumps is left.
    assert cfg.node_id not in subprocess.run(["iptables-save"], capture_output=True, text=True,
                                             check=True).stdout
    if allow:
        assert got == {far_t: "connected", near_t: "connected"}, got
        assert json.loads(raw) == "sent"
    else:
        # Beyond the node: ICMP admin-prohibited; on the host: a reset.
        assert got == {far_t: "EHOSTUNREACH", near_t: "ECONNREFUSED"}, got
        assert "169.254.0.0/16 (link-local, cloud metadata)" in json.loads(raw)
