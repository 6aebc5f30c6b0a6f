"""What a handler sees: its transaction, its caller, the time, and the event log."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import insert
from sqlalchemy.engine import Connection

from . import schema
from .policy import Caller


@dataclass(frozen=True)
class Settings:
    """Tunables of one PLC instance; tests and benches pass their own."""

    scrypt_n: int = 2**14
    session_ttl_s: int = 24 * 3600
    max_body_bytes: int = 4 << 20
    max_depth: int = 32
    max_multicall: int = 1000
    login_failures_per_account: int = 10
    login_failures_per_source: int = 50
    login_window_s: float = 300.0
    #: Bytes of rendered GetSlivers answers kept (0: none).
    view_cache_bytes: int = 256 << 20
    #: WaitForChange answers (off: it is a fault, as on a PLC without the extension, and
    #: nodes fall back to their periodic GetSlivers; the benchmark's baseline).
    change_notices: bool = True


@dataclass
class Call:
    conn: Connection
    caller: Caller
    method: str
    now: int
    settings: Settings
    api: Any = None
    #: The auth struct the call came with (DeleteSession ends its session).
    auth: dict[str, Any] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)
    #: The result goes out as XML-RPC text (so it may be pre-rendered, wire.Prerendered).
    wire: bool = False

    def event(self, object_type: str, ids: list[int], fields: dict[str, Any] | None = None) -> None:
        """Record a write: who, when, which method, which objects, which fields."""
        shown = {k: v for k, v in (fields or {}).items() if k not in ("password", "AuthString")}
        self.events.append({"object_type": object_type, "object_ids": ids, "fields": shown})

    def flush_events(self) -> None:
        for ev in self.events:
            self.conn.execute(insert(schema.events).values(
                time=self.now, person_id=self.caller.person_id, node_id=self.caller.node_id,
                caller=self.caller.name, method=self.method, object_type=ev["object_type"],
                object_ids=json.dumps(ev["object_ids"]),
                fields=json.dumps(ev["fields"], default=str)))
        self.events.clear()
