"""The cache of GetSlivers answers as sent: a node that polls and finds nothing changed
costs PLC its authentication and one indexed read, not a rendering of its whole view.

An answer is kept per node with the version of the database it was read at and the
moment it stops being true by itself (the first expiry of a slice it lists). The version
is this process's count of committed writes (every write method but GetSlivers' own
last-contact update) together with the highest event id (every write of any PLC process
on the same database records one), so a change made anywhere makes the next poll read
afresh. Bounded by bytes, least recently used first out.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

#: Bytes of rendered answers kept (a node with 100 slivers: about 200 KB).
DEFAULT_MAX_BYTES = 256 << 20

Version = tuple[int, int]


@dataclass(frozen=True)
class CachedView:
    version: Version
    #: The answer stops being true at this time (seconds since the epoch).
    valid_until: int
    #: The members after ``timestamp``, rendered (see :class:`wire.Prerendered`).
    tail: str


class ViewCache:
    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._views: OrderedDict[int, CachedView] = OrderedDict()
        self._bytes = 0
        self._writes = 0
        self.hits = 0
        self.misses = 0

    def wrote(self) -> None:
        """A write method committed in this process."""
        with self._lock:
            self._writes += 1

    def version(self, max_event_id: int) -> Version:
        with self._lock:
            return (self._writes, max_event_id)

    def get(self, node_id: int, version: Version, now: int) -> CachedView | None:
        with self._lock:
            view = self._views.get(node_id)
            if view is None or view.version != version or now >= view.valid_until:
                self.misses += 1
                return None
            self._views.move_to_end(node_id)
            self.hits += 1
            return view

    def put(self, node_id: int, view: CachedView) -> None:
        size = len(view.tail)
        if size > self.max_bytes:
            return
        with self._lock:
            old = self._views.pop(node_id, None)
            if old is not None:
                self._bytes -= len(old.tail)
            self._views[node_id] = view
            self._bytes += size
            while self._bytes > self.max_bytes:
                _, dropped = self._views.popitem(last=False)
                self._bytes -= len(dropped.tail)

    def __len__(self) -> int:
        with self._lock:
            return len(self._views)
