"""NFLOG messages as the kernel sends them, built here byte by byte: the prefixes of logged
packets come out, and nothing a malformed message holds is read past its length."""

from __future__ import annotations

import socket
import struct

import pytest

from slicectl.node import nflog

pytestmark = pytest.mark.unit

PACKET = (nflog.NFNL_SUBSYS_ULOG << 8) | nflog.NFULNL_MSG_PACKET


def attr(kind: int, value: bytes) -> bytes:
    length = 4 + len(value)
    return struct.pack("=HH", length, kind) + value + b"\0" * ((-length) % 4)


def message(kind: int, *attrs: bytes, group: int = 23552) -> bytes:
    body = struct.pack("=BBH", socket.AF_INET, 0, socket.htons(group)) + b"".join(attrs)
    return struct.pack("=IHHII", 16 + len(body), kind, 0, 0, 0) + body


def packet(prefix: bytes | None) -> bytes:
    attrs = [attr(1, b"\x08\x00\x03\x00"),            # NFULA_PACKET_HDR
             attr(4, struct.pack(">I", 7))]           # NFULA_IFINDEX_OUTDEV
    if prefix is not None:
        attrs.insert(1, attr(nflog.NFULA_PREFIX, prefix + b"\0"))
    return message(PACKET, *attrs)


def test_the_prefix_of_each_logged_packet() -> None:
    data = packet(b"slicectl-wake pl_a") + packet(None) + packet(b"slicectl-wake pl_bb")
    assert nflog.prefixes(data) == ["slicectl-wake pl_a", "slicectl-wake pl_bb"]


def test_other_messages_and_flag_bits() -> None:
    nested = attr(nflog.NFULA_PREFIX | 0x8000, b"slicectl-wake pl_n\0")
    assert nflog.prefixes(message(PACKET, nested)) == ["slicectl-wake pl_n"]
    assert nflog.prefixes(message(0x401, attr(nflog.NFULA_PREFIX, b"x\0"))) == []


@pytest.mark.parametrize("cut", [1, 5, 16, 21, 30])
def test_a_truncated_datagram_yields_only_whole_messages(cut: int) -> None:
    whole = packet(b"slicectl-wake pl_a")
    data = whole + packet(b"slicectl-wake pl_b")[:cut]
    assert nflog.prefixes(data) == ["slicectl-wake pl_a"]


def test_lengths_that_lie_are_not_followed() -> None:
    bad_attr = struct.pack("=HH", 200, nflog.NFULA_PREFIX) + b"slicectl-wake pl_x\0\0"
    assert nflog.prefixes(message(PACKET, bad_attr)) == []
    short = struct.pack("=IHHII", 8, PACKET, 0, 0, 0) + b"\0" * 16
    assert nflog.prefixes(short) == []
    assert nflog.prefixes(b"") == [] and nflog.prefixes(b"\xff" * 7) == []


def test_prefix_bytes_that_are_not_text() -> None:
    assert nflog.prefixes(packet(b"slicectl-wake pl_\xff")) == ["slicectl-wake pl_\ufffd"]


def test_config_message_and_acks() -> None:
    msg = nflog.config_message(23552, 3, nflog.NFULA_CFG_CMD, b"\x01")
    length, kind, flags, seq, _pid = struct.unpack_from("=IHHII", msg)
    assert (length, kind, flags, seq) == (len(msg), 0x401, 5, 3) and length % 4 == 0
    assert struct.unpack_from(">H", msg, 18)[0] == 23552
    assert msg[20:26] == struct.pack("=HH", 5, nflog.NFULA_CFG_CMD) + b"\x01\x00"
    ack = struct.pack("=IHHII", 36, nflog.NLMSG_ERROR, 0, 3, 0) + struct.pack("=i", -1) + msg[:16]
    assert nflog.ack_errno(ack) == 1
    ok = struct.pack("=IHHII", 36, nflog.NLMSG_ERROR, 0, 3, 0) + struct.pack("=i", 0) + msg[:16]
    assert nflog.ack_errno(ok) == 0
    assert nflog.ack_errno(packet(b"x")) is None


def test_node_managers_start_from_groups_spread_by_node_id() -> None:
    groups = {nflog.first_group(f"test-{i:06x}") for i in range(50)}
    assert len(groups) > 40
    assert all(nflog.GROUP_BASE <= g < nflog.GROUP_BASE + 0x400 for g in groups)
    assert nflog.first_group("node") == nflog.first_group("node")
