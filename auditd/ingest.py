"""Ingest: sniffer frames in, packet rows into the store.

:class:`Recorder` is the synchronous core (frames -> rows -> one transaction per batch); the
benchmark drives it directly. :class:`Writer` runs a Recorder in its own thread behind a
bounded queue, and :func:`follow` reads the sniffer socket on the event loop and hands whole
frames to the Writer, reconnecting when the sniffer goes away. Records that cannot be
queued are counted as ``auditor`` drops, stored, and shown on the pages. Between batches
the Writer also keeps the store's last-hour summaries on the clock (:mod:`auditd.recent`)
and applies retention.
"""

from __future__ import annotations

import asyncio
import queue
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slicectl.core import sniffrecord as sr

from . import scatter
from .store import DROP_SOURCES, Chunk, Store


@dataclass
class LinkState:
    """What the pages say about the sniffer connection."""

    connected: bool = False
    node: str = ""
    since: float = 0.0
    error: str = ""
    frames: int = 0
    slices: dict[int, str] = field(default_factory=dict)


#: Minutes before the newest one seen whose roll-up keys are still remembered; a record
#: older than that (a late one) goes to its slice's folded row.
TRACKED_MINUTES = 2
#: Folded keys told apart per slice and minute ("N other destinations" is exact up to this,
#: a lower bound past it): bounds the memory a scanning slice costs to ~1 MB a minute.
FOLD_TRACK = 4096

#: (minute, sid, dst, proto, dport): one roll-up row.
RollKey = tuple[int, int, bytes, int, int]
#: a record's time, alone
_TIME_ONLY = struct.Struct("<d24x")


class Recorder:
    """Turns frames into stored rows. One thread only.

    A slice gets at most ``store.limits.rollup_rows`` roll-up keys per minute; packets to
    its other keys that minute are counted in one folded row (see :mod:`auditd.store`).
    Full records are kept whole either way: the first record of a batch to a destination
    goes to one of the batch's scatter chunks (:mod:`auditd.scatter`; a scan's every
    packet), its next ones to a chunk of that destination's own.

    Args:
        store: where rows go.
        clock: the time used for retention.
        fold_track: folded keys told apart per slice and minute.
    """

    def __init__(self, store: Store, clock: Callable[[], float] = time.time,
                 fold_track: int = FOLD_TRACK) -> None:
        self.store = store
        self.clock = clock
        self.rollup_rows = store.limits.rollup_rows
        self.fold_track = fold_track
        # minute -> sid -> what is tracked of that slice that minute
        self._minutes: dict[int, dict[int, _Tracked]] = {}
        self._floor = -1  # minutes below this are no longer tracked
        # the tracked slice-minutes with a folded row this batch
        self._folding: list[tuple[int, int, _Tracked]] = []
        # (minute, sid) -> folded row of a forgotten minute (a late record), this batch
        self.late: dict[tuple[int, int], list[Any]] = {}
        # (sid, dst) -> its first record (bytes, in a scatter chunk), or from its second on
        # [first t, last t, count, records]
        self.chunks: dict[tuple[int, bytes], Any] = {}
        # (minute, sid, dst, proto, dport) -> [packets, bytes, first t, last t], this batch
        self.rolls: dict[RollKey, list[Any]] = {}
        self.drops: dict[str, int] = {}
        self._sid: dict[int, tuple[int, bytes]] = {}  # xid -> store slice id, packed
        # scatter chunk id -> its records, this batch (:mod:`auditd.scatter`)
        self.scattered: dict[int, bytearray] = {}
        self._seen: dict[str, int] = {}  # last cumulative drop count from this sniffer
        self.pending = 0
        self.records = 0

    def _slice(self, name: str) -> tuple[int, bytes]:
        sid = self.store.slice_id(name)
        return sid, scatter.SID.pack(sid)

    def reset_link(self) -> None:
        """A new sniffer connection: its cumulative drop counts start again at zero."""
        self._seen = {}

    def feed(self, f: sr.Frame) -> None:
        if f.kind == sr.RECORDS:
            self.feed_records(f.payload)
        elif f.kind == sr.SLICES:
            self._sid = {int(x): self._slice(str(name)) for x, name in f.json().items()}
        elif f.kind == sr.DROPS:
            for source, value in f.json().items():
                if source in DROP_SOURCES:
                    self.count_drop(source, int(value) - self._seen.get(source, 0))
                    self._seen[source] = int(value)
        elif f.kind == sr.HELLO:
            hello = f.json()
            if hello.get("record_size") != sr.RECORD.size or hello.get("version") != sr.VERSION:
                raise sr.FrameError(f"sniffer hello: expected version {sr.VERSION} with "
                                    f"{sr.RECORD.size}-byte records, found {hello!r}")
            self.reset_link()

    def feed_records(self, payload: bytes) -> None:
        """Add the outgoing records of one ``R`` payload to the pending chunks and roll-ups.

        The hot path, written out inline: one chunk key and one roll-up key per record, the
        minute's state looked up once per minute, and no roll-up lookup for a destination
        the batch has not seen yet (a scan's every packet).
        """
        sids, chunks, rolls, cap = self._sid, self.chunks, self.rolls, self.rollup_rows
        track, folding, scattered = self.fold_track, self._folding, self.scattered
        hkey, m32, shift = self.store.scatter_key, scatter.M32, scatter.SHIFT
        size = sr.RECORD.size
        off = -size
        n = 0
        lo = hi = minute = 0
        now: dict[int, _Tracked] | None = None
        for t, xid, _src, dst, _sp, dport, proto, _fl, length, way in sr.RECORD.iter_unpack(
                payload):
            off += size
            if way != sr.OUT:
                continue
            n += 1
            got = sids.get(xid)
            if got is None:
                got = sids[xid] = self._slice(f"xid-{xid}")
            sid, sid_bytes = got
            ck = (sid, dst)
            one = payload[off:off + size]
            c = chunks.setdefault(ck, one)
            if c is one:  # the batch's first record to (sid, dst): a scatter chunk's
                b = ((int.from_bytes(dst, "big") * hkey) & m32) >> shift
                data = scattered.get(b)
                if data is None:
                    data = scattered[b] = bytearray()
                at = len(data) + scatter.XID_AT
                data += one
                data[at:at + 4] = sid_bytes
                c = None
            elif c.__class__ is bytes:  # the second: a chunk of its own from here on
                c = chunks[ck] = [t, t, 1, bytearray(one)]
            else:
                if t > c[1]:
                    c[1] = t
                elif t < c[0]:
                    c[0] = t
                c[2] += 1
                c[3] += one
            if not lo <= t < hi:
                minute = int(t // 60) * 60
                lo, hi = minute, minute + 60
                now = None
                if minute >= self._floor:
                    now = self._minutes.get(minute)
                    if now is None:
                        now = self._minutes[minute] = {}
            key = (minute, sid, dst, proto, dport)
            if c is not None:  # the batch has seen (sid, dst): maybe this key too
                r = rolls.get(key)
                if r is not None:
                    r[0] += 1
                    r[1] += length
                    if t > r[3]:
                        r[3] = t
                    elif t < r[2]:
                        r[2] = t
                    continue
            if now is None:
                self._fold_late(minute, sid, t, length)
                continue
            st = now.get(sid)
            if st is None:
                st = now[sid] = _Tracked()
            kept = st.kept
            if len(kept) < cap or key in kept:
                kept.add(key)
                rolls[key] = [1, length, t, t]
                continue
            # past the slice's cap this minute: its folded row
            f = st.fold
            if f is None:
                f = st.fold = [0, 0, 0, 0, t, t]
                folding.append((minute, sid, st))
            f[2] += 1
            f[3] += length
            if t < f[4]:
                f[4] = t
            elif t > f[5]:
                f[5] = t
            told = st.told
            told_n = len(told)
            if told_n < track:
                told.add(key)
                if len(told) > told_n:
                    f[0] += 1
            elif not f[1] and key not in told:  # saturated once is enough
                f[1] = 1
        self.pending += n
        self.records += n

    def _fold_late(self, minute: int, sid: int, t: float, length: int) -> None:
        """Count a record of a minute no longer tracked: its earlier keys are forgotten, so
        the folded row's count of other destinations is a lower bound."""
        f = self.late.get((minute, sid))
        if f is None:
            f = self.late[minute, sid] = [0, 1, 0, 0, t, t]
        f[2] += 1
        f[3] += length
        f[4], f[5] = min(f[4], t), max(f[5], t)

    def _forget_old_minutes(self) -> None:
        if not self._minutes:
            return
        self._floor = max(self._floor, max(self._minutes) - 60 * TRACKED_MINUTES)
        for m in [m for m in self._minutes if m < self._floor]:
            del self._minutes[m]

    def count_drop(self, source: str, n: int) -> None:
        if n > 0:
            self.drops[source] = self.drops.get(source, 0) + n

    def _chunk_rows(self) -> list[Chunk]:
        """The batch's chunks: one per destination from its second record in the batch on,
        and the scatter chunks holding each destination's first."""
        rows: list[Chunk] = [(sid, dst, c[0], c[1], c[2], bytes(c[3]))
                             for (sid, dst), c in self.chunks.items() if c.__class__ is list]
        for b, data in self.scattered.items():
            times = [t for (t,) in _TIME_ONLY.iter_unpack(data)]
            rows.append((scatter.MIXED, b.to_bytes(2, "big"), min(times), max(times),
                         len(times), bytes(data)))
        return rows

    def flush(self) -> int:
        """Write what was fed in one transaction; return the number of records."""
        if not self.pending and not self.drops:
            return 0
        rolls = [(*k, *r) for k, r in self.rolls.items()]
        folds = [(m, sid, *st.fold) for m, sid, st in self._folding if st.fold is not None]
        folds += [(*k, *f) for k, f in self.late.items()]
        self.store.write(self._chunk_rows(), rolls, self.drops, folds)
        n = self.pending
        for _m, _sid, st in self._folding:
            st.fold = None
        self.chunks, self.rolls, self.drops, self.late, self.pending = {}, {}, {}, {}, 0
        self.scattered = {}
        self._folding = []
        self._forget_old_minutes()
        return n


class _Tracked:
    """One slice in one minute: its admitted roll-up keys, its folded keys told apart, and
    its folded row of the current batch."""

    __slots__ = ("fold", "kept", "told")

    def __init__(self) -> None:
        self.kept: set[RollKey] = set()
        self.told: set[RollKey] = set()
        self.fold: list[Any] | None = None


_STOP = object()
_SYNC = object()


class Writer:
    """A Recorder in its own thread behind a queue bounded by records waiting.

    Args:
        store: the store (opened by the caller, written only from this thread).
        max_queued: records allowed to wait; an ``R`` frame beyond it is dropped and
            counted (``auditor`` drops).
        batch: flush after this many rows, or ``flush_s`` after the first unflushed one.
        expire_s: how often retention runs.
    """

    def __init__(self, store: Store, max_queued: int = 1_000_000, batch: int = 100_000,
                 flush_s: float = 0.5, expire_s: float = 30.0,
                 clock: Callable[[], float] = time.time) -> None:
        self.recorder = Recorder(store, clock)
        self.max_queued = max_queued
        self.batch = batch
        self.flush_s = flush_s
        self.expire_s = expire_s
        self.clock = clock
        self._q: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._queued = 0
        self._lock = threading.Lock()
        self._own_drops = 0
        self._flushed = threading.Condition()
        self._generation = 0
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="slicectl-auditd-writer",
                                        daemon=True)

    def start(self) -> None:
        self._thread.start()

    def put(self, f: sr.Frame) -> None:
        """Queue a frame (called from the event loop; never blocks)."""
        if f.kind == sr.RECORDS:
            n = len(f.payload) // sr.RECORD.size
            with self._lock:
                if self._queued + n > self.max_queued:
                    self._own_drops += n
                    return
                self._queued += n
        self._q.put(f)

    def sync(self, timeout: float = 30) -> None:
        """Wait until everything queued so far is committed (tests, shutdown)."""
        with self._flushed:
            target = self._generation + 1
            self._q.put(_SYNC)
            if not self._flushed.wait_for(lambda: self._generation >= target or
                                          self.error is not None, timeout):
                raise TimeoutError("auditor writer did not flush")

    def stop(self) -> None:
        self._q.put(_STOP)
        self._thread.join()

    def _run(self) -> None:
        rec = self.recorder
        last_flush = time.monotonic()
        last_expire = 0.0
        try:
            rec.store.slide(self.clock())
            while True:
                try:
                    item = self._q.get(timeout=self.flush_s)
                except queue.Empty:
                    item = None
                if isinstance(item, sr.Frame):
                    if item.kind == sr.RECORDS:
                        with self._lock:
                            self._queued -= len(item.payload) // sr.RECORD.size
                    rec.feed(item)
                now = time.monotonic()
                if (item is None or item is _SYNC or item is _STOP or rec.pending >= self.batch
                        or now - last_flush >= self.flush_s):
                    with self._lock:
                        own, self._own_drops = self._own_drops, 0
                    rec.count_drop("auditor", own)
                    rec.flush()
                    last_flush = now
                    rec.store.slide(self.clock())
                    if now - last_expire >= self.expire_s:
                        rec.store.expire(self.clock())
                        last_expire = now
                    if item is _SYNC:
                        with self._flushed:
                            self._generation += 1
                            self._flushed.notify_all()
                if item is _STOP:
                    return
        except BaseException as e:  # surfaced on the pages and by sync()
            self.error = e
            with self._flushed:
                self._flushed.notify_all()
            raise


async def follow(path: Path, writer: Writer, state: LinkState, retry_s: float = 1.0) -> None:
    """Read the sniffer at ``path`` forever, reconnecting every ``retry_s`` when it is gone."""
    while True:
        try:
            async for f in sr.read_frames(str(path)):
                if f.kind == sr.HELLO:
                    state.connected, state.since, state.error = True, time.time(), ""
                    state.node = str(f.json().get("node", ""))
                elif f.kind == sr.SLICES:
                    state.slices = {int(x): str(n) for x, n in f.json().items()}
                writer.put(f)
                state.frames += 1
        except (OSError, sr.FrameError, ValueError) as e:
            state.error = f"{type(e).__name__}: {e}"
        state.connected = False
        await asyncio.sleep(retry_s)
