"""The auditor's tables, the triggers that keep its summaries, and the upgrade of an older file.

``PRAGMA user_version`` is the schema's version: 0 for a file of an auditor before the
summaries (or a new, empty file), :data:`VERSION` now. :func:`ensure` brings any older file
up to date in one transaction (the summaries and tallies computed from the rows it holds),
so an auditor restarted on an old database carries on; a file of a newer auditor is refused.

Summaries, written in the transaction that writes the rows they count (by triggers, so
they never disagree with the rows):

- ``tallies``: one row of counts (full-record chunks and records, roll-up and folded rows),
  what the pages' "Stored:" line says without counting millions of rows. Chunks written
  are counted by :meth:`auditd.store.Store.write` (a trigger per chunk cost a scan 0.5 us a
  record), deleted ones by a trigger.
- ``slice_minute``: per (minute, slice) packets, bytes, first and last seen, folded rows
  included: the charts and the per-slice totals.
- ``slice_hour``: per (slice, hour, dst, proto, dport) what the roll-ups of that hour add up
  to: a day of one slice is 24 reads of its key range instead of a scan of every slice's
  minutes. Hours before ``meta.hour_floor`` (partly expired) are not used.
- the last hour as it slides (:mod:`auditd.recent`).
"""

from __future__ import annotations

import secrets
import sqlite3

from slicectl.core.errors import StateError

from . import recent

VERSION = 2

TABLES = """
CREATE TABLE IF NOT EXISTS slices (sid INTEGER PRIMARY KEY, name TEXT UNIQUE NOT NULL);
CREATE TABLE IF NOT EXISTS records (
    sid INTEGER NOT NULL, dst BLOB NOT NULL, t0 REAL NOT NULL, t1 REAL NOT NULL,
    n INTEGER NOT NULL, data BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS records_dst ON records (dst, t0);
CREATE TABLE IF NOT EXISTS rollup (
    minute INTEGER NOT NULL, sid INTEGER NOT NULL, dst BLOB NOT NULL, proto INTEGER NOT NULL,
    dport INTEGER NOT NULL, packets INTEGER NOT NULL, bytes INTEGER NOT NULL,
    first REAL NOT NULL, last REAL NOT NULL,
    PRIMARY KEY (minute, sid, dst, proto, dport)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS rollup_dst ON rollup (dst, minute);
CREATE TABLE IF NOT EXISTS rollup_folded (
    minute INTEGER NOT NULL, sid INTEGER NOT NULL, keys INTEGER NOT NULL,
    saturated INTEGER NOT NULL, packets INTEGER NOT NULL, bytes INTEGER NOT NULL,
    first REAL NOT NULL, last REAL NOT NULL,
    PRIMARY KEY (minute, sid)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS drops (source TEXT PRIMARY KEY, count INTEGER NOT NULL);
"""

SUMMARIES = """
CREATE TABLE meta (name TEXT PRIMARY KEY, value) WITHOUT ROWID;
CREATE TABLE tallies (
    one INTEGER PRIMARY KEY CHECK (one = 1), chunks INTEGER NOT NULL,
    records INTEGER NOT NULL, rollup_rows INTEGER NOT NULL, folded_rows INTEGER NOT NULL);
CREATE TABLE slice_minute (
    minute INTEGER NOT NULL, sid INTEGER NOT NULL, packets INTEGER NOT NULL,
    bytes INTEGER NOT NULL, first REAL NOT NULL, last REAL NOT NULL,
    PRIMARY KEY (minute, sid)) WITHOUT ROWID;
CREATE TABLE slice_hour (
    sid INTEGER NOT NULL, hour INTEGER NOT NULL, dst BLOB NOT NULL, proto INTEGER NOT NULL,
    dport INTEGER NOT NULL, packets INTEGER NOT NULL, bytes INTEGER NOT NULL,
    first REAL NOT NULL, last REAL NOT NULL,
    PRIMARY KEY (sid, hour, dst, proto, dport)) WITHOUT ROWID;
"""

_ADD_MINUTE = """
INSERT INTO slice_minute VALUES (NEW.minute, NEW.sid, {p}, {b}, NEW.first, NEW.last)
ON CONFLICT (minute, sid) DO UPDATE SET
    packets = packets + excluded.packets, bytes = bytes + excluded.bytes,
    first = min(first, excluded.first), last = max(last, excluded.last);
"""
_ADD_HOUR = """
INSERT INTO slice_hour VALUES (NEW.sid, NEW.minute - NEW.minute % 3600, NEW.dst, NEW.proto,
                               NEW.dport, {p}, {b}, NEW.first, NEW.last)
ON CONFLICT (sid, hour, dst, proto, dport) DO UPDATE SET
    packets = packets + excluded.packets, bytes = bytes + excluded.bytes,
    first = min(first, excluded.first), last = max(last, excluded.last);
"""
_NEW = {"p": "NEW.packets", "b": "NEW.bytes"}
_DELTA = {"p": "NEW.packets - OLD.packets", "b": "NEW.bytes - OLD.bytes"}

TRIGGERS = f"""
CREATE TRIGGER records_out AFTER DELETE ON records BEGIN
    UPDATE tallies SET chunks = chunks - 1, records = records - OLD.n; END;
CREATE TRIGGER rollup_in AFTER INSERT ON rollup BEGIN
    UPDATE tallies SET rollup_rows = rollup_rows + 1;
    {_ADD_MINUTE.format(**_NEW)} {_ADD_HOUR.format(**_NEW)} END;
CREATE TRIGGER rollup_up AFTER UPDATE ON rollup BEGIN
    {_ADD_MINUTE.format(**_DELTA)} {_ADD_HOUR.format(**_DELTA)} END;
CREATE TRIGGER rollup_out AFTER DELETE ON rollup BEGIN
    UPDATE tallies SET rollup_rows = rollup_rows - 1; END;
CREATE TRIGGER folded_in AFTER INSERT ON rollup_folded BEGIN
    UPDATE tallies SET folded_rows = folded_rows + 1; {_ADD_MINUTE.format(**_NEW)} END;
CREATE TRIGGER folded_up AFTER UPDATE ON rollup_folded BEGIN
    {_ADD_MINUTE.format(**_DELTA)} END;
CREATE TRIGGER folded_out AFTER DELETE ON rollup_folded BEGIN
    UPDATE tallies SET folded_rows = folded_rows - 1; END;
"""

#: the summaries of the rows already there (an upgraded file)
BACKFILL = """
INSERT INTO tallies SELECT 1, (SELECT count(*) FROM records),
    (SELECT coalesce(sum(n), 0) FROM records), (SELECT count(*) FROM rollup),
    (SELECT count(*) FROM rollup_folded);
INSERT INTO slice_minute
    SELECT minute, sid, sum(packets), sum(bytes), min(first), max(last) FROM (
        SELECT minute, sid, packets, bytes, first, last FROM rollup UNION ALL
        SELECT minute, sid, packets, bytes, first, last FROM rollup_folded)
    GROUP BY minute, sid;
INSERT INTO slice_hour
    SELECT sid, minute - minute % 3600, dst, proto, dport, sum(packets), sum(bytes),
           min(first), max(last)
    FROM rollup GROUP BY 1, 2, 3, 4, 5;
"""


def ensure(db: sqlite3.Connection) -> None:
    """Create the tables, or bring an older file's up to :data:`VERSION`.

    Raises:
        StateError: the file is of a newer auditor.
    """
    version = int(db.execute("PRAGMA user_version").fetchone()[0])
    if version == VERSION:
        return
    if version > VERSION:
        raise StateError(f"expected schema version {VERSION} or older, found {version} "
                         "(written by a newer auditor)")
    key = secrets.randbits(32) | 1  # an int, safe to put in the script
    try:
        db.executescript(
            "BEGIN IMMEDIATE;" + TABLES + SUMMARIES + BACKFILL + TRIGGERS + recent.TABLES +
            recent.TRIGGERS +
            f"INSERT INTO meta VALUES ('scatter_key', {key}), ('hour_floor', 0);"
            f"PRAGMA user_version = {VERSION}; COMMIT;")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise
