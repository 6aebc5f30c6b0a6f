"""The auditor's SQLite store: full packet records, per-minute roll-ups, drop counts.

One writer (the ingest thread) and any number of readers (the web handlers, each query in
a worker thread with its own connection). WAL lets readers see committed data while the
writer appends.

Tables:

- ``records``: the full records (time, src, dst, ports, proto, TCP flags, IP length) of
  every packet a sliver sent, as the sniffer's own 32-byte records, in chunks indexed by
  (dst, first time): a batch's first record to each destination goes to one of the batch's
  scatter chunks, at most 4096, picked by a keyed hash of the address
  (:mod:`auditd.scatter`), its next ones to a row per (batch, slice, destination) holding
  them back to back. A row per packet with an index on dst inserts at ~100k rows/s on
  these machines, a row per scanned address at ~60k/s; chunks keep the hot path to a few
  thousand small rows per batch and still answer "what went to this address" from the
  index. Addresses are the raw 4 network-order bytes as a BLOB, as the sniffer sends them.
  Kept for ``window_s`` and within the disk bound.
- ``rollup``: per (minute, slice, dst, proto, dport): packets, bytes, first and last
  seen, written in the same transaction as the records they count, so a crash never
  leaves a packet counted twice or not at all. Kept for ``rollup_s``. Keyed by minute
  first, so new rows go to the end of the table and the summaries of a window read one
  key range; one index on (dst, minute) answers ``/dst/<ip>``. Two b-trees per new key,
  plus the summaries the triggers keep (:mod:`auditd.schema`: tallies, per slice and
  minute, per slice, hour and key), which the pages read instead of every row.
- ``rollup_folded``: per (minute, slice), what a slice sent past its ``rollup_rows``
  distinct (dst, proto, dport) keys in that minute: packets, bytes, first and last seen,
  and how many other keys (``keys``; ``saturated`` when there were more than could be
  told apart, so ``keys`` is a lower bound). A slice scanning random addresses at its
  ceiling thus adds at most ``rollup_rows`` + 1 rows a minute, and cannot push other
  slices' roll-ups out of the disk bound by sheer number of keys.
- ``drops``: cumulative counts by source (``kernel``, ``consumer``, ``unknown`` as the
  sniffer reports them; ``auditor`` for records this auditor itself could not queue).
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slicectl.core.errors import StateError

from . import recent, schema

INSERT_RECORDS = "INSERT INTO records VALUES (?,?,?,?,?,?)"
UPSERT_ROLLUP = """
INSERT INTO rollup VALUES (?,?,?,?,?,?,?,?,?)
ON CONFLICT (minute, sid, dst, proto, dport) DO UPDATE SET
    packets = packets + excluded.packets, bytes = bytes + excluded.bytes,
    first = min(first, excluded.first), last = max(last, excluded.last)
"""

UPSERT_FOLDED = """
INSERT INTO rollup_folded VALUES (?,?,?,?,?,?,?,?)
ON CONFLICT (minute, sid) DO UPDATE SET
    keys = keys + excluded.keys, saturated = max(saturated, excluded.saturated),
    packets = packets + excluded.packets, bytes = bytes + excluded.bytes,
    first = min(first, excluded.first), last = max(last, excluded.last)
"""

DROP_SOURCES = ("kernel", "consumer", "unknown", "auditor")
#: full-record chunks the time window looks at per step
EXPIRE_STEP = 16_384

#: A chunk of records: sid, dst, first time, last time, count, the records.
Chunk = tuple[int, bytes, float, float, int, bytes]
#: A roll-up row: minute, sid, dst, proto, dport, packets, bytes, first, last.
Roll = tuple[int, int, bytes, int, int, int, int, float, float]
#: A folded row: minute, sid, keys, saturated, packets, bytes, first, last.
Fold = tuple[int, int, int, int, int, int, float, float]


@dataclass(frozen=True)
class Limits:
    """How much the store keeps.

    Args:
        window_s: full packet records are kept this long (default 24 h).
        rollup_s: per-minute roll-ups are kept this long (default 30 days).
        max_bytes: the database may use at most this many bytes of pages; past it the
            oldest packet records go first, then the oldest roll-ups.
        rollup_rows: roll-up rows a slice may add per minute (distinct destination,
            protocol and port); its other destinations that minute fold into one row of
            ``rollup_folded``. At ~45 bytes a row, a slice at this bound all month holds
            ~0.5 GB of roll-ups with the default.
    """

    window_s: float = 24 * 3600
    rollup_s: float = 30 * 24 * 3600
    max_bytes: int = 2 << 30
    rollup_rows: int = 256


def connect(path: Path, readonly: bool = False) -> sqlite3.Connection:
    if readonly:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)
    else:
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA busy_timeout = 10000")
    # Sorts and GROUP BYs in memory: a service container's root fs is read-only.
    conn.execute("PRAGMA temp_store = MEMORY")
    return conn


class Store:
    """The writer side. Not thread-safe: one thread writes (see :mod:`auditd.ingest`)."""

    def __init__(self, path: Path, limits: Limits | None = None) -> None:
        self.path = path
        self.limits = limits or Limits()
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.db = connect(path)
            # auto_vacuum must be chosen before the first table exists; INCREMENTAL lets
            # the disk bound give pages back to the file system after deleting.
            self.db.execute("PRAGMA auto_vacuum = INCREMENTAL")
            self.db.execute("PRAGMA journal_mode = WAL")
            self.db.execute("PRAGMA synchronous = NORMAL")
            self.db.execute("PRAGMA journal_size_limit = 67108864")
            # 64 MiB of page cache: inserts at random destinations into the dst indexes
            # stay in memory (measured: 80k -> 120k new roll-up keys/s).
            self.db.execute("PRAGMA cache_size = -65536")
            schema.ensure(self.db)
        except sqlite3.Error as e:
            raise StateError(f"auditor database {path}: expected a usable SQLite file, "
                             f"found {e}") from e
        except StateError as e:
            raise StateError(f"auditor database {path}: {e}") from e
        self._sids: dict[str, int] = dict(
            (name, sid) for sid, name in self.db.execute("SELECT sid, name FROM slices"))
        #: the key of the scatter chunks' hash (:mod:`auditd.scatter`)
        self.scatter_key = int(self.db.execute(
            "SELECT value FROM meta WHERE name = 'scatter_key'").fetchone()[0])
        self._recent = recent.span(self.db)

    def close(self) -> None:
        self.db.close()

    def slice_id(self, name: str) -> int:
        """The store's id for slice ``name`` (created on first sight)."""
        sid = self._sids.get(name)
        if sid is None:
            cur = self.db.execute("INSERT INTO slices (name) VALUES (?)", (name,))
            sid = int(cur.lastrowid or 0)
            self._sids[name] = sid
        return sid

    def write(self, chunks: Iterable[Chunk], rolls: Iterable[Roll],
              drops: dict[str, int] | None = None, folds: Iterable[Fold] = ()) -> None:
        """Insert ``chunks``, add ``rolls`` to the roll-ups, ``folds`` to the folded rows
        and ``drops`` to the drop counts, in one transaction."""
        db = self.db
        chunks = list(chunks)
        db.execute("BEGIN IMMEDIATE")
        try:
            db.executemany(INSERT_RECORDS, chunks)
            if chunks:
                db.execute("UPDATE tallies SET chunks = chunks + ?, records = records + ?",
                           (len(chunks), sum(c[4] for c in chunks)))
            db.executemany(UPSERT_ROLLUP, rolls)
            db.executemany(UPSERT_FOLDED, folds)
            for source, n in (drops or {}).items():
                if n:
                    db.execute("INSERT INTO drops VALUES (?, ?) ON CONFLICT (source) DO UPDATE "
                               "SET count = count + excluded.count", (source, n))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def slide(self, now: float) -> None:
        """Keep the last hour's summaries (:mod:`auditd.recent`) on the hour before ``now``."""
        if recent.wanted(now) != self._recent:
            recent.slide(self.db, now)
            self._recent = recent.wanted(now)

    # retention --------------------------------------------------------------------------

    def used_bytes(self) -> int:
        """Bytes of pages in use (the file minus its free list) plus the WAL."""
        page = int(self.db.execute("PRAGMA page_size").fetchone()[0])
        count = int(self.db.execute("PRAGMA page_count").fetchone()[0])
        free = int(self.db.execute("PRAGMA freelist_count").fetchone()[0])
        wal = self.path.with_name(self.path.name + "-wal")
        return (count - free) * page + (wal.stat().st_size if wal.exists() else 0)

    def file_bytes(self) -> int:
        wal = self.path.with_name(self.path.name + "-wal")
        return self.path.stat().st_size + (wal.stat().st_size if wal.exists() else 0)

    def expire(self, now: float, chunk: int = 200_000) -> dict[str, int]:
        """Apply the time windows and the disk bound; return how many rows went where.

        The disk bound deletes the oldest full records first (``chunk`` rows at a time),
        then the oldest minutes of roll-ups, until the pages in use fit.
        """
        db = self.db
        gone = {"records": 0, "rollup": 0}
        cutoff = now - self.limits.rollup_s
        # Chunks arrive in time order, so the expired ones are the lowest rowids: delete
        # from the front, ``step`` rows at a time, until a batch is not all expired (no
        # full scan of the table, which has no index on time; and a small step, as every
        # 30 s the first batch is read whether anything expired or not: 200,000 chunks of
        # a few KB are hundreds of MB read beside the pages).
        step = min(chunk, EXPIRE_STEP)
        while True:
            n = db.execute("DELETE FROM records WHERE rowid IN (SELECT rowid FROM records "
                           "ORDER BY rowid LIMIT ?) AND t1 < ?",
                           (step, now - self.limits.window_s)).rowcount
            gone["records"] += n
            if n < step:
                break
        gone["rollup"] += self._delete_rollups(cutoff)
        self._checkpoint()
        while self.used_bytes() > self.limits.max_bytes:
            lo = db.execute("SELECT min(rowid) FROM records").fetchone()[0]
            if lo is not None:
                gone["records"] += db.execute("DELETE FROM records WHERE rowid < ?",
                                              (lo + chunk,)).rowcount
            else:
                first = db.execute("SELECT min(m) FROM (SELECT min(minute) AS m FROM rollup "
                                   "UNION ALL SELECT min(minute) FROM rollup_folded)"
                                   ).fetchone()[0]
                if first is None:
                    break
                gone["rollup"] += self._delete_rollups(first + 1)
            self._checkpoint()
        return gone

    def _delete_rollups(self, before: float) -> int:
        """Delete the roll-up and folded rows of the minutes before ``before`` and their
        minute summaries; the hour summaries of every hour they may have touched go too,
        and the pages read those hours from the minutes left (``meta.hour_floor``)."""
        db = self.db
        gone = sum(db.execute(f"DELETE FROM {table} WHERE minute < ?", (before,)).rowcount
                   for table in ("rollup", "rollup_folded"))
        db.execute("DELETE FROM slice_minute WHERE minute < ?", (before,))
        floor = -(-int(before) // 3600) * 3600
        db.execute("UPDATE meta SET value = max(value, ?) WHERE name = 'hour_floor'", (floor,))
        db.execute("DELETE FROM slice_hour WHERE sid IN (SELECT sid FROM slices) AND hour < ?",
                   (floor,))
        return gone

    def _checkpoint(self) -> None:
        self.db.execute("PRAGMA incremental_vacuum")
        self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")


class Reader:
    """Read-only queries, one connection per thread (handlers run them in an executor)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._local = threading.local()

    def _db(self) -> sqlite3.Connection:
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None:
            db = connect(self.path, readonly=True)
            self._local.db = db
        return db

    def all(self, sql: str, args: Iterable[Any] = ()) -> list[tuple[Any, ...]]:
        return self._db().execute(sql, tuple(args)).fetchall()

    @contextlib.contextmanager
    def snapshot(self) -> Iterator[None]:
        """Run the queries inside on one snapshot of the file (a read transaction)."""
        db = self._db()
        db.execute("BEGIN")
        try:
            yield
        finally:
            db.execute("COMMIT")

    def meta(self, name: str) -> int:
        """A number the writer keeps in ``meta`` (``scatter_key``, ``hour_floor``)."""
        return int(self.all("SELECT value FROM meta WHERE name = ?", (name,))[0][0])

    def drops(self) -> dict[str, int]:
        got = dict(self.all("SELECT source, count FROM drops"))
        return {s: int(got.get(s, 0)) for s in DROP_SOURCES}
