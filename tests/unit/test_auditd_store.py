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
    store = Store(db, Limits(window_s=3600, rollup_s=86400, max_bytes=1 << 30))
    r = Recorder(store)
    r.feed(SLICES)
    for i in range(3):  # three old batches, then a new one
        r.feed(frames(rec(T0 + i, 1, f"198.18.0.{i + 10}")))
        r.flush()
    r.feed(frames(rec(T0 + 7200, 1, "198.18.0.3")))
    r.flush()
    assert store.expire(now=T0 + 7200 + 10, chunk=2)["records"] == 3
    reader = Reader(db)
    assert [t for (t,) in reader.all("SELECT t0 FROM records")] == [T0 + 7200]
    assert len(rollup(db)) == 4  # roll-ups outlive full records
    store.expire(now=T0 + 86400 + 100)
    assert [row[0] for row in rollup(db)] == [T0 + 7200]


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


@pytest.mark.parametrize(("params", "field"), [
    ({"from": "yesterday"}, "from"),
    ({"to": "2026-13-01"}, "to"),
    ({"from": "2026-11-27T10:00Z", "to": "2026-11-27T09:00Z"}, "from"),
])
def test_bad_windows_name_the_field(params: dict[str, str], field: str) -> None:
    with pytest.raises(ValidationError) as err:
        q.parse_window(params, T0)
    assert err.value.field == field


@pytest.mark.parametrize(("text", "expected"), [
    ("2026-11-27T20:00Z", 1_795_809_600.0),
    ("2026-11-27T20:00", 1_795_809_600.0),
    ("2026-11-27T21:00+01:00", 1_795_809_600.0),
    ("1795809600", 1_795_809_600.0),
])
def test_times_parse_as_utc(text: str, expected: float) -> None:
    assert q.parse_time("from", text) == expected


def test_default_window_is_the_last_hour() -> None:
    assert q.parse_window({}, T0) == q.Window(T0 - 3600, T0)


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
