"""Closing a connection so that its last answer arrives (a lingering close).

A unix stream socket closed while the peer's bytes sit unread in it resets the peer,
and the peer's next ``recv`` fails with ECONNRESET before it reads the answer it was
sent. So a daemon that answers and then closes first shuts its sending side (the peer
reads the answer, then end of file), then reads and drops what the peer still sends
until the peer closes or a deadline passes, and only then closes. One background
thread does this for every lingering socket of the process, so the thread that
answered is free at once; the number of lingering sockets is bounded, beyond it the
oldest is closed at once.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading
import time
from collections import OrderedDict

#: How long a closed connection waits for its peer to close.
LINGER_S = 2.0
#: Sockets lingering at once; beyond this the oldest is closed without waiting.
MAX_LINGERING = 512


class Lingerer:
    """The background closer: :meth:`close` hands it a socket."""

    def __init__(self, linger_s: float = LINGER_S, limit: int = MAX_LINGERING) -> None:
        self.linger_s = linger_s
        self.limit = limit
        self._lock = threading.Lock()
        self._waiting: OrderedDict[socket.socket, float] = OrderedDict()
        self._sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._sel.register(self._wake_r, selectors.EVENT_READ)
        self._thread: threading.Thread | None = None

    def close(self, sock: socket.socket) -> None:
        """Shut ``sock``'s sending side and close it once its peer has closed too."""
        try:
            sock.shutdown(socket.SHUT_WR)
            sock.setblocking(False)
        except OSError:  # the peer is gone already: nothing can reset it
            sock.close()
            return
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="lingerer", daemon=True)
                self._thread.start()
            while len(self._waiting) >= self.limit:
                old, _ = self._waiting.popitem(last=False)
                self._drop(old)
            self._waiting[sock] = time.monotonic() + self.linger_s
            try:
                self._sel.register(sock, selectors.EVENT_READ)
            except (ValueError, KeyError, OSError):
                self._waiting.pop(sock, None)
                sock.close()
                return
        with contextlib.suppress(OSError):
            self._wake_w.send(b"\0")

    def pending(self) -> int:
        with self._lock:
            return len(self._waiting)

    def _drop(self, sock: socket.socket) -> None:
        with contextlib.suppress(KeyError, ValueError, OSError):
            self._sel.unregister(sock)
        sock.close()

    def _run(self) -> None:
        while True:
            with self._lock:
                first = next(iter(self._waiting.values()), None)
            timeout = None if first is None else max(0.0, first - time.monotonic())
            for key, _ in self._sel.select(timeout):
                sock = key.fileobj
                if sock is self._wake_r:
                    with contextlib.suppress(OSError):
                        self._wake_r.recv(4096)
                    continue
                assert isinstance(sock, socket.socket)
                try:
                    done = not sock.recv(65536)
                except BlockingIOError:
                    done = False
                except OSError:
                    done = True
                if done:
                    with self._lock:
                        if self._waiting.pop(sock, None) is not None:
                            self._drop(sock)
            now = time.monotonic()
            with self._lock:
                while self._waiting:
                    sock, deadline = next(iter(self._waiting.items()))
                    if deadline > now:
                        break
                    del self._waiting[sock]
                    self._drop(sock)


_LINGERER = Lingerer()


def linger_close(sock: socket.socket) -> None:
    """Close ``sock`` so that what was sent on it reaches the peer (see the module)."""
    _LINGERER.close(sock)
