"""Batched socket calls (slicectl.saferaw.mmsg) and the shim's per-packet decisions inside a
batch: over real socketpairs, and a recording libc where a raw socket would need root."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import socket
import struct
from collections.abc import Iterator
from typing import Any

import pytest

from slicectl.node import shim as shim_mod
from slicectl.node.config import NodeConfig
from slicectl.node.shim import RECV_BURST, TS, Session, Shim
from slicectl.saferaw import mmsg
from slicectl.saferaw.mmsg import MMsgHdr, Outbox, Received
from slicectl.saferaw.packet import UDP, Binding, packet, udp_segment

ME, PEER, OTHER = "172.30.128.5", "198.18.0.2", "172.30.128.6"
BINDING = Binding(ME, UDP, port=5000)


def udp(src: str = ME, sport: int = 5000, payload: bytes = b"hello") -> bytes:
    return packet(src, PEER, UDP, udp_segment(src, PEER, sport, 53, payload))


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    yield a, b
    a.close()
    b.close()


class RecordingLibc:
    """The C library for mmsg, with sendmmsg on ``recorded`` fds replaced: it decodes each
    message header as the kernel would read it and records (destination, bytes), taking
    what ``script`` says per call (a count, or a negative errno); other fds go to libc."""

    def __init__(self) -> None:
        self.real = mmsg._calls()
        self.recvmmsg = self.real.recvmmsg
        self.recorded: set[int] = set()
        self.script: list[int] = []
        self.sent: list[tuple[str | None, bytes]] = []
        self.calls = 0

    def sendmmsg(self, fd: int, vec: int, vlen: int, flags: int) -> int:
        if fd not in self.recorded:
            return int(self.real.sendmmsg(fd, vec, vlen, flags))
        self.calls += 1
        step = self.script.pop(0) if self.script else vlen
        if step < 0:
            ctypes.set_errno(-step)
            return -1
        n = min(step, vlen)
        for k in range(n):
            h = MMsgHdr.from_address(vec + k * ctypes.sizeof(MMsgHdr)).msg_hdr
            iov = (mmsg.IOVec * h.msg_iovlen).from_address(h.msg_iov)
            data = b"".join(ctypes.string_at(v.iov_base, v.iov_len) for v in iov if v.iov_len)
            dst = None
            if h.msg_name:
                name = ctypes.string_at(h.msg_name, h.msg_namelen)
                family, port = struct.unpack_from("=HH", name)
                assert (family, port, h.msg_namelen) == (socket.AF_INET, 0, 16)
                dst = socket.inet_ntoa(name[4:8])
            self.sent.append((dst, data))
        return n


@pytest.fixture
def libc(monkeypatch: pytest.MonkeyPatch) -> RecordingLibc:
    fake = RecordingLibc()
    monkeypatch.setattr(mmsg, "_libc", fake)
    return fake


# the wrapper ----------------------------------------------------------------------------------

def test_a_batch_of_n_arrives_as_n_with_their_lengths(pair: tuple[socket.socket, socket.socket]
                                                      ) -> None:
    a, b = pair
    msgs = [bytes([i]) * (i * 7 + 1) for i in range(20)]
    out = Outbox(32, 4096)
    for m in msgs:
        out.add(m)
    assert out.send(a) == 20 and out.pending == 0
    rx = Received(32, 2048)
    assert rx.recv(b) == 20
    assert [rx.length(i) for i in range(20)] == [len(m) for m in msgs]
    assert [rx.message(i) for i in range(20)] == msgs
    assert not any(rx.truncated(i) for i in range(20))
    with pytest.raises(IndexError):
        rx.message(20)
    with pytest.raises(BlockingIOError):
        rx.recv(b)


def test_recv_takes_at_most_its_limit_and_cuts_long_datagrams(
        pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    for i in range(10):
        a.send(b"%d" % i + b"x" * 200)
    rx = Received(4, 100)
    assert rx.recv(b, limit=3) == 3
    assert rx.recv(b) == 4
    assert rx.length(0) == 100 and rx.truncated(0) and rx.message(0) == b"3" + b"x" * 99
    assert rx.recv(b) == 3


def test_empty_batch_and_heads(pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    out = Outbox(4, 64)
    assert out.pending == 0 and out.send(a) == 0
    out.add(b"", head=b"")          # an empty datagram is a message too
    out.add(b"body", head=b"P")
    assert out.send(a) == 2
    assert b.recv(10) == b"" and b.recv(10) == b"Pbody"


def test_forwarding_points_into_the_received_buffer(
        pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    c, d = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with c, d:
        for m in (b"one", b"two", b"three"):
            a.send(m)
        rx = Received(8, 64)
        rx.recv(b)
        out = Outbox(8, 8)
        out.add_received(rx, 0, head=b"H")
        out.add_received(rx, 2)
        assert out.send(c) == 2
        assert [d.recv(64), d.recv(64)] == [b"Hone", b"three"]


def test_partial_send_then_eagain_leaves_the_rest_pending(
        pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    big = b"y" * 3000
    out = Outbox(64, 64 * len(big))
    for _ in range(64):
        out.add(big)
    first = out.send(a, socket.MSG_DONTWAIT)
    assert 1 <= first < 64 and out.pending == 64 - first
    with pytest.raises(BlockingIOError) as e:
        out.send(a, socket.MSG_DONTWAIT)
    assert e.value.errno == errno.EAGAIN and "sendmmsg" in str(e.value) and "\n" not in str(e.value)
    assert out.pending == 64 - first                 # nothing lost, nothing repeated
    rx = Received(64, 4096)
    got: list[bytes] = []
    while len(got) < 64:
        with contextlib.suppress(BlockingIOError):
            got += [rx.message(i) for i in range(rx.recv(b))]
        if out.pending:
            with contextlib.suppress(BlockingIOError):
                out.send(a, socket.MSG_DONTWAIT)
    assert out.pending == 0 and got == [big] * 64


def test_eintr_is_retried_and_skip_gives_up_on_one(libc: RecordingLibc) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
        libc.recorded.add(tx.fileno())
        out = Outbox(8, 1, named=True)
        rx = _received([b"a", b"b", b"c", b"d"])
        for i in range(4):
            out.add_received(rx, i, dst=socket.inet_aton(PEER))
        libc.script = [-errno.EINTR, 1, -errno.ENOBUFS]
        assert out.send(tx) == 1                      # EINTR retried: one call, then one sent
        with pytest.raises(OSError) as e:
            out.send(tx)
        assert e.value.errno == errno.ENOBUFS and out.pending == 3
        out.skip()
        assert out.send(tx) == 2 and out.pending == 0
        assert libc.sent == [(PEER, b"a"), (PEER, b"c"), (PEER, b"d")]


def _received(msgs: list[bytes]) -> Received:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with a, b:
        for m in msgs:
            a.send(m)
        rx = Received(len(msgs), 256)
        assert rx.recv(b) == len(msgs)
    return rx


def test_outbox_refuses_what_does_not_fit_or_lacks_a_destination() -> None:
    out = Outbox(2, 10)
    with pytest.raises(ValueError, match="room for a message of 11 bytes"):
        out.add(b"x" * 11)
    with pytest.raises(ValueError, match="destination"):
        out.add(b"x", dst=b"\0" * 4)
    named = Outbox(2, 10, named=True)
    with pytest.raises(ValueError, match="destination"):
        named.add(b"x")
    with pytest.raises(ValueError, match="4-byte"):
        named.add(b"x", dst=b"\0" * 16)
    out.add(b"1")
    out.add(b"2")
    assert not out.room(0)


# the shim's decisions within a batch ----------------------------------------------------------

class FakePeer:
    pid = 1
    owner = "c" * 64

    def close(self) -> None:
        pass


@pytest.fixture
def served(libc: RecordingLibc, tmp_path: Any) -> Iterator[tuple[Shim, Session, socket.socket]]:
    cfg = NodeConfig.from_env({"SLICECTL_STATE_DIR": str(tmp_path / "state"),
                               "SLICECTL_RUN_DIR": str(tmp_path / "run")})
    shim = Shim(cfg, lambda *a: None)
    sliver, client = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    libc.recorded.add(tx.fileno())
    s = Session(client=client, peer=FakePeer(), slice="s_one", kind="raw",  # type: ignore[arg-type]
                binding=BINDING, proto_name="udp", tx=tx)
    shim.sessions[client.fileno()] = s
    yield shim, s, sliver
    for sock in (sliver, client, tx):
        sock.close()


def replies(sock: socket.socket) -> list[dict[str, Any]]:
    out = []
    while True:
        try:
            m = sock.recv(70000, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return out
        assert m[:1] == b"E", m
        out.append(json.loads(m[1:]))


def refused(shim: Shim) -> dict[str, int]:
    return {reason: n for (caller, reason), n in shim.refusals.totals.items() if caller == "s_one"}


def test_a_bad_packet_in_the_middle_is_refused_and_counted_the_good_ones_pass(
        served: tuple[Shim, Session, socket.socket], libc: RecordingLibc) -> None:
    shim, s, sliver = served
    good = [udp(payload=b"g%d" % i) for i in range(4)]
    batch = [good[0], udp(src=OTHER), good[1], udp(sport=5001), good[2], b"\x45\0", good[3]]
    for p in batch:
        sliver.send(p)
    shim.from_sliver(s)
    assert libc.sent == [(PEER, p) for p in good]
    assert libc.calls == 1                                   # one sendmmsg for the batch
    assert shim.totals["sent"] == 4
    assert refused(shim) == {"spoofed-source": 1, "foreign-port": 1, "malformed": 1}
    assert [r["reason"] for r in replies(sliver)] == ["spoofed-source", "foreign-port",
                                                      "malformed"]


def test_a_batch_of_only_bad_packets_sends_nothing(
        served: tuple[Shim, Session, socket.socket], libc: RecordingLibc) -> None:
    shim, s, sliver = served
    for _ in range(10):
        sliver.send(udp(src=OTHER))
    shim.from_sliver(s)
    assert libc.sent == [] and libc.calls == 0 and shim.totals["sent"] == 0
    assert refused(shim) == {"spoofed-source": 10}


def test_a_send_error_answers_for_its_packet_and_the_rest_go_on(
        served: tuple[Shim, Session, socket.socket], libc: RecordingLibc) -> None:
    shim, s, sliver = served
    good = [udp(payload=b"p%d" % i) for i in range(6)]
    for p in good:
        sliver.send(p)
    libc.script = [2, -errno.ENOBUFS, -errno.EINTR, 10]
    shim.from_sliver(s)
    assert libc.sent == [(PEER, p) for p in good[:2] + good[3:]]
    assert shim.totals["sent"] == 5
    assert replies(sliver) == [{"ok": False, "errno": "EIO",
                                "error": "send: No buffer space available"}]
    assert refused(shim) == {}


def test_a_session_gets_one_burst_per_wakeup(
        served: tuple[Shim, Session, socket.socket], libc: RecordingLibc) -> None:
    shim, s, sliver = served
    for i in range(RECV_BURST + 36):
        sliver.send(udp(payload=b"%05d" % i))
    shim.from_sliver(s)
    assert shim.totals["sent"] == RECV_BURST
    shim.from_sliver(s)
    assert shim.totals["sent"] == RECV_BURST + 36
    assert [d for _, d in libc.sent] == [udp(payload=b"%05d" % i) for i in range(RECV_BURST + 36)]


def test_sniffer_sessions_refuse_every_packet_of_a_batch(
        served: tuple[Shim, Session, socket.socket], libc: RecordingLibc) -> None:
    shim, s, sliver = served
    s.kind, s.tx = "sniff", None
    for _ in range(3):
        sliver.send(udp())
    shim.from_sliver(s)
    assert libc.sent == [] and refused(shim) == {"sniffer": 3}


def test_good_packets_before_a_close_are_sent(
        served: tuple[Shim, Session, socket.socket], libc: RecordingLibc,
        monkeypatch: pytest.MonkeyPatch) -> None:
    shim, s, sliver = served
    closed: list[Session] = []
    monkeypatch.setattr(shim, "close", closed.append)
    sliver.send(udp())
    sliver.send(udp(src=OTHER))
    sliver.send(udp(payload=b"last"))
    sliver.shutdown(socket.SHUT_WR)
    shim.from_sliver(s)
    assert [d for _, d in libc.sent] == [udp(), udp(payload=b"last")]
    assert closed == [s] and refused(shim) == {"spoofed-source": 1}


def test_captured_packets_go_to_the_sliver_in_one_batch_and_overflow_counts_as_lost(
        served: tuple[Shim, Session, socket.socket]) -> None:
    shim, s, sliver = served
    cap, wire = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    with cap, wire:
        s.cap = cap
        mine = packet(PEER, ME, UDP, udp_segment(PEER, ME, 53, 5000, b"answer"))
        other = packet(PEER, ME, UDP, udp_segment(PEER, ME, 53, 5001, b"not mine"))
        for p in (mine, other, mine):
            wire.send(p)
        shim.to_sliver(s)
        got = [sliver.recv(70000, socket.MSG_DONTWAIT) for _ in range(2)]
        assert all(g[:1] == b"P" and g[1 + TS.size:] == mine for g in got)
        assert got[0][:1 + TS.size] == got[1][:1 + TS.size]     # one read, one time
        with pytest.raises(BlockingIOError):
            sliver.recv(70000, socket.MSG_DONTWAIT)
        # The sliver reads nothing: what its socket has no room for is counted lost.
        s.client.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        big = packet(PEER, ME, UDP, udp_segment(PEER, ME, 53, 5000, b"z" * 1400))
        for _ in range(40):
            wire.send(big)
        shim.to_sliver(s)
        delivered = 0
        while True:
            try:
                sliver.recv(70000, socket.MSG_DONTWAIT)
                delivered += 1
            except BlockingIOError:
                break
        assert 0 < delivered < 40 and shim.totals["lost"] == 40 - delivered


def test_the_shim_names_a_missing_sendmmsg_on_one_line(monkeypatch: pytest.MonkeyPatch,
                                                       tmp_path: Any) -> None:
    from slicectl.core.errors import EngineError

    def missing() -> Any:
        raise OSError(errno.ENOSYS, "sendmmsg/recvmmsg: expected them in the C library, "
                                    "found neither")

    monkeypatch.setattr(mmsg, "_calls", missing)
    cfg = NodeConfig.from_env({"SLICECTL_STATE_DIR": str(tmp_path)})
    with pytest.raises(EngineError, match="^batched socket calls: .*found neither$"):
        shim_mod.Shim(cfg, lambda *a: None)
    assert not mmsg.available()


# the sliver's send_many -----------------------------------------------------------------------

@pytest.fixture
def raw(pair: tuple[socket.socket, socket.socket]) -> Iterator[tuple[Any, socket.socket]]:
    """A bound saferaw socket whose shim end is ``pair[1]`` (no shim process)."""
    import slicectl.saferaw as saferaw

    a, b = pair
    s = saferaw.RawSocket.__new__(saferaw.RawSocket)
    s.sock, s.binding, s.sniffing, s._outbox = a, BINDING, False, None
    yield s, b


def drain(sock: socket.socket) -> list[bytes]:
    out = []
    with contextlib.suppress(BlockingIOError):
        while True:
            out.append(sock.recv(70000, socket.MSG_DONTWAIT))
    return out


def test_send_many_sends_all_in_order_past_one_batch(raw: tuple[Any, socket.socket]) -> None:
    s, shim_end = raw
    pkts = [udp(payload=b"%04d" % i + b"x" * (i % 50)) for i in range(150)]
    assert s.send_many(pkts) == 150
    assert drain(shim_end) == pkts
    assert s.send_many([]) == 0


def test_send_many_checks_all_first_and_sends_none_on_a_bad_one(
        raw: tuple[Any, socket.socket]) -> None:
    from slicectl.saferaw.packet import PacketRefused

    s, shim_end = raw
    with pytest.raises(PacketRefused, match="expected source address"):
        s.send_many([udp(), udp(src=OTHER), udp()])
    assert drain(shim_end) == []
    s.sniffing = True
    with pytest.raises(OSError, match="sniffer sockets cannot send"):
        s.send_many([udp()])


def test_send_many_on_a_full_nonblocking_socket_says_how_many_went(
        raw: tuple[Any, socket.socket]) -> None:
    s, shim_end = raw
    s.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    s.sock.setblocking(False)
    pkts = [udp(payload=b"%04d" % i + b"z" * 1000) for i in range(200)]
    sent = s.send_many(pkts)
    assert 0 < sent < 200
    assert drain(shim_end) == pkts[:sent]
    s.sock.settimeout(0.05)
    assert s.send_many(pkts) < 200       # stays full past its timeout while nobody reads
    drain(shim_end)
    with pytest.raises(BlockingIOError):
        s.sock.setblocking(False)
        while True:
            s.send_many(pkts[:1])

