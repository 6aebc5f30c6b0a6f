"""The sliver of a sliver program, made by host root through the node manager's socket like
any sliver: a changed initscript (new code, new credentials, a new request list) replaces
the old one and restarts the sliver (its disk, and so the program's state, is kept); an
rcap near its end is renewed."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from slicectl.core.errors import NotFoundError
from slicectl.core.units import iso, parse_instant

#: The rcap's lifetime, and how close to its end a new install renews it.
LIFETIME_S = 365 * 86400
RENEW_BEFORE_S = 60 * 86400

NM = Callable[..., Any]


def ensure_sliver(nm: NM, name: str, rspec: Mapping[str, Any], script: str, description: str,
                  what: str, state: Path, say: Callable[[str], None],
                  now: float | None = None) -> str:
    """Make the sliver ``name`` running ``script``, or bring it up to date; what was done
    (one line, ``what`` naming the sliver, e.g. "the agent's sliver").

    ``state``: where the digest of the initscript it was given is kept (the node manager
    does not give initscripts back)."""
    now = time.time() if now is None else now
    digest = hashlib.sha256(script.encode()).hexdigest()
    mark = state / f"{name}-initscript.sha256"
    try:
        info = nm("get_sliver", name)
    except NotFoundError:
        info = None
    if info is None:
        rcap = nm("acquire", {**rspec, "end": iso(now + LIFETIME_S)})
        nm("bind", name, rcap, {"initscript": script, "keys": [], "description": description})
        mark.write_text(digest)
        done = f"made {what} {name}"
    else:
        done = f"{what} {name} is up to date"
        if (mark.read_text().strip() if mark.exists() else "") != digest:
            nm("set_initscript", name, script)
            nm("stop", name)
            nm("start", name)
            mark.write_text(digest)
            done = f"gave {what} {name} a new initscript and restarted it"
        end = info.get("rspec", {}).get("end")
        if isinstance(end, str) and parse_instant("end", end, 0) - now < RENEW_BEFORE_S:
            old = list(info.get("rcaps") or [])
            nm("bind", name, nm("acquire", {**rspec, "end": iso(now + LIFETIME_S)}))
            for r in old:
                nm("release", r)
            done += "; renewed its rcap"
    say(done)
    return done
