"""The HTB class decoder the counter poll and the per-sliver reads share (pure bytes)."""

from __future__ import annotations

import struct

import pytest

from slicectl.node import tc

pytestmark = pytest.mark.unit


def attr(kind: int, payload: bytes) -> bytes:
    raw = struct.pack("=HH", 4 + len(payload), kind) + payload
    return raw + b"\0" * (-len(raw) % 4)


def class_message(classid: int, parent: int, rate: int, ceil: int, nbytes: int,
                  packets: int, drops: int, pkt64: int | None = None) -> bytes:
    ratespec = lambda r: struct.pack("=BBHhHI", 0, 1, 0, -1, 0, r)  # noqa: E731
    htb = ratespec(rate) + ratespec(ceil) + struct.pack("=5I", 1600, 1600, 1500, 0, 0)
    stats = attr(tc.TCA_STATS_BASIC, struct.pack("=QI4x", nbytes, packets)) + \
        attr(tc.TCA_STATS_QUEUE, struct.pack("=5I", 0, 0, drops, 0, 0))
    if pkt64 is not None:
        stats += attr(tc.TCA_STATS_PKT64, struct.pack("=Q", pkt64))
    body = tc.TCMSG.pack(0, 7, classid, parent, 0) + attr(1, b"htb\0") + \
        attr(tc.TCA_OPTIONS | 0x8000, attr(tc.TCA_HTB_PARMS, htb)) + \
        attr(tc.TCA_STATS2 | 0x8000, stats)
    return tc.NLMSG_HEADER.pack(16 + len(body), tc.RTM_NEWTCLASS, 2, 1, 0) + body


@pytest.mark.parametrize(("pkt64", "packets"), [(None, 17), (1 << 40, 1 << 40)])
def test_a_class_message_decodes_to_its_rates_and_counters(pkt64: int | None,
                                                            packets: int) -> None:
    msg = class_message(0x1C005, 0x1C000, 875, 1_250_000, 123_456_789_012, 17, 3, pkt64)
    got = tc._decode_class(msg, 16, len(msg))
    assert got == tc.ClassStats(0x1C005, 0x1C000, 875, 1_250_000, 123_456_789_012, packets, 3)


def test_a_class_without_options_or_stats_reads_as_zeros() -> None:
    body = tc.TCMSG.pack(0, 7, 0x10001, 0xFFFFFFFF, 0)
    msg = tc.NLMSG_HEADER.pack(16 + len(body), tc.RTM_NEWTCLASS, 2, 1, 0) + body
    assert tc._decode_class(msg, 16, len(msg)) == tc.ClassStats(0x10001, 0xFFFFFFFF, 0, 0, 0,
                                                                0, 0)
