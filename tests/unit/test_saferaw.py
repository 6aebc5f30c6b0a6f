"""Safe raw socket checks as tables: what a sliver may send and what it receives."""

from __future__ import annotations

import struct

import pytest

from slicectl.core.sniffrecord import RECORD
from slicectl.node.ring import bpf_ip, pack_program
from slicectl.node.shim import assemble, bpf_binding
from slicectl.saferaw.packet import (
    ICMP,
    TCP,
    UDP,
    Binding,
    PacketRefused,
    check_outgoing,
    icmp_echo,
    incoming_matches,
    ip_header,
    packet,
    parse_ip,
    pcap_header,
    pcap_record,
    sniff_matches,
    tcp_segment,
    udp_segment,
)

ME, PEER, OTHER = "172.30.128.5", "198.18.0.2", "172.30.128.6"
UDP_B = Binding(ME, UDP, port=5000)
TCP_B = Binding(ME, TCP, port=5000)
ICMP_B = Binding(ME, ICMP, icmp_id=77)


def udp(src: str = ME, sport: int = 5000, ttl: int = 64, options: bytes = b"") -> bytes:
    return packet(src, PEER, UDP, udp_segment(src, PEER, sport, 53, b"hello"), ttl, options)


def tcp(src: str = ME, sport: int = 5000, flags: int = 0x02) -> bytes:
    return packet(src, PEER, TCP, tcp_segment(src, PEER, sport, 80, 1, 0, flags))


def icmp_error(quoted: bytes, icmp_type: int = 3, code: int = 3, src: str = ME) -> bytes:
    body = struct.pack("!BBHI", icmp_type, code, 0, 0) + quoted[:28]
    return packet(src, PEER, ICMP, body)


def with_byte(pkt: bytes, index: int, value: int) -> bytes:
    return pkt[:index] + bytes([value]) + pkt[index + 1:]


def to(dst: str) -> bytes:
    return packet(ME, dst, UDP, udp_segment(ME, dst, 5000, 9, b""))


def icmp_err_to(dst: str, quoted: bytes, icmp_type: int = 3) -> bytes:
    return packet(ME, dst, ICMP, struct.pack("!BBHI", icmp_type, 3, 0, 0) + quoted[:28])


LL_B = Binding(ME, UDP, port=5000, allow_link_local=True)
#: An echo request PEER sent to this sliver (what an ICMP socket's error may quote).
ECHO_IN = packet(PEER, ME, ICMP, struct.pack("!BBHHH", 8, 0, 0, 77, 1))
UDP_IN = packet(PEER, ME, UDP, udp_segment(PEER, ME, 53, 5000, b"q"))
LSRR = bytes([131, 7, 4, 198, 18, 0, 9, 0])
SSRR = bytes([137, 7, 4, 198, 18, 0, 9, 0])

ALLOWED = [
    ("udp from the bound port", udp(), UDP_B),
    ("udp with no-ops", udp(options=bytes([1, 1, 1, 0])), UDP_B),
    ("udp with a timestamp option", udp(options=bytes([68, 12, 5, 0] + [0] * 8)), UDP_B),
    ("udp to the last unicast address", to("223.255.255.254"), UDP_B),
    ("udp to 1.0.0.1, next to 0/8", to("1.0.0.1"), UDP_B),
    ("udp to 126.255.255.255, next to 127/8", to("126.255.255.255"), UDP_B),
    ("udp to 169.253.255.255, next to link-local", to("169.253.255.255"), UDP_B),
    ("udp to 169.255.0.1, next to link-local", to("169.255.0.1"), UDP_B),
    ("udp to the metadata server when policy allows", to("169.254.169.254"), LL_B),
    ("icmp socket: time exceeded quoting an echo request to it", icmp_err_to(PEER, ECHO_IN, 11),
     ICMP_B),
    ("udp socket: parameter problem quoting a packet to its port", icmp_err_to(PEER, UDP_IN, 12),
     UDP_B),
    ("udp with ttl 1", udp(ttl=1), UDP_B),
    ("udp with IP options (record route)", udp(options=bytes([7, 7, 4, 0, 0, 0, 0, 0])), UDP_B),
    ("tcp syn from the bound port", tcp(), TCP_B),
    ("icmp echo with the bound id", packet(ME, PEER, ICMP, icmp_echo(77, 1, b"x")), ICMP_B),
    ("icmp port unreachable quoting the bound port",
     icmp_error(packet(PEER, ME, UDP, udp_segment(PEER, ME, 53, 5000, b"q"))), UDP_B),
]


@pytest.mark.parametrize(("what", "pkt", "binding"), ALLOWED, ids=[a[0] for a in ALLOWED])
def test_allowed(what: str, pkt: bytes, binding: Binding) -> None:
    check_outgoing(pkt, binding)


REFUSED = [
    ("spoofed source", udp(src=OTHER), UDP_B, "spoofed-source"),
    ("foreign source port", udp(sport=5001), UDP_B, "foreign-port"),
    ("tcp on a udp socket", tcp(), UDP_B, "wrong-protocol"),
    ("udp on a tcp socket", udp(), TCP_B, "wrong-protocol"),
    ("icmp echo with another id", packet(ME, PEER, ICMP, icmp_echo(78, 1)), ICMP_B, "foreign-port"),
    ("icmp echo on a udp socket", packet(ME, PEER, ICMP, icmp_echo(77, 1)), UDP_B, "wrong-protocol"),
    ("icmp error quoting another port",
     icmp_error(packet(PEER, ME, UDP, udp_segment(PEER, ME, 53, 5001, b"q"))), UDP_B, "foreign-quote"),
    ("too short", b"\x45\x00\x00", UDP_B, "malformed"),
    ("IPv6 version nibble", with_byte(udp(), 0, 0x65), UDP_B, "malformed"),
    ("header length under 20", with_byte(udp(), 0, 0x44), UDP_B, "malformed"),
    ("total length lies", udp()[:2] + struct.pack("!H", 999) + udp()[4:], UDP_B, "malformed"),
    ("fragment", udp()[:6] + struct.pack("!H", 0x2000) + udp()[8:], UDP_B, "fragment"),
    ("ttl 0", with_byte(udp(), 8, 0), UDP_B, "malformed"),
    ("truncated udp header", ip_header(ME, PEER, UDP, 4) + b"\x13\x88\x00\x35", UDP_B, "malformed"),
    ("udp length lies", udp()[:24] + struct.pack("!H", 99) + udp()[26:], UDP_B, "malformed"),
    ("bad option length", udp(options=bytes([7, 60, 4, 0])), UDP_B, "malformed"),
    ("broadcast destination",
     packet(ME, "255.255.255.255", UDP, udp_segment(ME, "255.255.255.255", 5000, 9, b"")), UDP_B,
     "destination"),
    ("multicast destination",
     packet(ME, "224.0.0.1", UDP, udp_segment(ME, "224.0.0.1", 5000, 9, b"")), UDP_B, "destination"),
    ("this network 0/8", to("0.1.2.3"), UDP_B, "destination"),
    ("loopback 127/8", to("127.0.0.1"), UDP_B, "destination"),
    ("loopback 127.255.255.254", to("127.255.255.254"), UDP_B, "destination"),
    ("multicast 239.255.255.255", to("239.255.255.255"), UDP_B, "destination"),
    ("reserved 240/4", to("240.0.0.1"), UDP_B, "destination"),
    ("reserved 250.1.2.3", to("250.1.2.3"), UDP_B, "destination"),
    ("link-local 169.254.0.1", to("169.254.0.1"), UDP_B, "destination"),
    ("cloud metadata 169.254.169.254", to("169.254.169.254"), UDP_B, "destination"),
    ("loopback even when link-local is allowed", to("127.0.0.1"), LL_B, "destination"),
    ("LSRR", udp(options=LSRR), UDP_B, "source-route"),
    ("SSRR", udp(options=SSRR), UDP_B, "source-route"),
    ("LSRR after a no-op", udp(options=bytes([1]) + LSRR[:7]), UDP_B, "source-route"),
    ("SSRR after record route", udp(options=bytes([7, 3, 4]) + SSRR[:7] + bytes(2)), UDP_B,
     "source-route"),
    ("router alert option", udp(options=bytes([148, 4, 0, 0])), UDP_B, "ip-option"),
    ("security option", udp(options=bytes([130, 4, 0, 0])), UDP_B, "ip-option"),
    ("stream id option", udp(options=bytes([136, 4, 0, 0])), UDP_B, "ip-option"),
    ("LSRR on an ICMP socket", packet(ME, PEER, ICMP, icmp_echo(77, 1), options=LSRR), ICMP_B,
     "source-route"),
    # ICMP errors are about packets the sliver received: the quote is to the sliver, from
    # the error's destination.
    ("icmp error quoting a packet the sliver sent", icmp_err_to(PEER, udp()), UDP_B,
     "foreign-quote"),
    ("icmp error quoting a packet to another sliver",
     icmp_err_to(PEER, packet(PEER, OTHER, UDP, udp_segment(PEER, OTHER, 53, 5000, b"q"))),
     UDP_B, "foreign-quote"),
    ("icmp error to a third party about the peer's packet", icmp_err_to("198.18.0.9", UDP_IN),
     UDP_B, "foreign-quote"),
    ("icmp error quoting tcp on a udp socket",
     icmp_err_to(PEER, packet(PEER, ME, TCP, tcp_segment(PEER, ME, 53, 5000, 1, 0, 2))), UDP_B,
     "foreign-quote"),
    ("icmp socket: error quoting an echo with another id",
     icmp_err_to(PEER, packet(PEER, ME, ICMP, struct.pack("!BBHHH", 8, 0, 0, 78, 1))), ICMP_B,
     "foreign-quote"),
    ("icmp socket: error quoting an echo the sliver sent",
     icmp_err_to(PEER, packet(ME, PEER, ICMP, icmp_echo(77, 1))), ICMP_B, "foreign-quote"),
    ("icmp socket: error about an error",
     icmp_err_to(PEER, packet(PEER, ME, ICMP, struct.pack("!BBHHH", 3, 3, 0, 77, 0) + UDP_IN[:28])),
     ICMP_B, "foreign-quote"),
    ("icmp error quoting a udp packet on an icmp socket", icmp_err_to(PEER, UDP_IN), ICMP_B,
     "foreign-quote"),
    ("icmp error quoting an IPv6 header", icmp_err_to(PEER, with_byte(UDP_IN, 0, 0x65)), UDP_B,
     "malformed"),
    ("icmp error quoting a header under 20 bytes", icmp_err_to(PEER, with_byte(UDP_IN, 0, 0x44)),
     UDP_B, "malformed"),
    ("icmp error too short to quote", icmp_err_to(PEER, UDP_IN[:20]), UDP_B, "malformed"),
    ("icmp redirect", icmp_err_to(PEER, UDP_IN, 5), UDP_B, "icmp-type"),
    ("icmp source quench", icmp_err_to(PEER, UDP_IN, 4), UDP_B, "icmp-type"),
    ("icmp redirect on an icmp socket", icmp_err_to(PEER, ECHO_IN, 5), ICMP_B, "icmp-type"),
]


@pytest.mark.parametrize(("what", "pkt", "binding", "reason"), REFUSED,
                         ids=[r[0] for r in REFUSED])
def test_refused(what: str, pkt: bytes, binding: Binding, reason: str) -> None:
    with pytest.raises(PacketRefused) as e:
        check_outgoing(pkt, binding)
    assert e.value.reason == reason
    assert "packet refused: expected" in str(e.value)


def test_checksums_are_right() -> None:
    pkt = udp()
    assert parse_ip(pkt).total == len(pkt)
    from slicectl.saferaw.packet import checksum
    assert checksum(pkt[:20]) == 0
    pseudo = pkt[12:20] + struct.pack("!BBH", 0, UDP, len(pkt) - 20)
    assert checksum(pseudo + pkt[20:]) == 0


INCOMING = [
    ("udp to the bound port", packet(PEER, ME, UDP, udp_segment(PEER, ME, 53, 5000, b"")), UDP_B, True),
    ("udp to another port", packet(PEER, ME, UDP, udp_segment(PEER, ME, 53, 5001, b"")), UDP_B, False),
    ("udp to another address", packet(PEER, OTHER, UDP, udp_segment(PEER, OTHER, 53, 5000, b"")),
     UDP_B, False),
    ("time exceeded quoting our probe",
     packet("10.0.0.1", ME, ICMP, struct.pack("!BBHI", 11, 0, 0, 0) + udp()[:28]), UDP_B, True),
    ("time exceeded quoting another port",
     packet("10.0.0.1", ME, ICMP, struct.pack("!BBHI", 11, 0, 0, 0) + udp(sport=6000)[:28]),
     UDP_B, False),
    ("echo reply with our id",
     packet(PEER, ME, ICMP, struct.pack("!BBHHH", 0, 0, 0, 77, 1)), ICMP_B, True),
    ("echo reply with another id",
     packet(PEER, ME, ICMP, struct.pack("!BBHHH", 0, 0, 0, 78, 1)), ICMP_B, False),
]


@pytest.mark.parametrize(("what", "pkt", "binding", "want"), INCOMING, ids=[i[0] for i in INCOMING])
def test_incoming(what: str, pkt: bytes, binding: Binding, want: bool) -> None:
    assert incoming_matches(pkt, binding) is want


def test_sniff_matches_both_directions() -> None:
    out = packet(ME, PEER, TCP, tcp_segment(ME, PEER, 8080, 40000, 1, 0, 0x12))
    inc = packet(PEER, ME, TCP, tcp_segment(PEER, ME, 40000, 8080, 1, 0, 0x02))
    other = packet(PEER, ME, TCP, tcp_segment(PEER, ME, 40000, 8081, 1, 0, 0x02))
    assert sniff_matches(out, TCP, 8080) and sniff_matches(inc, TCP, 8080)
    assert not sniff_matches(other, TCP, 8080) and not sniff_matches(inc, UDP, 8080)


def run_bpf(prog: list[tuple[int, int, int, int]], pkt: bytes, pkttype: int = 0,
            ethertype: int = 0x0800) -> int:
    """A tiny classic-BPF interpreter for the opcodes our programs use."""
    a = x = 0
    pc = 0
    while True:
        code, jt, jf, k = prog[pc]
        pc += 1
        if code == 0x30:                     # ldb [k] (or the pkttype extension)
            a = pkttype if k == (-0x1000 + 4) & 0xFFFFFFFF else pkt[k]
        elif code == 0x28:                   # ldh [k] (or the protocol extension)
            a = ethertype if k == (-0x1000) & 0xFFFFFFFF else struct.unpack_from("!H", pkt, k)[0]
        elif code == 0xB1:
            x = (pkt[k] & 15) * 4
        elif code == 0x48:
            a = struct.unpack_from("!H", pkt, x + k)[0]
        elif code == 0x50:
            a = pkt[x + k]
        elif code == 0x15:
            pc += jt if a == k else jf
        elif code == 0x06:
            return k
        else:
            raise AssertionError(f"opcode {code:#x}")


BPF_CASES = [
    ("raw udp: to the port", bpf_binding(UDP, 5000, -1, True, False),
     packet(PEER, ME, UDP, udp_segment(PEER, ME, 53, 5000, b"")), 0, True),
    ("raw udp: outgoing copy ignored", bpf_binding(UDP, 5000, -1, True, False),
     packet(PEER, ME, UDP, udp_segment(PEER, ME, 53, 5000, b"")), 4, False),
    ("raw udp: from the port only", bpf_binding(UDP, 5000, -1, True, False),
     packet(PEER, ME, UDP, udp_segment(PEER, ME, 5000, 53, b"")), 0, False),
    ("raw udp: tcp to the port", bpf_binding(UDP, 5000, -1, True, False),
     packet(PEER, ME, TCP, tcp_segment(PEER, ME, 53, 5000, 0, 0, 2)), 0, False),
    ("raw udp: an ICMP error", bpf_binding(UDP, 5000, -1, True, False),
     packet("10.0.0.1", ME, ICMP, struct.pack("!BBHI", 11, 0, 0, 0) + udp()[:28]), 0, True),
    ("raw udp: echo reply", bpf_binding(UDP, 5000, -1, True, False),
     packet(PEER, ME, ICMP, struct.pack("!BBHHH", 0, 0, 0, 5000, 1)), 0, False),
    ("icmp id: echo reply with it", bpf_binding(ICMP, 0, 77, True, False),
     packet(PEER, ME, ICMP, struct.pack("!BBHHH", 0, 0, 0, 77, 1)), 0, True),
    ("icmp id: echo reply with another", bpf_binding(ICMP, 0, 77, True, False),
     packet(PEER, ME, ICMP, struct.pack("!BBHHH", 0, 0, 0, 78, 1)), 0, False),
    ("icmp id: udp", bpf_binding(ICMP, 0, 77, True, False),
     packet(PEER, ME, UDP, udp_segment(PEER, ME, 53, 77, b"")), 0, False),
    ("sniff tcp: from the port, outgoing", bpf_binding(TCP, 8080, -1, False, True),
     packet(ME, PEER, TCP, tcp_segment(ME, PEER, 8080, 4000, 0, 0, 0x12)), 4, True),
    ("sniff tcp: other port", bpf_binding(TCP, 8080, -1, False, True),
     packet(ME, PEER, TCP, tcp_segment(ME, PEER, 8081, 4000, 0, 0, 0x12)), 4, False),
    ("options shift the ports", bpf_binding(UDP, 5000, -1, True, False),
     packet(PEER, ME, UDP, udp_segment(PEER, ME, 53, 5000, b""), options=bytes([1, 1, 1, 1])), 0, True),
]


@pytest.mark.parametrize(("what", "prog", "pkt", "pkttype", "want"), BPF_CASES,
                         ids=[c[0] for c in BPF_CASES])
def test_bpf_binding(what: str, prog: list[tuple[int, int, int, int]], pkt: bytes,
                     pkttype: int, want: bool) -> None:
    assert (run_bpf(prog, pkt, pkttype) > 0) is want


def test_sniff_filter_keeps_only_ipv4() -> None:
    prog = bpf_binding(TCP, 8080, -1, False, True)
    pkt = packet(ME, PEER, TCP, tcp_segment(ME, PEER, 8080, 4000, 0, 0, 0x12))
    assert run_bpf(prog, pkt, 4, ethertype=0x0800) > 0
    assert run_bpf(prog, pkt, 4, ethertype=0x0806) == 0


def test_assemble_resolves_forward_labels() -> None:
    prog = assemble([(0x15, "b", 0, 1), (0x06, 0, 0, 0), "b", (0x06, 0, 0, 9)])
    assert prog == [(0x15, 1, 0, 1), (0x06, 0, 0, 0), (0x06, 0, 0, 9)]


def test_ip_filter_of_the_admin_sniffer() -> None:
    prog = bpf_ip(96)
    frame = b"\0" * 12 + b"\x08\x00" + udp()
    arp = b"\0" * 12 + b"\x08\x06" + b"\0" * 28
    assert run_bpf(prog, frame) == 96 and run_bpf(prog, arp) == 0
    assert len(pack_program(prog)) == 8 * len(prog)


def test_pcap_framing() -> None:
    hdr = pcap_header()
    assert struct.unpack("<IHHiIII", hdr)[0] == 0xA1B2C3D4 and hdr[-4:] == b"\x65\0\0\0"
    rec = pcap_record(12.5, b"abc")
    assert struct.unpack("<IIII", rec[:16]) == (12, 500000, 3, 3) and rec[16:] == b"abc"


def test_record_layout_is_fixed() -> None:
    assert RECORD.size == 32


def test_reserved_destination_by_octet_answers_as_the_ranges_do() -> None:
    from slicectl.saferaw.packet import LINK_LOCAL, RESERVED_DESTINATIONS, reserved_destination

    def by_ranges(addr: int, allow_link_local: bool) -> str | None:
        ranges = RESERVED_DESTINATIONS if allow_link_local else (*RESERVED_DESTINATIONS,
                                                                 LINK_LOCAL)
        return next((name for net, length, name in ranges
                     if addr >> (32 - length) == net >> (32 - length)), None)

    samples = [o << 24 | r for o in range(256) for r in (0, 0xFE0000, 0xFEFFFF, 0xFF0001)]
    samples += [0xA9FE0000, 0xA9FEFFFF, 0xA9FD0000, 0xA9FF0000, 0xA8FE0000]
    for addr in samples:
        for allow in (False, True):
            assert reserved_destination(addr.to_bytes(4, "big"), allow) == by_ranges(addr, allow)
