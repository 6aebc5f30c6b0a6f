"""The agent's loop: fetch the node's view from PLC, converge, say how it went, wait.

PLC unreachable: nothing on the node changes (the node manager keeps every sliver
running, and brings them back after a reboot), the agent retries with a growing backoff
and says so in its status file; when PLC answers again the node converges. The status
file (JSON, written whole) is what ``slicectl node status`` and the sensors show.
"""

from __future__ import annotations

import json
import logging
import os
import random
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from slicectl.core.errors import ConnectionFailed, SlicectlError
from slicectl.sliverapp import reporting
from slicectl.sliverapp.reporting import printable

from .sync import NM, REFUSED, Record, admin_tools, converge

log = logging.getLogger("slicectl.agent")

#: Seconds between polls when nothing wakes the agent earlier, and the jitter added.
PERIOD_S = 60.0
JITTER_S = 15.0
#: Backoff while PLC is unreachable: first wait, and at most. The cap is short so that
#: a node converges within seconds of PLC's return; a try costs PLC nothing while it is
#: down (a refused connection), and each wait is jittered so nodes do not return in step.
BACKOFF_S = (1.0, 8.0)


#: Longest single wait for a change notice (a stop request waits at most this long).
NOTICE_WAIT_S = 20


class Source(Protocol):
    def slivers(self) -> dict[str, Any]: ...

    def change_number(self) -> int: ...

    def wait_for_change(self, since: int, timeout_s: int) -> int: ...

    def report(self, slivers: list[dict[str, str]]) -> None: ...


#: Sliver states PLC takes in a report; any other is reported as stopped or failed.
REPORTED = ("running", "stopped", "starting", "missing", "failed", "dormant")


def reported(listing: list[dict[str, Any]], made: Any,
             refused: dict[str, str] | None = None) -> list[dict[str, str]]:
    """What the agent tells PLC of the slivers it made, and of the slices the node's
    policy refuses (state ``refused``, the refusal as the detail) (pure)."""
    out = []
    refused = dict(refused or {})
    for s in listing:
        if s["name"] not in made:
            continue
        state = str(s.get("state", ""))
        stop = s.get("stopped") or {}
        if s.get("desired") == "stopped" and REFUSED in str(stop.get("reason", "")):
            refused[str(s["name"])] = str(stop["reason"])[:300]
            continue
        if state not in REPORTED:
            state = "stopped" if s.get("desired") == "stopped" else "failed"
        out.append({"name": str(s["name"]), "state": state})
    out += [{"name": n, "state": "refused", "detail": why} for n, why in sorted(refused.items())]
    return out


@dataclass
class Status:
    plc: str = "never-reached"
    last_contact: float | None = None
    last_error: str = ""
    failures_in_a_row: int = 0
    slivers: int = 0
    last_changes: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        tmp.write_text(json.dumps(asdict(self), indent=1))
        os.replace(tmp, path)

    def report(self, authority: str) -> dict[str, Any]:
        """What the node manager is told (``report_service``; pure)."""
        return {"kind": "agent", "authority": authority[:300], "state": self.plc,
                "last_contact": "" if self.last_contact is None else self.last_contact,
                "failures_in_a_row": self.failures_in_a_row, "slivers": self.slivers,
                "last_error": printable(self.last_error)}


def tell_node(nm: NM, status: Status, authority: str) -> None:
    """Report ``status`` to the node manager, for ``slicectl node status`` and the
    sensors."""
    reporting.tell_node(nm, status.report(authority))


def step(plc: Source, nm: NM, record_path: Path, status: Status,
         clock: Callable[[], float] = time.time) -> bool:
    """One poll and, if PLC answered, one convergence. False if PLC did not answer."""
    record = Record.load(record_path)
    try:
        view = plc.slivers()
    except ConnectionFailed as e:
        status.failures_in_a_row += 1
        status.plc = "unreachable"
        status.last_error = str(e)
        log.warning("%s (try %d); the node keeps what it runs", e, status.failures_in_a_row)
        return False
    status.plc, status.last_contact, status.failures_in_a_row = "ok", clock(), 0
    try:
        out = converge(nm, view, record, record_path, clock(), admin_tools(nm))
    except SlicectlError as e:  # the node manager did not answer: try again next time
        status.last_error = f"node manager: {e}"
        log.warning("converge: %s", e)
        return True
    status.slivers = len(record.made)
    try:
        plc.report(reported(nm("list"), record.made, out.refused))
    except SlicectlError as e:  # an older PLC, or it went away: the next step reports
        log.info("report to PLC: %s", e)
    if out.done:
        status.last_changes = out.done[-50:]
        log.info("converged: %s", ", ".join(out.done))
    status.failed = out.failed[-50:]
    status.last_error = out.failed[-1] if out.failed else ""
    return True


def run(plc: Source, nm: NM, record_path: Path, status_path: Path, stop: threading.Event,
        period_s: float = PERIOD_S, jitter_s: float = JITTER_S,
        clock: Callable[[], float] = time.monotonic, authority: str = "") -> None:
    """Poll until ``stop`` is set. Between polls the agent long-polls PLC's change number
    (WaitForChange) and polls at once when it moves; without it (an older PLC, or PLC
    away) it waits for the period, or the backoff. After each poll it tells the node
    manager how it went (``authority``: PLC's URL, shown beside it)."""
    status = Status()
    backoff = BACKOFF_S[0]
    while not stop.is_set():
        try:
            seen: int | None = plc.change_number()  # before GetSlivers: no change is missed
        except ConnectionFailed:
            seen = None
        ok = step(plc, nm, record_path, status)
        status.save(status_path)
        tell_node(nm, status, authority)
        if ok:
            backoff = BACKOFF_S[0]
            deadline = clock() + period_s + random.uniform(0, jitter_s)
        else:
            deadline = clock() + backoff * random.uniform(0.75, 1.0)
            backoff = min(BACKOFF_S[1], backoff * 2)
        while not stop.is_set() and (left := deadline - clock()) > 0:
            if seen is None or not ok:
                stop.wait(left)
                break
            try:
                if plc.wait_for_change(seen, max(1, min(NOTICE_WAIT_S, int(left)))) != seen:
                    break  # something changed in PLC: poll now
            except ConnectionFailed:
                stop.wait(min(left, backoff))
                break
