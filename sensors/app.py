"""The sensor server (paper section 4.4): node and slice data over HTTP GET/HEAD, as CSV.

``GET /<sensor>/<args...>`` returns a header line naming the columns and one line per
tuple (``text/csv; charset=utf-8``); ``GET /`` lists the sensors. Snapshot answers are cached
for a short time; a request's ``Cache-Control: max-age=N`` asks for data at most N seconds
old (``max-age=0``: fresh). ``?stream=1`` keeps the response open and writes one line per
new tuple (``connects``) or per ``interval`` seconds (``bandwidth/<slice>``). ``/metrics``
gives the same data in the Prometheus text format.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import logging
import math
import os
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from slicectl.core import sniffrecord
from slicectl.core.errors import NotFoundError, PermissionDenied, SlicectlError, ValidationError

from .callers import TooManyStreams, Viewer, admit_stream, node_viewer, sliver_viewer
from .sources import (
    MEMINFO_FIELDS,
    NMView,
    cgroup_usage,
    cpu_count,
    loadavg,
    local_addresses,
    meminfo,
    node_address,
    uptime_s,
)
from .streams import Connect, ConnectDetector, Hub

log = logging.getLogger("sensors")

CSV_TYPE = "text/csv"
METRICS_TYPE = "text/plain; version=0.0.4; charset=utf-8"
ALLOW = "GET, HEAD"
SNAPSHOT, STREAMING = "snapshot", "streaming"


@dataclass(frozen=True)
class Settings:
    """Everything the server reads, passed in (the sidecar builds it from its environment)."""

    node_id: str = "node"
    hostname: str = ""
    address: str = ""
    proc: Path = Path("/proc")
    cgroup_root: Path = Path("/host/cgroup")
    cgroup_parent: str = "/slicectl"
    nm_sock: Path = Path("/run/slicectl/nm/nm.sock")
    sniffer_sock: Path = Path("/run/slicectl/sniffer/records.sock")
    #: default freshness of snapshot answers (a request's max-age can ask for fresher)
    cache_s: float = 1.0
    #: how often the NM's counters are sampled for bandwidth rates (the NM folds kernel
    #: counters every 2 s, so sampling faster shows nothing new)
    poll_s: float = 2.0
    history_s: float = 330.0
    stream_queue: int = 4096
    #: open streaming responses on this server, and from one sliver (one source address);
    #: the node's own callers are bounded by the first only
    max_streams: int = 2000
    max_streams_per_source: int = 8
    #: the shortest ``interval`` a bandwidth stream may ask for
    min_interval_s: float = 0.5
    #: how long the host's own addresses (callers that are the node) are reused
    local_addresses_s: float = 10.0
    #: a streaming client whose socket stays full this long is dropped
    write_timeout_s: float = 5.0
    sniffer_retry_s: float = 1.0

    @classmethod
    def from_env(cls, env: dict[str, str]) -> Settings:
        return cls(
            node_id=env.get("SLICECTL_NODE_ID", "node"),
            hostname=env.get("SLICECTL_HOSTNAME", ""),
            address=env.get("SLICECTL_NODE_ADDRESS", ""),
            cgroup_root=Path(env.get("SLICECTL_CGROUP_ROOT", "/host/cgroup")),
            cgroup_parent=env.get("SLICECTL_CGROUP_PARENT", "/slicectl"),
            nm_sock=Path(env.get("SLICECTL_NM_SOCK", "/run/slicectl/nm/nm.sock")),
            sniffer_sock=Path(env.get("SLICECTL_SNIFFER_SOCK",
                                      "/run/slicectl/sniffer/records.sock")),
        )


# state ----------------------------------------------------------------------------------

class Bandwidth:
    """Samples of each slice's bytes-sent counter, for rates over the last 1 and 5 minutes."""

    def __init__(self, keep_s: float) -> None:
        self.keep_s = keep_s
        self.samples: dict[str, deque[tuple[float, int]]] = {}

    def add(self, now: float, counters: dict[str, int]) -> None:
        for name, sent in counters.items():
            q = self.samples.setdefault(name, deque())
            if q and sent < q[-1][1]:  # the counter restarted (a new UTC day, a new sliver)
                q.clear()
            q.append((now, sent))
            while q and q[0][0] < now - self.keep_s:
                q.popleft()
        for gone in set(self.samples) - set(counters):
            del self.samples[gone]

    def rate_kbit(self, name: str, window_s: float) -> float:
        q = self.samples.get(name)
        if not q or len(q) < 2:
            return 0.0
        t1, b1 = q[-1]
        t0, b0 = q[0]
        for t, b in q:
            if t >= t1 - window_s:
                t0, b0 = t, b
                break
        return 0.0 if t1 <= t0 else (b1 - b0) * 8 / 1000 / (t1 - t0)


@dataclass
class OpenStreams:
    """Streaming responses open now, in all and per source address."""

    by_source: Counter[str] = field(default_factory=Counter)
    total: int = 0
    refused: int = 0

    @contextlib.contextmanager
    def slot(self, viewer: Viewer, settings: Settings) -> Iterator[None]:
        """Hold one stream for ``viewer`` while the block runs.

        Raises:
            TooManyStreams: before the block, when a bound is reached (see :func:`admit_stream`).
        """
        try:
            admit_stream(viewer, self.by_source[viewer.source], self.total,
                         settings.max_streams_per_source, settings.max_streams)
        except TooManyStreams:
            self.refused += 1
            raise
        self.by_source[viewer.source] += 1
        self.total += 1
        try:
            yield
        finally:
            self.total -= 1
            self.by_source[viewer.source] -= 1
            if self.by_source[viewer.source] <= 0:
                del self.by_source[viewer.source]


@dataclass
class State:
    settings: Settings
    nm: NMView
    bandwidth: Bandwidth
    connects: Hub
    detector: ConnectDetector
    cache: dict[tuple[str, str, str], tuple[float, bytes]] = field(default_factory=dict)
    streams: OpenStreams = field(default_factory=OpenStreams)
    sniffer_connected: bool = False
    sniffer_drops: dict[str, int] = field(default_factory=dict)
    last_record_at: float = 0.0
    _local: tuple[float, frozenset[str]] = (-math.inf, frozenset())

    def local_addresses(self) -> frozenset[str]:
        """The host's own addresses, re-read every ``local_addresses_s``."""
        at, addresses = self._local
        now = time.monotonic()
        if now - at > self.settings.local_addresses_s:
            addresses = local_addresses(self.settings.proc)
            self._local = (now, addresses)
        return addresses

    async def viewer(self, source: str) -> Viewer:
        """Who sent a request from ``source``: the node, or the sliver with that address.

        Raises:
            PermissionDenied: neither (also after asking the NM again, in case the sliver
                was made since its answer was fetched).
            SlicectlError: the NM cannot answer (ConnectionFailed).
        """
        node = node_viewer(source, self.local_addresses())
        if node is not None:
            return node
        node_id = self.settings.node_id
        try:
            return sliver_viewer(source, await self.nm.slivers(self.settings.cache_s), node_id)
        except PermissionDenied:
            return sliver_viewer(source, await self.nm.slivers(0), node_id)


SETTINGS = web.AppKey("settings", Settings)
STATE = web.AppKey("state", State)


# sensors --------------------------------------------------------------------------------

Rows = list[tuple[Any, ...]]
Compute = Callable[[State, list[str], float], Awaitable[Rows]]


@dataclass(frozen=True)
class Sensor:
    name: str
    columns: tuple[str, ...]
    compute: Compute
    args: str = ""
    streaming: bool = False
    #: how long an answer may be reused (None: the server default)
    cache_s: float | None = None
    #: the columns for these arguments, when the arguments choose them
    columns_for: Callable[[list[str]], tuple[str, ...]] | None = None
    #: the column naming each row's slice, when a sliver may see only its own slice's rows
    #: (unless it holds ``admin_sniffer``)
    slice_column: str | None = None

    def header(self, args: list[str]) -> tuple[str, ...]:
        return self.columns if self.columns_for is None else self.columns_for(args)


def _no_args(name: str, args: list[str]) -> None:
    if args:
        raise ValidationError(f"/{name}", "no arguments", "/".join(args), as_text=True)


async def s_meminfo(st: State, args: list[str], max_age: float) -> Rows:
    _no_args("meminfo", args)
    m = meminfo(st.settings.proc)
    return [tuple(m[c] for _, c in MEMINFO_FIELDS)]


async def s_load(st: State, args: list[str], max_age: float) -> Rows:
    _no_args("load", args)
    return [(loadavg(st.settings.proc)[0],)]


async def s_load5(st: State, args: list[str], max_age: float) -> Rows:
    _no_args("load5", args)
    return [(loadavg(st.settings.proc)[1],)]


async def s_uptime(st: State, args: list[str], max_age: float) -> Rows:
    _no_args("uptime", args)
    return [(f"{uptime_s(st.settings.proc):.2f}",)]


async def s_cpus(st: State, args: list[str], max_age: float) -> Rows:
    _no_args("cpus", args)
    return [(cpu_count(st.settings.proc),)]


NODE_COLUMNS = ("id", "ip", "name")


def node_columns(args: list[str]) -> tuple[str, ...]:
    """``/nodes/ip/name``: the columns asked for, in that order (none: all)."""
    for a in args:
        if a not in NODE_COLUMNS:
            raise ValidationError("/nodes column", f"one of {', '.join(NODE_COLUMNS)}", a)
    return tuple(args) or NODE_COLUMNS


async def s_nodes(st: State, args: list[str], max_age: float) -> Rows:
    s = st.settings
    values = {"id": s.node_id, "ip": node_address(s.address), "name": s.hostname or s.node_id}
    return [tuple(values[c] for c in node_columns(args))]


def _one_slice(args: list[str], what: str) -> str | None:
    if len(args) > 1:
        raise ValidationError(f"/{what}", "at most one slice name", "/".join(args), as_text=True)
    return args[0] if args else None


def _blank(v: object) -> object:
    return "" if v is None else v


async def slice_rows(st: State, max_age: float, only: str | None) -> Rows:
    slivers = await st.nm.slivers(max_age)
    ncpus = cpu_count(st.settings.proc)
    rows: Rows = []
    for s in sorted(slivers, key=lambda x: x["name"]):
        if only is not None and s["name"] != only:
            continue
        net = s.get("net") or {}
        cid = s.get("container_id") or ""
        cg = cgroup_usage(st.settings.cgroup_root, st.settings.cgroup_parent, cid, ncpus) \
            if cid else None
        rows.append((
            s["name"], s.get("state", ""),
            "" if cg is None or cg.cpu_s is None else f"{cg.cpu_s:.3f}",
            _blank(cg and cg.mem_bytes),
            net.get("bytes_sent_today", 0), net.get("packets_sent_today", 0),
            net.get("bytes_received", 0), net.get("packets_received", 0),
            (s.get("rspec") or {}).get("cpu_share", ""),
            _blank(cg and cg.cpu_cap_pct), _blank(cg and cg.mem_limit_bytes),
        ))
    if only is not None and not rows:
        raise NotFoundError(f"slice {only}: expected a sliver on node {st.settings.node_id}, "
                            "found none")
    return rows


async def s_slices(st: State, args: list[str], max_age: float) -> Rows:
    return await slice_rows(st, max_age, _one_slice(args, "slices"))


def _slice_arg(args: list[str]) -> str:
    if len(args) != 1 or not args[0]:
        raise ValidationError("/bandwidth", "exactly one slice name: /bandwidth/<slice>",
                              "/".join(args) or "none", as_text=True)
    return args[0]


def bandwidth_row(st: State, name: str, now: float) -> tuple[Any, ...]:
    q = st.bandwidth.samples.get(name)
    if not q:
        raise NotFoundError(f"slice {name}: expected a sliver on node {st.settings.node_id}, "
                            "found none")
    return (f"{now:.3f}", name, q[-1][1], f"{st.bandwidth.rate_kbit(name, 60):.1f}",
            f"{st.bandwidth.rate_kbit(name, 300):.1f}")


async def s_bandwidth(st: State, args: list[str], max_age: float) -> Rows:
    name = _slice_arg(args)
    await poll_once(st, max_age)  # a sample no older than asked (the NM view is cached)
    return [bandwidth_row(st, name, time.time())]


async def s_connects(st: State, args: list[str], max_age: float) -> Rows:
    _no_args("connects", args)
    return [c.row() for c in st.detector.ring]


SERVICE_COLUMNS = ("slice", "kind", "authority", "state", "last_contact", "failures_in_a_row",
                   "slivers", "last_error", "age_s")


async def s_services(st: State, args: list[str], max_age: float) -> Rows:
    """The node's slice creation services (the node agent first among them), as each last
    told the node manager: whether its authority answers, since when, how many slivers."""
    _no_args("services", args)
    return [tuple(_blank(r.get(c)) for c in SERVICE_COLUMNS)
            for r in await st.nm.services(max_age)]


CONNECT_COLUMNS = ("time", "slice", "proto", "dst", "port")
BANDWIDTH_COLUMNS = ("time", "slice", "bytes_sent", "rate_1m_kbit", "rate_5m_kbit")

SENSORS: dict[str, Sensor] = {s.name: s for s in (
    Sensor("meminfo", tuple(c for _, c in MEMINFO_FIELDS), s_meminfo),
    Sensor("load", ("load1",), s_load),
    Sensor("load5", ("load5",), s_load5),
    Sensor("uptime", ("uptime_s",), s_uptime),
    Sensor("cpus", ("cpus",), s_cpus, cache_s=60),
    Sensor("nodes", NODE_COLUMNS, s_nodes, args="[/<column>...]", cache_s=60,
           columns_for=node_columns),
    Sensor("slices", ("slice", "state", "cpu_s", "mem_bytes", "bytes_sent", "packets_sent",
                      "bytes_received", "packets_received", "cpu_share", "cpu_cap_pct",
                      "mem_cap_bytes"), s_slices, args="[/<slice>]", cache_s=2),
    Sensor("bandwidth", BANDWIDTH_COLUMNS, s_bandwidth, args="/<slice>", streaming=True),
    Sensor("services", SERVICE_COLUMNS, s_services, cache_s=2, slice_column="slice"),
    Sensor("connects", CONNECT_COLUMNS, s_connects, streaming=True, cache_s=0,
           slice_column="slice"),
)}


def csv_text(columns: tuple[str, ...], rows: Rows) -> bytes:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(columns)
    w.writerows(rows)
    return buf.getvalue().encode()


def csv_line(row: tuple[Any, ...]) -> bytes:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow(row)
    return buf.getvalue().encode()


def index_rows() -> Rows:
    rows: Rows = []
    for s in SENSORS.values():
        rows.append((s.name, SNAPSHOT, f"/{s.name}{s.args}", " ".join(s.columns)))
        if s.streaming:
            q = "?stream=1&interval=<s>" if s.name == "bandwidth" else "?stream=1"
            rows.append((s.name, STREAMING, f"/{s.name}{s.args}{q}", " ".join(s.columns)))
    rows.append(("metrics", SNAPSHOT, "/metrics", "Prometheus text format"))
    return rows


def requested_max_age(request: web.Request) -> float | None:
    """The ``max-age`` of the request's Cache-Control (``no-cache`` counts as 0)."""
    cc = request.headers.get("Cache-Control", "")
    for part in cc.split(","):
        k, _, v = part.strip().partition("=")
        if k.lower() == "no-cache":
            return 0.0
        if k.lower() == "max-age" and v.strip().isdigit():
            return float(v.strip())
    return None


# HTTP -----------------------------------------------------------------------------------

def text_error(status: int, message: str, **headers: str) -> web.Response:
    return web.Response(status=status, text=message.replace("\n", " ") + "\n",
                        content_type="text/plain", headers=headers)


def flag(value: str | None, name: str) -> bool:
    if value is None:
        return False
    if value in ("1", "true", "yes"):
        return True
    if value in ("0", "false", "no", ""):
        return False
    raise ValidationError(name, "1 or 0", value)


MAX_INTERVAL_S = 3600


def interval_arg(value: str | None, floor_s: float) -> float:
    """``interval`` of a bandwidth stream: seconds from ``floor_s`` to an hour (default 5)."""
    if value is None:
        return 5.0
    try:
        v = float(value)
    except ValueError:
        v = math.nan
    if not floor_s <= v <= MAX_INTERVAL_S:
        raise ValidationError("interval", f"seconds from {floor_s:g} to {MAX_INTERVAL_S}",
                              value)
    return v


QUERY_KEYS = {"stream", "interval"}


async def handle(request: web.Request) -> web.StreamResponse:
    if request.method not in ("GET", "HEAD"):
        return text_error(405, f"{request.method}: only GET and HEAD are served", Allow=ALLOW)
    st = request.app[STATE]
    try:
        viewer = await st.viewer(request.remote or "")
    except PermissionDenied as e:
        return text_error(403, str(e))
    except SlicectlError as e:
        return text_error(503, f"cannot identify the caller: {e}")
    path = request.path.strip("/")
    if not path:
        body = csv_text(("sensor", "kind", "uri", "columns"), index_rows())
        return web.Response(body=body, content_type=CSV_TYPE, charset="utf-8")
    name, *args = path.split("/")
    if name == "metrics" and not args:
        return web.Response(body=(await metrics_text(st)).encode(),
                            headers={"Content-Type": METRICS_TYPE})
    sensor = SENSORS.get(name)
    if sensor is None:
        return text_error(404, f"sensor {name}: no such sensor (GET / lists them)")
    try:
        unknown = set(request.query) - QUERY_KEYS
        if unknown:
            raise ValidationError("query", f"only {', '.join(sorted(QUERY_KEYS))}",
                                  ", ".join(sorted(unknown)), as_text=True)
        if flag(request.query.get("stream"), "stream"):
            if not sensor.streaming:
                raise ValidationError("stream", f"a streaming sensor; {name} is snapshot only",
                                      request.query["stream"])
            if "interval" in request.query and name != "bandwidth":
                raise ValidationError("interval", "only with /bandwidth", request.query["interval"])
            return await stream(request, st, sensor, args, viewer)
        if "interval" in request.query:
            raise ValidationError("interval", "only with stream=1", request.query["interval"])
        return await snapshot(request, st, sensor, args, viewer)
    except ValidationError as e:
        return text_error(400, str(e))
    except TooManyStreams as e:
        return text_error(e.status, str(e))
    except NotFoundError as e:
        return text_error(404, str(e))
    except SlicectlError as e:
        return text_error(503, f"sensor {name}: {e}")
    except OSError as e:
        return text_error(503, f"sensor {name}: cannot read its source: {e}")


def visible_rows(sensor: Sensor, rows: Rows, viewer: Viewer) -> Rows:
    """The rows ``viewer`` may see: a sensor with a slice column shows a sliver only its
    own slice's rows, unless it holds ``admin_sniffer``."""
    scope = viewer.scope if sensor.slice_column is not None else None
    if scope is None or sensor.slice_column is None:
        return rows
    i = sensor.columns.index(sensor.slice_column)
    return [r for r in rows if r[i] == scope]


async def snapshot(request: web.Request, st: State, sensor: Sensor,
                   args: list[str], viewer: Viewer) -> web.Response:
    ttl = st.settings.cache_s if sensor.cache_s is None else sensor.cache_s
    asked = requested_max_age(request)
    max_age = ttl if asked is None else asked
    scope = viewer.scope if sensor.slice_column is not None else None
    key = (sensor.name, "/".join(args), "" if scope is None else scope)
    now = time.monotonic()
    hit = st.cache.get(key)
    if hit is not None and now - hit[0] <= max_age:
        at, body = hit
    else:
        rows = visible_rows(sensor, await sensor.compute(st, args, max_age), viewer)
        body = csv_text(sensor.header(args), rows)
        at = time.monotonic()
        if ttl > 0:
            if len(st.cache) > 4096:
                st.cache.clear()
            st.cache[key] = (at, body)
    return web.Response(body=body, content_type=CSV_TYPE, charset="utf-8", headers={
        "Cache-Control": f"max-age={int(ttl)}", "Age": str(int(now - at))})


async def stream(request: web.Request, st: State, sensor: Sensor,
                 args: list[str], viewer: Viewer) -> web.StreamResponse:
    """A streaming answer: the header line, then one line per tuple until either side
    closes. A client that stops reading is dropped (see :class:`Hub`); a sliver sees the
    tuples :func:`visible_rows` would show it."""
    if sensor.name == "bandwidth":
        name = _slice_arg(args)
        interval = interval_arg(request.query.get("interval"), st.settings.min_interval_s)
        if name not in st.bandwidth.samples:
            await poll_once(st, 0)
        bandwidth_row(st, name, time.time())  # a 404 before the stream starts

        async def rows() -> AsyncIterator[bytes]:
            while True:
                yield csv_line(bandwidth_row(st, name, time.time()))
                await asyncio.sleep(interval)
    else:
        _no_args(sensor.name, args)
        hub = st.connects

        async def rows() -> AsyncIterator[bytes]:
            sub = hub.subscribe(viewer.scope)
            try:
                while True:
                    yield await sub.take()
            finally:
                hub.unsubscribe(sub)

    resp = web.StreamResponse(headers={"Content-Type": f"{CSV_TYPE}; charset=utf-8",
                                       "Cache-Control": "no-store"})
    resp.enable_chunked_encoding()
    if request.method == "HEAD":
        await resp.prepare(request)
        return resp
    with st.streams.slot(viewer, st.settings):  # a refusal before anything is sent
        await resp.prepare(request)
        timeout = st.settings.write_timeout_s
        try:
            # asyncio.timeout, not wait_for: on Python 3.11 a write under wait_for can
            # leave the handler deaf to the cancellation of a client that went away.
            async with asyncio.timeout(timeout):
                await resp.write(csv_line(sensor.columns))
            async for chunk in rows():
                async with asyncio.timeout(timeout):
                    await resp.write(chunk)
        except TimeoutError:
            st.connects.dropped += 1  # a client that stops reading is dropped
        except (ConnectionResetError, NotFoundError):
            pass  # the client went away; the slice went away
        except asyncio.CancelledError:
            if request.transport is not None:
                request.transport.abort()  # dropped by the hub: do not flush what is queued
            raise
    if request.transport is not None:
        request.transport.close()
    return resp


async def metrics_text(st: State) -> str:
    s = st.settings
    m = meminfo(s.proc)
    l1, l5, l15 = loadavg(s.proc)
    lines = [
        "# HELP node_load1 1-minute load average.", "# TYPE node_load1 gauge", f"node_load1 {l1}",
        "# HELP node_load5 5-minute load average.", "# TYPE node_load5 gauge", f"node_load5 {l5}",
        "# HELP node_load15 15-minute load average.", "# TYPE node_load15 gauge",
        f"node_load15 {l15}",
        "# HELP node_uptime_seconds Seconds since boot.", "# TYPE node_uptime_seconds gauge",
        f"node_uptime_seconds {uptime_s(s.proc)}",
        "# HELP node_cpus Processors.", "# TYPE node_cpus gauge",
        f"node_cpus {cpu_count(s.proc)}",
        "# HELP node_memory_bytes /proc/meminfo fields in bytes.",
        "# TYPE node_memory_bytes gauge",
        *(f'node_memory_bytes{{field="{c.removesuffix("_kb")}"}} {v * 1024}' for c, v in m.items()),
        "# HELP slicectl_connects_total Outgoing connection attempts seen since start.",
        "# TYPE slicectl_connects_total counter",
        f"slicectl_connects_total {st.detector.total}",
        "# HELP slicectl_stream_clients Open streaming responses.",
        "# TYPE slicectl_stream_clients gauge",
        f'slicectl_stream_clients{{sensor="connects"}} {len(st.connects.subscribers)}',
        "# HELP slicectl_stream_dropped_total Streaming clients dropped for not reading.",
        "# TYPE slicectl_stream_dropped_total counter",
        f'slicectl_stream_dropped_total{{sensor="connects"}} {st.connects.dropped}',
        "# HELP slicectl_stream_refused_total Streaming requests refused at a bound.",
        "# TYPE slicectl_stream_refused_total counter",
        f"slicectl_stream_refused_total {st.streams.refused}",
    ]
    try:
        rows = await slice_rows(st, s.cache_s, None)
    except SlicectlError:
        rows = []
    cols = SENSORS["slices"].columns
    families = [
        ("slicectl_slice_cpu_seconds_total", "counter", "cpu_s", "CPU seconds used."),
        ("slicectl_slice_memory_bytes", "gauge", "mem_bytes", "Memory in use."),
        ("slicectl_slice_sent_bytes_total", "counter", "bytes_sent", "Bytes sent today (UTC)."),
        ("slicectl_slice_sent_packets_total", "counter", "packets_sent", "Packets sent today."),
        ("slicectl_slice_received_bytes_total", "counter", "bytes_received",
         "Bytes received by the running sliver."),
        ("slicectl_slice_received_packets_total", "counter", "packets_received",
         "Packets received by the running sliver."),
        ("slicectl_slice_cpu_share", "gauge", "cpu_share", "CPU share (1/1000 of the node)."),
    ]
    for metric, kind, col, help_text in families:
        lines += [f"# HELP {metric} {help_text}", f"# TYPE {metric} {kind}"]
        i = cols.index(col)
        for r in rows:
            if r[i] != "":
                lines.append(f'{metric}{{slice="{r[0]}"}} {r[i]}')
    return "\n".join(lines + await service_metrics(st)) + "\n"


async def service_metrics(st: State) -> list[str]:
    """The creation services' reports as gauges (an authority that does not answer shows
    as ``slicectl_service_up 0``)."""
    try:
        reports = await st.nm.services(st.settings.cache_s)
    except SlicectlError:
        return []
    now = time.time()
    lines = [
        "# HELP slicectl_service_up Whether a slice creation service's authority answered "
        "its last poll.", "# TYPE slicectl_service_up gauge",
        *(f'slicectl_service_up{{slice="{r["slice"]}",kind="{r["kind"]}"}} '
          f'{int(r.get("state") == "ok")}' for r in reports),
        "# HELP slicectl_service_contact_age_seconds Seconds since its authority last "
        "answered.", "# TYPE slicectl_service_contact_age_seconds gauge",
        *(f'slicectl_service_contact_age_seconds{{slice="{r["slice"]}",kind="{r["kind"]}"}} '
          f'{now - float(r["last_contact"]):.1f}' for r in reports
          if r.get("last_contact") not in (None, "")),
        "# HELP slicectl_service_failures Failed polls in a row.",
        "# TYPE slicectl_service_failures gauge",
        *(f'slicectl_service_failures{{slice="{r["slice"]}",kind="{r["kind"]}"}} '
          f'{r.get("failures_in_a_row", 0)}' for r in reports),
    ]
    return lines


# background tasks -----------------------------------------------------------------------

async def poll_once(st: State, max_age: float) -> None:
    slivers = await st.nm.slivers(max_age)
    st.bandwidth.add(time.monotonic(), {
        s["name"]: int((s.get("net") or {}).get("bytes_sent_today", 0)) for s in slivers})


async def poll_nm(st: State) -> None:
    while True:
        try:
            await poll_once(st, st.settings.poll_s / 2)
        except SlicectlError as e:
            log.warning("polling the node manager: %s", e)
        await asyncio.sleep(st.settings.poll_s)


async def read_sniffer(st: State) -> None:
    """Follow the admin sniffer's record stream; reconnect whenever it goes away."""
    path = str(st.settings.sniffer_sock)
    while True:
        try:
            async for f in sniffrecord.read_frames(path):
                st.sniffer_connected = True
                if f.kind == sniffrecord.RECORDS:
                    st.detector.feed(f.payload)
                elif f.kind == sniffrecord.SLICES:
                    st.detector.set_slices(f.json())
                elif f.kind == sniffrecord.DROPS:
                    st.sniffer_drops = dict(f.json())
        except (OSError, sniffrecord.FrameError, ValueError) as e:
            log.debug("admin sniffer at %s: %s", path, e)
        st.sniffer_connected = False
        await asyncio.sleep(st.settings.sniffer_retry_s)


async def _background(app: web.Application) -> AsyncIterator[None]:
    st = app[STATE]
    tasks = [asyncio.create_task(poll_nm(st)), asyncio.create_task(read_sniffer(st))]
    yield
    for t in tasks:
        t.cancel()
    for t in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await t


#: How the server runs the app (aiohttp's test server always does so). A client that goes
#: away cancels its handler, so a stream gives back its slot (and its subscription) at once,
#: not at its next write (an hour later for ``interval=3600``, never for an idle slice's
#: ``connects``).
SERVER_OPTIONS: dict[str, Any] = {"handler_cancellation": True}


def make_app(settings: Settings) -> web.Application:
    """The sensor server as an aiohttp application (serve it with ``web.run_app``)."""
    app = web.Application()
    app[SETTINGS] = settings
    hub = Hub(queue_size=settings.stream_queue)

    def publish(c: Connect) -> None:
        hub.publish(csv_line(c.row()), c.slice)

    app[STATE] = State(settings=settings, nm=NMView(settings.nm_sock),
                       bandwidth=Bandwidth(settings.history_s), connects=hub,
                       detector=ConnectDetector(publish))
    app.router.add_route("*", "/{tail:.*}", handle)
    app.cleanup_ctx.append(_background)
    return app


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    settings = Settings.from_env(dict(os.environ))
    port = int(os.environ.get("SLICECTL_SERVICE_PORT", "33080"))
    web.run_app(make_app(settings), host="0.0.0.0", port=port, access_log=None,
                print=None, backlog=1024, **SERVER_OPTIONS)
