"""XML-RPC over a unix socket: peer credentials reach the dispatcher, errors come back typed."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from slicectl.core.errors import ConnectionFailed, NotFoundError, ValidationError
from slicectl.ipc.rpc import Client, UnixXMLRPCServer


def dispatch(method: str, params: tuple[Any, ...], uid: int, pid: int) -> Any:
    if method == "whoami":
        return {"uid": uid, "pid": pid}
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
