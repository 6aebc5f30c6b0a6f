"""The auditor's summaries and scatter chunks: what the pages read instead of every row must
say what every row says; an older database is upgraded in place."""

from __future__ import annotations

import random
import socket
import sqlite3
from pathlib import Path

import pytest

from auditd import query as q
from auditd import schema
from auditd.ingest import Recorder
from auditd.store import Limits, Reader, Store
from slicectl.core import sniffrecord as sr
from slicectl.core.errors import StateError

from .auditd_helpers import rec

T0 = 1_795_000_000.0 - 1_795_000_000.0 % 3600  # a whole hour
NAMES = sr.Frame(sr.SLICES, b'{"1": "site_one", "2": "site_two", "3": "site_three"}')


def addr(i: int) -> str:
    return socket.inet_ntoa((0xC6120000 + i).to_bytes(4, "big"))


def fed(tmp_path: Path, hours: float = 3, rollup_rows: int = 20, seed: int = 1,
        ) -> tuple[Path, Store]:
    """A store fed ``hours`` of mixed traffic: flows, a scan past the cap, two ports."""
    db = tmp_path / "a.sqlite"
    store = Store(db, Limits(rollup_rows=rollup_rows))
    r = Recorder(store)
    r.feed(NAMES)
    rnd = random.Random(seed)
    t = T0 + 1800
    while t < T0 + 1800 + hours * 3600:
        batch = [rec(t + i * 0.3, rnd.choice((1, 2)), addr(rnd.randrange(30)),
                     rnd.choice((80, 443)), length=rnd.randrange(40, 1500)) for i in range(40)]
        batch += [rec(t + i * 0.2, 3, addr(1000 + rnd.randrange(1 << 20)), 80, length=40)
                  for i in range(60)]  # site_three scans
        r.feed(sr.Frame(sr.RECORDS, b"".join(batch)))
        r.flush()
        t += 420
    return db, store


def reference_from_slice(reader: Reader, name: str, w: q.Window) -> list[tuple[object, ...]]:
    return reader.all(
        "SELECT dst, proto, dport, sum(packets), sum(bytes), min(first), max(last) FROM rollup"
        " WHERE sid = (SELECT sid FROM slices WHERE name = ?) AND minute >= ? AND minute <= ?"
        " GROUP BY dst, proto, dport ORDER BY 5 DESC, 1, 2, 3",
        (name, w.first_minute, w.last_minute))


def reference_by_slice(reader: Reader, w: q.Window) -> dict[str, tuple[object, ...]]:
    rows = reader.all(
        "SELECT s.name, sum(packets), sum(bytes), count(DISTINCT dst) FROM ("
        " SELECT sid, packets, bytes, dst FROM rollup WHERE minute >= ? AND minute <= ?"
        " UNION ALL SELECT sid, packets, bytes, NULL FROM rollup_folded"
        " WHERE minute >= ? AND minute <= ?) JOIN slices s USING (sid) GROUP BY 1",
        (w.first_minute, w.last_minute) * 2)
    return {str(r[0]): tuple(r[1:]) for r in rows}


WINDOWS = [(0, 3 * 3600), (1800, 3 * 3600 + 1800), (600, 4000), (3600, 7200), (2000, 2100)]


@pytest.mark.parametrize(("start", "end"), WINDOWS)
def test_pages_read_from_summaries_say_what_the_rows_say(tmp_path: Path, start: int,
                                                         end: int) -> None:
    db, _ = fed(tmp_path)
    reader = Reader(db)
    w = q.Window(T0 + start, T0 + end)
    for name in ("site_one", "site_three"):
        got = [(socket.inet_aton(x["dst"]), x["packets"], x["bytes"], x["first"], x["last"])
               for x in q.from_slice(reader, name, w)]
        want = [(d, p, b, q.iso(f), q.iso(la))
                for d, _pr, _dp, p, b, f, la in reference_from_slice(reader, name, w)]
        assert got == want
    want_slices = reference_by_slice(reader, w)
    assert {x["slice"]: (x["packets"], x["bytes"], x["destinations"])
            for x in q.by_slice(reader, w)} == want_slices
    dsts = {x["dst"]: (x["packets"], x["bytes"]) for x in q.by_destination(reader, w)}
    want_dsts = reader.all(
        "SELECT dst, sum(packets), sum(bytes) FROM rollup WHERE minute >= ? AND minute <= ?"
        " GROUP BY dst ORDER BY 3 DESC, 1 LIMIT 500", (w.first_minute, w.last_minute))
    assert dsts == {socket.inet_ntoa(d): (p, b) for d, p, b in want_dsts}
    _, series = q.series(reader, w)
    assert {n: sum(v) for n, v in series} == {k: v[1] for k, v in want_slices.items()}


def test_hours_partly_expired_are_read_from_their_minutes(tmp_path: Path) -> None:
    db, store = fed(tmp_path)
    store.limits = Limits(rollup_s=3 * 3600, rollup_rows=20)
    store.expire(now=T0 + 4 * 3600 + 1200)  # deletes the minutes before T0 + 1h 20min
    reader = Reader(db)
    w = q.Window(T0 + 3600, T0 + 4 * 3600)
    assert reader.meta("hour_floor") == T0 + 2 * 3600
    got = [(socket.inet_aton(x["dst"]), x["packets"]) for x in q.from_slice(reader, "site_one", w)]
    assert got == [(d, p) for d, _pr, _dp, p, *_ in reference_from_slice(reader, "site_one", w)]
    assert got


def test_totals_are_the_rows_counted(tmp_path: Path) -> None:
    db, store = fed(tmp_path)
    store.limits = Limits(window_s=3600, rollup_s=2 * 3600, rollup_rows=20)
    store.expire(now=T0 + 4 * 3600)
    reader = Reader(db)
    got = q.totals(reader)
    chunks, records, t0, t1 = reader.all("SELECT count(*), sum(n), min(t0), max(t1) FROM records")[0]
    assert (got["record_chunks"], got["records"]) == (chunks, records)
    assert (got["records_from"], got["records_to"]) == (q.iso(t0), q.iso(t1))
    assert got["rollup_rows"] == reader.all("SELECT count(*) FROM rollup")[0][0]
    assert got["folded_rows"] == reader.all("SELECT count(*) FROM rollup_folded")[0][0]


def test_a_scan_is_stored_in_few_chunks_and_each_address_finds_its_records(
        tmp_path: Path) -> None:
    db = tmp_path / "a.sqlite"
    r = Recorder(Store(db, Limits(rollup_rows=10)))
    r.feed(NAMES)
    scan = [rec(T0 + i * 0.001, 1 + i % 3, addr(i), 80, sport=i % 1000) for i in range(20000)]
    r.feed(sr.Frame(sr.RECORDS, b"".join(scan)))
    r.feed(sr.Frame(sr.RECORDS, b"".join(rec(T0 + 30 + i, 2, "192.0.2.1") for i in range(3))))
    r.flush()
    reader = Reader(db)
    chunks = reader.all("SELECT count(*) FROM records")[0][0]
    assert chunks < 5000  # scatter chunks, not one a packet
    w = q.Window(T0, T0 + 59)
    for i in (0, 1, 4321, 19999):
        got, total = q.records_to(reader, socket.inet_aton(addr(i)), w)
        assert total == 1
        assert [(g["slice"], g["sport"]) for g in got] == [
            (("site_one", "site_two", "site_three")[i % 3], i % 1000)]
    got, total = q.records_to(reader, socket.inet_aton("192.0.2.1"), w)
    assert total == 3 and {g["slice"] for g in got} == {"site_two"}
    assert q.records_to(reader, socket.inet_aton("203.0.113.1"), w) == ([], 0)


OLD_SCHEMA = """
CREATE TABLE slices (sid INTEGER PRIMARY KEY, name TEXT UNIQUE NOT NULL);
CREATE TABLE records (sid INTEGER NOT NULL, dst BLOB NOT NULL, t0 REAL NOT NULL,
    t1 REAL NOT NULL, n INTEGER NOT NULL, data BLOB NOT NULL);
CREATE INDEX records_dst ON records (dst, t0);
CREATE TABLE rollup (minute INTEGER NOT NULL, sid INTEGER NOT NULL, dst BLOB NOT NULL,
    proto INTEGER NOT NULL, dport INTEGER NOT NULL, packets INTEGER NOT NULL,
    bytes INTEGER NOT NULL, first REAL NOT NULL, last REAL NOT NULL,
    PRIMARY KEY (minute, sid, dst, proto, dport)) WITHOUT ROWID;
CREATE INDEX rollup_dst ON rollup (dst, minute);
CREATE TABLE rollup_folded (minute INTEGER NOT NULL, sid INTEGER NOT NULL,
    keys INTEGER NOT NULL, saturated INTEGER NOT NULL, packets INTEGER NOT NULL,
    bytes INTEGER NOT NULL, first REAL NOT NULL, last REAL NOT NULL,
    PRIMARY KEY (minute, sid)) WITHOUT ROWID;
CREATE TABLE drops (source TEXT PRIMARY KEY, count INTEGER NOT NULL);
INSERT INTO slices VALUES (1, 'site_one'), (2, 'site_two');
INSERT INTO drops VALUES ('kernel', 7);
"""


def test_an_old_database_is_upgraded_in_place(tmp_path: Path) -> None:
    """A file of the auditor before the summaries: its rows stay, the summaries are made
    from them, and ingest carries on."""
    db = tmp_path / "a.sqlite"
    old = sqlite3.connect(db)
    old.executescript(OLD_SCHEMA)
    target = socket.inet_aton("198.18.0.2")
    blob = rec(T0 + 5, 1, "198.18.0.2") * 2
    old.execute("INSERT INTO records VALUES (1, ?, ?, ?, 2, ?)", (target, T0 + 5, T0 + 5, blob))
    old.executemany("INSERT INTO rollup VALUES (?,?,?,6,80,?,?,?,?)", [
        (T0 + 60 * m, 1 + m % 2, target, 2, 120, T0 + 60 * m, T0 + 60 * m + 1)
        for m in range(90)])
    old.execute("INSERT INTO rollup_folded VALUES (?, 2, 40, 0, 40, 1600, ?, ?)",
                (T0, T0 + 1, T0 + 2))
    old.commit()
    old.close()
    store = Store(db)
    reader = Reader(db)
    assert reader.all("PRAGMA user_version")[0][0] == schema.VERSION
    assert reader.drops()["kernel"] == 7
    totals = q.totals(reader)
    assert (totals["records"], totals["rollup_rows"], totals["folded_rows"]) == (2, 90, 1)
    w = q.Window(T0, T0 + 90 * 60)
    assert [(x["slice"], x["packets"], x["bytes"]) for x in q.by_slice(reader, w)] == [
        ("site_two", 90 + 40, 45 * 120 + 1600), ("site_one", 90, 45 * 120)]
    assert [x["packets"] for x in q.from_slice(reader, "site_one", w)] == [90]
    assert q.records_to(reader, target, w)[1] == 2
    r = Recorder(store)
    r.feed(sr.Frame(sr.SLICES, b'{"9": "site_one"}'))
    r.feed(sr.Frame(sr.RECORDS, rec(T0 + 30, 9, "198.18.0.2", 80, length=100)))
    r.flush()
    assert [x["packets"] for x in q.from_slice(reader, "site_one", w)] == [91]
    assert q.records_to(reader, target, w)[1] == 3
    store.close()
    Store(db).close()  # and opens again as it is


def test_a_database_of_a_newer_auditor_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "a.sqlite"
    Store(db).close()
    conn = sqlite3.connect(db)
    conn.execute(f"PRAGMA user_version = {schema.VERSION + 1}")
    conn.close()
    with pytest.raises(StateError, match="expected schema version"):
        Store(db)


def test_the_last_hour_kept_as_it_slides_says_what_the_rows_say(tmp_path: Path) -> None:
    """``/``'s default window read from the recent span plus the live minute, as the clock
    moves on and late records land in the span, equals the roll-ups added up."""
    db, store = fed(tmp_path, hours=2.5)
    reader = Reader(db)
    r = Recorder(store)
    r.feed(NAMES)
    rnd = random.Random(7)
    now = T0 + 1800 + 3600 + 30
    for step in (0, 60, 120, 420, 30, 3 * 3600, 60):
        now += step
        store.slide(now)
        # late and current records: some into the span, some into the live minute
        r.feed(sr.Frame(sr.RECORDS, b"".join(
            rec(now - rnd.randrange(3000), rnd.choice((1, 2)), addr(rnd.randrange(40)),
                length=rnd.randrange(40, 900)) for _ in range(30))))
        r.flush()
        w = q.parse_window({}, now, 30 * 86400)
        assert q._recent_live(reader, w) is not None
        want_slices = reference_by_slice(reader, w)
        got = {x["slice"]: (x["packets"], x["bytes"], x["destinations"])
               for x in q.by_slice(reader, w)}
        assert got == want_slices
        want_dsts = reader.all(
            "SELECT dst, sum(packets), sum(bytes) FROM rollup WHERE minute >= ? AND"
            " minute <= ? GROUP BY dst ORDER BY 3 DESC, 1 LIMIT 7",
            (w.first_minute, w.last_minute))
        assert [(socket.inet_aton(x["dst"]), x["packets"], x["bytes"])
                for x in q.by_destination(reader, w, limit=7)] == want_dsts
        ports = reader.all(
            "SELECT group_concat(proto * 65536 + dport) FROM rollup WHERE minute >= ? AND"
            " minute <= ? AND sid = 1", (w.first_minute, w.last_minute))[0][0]
        assert [x["ports"] for x in q.by_slice(reader, w) if x["slice"] == "site_one"] == [
            q.port_list(ports)[0]]
