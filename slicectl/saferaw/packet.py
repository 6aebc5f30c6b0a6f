"""IPv4 packets for safe raw sockets: parse, check against a binding, build, pcap.

Pure and stdlib-only. The shim on the host and the ``saferaw`` module in every sliver
run the same checks: the sliver's copy gives an immediate, clear error; the shim's is the
one that counts (a sliver can change its own copy).
"""

from __future__ import annotations

import errno
import functools
import socket
import struct
from dataclasses import dataclass
from typing import NamedTuple

TCP, UDP, ICMP = 6, 17, 1
PROTOS = {"tcp": TCP, "udp": UDP, "icmp": ICMP}
PROTO_NAMES = {v: k for k, v in PROTOS.items()}

#: ICMP messages that quote the packet that caused them.
ICMP_ERRORS = frozenset({3, 4, 5, 11, 12})
#: ... of which a sliver may send: destination unreachable, time exceeded, parameter
#: problem (never a redirect, which would steer the peer's routing, nor a source quench).
SENDABLE_ICMP_ERRORS = frozenset({3, 11, 12})

#: IP options a sliver may send: end of list, no-op, record route, timestamp (what
#: measurement tools use). Everything else is refused, the source routes (LSRR 131,
#: SSRR 137) first: they would let a packet pick its own path past the node's routing.
ALLOWED_OPTIONS = {0: "end of list", 1: "no-op", 7: "record route", 68: "timestamp"}
SOURCE_ROUTES = {131: "LSRR (loose source route)", 137: "SSRR (strict source route)"}

#: Destinations a sliver may never send to (first octet, or prefix and length):
#: this network (0/8), loopback (127/8), multicast (224/4), reserved and broadcast (240/4)
#: and link-local (169.254/16, where cloud metadata servers answer) unless allowed.
RESERVED_DESTINATIONS: tuple[tuple[int, int, str], ...] = (
    (0x00000000, 8, "0.0.0.0/8 (this network)"),
    (0x7F000000, 8, "127.0.0.0/8 (loopback)"),
    (0xE0000000, 4, "224.0.0.0/4 (multicast)"),
    (0xF0000000, 4, "240.0.0.0/4 (reserved, broadcast)"),
)
LINK_LOCAL = (0xA9FE0000, 16, "169.254.0.0/16 (link-local, cloud metadata)")
#: The reserved ranges above by first octet (each is at most 8 bits long; link-local's 16
#: are looked at in reserved_destination): one index per packet instead of a loop.
_RESERVED_BY_OCTET: tuple[str | None, ...] = tuple(
    next((name for net, length, name in RESERVED_DESTINATIONS
          if octet >> (8 - length) == net >> (32 - length)), None) for octet in range(256))
if any(length > 8 for _net, length, _name in RESERVED_DESTINATIONS):
    raise ValueError("RESERVED_DESTINATIONS: expected prefixes of at most 8 bits (the table "
                     "by first octet), found a longer one")
#: ICMP query messages carrying an identifier: echo, timestamp, information, mask.
ICMP_QUERIES = frozenset({0, 8, 13, 14, 15, 16, 17, 18})
ICMP_ECHO, ICMP_ECHOREPLY = 8, 0

IP_HDR = struct.Struct("!BBHHHBBH4s4s")


class PacketRefused(PermissionError):
    """A packet a safe raw socket may not send; ``reason`` is a short machine tag."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(errno.EPERM, f"packet refused: {detail}")
        self.reason = reason


@dataclass(frozen=True)
class Binding:
    """What a safe raw socket is bound to: its sliver's address and a port or ICMP id."""

    address: str
    proto: int
    port: int = 0
    icmp_id: int = -1
    #: Node policy ``allow_link_local``: may this socket send to 169.254.0.0/16?
    allow_link_local: bool = False

    @functools.cached_property
    def addr_bytes(self) -> bytes:
        return socket.inet_aton(self.address)


class IPv4(NamedTuple):
    """The fields of an IPv4 packet the checks need."""

    ihl: int
    total: int
    ttl: int
    proto: int
    frag: int
    src: bytes
    dst: bytes

    @property
    def options(self) -> bool:
        return self.ihl > 20


def parse_ip(pkt: bytes) -> IPv4:
    """Parse and sanity-check an IPv4 header.

    Raises:
        PacketRefused: not a well-formed IPv4 packet.
    """
    if len(pkt) < 20:
        raise PacketRefused("malformed", f"expected an IPv4 packet of at least 20 bytes, "
                                         f"found {len(pkt)}")
    vihl, _tos, total, _id, frag, ttl, proto, _sum, src, dst = IP_HDR.unpack_from(pkt)
    if vihl >> 4 != 4:
        raise PacketRefused("malformed", f"expected IP version 4, found {vihl >> 4}")
    ihl = (vihl & 15) * 4
    if ihl < 20 or ihl > len(pkt):
        raise PacketRefused("malformed", f"expected a header length of 20..{min(60, len(pkt))} "
                                         f"bytes, found {ihl}")
    if total != len(pkt):
        raise PacketRefused("malformed", f"expected total length {len(pkt)} (the bytes "
                                         f"given), found {total}")
    if frag & 0x3FFF:
        raise PacketRefused("fragment", "expected an unfragmented packet, found a fragment "
                                        "(its ports cannot be checked)")
    if ihl > 20:
        check_options(pkt[20:ihl])
    return IPv4(ihl, total, ttl, proto, frag, src, dst)


def option_kinds(opts: bytes) -> list[int]:
    """The kinds of the IP options in ``opts`` (the header past its 20 bytes), in order.

    Raises:
        PacketRefused: an option's length runs past the header or is under 2.
    """
    kinds = []
    i = 0
    while i < len(opts):
        kind = opts[i]
        kinds.append(kind)
        if kind == 0:
            break
        if kind == 1:
            i += 1
            continue
        if i + 1 >= len(opts) or opts[i + 1] < 2 or i + opts[i + 1] > len(opts):
            raise PacketRefused("malformed", f"expected well-formed IP options, found option "
                                             f"{kind} with a bad length")
        i += opts[i + 1]
    return kinds


def check_options(opts: bytes) -> None:
    option_kinds(opts)


def check_sendable_options(opts: bytes) -> None:
    """Refuse IP options a sliver may not send (see :data:`ALLOWED_OPTIONS`)."""
    if not opts:
        return
    for kind in option_kinds(opts):
        if kind in SOURCE_ROUTES:
            raise PacketRefused("source-route", f"expected IP options among {_ALLOWED}, found "
                                                f"{kind} {SOURCE_ROUTES[kind]}")
        if kind not in ALLOWED_OPTIONS:
            raise PacketRefused("ip-option", f"expected IP options among {_ALLOWED}, found "
                                             f"option {kind}")


_ALLOWED = ", ".join(f"{k} ({n})" for k, n in ALLOWED_OPTIONS.items())


def reserved_destination(dst: bytes, allow_link_local: bool = False) -> str | None:
    """What a reserved destination address is, or None for one a sliver may send to."""
    name = _RESERVED_BY_OCTET[dst[0]]
    if name is None and not allow_link_local and dst[0] == 169 and dst[1] == 254:
        return LINK_LOCAL[2]
    return name


_L4 = struct.Struct("!HHH")


def _ports(pkt: bytes, off: int, proto: int) -> tuple[int, int]:
    need = 20 if proto == TCP else 8
    if len(pkt) - off < need:
        raise PacketRefused("malformed", f"expected a {PROTO_NAMES[proto].upper()} header of "
                                         f"{need} bytes, found {len(pkt) - off}")
    sport, dport, udp_len = _L4.unpack_from(pkt, off)
    if proto == TCP and not 20 <= (pkt[off + 12] >> 4) * 4 <= len(pkt) - off:
        raise PacketRefused("malformed", "expected a TCP data offset inside the packet")
    if proto == UDP and udp_len != len(pkt) - off:
        raise PacketRefused("malformed", f"expected UDP length {len(pkt) - off}, found "
                                         f"{udp_len}")
    return sport, dport


@dataclass(frozen=True)
class Quote:
    """The packet an ICMP error quotes: its header's fields and first 8 payload bytes."""

    proto: int
    src: bytes
    dst: bytes
    sport: int
    dport: int
    #: For a quoted ICMP message: its type and identifier.
    icmp_type: int
    icmp_id: int


def quoted(pkt: bytes, off: int) -> Quote:
    """The packet the ICMP error at ``off`` quotes.

    Raises:
        PacketRefused: the quote is not an IPv4 header and 8 bytes.
    """
    inner = off + 8
    if len(pkt) - inner < 28:
        raise PacketRefused("malformed", "expected an ICMP error quoting an IP header and "
                                         "8 bytes")
    if pkt[inner] >> 4 != 4 or (pkt[inner] & 15) < 5:
        raise PacketRefused("malformed", "expected the ICMP error to quote an IPv4 header, "
                                         f"found version {pkt[inner] >> 4} length "
                                         f"{(pkt[inner] & 15) * 4}")
    ihl = (pkt[inner] & 15) * 4
    l4 = inner + ihl
    if len(pkt) - l4 < 8:
        raise PacketRefused("malformed", "expected 8 quoted bytes after the quoted header")
    sport, dport, ident = struct.unpack_from("!HHH", pkt, l4)
    return Quote(pkt[inner + 9], pkt[inner + 12:inner + 16], pkt[inner + 16:inner + 20],
                 sport, dport, pkt[l4], ident)


def check_outgoing(pkt: bytes, b: Binding) -> IPv4:
    """Check a packet a sliver wants to send on a socket bound as ``b``.

    Returns the parsed header. Raises PacketRefused naming what is wrong.
    """
    ip = parse_ip(pkt)
    if ip.src != b.addr_bytes:
        raise PacketRefused("spoofed-source", f"expected source address {b.address}, found "
                                              f"{socket.inet_ntoa(ip.src)}")
    reserved = reserved_destination(ip.dst, b.allow_link_local)
    if reserved is not None:
        raise PacketRefused("destination", f"expected a unicast destination outside the "
                                           f"reserved ranges, found {socket.inet_ntoa(ip.dst)} "
                                           f"in {reserved}")
    if ip.ttl == 0:
        raise PacketRefused("malformed", "expected a TTL of at least 1, found 0")
    if ip.ihl > 20:
        check_sendable_options(pkt[20:ip.ihl])
    off = ip.ihl
    if ip.proto == ICMP:
        if len(pkt) - off < 8:
            raise PacketRefused("malformed", "expected an ICMP header of 8 bytes")
        icmp_type = pkt[off]
        if b.proto == ICMP and icmp_type in ICMP_QUERIES:
            ident = struct.unpack_from("!H", pkt, off + 4)[0]
            if ident != b.icmp_id:
                raise PacketRefused("foreign-port", f"expected ICMP id {b.icmp_id}, found "
                                                    f"{ident}")
            return ip
        if icmp_type in ICMP_ERRORS:
            check_icmp_error(pkt, off, ip, b)
            return ip
        want = "an ICMP query or error" if b.proto == ICMP else \
            f"{PROTO_NAMES[b.proto]} (or an ICMP error quoting its port)"
        raise PacketRefused("wrong-protocol", f"expected {want}, found ICMP type {icmp_type}")
    if ip.proto != b.proto:
        raise PacketRefused("wrong-protocol", f"expected {PROTO_NAMES.get(b.proto)}, found IP "
                                              f"protocol {PROTO_NAMES.get(ip.proto, ip.proto)}")
    sport, _dport = _ports(pkt, off, ip.proto)
    if sport != b.port:
        raise PacketRefused("foreign-port", f"expected source port {b.port}, found {sport}")
    return ip


def check_icmp_error(pkt: bytes, off: int, ip: IPv4, b: Binding) -> None:
    """An ICMP error is about a packet its sender received: the quoted packet must be one
    this socket could have received from the error's destination. So its source is the
    error's destination (the peer), its destination is the sliver's address, and it is of
    the socket's protocol, to the socket's port (TCP, UDP) or an ICMP query carrying the
    socket's id (never an error about an error).

    Raises:
        PacketRefused: naming the first field that does not fit.
    """
    icmp_type = pkt[off]
    if icmp_type not in SENDABLE_ICMP_ERRORS:
        raise PacketRefused("icmp-type", f"expected an ICMP error of type "
                                         f"{', '.join(map(str, sorted(SENDABLE_ICMP_ERRORS)))}, "
                                         f"found type {icmp_type}")
    q = quoted(pkt, off)
    if q.dst != b.addr_bytes:
        raise PacketRefused("foreign-quote", f"expected the quoted packet's destination to be "
                                             f"this sliver's {b.address}, found "
                                             f"{socket.inet_ntoa(q.dst)}")
    if q.src != ip.dst:
        raise PacketRefused("foreign-quote", f"expected the quoted packet's source to be the "
                                             f"error's destination {socket.inet_ntoa(ip.dst)}, "
                                             f"found {socket.inet_ntoa(q.src)}")
    if q.proto != b.proto:
        raise PacketRefused("foreign-quote", f"expected the quoted packet to be "
                                             f"{PROTO_NAMES[b.proto]}, found IP protocol "
                                             f"{PROTO_NAMES.get(q.proto, q.proto)}")
    if b.proto == ICMP:
        if q.icmp_type not in ICMP_QUERIES or q.icmp_id != b.icmp_id:
            raise PacketRefused("foreign-quote", f"expected the quote to be an ICMP query "
                                                 f"with this socket's id {b.icmp_id}, found "
                                                 f"type {q.icmp_type} id {q.icmp_id}")
    elif q.dport != b.port:
        raise PacketRefused("foreign-quote", f"expected the quoted packet's destination port "
                                             f"to be this socket's {b.port}, found {q.dport}")


def incoming_matches(pkt: bytes, b: Binding) -> bool:
    """Whether a received packet belongs to a raw socket bound as ``b``: its protocol
    and port (or ICMP id), or an ICMP error quoting a packet the socket sent."""
    if len(pkt) < 28 or pkt[0] >> 4 != 4:
        return False
    ihl = (pkt[0] & 15) * 4
    proto = pkt[9]
    if pkt[16:20] != b.addr_bytes:
        return False
    if proto == ICMP and len(pkt) >= ihl + 8:
        icmp_type = pkt[ihl]
        if icmp_type in ICMP_ERRORS:
            try:
                q = quoted(pkt, ihl)
            except PacketRefused:
                return False
            if q.src != b.addr_bytes or q.proto != b.proto:
                return False
            return q.icmp_id == b.icmp_id if b.proto == ICMP else q.sport == b.port
        if b.proto == ICMP and icmp_type in ICMP_QUERIES:
            return bool(struct.unpack_from("!H", pkt, ihl + 4)[0] == b.icmp_id)
        return False
    if proto != b.proto or proto == ICMP or len(pkt) < ihl + 4:
        return False
    return bool(struct.unpack_from("!H", pkt, ihl + 2)[0] == b.port)


def sniff_matches(pkt: bytes, proto: int, port: int) -> bool:
    if len(pkt) < 24 or pkt[0] >> 4 != 4 or pkt[9] != proto:
        return False
    ihl = (pkt[0] & 15) * 4
    if len(pkt) < ihl + 4:
        return False
    sport, dport = struct.unpack_from("!HH", pkt, ihl)
    return port in (sport, dport)


# building ---------------------------------------------------------------------------------

def checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def ip_header(src: str, dst: str, proto: int, payload_len: int, ttl: int = 64,
              ident: int = 0, options: bytes = b"", tos: int = 0) -> bytes:
    if len(options) % 4:
        options += b"\0" * (4 - len(options) % 4)
    ihl = 20 + len(options)
    hdr = IP_HDR.pack(0x40 | ihl // 4, tos, ihl + payload_len, ident, 0x4000, ttl, proto, 0,
                      socket.inet_aton(src), socket.inet_aton(dst)) + options
    return hdr[:10] + struct.pack("!H", checksum(hdr)) + hdr[12:]


def _pseudo(src: str, dst: str, proto: int, length: int) -> bytes:
    return socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!BBH", 0, proto, length)


def udp_segment(src: str, dst: str, sport: int, dport: int, payload: bytes) -> bytes:
    seg = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    csum = checksum(_pseudo(src, dst, UDP, len(seg)) + seg) or 0xFFFF
    return seg[:6] + struct.pack("!H", csum) + seg[8:]


def tcp_segment(src: str, dst: str, sport: int, dport: int, seq: int, ack: int, flags: int,
                payload: bytes = b"", window: int = 65535) -> bytes:
    seg = struct.pack("!HHIIBBHHH", sport, dport, seq, ack, 5 << 4, flags, window, 0, 0) + payload
    csum = checksum(_pseudo(src, dst, TCP, len(seg)) + seg)
    return seg[:16] + struct.pack("!H", csum) + seg[18:]


def icmp_echo(ident: int, seq: int, payload: bytes = b"") -> bytes:
    msg = struct.pack("!BBHHH", ICMP_ECHO, 0, 0, ident, seq) + payload
    return msg[:2] + struct.pack("!H", checksum(msg)) + msg[4:]


def packet(src: str, dst: str, proto: int, segment: bytes, ttl: int = 64,
           options: bytes = b"", ident: int = 0) -> bytes:
    return ip_header(src, dst, proto, len(segment), ttl, ident, options) + segment


# pcap -------------------------------------------------------------------------------------

LINKTYPE_RAW = 101


def pcap_header(snaplen: int = 65535) -> bytes:
    return struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, snaplen, LINKTYPE_RAW)


def pcap_record(ts: float, pkt: bytes, snaplen: int = 65535) -> bytes:
    sec = int(ts)
    data = pkt[:snaplen]
    return struct.pack("<IIII", sec, int((ts - sec) * 1e6), len(data), len(pkt)) + data
