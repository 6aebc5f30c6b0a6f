"""XML-RPC over a unix socket, with the caller identified by the socket's peer credentials.

The node manager is reachable only through this socket: root on the host, and root in
slivers whose rspec has ``nm_privileged`` (the socket's directory is mounted into them).
"""

from __future__ import annotations

import http.client
import logging
import os
import socket
import socketserver
import struct
import xmlrpc.client
from collections.abc import Callable
from pathlib import Path
from typing import Any
from xmlrpc.server import SimpleXMLRPCDispatcher, SimpleXMLRPCRequestHandler

from slicectl.core.errors import ConnectionFailed, SlicectlError, from_fault

log = logging.getLogger("slicectl.ipc.rpc")

#: A dispatcher gets (method, params, peer uid, peer pid) and returns the result.
Dispatch = Callable[[str, tuple[Any, ...], int, int], Any]


def peer_credentials(sock: socket.socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of the process at the other end of a unix socket."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", raw)
    return pid, uid, gid


class _Handler(SimpleXMLRPCRequestHandler):
    rpc_paths = ("/", "/RPC2")
    disable_nagle_algorithm = False  # unix sockets have no TCP_NODELAY
    server: UnixXMLRPCServer

    def _dispatch(self, method: str, params: tuple[Any, ...]) -> Any:
        pid, uid, _gid = peer_credentials(self.request)
        try:
            return self.server.dispatch(method, params, uid, pid)
        except SlicectlError as e:
            raise xmlrpc.client.Fault(e.fault_code, str(e)) from e
        except Exception as e:  # a bug inside the method: the server's, not the caller's
            log.exception("%s failed", method)
            raise xmlrpc.client.Fault(100, f"{method}: internal error: {e}") from e

    def log_message(self, format: str, *args: Any) -> None:
        log.debug(format, *args)


class UnixXMLRPCServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer,
                       SimpleXMLRPCDispatcher):
    """A threaded XML-RPC server on a unix socket that only the owner (root) may open."""

    daemon_threads = True
    block_on_close = False
    logRequests = False

    def __init__(self, path: Path, dispatch: Dispatch) -> None:
        SimpleXMLRPCDispatcher.__init__(self, allow_none=True, encoding="utf-8")
        self.dispatch = dispatch
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        tmp.unlink(missing_ok=True)
        socketserver.UnixStreamServer.__init__(self, str(tmp), _Handler)
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)  # atomic: clients never see a missing socket on restart
        self.path = path


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


class Client:
    """Calls a slicectl XML-RPC server on a unix socket; faults come back as our errors.

    Example:
        >>> nm = Client(Path("/run/slicectl/nm/nm.sock"))   # doctest: +SKIP
        >>> rcap = nm.call("acquire", {"cpu_share": 10})     # doctest: +SKIP
    """

    def __init__(self, path: Path, timeout: float = 300) -> None:
        self.path = path
        self._proxy = xmlrpc.client.ServerProxy(
            "http://localhost/RPC2", transport=_UnixTransport(str(path), timeout),
            allow_none=True,
        )

    def call(self, method: str, *args: Any) -> Any:
        try:
            return getattr(self._proxy, method)(*args)
        except xmlrpc.client.Fault as f:
            raise from_fault(f.faultCode, f.faultString) from None
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
