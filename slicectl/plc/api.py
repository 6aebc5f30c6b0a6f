"""The PLCAPI dispatcher: XML-RPC body in, XML-RPC body out.

Synchronous by design: the server runs it on a thread pool. Every call is one database
transaction (authentication, checks, the change and its events); a fault rolls it all
back. Only PLCAPI fault codes leave this module.
"""

from __future__ import annotations

import hmac
import logging
import time
import xmlrpc.client
from collections.abc import Callable
from typing import Any
from xml.parsers.expat import ExpatError

from sqlalchemy import func, select
from sqlalchemy.exc import DBAPIError, IntegrityError, SQLAlchemyError

from . import schema as s
from .auth import LoginLimiter, VerifiedCache, hash_password, hmac_value, session_hash
from .call import Call, Settings
from .changes import ChangeFeed, Pending
from .db import Database
from .errors import (
    AuthFailure,
    DBError,
    InternalError,
    InvalidArgument,
    PermissionDenied,
    PLCFault,
    WrongArgCount,
    bad_value,
)
from .methods import TABLE, Method, Table
from .objects import ROLES
from .policy import ANONYMOUS, Caller
from .views import ViewCache
from .wire import dumps_response

log = logging.getLogger("slicectl.plc")


class BadRequest(Exception):
    """The body is not an XML-RPC call at all: the server answers 400."""


def depth(value: object, limit: int) -> int:
    """How deep ``value`` nests (iteratively; stops counting past ``limit``)."""
    stack: list[tuple[object, int]] = [(value, 1)]
    deepest = 0
    while stack:
        v, d = stack.pop()
        deepest = max(deepest, d)
        if d > limit:
            return d
        if isinstance(v, dict):
            stack.extend((x, d + 1) for x in v.values())
        elif isinstance(v, list | tuple):
            stack.extend((x, d + 1) for x in v)
    return deepest


#: Write methods whose writes no GetSlivers answer shows (a node's last contact and
#: reports, sessions).
VIEW_NEUTRAL = frozenset({"GetSlivers", "ReportSlivers", "GetSession", "DeleteSession"})


class PLCAPI:
    """PLCAPI over one database."""

    def __init__(self, db: Database, settings: Settings | None = None, table: Table | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        from . import handlers  # noqa: F401  (registers the method table)

        self.db = db
        self.settings = settings or Settings()
        self.table = table or TABLE
        self.clock = clock
        self.limiter = LoginLimiter(self.settings.login_failures_per_account,
                                    self.settings.login_failures_per_source,
                                    self.settings.login_window_s)
        self.passwords = VerifiedCache()
        #: GetSlivers answers as sent, per node (see :mod:`slicectl.plc.views`).
        self.views = ViewCache(self.settings.view_cache_bytes)
        #: The change number nodes wait on (WaitForChange; see :mod:`slicectl.plc.changes`).
        self.changes = ChangeFeed(self._last_event_id())
        #: Checked when no such person exists, so that a miss costs what a hit costs.
        self._dummy_hash = hash_password("slicectl-dummy", n=self.settings.scrypt_n)

    # wire -------------------------------------------------------------------------------

    def handle(self, body: bytes, source: str = "local") -> bytes | Pending:
        """One HTTP body in, one methodResponse out; :class:`BadRequest` if it is no call.
        A WaitForChange that must wait comes back as :class:`Pending` (the server waits)."""
        if len(body) > self.settings.max_body_bytes:
            raise BadRequest(f"request body of {len(body)} bytes exceeds "
                             f"{self.settings.max_body_bytes}")
        head = body[:4096].lower()
        if b"<!doctype" in head or b"<!entity" in body.lower():
            raise BadRequest("DOCTYPE and entity declarations are not accepted")
        try:
            params, name = xmlrpc.client.loads(body, use_builtin_types=False)
        except (ExpatError, xmlrpc.client.ResponseError, ValueError, TypeError, KeyError,
                IndexError, AttributeError, OverflowError) as e:
            raise BadRequest(f"not an XML-RPC call: {type(e).__name__}") from e
        if name is None:
            raise BadRequest("not an XML-RPC call: no methodName")
        try:
            result = self.call(name, list(params), source, wire=True)
            if isinstance(result, Pending):
                return result  # the server waits on the event loop, then answers
            return dumps_response(result)
        except PLCFault as f:
            return xmlrpc.client.dumps(xmlrpc.client.Fault(f.fault_code, f.message),
                                       methodresponse=True, allow_none=True).encode()
        except (OverflowError, TypeError) as e:
            err = InternalError(f"result cannot be sent over XML-RPC ({e})")
            return xmlrpc.client.dumps(xmlrpc.client.Fault(err.fault_code, err.message),
                                       methodresponse=True, allow_none=True).encode()

    def call(self, name: str, params: list[Any], source: str = "local", wire: bool = False
             ) -> Any:
        """Run one method; raises :class:`PLCFault` with PLCAPI's code. ``wire``: the result
        goes out as XML-RPC (:func:`wire.dumps_response`), so it may be pre-rendered."""
        if depth(params, self.settings.max_depth) > self.settings.max_depth:
            raise InvalidArgument(f"Invalid params value: expected values nested at most "
                                  f"{self.settings.max_depth} deep, got deeper")
        if name == "system.multicall":
            return self.multicall(params, source, wire)
        try:
            return self._run(self.table.get(name), params, source, wire)
        except PLCFault:
            raise
        except IntegrityError as e:
            raise InvalidArgument("the change conflicts with existing data (a duplicate or a "
                                  "missing reference)") from e
        except (DBAPIError, SQLAlchemyError) as e:
            log.warning("%s: database error: %s", name, e)
            raise DBError(type(e).__name__) from e
        except Exception as e:
            log.exception("%s: internal error", name)
            raise InternalError(type(e).__name__) from e

    def multicall(self, params: list[Any], source: str, wire: bool = False) -> list[Any]:
        if len(params) != 1:
            raise WrongArgCount(f"expected 1 argument, got {len(params)}")
        calls = params[0]
        if not isinstance(calls, list):
            raise bad_value("calls", "array", calls)
        if len(calls) > self.settings.max_multicall:
            raise InvalidArgument(f"Invalid calls value: expected at most "
                                  f"{self.settings.max_multicall} calls, got {len(calls)}")
        out: list[Any] = []
        for c in calls:
            try:
                if not isinstance(c, dict) or not isinstance(c.get("methodName"), str) \
                        or not isinstance(c.get("params", []), list):
                    raise bad_value("call", "struct with methodName and params", c)
                if c["methodName"] == "system.multicall":
                    raise InvalidArgument("Invalid methodName value: expected a method other "
                                          "than system.multicall, got a nested multicall")
                r = self.call(c["methodName"], list(c.get("params", [])), source, wire)
                out.append([self.changes.current if isinstance(r, Pending) else r])
            except PLCFault as f:
                out.append({"faultCode": f.fault_code, "faultString": f.message})
        return out

    def _run(self, m: Method, params: list[Any], source: str, wire: bool = False) -> Any:
        if not m.min_args <= len(params) <= m.max_args:
            want = (str(m.min_args) if m.min_args == m.max_args
                    else f"{m.min_args} to {m.max_args}")
            raise WrongArgCount(f"expected {want} arguments, got {len(params)}")
        with self.db.transaction(m.writes) as conn:
            now = int(self.clock())
            caller = ANONYMOUS
            args = params
            if m.auth:
                caller = self.authenticate(conn, params[0], params[1:], source, now)
                args = params[1:]
                if not caller.roles & m.roles:
                    raise PermissionDenied(f"Not allowed to call {m.name}")
            checked = m.check_args(args)
            call = Call(conn, caller, m.name, now, self.settings, api=self,
                        auth=params[0] if m.auth and isinstance(params[0], dict) else {},
                        wire=wire)
            result = m.handler(call, *checked)
            wrote = bool(call.events)
            call.flush_events()
            last = self._last_event_id(conn) if wrote else None
        if m.writes and m.name not in VIEW_NEUTRAL:
            self.views.wrote()  # committed: cached GetSlivers answers are stale
        if last is not None:
            self.changes.bump(last)  # committed: nodes waiting for a change learn of it
        return result

    def _last_event_id(self, conn: Any = None) -> int:
        if conn is None:
            with self.db.transaction(False) as c:
                return self._last_event_id(c)
        return int(conn.execute(select(func.max(s.events.c.event_id))).scalar() or 0)

    # authentication ---------------------------------------------------------------------

    def authenticate(self, conn: Any, auth: object, args: list[Any], source: str, now: int) -> Caller:
        if not isinstance(auth, dict):
            raise bad_value("auth", "struct", auth)
        method = auth.get("AuthMethod")
        if method == "anonymous":
            return ANONYMOUS
        if method == "password":
            return self._password(conn, auth, source)
        if method == "session":
            return self._session(conn, auth, now)
        if method == "hmac" or method == "hmac_dummybox":
            return self._hmac(conn, auth, args, source)
        raise AuthFailure(f"expected AuthMethod password, session, hmac or anonymous, got "
                          f"{str(method)[:40]!r}")

    def _password(self, conn: Any, auth: dict[str, Any], source: str) -> Caller:
        user, secret = auth.get("Username"), auth.get("AuthString")
        if not isinstance(user, str) or not isinstance(secret, str):
            raise AuthFailure("expected string Username and AuthString")
        account = user.lower()
        if self.limiter.blocked(account, source):
            raise AuthFailure("too many failed logins for this account or address; try later")
        row = conn.execute(select(s.persons).where(s.persons.c.email_lc == account)).mappings().first()
        ok = self.passwords.verify(secret, row["password_hash"] if row else self._dummy_hash)
        if row is None or not ok:
            self.limiter.failed(account, source)
            raise AuthFailure("Username and AuthString do not match")
        self.limiter.succeeded(account)
        return self._person(conn, dict(row))

    def _person(self, conn: Any, row: dict[str, Any]) -> Caller:
        if not row["enabled"]:
            raise AuthFailure("account is disabled")
        pid = row["person_id"]
        role_ids = conn.execute(select(s.person_role.c.role_id)
                                .where(s.person_role.c.person_id == pid)).scalars().all()
        roles = frozenset(ROLES[r] for r in role_ids if r in ROLES)
        sites = conn.execute(
            select(s.person_site.c.site_id, s.sites.c.enabled)
            .join(s.sites, s.sites.c.site_id == s.person_site.c.site_id)
            .where(s.person_site.c.person_id == pid)
            .order_by(s.person_site.c.is_primary.desc(), s.person_site.c.site_id)).all()
        if sites and "admin" not in roles and not any(en for _, en in sites):
            raise AuthFailure("the person's sites are disabled")
        return Caller("person", roles, row["email"], person_id=pid,
                      site_ids=tuple(sid for sid, en in sites if en or "admin" in roles))

    def _node(self, conn: Any, node_id: int) -> Caller:
        row = conn.execute(select(s.nodes.c.node_id, s.nodes.c.hostname, s.nodes.c.site_id,
                                  s.sites.c.enabled)
                           .join(s.sites, s.sites.c.site_id == s.nodes.c.site_id)
                           .where(s.nodes.c.node_id == node_id)).first()
        if row is None:
            raise AuthFailure("no such node")
        if not row.enabled:
            raise AuthFailure("the node's site is disabled")
        return Caller("node", frozenset({"node"}), row.hostname, node_id=row.node_id,
                      site_ids=(row.site_id,))

    def _session(self, conn: Any, auth: dict[str, Any], now: int) -> Caller:
        key = auth.get("session")
        if not isinstance(key, str):
            raise AuthFailure("expected a string session")
        row = conn.execute(select(s.sessions).where(
            s.sessions.c.session_hash == session_hash(key))).mappings().first()
        if row is None or (row["expires"] is not None and row["expires"] <= now):
            raise AuthFailure("invalid or expired session")
        if row["node_id"] is not None:
            return self._node(conn, row["node_id"])
        person = conn.execute(select(s.persons).where(
            s.persons.c.person_id == row["person_id"])).mappings().first()
        if person is None:
            raise AuthFailure("invalid or expired session")
        return self._person(conn, dict(person))

    def _hmac(self, conn: Any, auth: dict[str, Any], args: list[Any], source: str) -> Caller:
        node_id, value = auth.get("node_id"), auth.get("value")
        if not isinstance(node_id, int) or isinstance(node_id, bool) or not isinstance(value, str):
            raise AuthFailure("expected int node_id and string value")
        account = f"node:{node_id}"
        if self.limiter.blocked(account, source):
            raise AuthFailure("too many failed logins for this node or address; try later")
        key = conn.execute(select(s.nodes.c.node_key).where(s.nodes.c.node_id == node_id)).scalar()
        expected = hmac_value(key or "slicectl-no-such-node", args)
        if key is None or not hmac.compare_digest(expected, value.lower()):
            self.limiter.failed(account, source)
            raise AuthFailure("HMAC does not match the node key")
        return self._node(conn, node_id)
