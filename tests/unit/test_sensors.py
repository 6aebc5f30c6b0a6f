"""The sensor server in-process: protocol, every sensor, errors, streaming, metrics.

Its sources are real at their lowest boundary: /proc-like and cgroup-like files in a
temporary directory, a real XML-RPC server on a unix socket answering as the node manager,
and a unix socket speaking the admin sniffer's frames.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from prometheus_client.parser import text_string_to_metric_families

from sensors.app import (
    SENSORS,
    STATE,
    Bandwidth,
    Settings,
    make_app,
    visible_rows,
)
from sensors.callers import TooManyStreams, Viewer, admit_stream, node_viewer, sliver_viewer
from sensors.sources import local_addresses
from sensors.streams import ConnectDetector, Hub
from slicectl.core import sniffrecord
from slicectl.core.errors import PermissionDenied
from slicectl.core.sniffrecord import OUT, PacketRecord
from slicectl.ipc.rpc import UnixXMLRPCServer

CID = "a" * 64
CID2 = "b" * 64
MEMINFO = """MemTotal:       24000000 kB
MemFree:        20000000 kB
MemAvailable:   22000000 kB
Buffers:          100000 kB
Cached:          1000000 kB
SwapTotal:             0 kB
SwapFree:              0 kB
"""


def sliver(name: str, cid: str, sent: int, received: int = 0, share: int = 10) -> dict[str, Any]:
    return {"name": name, "state": "running", "container_id": cid,
            "rspec": {"cpu_share": share},
            "net": {"bytes_sent_today": sent, "packets_sent_today": sent // 100,
                    "bytes_received": received, "packets_received": received // 100}}


@dataclass
class FakeNM:
    """A real XML-RPC unix-socket server answering ``list`` with what the test sets."""

    slivers: list[dict[str, Any]] = field(default_factory=list)
    calls: int = 0
    services: list[dict[str, Any]] = field(default_factory=list)

    def dispatch(self, method: str, params: tuple[Any, ...], peer: object) -> Any:
        self.calls += 1
        if method == "services":
            return self.services
        if method != "list":
            raise PermissionDenied(f"method {method}: not for services")
        return self.slivers


@pytest.fixture
def root() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="slc-sens-", dir="/tmp"))  # short: unix socket paths
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def fake_nm(root: Path) -> Iterator[FakeNM]:
    nm = FakeNM([sliver("pl_cpu", CID, 5000, 700), sliver("pl_idle", CID2, 0, share=1)])
    server = UnixXMLRPCServer(root / "nm.sock", nm.dispatch)
    t = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    t.start()
    yield nm
    server.shutdown()
    server.server_close()


def write_sources(root: Path) -> None:
    proc = root / "proc"
    proc.mkdir()
    (proc / "meminfo").write_text(MEMINFO)
    (proc / "loadavg").write_text("0.50 0.25 0.10 1/200 1234\n")
    (proc / "uptime").write_text("12345.67 20000.00\n")
    (proc / "cpuinfo").write_text("processor\t: 0\n\nprocessor\t: 1\n\n")
    for cid, ns, mem, quota in ((CID, 2_500_000_000, 50 << 20, 50_000), (CID2, 0, 1 << 20, -1)):
        for ctrl, files in (("cpuacct", {"cpuacct.usage": ns}),
                            ("memory", {"memory.usage_in_bytes": mem,
                                        "memory.limit_in_bytes": 512 << 20}),
                            ("cpu", {"cpu.cfs_quota_us": quota, "cpu.cfs_period_us": 100_000})):
            d = root / "cgroup" / ctrl / "slicectl" / cid
            d.mkdir(parents=True)
            for fname, value in files.items():
                (d / fname).write_text(f"{value}\n")


@pytest.fixture
def settings(root: Path, fake_nm: FakeNM) -> Settings:
    write_sources(root)
    return Settings(node_id="n1", hostname="node1.example.org", address="198.51.100.7",
                    proc=root / "proc", cgroup_root=root / "cgroup", cgroup_parent="/slicectl",
                    nm_sock=root / "nm.sock", sniffer_sock=root / "sniffer.sock",
                    poll_s=0.05, sniffer_retry_s=0.05, stream_queue=256, write_timeout_s=1.0)


Client = TestClient[web.Request, web.Application]


@pytest.fixture
async def client(aiohttp_client: Any, settings: Settings) -> Client:
    c: Client = await aiohttp_client(make_app(settings))
    return c


def parse(text: str) -> list[list[str]]:
    return [line.split(",") for line in text.splitlines()]


# protocol -------------------------------------------------------------------------------

async def test_index_lists_every_sensor_with_kind_and_columns(client: Client) -> None:
    r = await client.get("/")
    assert r.status == 200
    assert r.headers["Content-Type"] == "text/csv; charset=utf-8"
    rows = parse(await r.text())
    assert rows[0] == ["sensor", "kind", "uri", "columns"]
    kinds = {(row[0], row[1]) for row in rows[1:]}
    for name, sensor in SENSORS.items():
        assert (name, "snapshot") in kinds
        assert ((name, "streaming") in kinds) == sensor.streaming
    by_name = {row[0]: row for row in rows[1:] if row[1] == "snapshot"}
    assert by_name["slices"][3].split() == list(SENSORS["slices"].columns)


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS"])
async def test_only_get_and_head(client: Client, method: str) -> None:
    r = await client.request(method, "/load")
    assert r.status == 405
    assert r.headers["Allow"] == "GET, HEAD"
    assert len((await r.text()).strip().splitlines()) == 1


async def test_head_has_headers_and_no_body(client: Client) -> None:
    r = await client.head("/meminfo")
    assert r.status == 200
    assert r.headers["Content-Type"] == "text/csv; charset=utf-8"
    assert await r.read() == b""


async def test_head_of_a_stream_does_not_subscribe(client: Client) -> None:
    r = await client.head("/connects?stream=1")
    assert r.status == 200 and await r.read() == b""
    assert not client.app[STATE].connects.subscribers


@pytest.mark.parametrize(
    ("uri", "status", "says"),
    [
        ("/nosuch", 404, "sensor nosuch"),
        ("/load/extra", 400, "no arguments"),
        ("/nodes/ip/colour", 400, "one of id, ip, name"),
        ("/slices/pl_cpu/more", 400, "at most one slice"),
        ("/slices/pl_nosuch", 404, "slice pl_nosuch"),
        ("/bandwidth", 400, "exactly one slice"),
        ("/bandwidth/pl_nosuch", 404, "slice pl_nosuch"),
        ("/load?stream=1", 400, "streaming sensor"),
        ("/connects?stream=maybe", 400, "1 or 0"),
        ("/bandwidth/pl_cpu?stream=1&interval=0", 400, "seconds from"),
        ("/bandwidth/pl_cpu?interval=5", 400, "only with stream=1"),
        ("/connects?stream=1&interval=5", 400, "only with /bandwidth"),
        ("/load?colour=red", 400, "query"),
    ],
)
async def test_errors_are_one_line(client: Client, uri: str, status: int, says: str) -> None:
    r = await client.get(uri)
    text = await r.text()
    assert r.status == status, text
    assert says in text
    assert text.endswith("\n") and text.count("\n") == 1


# snapshot sensors -----------------------------------------------------------------------

@pytest.mark.parametrize(
    ("uri", "header", "row"),
    [
        ("/meminfo", "total_kb,free_kb,available_kb,buffers_kb,cached_kb,swap_total_kb,"
         "swap_free_kb", "24000000,20000000,22000000,100000,1000000,0,0"),
        ("/load", "load1", "0.5"),
        ("/load5", "load5", "0.25"),
        ("/uptime", "uptime_s", "12345.67"),
        ("/cpus", "cpus", "2"),
        ("/nodes", "id,ip,name", "n1,198.51.100.7,node1.example.org"),
        ("/nodes/ip/name", "ip,name", "198.51.100.7,node1.example.org"),
        ("/nodes/name", "name", "node1.example.org"),
    ],
)
async def test_node_sensors(client: Client, uri: str, header: str, row: str) -> None:
    r = await client.get(uri)
    assert r.status == 200
    assert (await r.text()).splitlines() == [header, row]


async def test_slices_combines_nm_and_cgroups(client: Client) -> None:
    r = await client.get("/slices")
    rows = parse(await r.text())
    assert rows[0] == list(SENSORS["slices"].columns)
    got = {row[0]: dict(zip(rows[0], row, strict=True)) for row in rows[1:]}
    assert got["pl_cpu"] == {
        "slice": "pl_cpu", "state": "running", "cpu_s": "2.500", "mem_bytes": str(50 << 20),
        "bytes_sent": "5000", "packets_sent": "50", "bytes_received": "700",
        "packets_received": "7", "cpu_share": "10", "cpu_cap_pct": "25.0",
        "mem_cap_bytes": str(512 << 20)}
    assert got["pl_idle"]["cpu_cap_pct"] == ""  # uncapped
    one = parse(await (await client.get("/slices/pl_idle")).text())
    assert [row[0] for row in one] == ["slice", "pl_idle"]


async def test_snapshot_cache_honours_max_age(client: Client, settings: Settings) -> None:
    first = await (await client.get("/load")).text()
    (settings.proc / "loadavg").write_text("3.00 2.00 1.00 1/200 1234\n")
    cached = await client.get("/load")
    assert await cached.text() == first
    assert cached.headers["Cache-Control"] == "max-age=1"
    fresh = await client.get("/load", headers={"Cache-Control": "max-age=0"})
    assert (await fresh.text()).splitlines()[1] == "3.0"


async def test_nm_unreachable_is_503(client: Client, root: Path, fake_nm: FakeNM) -> None:
    (root / "nm.sock").unlink()
    for _ in range(50):  # a fetch the poller began before the unlink may still succeed
        r = await client.get("/slices", headers={"Cache-Control": "no-cache"})
        if r.status != 200:
            break
        await asyncio.sleep(0.02)
    assert r.status == 503
    assert "node manager" in await r.text()


# bandwidth ------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("samples", "window", "kbit"),
    [
        ([(0, 0), (60, 750_000)], 60, 100.0),              # 750 kB in 60 s = 100 kbit/s
        ([(0, 0), (240, 0), (300, 750_000)], 60, 100.0),   # only the last minute counts
        ([(0, 0), (240, 0), (300, 750_000)], 300, 20.0),
        ([(0, 0), (10, 125_000)], 300, 100.0),             # less history than the window
        ([(0, 500), (10, 100), (20, 125_100)], 60, 100.0),  # counter reset: start again
        ([(0, 100)], 60, 0.0),
    ],
)
def test_bandwidth_rates(samples: list[tuple[float, int]], window: float, kbit: float) -> None:
    bw = Bandwidth(keep_s=330)
    for t, b in samples:
        bw.add(t, {"pl_x": b})
    assert bw.rate_kbit("pl_x", window) == pytest.approx(kbit)


def test_bandwidth_forgets_slices_that_went_away() -> None:
    bw = Bandwidth(keep_s=330)
    bw.add(0, {"pl_a": 1, "pl_b": 2})
    bw.add(1, {"pl_a": 3})
    assert set(bw.samples) == {"pl_a"}


async def test_bandwidth_snapshot(client: Client) -> None:
    rows = parse(await (await client.get("/bandwidth/pl_cpu")).text())
    assert rows[0] == ["time", "slice", "bytes_sent", "rate_1m_kbit", "rate_5m_kbit"]
    assert rows[1][1:3] == ["pl_cpu", "5000"]


async def test_bandwidth_stream_one_line_per_interval(client: Client, fake_nm: FakeNM) -> None:
    r = await client.get("/bandwidth/pl_cpu?stream=1&interval=0.5")
    assert r.status == 200
    assert r.headers["Transfer-Encoding"] == "chunked"
    assert (await r.content.readline()).decode().strip() == ",".join(SENSORS["bandwidth"].columns)
    fake_nm.slivers = [sliver("pl_cpu", CID, 9000)]
    seen = []
    while "9000" not in seen[-1:]:
        line = await asyncio.wait_for(r.content.readline(), 10)
        seen.append(line.decode().split(",")[2])
    assert seen[0] in ("5000", "9000")
    r.close()


# connects and the admin sniffer -------------------------------------------------------------

def rec(t: float, xid: int, proto: int, flags: int, dst: str, dport: int, sport: int = 40000,
        direction: int = OUT) -> bytes:
    return PacketRecord(t, xid, "172.30.128.5", dst, sport, dport, proto, flags, 60,
                        direction).pack()


SYN, ACK = 0x02, 0x10


def test_detector_picks_syns_and_new_udp_flows() -> None:
    seen = []
    d = ConnectDetector(seen.append, ring=3, udp_idle_s=30)
    d.set_slices({"5": "pl_a"})
    d.feed(b"".join([
        rec(1.0, 5, 6, SYN, "192.0.2.1", 80),                    # connect
        rec(1.1, 5, 6, SYN | ACK, "192.0.2.1", 80),              # a server's answer
        rec(1.2, 5, 6, ACK, "192.0.2.1", 80),
        rec(1.3, 5, 17, 0, "192.0.2.2", 53),                     # new UDP flow
        rec(1.4, 5, 17, 0, "192.0.2.2", 53),                     # same flow
        rec(1.5, 5, 6, SYN, "192.0.2.3", 22, direction=sniffrecord.IN),
        rec(40.0, 5, 17, 0, "192.0.2.2", 53),                    # idle > 30 s: new again
        rec(41.0, 9, 6, SYN, "192.0.2.4", 443),                  # unknown xid
    ]))
    assert [(c.slice, c.proto, c.dst, c.port) for c in seen] == [
        ("pl_a", "tcp", "192.0.2.1", 80), ("pl_a", "udp", "192.0.2.2", 53),
        ("pl_a", "udp", "192.0.2.2", 53), ("xid9", "tcp", "192.0.2.4", 443)]
    assert len(d.ring) == 3 and d.ring[0].proto == "udp"


@dataclass
class FakeSniffer:
    """A unix socket speaking the admin sniffer's frames to every consumer."""

    path: Path
    writers: list[asyncio.StreamWriter] = field(default_factory=list)
    server: asyncio.AbstractServer | None = None
    connected: asyncio.Event = field(default_factory=asyncio.Event)

    async def start(self) -> None:
        async def on_client(_r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            w.write(sniffrecord.json_frame(sniffrecord.HELLO, {
                "version": 1, "node": "n1", "record": sniffrecord.RECORD.format,
                "record_size": sniffrecord.RECORD.size}))
            w.write(sniffrecord.json_frame(sniffrecord.SLICES, {"5": "pl_cpu", "6": "pl_idle"}))
            await w.drain()
            self.writers.append(w)
            self.connected.set()

        self.server = await asyncio.start_unix_server(on_client, str(self.path))

    async def send(self, *records: bytes) -> None:
        for w in self.writers:
            w.write(sniffrecord.frame(sniffrecord.RECORDS, b"".join(records)))
            await w.drain()

    def close(self) -> None:
        for w in self.writers:
            w.close()
        if self.server is not None:
            self.server.close()


@pytest.fixture
async def sniffer(settings: Settings) -> AsyncIterator[FakeSniffer]:
    s = FakeSniffer(settings.sniffer_sock)
    await s.start()
    yield s
    s.close()


async def wait_until(cond: Any, what: str, tries: int = 400) -> None:
    for _ in range(tries):
        if cond():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"never happened: {what}")


async def test_connects_snapshot_and_stream(client: Client, sniffer: FakeSniffer) -> None:
    await asyncio.wait_for(sniffer.connected.wait(), 10)
    state = client.app[STATE]
    await wait_until(lambda: state.detector.slices, "the slice map arrives")
    r = await client.get("/connects?stream=1")
    assert (await r.content.readline()).decode().strip() == "time,slice,proto,dst,port"
    await wait_until(lambda: state.connects.subscribers, "the stream subscribes")
    await sniffer.send(rec(100.5, 5, 6, SYN, "192.0.2.9", 8080))
    line = (await asyncio.wait_for(r.content.readline(), 10)).decode().strip()
    assert line == "100.500000,pl_cpu,tcp,192.0.2.9,8080"
    r.close()
    snap = parse(await (await client.get("/connects")).text())
    assert snap == [["time", "slice", "proto", "dst", "port"],
                    ["100.500000", "pl_cpu", "tcp", "192.0.2.9", "8080"]]


async def test_hundreds_of_streams_all_get_each_tuple(client: Client, sniffer: FakeSniffer) -> None:
    await asyncio.wait_for(sniffer.connected.wait(), 10)
    state = client.app[STATE]
    url = client.make_url("/connects?stream=1")
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        streams = await asyncio.gather(*(session.get(url) for _ in range(200)))
        for r in streams:
            await asyncio.wait_for(r.content.readline(), 20)
        await wait_until(lambda: len(state.connects.subscribers) == 200, "200 subscribers")
        await sniffer.send(rec(7.0, 5, 17, 0, "192.0.2.7", 53))
        lines = await asyncio.gather(*(asyncio.wait_for(r.content.readline(), 20)
                                       for r in streams))
        assert {ln.decode().strip() for ln in lines} == {"7.000000,pl_cpu,udp,192.0.2.7,53"}
        for r in streams:
            r.close()
    await wait_until(lambda: not state.connects.subscribers, "closed streams unsubscribe")


async def test_slow_stream_reader_is_dropped(client: Client, sniffer: FakeSniffer) -> None:
    await asyncio.wait_for(sniffer.connected.wait(), 10)
    state = client.app[STATE]
    reader_sock = socket.socket()
    reader_sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    reader_sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(reader_sock, (client.host, client.port))
    reader_sock.sendall(b"GET /connects?stream=1 HTTP/1.1\r\nHost: x\r\n\r\n")
    await wait_until(lambda: state.connects.subscribers, "the slow stream subscribes")
    good = await client.get("/connects?stream=1")
    await good.content.readline()
    await wait_until(lambda: len(state.connects.subscribers) == 2, "both subscribe")
    batch = [rec(float(i), 5, 6, SYN, "192.0.2.10", 1 + i) for i in range(16)]
    for i in range(20000):  # never read by the slow client
        if state.connects.dropped:
            break
        await sniffer.send(*batch)
        await asyncio.sleep(0)
        if i % 50 == 0:
            while len(await asyncio.wait_for(good.content.read(1 << 20), 10)) == 1 << 20:
                pass
    assert state.connects.dropped == 1
    assert len(state.connects.subscribers) == 1  # the reading client is still there
    good.close()
    reader_sock.close()


# metrics ------------------------------------------------------------------------------------

async def test_metrics_parse_as_prometheus_text(client: Client) -> None:
    r = await client.get("/metrics")
    assert r.status == 200
    assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    families = {f.name: f for f in text_string_to_metric_families(await r.text())}
    assert families["node_load1"].samples[0].value == 0.5
    assert families["node_cpus"].samples[0].value == 2
    mem = {s.labels["field"]: s.value for s in families["node_memory_bytes"].samples}
    assert mem["total"] == 24000000 * 1024
    cpu = {s.labels["slice"]: s.value for s in families["slicectl_slice_cpu_seconds"].samples}
    assert cpu == {"pl_cpu": 2.5, "pl_idle": 0.0}
    assert families["slicectl_slice_cpu_seconds"].type == "counter"
    sent = {s.labels["slice"]: s.value for s in families["slicectl_slice_sent_bytes"].samples}
    assert sent["pl_cpu"] == 5000


def report(slice_name: str, kind: str, state: str, contact: float | str,
           failures: int = 0, error: str = "") -> dict[str, Any]:
    """A creation service's report as the node manager's ``services`` gives it."""
    return {"slice": slice_name, "kind": kind, "authority": "https://plc.test/PLCAPI/",
            "state": state, "last_contact": contact, "failures_in_a_row": failures,
            "slivers": 2, "last_error": error, "reported_at": 0, "age_s": 3.0}


async def test_services_show_whether_plc_answers(client: Client, fake_nm: FakeNM) -> None:
    fake_nm.services = [
        report("pl_agent", "agent", "unreachable", time.time() - 90, 5, "PLC: refused"),
        report("pl_leases", "leases", "ok", "")]
    rows = parse(await (await client.get("/services")).text())
    assert rows[0] == list(SENSORS["services"].columns)
    assert [(r[0], r[1], r[3], r[5]) for r in rows[1:]] == [
        ("pl_agent", "agent", "unreachable", "5"), ("pl_leases", "leases", "ok", "0")]
    assert rows[2][4] == ""  # never in contact
    families = {f.name: f for f in text_string_to_metric_families(
        await (await client.get("/metrics")).text())}
    up = {s.labels["slice"]: s.value for s in families["slicectl_service_up"].samples}
    assert up == {"pl_agent": 0, "pl_leases": 1}
    age = families["slicectl_service_contact_age_seconds"].samples
    assert [s.labels["kind"] for s in age] == ["agent"] and 89 < age[0].value < 100
    fails = {s.labels["slice"]: s.value for s in families["slicectl_service_failures"].samples}
    assert fails["pl_agent"] == 5


def test_settings_from_env() -> None:
    s = Settings.from_env({"SLICECTL_NODE_ID": "n9", "SLICECTL_NM_SOCK": "/x/nm.sock",
                           "SLICECTL_CGROUP_PARENT": "/p"})
    assert (s.node_id, s.nm_sock, s.cgroup_parent) == ("n9", Path("/x/nm.sock"), "/p")
    assert replace(s, node_id="n8").node_id == "n8"
    assert Hub().subscribers == set()


# callers: who sees what, stream bounds -------------------------------------------------------

A_ADDR, B_ADDR, ADMIN_ADDR = "172.30.128.5", "172.30.128.6", "172.30.128.7"
FIB_TRIE = """Main:
  +-- 0.0.0.0/0 3 0 4
     |-- 0.0.0.0
        /0 universe UNICAST
     +-- 127.0.0.0/8 2 0 2
           |-- 127.0.0.0
              /8 host LOCAL
           |-- 127.0.0.1
              /32 host LOCAL
        |-- 127.255.255.255
           /32 link BROADCAST
     +-- 172.30.0.0/15 2 0 1
           |-- 172.30.0.0
              /16 link UNICAST
           |-- 172.30.0.1
              /32 host LOCAL
           |-- 192.0.2.2
              /32 host LOCAL
"""


def addressed(name: str, address: str | None, *, planned: str | None = None,
              admin: object = False) -> dict[str, Any]:
    s = sliver(name, CID, 0)
    s["rspec"]["admin_sniffer"] = admin
    if address is not None:
        s["address"] = address
    if planned is not None:
        s["net"]["address"] = planned
    return s


SLIVERS = [addressed("pl_cpu", A_ADDR), addressed("pl_idle", None, planned=B_ADDR),
           addressed("pl_admin", ADMIN_ADDR, admin=True),
           addressed("pl_truthy", "172.30.128.8", admin="yes")]
LOCAL = frozenset({"127.0.0.1", "172.30.0.1", "192.0.2.2"})


@pytest.mark.parametrize(
    ("source", "slice_name", "sees_all"),
    [
        ("127.0.0.1", None, True),
        ("127.9.8.7", None, True),              # all of 127/8 is the node's loopback
        ("::1", None, True),
        ("::ffff:127.0.0.1", None, True),
        ("172.30.0.1", None, True),             # the node's own address on the bridge
        ("192.0.2.2", None, True),              # another address of the host's
        (A_ADDR, "pl_cpu", False),
        ("::ffff:172.30.128.5", "pl_cpu", False),
        (B_ADDR, "pl_idle", False),             # the planned address when the engine gives none
        (ADMIN_ADDR, "pl_admin", True),         # admin_sniffer
        ("172.30.128.8", "pl_truthy", False),   # only a real true grants it
    ],
)
def test_a_caller_is_known_by_its_source_address(source: str, slice_name: str | None,
                                                 sees_all: bool) -> None:
    v = node_viewer(source, LOCAL) or sliver_viewer(source, SLIVERS, "n1")
    assert (v.slice, v.sees_all) == (slice_name, sees_all)
    assert v.is_node == (slice_name is None)


@pytest.mark.parametrize("source", ["172.30.9.9", "172.30.128.9", "198.51.100.1", "10.0.0.1",
                                    "", "not-an-address", "::2"])
def test_an_unknown_source_is_refused(source: str) -> None:
    assert node_viewer(source, LOCAL) is None
    with pytest.raises(PermissionDenied) as err:
        sliver_viewer(source, SLIVERS, "n1")
    assert "expected the node or a sliver of node n1, found neither" in str(err.value)


def test_the_hosts_addresses_come_from_fib_trie(root: Path) -> None:
    (root / "net").mkdir()
    assert local_addresses(root) == frozenset()  # unreadable: nobody is the node by address
    (root / "net" / "fib_trie").write_text(FIB_TRIE)
    assert local_addresses(root) == LOCAL


@pytest.mark.parametrize(
    ("viewer", "from_source", "total", "refused"),
    [
        (Viewer(A_ADDR, "pl_cpu", False), 7, 100, None),
        (Viewer(A_ADDR, "pl_cpu", False), 8, 100, 429),
        (Viewer(ADMIN_ADDR, "pl_admin", True), 8, 100, 429),  # admin_sniffer is no exemption
        (Viewer("127.0.0.1", None, True), 500, 500, None),    # the node: only the total
        (Viewer("127.0.0.1", None, True), 1000, 1000, 503),
        (Viewer(A_ADDR, "pl_cpu", False), 0, 1000, 503),
    ],
)
def test_stream_admission(viewer: Viewer, from_source: int, total: int,
                          refused: int | None) -> None:
    if refused is None:
        admit_stream(viewer, from_source, total, per_source=8, total=1000)
        return
    with pytest.raises(TooManyStreams) as err:
        admit_stream(viewer, from_source, total, per_source=8, total=1000)
    assert err.value.status == refused
    assert "expected at most" in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("viewer", "slices"),
    [
        (Viewer("127.0.0.1", None, True), ["pl_cpu", "pl_idle", "xid9"]),
        (Viewer(A_ADDR, "pl_cpu", False), ["pl_cpu"]),
        (Viewer(B_ADDR, "pl_idle", False), ["pl_idle"]),
        (Viewer(ADMIN_ADDR, "pl_admin", True), ["pl_cpu", "pl_idle", "xid9"]),
    ],
)
def test_connects_rows_a_caller_sees(viewer: Viewer, slices: list[str]) -> None:
    rows: list[tuple[Any, ...]] = [("1.0", n, "tcp", "192.0.2.1", 80)
                                   for n in ("pl_cpu", "pl_idle", "xid9")]
    assert [r[1] for r in visible_rows(SENSORS["connects"], rows, viewer)] == slices
    assert visible_rows(SENSORS["slices"], rows, viewer) == rows  # no slice column: all


@web.middleware
async def test_source(request: web.Request,
                      handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                      ) -> web.StreamResponse:
    """Stands in for the network: the request's source address from ``X-Test-Source``
    (a sliver's address cannot be bound in a test without root)."""
    source = request.headers.get("X-Test-Source")
    return await handler(request if source is None else request.clone(remote=source))


test_source.__test__ = False  # type: ignore[attr-defined]


@pytest.fixture
async def sclient(aiohttp_client: Any, settings: Settings, fake_nm: FakeNM) -> Client:
    """The server with callers from any source address (``X-Test-Source``)."""
    fake_nm.slivers = [addressed("pl_cpu", A_ADDR), addressed("pl_idle", B_ADDR),
                       addressed("pl_admin", ADMIN_ADDR, admin=True)]
    app = make_app(replace(settings, max_streams_per_source=3, max_streams=8))
    app.middlewares.append(test_source)
    c: Client = await aiohttp_client(app)
    return c


def src(address: str) -> dict[str, str]:
    return {"X-Test-Source": address}


async def feed_two_slices(client: Client, sniffer: FakeSniffer) -> None:
    await asyncio.wait_for(sniffer.connected.wait(), 10)
    state = client.app[STATE]
    await wait_until(lambda: len(state.detector.slices) == 2, "the slice map arrives")
    await sniffer.send(rec(1.0, 5, 6, SYN, "192.0.2.1", 80), rec(2.0, 6, 6, SYN, "192.0.2.2", 22))
    await wait_until(lambda: len(state.detector.ring) == 2, "both connects are seen")


@pytest.mark.parametrize(
    ("source", "slices"),
    [(None, ["pl_cpu", "pl_idle"]), (A_ADDR, ["pl_cpu"]), (B_ADDR, ["pl_idle"]),
     (ADMIN_ADDR, ["pl_cpu", "pl_idle"])],
)
async def test_connects_shows_a_sliver_its_own_slice(sclient: Client, sniffer: FakeSniffer,
                                                     source: str | None,
                                                     slices: list[str]) -> None:
    await feed_two_slices(sclient, sniffer)
    r = await sclient.get("/connects", headers=src(source) if source else {})
    assert r.status == 200
    assert [row[1] for row in parse(await r.text())[1:]] == slices


async def test_a_sliver_sees_only_its_own_service_report(sclient: Client,
                                                         fake_nm: FakeNM) -> None:
    fake_nm.services = [report("pl_cpu", "agent", "ok", 1.0), report("pl_idle", "x", "ok", 1.0)]
    rows = parse(await (await sclient.get("/services", headers=src(A_ADDR))).text())
    assert [r[0] for r in rows[1:]] == ["pl_cpu"]
    rows = parse(await (await sclient.get("/services")).text())
    assert [r[0] for r in rows[1:]] == ["pl_cpu", "pl_idle"]


async def test_an_unknown_sliver_address_gets_nothing(sclient: Client, sniffer: FakeSniffer,
                                                      fake_nm: FakeNM) -> None:
    await feed_two_slices(sclient, sniffer)
    calls = fake_nm.calls
    for uri in ("/connects", "/connects?stream=1", "/load", "/", "/metrics"):
        r = await sclient.get(uri, headers=src("172.30.9.9"))
        text = await r.text()
        assert r.status == 403, (uri, text)
        assert text == "source 172.30.9.9: expected the node or a sliver of node n1, " \
                       "found neither\n"
    assert fake_nm.calls > calls  # asked the NM again before refusing
    assert not sclient.app[STATE].connects.subscribers


async def test_a_sliver_made_since_the_last_nm_answer_is_known(sclient: Client,
                                                               fake_nm: FakeNM) -> None:
    assert (await sclient.get("/load", headers=src(A_ADDR))).status == 200  # view cached
    fake_nm.slivers = [*fake_nm.slivers, addressed("pl_new", "172.30.128.20")]
    r = await sclient.get("/load", headers=src("172.30.128.20"))
    assert r.status == 200, await r.text()


async def test_a_sliver_caller_without_the_nm_is_503(sclient: Client, root: Path) -> None:
    (root / "nm.sock").unlink()
    await asyncio.sleep(0.1)  # let the NM view age past max-age 0 fetches
    r = await sclient.get("/load", headers={**src("172.30.128.99")})
    assert r.status == 503 and "cannot identify the caller" in await r.text()
    assert (await sclient.get("/load")).status == 200  # the node needs no NM to be known


async def test_the_connects_stream_is_filtered_the_same_way(sclient: Client,
                                                            sniffer: FakeSniffer) -> None:
    await asyncio.wait_for(sniffer.connected.wait(), 10)
    state = sclient.app[STATE]
    await wait_until(lambda: len(state.detector.slices) == 2, "the slice map arrives")
    streams = {who: await sclient.get("/connects?stream=1", headers=src(addr) if addr else {})
               for who, addr in (("a", A_ADDR), ("b", B_ADDR), ("admin", ADMIN_ADDR),
                                 ("node", None))}
    for r in streams.values():
        assert (await r.content.readline()).decode().strip() == "time,slice,proto,dst,port"
    await wait_until(lambda: len(state.connects.subscribers) == 4, "four subscribers")
    await sniffer.send(rec(1.0, 6, 6, SYN, "192.0.2.2", 22))   # pl_idle's
    await sniffer.send(rec(2.0, 5, 6, SYN, "192.0.2.1", 80))   # pl_cpu's
    first = {who: (await asyncio.wait_for(r.content.readline(), 10)).decode().split(",")[1]
             for who, r in streams.items()}
    assert first == {"a": "pl_cpu", "b": "pl_idle", "admin": "pl_idle", "node": "pl_idle"}
    for r in streams.values():
        r.close()


async def test_streams_per_source_are_capped(sclient: Client, sniffer: FakeSniffer) -> None:
    await asyncio.wait_for(sniffer.connected.wait(), 10)
    state = sclient.app[STATE]
    held = [await sclient.get("/connects?stream=1", headers=src(A_ADDR)),
            await sclient.get("/bandwidth/pl_cpu?stream=1", headers=src(A_ADDR)),
            await sclient.get("/connects?stream=1", headers=src(A_ADDR))]
    assert [r.status for r in held] == [200, 200, 200]
    await wait_until(lambda: state.streams.by_source[A_ADDR] == 3, "three streams held")
    for uri in ("/connects?stream=1", "/bandwidth/pl_cpu?stream=1&interval=1"):
        r = await sclient.get(uri, headers=src(A_ADDR))
        assert r.status == 429
        assert await r.text() == f"streaming clients from {A_ADDR}: expected at most 3, " \
                                 "found 3 open\n"
    assert (await sclient.get("/connects", headers=src(A_ADDR))).status == 200  # snapshots
    assert (await sclient.head("/connects?stream=1", headers=src(A_ADDR))).status == 200
    other = await sclient.get("/connects?stream=1", headers=src(B_ADDR))
    assert other.status == 200  # another sliver is not held back
    held[0].close()
    await wait_until(lambda: state.streams.by_source[A_ADDR] == 2, "a closed stream frees")
    again = await sclient.get("/connects?stream=1", headers=src(A_ADDR))
    assert again.status == 200
    node = [await sclient.get("/connects?stream=1") for _ in range(4)]  # 8 open in all
    assert [r.status for r in node] == [200] * 4  # the node is past 3 from its address
    await wait_until(lambda: state.streams.total == 8, "eight streams open")
    full = await sclient.get("/connects?stream=1")
    assert full.status == 503 and "expected at most 8 on this server" in await full.text()
    assert state.streams.refused == 3
    for r in [*held, other, again, *node]:
        r.close()
    await wait_until(lambda: state.streams.total == 0 and not state.streams.by_source,
                     "every slot is given back")


@pytest.mark.parametrize(("interval", "status"), [("0.4", 400), ("0.0", 400), ("-1", 400),
                                                  ("nan", 400), ("inf", 400), ("3601", 400),
                                                  ("0.5", 200), ("3600", 200)])
async def test_the_interval_has_a_floor(sclient: Client, interval: str, status: int) -> None:
    r = await sclient.get(f"/bandwidth/pl_cpu?stream=1&interval={interval}", headers=src(A_ADDR))
    assert r.status == status
    if status == 400:
        assert await r.text() == f"interval: expected seconds from 0.5 to 3600, " \
                                 f"found '{interval}'\n"
    r.close()


@pytest.mark.parametrize("uri", ["/bandwidth/pl_cpu?stream=1&interval=3600",
                                 "/connects?stream=1"])
async def test_a_closed_stream_gives_its_slot_back_at_once(sclient: Client, uri: str) -> None:
    state = sclient.app[STATE]
    r = await sclient.get(uri, headers=src(A_ADDR))
    await r.content.readline()
    await wait_until(lambda: state.streams.by_source[A_ADDR] == 1, "the stream is held")
    r.close()  # no line will come for an hour: only the disconnect can free it
    await wait_until(lambda: not state.streams.by_source and not state.connects.subscribers,
                     "the slot is free", tries=200)
