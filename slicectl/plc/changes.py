"""PLC's change feed: a number that grows with every write (the highest event id), and
a way to wait for it to grow without holding a thread.

This is slicectl's extension of PLCAPI for nodes (``WaitForChange(auth, since,
timeout)``): a node agent long-polls it and calls GetSlivers as soon as it returns a
number other than the one it has, so a change made in PLC reaches every node within a
round trip instead of a poll period. GetSlivers itself stays as PLCAPI has it.

The waiting happens on the server's event loop (:mod:`slicectl.plc.server`), so a
thousand waiting nodes cost a thousand idle connections, not a thousand threads. Writes
made by another PLC process on the same database are not seen until the next write of
this one (or the node's periodic poll, which stays).
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass

#: Longest a WaitForChange may wait (seconds); a client's timeout must be longer.
MAX_WAIT_S = 60


@dataclass(frozen=True)
class Pending:
    """What a WaitForChange call returns to the server: wait until the feed passes
    ``since`` or ``timeout_s`` pass, then answer the feed's number."""

    since: int
    timeout_s: int


class ChangeFeed:
    def __init__(self, current: int = 0) -> None:
        self._lock = threading.Lock()
        self._current = current
        self._loop: asyncio.AbstractEventLoop | None = None
        self._event: asyncio.Event | None = None

    @property
    def current(self) -> int:
        with self._lock:
            return self._current

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """Wake waiters on ``loop`` (the server's) from now on."""
        self._loop = loop
        self._event = asyncio.Event()

    def bump(self, number: int) -> None:
        """A write committed; ``number`` is the highest event id it saw (any thread)."""
        with self._lock:
            if number <= self._current:
                return
            self._current = number
            loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._wake)

    def _wake(self) -> None:
        ev, self._event = self._event, asyncio.Event()
        if ev is not None:
            ev.set()

    async def wait(self, since: int, timeout_s: float) -> int:
        """The feed's number once it differs from ``since``, or after ``timeout_s``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while self.current == since and self._event is not None:
            left = deadline - loop.time()
            if left <= 0:
                break
            try:
                await asyncio.wait_for(self._event.wait(), left)
            except TimeoutError:
                break
        return self.current
