"""What the agent must do on its node: PLC's view of the node (GetSlivers) against the
slivers the agent made, as the node manager shows them. Pure: no I/O.

Only slivers the agent made are ever changed or destroyed; a sliver PLC lists under a
name another creator holds on the node is left alone (the node manager would refuse it
anyway) and reported.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from slicectl.core.rspec import BOOL_FIELDS, INT_FIELDS, RSpec

from .tags import initscript, resources

#: The rspec fields the agent sets from tags; the others keep the rspec's defaults.
COMPARED = (*(f for f in (*INT_FIELDS, *BOOL_FIELDS) if f != "nm_privileged"), "vsys",
            "vsys_vnet")
_DEFAULTS: dict[str, Any] = {f.name: f.default for f in fields(RSpec) if f.name in COMPARED}


def _plain(rspec: dict[str, Any]) -> dict[str, Any]:
    """Lists for tuples: the node manager's rspec comes over XML-RPC, the want from tags."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in rspec.items()}


@dataclass(frozen=True)
class Want:
    """One sliver PLC wants on this node."""

    name: str
    rspec: tuple[tuple[str, Any], ...]
    end: int
    keys: tuple[str, ...]
    initscript: str
    enabled: bool
    #: (description, contacts): what the node's audit pages show of the slice
    info: tuple[str, tuple[str, ...]] = ("", ())

    def full_rspec(self) -> dict[str, Any]:
        return {**_DEFAULTS, **dict(self.rspec)}


@dataclass(frozen=True)
class Have:
    """One sliver the agent made, as the node manager shows it and the agent set it."""

    name: str
    running: bool
    rspec: tuple[tuple[str, Any], ...]
    end: int
    keys: tuple[str, ...]
    initscript: str
    rcaps: tuple[str, ...] = ()
    #: as the agent last set it (None: never, a sliver of an older agent)
    info: tuple[str, tuple[str, ...]] | None = None


@dataclass(frozen=True)
class Action:
    """One call sequence on the node manager: ``create`` (acquire + bind), ``resize``
    (acquire the new rspec, bind it, release the old rcaps: a renewal is one),
    ``set_keys``, ``set_initscript``, ``set_info``, ``stop``, ``start``, ``destroy``."""

    kind: str
    name: str
    want: Want | None = None
    old_rcaps: tuple[str, ...] = ()


@dataclass(frozen=True)
class Wants:
    slivers: dict[str, Want]
    #: (slice, problem) for each malformed tag or unknown initscript, as found.
    problems: tuple[tuple[str, str], ...] = field(default=())


def wants(view: Mapping[str, Any], now: float) -> Wants:
    """The slivers of a GetSlivers answer that should run here now (an expired one, in a
    view kept on disk while PLC was away, should not)."""
    out: dict[str, Want] = {}
    problems: list[tuple[str, str]] = []
    scripts = view.get("initscripts", [])
    for sl in view.get("slivers", []):
        name = str(sl.get("name", ""))
        expires = sl.get("expires")
        if not name or not isinstance(expires, int) or expires <= now:
            continue
        if sl.get("instantiation", "plc-instantiated") != "plc-instantiated":
            continue  # delegated and nm-controller slices are made by others
        res = resources(sl.get("attributes", []))
        problems += [(name, p) for p in res.problems]
        text, problem = initscript(sl, scripts)
        if problem:
            problems.append((name, problem))
        keys = tuple(dict.fromkeys(str(k["key"]).strip() for k in sl.get("keys", [])
                                   if isinstance(k, Mapping) and k.get("key")))
        out[name] = Want(name, tuple(sorted(res.rspec.items())), expires, keys, text,
                         res.enabled, sliver_info(sl))
    return Wants(out, tuple(problems))


#: What the agent passes on of a slice's description and contacts (the node manager's
#: bounds: 2048 characters, e-mail addresses).
MAX_DESCRIPTION, MAX_CONTACTS = 2048, 20
_EMAIL = re.compile(r"^[^@\s]{1,64}@[^@\s]{1,189}$")


def sliver_info(sl: Mapping[str, Any]) -> tuple[str, tuple[str, ...]]:
    """(description, contacts) of a GetSlivers entry (slicectl's extension; a PLC without
    it gives neither). What the node manager would refuse is left out, not sent."""
    desc = sl.get("description")
    text = desc[:MAX_DESCRIPTION] if isinstance(desc, str) else ""
    raw = sl.get("contacts")
    contacts = tuple(dict.fromkeys(c for c in raw if isinstance(c, str) and _EMAIL.match(c))
                     )[:MAX_CONTACTS] if isinstance(raw, list) else ()
    return text, contacts


#: The site's admin sliver's rights, and how its rcap's end moves (renewed once a period).
ADMIN_RSPEC = (("admin", True), ("admin_sniffer", True))
ADMIN_PERIOD_S = 30 * 86400


def admin_want(view: Mapping[str, Any], name: str, script: str, now: float) -> Want:
    """The site's admin sliver (``name``): the admin right and the admin sniffer, the
    keys of GetSlivers' ``site_admin`` account (the site's enabled PIs and techs), the
    admin tools' initscript. It is kept with no keys too (nobody logs in; its events
    and its tools stay)."""
    keys: tuple[str, ...] = ()
    for acct in view.get("accounts", []):
        if isinstance(acct, Mapping) and acct.get("name") == "site_admin":
            keys = tuple(dict.fromkeys(str(k["key"]).strip() for k in acct.get("keys", [])
                                       if isinstance(k, Mapping) and k.get("key")))
    end = (int(now) // ADMIN_PERIOD_S + 2) * ADMIN_PERIOD_S
    return Want(name, ADMIN_RSPEC, end, keys, script, True,
                ("the site's admin sliver: the site's PIs and techs", ()))


def plan(want: Mapping[str, Want], have: Mapping[str, Have],
         others: Iterable[str] = ()) -> list[Action]:
    """The actions that make ``have`` into ``want``, destroys first (they free what the
    creates need). ``others``: names held on the node by other creators (skipped)."""
    held = set(others)
    out = [Action("destroy", n) for n in sorted(have) if n not in want]
    for name in sorted(want):
        w = want[name]
        if name not in have:
            if name not in held:
                out.append(Action("create", name, w))
                if not w.enabled:
                    out.append(Action("stop", name, w))
            continue
        h = have[name]
        current = {**_DEFAULTS, **{k: v for k, v in h.rspec if k in COMPARED}}
        if _plain(current) != _plain(w.full_rspec()) or h.end != w.end:
            out.append(Action("resize", name, w, h.rcaps))
        if h.keys != w.keys:
            out.append(Action("set_keys", name, w))
        if h.initscript != w.initscript:
            out.append(Action("set_initscript", name, w))
        if h.info != w.info:
            out.append(Action("set_info", name, w))
        if h.running and not w.enabled:
            out.append(Action("stop", name, w))
        elif not h.running and w.enabled:
            out.append(Action("start", name, w))
    return out
