"""The administrative sniffer's record stream: wire format and readers.

The admin sniffer (``slicectl sniffer serve``) sees every packet a sliver sends (and, when
asked, receives) and publishes one fixed-size binary record per packet on a unix stream
socket, ``<run_dir>/sniffer/records.sock``. Consumers (the traffic auditor, the sensor
server, privileged slices granted the right) connect and read *frames*::

    frame   = header payload
    header  = struct "<BI": kind (one ASCII byte), payload length in bytes
    kind H  hello, JSON: {"version": 1, "node": str, "record": RECORD.format,
                          "record_size": 32}
    kind S  slices, JSON: {"<xid>": "<slice>", ...} the whole map; sent after the hello
            and again whenever a sliver comes or goes. Records carry only the xid.
    kind R  records: a whole number of RECORD structs (see :data:`RECORD`)
    kind D  drops, JSON: {"kernel": int, "consumer": int, "unknown": int} cumulative counts
            of packets the capture ring lost, of records *this* consumer lost because it
            read too slowly, and of packets from no known sliver. Sent whenever a count
            changes, at most once a second.

A consumer that stops reading loses records (counted in its ``consumer`` drops); it never
slows the sniffer, the slivers, or other consumers.

This module is pure and stdlib-only, so it can be copied into sidecar images.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import socket
import struct
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

VERSION = 1

#: time (unix s), xid, src, dst (4 raw bytes each), sport, dport, proto, tcp_flags,
#: length (IP total length), direction (OUT or IN), padding. For ICMP, sport is the
#: ICMP type and dport the ICMP code; for other protocols without ports both are 0.
RECORD = struct.Struct("<dI4s4sHHBBHB3x")
HEADER = struct.Struct("<BI")
OUT, IN = 0, 1

HELLO, SLICES, RECORDS, DROPS = b"H", b"S", b"R", b"D"
MAX_PAYLOAD = 1 << 22

TCP_FLAG_NAMES = "FSRPAUEC"  # FIN SYN RST PSH ACK URG ECE CWR, bit 0 first


@dataclass(frozen=True)
class PacketRecord:
    """One decoded record (convenient; hot paths should use :data:`RECORD` directly)."""

    time: float
    xid: int
    src: str
    dst: str
    sport: int
    dport: int
    proto: int
    tcp_flags: int
    length: int
    direction: int

    @classmethod
    def unpack(cls, raw: tuple[Any, ...]) -> PacketRecord:
        t, xid, src, dst, sport, dport, proto, flags, length, direction = raw
        return cls(t, xid, socket.inet_ntoa(src), socket.inet_ntoa(dst), sport, dport,
                   proto, flags, length, direction)

    def pack(self) -> bytes:
        return RECORD.pack(self.time, self.xid, socket.inet_aton(self.src),
                           socket.inet_aton(self.dst), self.sport, self.dport, self.proto,
                           self.tcp_flags, self.length, self.direction)


def flags_text(flags: int) -> str:
    """TCP flags as tcpdump-like letters, e.g. ``SA`` for SYN+ACK; empty for none."""
    return "".join(c for i, c in enumerate(TCP_FLAG_NAMES) if flags & (1 << i))


def frame(kind: bytes, payload: bytes) -> bytes:
    return HEADER.pack(kind[0], len(payload)) + payload


def json_frame(kind: bytes, obj: object) -> bytes:
    return frame(kind, json.dumps(obj, separators=(",", ":")).encode())


@dataclass(frozen=True)
class Frame:
    kind: bytes
    payload: bytes

    def json(self) -> Any:
        return json.loads(self.payload)

    def records(self) -> Iterator[tuple[Any, ...]]:
        """Raw record tuples (see :data:`RECORD`) of an ``R`` frame."""
        return RECORD.iter_unpack(self.payload)


class FrameError(ValueError):
    pass


def split_frames(buf: bytearray) -> Iterator[Frame]:
    """Take every whole frame off the front of ``buf`` (which keeps any partial rest)."""
    pos = 0
    n = len(buf)
    while n - pos >= HEADER.size:
        kind, length = HEADER.unpack_from(buf, pos)
        if length > MAX_PAYLOAD:
            raise FrameError(f"sniffer frame: expected at most {MAX_PAYLOAD} bytes, "
                             f"found a header claiming {length}")
        end = pos + HEADER.size + length
        if end > n:
            break
        yield Frame(bytes([kind]), bytes(buf[pos + HEADER.size:end]))
        pos = end
    del buf[:pos]


async def read_frames(path: str, read_size: int = 1 << 18) -> AsyncIterator[Frame]:
    """Connect to the sniffer at ``path`` and yield frames until it closes."""
    reader, writer = await asyncio.open_unix_connection(path, limit=read_size * 2)
    buf = bytearray()
    try:
        while True:
            chunk = await reader.read(read_size)
            if not chunk:
                return
            buf += chunk
            for f in split_frames(buf):
                yield f
    finally:
        writer.close()


def read_frames_blocking(sock: socket.socket, read_size: int = 1 << 18) -> Iterator[Frame]:
    """The same over an already connected blocking socket."""
    buf = bytearray()
    while True:
        chunk = sock.recv(read_size)
        if not chunk:
            return
        buf += chunk
        yield from split_frames(buf)


def ip_int(addr: bytes) -> int:
    return int.from_bytes(addr, "big")


def ip_text(addr: bytes | int) -> str:
    return str(ipaddress.IPv4Address(addr))
