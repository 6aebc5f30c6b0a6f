"""The HTB class decoder the counter poll and the per-sliver reads share (pure bytes)."""

from __future__ import annotations

import struct

import pytest

from slicectl.core.errors import EngineError
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


class Datagrams:
    """A netlink socket's side the reply loop reads: prepared datagrams, one per recv."""

    def __init__(self, *datagrams: bytes) -> None:
        self.left = list(datagrams)

    def recv(self, bufsize: int) -> bytes:
        return self.left.pop(0)


def control(kind: int, seq: int, code: int = 0) -> bytes:
    payload = struct.pack("=i", -code) if kind == tc.NLMSG_ERROR else b""
    return tc.NLMSG_HEADER.pack(16 + len(payload), kind, 0, seq, 0) + payload


def msg(classid: int, seq: int = 1) -> bytes:
    m = bytearray(class_message(classid, 0x1C000, 1, 2, 3, 4, 5))
    struct.pack_into("=I", m, 8, seq)
    return bytes(m)


def classids(sock: Datagrams, **kw: object) -> list[int]:
    return [tc._decode_class(data, start, end).classid
            for kind, data, start, end in tc.replies(sock, "test", 65536, **kw)  # type: ignore[arg-type]
            if kind == tc.RTM_NEWTCLASS]


def test_a_dump_over_several_datagrams_ends_at_done() -> None:
    sock = Datagrams(msg(1) + msg(2), msg(3) + control(tc.NLMSG_DONE, 1), msg(99))
    assert classids(sock) == [1, 2, 3]
    assert sock.left == [msg(99)], "nothing is read past the end of the answer"


def test_a_request_reads_its_own_answers_until_its_ack() -> None:
    sock = Datagrams(msg(7, seq=4) + msg(8, seq=5), control(tc.NLMSG_ERROR, 5))
    assert classids(sock, seq=5) == [8], "another request's answer is skipped"


def test_errors_the_caller_allows_end_the_answer_and_others_raise() -> None:
    import errno

    enoent = Datagrams(control(tc.NLMSG_ERROR, 2, errno.ENOENT))
    assert classids(enoent, seq=2, fine=(0, errno.ENOENT)) == []
    with pytest.raises(EngineError, match=r"^test: the kernel refused \(errno 1, EPERM\)"):
        classids(Datagrams(control(tc.NLMSG_ERROR, 1, errno.EPERM)))


@pytest.mark.parametrize("bad_length", [4, 15, 200])
def test_a_length_that_lies_is_refused(bad_length: int) -> None:
    m = bytearray(msg(1))
    struct.pack_into("=I", m, 0, bad_length)
    with pytest.raises(EngineError, match="^test: a netlink answer of"):
        classids(Datagrams(bytes(m)))
