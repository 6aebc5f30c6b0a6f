"""The last hour, kept as it slides: what ``/`` shows by default without adding up an
hour of roll-ups per request.

The writer keeps, for the span of whole minutes [now's minute - 60, now's minute - 1]
(``meta.recent_from`` .. ``meta.recent_to``), per destination its bytes and roll-up rows
(``recent_dst``, indexed by bytes), and per slice the destinations and ports it sent to, with
their roll-up rows (``recent_sd``, ``recent_sp``). Triggers add every roll-up row written
into that span (a late record too) in the same transaction; when the clock's minute moves on,
:func:`slide` adds the minute that entered and takes out the one that left. The default
window of ``/`` is that span plus the current minute, which the pages read from the roll-ups
(a minute of rows), so:

- the top destinations by bytes are the span's top ones (one index range) merged with the
  current minute's, exact: a destination not sent to this minute keeps its span bytes;
- a slice's distinct destinations and ports are the span's plus the current minute's new
  ones.

Any other window reads the roll-ups (and ``slice_hour``) instead.
"""

from __future__ import annotations

import sqlite3

TABLES = """
CREATE TABLE IF NOT EXISTS recent_dst (
    dst BLOB PRIMARY KEY, bytes INTEGER NOT NULL, n INTEGER NOT NULL) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS recent_dst_bytes ON recent_dst (bytes DESC, dst);
CREATE TABLE IF NOT EXISTS recent_sd (
    sid INTEGER NOT NULL, dst BLOB NOT NULL, n INTEGER NOT NULL,
    PRIMARY KEY (sid, dst)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS recent_sp (
    sid INTEGER NOT NULL, port INTEGER NOT NULL, n INTEGER NOT NULL,
    PRIMARY KEY (sid, port)) WITHOUT ROWID;
"""

_IN_SPAN = ("{row}.minute BETWEEN (SELECT value FROM meta WHERE name = 'recent_from')"
            " AND (SELECT value FROM meta WHERE name = 'recent_to')")


def _add(row: str, nbytes: str, n: str) -> str:
    """Statements adding roll-up row ``row`` (NEW/OLD) with ``nbytes`` bytes, ``n`` rows."""
    return f"""
    INSERT INTO recent_dst VALUES ({row}.dst, {nbytes}, {n})
        ON CONFLICT (dst) DO UPDATE SET bytes = bytes + excluded.bytes, n = n + excluded.n;
    INSERT INTO recent_sd VALUES ({row}.sid, {row}.dst, {n})
        ON CONFLICT (sid, dst) DO UPDATE SET n = n + excluded.n;
    INSERT INTO recent_sp VALUES ({row}.sid, {row}.proto * 65536 + {row}.dport, {n})
        ON CONFLICT (sid, port) DO UPDATE SET n = n + excluded.n;
    DELETE FROM recent_dst WHERE dst = {row}.dst AND n <= 0;
    DELETE FROM recent_sd WHERE sid = {row}.sid AND dst = {row}.dst AND n <= 0;
    DELETE FROM recent_sp WHERE sid = {row}.sid AND port = {row}.proto * 65536 + {row}.dport
        AND n <= 0;"""


TRIGGERS = f"""
CREATE TRIGGER IF NOT EXISTS recent_in AFTER INSERT ON rollup WHEN {_IN_SPAN.format(row="NEW")}
BEGIN {_add("NEW", "NEW.bytes", "1")} END;
CREATE TRIGGER IF NOT EXISTS recent_up AFTER UPDATE ON rollup WHEN {_IN_SPAN.format(row="NEW")}
BEGIN {_add("NEW", "NEW.bytes - OLD.bytes", "0")} END;
CREATE TRIGGER IF NOT EXISTS recent_out AFTER DELETE ON rollup WHEN {_IN_SPAN.format(row="OLD")}
BEGIN {_add("OLD", "-OLD.bytes", "-1")} END;
"""

#: each adds ?1 times the roll-up rows of minutes ?2 to ?3
ADD_MINUTES = (
    "INSERT INTO recent_dst SELECT dst, ?1 * sum(bytes), ?1 * count(*) FROM rollup"
    " WHERE minute BETWEEN ?2 AND ?3 GROUP BY dst ON CONFLICT (dst) DO UPDATE"
    " SET bytes = bytes + excluded.bytes, n = n + excluded.n",
    "INSERT INTO recent_sd SELECT sid, dst, ?1 * count(*) FROM rollup"
    " WHERE minute BETWEEN ?2 AND ?3 GROUP BY sid, dst ON CONFLICT (sid, dst) DO UPDATE"
    " SET n = n + excluded.n",
    "INSERT INTO recent_sp SELECT sid, proto * 65536 + dport, ?1 * count(*) FROM rollup"
    " WHERE minute BETWEEN ?2 AND ?3 GROUP BY 1, 2 ON CONFLICT (sid, port) DO UPDATE"
    " SET n = n + excluded.n",
)
RECENT_TABLES = ("recent_dst", "recent_sd", "recent_sp")


def span(db: sqlite3.Connection) -> tuple[int, int]:
    """The whole minutes (first, last) the recent tables hold; last < first: none."""
    got = dict(db.execute("SELECT name, value FROM meta WHERE name IN "
                          "('recent_from', 'recent_to')").fetchall())
    return int(got.get("recent_from", 0)), int(got.get("recent_to", -1))


def wanted(now: float) -> tuple[int, int]:
    """The span for clock time ``now``: the 60 whole minutes before its minute."""
    minute = int(now // 60) * 60
    return minute - 3600, minute - 60


def _minutes(db: sqlite3.Connection, lo: int, hi: int, sign: int) -> None:
    """Add (``sign`` 1) or take out (-1) the roll-ups of minutes ``lo`` to ``hi``."""
    for sql in ADD_MINUTES:
        db.execute(sql, (sign, lo, hi))


def slide(db: sqlite3.Connection, now: float) -> None:
    """Move the span to :func:`wanted` (``now``), in one transaction: add the minutes that
    entered, take out those that left, or rebuild when the two do not overlap."""
    old_from, old_to = span(db)
    new_from, new_to = wanted(now)
    if (old_from, old_to) == (new_from, new_to):
        return
    db.execute("BEGIN IMMEDIATE")
    try:
        if old_to < old_from or new_from > old_to or new_to < old_from:
            for table in RECENT_TABLES:
                db.execute(f"DELETE FROM {table}")
            _minutes(db, new_from, new_to, 1)
        else:
            if new_from > old_from:
                _minutes(db, old_from, new_from - 60, -1)
            if new_from < old_from:
                _minutes(db, new_from, old_from - 60, 1)
            if new_to > old_to:
                _minutes(db, old_to + 60, new_to, 1)
            if new_to < old_to:
                _minutes(db, new_to + 60, old_to, -1)
            for table in RECENT_TABLES:
                db.execute(f"DELETE FROM {table} WHERE n <= 0")
        db.executemany("INSERT INTO meta VALUES (?, ?) ON CONFLICT (name) DO UPDATE "
                       "SET value = excluded.value",
                       [("recent_from", new_from), ("recent_to", new_to)])
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
