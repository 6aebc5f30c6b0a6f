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

TCP, UDP, ICMP = 6, 17, 1
PROTOS = {"tcp": TCP, "udp": UDP, "icmp": ICMP}
PROTO_NAMES = {v: k for k, v in PROTOS.items()}

#: ICMP messages that quote the packet that caused them.
ICMP_ERRORS = frozenset({3, 4, 5, 11, 12})
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

    @functools.cached_property
    def addr_bytes(self) -> bytes:
        return socket.inet_aton(self.address)


@dataclass(frozen=True)
class IPv4:
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
    check_options(pkt[20:ihl])
    return IPv4(ihl, total, ttl, proto, frag, src, dst)


def check_options(opts: bytes) -> None:
    i = 0
    while i < len(opts):
        kind = opts[i]
        if kind == 0:
            return
        if kind == 1:
            i += 1
            continue
        if i + 1 >= len(opts) or opts[i + 1] < 2 or i + opts[i + 1] > len(opts):
            raise PacketRefused("malformed", f"expected well-formed IP options, found option "
                                             f"{kind} with a bad length")
        i += opts[i + 1]


def _ports(pkt: bytes, off: int, proto: int) -> tuple[int, int]:
    need = 20 if proto == TCP else 8
    if len(pkt) - off < need:
        raise PacketRefused("malformed", f"expected a {PROTO_NAMES[proto].upper()} header of "
                                         f"{need} bytes, found {len(pkt) - off}")
    sport, dport = struct.unpack_from("!HH", pkt, off)
    if proto == TCP and not 20 <= (pkt[off + 12] >> 4) * 4 <= len(pkt) - off:
        raise PacketRefused("malformed", "expected a TCP data offset inside the packet")
    if proto == UDP and struct.unpack_from("!H", pkt, off + 4)[0] != len(pkt) - off:
        raise PacketRefused("malformed", f"expected UDP length {len(pkt) - off}, found "
                                         f"{struct.unpack_from('!H', pkt, off + 4)[0]}")
    return sport, dport


def _icmp_quote(pkt: bytes, off: int) -> tuple[int, bytes, bytes, int, int, int]:
    """(proto, src, dst, sport, dport, icmp id) of the packet an ICMP error quotes."""
    inner = off + 8
    if len(pkt) - inner < 28:
        raise PacketRefused("malformed", "expected an ICMP error quoting an IP header and "
                                         "8 bytes")
    ihl = (pkt[inner] & 15) * 4
    proto = pkt[inner + 9]
    src, dst = pkt[inner + 12:inner + 16], pkt[inner + 16:inner + 20]
    l4 = inner + ihl
    if len(pkt) - l4 < 8:
        raise PacketRefused("malformed", "expected 8 quoted bytes after the quoted header")
    sport, dport = struct.unpack_from("!HH", pkt, l4)
    ident = struct.unpack_from("!H", pkt, l4 + 4)[0]
    return proto, src, dst, sport, dport, ident


def check_outgoing(pkt: bytes, b: Binding) -> IPv4:
    """Check a packet a sliver wants to send on a socket bound as ``b``.

    Returns the parsed header. Raises PacketRefused naming what is wrong.
    """
    ip = parse_ip(pkt)
    if ip.src != b.addr_bytes:
        raise PacketRefused("spoofed-source", f"expected source address {b.address}, found "
                                              f"{socket.inet_ntoa(ip.src)}")
    first = ip.dst[0]
    if first == 0 or first == 127 or 224 <= first <= 239 or ip.dst == b"\xff\xff\xff\xff":
        raise PacketRefused("destination", f"expected a unicast destination, found "
                                           f"{socket.inet_ntoa(ip.dst)}")
    if ip.ttl == 0:
        raise PacketRefused("malformed", "expected a TTL of at least 1, found 0")
    off = ip.ihl
    if ip.proto == ICMP:
        if len(pkt) - off < 8:
            raise PacketRefused("malformed", "expected an ICMP header of 8 bytes")
        icmp_type = pkt[off]
        if b.proto == ICMP:
            if icmp_type in ICMP_QUERIES:
                ident = struct.unpack_from("!H", pkt, off + 4)[0]
                if ident != b.icmp_id:
                    raise PacketRefused("foreign-port", f"expected ICMP id {b.icmp_id}, found "
                                                        f"{ident}")
                return ip
            if icmp_type in ICMP_ERRORS:
                proto, _src, _dst, _sp, _dp, ident = _icmp_quote(pkt, off)
                if proto == ICMP and ident == b.icmp_id:
                    return ip
                raise PacketRefused("foreign-port", "expected an ICMP error quoting this "
                                                    f"socket's ICMP id {b.icmp_id}")
            raise PacketRefused("wrong-protocol", f"expected an ICMP query or error, found "
                                                  f"ICMP type {icmp_type}")
        if icmp_type in ICMP_ERRORS:
            proto, _src, qdst, _sp, dport, _ = _icmp_quote(pkt, off)
            if proto == b.proto and qdst == b.addr_bytes and dport == b.port:
                return ip
            raise PacketRefused("foreign-port", f"expected an ICMP error quoting "
                                                f"{PROTO_NAMES[b.proto]} port {b.port}")
        raise PacketRefused("wrong-protocol", f"expected {PROTO_NAMES[b.proto]} (or an ICMP "
                                              f"error quoting its port), found ICMP type {icmp_type}")
    if ip.proto != b.proto:
        raise PacketRefused("wrong-protocol", f"expected {PROTO_NAMES.get(b.proto)}, found IP "
                                              f"protocol {PROTO_NAMES.get(ip.proto, ip.proto)}")
    sport, _dport = _ports(pkt, off, ip.proto)
    if sport != b.port:
        raise PacketRefused("foreign-port", f"expected source port {b.port}, found {sport}")
    return ip


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
                qproto, qsrc, _dst, sport, _dp, ident = _icmp_quote(pkt, ihl)
            except PacketRefused:
                return False
            if qsrc != b.addr_bytes or qproto != b.proto:
                return False
            return ident == b.icmp_id if b.proto == ICMP else sport == b.port
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
