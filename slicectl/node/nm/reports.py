"""What the node's slice creation services say of themselves (``report_service``).

A privileged slice (the node agent, another slice creation service) tells the node
manager how it is doing: whether its authority (PLC) answers, when it last did, how many
slivers it keeps. The node manager keeps the last report of each, stamped with its own
clock, and shows them to root and to the node services (``services``): this is how
``slicectl node status`` and the sensors learn that PLC is unreachable without reading
any sliver's files.

A report is hostile input: only the fields below, each of its type and size, one report
per reporting slice, kept in memory (a service reports again after each of its polls).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterable
from typing import Any

from slicectl.core.errors import ValidationError

#: field -> (type name shown in errors, checker)
_TEXT = 300


def _text(n: int) -> Callable[[object], bool]:
    return lambda v: isinstance(v, str) and len(v) <= n and v.isprintable()


def _word(v: object) -> bool:
    return (isinstance(v, str) and 1 <= len(v) <= 32
            and all(c.isascii() and (c.isalnum() or c in "_-") for c in v))


def _count(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 10_000_000


def _instant(v: object) -> bool:
    return v is None or v == "" or (isinstance(v, (int, float)) and not isinstance(v, bool)
                                    and math.isfinite(v) and 0 <= v < 1e11)


FIELDS: dict[str, tuple[str, Callable[[object], bool]]] = {
    "kind": ("a word of at most 32 letters, digits, _ or - (agent, leases, ...)", _word),
    "authority": ("a printable text of at most 300 characters (the URL it serves)", _text(_TEXT)),
    "state": ("a word of at most 32 letters, digits, _ or - (ok, unreachable, ...)", _word),
    "last_contact": ("a Unix time, or empty (never)", _instant),
    "failures_in_a_row": ("a count from 0", _count),
    "slivers": ("a count from 0", _count),
    "last_error": ("a printable text of at most 300 characters", _text(_TEXT)),
}
#: What every report must carry.
REQUIRED = ("kind", "state")


def validate_report(report: object) -> dict[str, Any]:
    """The report as kept, or ValidationError naming the first bad field."""
    if not isinstance(report, dict):
        raise ValidationError("report", "a struct of " + ", ".join(FIELDS), type(report).__name__,
                              as_text=True)
    unknown = sorted(str(k) for k in report if k not in FIELDS)
    if unknown:
        raise ValidationError("report", "only the fields " + ", ".join(FIELDS),
                              ", ".join(unknown)[:200], as_text=True)
    for name in REQUIRED:
        if name not in report:
            raise ValidationError(f"report.{name}", FIELDS[name][0], "nothing", as_text=True)
    for name, value in report.items():
        expected, ok = FIELDS[name]
        if not ok(value):
            shown = value[:60] + "..." if isinstance(value, str) and len(value) > 60 else value
            raise ValidationError(f"report.{name}", expected, shown)
    out = dict(report)
    if out.get("last_contact") == "":
        out["last_contact"] = None
    return out


class ServiceReports:
    """The last report of each reporting slice, in memory."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self._lock = threading.Lock()
        self._by_slice: dict[str, dict[str, Any]] = {}

    def put(self, slice_name: str, report: object) -> dict[str, Any]:
        kept = {**validate_report(report), "slice": slice_name, "reported_at": self.clock()}
        with self._lock:
            self._by_slice[slice_name] = kept
        return kept

    def view(self, live: Iterable[str]) -> list[dict[str, Any]]:
        """Reports of the slices in ``live`` (a destroyed service's report is forgotten),
        each with its age; XML-RPC has no None, so a missing instant is empty."""
        now = self.clock()
        names = set(live)
        with self._lock:
            for gone in set(self._by_slice) - names:
                del self._by_slice[gone]
            kept = sorted(self._by_slice.values(), key=lambda r: str(r["slice"]))
        return [{**r, "last_contact": "" if r.get("last_contact") is None else r["last_contact"],
                 "age_s": round(now - r["reported_at"], 1)} for r in kept]
