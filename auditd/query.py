"""What the pages ask the store: request parameters in, rows (plain dicts) out.

Parsing is pure; the query functions take a :class:`~auditd.store.Reader` and run in a
worker thread. Every page's HTML, CSV and JSON are made from the same rows, so they agree by
construction. Windows are whole minutes (the roll-up grain): ``from`` rounds down, ``to``
up.
"""

from __future__ import annotations

import functools
import ipaddress
import math
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from slicectl.core import sniffrecord as sr
from slicectl.core.errors import ValidationError

from . import scatter
from .store import Reader

DEFAULT_WINDOW_S = 3600
#: how far past now a window may reach (a page asked for "until tomorrow")
FUTURE_S = 86400
MAX_PORTS = 20
MAX_RECORDS = 200
#: chunks at each end of the records table that the stored span is read from
SPAN_CHUNKS = 256
FORMATS = ("html", "csv", "json")
SLICE_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,39}$")
PROTOS = {1: "icmp", 6: "tcp", 17: "udp", 47: "gre", 58: "icmp6", 132: "sctp"}


@dataclass(frozen=True)
class Window:
    start: float
    end: float

    @property
    def first_minute(self) -> int:
        return int(self.start // 60) * 60

    @property
    def last_minute(self) -> int:
        return int(self.end // 60) * 60


TIME_FORMS = "an ISO 8601 time (2026-11-27T20:00Z) or unix seconds"


def parse_time(field: str, text: str) -> float:
    """Unix seconds, or ISO 8601 (a time without a zone is UTC).

    Raises:
        ValidationError: neither, or not a finite number (``nan``, ``inf``).
    """
    text = text.strip()
    try:
        value = float(text)
    except ValueError:
        try:
            when = datetime.fromisoformat(text.replace("Z", "+00:00"))
            if when.tzinfo is None:
                when = when.replace(tzinfo=UTC)
            value = when.timestamp()
        except ValueError:
            raise ValidationError(field, TIME_FORMS, text) from None
    if not math.isfinite(value):
        raise ValidationError(field, TIME_FORMS, text)
    return value


def parse_window(params: Mapping[str, str], now: float, keep_s: float) -> Window:
    """``from``/``to`` from the query string; default the last hour up to now.

    A window lies within what the store can answer: from ``keep_s`` (the roll-ups'
    retention) before ``now`` to a day after it; past the full records' window it is
    answered from the roll-ups.

    Raises:
        ValidationError: a time that does not parse or lies outside those bounds (naming
            ``from`` or ``to``), or ``from`` after ``to``.
    """
    earliest, latest = now - keep_s, now + FUTURE_S
    bounds = (f"a time from {iso(earliest)} (the roll-ups are kept "
              f"{keep_s / 86400:g} days) to {iso(latest)}")

    def bounded(field: str) -> float | None:
        text = params.get(field)
        if not text:
            return None
        value = parse_time(field, text)
        if not earliest <= value <= latest:
            raise ValidationError(field, bounds, text)
        return value

    given_end = bounded("to")
    end = now if given_end is None else given_end
    given_start = bounded("from")
    start = max(earliest, end - DEFAULT_WINDOW_S) if given_start is None else given_start
    if start > end:
        raise ValidationError("from", f"a time before to ({iso(end)})", iso(start), as_text=True)
    return Window(start, end)


def parse_format(params: Mapping[str, str], suffix: str) -> str:
    fmt = (params.get("format") or suffix or "html").lower()
    if fmt not in FORMATS:
        raise ValidationError("format", "html, csv or json", params.get("format") or suffix)
    return fmt


def parse_ip(text: str) -> bytes:
    try:
        return ipaddress.IPv4Address(text.strip()).packed
    except ValueError:
        raise ValidationError("ip", "an IPv4 address such as 198.51.100.7", text) from None


def parse_slice(text: str) -> str:
    if not SLICE_RE.match(text):
        raise ValidationError("slice", "a slice name such as site_name", text)
    return text


def split_suffix(tail: str) -> tuple[str, str]:
    """``"1.2.3.4.csv"`` -> (``"1.2.3.4"``, ``"csv"``); no known suffix -> (tail, "")."""
    for fmt in ("csv", "json", "html"):
        if tail.endswith("." + fmt):
            return tail[: -len(fmt) - 1], fmt
    return tail, ""


def iso(t: float) -> str:
    """``t`` to the second, UTC (a page of 2000 rows formats 4000 times, many alike)."""
    return _iso_second(math.floor(t))


@functools.lru_cache(maxsize=8192)
def _iso_second(t: int) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def proto_name(proto: int) -> str:
    return PROTOS.get(proto, str(proto))


def port_list(text: str | None) -> tuple[str, int]:
    """``group_concat`` of ``proto*65536+dport`` -> ("tcp/80 udp/53 ...", how many left out)."""
    keys = sorted({int(x) for x in (text or "").split(",") if x})
    shown = " ".join(f"{proto_name(k >> 16)}/{k & 0xFFFF}" for k in keys[:MAX_PORTS])
    return shown, max(0, len(keys) - MAX_PORTS)


def _names(reader: Reader) -> dict[int, str]:
    return dict(reader.all("SELECT sid, name FROM slices"))


def _keys(reader: Reader, w: Window, slice_name: str | None = None) -> tuple[str, list[Any]]:
    """SQL of the window's roll-up keys (sid, dst, proto, dport, packets, bytes, first, last),
    of one slice or all: whole hours from ``slice_hour``, the minutes around them from
    ``rollup`` (one slice's: a key seek per minute). The same rows added up either way, as
    the triggers keep them."""
    sid = "(SELECT sid FROM slices WHERE name = ?)" if slice_name else None
    who: list[Any] = [slice_name] if slice_name else []
    cols = "sid, dst, proto, dport, packets, bytes, first, last"
    floor = reader.meta("hour_floor")
    h0 = max(-(-w.first_minute // 3600) * 3600, -(-floor // 3600) * 3600)
    h1 = (w.last_minute + 60) // 3600 * 3600
    if h1 <= h0:  # no whole hour in the window: its minutes
        h0 = h1 = w.last_minute + 60
    edges = [*range(w.first_minute, h0, 60), *range(h1, w.last_minute + 60, 60)]
    if sid:
        minutes = f"SELECT {cols} FROM rollup WHERE minute IN ({','.join('?' * len(edges))})" \
                  f" AND sid = {sid}"
        args = [*edges, *who]
    else:
        minutes = f"SELECT {cols} FROM rollup WHERE minute >= ? AND minute <= ?" \
                  " AND (minute < ? OR minute >= ?)"
        args = [w.first_minute, w.last_minute, h0, h1]
    if h1 <= h0:
        return minutes, args
    hours_sid = f"sid = {sid}" if sid else "sid IN (SELECT sid FROM slices)"
    return (f"SELECT {cols} FROM slice_hour WHERE {hours_sid} AND hour >= ? AND hour < ?"
            f" UNION ALL {minutes}", [*who, h0, h1, *args])


def _recent_live(reader: Reader, w: Window) -> tuple[int, int] | None:
    """The minutes past the recent span (:mod:`auditd.recent`) that ``w`` adds, when ``w``
    is that span and more minutes after it; None when it is not."""
    got = dict(reader.all("SELECT name, value FROM meta WHERE name IN "
                          "('recent_from', 'recent_to')"))
    lo, hi = int(got.get("recent_from", 0)), int(got.get("recent_to", -1))
    if hi < lo or lo != w.first_minute or hi > w.last_minute:
        return None
    return hi + 60, w.last_minute


def _top_destinations(reader: Reader, w: Window, limit: int) -> list[bytes]:
    """The ``limit`` destinations with the most bytes in the window (ties: lowest first)."""
    live = _recent_live(reader, w)
    if live is None:
        keys, args = _keys(reader, w)
        return [d for (d,) in reader.all(
            f"SELECT dst FROM ({keys}) GROUP BY dst ORDER BY sum(bytes) DESC, dst LIMIT ?",
            [*args, limit])]
    now = dict(reader.all("SELECT dst, sum(bytes) FROM rollup WHERE minute >= ? AND"
                          " minute <= ? GROUP BY dst", live))
    # a destination not sent to in the live minutes has its span bytes: the span's top
    # (limit + live) ones hold every candidate among them
    span = reader.all("SELECT dst, bytes FROM recent_dst ORDER BY bytes DESC, dst LIMIT ?",
                      (limit + len(now),))
    total = {d: b for d, b in span if d not in now}
    if now:
        marks = ",".join("?" * len(now))
        before = dict(reader.all(f"SELECT dst, bytes FROM recent_dst WHERE dst IN ({marks})",
                                 list(now)))
        total.update((d, b + before.get(d, 0)) for d, b in now.items())
    return sorted(total, key=lambda d: (-total[d], d))[:limit]


def by_destination(reader: Reader, w: Window, limit: int = 500) -> list[dict[str, Any]]:
    names = _names(reader)
    with reader.snapshot():
        top = _top_destinations(reader, w, limit)
        marks = ",".join("?" * len(top))
        rows = reader.all(
            "SELECT dst, sum(packets), sum(bytes), group_concat(sid),"
            " group_concat(proto * 65536 + dport), min(first), max(last)"
            f" FROM rollup WHERE dst IN ({marks}) AND minute >= ? AND minute <= ?"
            " GROUP BY dst ORDER BY 3 DESC, 1", [*top, w.first_minute, w.last_minute]
        ) if top else []
    out = []
    for dst, packets, nbytes, sids, ports, first, last in rows:
        shown, more = port_list(ports)
        out.append({
            "dst": socket.inet_ntoa(dst), "packets": packets, "bytes": nbytes,
            "slices": " ".join(sorted({names.get(int(s), "?") for s in sids.split(",")})),
            "ports": shown, "ports_more": more, "first": iso(first), "last": iso(last)})
    return out


def _folded_rows(reader: Reader, w: Window,
                 slice_name: str | None = None) -> list[tuple[Any, ...]]:
    """(sid, other keys, saturated, packets, bytes, first, last) per slice in the window."""
    args: list[Any] = [w.first_minute, w.last_minute]
    cond = ""
    if slice_name is not None:
        cond = " AND sid = (SELECT sid FROM slices WHERE name = ?)"
        args.append(slice_name)
    return reader.all(
        "SELECT sid, sum(keys), max(saturated), sum(packets), sum(bytes), min(first),"
        " max(last) FROM rollup_folded WHERE minute >= ? AND minute <= ?" + cond +
        " GROUP BY sid ORDER BY 5 DESC", args)


def other_destinations(keys: int, saturated: int) -> str:
    """How many destinations a folded row stands for: exact, or ``N+`` (at least N)."""
    return f"{keys}+" if saturated else str(keys)


def folded(reader: Reader, w: Window, slice_name: str | None = None) -> list[dict[str, Any]]:
    """Slices that sent to more destinations a minute than the roll-ups keep: what went to
    the others, one row per slice (their destinations counted per minute)."""
    names = _names(reader)
    return [{"slice": names.get(sid, "?"), "other_destinations": other_destinations(k, sat),
             "packets": packets, "bytes": nbytes, "first": iso(first), "last": iso(last)}
            for sid, k, sat, packets, nbytes, first, last in _folded_rows(reader, w, slice_name)]


def _slice_shapes(reader: Reader, w: Window) -> dict[int, tuple[int, str]]:
    """Per slice: distinct destinations, and its ports as ``group_concat`` text."""
    live = _recent_live(reader, w)
    if live is None:
        keys, args = _keys(reader, w)
        return {sid: (ndst, ports) for sid, ndst, ports in reader.all(
            "SELECT sid, count(DISTINCT dst), group_concat(DISTINCT proto * 65536 + dport)"
            f" FROM ({keys}) GROUP BY sid", args)}
    ndst = dict(reader.all("SELECT sid, count(*) FROM recent_sd GROUP BY sid"))
    for sid, more in reader.all(
            "SELECT sid, count(DISTINCT dst) FROM rollup r WHERE minute >= ? AND minute <= ?"
            " AND NOT EXISTS (SELECT 1 FROM recent_sd s WHERE s.sid = r.sid AND"
            " s.dst = r.dst) GROUP BY sid", live):
        ndst[sid] = ndst.get(sid, 0) + more
    ports = dict(reader.all(
        "SELECT sid, group_concat(port) FROM (SELECT sid, port FROM recent_sp UNION"
        " SELECT sid, proto * 65536 + dport FROM rollup WHERE minute >= ? AND minute <= ?)"
        " GROUP BY sid", live))
    return {sid: (n, ports.get(sid, "")) for sid, n in ndst.items()}


def by_slice(reader: Reader, w: Window) -> list[dict[str, Any]]:
    """Per slice: packets and bytes (folded ones included), distinct destinations in the
    roll-ups and how many more were folded."""
    names = _names(reader)
    with reader.snapshot():
        shape = _slice_shapes(reader, w)
    folds = {sid: other_destinations(k, sat)
             for sid, k, sat, *_ in _folded_rows(reader, w)}
    out = []
    for sid, packets, nbytes, first, last in reader.all(
            "SELECT sid, sum(packets), sum(bytes), min(first), max(last) FROM slice_minute"
            " WHERE minute >= ? AND minute <= ? GROUP BY sid ORDER BY 3 DESC, 1",
            (w.first_minute, w.last_minute)):
        ndst, ports = shape.get(sid, (0, ""))
        shown, more = port_list(ports)
        out.append({"slice": names.get(sid, "?"), "packets": packets, "bytes": nbytes,
                    "destinations": ndst, "other_destinations": folds.get(sid, "0"),
                    "ports": shown, "ports_more": more, "first": iso(first),
                    "last": iso(last)})
    return out


def to_destination(reader: Reader, dst: bytes, w: Window) -> list[dict[str, Any]]:
    """Every (slice, proto, dport) that sent to ``dst`` in the window."""
    names = _names(reader)
    rows = reader.all(
        "SELECT sid, proto, dport, sum(packets), sum(bytes), min(first), max(last)"
        " FROM rollup WHERE dst = ? AND minute >= ? AND minute <= ?"
        " GROUP BY sid, proto, dport ORDER BY 5 DESC",
        (dst, w.first_minute, w.last_minute))
    return [{"slice": names.get(sid, "?"), "proto": proto_name(proto), "dport": dport,
             "packets": packets, "bytes": nbytes, "first": iso(first), "last": iso(last)}
            for sid, proto, dport, packets, nbytes, first, last in rows]


def from_slice(reader: Reader, name: str, w: Window) -> list[dict[str, Any]]:
    """Every (dst, proto, dport) slice ``name`` sent to in the window."""
    keys, args = _keys(reader, w, name)
    rows = reader.all(
        "SELECT dst, proto, dport, sum(packets), sum(bytes), min(first), max(last)"
        f" FROM ({keys}) GROUP BY dst, proto, dport ORDER BY 5 DESC, 1, 2, 3 LIMIT 2000",
        args)
    return [{"dst": socket.inet_ntoa(dst), "proto": proto_name(proto), "dport": dport,
             "packets": packets, "bytes": nbytes, "first": iso(first), "last": iso(last)}
            for dst, proto, dport, packets, nbytes, first, last in rows]


def records_to(reader: Reader, dst: bytes, w: Window,
               limit: int = MAX_RECORDS) -> tuple[list[dict[str, Any]], int]:
    """The newest full records sent to ``dst`` in the window's whole minutes (at most
    ``limit``), and how many there are in all.

    Chunks are read newest first and decoded only until ``limit`` records are found; the
    rest are counted from their stored counts (decoding only those that straddle the
    window's start), so a flood to one address costs a count, not a decode of every packet.
    The address's scatter chunks (:mod:`auditd.scatter`) are decoded and filtered.
    """
    names = _names(reader)
    # The same whole minutes as the roll-ups, so the records and the counts agree.
    w = Window(w.first_minute, w.last_minute + 60)
    bucket = scatter.bucket_of(dst, reader.meta("scatter_key"))
    chunks = reader.all(
        "SELECT rowid, sid, t0, t1, n FROM records WHERE dst IN (?, ?) AND t0 < ? AND t1 >= ?"
        " ORDER BY t1 DESC", (dst, bucket, w.end, w.start))
    found: list[tuple[Any, ...]] = []
    total = 0
    for rowid, sid, t0, t1, n in chunks:
        newest_needed = len(found) < limit or t1 > found[limit - 1][0][0]
        mixed = sid == scatter.MIXED
        if not newest_needed and not mixed and w.start <= t0 and t1 < w.end:
            total += n
            continue
        data = reader.all("SELECT data FROM records WHERE rowid = ?", (rowid,))[0][0]
        # a scatter chunk's records name their slice (xid field) and have many dsts
        inside = [(rec, rec[1] if mixed else sid) for rec in sr.RECORD.iter_unpack(data)
                  if w.start <= rec[0] < w.end and (not mixed or rec[3] == dst)]
        total += len(inside)
        if newest_needed:
            found += inside
            found.sort(key=lambda x: -x[0][0])
            del found[limit:]
    return [{"time": f"{iso(r[0])[:-1]}.{int(r[0] * 1000) % 1000:03d}Z",
             "slice": names.get(sid, "?"), "src": socket.inet_ntoa(r[2]), "sport": r[4],
             "dport": r[5], "proto": proto_name(r[6]), "flags": sr.flags_text(r[7]),
             "length": r[8]} for r, sid in found], total


def series(reader: Reader, w: Window, buckets: int = 60,
           slice_name: str | None = None) -> tuple[float, list[tuple[str, list[int]]]]:
    """Bytes per slice per time bucket: (bucket seconds, [(slice, [bytes, ...]), ...])."""
    names = _names(reader)
    span = max(60, w.last_minute + 60 - w.first_minute)
    step = max(60, -(-span // buckets) // 60 * 60 or 60)
    cond = " WHERE minute >= ? AND minute <= ?"
    span_args: list[Any] = [w.first_minute, w.last_minute]
    if slice_name is not None:
        cond += " AND sid = (SELECT sid FROM slices WHERE name = ?)"
        span_args.append(slice_name)
    rows = reader.all(
        f"SELECT sid, (minute - ?) / ?, sum(bytes) FROM slice_minute{cond} GROUP BY 1, 2",
        [w.first_minute, step, *span_args])
    n = -(-span // step)
    per: dict[str, list[int]] = {}
    for sid, b, nbytes in rows:
        per.setdefault(names.get(sid, "?"), [0] * n)[min(int(b), n - 1)] += nbytes
    ranked = sorted(per.items(), key=lambda kv: -sum(kv[1]))
    return float(step), ranked


def totals(reader: Reader) -> dict[str, Any]:
    """What the store holds, from its tallies; the full records' span from the oldest and
    newest chunks (chunks are written in time order: a record later than that by more than
    :data:`SPAN_CHUNKS` chunks is not seen here, it is still kept and shown)."""
    chunks, records, rollups, folds = reader.all(
        "SELECT chunks, records, rollup_rows, folded_rows FROM tallies")[0]
    oldest = reader.all(f"SELECT min(t0) FROM (SELECT t0 FROM records ORDER BY rowid"
                        f" LIMIT {SPAN_CHUNKS})")[0][0]
    newest = reader.all(f"SELECT max(t1) FROM (SELECT t1 FROM records ORDER BY rowid DESC"
                        f" LIMIT {SPAN_CHUNKS})")[0][0]
    rolled = reader.all("SELECT min(minute) FROM rollup")[0][0]
    return {"record_chunks": chunks, "records": records,
            "records_from": iso(oldest) if oldest else "",
            "records_to": iso(newest) if newest else "",
            "rollup_rows": rollups, "rollup_from": iso(rolled) if rolled else "",
            "folded_rows": folds}
