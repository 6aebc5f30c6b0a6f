"""Traffic auditor benchmark: ingest rate on one core, and ``/dst/<ip>`` latency over a day.

``.venv/bin/python bench/audit_bench.py`` (no root, no Docker). Every number comes from
this run:

- **ingest**: real sniffer frames (``slicectl.core.sniffrecord.frame``) of small-packet traffic
  at the node cap (100 Mbit/s of 64-byte frames is ~148,800 packets/s), cut apart with
  ``split_frames`` and fed through the auditor's own ingest path (``Recorder.feed`` and
  ``flush``: chunked records, per-minute roll-ups, one transaction per batch), in one thread,
  timed in CPU seconds. Two traffic shapes: *flows* (a few hundred concurrent
  slice/destination/port flows, what a node at its cap mostly carries) and *scan* (every
  packet to a new destination, the worst case, and the traffic complaints are about).
  Baseline, same run, same rows: plain ``executemany`` into an unindexed SQLite table.
- **/dst**: a database holding 24 h of per-minute roll-ups at a given number of distinct
  (slice, dst, proto, port) keys per minute plus a disk-bound's worth of full records, then
  ``GET /dst/<ip>?from=<24 h ago>`` through the real aiohttp app, p50/p99; baseline, same
  run: a bare aiohttp handler (HTTP alone).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import socket
import sqlite3
import statistics
import struct
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from auditd.config import AuditConfig
from auditd.directory import Directory
from auditd.ingest import Recorder
from auditd.store import Limits, Store
from slicectl.core import sniffrecord as sr

LINE_RATE_PPS = 148_809  # 100 Mbit/s of minimum-size Ethernet frames
BATCH = LINE_RATE_PPS // 2  # what the writer commits every 0.5 s at that rate
FRAME_RECORDS = 4096


def traffic(n: int, shape: str, t0: float, seed: int = 1) -> bytes:
    """``n`` packed records at line rate: ``flows`` (300 concurrent flows of 50 slices) or
    ``scan`` (every packet to a random address, as zmap does)."""
    rnd = random.Random(seed)
    flows = [(rnd.randrange(1, 51), 0xC6120000 + rnd.randrange(1 << 16), rnd.choice(
        (80, 443, 53, 8080, 5201))) for _ in range(300)]
    pack = sr.RECORD.pack
    out = bytearray()
    for i in range(n):
        if shape == "flows":
            xid, dst, dport = flows[rnd.randrange(300)]
        else:
            xid, dst, dport = 1 + i % 50, rnd.getrandbits(32), 80
        out += pack(t0 + i / LINE_RATE_PPS, xid, b"\xac\x1e\x80\x01", struct.pack(">I", dst),
                    40000 + i % 1000, dport, 6, 0x10, 40, sr.OUT)
    return bytes(out)


def as_frames(recs: bytes) -> bytes:
    size = FRAME_RECORDS * sr.RECORD.size
    names = {str(x): f"site_s{x}" for x in range(1, 51)}
    return sr.json_frame(sr.SLICES, names) + b"".join(
        sr.frame(sr.RECORDS, recs[i:i + size]) for i in range(0, len(recs), size))


def ingest_rate(stream: bytes, db: Path) -> tuple[float, int]:
    rec = Recorder(Store(db), clock=time.time)
    buf = bytearray(stream)
    start = time.process_time()
    for f in sr.split_frames(buf):
        rec.feed(f)
        if rec.pending >= BATCH:
            rec.flush()
    rec.flush()
    spent = time.process_time() - start
    rec.store.close()
    return rec.records / spent, db.stat().st_size


def baseline_rate(recs: bytes, db: Path) -> float:
    rows = [(t, xid, s, d, sp, dp, p, f, n) for t, xid, s, d, sp, dp, p, f, n, _w in
            sr.RECORD.iter_unpack(recs)]
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute("CREATE TABLE p (t, sid, src, dst, sport, dport, proto, flags, length)")
    start = time.process_time()
    for i in range(0, len(rows), BATCH):
        conn.execute("BEGIN")
        conn.executemany("INSERT INTO p VALUES (?,?,?,?,?,?,?,?,?)", rows[i:i + BATCH])
        conn.execute("COMMIT")
    spent = time.process_time() - start
    conn.close()
    return len(rows) / spent


def synthesize_day(db: Path, now: float, keys_per_minute: int, records: int,
                   target: bytes) -> None:
    """24 h of roll-ups (``keys_per_minute`` rows a minute, ``target`` sent to by 3 slices
    every minute) and ``records`` full records in chunks over the last minutes."""
    store = Store(db, Limits(max_bytes=1 << 40))
    for x in range(1, 51):
        store.slice_id(f"site_s{x}")
    rnd = random.Random(2)
    db_ = store.db
    first = int(now // 60) * 60 - 24 * 3600
    db_.execute("BEGIN")
    for m in range(24 * 60):
        minute = first + m * 60
        rows = [(minute, 1 + (k % 50), struct.pack(">I", 0xC6120000 + rnd.randrange(1 << 20)),
                 6, 80 + k % 5, 100, 4000, minute + 1.0, minute + 59.0)
                for k in range(keys_per_minute - 3)]
        rows += [(minute, s, target, 6, 80, 500, 20000, minute + 0.5, minute + 59.5)
                 for s in (3, 17, 42)]
        db_.executemany("INSERT OR IGNORE INTO rollup VALUES (?,?,?,?,?,?,?,?,?)", rows)
    # full records: chunks of 64 records, one in 200 of them to the target
    chunk_n = 64
    blob = b"".join(sr.RECORD.pack(now - 1, 3, b"\xac\x1e\x80\x01", target, 40000, 80, 6, 16,
                                   40, 0) for _ in range(chunk_n))
    for c in range(records // chunk_n):
        t = now - 600 + c * 600 / (records // chunk_n)
        dst = target if c % 200 == 0 else struct.pack(">I", 0xC6120000 + rnd.randrange(1 << 20))
        db_.execute("INSERT INTO records VALUES (?,?,?,?,?,?)",
                    (1 + c % 50, dst, t, t + 0.5, chunk_n, blob))
    db_.execute("COMMIT")
    store.close()


class StaticSource:
    def call(self, method: str, *args: Any) -> Any:
        if method == "status":
            return {"node_id": "bench", "hostname": "bench.example.org", "slivers": 50}
        return {"name": args[0], "description": "bench slice", "contacts": ["ops@example.org"]}


async def latency(state: Path, now: float, paths: list[str],
                  runs: int) -> list[tuple[str, list[float]]]:
    """Each of ``paths`` through the auditor's app, then the first through a bare app."""
    from auditd.web import make_app

    cfg = AuditConfig(state_dir=state, sniffer_sock=state / "no-sniffer.sock",
                      nm_sock=state / "no-nm.sock", limits=Limits(max_bytes=1 << 40))
    app = make_app(cfg, Directory(StaticSource()), clock=lambda: now)
    bare = web.Application()

    async def hello(_r: web.Request) -> web.Response:
        return web.Response(text="hello")

    bare.router.add_get("/dst/{ip}", hello)
    out = []
    for application, todo in ((app, paths), (bare, paths[:1])):
        async with TestClient(TestServer(application)) as client:
            for path in todo:
                times = []
                for i in range(runs + 3):
                    t = time.perf_counter()
                    resp = await client.get(path)
                    body = await resp.read()
                    if i >= 3:
                        times.append(time.perf_counter() - t)
                    assert resp.status == 200, body[:200]
                out.append((path if application is app else "bare aiohttp (baseline)", times))
    return out


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--packets", type=int, default=1_500_000, help="flows-shaped records")
    ap.add_argument("--scan-packets", type=int, default=300_000)
    ap.add_argument("--keys-per-minute", type=int, default=2000)
    ap.add_argument("--records", type=int, default=5_000_000,
                    help="full records in the synthesized day (the disk bound's share)")
    ap.add_argument("--runs", type=int, default=50)
    args = ap.parse_args(argv)
    now = float(int(time.time()))
    with tempfile.TemporaryDirectory(prefix="slicectl-auditbench-") as tmp:
        d = Path(tmp)
        print(f"ingest, one thread, CPU time; {BATCH} records per transaction")
        print(f"{'traffic':>8} {'records':>10} {'auditor rec/s':>14} {'baseline rec/s':>15} "
              f"{'ratio':>6} {'target':>8} {'DB bytes/rec':>12}")
        for shape, n in (("flows", args.packets), ("scan", args.scan_packets)):
            recs = traffic(n, shape, now - 120)
            rate, size = ingest_rate(as_frames(recs), d / f"{shape}.sqlite")
            base = baseline_rate(recs, d / f"{shape}-base.sqlite")
            print(f"{shape:>8} {n:>10} {rate:>14,.0f} {base:>15,.0f} {rate / base:>6.2f} "
                  f"{'ok' if rate >= 150_000 else 'MISSED':>8} {size / n:>12.1f}")
        state = d / "day"
        state.mkdir()
        target = socket.inet_aton("198.51.100.7")
        t = time.monotonic()
        synthesize_day(state / "audit.sqlite", now, args.keys_per_minute, args.records, target)
        size = (state / "audit.sqlite").stat().st_size
        print(f"\n/dst over 24 h: {args.keys_per_minute} roll-up keys/minute "
              f"({args.keys_per_minute * 1440:,} rows), {args.records:,} full records; "
              f"DB {size / 2**20:,.0f} MiB (built in {time.monotonic() - t:.0f} s)")
        day = f"from={now - 24 * 3600:.0f}&to={now:.0f}"
        paths = [f"/dst/198.51.100.7?{day}", f"/dst/198.51.100.7.json?{day}",
                 f"/slice/site_s3?{day}", f"/?from={now - 3600:.0f}&to={now:.0f}"]
        results = asyncio.run(latency(state, now, paths, args.runs))
        print(f"{'GET':>42} {'p50 ms':>8} {'p99 ms':>8} {'target':>8}")
        for name, times in results:
            verdict = ""
            if name.startswith("/dst/"):
                verdict = "ok" if pct(times, 0.99) < 0.2 else "MISSED"
            print(f"{name[:42]:>42} {statistics.median(times) * 1000:>8.1f} "
                  f"{pct(times, 0.99) * 1000:>8.1f} {verdict:>8}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
