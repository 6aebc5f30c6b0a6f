"""XML-RPC over a unix socket, with the caller pinned at connect time (:mod:`slicectl.ipc.peer`).

The node manager is reachable only through this socket: root on the host, and root in
slivers whose rspec has ``nm_privileged`` (the socket's directory is mounted into them).
"""

from __future__ import annotations

import contextlib
import http.client
import logging
import os
import select
import socket
import socketserver
import threading
import time
import xmlrpc.client
from collections.abc import Callable
from pathlib import Path
from typing import Any
from xmlrpc.server import SimpleXMLRPCDispatcher, SimpleXMLRPCRequestHandler

from slicectl.core.errors import ConnectionFailed, PermissionDenied, SlicectlError, from_fault
from slicectl.ipc.accepting import OUT_OF_RESOURCES
from slicectl.ipc.lingering import linger_close
from slicectl.ipc.peer import Peer
from slicectl.ipc.refusals import Refusals

log = logging.getLogger("slicectl.ipc.rpc")

#: Pins the peer of a just accepted connection (default :meth:`Peer.of`); raising a
#: SlicectlError refuses it. What it returns must have ``check()`` (re-run before every
#: request) and may have ``close()`` (run when the connection ends) and ``owner`` (what
#: its connections count against).
Identify = Callable[[socket.socket], Any]
#: A dispatcher gets (method, params, the identity pinned at accept) and returns the result.
Dispatch = Callable[[str, tuple[Any, ...], Any], Any]

#: Largest request body the server reads (the biggest real call, set_initscript, is 64 KiB).
MAX_BODY = 4 << 20
#: Connections one owner (a container, or the host) may hold open at once.
MAX_CONNECTIONS_PER_OWNER = 64
#: The header that carries why a connection was refused (clients show it).
REFUSED_HEADER = "X-Slicectl-Refused"
#: A connection idle this long is dropped.
IDLE_TIMEOUT_S = 30.0


class _Handler(SimpleXMLRPCRequestHandler):
    rpc_paths = ("/", "/RPC2")
    disable_nagle_algorithm = False  # unix sockets have no TCP_NODELAY
    timeout = IDLE_TIMEOUT_S
    server: UnixXMLRPCServer

    def handle_one_request(self) -> None:
        """Wait for the next request or the peer's exit, whichever comes first: a
        connection whose process is gone frees its place at once."""
        who: Any = self.client_address  # what the server pinned at accept
        pidfd = getattr(who, "pidfd", -1)
        if pidfd >= 0:
            p = select.poll()
            p.register(self.connection, select.POLLIN)
            p.register(pidfd, select.POLLIN)
            ready = dict(p.poll(IDLE_TIMEOUT_S * 1000))
            if not ready:
                self.close_connection = True
                return
            if pidfd in ready and self.connection.fileno() not in ready:
                answer_refusal(self.connection, 403, f"peer pid {who.pid}: "
                               "expected the process that connected, found it exited "
                               "(a connection is not passed on)")
                self.close_connection = True
                return
        super().handle_one_request()

    def do_POST(self) -> None:
        length = self.headers.get("content-length", "")
        if not length.isdigit() or int(length) > self.server.max_body:
            self.close_connection = True
            self.send_error(413 if length.isdigit() else 411,
                            f"content-length: expected at most {self.server.max_body} bytes, "
                            f"found {length[:20]!r}")
            return
        super().do_POST()

    def _dispatch(self, method: str, params: tuple[Any, ...]) -> Any:
        who: Any = self.client_address  # what the server pinned at accept (see get_request)
        try:
            who.check()
            return self.server.dispatch(method, params, who)
        except SlicectlError as e:
            raise xmlrpc.client.Fault(e.fault_code, str(e)) from e
        except Exception as e:  # a bug inside the method: the server's, not the caller's
            log.exception("%s failed", method)
            raise xmlrpc.client.Fault(100, f"{method}: internal error: {e}") from e

    def log_message(self, format: str, *args: Any) -> None:
        log.debug(format, *args)


class UnixXMLRPCServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer,
                       SimpleXMLRPCDispatcher):
    """A threaded XML-RPC server on a unix socket that only the owner (root) may open.

    Each connection's peer is pinned when it is accepted (``identify``) and checked
    again before each request on it; a peer that cannot be pinned is answered with
    the reason (HTTP 403) and dropped.
    """

    daemon_threads = True
    block_on_close = False
    logRequests = False

    def __init__(self, path: Path, dispatch: Dispatch, identify: Identify = Peer.of,
                 max_body: int = MAX_BODY,
                 max_per_owner: int = MAX_CONNECTIONS_PER_OWNER) -> None:
        SimpleXMLRPCDispatcher.__init__(self, allow_none=True, encoding="utf-8")
        self.dispatch = dispatch
        self.identify = identify
        self.max_body = max_body
        self.max_per_owner = max_per_owner
        self._open: dict[str, int] = {}
        self._open_lock = threading.Lock()
        self.refusals = Refusals(log)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        tmp.unlink(missing_ok=True)
        socketserver.UnixStreamServer.__init__(self, str(tmp), _Handler)
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)  # atomic: clients never see a missing socket on restart
        self.path = path

    def get_request(self) -> tuple[socket.socket, Any]:
        """Accept a connection and pin its peer. A peer that cannot be pinned (its
        process is gone, it has no credentials) is answered at once and dropped: it
        holds no thread and counts against no one."""
        try:
            sock, _ = self.socket.accept()
        except OSError as e:
            if e.errno in OUT_OF_RESOURCES:
                log.warning("accept: %s; backing off", e.strerror)
                time.sleep(0.1)  # the listener stays readable: do not spin
            raise
        try:
            return sock, self.identify(sock)
        except SlicectlError as e:
            self.refusals.count("unidentified", "peer not pinned", str(e))
            refuse(sock, 403, str(e))
        except Exception as e:  # an identify bug must refuse, never serve
            log.exception("identify failed")
            refuse(sock, 403, f"peer: expected to identify it, failed ({e})")
        raise ConnectionRefusedError("peer refused")  # socketserver skips this request

    def verify_request(self, request: Any, client_address: Any) -> bool:
        owner = getattr(client_address, "owner", None)
        if owner is None:
            return True
        with self._open_lock:
            if self._open.get(owner, 0) < self.max_per_owner:
                self._open[owner] = self._open.get(owner, 0) + 1
                return True
            self._release(client_address, count=False)
        self.refusals.count(str(owner), "connections")
        answer_refusal(request, 503, f"connections of {owner[:12]}: expected at most "
                                     f"{self.max_per_owner} open at once, found that many")
        return False  # socketserver closes it (shutdown_request)

    def _release(self, who: Any, count: bool = True) -> None:
        close = getattr(who, "close", None)
        if close is not None:
            close()
        owner = getattr(who, "owner", None)
        if count and owner is not None:
            left = self._open.get(owner, 1) - 1
            if left > 0:
                self._open[owner] = left
            else:
                self._open.pop(owner, None)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self._open_lock:
                self._release(client_address)

    def shutdown_request(self, request: Any) -> None:
        linger_close(request)  # the last answer arrives even if the peer still writes

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.warning("connection of %s ended with an error", getattr(client_address, "owner", "?"),
                    exc_info=True)


def answer_refusal(sock: socket.socket, status: int, reason: str) -> None:
    """Write one HTTP error naming ``reason`` (in the body and a header), without
    blocking; a peer that does not read loses it. Close with :func:`linger_close`."""
    text = reason.replace("\r", " ").replace("\n", " ")[:300]
    body = f"{text}\n".encode()
    head = (f"HTTP/1.0 {status} {http.client.responses.get(status, 'Refused')}\r\n"
            f"Content-Type: text/plain\r\nContent-Length: {len(body)}\r\n"
            f"{REFUSED_HEADER}: {text}\r\n"
            "Connection: close\r\n\r\n").encode()
    with contextlib.suppress(OSError):
        sock.send(head + body, socket.MSG_DONTWAIT)


def refuse(sock: socket.socket, status: int, reason: str) -> None:
    """Answer a connection that will not be served (:func:`answer_refusal`) and close it
    so that the answer arrives (:func:`linger_close`)."""
    answer_refusal(sock, status, reason)
    linger_close(sock)


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        s.connect(self._path)
        self.sock = s


class _UnixTransport(xmlrpc.client.Transport):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__()
        self._path = path
        self._timeout = timeout

    def make_connection(self, host: Any) -> http.client.HTTPConnection:
        return _UnixConnection(self._path, self._timeout)


def unix_proxy(path: Path, timeout: float) -> xmlrpc.client.ServerProxy:
    """An XML-RPC proxy for a server on the unix socket ``path`` (at ``/RPC2``); faults and
    socket errors come back unchanged (see :class:`Client` for our errors)."""
    return xmlrpc.client.ServerProxy("http://localhost/RPC2",
                                     transport=_UnixTransport(str(path), timeout),
                                     allow_none=True)


class Client:
    """Calls a slicectl XML-RPC server on a unix socket; faults come back as our errors.

    Example:
        >>> nm = Client(Path("/run/slicectl/nm/nm.sock"))   # doctest: +SKIP
        >>> rcap = nm.call("acquire", {"cpu_share": 10})     # doctest: +SKIP
    """

    def __init__(self, path: Path, timeout: float = 300) -> None:
        self.path = path
        self._proxy = unix_proxy(path, timeout)

    def call(self, method: str, *args: Any) -> Any:
        try:
            return getattr(self._proxy, method)(*args)
        except xmlrpc.client.Fault as f:
            raise from_fault(f.faultCode, f.faultString) from None
        except xmlrpc.client.ProtocolError as e:
            reason = (e.headers.get(REFUSED_HEADER) if e.headers else None) or e.errmsg
            if e.errcode == 403:
                raise PermissionDenied(reason) from None
            raise ConnectionFailed(f"node manager at {self.path}: refused {method} "
                                   f"({e.errcode}: {reason})") from None
        except (FileNotFoundError, ConnectionRefusedError) as e:
            raise ConnectionFailed(
                f"node manager at {self.path}: expected it to answer, found no one listening "
                "(start it with `slicectl node up`)"
            ) from e
        except (http.client.HTTPException, ConnectionResetError) as e:
            raise ConnectionFailed(
                f"node manager at {self.path}: the connection broke during {method} ({e!r}); "
                "check `slicectl node status`") from e
        except PermissionError as e:
            raise ConnectionFailed(
                f"node manager at {self.path}: permission denied (run as root)") from e
