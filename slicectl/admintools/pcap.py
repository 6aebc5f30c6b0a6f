"""pcap from the admin sniffer's records, and the small filter language of
``pl-tcpdump``. Pure: records in, bytes and decisions out.

The sniffer keeps no packet bytes: a record holds a packet's addresses, ports (ICMP type
and code), protocol, TCP flags, IP length and direction (see
:mod:`slicectl.core.sniffrecord`). Each record is written as the IPv4 packet it
describes, headers only (no IP options, sequence numbers or payload: the capture length
is the headers', the original length the packet's), so ``tcpdump -nr -`` shows addresses,
ports, flags and lengths, and marks the payload as not captured.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from slicectl.core.errors import ValidationError

#: pcap's global header: magic, version 2.4, no zone, no accuracy, snap length, and
#: LINKTYPE_RAW (each packet starts at its IP header).
LINKTYPE_RAW = 101
FILE_HEADER = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, LINKTYPE_RAW)
TCP, UDP, ICMP = 6, 17, 1
PROTOS = {"tcp": TCP, "udp": UDP, "icmp": ICMP}


@dataclass(frozen=True)
class Rec:
    """One sniffer record, decoded (addresses as 4 raw bytes)."""

    time: float
    xid: int
    src: bytes
    dst: bytes
    sport: int
    dport: int
    proto: int
    flags: int
    length: int
    direction: int


def _checksum(data: bytes) -> int:
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return int(~total & 0xFFFF)


def packet(r: Rec) -> bytes:
    """The headers of the IPv4 packet ``r`` describes."""
    if r.proto == TCP:
        l4 = struct.pack("!HHIIBBHHH", r.sport, r.dport, 0, 0, 5 << 4, r.flags & 0xFF, 0, 0, 0)
    elif r.proto == UDP:
        l4 = struct.pack("!HHHH", r.sport, r.dport, max(r.length - 20, 8) & 0xFFFF, 0)
    elif r.proto == ICMP:
        l4 = struct.pack("!BBHI", r.sport & 0xFF, r.dport & 0xFF, 0, 0)
    else:
        l4 = b""
    total = max(r.length, 20 + len(l4)) & 0xFFFF
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, total, 0, 0, 64, r.proto & 0xFF, 0, r.src, r.dst)
    ip = ip[:10] + struct.pack("!H", _checksum(ip)) + ip[12:]
    return ip + l4


def pcap_record(r: Rec) -> bytes:
    """A pcap record: its header (time, captured and original length) and the headers."""
    data = packet(r)
    sec = int(r.time)
    usec = min(round((r.time - sec) * 1e6), 999_999)
    return struct.pack("<IIII", sec, usec, len(data), max(r.length, len(data))) + data


Match = Callable[[Rec, str], bool]


def _addr(word: str, value: str) -> bytes:
    try:
        return ipaddress.IPv4Address(value).packed
    except ValueError:
        raise ValidationError(word, "an IPv4 address", value) from None


def _port(value: str) -> int:
    if not value.isdigit() or not 0 <= int(value) <= 65535:
        raise ValidationError("port", "a port number from 0 to 65535", value)
    return int(value)


def _term(word: str, arg: str | None) -> Match:
    if word in PROTOS:
        proto = PROTOS[word]
        return lambda r, s: r.proto == proto
    if arg is None:
        raise ValidationError("expression", "a term (slice NAME, host|src|dst ADDR, port N, "
                              "tcp, udp, icmp)", word)
    if word == "slice":
        return lambda r, s: s == arg
    if word == "port":
        port = _port(arg)
        return lambda r, s: r.proto in (TCP, UDP) and port in (r.sport, r.dport)
    if word in ("host", "src", "dst"):
        a = _addr(word, arg)
        if word == "src":
            return lambda r, s: r.src == a
        if word == "dst":
            return lambda r, s: r.dst == a
        return lambda r, s: a in (r.src, r.dst)
    raise ValidationError("expression", "a term (slice NAME, host|src|dst ADDR, port N, tcp, "
                          "udp, icmp)", word)


def _not(m: Match) -> Match:
    return lambda r, s: not m(r, s)


def parse_filter(words: Sequence[str]) -> Match:
    """The predicate of ``pl-tcpdump``'s expression: terms ``slice NAME``, ``host ADDR``,
    ``src ADDR``, ``dst ADDR``, ``port N``, ``tcp``, ``udp``, ``icmp``, each optionally
    preceded by ``not``, all of which must hold (``and`` between them may be written).

    Raises:
        ValidationError: naming the word that is not a term or a bad value.
    """
    terms: list[Match] = []
    ws = [w for w in words if w != "and"]
    i = 0
    while i < len(ws):
        negate = ws[i] == "not"
        i += negate
        if i >= len(ws):
            raise ValidationError("expression", "a term after not", "nothing", as_text=True)
        word = ws[i]
        takes = word not in PROTOS
        arg = ws[i + 1] if takes and i + 1 < len(ws) else None
        m = _term(word, arg)
        terms.append(_not(m) if negate else m)
        i += 2 if takes else 1
    return lambda r, s: all(t(r, s) for t in terms)
