"""Apply a plan on the node: the agent's calls on the node manager, and its record of
what it made (on disk, written whole after every change, so a crash or a reboot finds
it), together with PLC's last good view of the node.

The record names each sliver the agent made with the keys and initscript it gave it:
the node manager shows a sliver's key count, not the keys, and the agent must not read
another creator's slivers to learn what to compare.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slicectl.core.errors import NotFoundError, SlicectlError
from slicectl.core.units import iso, parse_instant
from slicectl.plc.credentials import write_secret

from .plan import Action, Have, Want, Wants, admin_want, plan, wants

log = logging.getLogger("slicectl.agent")

#: ``nm(method, *args)``: a call on the node manager (ipc.rpc.Client.call).
NM = Callable[..., Any]
#: What a node manager's refusal by the node's local policy says
#: (:data:`slicectl.core.policy.REFUSED`; not imported, to keep the agent's bundle within
#: an initscript's size; a unit test holds the two equal).
REFUSED = "refused by this node's policy"
#: Why the agent stops a sliver: PLC disabled the slice (its ``enabled`` tag <= 0).
STOP_REASON = "stopped by PLC: the slice's enabled tag is 0 or less"
#: What the node manager says when the agent starts a sliver the site's admin stopped
#: (:data:`slicectl.node.nm.manager.ADMIN_STOPPED`; a unit test holds the two equal).
ADMIN_STOPPED = "the site's admin stopped it"


@dataclass
class Record:
    """What the agent keeps on disk."""

    #: slice -> {"keys": [...], "initscript": "..."} for every sliver it made.
    made: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: PLC's last good GetSlivers answer (None before the first).
    view: dict[str, Any] | None = None
    #: Problems already reported, so each is logged once per slice.
    reported: list[str] = field(default_factory=list)

    @classmethod
    def load(cls, path: Path) -> Record:
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return cls()
        except (OSError, ValueError) as e:
            log.warning("record %s: expected JSON, found %s; starting afresh", path, e)
            return cls()
        return cls(dict(data.get("made", {})), data.get("view"), list(data.get("reported", [])))

    def save(self, path: Path) -> None:
        """Written whole, mode 0600 (it holds PLC's view of the node)."""
        write_secret(path, {"made": self.made, "view": self.view, "reported": self.reported})


@dataclass(frozen=True)
class Outcome:
    done: list[str]
    failed: list[str]
    #: slices PLC lists for the node that the node's policy refuses -> the refusal
    refused: dict[str, str] = field(default_factory=dict)


def haves(nm: NM, record: Record, now: float) -> tuple[dict[str, Have], set[str]]:
    """The agent's slivers as the node manager shows them, and the names of the others it
    can see. A sliver the record names but the node no longer has is forgotten."""
    mine: dict[str, Have] = {}
    others: set[str] = set()
    for s in nm("list"):
        name = str(s["name"])
        if name not in record.made:
            others.add(name)
            continue
        rspec = dict(s.get("rspec") or {})
        end = int(parse_instant("end", rspec.get("end", s.get("expires", "now")), now))
        mine[name] = Have(name, s.get("desired") == "running",
                          tuple(sorted((k, v) for k, v in rspec.items()
                                       if k not in ("start", "end"))), end,
                          tuple(record.made[name].get("keys", [])),
                          str(record.made[name].get("initscript", "")),
                          tuple(s.get("rcaps") or ()), _info(record.made[name].get("info")))
    for gone in set(record.made) - set(mine):
        del record.made[gone]  # destroyed by someone with the right (root), or lost
    return mine, others


def _info(kept: object) -> tuple[str, tuple[str, ...]] | None:
    if not isinstance(kept, dict):
        return None
    return str(kept.get("description", "")), tuple(str(c) for c in kept.get("contacts", []))


def _info_struct(w: Want) -> dict[str, Any]:
    return {"description": w.info[0] or "made by the node agent from PLC",
            "contacts": list(w.info[1])}


def _acquire(nm: NM, w: Want) -> str:
    return str(nm("acquire", {**dict(w.rspec), "end": iso(w.end)}))


def apply(nm: NM, action: Action, record: Record) -> None:
    """One action; the record follows what the node now has."""
    w, name = action.want, action.name
    if action.kind == "destroy":
        nm("destroy", name)
        record.made.pop(name, None)
        return
    assert w is not None
    if action.kind == "create":
        rcap = _acquire(nm, w)
        try:
            nm("bind", name, rcap, {"keys": list(w.keys), "initscript": w.initscript,
                                    **_info_struct(w)})
        except SlicectlError:
            nm("release", rcap)  # nothing half-done: the rcap goes back
            raise
        record.made[name] = {"keys": list(w.keys), "initscript": w.initscript,
                             "info": {"description": w.info[0], "contacts": list(w.info[1])}}
    elif action.kind == "resize":
        rcap = _acquire(nm, w)
        try:
            nm("bind", name, rcap)
        except SlicectlError:
            nm("release", rcap)
            raise
        for old in action.old_rcaps:
            nm("release", old)
    elif action.kind == "set_keys":
        nm("set_keys", name, list(w.keys))
        record.made[name]["keys"] = list(w.keys)
    elif action.kind == "set_initscript":
        nm("set_initscript", name, w.initscript)
        record.made[name]["initscript"] = w.initscript
    elif action.kind == "set_info":
        nm("set_info", name, _info_struct(w))
        record.made[name]["info"] = {"description": w.info[0], "contacts": list(w.info[1])}
    elif action.kind == "stop":
        nm("stop", name, STOP_REASON)
    elif action.kind == "start":
        nm("start", name)


def admin_tools(nm: NM) -> dict[str, str] | None:
    """The admin sliver's name and initscript from the node manager (None: a node manager
    without the admin slice)."""
    try:
        got = nm("admin_tools")
    except NotFoundError:
        return None
    return {"slice": str(got["slice"]), "initscript": str(got["initscript"])}


def converge(nm: NM, view: dict[str, Any], record: Record, path: Path,
             now: float | None = None, admin: dict[str, str] | None = None) -> Outcome:
    """Make the node run what ``view`` lists (the agent's slivers only), and the site's
    admin sliver ``admin`` describes (see :func:`admin_tools`); the record is saved after
    every action. One failing action does not stop the others."""
    now = time.time() if now is None else now
    want: Wants = wants(view, now)
    if admin is not None:
        name = admin["slice"]
        if name in want.slivers:
            want.slivers.pop(name)
            want = Wants(want.slivers, (*want.problems, (name, "the name of the site's admin "
                                                         "sliver on this node; not made")))
        want.slivers[name] = admin_want(view, name, admin["initscript"], now)
    for slice_name, problem in want.problems:
        line = f"{slice_name}: {problem}"
        if line not in record.reported:
            log.warning("slice %s", line)
            record.reported.append(line)
    record.reported = record.reported[-1000:]
    have, others = haves(nm, record, now)
    for name in sorted(set(want.slivers) & others):
        line = f"{name}: held on this node by another creator; not made"
        if line not in record.reported:
            log.warning("slice %s", line)
            record.reported.append(line)
    record.view = view
    done: list[str] = []
    failed: list[str] = []
    refused: dict[str, str] = {}
    for action in plan(want.slivers, have, others):
        try:
            apply(nm, action, record)
            done.append(f"{action.kind} {action.name}")
        except SlicectlError as e:
            if REFUSED in str(e) or ADMIN_STOPPED in str(e):
                # the node's owner or site says no: PLC is told, not the log
                refused[action.name] = str(e)[:300]
                continue
            failed.append(f"{action.kind} {action.name}: {e}")
            log.warning("%s %s failed: %s", action.kind, action.name, e)
        record.save(path)
    record.save(path)
    return Outcome(done, failed, refused)
