"""The admin sniffer's block parser on synthetic ring blocks: one record per IPv4 packet
from a sliver address, with ports, ICMP type/code and TCP flags; others counted."""

from __future__ import annotations

import mmap

from slicectl.core.netplan import sliver_address, sliver_xid_range
from slicectl.core.sniffrecord import IN, OUT, RECORD, PacketRecord
from slicectl.node.ring import synthetic_block
from slicectl.node.sniffer import parse_block
from slicectl.saferaw.packet import ICMP, TCP, UDP, icmp_echo, packet, tcp_segment, udp_segment

SUBNET = "172.30.0.0/16"
A, B = sliver_address(SUBNET, 3), sliver_address(SUBNET, 7)
PEER = "198.18.0.2"
ETH = b"\0" * 12 + b"\x08\x00"


def parse(frames: list[bytes], direction: int = OUT) -> tuple[list[PacketRecord], int, set[int]]:
    block = synthetic_block(frames)
    m = mmap.mmap(-1, len(block))
    m.write(block)
    out = bytearray()
    xids: set[int] = set()
    base, top = sliver_xid_range(SUBNET)
    n, unknown = parse_block(m, 0, len(frames), 48, out, direction, base, top, xids)
    recs = [PacketRecord.unpack(r) for r in RECORD.iter_unpack(out)]
    assert n == len(recs)
    return recs, unknown, xids


def test_records_per_packet() -> None:
    frames = [
        ETH + packet(A, PEER, UDP, udp_segment(A, PEER, 5000, 53, b"q")),
        ETH + packet(B, PEER, TCP, tcp_segment(B, PEER, 40000, 80, 1, 0, 0x02)),
        ETH + packet(A, PEER, ICMP, icmp_echo(9, 1)),
        ETH + packet("172.30.0.5", PEER, UDP, udp_segment("172.30.0.5", PEER, 1, 2, b"")),
    ]
    recs, unknown, xids = parse(frames)
    assert unknown == 1 and xids == {3, 7}
    assert [(r.xid, r.src, r.dst, r.proto, r.sport, r.dport) for r in recs] == [
        (3, A, PEER, UDP, 5000, 53), (7, B, PEER, TCP, 40000, 80), (3, A, PEER, ICMP, 8, 0)]
    assert recs[1].tcp_flags == 0x02 and recs[0].length == 20 + 8 + 1
    assert all(r.direction == OUT and r.time == 1.5 for r in recs)


def test_inbound_records_are_tagged_by_destination() -> None:
    recs, unknown, _ = parse([ETH + packet(PEER, B, UDP, udp_segment(PEER, B, 53, 5000, b""))], IN)
    assert unknown == 0 and recs[0].xid == 7 and recs[0].direction == IN


def test_fragments_keep_no_ports() -> None:
    pkt = bytearray(packet(A, PEER, UDP, udp_segment(A, PEER, 5000, 53, b"q")))
    pkt[6:8] = (0x2000 | 10).to_bytes(2, "big")
    recs, _, _ = parse([ETH + bytes(pkt)])
    assert (recs[0].sport, recs[0].dport) == (0, 0)
