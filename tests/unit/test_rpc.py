"""XML-RPC over a unix socket: peer credentials reach the dispatcher, errors come back typed."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
import xmlrpc.client
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from slicectl.core.errors import ConnectionFailed, NotFoundError, ValidationError
from slicectl.ipc.peer import Peer
from slicectl.ipc.rpc import Client, UnixXMLRPCServer


def dispatch(method: str, params: tuple[Any, ...], peer: Peer) -> Any:
    if method == "whoami":
        return {"uid": peer.uid, "pid": peer.pid}
    if method == "echo":
        return list(params)
    if method == "bad":
        raise ValidationError("cpu_share", "an integer from 1 to 1000", "x")
    if method == "crash":
        raise RuntimeError("boom")
    raise NotFoundError(f"method {method}: no such method")


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "nm" / "nm.sock"
    srv = UnixXMLRPCServer(path, dispatch)
    t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    yield path
    srv.shutdown()
    srv.server_close()


def test_peer_credentials_identify_caller(server: Path) -> None:
    assert Client(server).call("whoami") == {"uid": os.getuid(), "pid": os.getpid()}


def test_socket_is_owner_only(server: Path) -> None:
    assert server.stat().st_mode & 0o777 == 0o600


def test_values_round_trip(server: Path) -> None:
    args = ({"a": [1, 2], "b": None}, "text", True)
    assert Client(server).call("echo", *args) == list(args)


def test_errors_come_back_as_their_class(server: Path) -> None:
    with pytest.raises(ValidationError) as err:
        Client(server).call("bad")
    assert str(err.value) == "cpu_share: expected an integer from 1 to 1000, found 'x'"
    assert err.value.exit_code == 2
    with pytest.raises(NotFoundError):
        Client(server).call("nope")


def test_internal_errors_do_not_kill_the_server(server: Path) -> None:
    from slicectl.core.errors import SlicectlError

    with pytest.raises(SlicectlError, match="crash: internal error: boom"):
        Client(server).call("crash")
    assert Client(server).call("echo", 1) == [1]


def test_no_server_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConnectionFailed, match="found no one listening"):
        Client(tmp_path / "none.sock").call("status")


# callers pinned at connect time ------------------------------------------------------

def _post(body: bytes, method: str = "echo") -> bytes:
    call = body or xmlrpc.client.dumps((1,), method).encode()
    return (b"POST /RPC2 HTTP/1.0\r\nContent-Type: text/xml\r\n"
            + f"Content-Length: {len(call)}\r\n\r\n".encode() + call)


def _read_all(s: socket.socket) -> bytes:
    s.settimeout(10)
    data = b""
    while chunk := s.recv(65536):
        data += chunk
    return data


def _connect_in_child(path: Path) -> socket.socket:
    """A socket the parent holds whose other end was connected by a child that exited:
    the attack of issue 11 (the peer's credentials name the dead child)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            s.connect(str(path))
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    return s


def test_a_connection_made_by_an_exited_child_is_refused(server: Path) -> None:
    socks = [_connect_in_child(server) for _ in range(50)]
    for s in socks:
        with contextlib.suppress(OSError):  # refused and closed before we wrote: also refused
            s.sendall(_post(b""))
        answer = _read_all(s)
        s.close()
        # refused at accept (403), or pinned while the child lived and refused at the
        # request (a fault): never served
        refused = answer.startswith(b"HTTP/1.0 403") or b"<fault>" in answer
        assert refused and b"exited" in answer, answer
        assert b"<params>" not in answer
    assert Client(server).call("echo", 1) == [1]  # and the server serves the living


def test_a_connection_whose_peer_exits_later_is_refused(server: Path) -> None:
    r, w = os.pipe()
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child: connect, wait until told, exit
        s.connect(str(server))
        os.read(r, 1)
        os._exit(0)
    time.sleep(0.3)  # the server accepts and pins the living child
    os.write(w, b"x")
    os.waitpid(pid, 0)
    time.sleep(0.2)
    with contextlib.suppress(BrokenPipeError):  # refused and closed already
        s.sendall(_post(b""))
    answer = _read_all(s).decode()
    # the server saw the pinned peer exit (its pidfd) and refused the connection at once
    assert answer.startswith("HTTP/1.0 403") and "found it exited" in answer, answer


class _Owned:
    """An identity with an owner, as the node's pin gives (one container)."""

    def __init__(self, sock: socket.socket) -> None:
        self.peer = Peer.of(sock)
        self.owner = "c" * 64

    def check(self) -> None:
        self.peer.check()

    def close(self) -> None:
        self.peer.close()


def test_connections_per_owner_are_capped(tmp_path: Path) -> None:
    path = tmp_path / "capped.sock"
    srv = UnixXMLRPCServer(path, dispatch, identify=_Owned, max_per_owner=3)
    threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05},
                     daemon=True).start()
    try:
        held = []
        for _ in range(3):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(str(path))
            held.append(s)
        time.sleep(0.3)
        with pytest.raises(ConnectionFailed, match="expected at most 3 open at once"):
            Client(path).call("echo", 1)
        assert srv.refusals.summary() == [{"caller": "c" * 64, "reason": "connections",
                                           "count": 1}]
        for s in held:
            s.close()
        time.sleep(0.3)
        assert Client(path).call("echo", 1) == [1]
    finally:
        srv.shutdown()
        srv.server_close()


@pytest.mark.parametrize("junk", [
    b"\x00\xff" * 3000,
    b"GET / HTTP/1.1\r\n\r\n",
    b"POST /RPC2 HTTP/1.0\r\nContent-Length: 99999999999\r\n\r\n",
    b"POST /RPC2 HTTP/1.0\r\nContent-Length: -5\r\n\r\n",
    _post(b"<?xml version='1.0'?><methodCall><methodName>echo</methodName><params>"
          + b"<param><value>" + b"<array><data><value>" * 5000 + b"</value></param></params>"),
    _post(b'<?xml version="1.0"?><!DOCTYPE l [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;'
          b'&a;&a;&a;&a;&a;&a;&a;"><!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;">]>'
          b"<methodCall><methodName>&c;</methodName></methodCall>"),
    _post(b"<methodCall><methodName>echo</methodName><params><param><value><int>"
          + b"9" * 400 + b"</int></value></param></params></methodCall>"),
])
def test_junk_ends_that_connection_not_the_server(server: Path, junk: bytes) -> None:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(str(server))
    with contextlib.suppress(OSError):
        s.sendall(junk)
        s.shutdown(socket.SHUT_WR)
        _read_all(s)
    s.close()
    assert Client(server).call("echo", 1) == [1]
