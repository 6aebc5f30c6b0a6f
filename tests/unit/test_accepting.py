"""Out of descriptors, a listener leaves the selector for a moment instead of spinning."""

from __future__ import annotations

import errno
import logging
import selectors
import socket
import time

import pytest

from slicectl.ipc import accepting
from slicectl.ipc.accepting import Accepts


class Exhausted(socket.socket):
    def accept(self) -> tuple[socket.socket, object]:
        raise OSError(errno.EMFILE, "Too many open files")


def test_out_of_descriptors_pauses_then_resumes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(accepting, "PAUSE_S", 0.05)
    sel = selectors.DefaultSelector()
    listener = Exhausted(socket.AF_UNIX, socket.SOCK_STREAM)
    acc = Accepts(sel, listener, "listen", logging.getLogger("test"))
    assert acc.accept() is None
    with pytest.raises(KeyError):
        sel.get_key(listener)          # not watched while paused: the loop cannot spin
    acc.resume()
    with pytest.raises(KeyError):
        sel.get_key(listener)          # not before the pause is over
    time.sleep(0.06)
    acc.resume()
    assert sel.get_key(listener).data == "listen"
    listener.close()


def test_nothing_pending_is_none() -> None:
    sel = selectors.DefaultSelector()
    a, _b = socket.socketpair()
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind("\0slicectl-test-accepting")
    srv.listen(1)
    srv.setblocking(False)
    acc = Accepts(sel, srv, "listen", logging.getLogger("test"))
    assert acc.accept() is None
    c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    c.connect("\0slicectl-test-accepting")
    got = acc.accept()
    assert got is not None
    for s in (got, c, srv, a, _b):
        s.close()
