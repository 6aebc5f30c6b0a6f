"""PLC benchmark: PLCAPI latencies and server CPU per call on a PlanetLab-sized database,
on SQLite and on PostgreSQL, beside a bare aiohttp XML-RPC echo of the same payloads
measured in the same run.

The database (1,000 sites, 10,000 persons, 20,000 slices, 1,000 nodes with 100 slivers
each, 100,000 slice tags at ``--scale 1``) is written straight into the tables, then a real
``slicectl plc serve`` (plain HTTP on loopback) answers ``xmlrpc.client`` calls one at a
time. "server CPU" is the server process's user+system time per call (/proc), so
"calls/s/core" is what one core of PLC sustains. No root needed except for PostgreSQL,
which runs as its own cluster in a temporary directory.

Run: ``.venv/bin/python bench/plc_bench.py [--scale 0.1] [--db sqlite,postgresql]``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
import xmlrpc.client
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import insert, text

from slicectl.plc import schema as s
from slicectl.plc.auth import hash_password, hmac_value
from slicectl.plc.bootstrap import seed
from slicectl.plc.db import Database
from slicectl.testbed.plc import Server, start_server, stop_server
from slicectl.testbed.postgres import cluster

KEY = ("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAedTThpXyowOnVlyTamP51PoT4OP2uPOGgEKsAZjr81 "
       "bench@example.org")
TAGS = ("cpu_share", "vref", "initscript_code", "net_max_rate", "disk_max")
SLIVERS_PER_NODE = 100
FAR = 2**31 - 1


def populate(db: Database, scale: float) -> dict[str, int]:
    """Bulk rows with explicit ids; PostgreSQL's sequences are moved past them."""
    n_sites = max(2, int(1000 * scale))
    per_site_persons, per_site_slices = 10, 20
    now = int(time.time())
    pw = hash_password("bench", n=2**10)
    with db.transaction(write=True) as c:
        tt = dict(c.execute(text("SELECT tagname, tag_type_id FROM tag_types")).all())
        c.execute(insert(s.sites), [
            {"site_id": i, "login_base": f"site{i}", "name": f"Site {i}", "abbreviated_name": f"S{i}",
             "is_public": True, "enabled": True, "max_slices": 100000, "max_slivers": 1000,
             "date_created": now, "last_updated": now} for i in range(1, n_sites + 1)])
        persons = [(site, site * 100 + j) for site in range(1, n_sites + 1)
                   for j in range(per_site_persons)]
        c.execute(insert(s.persons), [
            {"person_id": pid, "email": f"p{pid}@site{site}.org", "email_lc": f"p{pid}@site{site}.org",
             "first_name": "P", "last_name": str(pid), "enabled": True, "password_hash": pw,
             "date_created": now, "last_updated": now} for site, pid in persons])
        c.execute(insert(s.person_site), [{"person_id": pid, "site_id": site, "is_primary": True}
                                          for site, pid in persons])
        c.execute(insert(s.person_role), [{"person_id": pid, "role_id": 20 if pid % 100 == 0 else 30}
                                          for _, pid in persons])
        c.execute(insert(s.keys), [{"key_id": pid, "person_id": pid, "key_type": "ssh", "key": KEY}
                                   for _, pid in persons])
        c.execute(insert(s.nodes), [
            {"node_id": i, "site_id": i, "hostname": f"node{i}.site{i}.org",
             "hostname_lc": f"node{i}.site{i}.org", "node_type": "regular", "boot_state": "boot",
             "node_key": f"benchkey{i}", "date_created": now, "last_updated": now}
            for i in range(1, n_sites + 1)])
        slices = [(site, site * 100 + j) for site in range(1, n_sites + 1)
                  for j in range(per_site_slices)]
        c.execute(insert(s.slices), [
            {"slice_id": sid, "site_id": site, "name": f"site{site}_s{sid}",
             "instantiation": "plc-instantiated", "url": "https://example.org",
             "description": "bench slice", "max_nodes": 100, "created": now, "expires": FAR}
            for site, sid in slices])
        c.execute(insert(s.slice_person), [
            {"slice_id": sid, "person_id": site * 100 + k} for site, sid in slices for k in (1, 2)])
        # each node carries exactly SLIVERS_PER_NODE slices (slice k on nodes k*5..k*5+4)
        spread = SLIVERS_PER_NODE * n_sites // len(slices)
        c.execute(insert(s.slice_node), [
            {"slice_id": sid, "node_id": (k * spread + m) % n_sites + 1}
            for k, (_, sid) in enumerate(slices) for m in range(spread)])
        c.execute(insert(s.slice_tags), [
            {"slice_id": sid, "tag_type_id": tt[name], "value": str(i),
             "node_id": ((k * spread) % n_sites + 1) if name == "cpu_share" and k % 2 else None}
            for k, (_, sid) in enumerate(slices) for i, name in enumerate(TAGS)])
        if not db.is_sqlite:
            for table, col in (("sites", "site_id"), ("persons", "person_id"), ("keys", "key_id"),
                               ("nodes", "node_id"), ("slices", "slice_id"),
                               ("slice_tags", "slice_tag_id")):
                c.execute(text(f"SELECT setval(pg_get_serial_sequence('{table}', '{col}'), "
                               f"(SELECT max({col}) FROM {table}))"))
    with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as c:
        c.execute(text("ANALYZE"))  # what autovacuum does to a real PLC's bulk-loaded tables
    return {"sites": n_sites, "persons": len(persons), "slices": len(slices),
            "nodes": n_sites, "slice_tags": len(slices) * len(TAGS),
            "slivers_per_node": spread * len(slices) // n_sites}


# measuring --------------------------------------------------------------------------------------

def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Row:
    def __init__(self, name: str, lat: list[float], cpu: float, size: int) -> None:
        self.name, self.lat, self.cpu, self.size = name, lat, cpu, size

    @property
    def p50(self) -> float:
        return statistics.median(self.lat) * 1000

    @property
    def p99(self) -> float:
        return sorted(self.lat)[min(len(self.lat) - 1, int(0.99 * len(self.lat)))] * 1000

    @property
    def cpu_ms(self) -> float:
        return self.cpu / len(self.lat) * 1000


def measure(name: str, pid: int, n: int, fn: Callable[[int], Any]) -> tuple[Row, Any]:
    fn(0)
    lat: list[float] = []
    result: Any = None
    c0 = cpu_s(pid)
    for i in range(n):
        t = time.perf_counter()
        result = fn(i + 1)
        lat.append(time.perf_counter() - t)
    cpu = cpu_s(pid) - c0
    size = len(xmlrpc.client.dumps((result,), methodresponse=True, allow_none=True))
    return Row(name, lat, cpu, size), result


# the baseline: a bare aiohttp XML-RPC echo ---------------------------------------------------------

def echo_server(port: int) -> None:
    from aiohttp import web

    pool = ThreadPoolExecutor(8)

    def work(body: bytes) -> bytes:
        params, _ = xmlrpc.client.loads(body)
        return xmlrpc.client.dumps((params[0],), methodresponse=True, allow_none=True).encode()

    async def handle(request: web.Request) -> web.Response:
        body = await request.read()
        out = await asyncio.get_running_loop().run_in_executor(pool, work, body)
        return web.Response(body=out, content_type="text/xml")

    app = web.Application(client_max_size=64 << 20)
    app.router.add_post("/RPC2", handle)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


@contextmanager
def echo() -> Iterator[tuple[xmlrpc.client.ServerProxy, int]]:
    import socket
    with socket.socket() as so:
        so.bind(("127.0.0.1", 0))
        port = so.getsockname()[1]
    proc = subprocess.Popen([sys.executable, __file__, "--echo", str(port)])
    proxy = xmlrpc.client.ServerProxy(f"http://127.0.0.1:{port}/RPC2", allow_none=True)
    try:
        for _ in range(200):
            try:
                proxy.echo(1)
                break
            except OSError:
                time.sleep(0.05)
        yield proxy, proc.pid
    finally:
        proc.terminate()
        proc.wait()


# one database kind -------------------------------------------------------------------------------

def run_kind(kind: str, url: str | None, scale: float, n: int, state: Path) -> list[Row]:
    db = Database(url or str(state / "plc.sqlite"))
    seed(db)
    t = time.perf_counter()
    sizes = populate(db, scale)
    print(f"[{kind}] populated {sizes} in {time.perf_counter() - t:.1f} s", flush=True)
    db.close()
    server: Server = start_server(state, url, plain=True)
    rows: list[Row] = []
    try:
        p, pid = server.proxy(), server.proc.pid
        session = {"AuthMethod": "session", "session": p.GetSession(server.root)}
        n_sites = sizes["sites"]
        names = [f"site{(i * 7) % n_sites + 1}_s{((i * 7) % n_sites + 1) * 100 + i % 20}"
                 for i in range(n + 1)]
        row, res = measure("GetSlices by name", pid, n, lambda i: p.GetSlices(session, names[i]))
        assert len(res) == 1
        rows.append(row)
        row, res = measure("GetSlices by id", pid, n,
                           lambda i: p.GetSlices(session, ((i * 7) % n_sites + 1) * 100 + 3))
        rows.append(row)
        row, res = measure("GetSlices struct filter", pid, n, lambda i: p.GetSlices(
            session, {"site_id": (i % n_sites) + 1, "name": "site*_s*", "-SORT": "-name",
                      "-LIMIT": 10}, ["slice_id", "name", "expires", "node_ids"]))
        assert len(res) == 10
        rows.append(row)
        row, _ = measure("AddSlice", pid, n,
                         lambda i: p.AddSlice(session, {"name": f"site1_bench{i}_{os.getpid()}"}))
        rows.append(row)

        def slivers(i: int) -> Any:
            nid = (i % n_sites) + 1
            auth = {"AuthMethod": "hmac", "node_id": nid, "value": hmac_value(f"benchkey{nid}", [])}
            return p.GetSlivers(auth)

        row, res = measure("GetSlivers (100 slivers)", pid, n, slivers)
        assert len(res["slivers"]) == sizes["slivers_per_node"], len(res["slivers"])
        rows.append(row)
        # the same nodes again, nothing changed since their last poll: the cached answer
        row, again = measure("GetSlivers, unchanged since last poll", pid, n, slivers)
        assert {**again, "timestamp": 0} == {**res, "timestamp": 0}
        rows.append(row)
        payloads = {"GetSlices by name": p.GetSlices(session, names[0]),
                    "GetSlivers (100 slivers)": res}
    finally:
        stop_server(server)
    with echo() as (proxy, epid):
        for name, payload in payloads.items():
            row, _ = measure(f"echo, payload of {name}", epid, n, lambda i, v=payload: proxy.echo(v))
            rows.append(row)
    return rows


def report(kind: str, rows: list[Row]) -> None:
    print(f"\n{kind}: one client, calls one at a time over loopback HTTP")
    print(f"{'call':42} {'p50 ms':>8} {'p99 ms':>8} {'server CPU ms':>14} {'calls/s/core':>13} "
          f"{'bytes':>8}")
    for r in rows:
        per_s = 1000 / r.cpu_ms if r.cpu_ms > 0 else float("inf")
        print(f"{r.name:42} {r.p50:8.2f} {r.p99:8.2f} {r.cpu_ms:14.2f} {per_s:13.0f} {r.size:8}")
    gs = next(r for r in rows if r.name.startswith("GetSlivers"))
    warm = next(r for r in rows if r.name.startswith("GetSlivers, unchanged"))
    print(f"1,000 nodes calling GetSlivers once a minute: {1000 / 60 * warm.cpu_ms / 10:.1f}% of a "
          f"core when their views are unchanged since their last poll, "
          f"{1000 / 60 * gs.cpu_ms / 10:.1f}% when every poll follows a change (target < 10%)")
    by_id = next(r for r in rows if r.name == "GetSlices by id")
    print(f"targets: Get by id p50 {by_id.p50:.2f} ms (<= 5), GetSlivers p50 {gs.p50:.2f} ms (<= 20)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--db", default="sqlite,postgresql")
    ap.add_argument("-n", type=int, default=200, help="calls per row")
    ap.add_argument("--echo", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.echo:
        echo_server(args.echo)
        return
    for kind in args.db.split(","):
        with tempfile.TemporaryDirectory(prefix=f"plc-bench-{kind}-") as tmp:
            if kind == "sqlite":
                report(kind, run_kind(kind, None, args.scale, args.n, Path(tmp)))
            elif kind == "postgresql":
                with cluster() as pg:
                    report(kind, run_kind(kind, pg.database("plc_bench"), args.scale, args.n,
                                          Path(tmp)))
            else:
                raise SystemExit(f"--db: expected sqlite or postgresql, got {kind!r}")


if __name__ == "__main__":
    main()
