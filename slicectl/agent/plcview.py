"""The agent's side of PLC: log in as the node (hmac with the node key, then a session)
and fetch the node's GetSlivers view."""

from __future__ import annotations

import ssl
import xmlrpc.client
from typing import Any

from slicectl.core.errors import ConnectionFailed
from slicectl.plc.auth import hmac_value
from slicectl.plc.credentials import NodeCredentials


class _Timed(xmlrpc.client.SafeTransport):
    """HTTP(S) with a timeout on every connection (a hung PLC must not hang the agent)."""

    def __init__(self, timeout: float, context: ssl.SSLContext | None) -> None:
        super().__init__(context=context)
        self._timeout = timeout
        self._tls = context is not None

    def make_connection(self, host: Any) -> Any:
        conn: Any = (super().make_connection(host) if self._tls
                     else xmlrpc.client.Transport.make_connection(self, host))
        conn.timeout = self._timeout
        return conn


class PLCView:
    """One node's connection to PLC. A fault or a network error is a
    :class:`ConnectionFailed` naming PLC's URL (the agent then keeps its last view)."""

    def __init__(self, creds: NodeCredentials, timeout: float = 30) -> None:
        self.creds = creds
        ctx = None
        if creds.url.startswith("https"):
            ctx = ssl.create_default_context(cafile=creds.cafile)
        self._proxy = xmlrpc.client.ServerProxy(creds.url, allow_none=True,
                                                transport=_Timed(timeout, ctx))
        self._session: str | None = None

    def _hmac(self, *args: Any) -> dict[str, Any]:
        return {"AuthMethod": "hmac", "node_id": self.creds.node_id,
                "value": hmac_value(self.creds.key, list(args))}

    def _call(self, method: str, *args: Any) -> Any:
        try:
            if self._session is None:
                self._session = str(self._proxy.GetSession(self._hmac()))
            try:
                return getattr(self._proxy, method)(
                    {"AuthMethod": "session", "session": self._session}, *args)
            except xmlrpc.client.Fault as f:
                if f.faultCode != 103:  # not an expired or unknown session
                    raise
                self._session = str(self._proxy.GetSession(self._hmac()))
                return getattr(self._proxy, method)(
                    {"AuthMethod": "session", "session": self._session}, *args)
        except xmlrpc.client.Fault as f:
            raise ConnectionFailed(f"PLC at {self.creds.url}: {method}: fault {f.faultCode}: "
                                   f"{f.faultString}") from f
        except (OSError, xmlrpc.client.ProtocolError, ssl.SSLError) as e:
            self._session = None
            raise ConnectionFailed(f"PLC at {self.creds.url}: {method}: expected an answer, "
                                   f"found {type(e).__name__}: {e}") from e

    def change_number(self) -> int:
        """PLC's change number now (WaitForChange with -1 answers at once)."""
        return int(self._call("WaitForChange", -1, 0))

    def wait_for_change(self, since: int, timeout_s: int) -> int:
        """PLC's change number once it differs from ``since``, or after ``timeout_s``."""
        return int(self._call("WaitForChange", since, timeout_s))

    def report(self, slivers: list[dict[str, str]]) -> None:
        """Tell PLC what the node runs (ReportSlivers: [{name, state}])."""
        self._call("ReportSlivers", slivers)

    def slivers(self) -> dict[str, Any]:
        view = self._call("GetSlivers")
        if not isinstance(view, dict) or not isinstance(view.get("slivers"), list):
            raise ConnectionFailed(f"PLC at {self.creds.url}: GetSlivers: expected a struct "
                                   f"with slivers, found {type(view).__name__}")
        return view
