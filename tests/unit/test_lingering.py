"""A lingering close: the last answer reaches a peer that still writes."""

from __future__ import annotations

import socket
import time

import pytest

from slicectl.ipc.lingering import Lingerer

pytestmark = pytest.mark.unit


def _answered_pair() -> tuple[socket.socket, socket.socket]:
    ours, peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    ours.send(b"HTTP/1.0 403 Forbidden\r\n\r\nrefused\n")
    peer.send(b"x" * 1000)  # the peer's request, still unread when we close
    peer.settimeout(5)
    return ours, peer


def test_a_plain_close_with_unread_bytes_resets_the_peer() -> None:
    """Why lingering exists: a peer that reads to the end gets ECONNRESET, not EOF
    (and one that had not read the answer yet may never see it)."""
    ours, peer = _answered_pair()
    ours.close()
    assert peer.recv(65536).startswith(b"HTTP/1.0 403")
    with pytest.raises(ConnectionResetError):
        peer.recv(65536)


def test_a_lingering_close_delivers_the_answer_then_end_of_file() -> None:
    ours, peer = _answered_pair()
    lingerer = Lingerer(linger_s=5)
    lingerer.close(ours)
    data = b""
    while chunk := peer.recv(65536):
        data += chunk
    assert data == b"HTTP/1.0 403 Forbidden\r\n\r\nrefused\n"
    peer.send(b"more")  # the daemon still reads (and drops) what the peer sends
    peer.close()
    for _ in range(100):
        if lingerer.pending() == 0:
            break
        time.sleep(0.02)
    assert lingerer.pending() == 0  # closed once the peer closed


def test_a_peer_that_never_closes_is_dropped_after_the_deadline() -> None:
    ours, peer = _answered_pair()
    lingerer = Lingerer(linger_s=0.2)
    lingerer.close(ours)
    time.sleep(0.6)
    assert lingerer.pending() == 0
    assert peer.recv(65536).startswith(b"HTTP/1.0 403")


def test_lingering_sockets_are_bounded() -> None:
    lingerer = Lingerer(linger_s=30, limit=3)
    peers = []
    for _ in range(5):
        ours, peer = socket.socketpair()
        peers.append(peer)
        lingerer.close(ours)
    assert lingerer.pending() == 3
    peers[0].settimeout(1)
    assert peers[0].recv(10) == b""  # the oldest was closed at once
