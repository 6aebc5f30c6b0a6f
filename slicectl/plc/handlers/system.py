"""system.* introspection, AuthCheck, sessions and the event log."""

from __future__ import annotations

from sqlalchemy import delete, func, insert, select

from .. import schema as s
from ..auth import new_session, session_hash
from ..call import Call
from ..changes import MAX_WAIT_S, Pending
from ..errors import InvalidArgument, NotImplementedFault
from ..fields import Field
from ..methods import TABLE, arg
from ..objects import EVENT
from ..policy import ADMIN, EVERYONE, NODE, PERSONS
from .common import register_get

METHOD_NAME = Field("string", 100, nullable=False)


@TABLE.method("system.listMethods", EVERYONE, returns="array", writes=False, auth=False)
def list_methods(call: Call) -> list[str]:
    """The names of all methods, system.* included."""
    return sorted([*call.api.table.methods, "system.multicall"])


@TABLE.method("system.methodSignature", EVERYONE, arg("method", METHOD_NAME), returns="array",
              writes=False, auth=False)
def method_signature(call: Call, name: str) -> list[list[str]]:
    """The XML-RPC signatures of a method: return type first, then argument types."""
    if name == "system.multicall":
        return [["array", "array"]]
    sigs: list[list[str]] = call.api.table.get(name).signatures()
    return sigs


@TABLE.method("system.methodHelp", EVERYONE, arg("method", METHOD_NAME), returns="string",
              writes=False, auth=False)
def method_help(call: Call, name: str) -> str:
    """What a method does, who may call it, its parameters and what it returns."""
    if name == "system.multicall":
        return ("Run several calls in one request: [{methodName, params}] -> a list of "
                "[value] or {faultCode, faultString}. Nested multicall is a fault.")
    text: str = call.api.table.get(name).help()
    return text


@TABLE.method("WaitForChange", ADMIN | NODE, arg("since", Field("int", None)),
              arg("timeout", Field("int", None, min_value=0), optional=True),
              returns="int", writes=False)
def wait_for_change(call: Call, since: int, timeout: int | None) -> int | Pending:
    """slicectl's extension for nodes: returns PLC's change number (the highest event id)
    as soon as it differs from ``since``, or after ``timeout`` seconds (at most 60,
    default 30). A node calls GetSlivers when the number it gets differs from the one it
    had; pass -1 to learn the current number at once. A PLC serving with
    ``--no-change-notices`` refuses it (nodes then poll GetSlivers)."""
    if not call.settings.change_notices:
        raise NotImplementedFault("WaitForChange: change notices are off on this PLC (plc "
                                  "serve --no-change-notices); poll GetSlivers instead")
    wait = min(MAX_WAIT_S, 30 if timeout is None else timeout)
    current = int(call.conn.execute(select(func.max(s.events.c.event_id))).scalar() or 0)
    call.api.changes.bump(current)
    if current != since or not call.wire or wait == 0:
        return current
    return Pending(since, wait)


@TABLE.method("AuthCheck", EVERYONE, returns="int", writes=False)
def auth_check(call: Call) -> int:
    """Returns 1 if the auth struct authenticates."""
    return 1


@TABLE.method("GetSession", PERSONS | NODE, arg("expires", Field("timestamp", None), True),
              returns="string", writes=True)
def get_session(call: Call, expires: int | None) -> str:
    """A new session key: for persons valid 24 h (or until ``expires``); for nodes without
    expiry, one per node."""
    key, h = new_session()
    if call.caller.kind == "node":
        call.conn.execute(delete(s.sessions).where(s.sessions.c.node_id == call.caller.node_id))
        call.conn.execute(insert(s.sessions).values(session_hash=h, node_id=call.caller.node_id,
                                                    expires=None))
        return key
    until = expires if expires is not None else call.now + call.settings.session_ttl_s
    if until <= call.now:
        raise InvalidArgument(f"Invalid expires value: expected a time in the future, got {until}")
    call.conn.execute(insert(s.sessions).values(session_hash=h, person_id=call.caller.person_id,
                                                expires=until))
    call.conn.execute(delete(s.sessions).where(s.sessions.c.expires < call.now))
    return key


@TABLE.method("DeleteSession", PERSONS | NODE, returns="int", writes=True)
def delete_session(call: Call) -> int:
    """End the session this call authenticated with (no-op for other auth methods)."""
    key = call.auth.get("session")
    if call.auth.get("AuthMethod") == "session" and isinstance(key, str):
        call.conn.execute(delete(s.sessions).where(s.sessions.c.session_hash == session_hash(key)))
        call.event("Session", [], {})
    return 1


register_get(EVENT, ADMIN, doc="The event log: every write with its time, caller, method, "
                               "object type and ids, and the fields it changed.")

