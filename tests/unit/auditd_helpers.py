"""Shared helpers for the auditor's tests: records, frames, a fake sniffer socket, a fake NM.

The fakes sit at the lowest boundaries only: the sniffer is a unix socket that writes real
frames (:mod:`slicectl.core.sniffrecord`), the node manager is a real
:class:`slicectl.ipc.rpc.UnixXMLRPCServer` answering from a dict.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

from slicectl.core import sniffrecord as sr
from slicectl.core.errors import NotFoundError
from slicectl.ipc.rpc import UnixXMLRPCServer


def rec(t: float, xid: int, dst: str, dport: int = 80, *, src: str = "172.30.128.1",
        sport: int = 40000, proto: int = 6, flags: int = 0x02, length: int = 60,
        way: int = sr.OUT) -> bytes:
    return sr.PacketRecord(t, xid, src, dst, sport, dport, proto, flags, length, way).pack()


def hello(node: str = "node-x") -> bytes:
    return sr.json_frame(sr.HELLO, {"version": sr.VERSION, "node": node,
                                    "record": sr.RECORD.format, "record_size": sr.RECORD.size})


def records(*recs: bytes) -> bytes:
    return sr.frame(sr.RECORDS, b"".join(recs))


class FakeSniffer:
    """A unix-socket server that sends each connecting client the frames it is given."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.clients: list[asyncio.StreamWriter] = []
        self.backlog: list[bytes] = []
        self.server: asyncio.AbstractServer | None = None

    async def _client(self, _r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        self.clients.append(w)
        for data in self.backlog:
            w.write(data)
        await w.drain()

    async def send(self, *frames: bytes) -> None:
        self.backlog.extend(frames)
        for w in self.clients:
            for data in frames:
                w.write(data)
            await w.drain()

    async def wait_client(self) -> None:
        while not self.clients:
            await asyncio.sleep(0.01)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[FakeSniffer]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.server = await asyncio.start_unix_server(self._client, str(self.path))
        try:
            yield self
        finally:
            for w in self.clients:
                w.close()
            self.server.close()


@contextlib.contextmanager
def fake_nm(path: Path, slivers: dict[str, dict[str, Any]],
            status: dict[str, Any] | None = None) -> Iterator[list[str]]:
    """A real XML-RPC unix server answering ``status`` and ``get_sliver``; yields the calls."""
    calls: list[str] = []

    def dispatch(method: str, params: tuple[Any, ...], _peer: object) -> Any:
        calls.append(method)
        if method == "status":
            return status or {"node_id": "node-x", "hostname": "node-x.example.org",
                              "slivers": len(slivers)}
        if method == "get_sliver":
            if params[0] not in slivers:
                raise NotFoundError(f"slice {params[0]}: expected a sliver, found none")
            return {"name": params[0], **slivers[params[0]]}
        raise NotFoundError(f"method {method}: not in this fake")

    srv = UnixXMLRPCServer(path, dispatch)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        yield calls
    finally:
        srv.shutdown()
        srv.server_close()
