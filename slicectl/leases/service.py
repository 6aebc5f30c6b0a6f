"""The lease service's loop: read what it made, plan, apply, write its status, sleep until
the next lease ends (or a period, or a retry). Its state lives in its sliver:
``record.json`` (what it made) and ``status.json`` (what ``slicectl leases status`` shows).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from slicectl.core.errors import SlicectlError
from slicectl.plc.credentials import write_secret
from slicectl.sliverapp.reporting import printable, tell_node

from .apply import NM, Record, apply, mine
from .plan import plan, wake_at
from .report import status
from .requests import Request

log = logging.getLogger("slicectl.leases")

#: Seconds between looks when no lease ends sooner.
PERIOD_S = 30.0


def step(nm: NM, requests: Sequence[Request], state: Path,
         clock: Callable[[], float] = time.time, period_s: float = PERIOD_S) -> float:
    """One look: plan and apply what is due, save record and status. When to look next
    (seconds since the epoch)."""
    record_path = state / "record.json"
    record = Record.load(record_path)
    now = clock()
    error = ""
    try:
        actions = plan(requests, record.leases, mine(nm, now), now)
    except SlicectlError as e:  # the node manager did not answer: nothing changes
        actions, error = [], f"node manager: {e}"
        log.warning("%s", error)
    for action in actions:
        try:
            log.info("%s", apply(nm, action, record, lambda: record.save(record_path), now))
        except SlicectlError as e:
            error = f"{action.kind} {action.slice}: {e}"
            log.warning("%s", error)
        record.save(record_path)
    shown = status(requests, record.leases, now, error)
    write_secret(state / "status.json", shown)
    tell_node(nm, {"kind": "leases", "authority": f"a list of {len(requests)} request(s)",
                   "state": "failing" if error else "ok", "last_contact": now,
                   "failures_in_a_row": 0, "slivers": len(shown["active"]),
                   "last_error": printable(error)})
    return wake_at(record.leases, now, period_s if not error else min(period_s, 5.0))


def run(nm: NM, requests: Sequence[Request], state: Path, stop: threading.Event,
        period_s: float = PERIOD_S) -> None:
    """Look until ``stop`` is set."""
    state.mkdir(parents=True, exist_ok=True)
    os.chmod(state, 0o700)
    while not stop.is_set():
        due = step(nm, requests, state, period_s=period_s)
        stop.wait(max(0.2, due - time.time()))
