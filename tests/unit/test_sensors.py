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
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from prometheus_client.parser import text_string_to_metric_families

from sensors.app import SENSORS, STATE, Bandwidth, Settings, make_app
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

    def dispatch(self, method: str, params: tuple[Any, ...], peer: object) -> Any:
        self.calls += 1
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
    r = await client.get("/bandwidth/pl_cpu?stream=1&interval=0.05")
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
            w.write(sniffrecord.json_frame(sniffrecord.SLICES, {"5": "pl_cpu"}))
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


def test_settings_from_env() -> None:
    s = Settings.from_env({"SLICECTL_NODE_ID": "n9", "SLICECTL_NM_SOCK": "/x/nm.sock",
                           "SLICECTL_CGROUP_PARENT": "/p"})
    assert (s.node_id, s.nm_sock, s.cgroup_parent) == ("n9", Path("/x/nm.sock"), "/p")
    assert replace(s, node_id="n8").node_id == "n8"
    assert Hub().subscribers == set()
