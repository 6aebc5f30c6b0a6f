"""Safe raw sockets for slivers.

A sliver has no CAP_NET_RAW. Instead it asks the node's shim, over a unix socket mounted
at ``/run/slicectl/raw/raw.sock``, for a raw socket bound to a port (TCP, UDP) or an ICMP
identifier it owns. The shim captures matching packets in the sliver's network namespace
(keeping them from the sliver's own kernel, so no RST or port unreachable leaks) and
checks every packet the sliver sends: well-formed IPv4, the socket's protocol, the
sliver's own source address and the bound port or id. Anything else is refused::

    import saferaw
    s = saferaw.socket("udp")
    s.bind(33434)
    s.setsockopt(saferaw.IPPROTO_IP, saferaw.IP_TTL, 3)
    s.sendto(saferaw.udp_segment(s.address, "192.0.2.1", 33434, 33434, b"probe"),
             ("192.0.2.1", 0))
    reply = s.recv()            # whole IP packets, e.g. an ICMP time exceeded
    s.send_many([pkt1, pkt2])   # whole IP packets, many per system call (sendmmsg)

The socket is a real file descriptor: ``select``/``poll`` work on it. Sniffer sockets
(``saferaw.sniffer("tcp", 8080)``) receive copies of all packets sent and received on a
port the sliver owns, and cannot send.

Stdlib-only: this package is copied into the reference image as ``saferaw``.
"""

from __future__ import annotations

import errno
import json
import os
import select
import socket as _socket
import struct
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .packet import (
    ICMP,
    PROTOS,
    TCP,
    UDP,
    Binding,
    PacketRefused,
    check_outgoing,
    icmp_echo,
    ip_header,
    packet,
    parse_ip,
    pcap_header,
    pcap_record,
    tcp_segment,
    udp_segment,
)

if TYPE_CHECKING:
    from .mmsg import Outbox

__all__ = [
    "ICMP", "IPPROTO_IP", "IP_HDRINCL", "IP_OPTIONS", "IP_TTL", "TCP", "UDP", "PacketRefused",
    "RawSocket", "check_outgoing", "icmp_echo", "ip_header", "packet", "parse_ip",
    "pcap_header", "pcap_record", "sniffer", "socket", "tcp_segment", "udp_segment",
]

SHIM_SOCK = os.environ.get("SAFERAW_SOCK", "/run/slicectl/raw/raw.sock")
IPPROTO_IP = _socket.IPPROTO_IP
IP_HDRINCL = _socket.IP_HDRINCL
IP_TTL = _socket.IP_TTL
IP_OPTIONS = 4
MAX_PACKET = 65535
#: send_many: packets per sendmmsg call, and the bytes they are copied into.
SEND_BATCH = 64
SEND_BATCH_BYTES = 256 << 10
TS = struct.Struct("<d")

_ERRNOS = {name: getattr(errno, name) for name in
           ("EPERM", "EACCES", "EADDRINUSE", "EINVAL", "EPROTONOSUPPORT", "ENOENT", "EBADF")}


def _error(reply: dict[str, Any]) -> OSError:
    code = _ERRNOS.get(str(reply.get("errno")), errno.EIO)
    cls = PermissionError if code in (errno.EPERM, errno.EACCES) else OSError
    return cls(code, str(reply.get("error", "refused by the raw-socket shim")))


class RawSocket:
    """A safe raw socket: see the module docstring."""

    def __init__(self, proto: str | int, path: str = SHIM_SOCK) -> None:
        names = {v: k for k, v in PROTOS.items()}
        name = proto if isinstance(proto, str) else names.get(proto, str(proto))
        if name not in PROTOS:
            raise OSError(errno.EPROTONOSUPPORT,
                          f"protocol: expected tcp, udp or icmp, found {proto!r}")
        self.proto_name = name
        self.proto = PROTOS[name]
        self.path = path
        self.sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_SEQPACKET)
        try:
            self.sock.connect(path)
        except OSError as e:
            self.sock.close()
            raise PermissionError(errno.EPERM, f"safe raw sockets: the shim at {path} is not "
                                  f"reachable ({e.strerror}); does this slice have "
                                  "raw_sockets?") from e
        self.binding: Binding | None = None
        self.hdrincl = False
        self.ttl = 64
        self.options = b""
        self.sniffing = False
        self.last_ts = 0.0
        self._outbox: Outbox | None = None

    # binding --------------------------------------------------------------------------

    def _open(self, request: dict[str, Any]) -> dict[str, Any]:
        if self.binding is not None:
            raise OSError(errno.EINVAL, "socket: already bound")
        self.sock.send(json.dumps({**request, "proto": self.proto_name}).encode())
        data = self.sock.recv(MAX_PACKET + 16)
        if not data:
            raise OSError(errno.EIO, "the raw-socket shim closed the connection")
        reply: dict[str, Any] = json.loads(data[1:]) if data[:1] == b"E" else json.loads(data)
        if not reply.get("ok"):
            raise _error(reply)
        return reply

    def bind(self, port: int | tuple[str, int]) -> None:
        """Bind a TCP or UDP socket to a port the sliver owns (free, or its own)."""
        if isinstance(port, tuple):
            port = port[1]
        if self.proto == ICMP:
            raise OSError(errno.EINVAL, "bind: an ICMP socket binds an id; use bind_icmp_id()")
        reply = self._open({"op": "open", "port": int(port)})
        self.binding = Binding(reply["address"], self.proto, port=int(port),
                               allow_link_local=reply.get("allow_link_local") is True)

    def bind_icmp_id(self, ident: int) -> None:
        """Bind an ICMP socket to an identifier (echo, timestamp and the errors quoting
        them)."""
        if self.proto != ICMP:
            raise OSError(errno.EINVAL, "bind_icmp_id: only for ICMP sockets")
        reply = self._open({"op": "open", "icmp_id": int(ident)})
        self.binding = Binding(reply["address"], ICMP, icmp_id=int(ident),
                               allow_link_local=reply.get("allow_link_local") is True)

    def _sniff(self, port: int) -> None:
        reply = self._open({"op": "sniff", "port": int(port)})
        self.binding = Binding(reply["address"], self.proto, port=int(port))
        self.sniffing = True

    @property
    def address(self) -> str:
        """The sliver's address (the only source address it may send from)."""
        if self.binding is None:
            raise OSError(errno.EINVAL, "socket: not bound")
        return self.binding.address

    # options --------------------------------------------------------------------------

    def setsockopt(self, level: int, opt: int, value: int | bytes) -> None:
        if level != IPPROTO_IP:
            raise OSError(errno.ENOPROTOOPT, f"setsockopt: level {level} not supported")
        if opt == IP_HDRINCL:
            self.hdrincl = bool(value)
        elif opt == IP_TTL and isinstance(value, int) and 1 <= value <= 255:
            self.ttl = value
        elif opt == IP_OPTIONS and isinstance(value, bytes) and len(value) <= 40:
            self.options = value
        else:
            raise OSError(errno.EINVAL, f"setsockopt: option {opt} value {value!r} not supported")

    # data -----------------------------------------------------------------------------

    def _check_bound(self) -> Binding:
        if self.binding is None:
            raise OSError(errno.EINVAL, "socket: bind it first")
        return self.binding

    def send(self, pkt: bytes) -> int:
        """Send a whole IP packet (as with IP_HDRINCL). Returns its length."""
        b = self._check_bound()
        if self.sniffing:
            raise OSError(errno.EBADF, "sniffer sockets cannot send")
        check_outgoing(pkt, b)
        self.sock.send(pkt)
        return len(pkt)

    def send_many(self, packets: Sequence[bytes]) -> int:
        """Send whole IP packets, as :meth:`send` sends each, in as few system calls as
        they fit in (``sendmmsg``, up to ``SEND_BATCH`` a call). All are checked first: a
        bad one raises PacketRefused before any is sent.

        Returns how many were sent, in order: all of them on a blocking socket; with a
        timeout, or non-blocking, the ones that fit before the socket stayed full
        (``TimeoutError`` or ``BlockingIOError`` when not even the first did)."""
        b = self._check_bound()
        if self.sniffing:
            raise OSError(errno.EBADF, "sniffer sockets cannot send")
        for pkt in packets:
            check_outgoing(pkt, b)
        if self._outbox is None:
            from .mmsg import Outbox

            self._outbox = Outbox(SEND_BATCH, SEND_BATCH_BYTES)
        out = self._outbox
        out.clear()
        sent = 0
        for pkt in packets:
            if not out.room(len(pkt)):
                done, full = self._flush(out)
                sent += done
                if full:
                    return self._partial(sent)
            out.add(pkt)
        done, full = self._flush(out)
        sent += done
        return self._partial(sent) if full else sent

    def _flush(self, out: Outbox) -> tuple[int, bool]:
        """Send what ``out`` holds: (how many were sent, whether the socket stayed full
        past its timeout, the rest then dropped)."""
        sent = 0
        timeout = self.sock.gettimeout()
        while out.pending:
            try:
                sent += out.send(self.sock)
            except BlockingIOError:  # a timeout (or non-blocking) socket: its fd is O_NONBLOCK
                if timeout == 0.0 or not select.select([], [self.sock], [], timeout)[1]:
                    out.clear()
                    return sent, True
        return sent, False

    def _partial(self, sent: int) -> int:
        if sent:
            return sent
        if self.sock.gettimeout():
            raise TimeoutError(errno.ETIMEDOUT, "send_many: the shim's socket stayed full "
                                                "past the timeout")
        raise BlockingIOError(errno.EAGAIN, "send_many: the shim's socket is full")

    def sendto(self, data: bytes, addr: tuple[str, int] | str) -> int:
        """Send ``data`` to ``addr``: a whole IP packet when IP_HDRINCL is set, else the
        transport header and payload, to which the IP header is added."""
        b = self._check_bound()
        if self.hdrincl:
            return self.send(data)
        dst = addr[0] if isinstance(addr, tuple) else addr
        self.send(packet(b.address, dst, self.proto, data, self.ttl, self.options))
        return len(data)

    def recv(self, bufsize: int = MAX_PACKET) -> bytes:
        """The next whole IP packet for this socket (header included)."""
        while True:
            data = self.sock.recv(MAX_PACKET + 16)
            if not data:
                raise OSError(errno.EPIPE, "the raw-socket shim closed the connection")
            kind = data[:1]
            if kind == b"P":
                self.last_ts = TS.unpack_from(data, 1)[0]
                return data[1 + TS.size:1 + TS.size + bufsize]
            if kind == b"E":
                raise _error(json.loads(data[1:]))

    def recvfrom(self, bufsize: int = MAX_PACKET) -> tuple[bytes, tuple[str, int]]:
        pkt = self.recv(bufsize)
        return pkt, (_socket.inet_ntoa(pkt[12:16]), 0)

    def fileno(self) -> int:
        return self.sock.fileno()

    def settimeout(self, timeout: float | None) -> None:
        self.sock.settimeout(timeout)

    def setblocking(self, flag: bool) -> None:
        self.sock.setblocking(flag)

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> RawSocket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def socket(proto: str | int, path: str = SHIM_SOCK) -> RawSocket:
    """A new safe raw socket for ``"tcp"``, ``"udp"`` or ``"icmp"``; bind it next."""
    return RawSocket(proto, path)


def sniffer(proto: str | int, port: int, path: str = SHIM_SOCK) -> RawSocket:
    """A receive-only socket copying every packet sent or received on ``port``."""
    s = RawSocket(proto, path)
    try:
        s._sniff(port)
    except BaseException:
        s.close()
        raise
    return s
