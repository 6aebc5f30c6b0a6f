"""Durations, instants and sizes as they appear in rspecs and on the command line."""

from __future__ import annotations

import re
from datetime import UTC, datetime

from slicectl.core.errors import ValidationError

_DURATION = re.compile(r"^\s*(\d+)\s*(s|m|h|d|w)\s*$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration_s(field: str, value: object) -> int:
    """Parse ``90s``, ``15m``, ``2h``, ``3d`` or ``2w`` (or a whole number of seconds).

    Raises:
        ValidationError: naming ``field`` when the value is not a duration.
    """
    if isinstance(value, bool):
        raise ValidationError(field, "a duration such as 90s, 2h or 2w", value)
    if isinstance(value, int):
        if value < 0:
            raise ValidationError(field, "a non-negative duration", value)
        return value
    if isinstance(value, str):
        m = _DURATION.match(value)
        if m:
            return int(m.group(1)) * _UNIT_SECONDS[m.group(2)]
    raise ValidationError(field, "a duration such as 90s, 2h or 2w", value)


def parse_instant(field: str, value: object, now: float) -> float:
    """Parse an instant: ``now``, a duration from now, or an ISO 8601 time.

    Naive ISO times are taken as UTC. Returns seconds since the epoch.

    Raises:
        ValidationError: naming ``field``.
    """
    if isinstance(value, datetime):
        dt = value if value.tzinfo else value.replace(tzinfo=UTC)
        return dt.timestamp()
    if isinstance(value, str):
        text = value.strip()
        if text == "now":
            return now
        if _DURATION.match(text):
            return now + parse_duration_s(field, text)
        try:
            dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            pass
        else:
            if dt.tzinfo is None:
                dt = dt.replace(tzinfo=UTC)
            return dt.timestamp()
    raise ValidationError(
        field, "'now', a duration such as 90s or 2w, or an ISO 8601 time", value
    )


def iso(ts: float) -> str:
    """Format seconds since the epoch as an ISO 8601 UTC time, to the second."""
    return datetime.fromtimestamp(ts, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def human_duration(seconds: float) -> str:
    """``3725`` -> ``1h2m``: a short, rounded-down duration for tables."""
    s = int(max(seconds, 0))
    for unit, size in (("w", 604800), ("d", 86400), ("h", 3600), ("m", 60)):
        if s >= size:
            major, rest = divmod(s, size)
            sub = {"w": ("d", 86400), "d": ("h", 3600), "h": ("m", 60), "m": ("s", 1)}[unit]
            minor = rest // sub[1]
            return f"{major}{unit}{minor}{sub[0]}" if minor else f"{major}{unit}"
    return f"{s}s"
