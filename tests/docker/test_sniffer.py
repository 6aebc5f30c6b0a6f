"""The administrative sniffer on a real IFB: every packet a sliver sends is a record
tagged with its slice; a consumer that does not read loses records, counted, while
another consumer loses nothing."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import docker
import pytest

from slicectl.core.errors import PermissionDenied
from slicectl.core.sniffrecord import OUT, RECORD, PacketRecord, read_frames_blocking
from slicectl.node.sniffer import Sniffer

from .conftest import NMHandle, Outside, make_sliver, sliver_exec


class Reader:
    """A consumer on its own thread, keeping everything it reads."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(path)
        #: record payloads as read; decoded only when asked, so the reader keeps up
        self.payloads: list[bytes] = []
        self.slices: dict[str, str] = {}
        self.drops: dict[str, int] = {}
        self.hello: dict[str, Any] = {}
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        try:
            for f in read_frames_blocking(self.sock):
                if f.kind == b"R":
                    self.payloads.append(bytes(f.payload))
                elif f.kind == b"S":
                    self.slices = f.json()
                elif f.kind == b"D":
                    self.drops = f.json()
                elif f.kind == b"H":
                    self.hello = f.json()
        except OSError:
            pass

    @property
    def records(self) -> list[PacketRecord]:
        return [PacketRecord.unpack(r) for p in list(self.payloads) for r in RECORD.iter_unpack(p)]

    def matching(self, **want: Any) -> list[PacketRecord]:
        return [r for r in self.records if all(getattr(r, k) == v for k, v in want.items())]

    def close(self) -> None:
        self.sock.close()


def wait_until(cond: Any, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.05)
    return False


@pytest.fixture
def reader(dnm: NMHandle) -> Iterator[Reader]:
    r = Reader(str(dnm.cfg.sniffer_dir / "records.sock"))
    yield r
    r.close()


SEND_UDP = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", int(sys.argv[3])))
for i in range(int(sys.argv[4])):
    s.sendto(b"x" * 18, (sys.argv[1], int(sys.argv[2])))
"""


def send_udp(engine: docker.DockerClient, info: dict[str, Any], dst: str, dport: int,
             sport: int, count: int) -> None:
    code, out = sliver_exec(engine, info["container"],
                            ["python3", "-c", SEND_UDP, dst, str(dport), str(sport), str(count)])
    assert code == 0, out


def test_records_name_the_slice_and_the_flow(dnm: NMHandle, engine: docker.DockerClient,
                                             reader: Reader, outside: Outside) -> None:
    a = make_sliver(dnm, "a")
    b = make_sliver(dnm, "b")
    send_udp(engine, a, outside.address, 5353, 40001, 5)
    send_udp(engine, b, outside.address, 5354, 40002, 3)
    # A TCP connection attempt from b: the SYN is recorded with its flags.
    sliver_exec(engine, b["container"], ["curl", "-s", "-m", "2", f"http://{outside.address}:81/"])
    assert wait_until(lambda: len(reader.matching(dport=5353)) == 5
                      and len(reader.matching(dport=5354)) == 3
                      and reader.matching(dport=81)), reader.records[-5:]
    for r in reader.matching(dport=5353):
        assert (r.src, r.dst, r.sport, r.proto, r.direction) == (
            a["net"]["address"], outside.address, 40001, 17, OUT)
        assert r.length == 20 + 8 + 18
        assert reader.slices[str(r.xid)] == a["name"]
    assert all(reader.slices[str(r.xid)] == b["name"] for r in reader.matching(dport=5354))
    syn = reader.matching(dport=81)[0]
    assert syn.proto == 6 and syn.tcp_flags & 0x02 and not syn.tcp_flags & 0x10
    assert reader.hello["node"] == dnm.cfg.node_id
    assert reader.drops.get("kernel") == 0


def test_first_packets_of_a_new_sliver_are_named(dnm: NMHandle, engine: docker.DockerClient,
                                                 reader: Reader, outside: Outside) -> None:
    # The sliver sends at once; its name must reach the consumer no later than records.
    c = make_sliver(dnm, "fresh", tcp_ports=[])
    send_udp(engine, c, outside.address, 7001, 40003, 1)
    assert wait_until(lambda: reader.matching(dport=7001))
    rec = reader.matching(dport=7001)[0]
    assert reader.slices.get(str(rec.xid)) == c["name"]


def test_slow_consumer_loses_counted_records_and_slows_nobody(
        dnm: NMHandle, engine: docker.DockerClient, outside: Outside) -> None:
    # An in-process sniffer with a tiny consumer buffer on the private node's IFB.
    def net_map() -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = dnm.call("net_map")
        return rows

    # The sliver exists first: records of a new sliver wait for its name, and their
    # release in one go would not fit this test's tiny buffers.
    a = make_sliver(dnm, "flood", net_max_kbit=100_000)
    cfg = dnm.cfg.with_(run_dir=dnm.cfg.run_dir / "inproc")
    sniffer = Sniffer(cfg, net_map, consumer_buffer=256 << 10)
    thread = threading.Thread(target=sniffer.run, daemon=True)
    thread.start()
    try:
        path = cfg.sniffer_dir / "records.sock"
        assert wait_until(path.exists)
        fast = Reader(str(path))
        slow = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        slow.connect(str(path))
        n = 40_000
        started = time.monotonic()
        send_udp(engine, a, outside.address, 9999, 40004, n)
        elapsed = time.monotonic() - started
        assert wait_until(lambda: len(fast.matching(dport=9999)) == n, 20), \
            (f"fast consumer got {len(fast.matching(dport=9999))} of {n}; ring drops "
             f"{sniffer.kernel_drops}, consumer drops "
             f"{[c.dropped for c in sniffer.consumers.values()]}, unknown {sniffer.unknown}, "
             f"fast reader saw drops {getattr(fast, 'drops', None)}")
        slow.setblocking(False)
        got = 0
        frames: list[Any] = []
        slow.settimeout(1)
        buf = bytearray()
        try:
            while True:
                chunk = slow.recv(1 << 20)
                if not chunk:
                    break
                buf += chunk
        except TimeoutError:
            pass
        from slicectl.core.sniffrecord import split_frames
        frames = list(split_frames(buf))
        got = sum(len(f.payload) // 32 for f in frames if f.kind == b"R")
        assert got < n, "the slow consumer should have lost records"
        assert sniffer.consumers, "consumers are kept, not disconnected"
        lost = max(c.dropped for c in sniffer.consumers.values())
        assert got + lost >= n
        assert elapsed < 30
        fast.close()
        slow.close()
    finally:
        sniffer.stop.set()
        thread.join(5)
        sniffer.close()


def test_net_map_is_for_node_services_only(dnm: NMHandle, engine: docker.DockerClient) -> None:
    a = make_sliver(dnm, "priv", nm_privileged=True)
    code, out = sliver_exec(engine, a["container"], [
        "python3", "-c",
        "import xmlrpc.client, http.client, socket\n"
        "class C(http.client.HTTPConnection):\n"
        "    def connect(self):\n"
        "        self.sock = socket.socket(socket.AF_UNIX); self.sock.connect('/run/slicectl/nm/nm.sock')\n"
        "class T(xmlrpc.client.Transport):\n"
        "    def make_connection(self, host): return C('nm')\n"
        "p = xmlrpc.client.ServerProxy('http://nm/', transport=T())\n"
        "try:\n    p.net_map(); print('allowed')\n"
        "except xmlrpc.client.Fault as e: print('refused', e.faultCode)\n"])
    assert code == 0 and "refused" in out, out
    assert PermissionDenied.exit_code


READ_HELLO = """
import json, socket, struct
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect("/run/slicectl/sniffer/records.sock")
kind, n = struct.unpack("<BI", s.recv(5, socket.MSG_WAITALL))
print(chr(kind), json.loads(s.recv(n, socket.MSG_WAITALL))["node"])
"""


def test_only_slices_granted_the_right_read_records(dnm: NMHandle,
                                                    engine: docker.DockerClient) -> None:
    granted = make_sliver(dnm, "audit", admin_sniffer=True)
    plain = make_sliver(dnm, "plain")
    code, out = sliver_exec(engine, granted["container"], ["python3", "-c", READ_HELLO])
    assert code == 0 and out.split() == ["H", dnm.cfg.node_id], out
    code, out = sliver_exec(engine, plain["container"], ["python3", "-c", READ_HELLO])
    assert code != 0 and "FileNotFoundError" in out, out
