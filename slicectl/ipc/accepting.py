"""Accepting on a listener that a selector loop watches, without spinning when the
process runs out of descriptors or memory.

Stdlib only (the ``ipc`` layer).
"""

from __future__ import annotations

import errno
import logging
import selectors
import socket
import time

#: accept() errors that say "not now": the pending connection stays queued, so the
#: listener stays readable and a loop that retries at once spins.
OUT_OF_RESOURCES = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
PAUSE_S = 0.1


class Accepts:
    """Takes connections off ``listener`` (registered in ``sel`` with ``data``); out of
    resources, it leaves the selector for :data:`PAUSE_S` and :meth:`resume` puts it
    back (call that every loop turn)."""

    def __init__(self, sel: selectors.BaseSelector, listener: socket.socket, data: object,
                 log: logging.Logger) -> None:
        self.sel = sel
        self.listener = listener
        self.data = data
        self.log = log
        self.paused_until = 0.0
        sel.register(listener, selectors.EVENT_READ, data)

    def accept(self) -> socket.socket | None:
        """A new connection, or None (none pending, or accepts paused)."""
        try:
            sock, _ = self.listener.accept()
        except BlockingIOError:
            return None
        except OSError as e:
            if e.errno in OUT_OF_RESOURCES:
                self.log.warning("accept: %s; pausing accepts for %.1f s", e.strerror, PAUSE_S)
                self.sel.unregister(self.listener)
                self.paused_until = time.monotonic() + PAUSE_S
            return None
        return sock

    def resume(self) -> None:
        if self.paused_until and time.monotonic() >= self.paused_until:
            self.paused_until = 0.0
            self.sel.register(self.listener, selectors.EVENT_READ, self.data)
