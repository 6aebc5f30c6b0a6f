"""The auditor's ingest and store: records, roll-ups, drops, restart, retention, disk bound."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from auditd import query as q
from auditd.ingest import Recorder, Writer
from auditd.store import Limits, Reader, Store
from slicectl.core import sniffrecord as sr
from slicectl.core.errors import ValidationError

from .auditd_helpers import hello, rec

T0 = 1_795_000_020.0  # a whole minute
SLICES = sr.Frame(sr.SLICES, b'{"1": "site_one", "2": "site_two"}')


def frames(*recs: bytes) -> sr.Frame:
    return sr.Frame(sr.RECORDS, b"".join(recs))


def rollup(db: Path) -> list[tuple[object, ...]]:
    return Reader(db).all(
        "SELECT minute, s.name, dst, proto, dport, packets, bytes, first, last FROM rollup "
        "JOIN slices s USING (sid) ORDER BY 1, 2, 3, 5")


def stored_times(db: Path) -> list[float]:
    """The times of every full record kept, in order."""
    data = b"".join(d for (d,) in Reader(db).all("SELECT data FROM records"))
    return sorted(r[0] for r in sr.RECORD.iter_unpack(data))


def test_outgoing_records_are_stored_whole_and_rolled_up_per_minute(tmp_path: Path) -> None:
    db = tmp_path / "a.sqlite"
    r = Recorder(Store(db))
    r.feed(SLICES)
    sent = [rec(T0 + 1, 1, "198.18.0.2", 80, length=100),
            rec(T0 + 2, 1, "198.18.0.2", 80, length=60, flags=0x12),
            rec(T0 + 61, 1, "198.18.0.2", 80, length=40),
            rec(T0 + 3, 2, "198.18.0.2", 53, proto=17, length=70),
            rec(T0 + 4, 2, "198.18.0.9", 443, length=50)]
    r.feed(frames(*sent, rec(T0 + 5, 1, "198.18.0.2", way=sr.IN)))  # incoming: not kept
    assert r.flush() == 5
    dst = socket.inet_aton("198.18.0.2")
    assert rollup(db) == [
        (T0, "site_one", dst, 6, 80, 2, 160, T0 + 1, T0 + 2),
        (T0, "site_two", dst, 17, 53, 1, 70, T0 + 3, T0 + 3),
        (T0, "site_two", socket.inet_aton("198.18.0.9"), 6, 443, 1, 50, T0 + 4, T0 + 4),
        (T0 + 60, "site_one", dst, 6, 80, 1, 40, T0 + 61, T0 + 61)]
    got = Reader(db).all("SELECT data FROM records ORDER BY t0")
    assert sorted(sr.RECORD.iter_unpack(b"".join(d for (d,) in got))) == sorted(
        sr.RECORD.unpack(x) for x in sent)


def test_a_later_batch_adds_to_the_same_minute(tmp_path: Path) -> None:
    db = tmp_path / "a.sqlite"
    r = Recorder(Store(db))
    r.feed(SLICES)
    r.feed(frames(rec(T0 + 10, 1, "198.18.0.2", length=100)))
    r.flush()
    r.feed(frames(rec(T0 + 5, 1, "198.18.0.2", length=10), rec(T0 + 20, 1, "198.18.0.2")))
    r.flush()
    [(_m, _s, _d, _p, _port, packets, nbytes, first, last)] = rollup(db)
    assert (packets, nbytes, first, last) == (3, 170, T0 + 5, T0 + 20)


def test_unknown_xid_is_kept_under_a_placeholder(tmp_path: Path) -> None:
    db = tmp_path / "a.sqlite"
    r = Recorder(Store(db))
    r.feed(frames(rec(T0, 77, "198.18.0.2")))
    r.flush()
    assert [row[1] for row in rollup(db)] == ["xid-77"]


def test_drop_counts_accumulate_across_sniffer_restarts(tmp_path: Path) -> None:
    db = tmp_path / "a.sqlite"
    r = Recorder(Store(db))
    hello_frame = next(sr.split_frames(bytearray(hello())))
    r.feed(hello_frame)
    r.feed(sr.Frame(sr.DROPS, b'{"kernel": 5, "consumer": 1, "unknown": 0}'))
    r.feed(sr.Frame(sr.DROPS, b'{"kernel": 7, "consumer": 1, "unknown": 3}'))
    r.feed(hello_frame)  # the sniffer restarted: its counts start again
    r.feed(sr.Frame(sr.DROPS, b'{"kernel": 2, "consumer": 0, "unknown": 0}'))
    r.flush()
    assert Reader(db).drops() == {"kernel": 9, "consumer": 1, "unknown": 3, "auditor": 0}


def test_a_hello_of_another_version_is_refused(tmp_path: Path) -> None:
    r = Recorder(Store(tmp_path / "a.sqlite"))
    with pytest.raises(sr.FrameError, match="version"):
        r.feed(sr.Frame(sr.HELLO, b'{"version": 2, "record_size": 40}'))


def test_restart_loses_no_stored_records(tmp_path: Path) -> None:
    db = tmp_path / "a.sqlite"
    store = Store(db)
    r = Recorder(store)
    r.feed(SLICES)
    r.feed(frames(*(rec(T0 + i, 1, "198.18.0.2") for i in range(50))))
    r.flush()
    store.close()
    r2 = Recorder(Store(db))  # a new process, same file
    r2.feed(sr.Frame(sr.SLICES, b'{"5": "site_two", "6": "site_three"}'))
    r2.feed(frames(*(rec(T0 + i, 5, "198.18.0.2") for i in range(30))))
    r2.flush()
    counts = {row[1]: row[5] for row in rollup(db)}
    assert counts == {"site_one": 50, "site_two": 30}
    assert q.totals(Reader(db))["records"] == 80


def test_writer_counts_what_it_could_not_queue(tmp_path: Path) -> None:
    db = tmp_path / "a.sqlite"
    w = Writer(Store(db), max_queued=10, clock=lambda: T0 + 60)
    w.put(SLICES)
    w.put(frames(*(rec(T0, 1, "198.18.0.2") for _ in range(8))))
    w.put(frames(*(rec(T0, 1, "198.18.0.3") for _ in range(5))))  # would exceed 10: dropped
    w.start()
    w.sync()
    w.stop()
    assert Reader(db).drops()["auditor"] == 5
    assert q.totals(Reader(db))["records"] == 8


def test_time_windows_expire_records_then_rollups(tmp_path: Path) -> None:
    db = tmp_path / "a.sqlite"
    store = Store(db, Limits(window_s=3600, rollup_s=86400, max_bytes=1 << 30, rollup_rows=3))
    r = Recorder(store)
    r.feed(SLICES)
    for i in range(4):  # four old batches (the fourth folds), then a new one
        r.feed(frames(rec(T0 + i, 1, f"198.18.0.{i + 10}")))
        r.flush()
    r.feed(frames(rec(T0 + 7200, 1, "198.18.0.3"), rec(T0 + 7201, 1, "198.18.0.4"),
                  rec(T0 + 7202, 1, "198.18.0.5"), rec(T0 + 7203, 1, "198.18.0.6")))
    r.flush()
    assert store.expire(now=T0 + 7200 + 10, chunk=2)["records"] == 4
    assert stored_times(db) == [T0 + 7200 + i for i in range(4)]
    assert len(rollup(db)) == 6  # roll-ups outlive full records
    assert [row[0] for row in folded_rows(db)] == [T0, T0 + 7200]
    store.expire(now=T0 + 86400 + 100)
    assert [row[0] for row in rollup(db)] == [T0 + 7200] * 3
    assert [row[0] for row in folded_rows(db)] == [T0 + 7200]


def test_disk_bound_deletes_oldest_first_and_the_file_shrinks(tmp_path: Path) -> None:
    db = tmp_path / "a.sqlite"
    bound = 3 << 20
    store = Store(db, Limits(max_bytes=bound))
    r = Recorder(store)
    r.feed(SLICES)
    for batch in range(40):  # ~40 x 5000 records x 32 bytes ~ 6.4 MB of records
        r.feed(frames(*(rec(T0 + batch * 60 + i / 1000, 1, f"198.18.{i % 50}.{batch}")
                        for i in range(5000))))
        r.flush()
        store.expire(now=T0 + batch * 60)
    assert store.used_bytes() <= bound
    assert store.file_bytes() <= bound + (1 << 20)
    kept = Reader(db).all("SELECT min(t0), max(t1) FROM records")[0]
    assert kept[1] >= T0 + 39 * 60  # the newest survive
    assert kept[0] > T0 + 60  # the oldest went


DAY = 86400.0
KEEP = 30 * DAY


@pytest.mark.parametrize(("params", "field", "says"), [
    ({"from": "yesterday"}, "from", "an ISO 8601 time"),
    ({"to": "2026-13-01"}, "to", "an ISO 8601 time"),
    ({"from": str(T0 - 60), "to": str(T0 - 120)}, "from", "a time before to"),
    ({"from": "nan"}, "from", "an ISO 8601 time"),
    ({"from": "NaN"}, "from", "an ISO 8601 time"),
    ({"from": "inf"}, "from", "an ISO 8601 time"),
    ({"from": "-inf"}, "from", "an ISO 8601 time"),
    ({"from": "1e400"}, "from", "an ISO 8601 time"),        # inf as a float
    ({"to": "nan"}, "to", "an ISO 8601 time"),
    ({"from": "0001-01-01T00:00+23:59"}, "from", "a time from"),  # before year 1 in UTC
    ({"from": "1e20"}, "from", "a time from"),
    ({"from": "-5"}, "from", "a time from"),
    ({"from": "0"}, "from", "a time from"),
    ({"to": "-5"}, "to", "a time from"),
    ({"from": "9999-12-31T23:59:59Z"}, "from", "a time from"),
    ({"from": str(T0 - KEEP - 60)}, "from", "the roll-ups are kept 30 days"),  # past retention
    ({"to": str(T0 + 2 * DAY)}, "to", "a time from"),
])
def test_bad_windows_name_the_field(params: dict[str, str], field: str, says: str) -> None:
    with pytest.raises(ValidationError) as err:
        q.parse_window(params, T0, KEEP)
    assert err.value.field == field
    assert says in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize(("params", "window"), [
    ({}, q.Window(T0 - 3600, T0)),
    ({"from": str(T0 - KEEP)}, q.Window(T0 - KEEP, T0)),          # the whole retention
    ({"from": str(T0 - 2 * DAY), "to": str(T0 - DAY)},            # past the full records:
     q.Window(T0 - 2 * DAY, T0 - DAY)),                           # roll-ups answer
    ({"to": str(T0 - KEEP + 600)}, q.Window(T0 - KEEP, T0 - KEEP + 600)),  # default start kept in
    ({"to": str(T0 + DAY)}, q.Window(T0 + DAY - 3600, T0 + DAY)),
])
def test_windows_within_the_retention(params: dict[str, str], window: q.Window) -> None:
    assert q.parse_window(params, T0, KEEP) == window


@pytest.mark.parametrize(("text", "expected"), [
    ("2026-11-27T20:00Z", 1_795_809_600.0),
    ("2026-11-27T20:00", 1_795_809_600.0),
    ("2026-11-27T21:00+01:00", 1_795_809_600.0),
    ("1795809600", 1_795_809_600.0),
])
def test_times_parse_as_utc(text: str, expected: float) -> None:
    assert q.parse_time("from", text) == expected


def test_config_from_a_service_environment() -> None:
    from auditd.config import AuditConfig

    cfg = AuditConfig.from_env({"SLICECTL_SERVICE_STATE": "/var/lib/slicectl-service",
                                "SLICECTL_SNIFFER_SOCK": "/run/slicectl/sniffer/records.sock",
                                "SLICECTL_NM_SOCK": "/run/slicectl/nm/nm.sock",
                                "SLICECTL_SERVICE_PORT": "8080",
                                "SLICECTL_AUDIT_MAX_BYTES": "1000000"})
    assert (cfg.db_path, cfg.port, cfg.limits.max_bytes) == (
        Path("/var/lib/slicectl-service/audit.sqlite"), 8080, 1_000_000)
    with pytest.raises(ValidationError, match="SLICECTL_AUDIT_WINDOW_S"):
        AuditConfig.from_env({"SLICECTL_AUDIT_WINDOW_S": "a day"})


def test_auditd_imports_only_what_the_service_image_carries() -> None:
    import ast

    from slicectl.node.services import SHARED_PACKAGES

    carried = {p.removeprefix("slicectl/") for p in SHARED_PACKAGES}
    root = Path(__file__).resolve().parents[2] / "auditd"
    for path in root.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.ImportFrom) or node.level or not node.module:
                continue
            if node.module == "slicectl":
                used = {a.name for a in node.names}
            elif node.module.startswith("slicectl."):
                used = {node.module.split(".")[1]}
            else:
                continue
            assert used <= carried, f"{path.name} imports slicectl {sorted(used - carried)}"


def test_records_to_an_address_newest_first_and_counted_in_all(tmp_path: Path) -> None:
    db = tmp_path / "a.sqlite"
    r = Recorder(Store(db))
    r.feed(SLICES)
    for batch in range(10):  # 10 chunks of 30 records to one address, 1 s apart
        r.feed(frames(*(rec(T0 + batch * 30 + i, 1 + i % 2, "198.18.0.2", sport=i)
                        for i in range(30))))
        r.feed(frames(rec(T0 + batch * 30, 1, "198.18.0.3")))
        r.flush()
    reader = Reader(db)
    dst = socket.inet_aton("198.18.0.2")
    # whole minutes, as the roll-ups count: [T0 + 60, T0 + 300)
    got, total = q.records_to(reader, dst, q.Window(T0 + 75, T0 + 290.5), limit=40)
    assert total == 240
    assert [row["time"] for row in got] == [
        f"{q.iso(T0 + 299 - k)[:-1]}.000Z" for k in range(40)]
    assert {row["slice"] for row in got} == {"site_one", "site_two"}
    _, everything = q.records_to(reader, dst, q.Window(T0, T0 + 1000), limit=5)
    assert everything == 300


class CountingNM:
    """The directory's source boundary: answers get_sliver for any name, counting calls."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, ...]] = []

    def call(self, method: str, *args: str) -> dict[str, str]:
        self.calls.append((method, *args))
        return {"name": args[0], "description": f"about {args[0]}"}


async def test_the_directory_cache_is_bounded_least_recently_used_first() -> None:
    from auditd.directory import Directory

    nm = CountingNM()
    d = Directory(nm, ttl_s=3600, max_entries=3)
    for name in ("a", "b", "c", "a", "d"):  # a is used again before d comes: b goes
        assert (await d.slice(name)).description == f"about {name}"
    assert len(d._cache) == 3
    assert [c[1] for c in nm.calls] == ["a", "b", "c", "d"]
    await d.slice("a")
    assert len(nm.calls) == 4  # still cached
    await d.slice("b")
    assert [c[1] for c in nm.calls][-1] == "b" and len(d._cache) == 3
    for i in range(1000):  # an outsider asking for /slice/<any name>
        await d.slice(f"x{i}")
    assert len(d._cache) == 3


# the roll-up cap: a scanning slice folds, the others keep their history -----------------------

def addr(i: int) -> str:
    return socket.inet_ntoa((0xC6120000 + i).to_bytes(4, "big"))  # 198.18.x.y


def folded_rows(db: Path) -> list[tuple[object, ...]]:
    return Reader(db).all(
        "SELECT minute, s.name, keys, saturated, packets, bytes FROM rollup_folded "
        "JOIN slices s USING (sid) ORDER BY 1, 2")


def rows_per(db: Path) -> dict[tuple[int, str], int]:
    return {(m, n): c for m, n, c in Reader(db).all(
        "SELECT minute, s.name, count(*) FROM rollup JOIN slices s USING (sid) GROUP BY 1, 2")}


def capped(tmp_path: Path, rows: int = 10, **kw: object) -> tuple[Path, Recorder]:
    db = tmp_path / "a.sqlite"
    r = Recorder(Store(db, Limits(rollup_rows=rows)), **kw)  # type: ignore[arg-type]
    r.feed(SLICES)
    return db, r


def test_a_scanning_slice_keeps_its_cap_of_rows_and_folds_the_rest(tmp_path: Path) -> None:
    db, r = capped(tmp_path, rows=10)
    r.feed(frames(*(rec(T0 + i * 0.01, 1, addr(i), length=40) for i in range(1000)),
                  rec(T0 + 5, 2, "192.0.2.1", 80, length=100)))
    r.flush()
    assert rows_per(db) == {(T0, "site_one"): 10, (T0, "site_two"): 1}
    assert folded_rows(db) == [(T0, "site_one", 990, 0, 990, 990 * 40)]
    assert Reader(db).all("SELECT sum(n) FROM records")[0][0] == 1001  # full records whole
    kept = {socket.inet_ntoa(d) for (d,) in Reader(db).all(
        "SELECT dst FROM rollup WHERE sid = (SELECT sid FROM slices WHERE name = 'site_one')")}
    assert kept == {addr(i) for i in range(10)}  # the first ten, in arrival order


@pytest.mark.parametrize(
    ("batches", "rows", "folds"),
    [
        # a key admitted in one batch keeps its row in the next; a new one folds
        ([[0, 1], [0, 2]], {0: 2, 1: 1}, (1, 0, 1)),
        # a folded key folded again counts once
        ([[0, 1, 2], [2], [2, 3]], {0: 1, 1: 1}, (2, 0, 4)),
        # within one batch too
        ([[0, 1, 2, 2, 3, 3]], {0: 1, 1: 1}, (2, 0, 4)),
    ],
)
def test_the_cap_holds_across_batches(tmp_path: Path, batches: list[list[int]],
                                      rows: dict[int, int], folds: tuple[int, int, int]) -> None:
    db, r = capped(tmp_path, rows=2)
    t = T0
    for batch in batches:
        for i in batch:
            t += 0.1
            r.feed(frames(rec(t, 1, addr(i))))
        r.flush()
    got = {int.from_bytes(d, "big") - 0xC6120000: p
           for d, p in Reader(db).all("SELECT dst, packets FROM rollup")}
    assert got == rows
    assert folded_rows(db)[0][2:5] == folds


def test_each_minute_has_its_own_cap(tmp_path: Path) -> None:
    db, r = capped(tmp_path, rows=3)
    r.feed(frames(*(rec(T0 + 60 * m + i, 1, addr(100 * m + i)) for m in range(3)
                    for i in range(5))))
    r.flush()
    assert rows_per(db) == {(T0 + 60 * m, "site_one"): 3 for m in range(3)}
    assert [(f[0], f[2]) for f in folded_rows(db)] == [(T0 + 60 * m, 2) for m in range(3)]


def test_folded_keys_past_the_tracking_bound_are_a_lower_bound(tmp_path: Path) -> None:
    db, r = capped(tmp_path, rows=1, fold_track=5)
    r.feed(frames(*(rec(T0 + i * 0.01, 1, addr(i)) for i in range(20))))
    r.flush()
    assert folded_rows(db) == [(T0, "site_one", 5, 1, 19, 19 * 60)]
    shown = q.folded(Reader(db), q.Window(T0, T0 + 59))
    assert [(f["slice"], f["other_destinations"]) for f in shown] == [("site_one", "5+")]


def test_a_late_record_for_a_forgotten_minute_folds(tmp_path: Path) -> None:
    db, r = capped(tmp_path, rows=5)
    r.feed(frames(rec(T0, 1, addr(0))))
    r.flush()
    r.feed(frames(rec(T0 + 600, 1, addr(1))))  # ten minutes on: T0 is forgotten
    r.flush()
    r.feed(frames(rec(T0 + 1, 1, addr(0)), rec(T0 + 2, 1, addr(2))))  # late ones for T0
    r.flush()
    assert rows_per(db) == {(T0, "site_one"): 1, (T0 + 600, "site_one"): 1}
    assert folded_rows(db) == [(T0, "site_one", 0, 1, 2, 120)]


@pytest.mark.parametrize(("rollup_rows", "kept"), [(50, True), (1_000_000, False)])
def test_a_scan_cannot_push_other_slices_out_of_the_history(
        tmp_path: Path, rollup_rows: int, kept: bool) -> None:
    """Another slice's one old roll-up row survives a 30-minute scan to 150,000 addresses
    under the disk bound with the cap; without it (a cap no scan reaches) it is erased."""
    db = tmp_path / "a.sqlite"
    store = Store(db, Limits(max_bytes=3 << 20, rollup_rows=rollup_rows))
    r = Recorder(store)
    r.feed(SLICES)
    r.feed(frames(rec(T0, 2, "192.0.2.1", 80)))
    r.flush()
    for m in range(1, 31):
        r.feed(frames(*(rec(T0 + 60 * m + i / 5000, 1, addr(m * 5000 + i))
                        for i in range(5000))))
        r.flush()
        store.expire(now=T0 + 60 * m + 59)
    assert store.used_bytes() <= 3 << 20
    old = Reader(db).all("SELECT count(*) FROM rollup WHERE minute = ?", (T0,))[0][0]
    assert (old == 1) is kept
    if kept:
        assert sum(f[4] for f in folded_rows(db)) == 30 * (5000 - 50)


def test_config_bounds_rollup_rows() -> None:
    from auditd.config import AuditConfig

    assert AuditConfig.from_env({}).limits.rollup_rows == Limits.rollup_rows
    assert AuditConfig.from_env({"SLICECTL_AUDIT_ROLLUP_ROWS": "64"}).limits.rollup_rows == 64
    with pytest.raises(ValidationError, match="SLICECTL_AUDIT_ROLLUP_ROWS: expected a number >= 1"):
        AuditConfig.from_env({"SLICECTL_AUDIT_ROLLUP_ROWS": "0"})


def test_the_chart_and_totals_count_folded_bytes(tmp_path: Path) -> None:
    db, r = capped(tmp_path, rows=1)
    r.feed(frames(*(rec(T0 + i, 1, addr(i), length=100) for i in range(4))))
    r.flush()
    w = q.Window(T0, T0 + 59)
    _, series = q.series(Reader(db), w)
    assert series == [("site_one", [400])]
    assert q.totals(Reader(db))["folded_rows"] == 1
