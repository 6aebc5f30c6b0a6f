"""The node manager's state in SQLite: rcaps and slivers.

Every public method is one transaction. A bind is recorded (rcap bound, sliver row in
state ``creating``) before any container exists, so that a node manager killed at any
moment finds on restart what it must finish or undo (see ``NodeManager.reconcile``).
"""

from __future__ import annotations

import functools
import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slicectl.core.errors import AdmissionError, NotFoundError, StateError
from slicectl.core.rspec import RSpec, parse_rspec

SCHEMA = """
CREATE TABLE IF NOT EXISTS rcaps (
    rcap     TEXT PRIMARY KEY,
    rspec    TEXT NOT NULL,
    owner    TEXT NOT NULL,
    parent   TEXT,
    slice    TEXT,
    created  REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS rcaps_slice ON rcaps(slice);
CREATE TABLE IF NOT EXISTS slivers (
    slice        TEXT PRIMARY KEY,
    xid          INTEGER NOT NULL UNIQUE,
    uid          INTEGER NOT NULL DEFAULT -1,
    state        TEXT NOT NULL,
    desired      TEXT NOT NULL,
    container_id TEXT,
    created_by   TEXT NOT NULL,
    created      REAL NOT NULL,
    description  TEXT NOT NULL DEFAULT '',
    contacts     TEXT NOT NULL DEFAULT '[]',
    keys         TEXT NOT NULL DEFAULT '[]',
    initscript   TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS net_usage (
    slice        TEXT NOT NULL,
    day          TEXT NOT NULL,
    bytes        INTEGER NOT NULL DEFAULT 0,
    packets      INTEGER NOT NULL DEFAULT 0,
    last_bytes   INTEGER NOT NULL DEFAULT 0,
    last_packets INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (slice, day)
);
CREATE TABLE IF NOT EXISTS port_claims (
    proto    TEXT NOT NULL,
    port     INTEGER NOT NULL,
    slice    TEXT NOT NULL,
    kind     TEXT NOT NULL,
    created  REAL NOT NULL,
    PRIMARY KEY (proto, port, slice, kind)
);
CREATE INDEX IF NOT EXISTS slivers_by_container ON slivers (container_id);
CREATE TABLE IF NOT EXISTS xid_freed (
    xid      INTEGER PRIMARY KEY,
    freed    REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS slice_names (
    slice    TEXT PRIMARY KEY,
    owner    TEXT NOT NULL,
    since    REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS settings (
    name  TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    at      REAL NOT NULL,
    who     TEXT NOT NULL,
    action  TEXT NOT NULL,
    slice   TEXT,
    detail  TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS events_by_slice ON events (slice, id);
CREATE TABLE IF NOT EXISTS pool (
    xid          INTEGER PRIMARY KEY,
    profile      TEXT NOT NULL,
    state        TEXT NOT NULL,
    container_id TEXT,
    created      REAL NOT NULL
);
-- Bumped by every change of a sliver or an rcap: what the net map is made of. Node
-- services that poll the map ask whether it moved past the generation they hold.
CREATE TABLE IF NOT EXISTS net_generation (n INTEGER NOT NULL);
INSERT INTO net_generation (n) SELECT 0 WHERE NOT EXISTS (SELECT 1 FROM net_generation);
""" + "".join(
    f"CREATE TRIGGER IF NOT EXISTS net_gen_{table}_{op.lower()} AFTER {op} ON {table}\n"
    "    BEGIN UPDATE net_generation SET n = n + 1; END;\n"
    for table in ("slivers", "rcaps") for op in ("INSERT", "UPDATE", "DELETE"))

#: Events kept: the oldest go as new ones come past this many.
EVENTS_KEPT = 100_000

#: Sliver states. ``creating``: recorded, container maybe not yet made or started.
#: ``dormant``: desired running, but stopped by the node for idleness until its next use
#: (see :mod:`slicectl.node.nm.dormancy`).
CREATING, RUNNING, STOPPED, DORMANT = "creating", "running", "stopped", "dormant"
#: A pooled sliver made, started and confined, that a bind may take.
POOL_READY = "ready"
#: A pooled sliver being removed (its xid stays taken until its container is gone).
POOL_DISCARDING = "discarding"


@dataclass(frozen=True)
class RcapRow:
    rcap: str
    rspec: RSpec
    owner: str
    parent: str | None
    slice: str | None
    created: float


@dataclass(frozen=True)
class SliverRow:
    slice: str
    xid: int
    uid: int
    state: str
    desired: str
    container_id: str | None
    created_by: str
    created: float
    description: str = ""
    contacts: list[str] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)
    initscript: str = ""


@dataclass(frozen=True)
class PoolRow:
    """A warm-pool sliver: ``creating`` (being made) or ``ready``."""

    xid: int
    profile: str
    state: str
    container_id: str | None
    created: float


@dataclass(frozen=True)
class EventRow:
    """One thing done to the node or a sliver: when, by whom, what, to which slice."""

    id: int
    at: float
    who: str
    action: str
    slice: str | None
    detail: str


@functools.lru_cache(maxsize=1 << 16)
def _rspec_from_json(text: str) -> RSpec:
    # Stored rspecs were validated on the way in; absolute times parse without "now".
    # RSpec is frozen, so one parse per distinct stored text serves every later read
    # (admission reads all outstanding rspecs at each acquire).
    return parse_rspec(json.loads(text), now=0.0)


#: An xid freed this recently is never given to another sliver: the admin sniffer and
#: the auditor learn of a new xid-to-slice map within seconds, so no record of the old
#: sliver can be taken for the new one's.
XID_QUARANTINE_S = 600.0


def pick_xid(max_xid: int, used: set[int], freed: dict[int, float], now: float,
             quarantine_s: float = XID_QUARANTINE_S) -> int:
    """The xid for a new sliver: the lowest never used, else the one freed longest ago
    and not within ``quarantine_s``.

    Raises:
        AdmissionError: every xid is in use or in quarantine (the node is full).
    """
    fresh = next((x for x in range(1, max_xid + 1) if x not in used and x not in freed), None)
    if fresh is not None:
        return fresh
    old = sorted((t, x) for x, t in freed.items() if x not in used and x <= max_xid)
    if old and old[0][0] <= now - quarantine_s:
        return old[0][1]
    waiting = f"; {len(old)} freed lately, the next free at +{old[0][0] + quarantine_s - now:.0f} s" \
        if old else ""
    raise AdmissionError(f"node full: expected a free security context (xid 1 to {max_xid}), "
                         f"found all in use{waiting}; destroy a sliver first")


class Store:
    """SQLite-backed state, safe to share between the NM's threads."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600, exist_ok=True)
        os.chmod(path, 0o600)  # SQLite gives the -wal and -shm files the same mode
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)
        self._lock = threading.RLock()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        """One immediate transaction; nests (inner calls join the outer one)."""
        with self._lock:
            if self._db.in_transaction:
                yield self._db
                return
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    # rcaps ---------------------------------------------------------------------------

    @staticmethod
    def _rcap(row: sqlite3.Row) -> RcapRow:
        return RcapRow(
            rcap=row["rcap"], rspec=_rspec_from_json(row["rspec"]), owner=row["owner"],
            parent=row["parent"], slice=row["slice"], created=row["created"],
        )

    def add_rcap(self, rcap: str, rspec: RSpec, owner: str, parent: str | None = None) -> None:
        with self.tx() as db:
            db.execute(
                "INSERT INTO rcaps(rcap, rspec, owner, parent, slice, created)"
                " VALUES (?, ?, ?, ?, NULL, ?)",
                (rcap, json.dumps(rspec.to_wire()), owner, parent, time.time()),
            )

    def get_rcap(self, rcap: str) -> RcapRow:
        with self.tx() as db:
            row = db.execute("SELECT * FROM rcaps WHERE rcap = ?", (rcap,)).fetchone()
        if row is None:
            raise NotFoundError(f"rcap {rcap}: no such rcap on this node (released or expired?)")
        return self._rcap(row)

    def rcaps(self, slice_name: str | None = None) -> list[RcapRow]:
        with self.tx() as db:
            if slice_name is None:
                rows = db.execute("SELECT * FROM rcaps ORDER BY created").fetchall()
            else:
                rows = db.execute(
                    "SELECT * FROM rcaps WHERE slice = ? ORDER BY created", (slice_name,)
                ).fetchall()
        return [self._rcap(r) for r in rows]

    def set_rcap_rspec(self, rcap: str, rspec: RSpec) -> None:
        with self.tx() as db:
            db.execute("UPDATE rcaps SET rspec = ? WHERE rcap = ?",
                       (json.dumps(rspec.to_wire()), rcap))

    def delete_rcap(self, rcap: str) -> None:
        with self.tx() as db:
            db.execute("DELETE FROM rcaps WHERE rcap = ?", (rcap,))

    # slivers -------------------------------------------------------------------------

    @staticmethod
    def _sliver(row: sqlite3.Row) -> SliverRow:
        return SliverRow(
            slice=row["slice"], xid=row["xid"], uid=row["uid"], state=row["state"],
            desired=row["desired"], container_id=row["container_id"],
            created_by=row["created_by"], created=row["created"],
            description=row["description"], contacts=json.loads(row["contacts"]),
            keys=json.loads(row["keys"]), initscript=row["initscript"],
        )

    def find_sliver(self, slice_name: str) -> SliverRow | None:
        with self.tx() as db:
            row = db.execute("SELECT * FROM slivers WHERE slice = ?", (slice_name,)).fetchone()
        return None if row is None else self._sliver(row)

    def sliver_in(self, container_id: str) -> SliverRow | None:
        """The sliver whose container has this id, or None."""
        with self.tx() as db:
            row = db.execute("SELECT * FROM slivers WHERE container_id = ?",
                             (container_id,)).fetchone()
        return None if row is None else self._sliver(row)

    def name_owner(self, slice_name: str) -> str | None:
        """The creator that first bound this slice name here (it keeps the name after
        destroying the sliver, until it or root releases it)."""
        with self.tx() as db:
            row = db.execute("SELECT owner FROM slice_names WHERE slice = ?",
                             (slice_name,)).fetchone()
        return None if row is None else str(row["owner"])

    def claim_name(self, slice_name: str, owner: str) -> bool:
        """Record ``owner`` as the name's owner unless it has one; True if it was new."""
        with self.tx() as db:
            cur = db.execute("INSERT OR IGNORE INTO slice_names VALUES (?, ?, ?)",
                             (slice_name, owner, time.time()))
            return cur.rowcount == 1

    def release_name(self, slice_name: str) -> None:
        with self.tx() as db:
            db.execute("DELETE FROM slice_names WHERE slice = ?", (slice_name,))

    def get_sliver(self, slice_name: str) -> SliverRow:
        row = self.find_sliver(slice_name)
        if row is None:
            raise NotFoundError(f"slice {slice_name}: no sliver of that slice on this node")
        return row

    def slivers(self) -> list[SliverRow]:
        with self.tx() as db:
            rows = db.execute("SELECT * FROM slivers ORDER BY slice").fetchall()
        return [self._sliver(r) for r in rows]

    @staticmethod
    def _free_xid(db: sqlite3.Connection, max_xid: int) -> int:
        used = {r[0] for r in db.execute("SELECT xid FROM slivers UNION SELECT xid FROM pool")}
        freed = {int(r[0]): float(r[1]) for r in db.execute("SELECT xid, freed FROM xid_freed")}
        return pick_xid(max_xid, used, freed, time.time())

    def begin_bind(
        self, slice_name: str, rcap: str, created_by: str, attrs: dict[str, Any], max_xid: int,
        pool_profile: str | None = None,
    ) -> tuple[SliverRow, bool]:
        """Bind ``rcap`` to ``slice_name``, creating the sliver row if needed: it takes a
        ready pooled sliver of ``pool_profile`` if there is one (its xid, and its container
        id recorded before anything is renamed), else the lowest free xid up to ``max_xid``.

        Returns the row and whether it is new.

        Raises:
            StateError: the rcap is bound already.
            AdmissionError: every xid is in use (the node is full).
        """
        with self.tx() as db:
            row = db.execute("SELECT slice FROM rcaps WHERE rcap = ?", (rcap,)).fetchone()
            if row is None:
                raise NotFoundError(f"rcap {rcap}: no such rcap on this node")
            if row["slice"] is not None:
                raise StateError(f"rcap {rcap}: expected an unbound rcap, found it bound to "
                                 f"slice {row['slice']}")
            db.execute("UPDATE rcaps SET slice = ? WHERE rcap = ?", (slice_name, rcap))
            existing = self.find_sliver(slice_name)
            if existing is not None:
                return existing, False
            taken = db.execute(
                "SELECT xid, container_id FROM pool WHERE profile = ? AND state = ? "
                "ORDER BY xid LIMIT 1", (pool_profile, POOL_READY)).fetchone() \
                if pool_profile is not None else None
            if taken is not None:
                xid, cid = int(taken["xid"]), taken["container_id"]
                db.execute("DELETE FROM pool WHERE xid = ?", (xid,))
            else:
                xid, cid = self._free_xid(db, max_xid), None
            db.execute(
                "INSERT INTO slivers(slice, xid, state, desired, container_id, created_by, created,"
                " description, contacts, keys, initscript) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (slice_name, xid, CREATING, RUNNING, cid, created_by, time.time(),
                 attrs.get("description", ""), json.dumps(attrs.get("contacts", [])),
                 json.dumps(attrs.get("keys", [])), attrs.get("initscript", "")),
            )
            new = self.find_sliver(slice_name)
            assert new is not None
            return new, True

    # the warm pool ----------------------------------------------------------------------

    def reserve_pool(self, profile: str, max_xid: int) -> int:
        """Record a pooled sliver about to be made (state ``creating``); return its xid."""
        with self.tx() as db:
            xid = self._free_xid(db, max_xid)
            db.execute("INSERT INTO pool(xid, profile, state, created) VALUES (?, ?, ?, ?)",
                       (xid, profile, CREATING, time.time()))
            return xid

    def update_pool(self, xid: int, *, state: str | None = None,
                    container_id: str | None = None) -> None:
        with self.tx() as db:
            if container_id is not None:
                db.execute("UPDATE pool SET container_id = ? WHERE xid = ?", (container_id, xid))
            if state is not None:
                db.execute("UPDATE pool SET state = ? WHERE xid = ?", (state, xid))

    def pool(self) -> list[PoolRow]:
        with self.tx() as db:
            rows = db.execute("SELECT * FROM pool ORDER BY xid").fetchall()
        return [PoolRow(int(r["xid"]), r["profile"], r["state"], r["container_id"],
                        float(r["created"])) for r in rows]

    def delete_pool(self, xid: int) -> None:
        with self.tx() as db:
            db.execute("DELETE FROM pool WHERE xid = ?", (xid,))

    def net_generation(self) -> int:
        """A number that grows with every change of a sliver or an rcap row."""
        with self.tx() as db:
            return int(db.execute("SELECT n FROM net_generation").fetchone()[0])

    def take_ready_pool(self, xid: int) -> bool:
        """Mark pooled sliver ``xid`` as being removed if it is still ready (no bind took
        it: a bind deletes its row in the transaction that records the sliver, and takes
        only ready ones); return whether it was. Its row, and so its xid, stays until
        :meth:`delete_pool`."""
        with self.tx() as db:
            cur = db.execute("UPDATE pool SET state = ? WHERE xid = ? AND state = ?",
                             (POOL_DISCARDING, xid, POOL_READY))
            return cur.rowcount == 1

    def update_sliver(self, slice_name: str, **values: Any) -> None:
        allowed = {"uid", "state", "desired", "container_id", "description", "contacts", "keys",
                   "initscript"}
        bad = set(values) - allowed
        if bad:
            raise StateError(f"update_sliver: expected columns among {sorted(allowed)}, "
                             f"found {sorted(bad)}")
        for key in ("contacts", "keys"):
            if key in values:
                values[key] = json.dumps(values[key])
        sets = ", ".join(f"{k} = ?" for k in values)
        with self.tx() as db:
            cur = db.execute(f"UPDATE slivers SET {sets} WHERE slice = ?",
                             (*values.values(), slice_name))
            if cur.rowcount == 0:
                raise NotFoundError(f"slice {slice_name}: no sliver of that slice on this node")

    # node settings ----------------------------------------------------------------------

    def setting(self, name: str, default: str) -> str:
        with self.tx() as db:
            row = db.execute("SELECT value FROM settings WHERE name = ?", (name,)).fetchone()
        return default if row is None else str(row["value"])

    def set_setting(self, name: str, value: str) -> None:
        with self.tx() as db:
            db.execute("INSERT INTO settings(name, value) VALUES (?, ?) ON CONFLICT(name) DO "
                       "UPDATE SET value = excluded.value", (name, value))

    # events ---------------------------------------------------------------------------

    def add_event(self, at: float, who: str, action: str, slice_name: str | None,
                  detail: str = "") -> None:
        with self.tx() as db:
            cur = db.execute("INSERT INTO events(at, who, action, slice, detail) "
                             "VALUES (?, ?, ?, ?, ?)", (at, who, action, slice_name, detail))
            if cur.lastrowid and cur.lastrowid % 1000 == 0:
                db.execute("DELETE FROM events WHERE id <= ?", (cur.lastrowid - EVENTS_KEPT,))

    def events(self, slice_name: str | None = None, limit: int = 100,
               actions: tuple[str, ...] = ()) -> list[EventRow]:
        """The latest ``limit`` events, oldest first (of one slice, of some actions)."""
        where, args = [], []
        if slice_name is not None:
            where.append("slice = ?")
            args.append(slice_name)
        if actions:
            where.append(f"action IN ({', '.join('?' * len(actions))})")
            args += actions
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        with self.tx() as db:
            rows = db.execute(f"SELECT * FROM events {clause} ORDER BY id DESC LIMIT ?",
                              (*args, limit)).fetchall()
        return [EventRow(r["id"], r["at"], r["who"], r["action"], r["slice"], r["detail"])
                for r in reversed(rows)]

    # traffic counters ---------------------------------------------------------------

    def add_usage(self, slice_name: str, day: str, kernel_bytes: int, kernel_packets: int) -> None:
        """Fold a kernel class counter reading into the day's total (see add_usages)."""
        self.add_usages(day, [(slice_name, kernel_bytes, kernel_packets)])

    def add_usages(self, day: str, readings: Iterable[tuple[str, int, int]]) -> None:
        """Fold kernel class counter readings (slice, bytes, packets) into the day's
        totals, in one transaction.

        A reading below the last one means the class was made anew (the sliver was
        re-created or restarted): the reading itself is then the increment.
        """
        with self.tx() as db:
            for slice_name, kernel_bytes, kernel_packets in readings:
                row = db.execute("SELECT * FROM net_usage WHERE slice = ? AND day = ?",
                                 (slice_name, day)).fetchone()
                if row is None:
                    prev = db.execute(
                        "SELECT last_bytes, last_packets FROM net_usage WHERE slice = ? "
                        "ORDER BY day DESC LIMIT 1", (slice_name,)).fetchone()
                    last_b, last_p = (prev[0], prev[1]) if prev else (0, 0)
                    db.execute("INSERT INTO net_usage(slice, day, last_bytes, last_packets) "
                               "VALUES (?, ?, ?, ?)", (slice_name, day, last_b, last_p))
                else:
                    last_b, last_p = row["last_bytes"], row["last_packets"]
                db_ = kernel_bytes - last_b if kernel_bytes >= last_b else kernel_bytes
                dp = kernel_packets - last_p if kernel_packets >= last_p else kernel_packets
                db.execute("UPDATE net_usage SET bytes = bytes + ?, packets = packets + ?, "
                           "last_bytes = ?, last_packets = ? WHERE slice = ? AND day = ?",
                           (db_, dp, kernel_bytes, kernel_packets, slice_name, day))

    def usage(self, slice_name: str, day: str) -> tuple[int, int]:
        with self.tx() as db:
            row = db.execute("SELECT bytes, packets FROM net_usage WHERE slice = ? AND day = ?",
                             (slice_name, day)).fetchone()
        return (0, 0) if row is None else (int(row[0]), int(row[1]))

    def reset_last_usage(self, slice_name: str) -> None:
        """A new kernel class starts from zero (called when a sliver's class is created)."""
        with self.tx() as db:
            db.execute("UPDATE net_usage SET last_bytes = 0, last_packets = 0 WHERE slice = ?",
                       (slice_name,))

    def prune_usage(self, before_day: str) -> None:
        with self.tx() as db:
            db.execute("DELETE FROM net_usage WHERE day < ?", (before_day,))

    def claims(self) -> list[tuple[str, int, str, str]]:
        """Ports held by safe raw and sniffer sockets: (proto, port, slice, kind)."""
        with self.tx() as db:
            rows = db.execute("SELECT proto, port, slice, kind FROM port_claims").fetchall()
        return [(r[0], r[1], r[2], r[3]) for r in rows]

    def add_claim(self, proto: str, port: int, slice_name: str, kind: str) -> None:
        with self.tx() as db:
            db.execute("INSERT OR IGNORE INTO port_claims VALUES (?, ?, ?, ?, ?)",
                       (proto, port, slice_name, kind, time.time()))

    def delete_claims(self, proto: str | None = None, port: int | None = None,
                      slice_name: str | None = None, kind: str | None = None) -> int:
        """Delete the claims matching every given field; returns how many went."""
        where = [(c, v) for c, v in (("proto", proto), ("port", port), ("slice", slice_name),
                                     ("kind", kind)) if v is not None]
        sql = "DELETE FROM port_claims" + (
            " WHERE " + " AND ".join(f"{c} = ?" for c, _ in where) if where else "")
        with self.tx() as db:
            return db.execute(sql, [v for _, v in where]).rowcount

    def delete_sliver(self, slice_name: str) -> None:
        """Forget a sliver, every rcap bound to it and the ports its sockets held; its xid
        goes into quarantine (see :func:`pick_xid`)."""
        with self.tx() as db:
            db.execute("INSERT OR REPLACE INTO xid_freed SELECT xid, ? FROM slivers WHERE slice = ?",
                       (time.time(), slice_name))
            db.execute("DELETE FROM port_claims WHERE slice = ?", (slice_name,))
            db.execute("DELETE FROM rcaps WHERE slice = ?", (slice_name,))
            db.execute("DELETE FROM slivers WHERE slice = ?", (slice_name,))

    def unbind_rcap(self, rcap: str) -> None:
        """Make a bound rcap unbound again (an undone bind)."""
        with self.tx() as db:
            db.execute("UPDATE rcaps SET slice = NULL WHERE rcap = ?", (rcap,))
