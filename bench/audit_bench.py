"""Traffic auditor benchmark: ingest rate on one core, and every page's latency over a day.

``.venv/bin/python bench/audit_bench.py`` (no root, no Docker). Every number comes from
this run, beside the old path: the auditor as it was before its summaries and scatter chunks
(``auditd/`` at the parent of the commit that added ``auditd/schema.py``, taken from git into
a temporary package ``auditd_base``; ``--baseline-rev`` picks another, ``--no-baseline``
skips it):

- **ingest**: real sniffer frames (``slicectl.core.sniffrecord.frame``) of small-packet traffic
  at the node cap (100 Mbit/s of 64-byte frames is ~148,800 packets/s), cut apart with
  ``split_frames`` and fed through the auditor's own ingest path (``Recorder.feed`` and
  ``flush``: chunked records, per-minute roll-ups, one transaction per batch), in one thread,
  timed in CPU seconds, the best of ``--rounds`` rounds that alternate with the old path
  (another session's load on the machine only ever slows a round). Two traffic shapes:
  *flows* (a few hundred concurrent slice/destination/port flows, what a node at its cap
  mostly carries) and *scan* (every packet to a new destination, the worst case, and the
  traffic complaints are about).
  Beside it, same rows: the old path, and plain ``executemany`` into an unindexed table.
  Target: a scan at >= 150,000 records/s.
- **pages**: a database holding 24 h of per-minute roll-ups at a given number of distinct
  (slice, dst, proto, port) keys per minute plus a disk-bound's worth of full records,
  written in the old schema by the old store; the current store upgrades a copy in place
  (timed). Then each page through the real aiohttp app, p50/p99: ``/dst/<ip>`` and its JSON
  and ``/slice/<name>`` and ``/chart.svg`` over the 24 h, ``/`` over the last hour, beside
  the old app on the old file and a bare aiohttp handler (HTTP alone). Target: every page
  under 200 ms at p99.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import io
import random
import shutil
import socket
import sqlite3
import statistics
import struct
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

import auditd
from slicectl.core import sniffrecord as sr

LINE_RATE_PPS = 148_809  # 100 Mbit/s of minimum-size Ethernet frames
BATCH = LINE_RATE_PPS // 2  # what the writer commits every 0.5 s at that rate
FRAME_RECORDS = 4096
ROOT = Path(__file__).resolve().parents[1]
INGEST_TARGET = 150_000
PAGE_TARGET_S = 0.2


def baseline_package(rev: str | None, into: Path) -> tuple[ModuleType, str] | None:
    """``auditd/`` at ``rev`` (default: before ``auditd/schema.py``) imported as
    ``auditd_base``; None, with why on stderr, when git cannot give it."""
    try:
        if rev is None:
            added = subprocess.run(
                ["git", "-C", str(ROOT), "log", "--diff-filter=A", "--format=%H", "--",
                 "auditd/schema.py"], capture_output=True, text=True, check=True).stdout.split()
            if not added:
                raise ValueError("no commit adds auditd/schema.py")
            rev = added[-1] + "^"
        label = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", rev],
                               capture_output=True, text=True, check=True).stdout.strip()
        tar = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "auditd"],
                             capture_output=True, check=True).stdout
    except (OSError, ValueError, subprocess.CalledProcessError) as e:
        print(f"old path: expected a git checkout with auditd/ history, found {e}; "
              "measuring the current code only", file=sys.stderr)
        return None
    with tarfile.open(fileobj=io.BytesIO(tar)) as t:
        t.extractall(into, filter="data")
    (into / "auditd").rename(into / "auditd_base")
    sys.path.insert(0, str(into))
    return importlib.import_module("auditd_base"), label


def part(pkg: ModuleType, name: str) -> Any:
    return importlib.import_module(f"{pkg.__name__}.{name}")


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


def ingest_rate(pkg: ModuleType, stream: bytes, db: Path) -> tuple[float, int]:
    rec = part(pkg, "ingest").Recorder(part(pkg, "store").Store(db), clock=time.time)
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


def synthesize_day(pkg: ModuleType, db: Path, now: float, keys_per_minute: int, records: int,
                   target: bytes) -> None:
    """24 h of roll-ups (``keys_per_minute`` rows a minute, ``target`` sent to by 3 slices
    every minute) and ``records`` full records in chunks over the last minutes, through
    the tables of ``pkg``'s store."""
    store_mod = part(pkg, "store")
    store = store_mod.Store(db, store_mod.Limits(max_bytes=1 << 40))
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
    db_.execute("COMMIT")
    chunks = []
    for c in range(records // chunk_n):
        t = now - 600 + c * 600 / (records // chunk_n)
        dst = target if c % 200 == 0 else struct.pack(">I", 0xC6120000 + rnd.randrange(1 << 20))
        chunks.append((1 + c % 50, dst, t, t + 0.5, chunk_n, blob))
    store.write(chunks, [])  # as the writer does: the store counts what it holds
    store.close()


class StaticSource:
    def call(self, method: str, *args: Any) -> Any:
        if method == "status":
            return {"node_id": "bench", "hostname": "bench.example.org", "slivers": 50}
        return {"name": args[0], "description": "bench slice", "contacts": ["ops@example.org"]}


def auditor_app(pkg: ModuleType, state: Path, now: float) -> web.Application:
    web_mod, store_mod = part(pkg, "web"), part(pkg, "store")
    cfg = part(pkg, "config").AuditConfig(
        state_dir=state, sniffer_sock=state / "no-sniffer.sock", nm_sock=state / "no-nm.sock",
        limits=store_mod.Limits(max_bytes=1 << 40))
    app: web.Application = web_mod.make_app(cfg, part(pkg, "directory").Directory(
        StaticSource()), clock=lambda: now)
    return app


def bare_app() -> web.Application:
    bare = web.Application()

    async def hello(_r: web.Request) -> web.Response:
        return web.Response(text="hello")

    bare.router.add_get("/dst/{ip}", hello)
    return bare


async def latency(app: web.Application, paths: list[str], runs: int,
                  writer: Any = None) -> list[list[float]]:
    """Each of ``paths`` ``runs`` times through ``app`` (after 3 unmeasured), once its
    writer (``writer``: its app key) has done what it does at start."""
    out = []
    async with TestClient(TestServer(app)) as client:
        if writer is not None:
            await asyncio.get_running_loop().run_in_executor(None, app[writer].sync, 120)
        for path in paths:
            times = []
            for i in range(runs + 3):
                t = time.perf_counter()
                resp = await client.get(path)
                body = await resp.read()
                if i >= 3:
                    times.append(time.perf_counter() - t)
                assert resp.status == 200, body[:200]
            out.append(times)
    return out


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def verdict(ok: bool) -> str:
    return "ok" if ok else "MISSED"


def ingest_table(args: argparse.Namespace, d: Path, now: float,
                 base: ModuleType | None) -> None:
    print(f"ingest, one thread, CPU time, best of {args.rounds} alternating rounds; {BATCH} "
          f"records per transaction; target: scan >= {INGEST_TARGET:,} records/s")
    print(f"{'traffic':>8} {'records':>10} {'auditor rec/s':>14} {'old path':>10} {'x old':>6} "
          f"{'executemany':>12} {'target':>7} {'DB B/rec':>9} {'old B/rec':>9}")
    for shape, n in (("flows", args.packets), ("scan", args.scan_packets)):
        recs = traffic(n, shape, now - 120)
        stream = as_frames(recs)
        rate = old = plain = 0.0
        size = old_size = 0
        for r in range(args.rounds):  # alternating; the best of each (least disturbed)
            got, size = ingest_rate(auditd, stream, d / f"{shape}-{r}.sqlite")
            rate = max(rate, got)
            if base:
                got, old_size = ingest_rate(base, stream, d / f"{shape}-old-{r}.sqlite")
                old = max(old, got)
            plain = max(plain, baseline_rate(recs, d / f"{shape}-base-{r}.sqlite"))
            for f in d.glob(f"{shape}-*{r}.sqlite*"):
                f.unlink()
        old = old or float("nan")
        print(f"{shape:>8} {n:>10,} {rate:>14,.0f} {old:>10,.0f} {rate / old:>6.2f} "
              f"{plain:>12,.0f} {verdict(shape == 'flows' or rate >= INGEST_TARGET):>7} "
              f"{size / n:>9.1f} {old_size / n:>9.1f}")


def pages_table(args: argparse.Namespace, d: Path, now: float,
                base: ModuleType | None) -> None:
    from auditd.store import Store
    from auditd.web import WRITER

    old_state, state = d / "old", d / "day"
    old_state.mkdir()
    state.mkdir()
    target = socket.inet_aton("198.51.100.7")
    t = time.monotonic()
    synthesize_day(base or auditd, old_state / "audit.sqlite", now, args.keys_per_minute,
                   args.records, target)
    built = time.monotonic() - t
    shutil.copy(old_state / "audit.sqlite", state / "audit.sqlite")
    t = time.monotonic()
    Store(state / "audit.sqlite").close()
    upgraded = time.monotonic() - t
    size = (state / "audit.sqlite").stat().st_size
    print(f"\npages over 24 h: {args.keys_per_minute} roll-up keys/minute "
          f"({args.keys_per_minute * 1440:,} rows), {args.records:,} full records; DB "
          f"{(old_state / 'audit.sqlite').stat().st_size / 2**20:,.0f} MiB old, built in "
          f"{built:.0f} s; upgraded in place in {upgraded:.0f} s to {size / 2**20:,.0f} MiB")
    day = f"from={now - 24 * 3600:.0f}&to={now:.0f}"
    paths = [f"/dst/198.51.100.7?{day}", f"/dst/198.51.100.7.json?{day}",
             f"/slice/site_s3?{day}", f"/chart.svg?{day}", f"/?from={now - 3600:.0f}&to={now:.0f}"]
    new = asyncio.run(latency(auditor_app(auditd, state, now), paths, args.runs, WRITER))
    old: list[list[float]] = [[float("nan")]] * len(paths)
    if base:
        old = asyncio.run(latency(auditor_app(base, old_state, now), paths, args.old_runs))
    bare = asyncio.run(latency(bare_app(), paths[:1], args.runs))[0]
    print(f"{'GET':>44} {'p50 ms':>7} {'p99 ms':>7} {'old p50':>8} {'old p99':>8} "
          f"{'target':>7}")
    for path, times, was in zip(paths, new, old, strict=True):
        print(f"{path[:44]:>44} {statistics.median(times) * 1000:>7.1f} "
              f"{pct(times, 0.99) * 1000:>7.1f} {statistics.median(was) * 1000:>8.1f} "
              f"{pct(was, 0.99) * 1000:>8.1f} {verdict(pct(times, 0.99) < PAGE_TARGET_S):>7}")
    print(f"{'bare aiohttp (HTTP alone)':>44} {statistics.median(bare) * 1000:>7.1f} "
          f"{pct(bare, 0.99) * 1000:>7.1f}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--packets", type=int, default=1_500_000, help="flows-shaped records")
    ap.add_argument("--scan-packets", type=int, default=300_000)
    ap.add_argument("--keys-per-minute", type=int, default=2000)
    ap.add_argument("--records", type=int, default=5_000_000,
                    help="full records in the synthesized day (the disk bound's share)")
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--old-runs", type=int, default=10, help="runs of each old page")
    ap.add_argument("--rounds", type=int, default=3, help="ingest rounds (best counts)")
    ap.add_argument("--baseline-rev", help="git revision of the old path")
    ap.add_argument("--no-baseline", action="store_true", help="measure the current code only")
    ap.add_argument("--only", choices=("ingest", "pages"), help="one of the two parts")
    args = ap.parse_args(argv)
    now = float(int(time.time()))
    with tempfile.TemporaryDirectory(prefix="slicectl-auditbench-") as tmp:
        d = Path(tmp)
        found = None if args.no_baseline else baseline_package(args.baseline_rev, d / "pkg")
        base = found[0] if found else None
        if found:
            print(f"old path: auditd/ at {found[1]}")
        if args.only != "pages":
            ingest_table(args, d, now, base)
        if args.only != "ingest":
            pages_table(args, d, now, base)
    return 0


if __name__ == "__main__":
    sys.exit(main())
