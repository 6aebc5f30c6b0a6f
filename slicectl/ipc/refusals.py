"""Refusals counted per caller and reason, logged so that no caller can fill the disk.

A host daemon refuses hostile input all day; each refusal is counted (``slicectl node
status`` and the shim's stats show the counts), but only the first of each (caller,
reason) in a window is logged in full. The rest are summed and reported once when the
window closes: "refused 9,412 more requests of X (reason) in the last 60 s".

Stdlib only (the ``ipc`` layer).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable

#: Longest line a refusal writes to the log (hostile input is cut, never echoed whole).
MAX_LOG_LINE = 300


def bounded(text: str, limit: int = MAX_LOG_LINE) -> str:
    """``text`` on one line and at most ``limit`` characters."""
    one = text.replace("\r", "\\r").replace("\n", "\\n")
    return one if len(one) <= limit else one[: limit - 3] + "..."


class Refusals:
    """Counts refusals by (caller, reason); logs the first of each per window.

    Args:
        log: where refusals are logged.
        window_s: how long one (caller, reason) stays quiet after it was logged.
        clock: returns the time (tests pass their own).
        max_keys: distinct (caller, reason) pairs kept; beyond it the oldest counts fold
            into ("others", reason), so a caller making new names cannot grow this.
    """

    def __init__(self, log: logging.Logger, window_s: float = 60.0,
                 clock: Callable[[], float] = time.monotonic, max_keys: int = 4096) -> None:
        self.log = log
        self.window_s = window_s
        self.clock = clock
        self.max_keys = max_keys
        self.totals: Counter[tuple[str, str]] = Counter()
        self._quiet_until: dict[tuple[str, str], float] = {}
        self._suppressed: Counter[tuple[str, str]] = Counter()
        self._lock = threading.Lock()
        self._next_flush = 0.0

    def count(self, caller: str, reason: str, detail: str = "") -> None:
        """Count one refusal; log it unless this (caller, reason) was logged lately."""
        key = (bounded(caller, 80), bounded(reason, 80))
        now = self.clock()
        with self._lock:
            if key not in self.totals and len(self.totals) >= self.max_keys:
                key = ("others", key[1])
            self.totals[key] += 1
            self._flush(now)
            if now < self._quiet_until.get(key, 0.0):
                self._suppressed[key] += 1
                return
            self._quiet_until[key] = now + self.window_s
        self.log.warning("%s", bounded(f"refused {key[0]}: {key[1]}"
                                       + (f": {detail}" if detail else "")))

    def flush(self) -> None:
        """Report what was suppressed in windows that have closed."""
        with self._lock:
            self._flush(self.clock(), force=True)

    def _flush(self, now: float, force: bool = False) -> None:
        if now < self._next_flush and not force:
            return
        self._next_flush = now + 1.0
        for key, until in list(self._quiet_until.items()):
            if now < until:
                continue
            del self._quiet_until[key]
            n = self._suppressed.pop(key, 0)
            if n:
                self.log.warning("refused %d more of %s (%s) in the last %.0f s", n, key[0],
                                 key[1], self.window_s)

    def summary(self) -> list[dict[str, object]]:
        """Every count, for a status answer."""
        with self._lock:
            return [{"caller": c, "reason": r, "count": n}
                    for (c, r), n in sorted(self.totals.items())]
