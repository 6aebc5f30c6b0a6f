"""Who slices and the node are: descriptions and contacts from the node manager, cached.

The NM is asked over its unix socket (:class:`slicectl.ipc.rpc.Client`, blocking) in a worker
thread, at most once per ``ttl_s`` per question; if it cannot answer, the pages say so and
show what was cached last. The cache holds at most ``max_entries`` answers, the least
recently used going first: anyone can ask for ``/slice/<any name>``.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from slicectl.core.errors import ConnectionFailed, SlicectlError
from slicectl.core.wire import stop_line
from slicectl.ipc.rpc import Client


@dataclass(frozen=True)
class SliceInfo:
    name: str
    description: str = ""
    contacts: tuple[str, ...] = ()
    #: for a sliver meant to be stopped: when, by whom and why ("" otherwise)
    stopped: str = ""


class Source(Protocol):
    """The blocking calls the directory makes (the NM's ``status``/``get_sliver``/``list``)."""

    def call(self, method: str, *args: Any) -> Any: ...


@dataclass
class _Entry:
    value: Any
    at: float


@dataclass
class Directory:
    """Cached answers from ``source``.

    Args:
        source: something with ``call(method, *args)``, normally an NM RPC client.
        ttl_s: how long an answer is reused.
        max_entries: how many answers are kept (least recently used first out).
    """

    source: Source
    ttl_s: float = 30.0
    clock: Callable[[], float] = time.monotonic
    max_entries: int = 1024
    error: str = ""
    _cache: OrderedDict[tuple[str, ...], _Entry] = field(default_factory=OrderedDict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _call(self, *key: str) -> Any:
        with self._lock:  # one RPC connection, one call at a time
            return self.source.call(*key)

    async def _ask(self, *key: str) -> Any:
        hit = self._cache.get(key)
        if hit is not None:
            self._cache.move_to_end(key)
            if self.clock() - hit.at < self.ttl_s:
                return hit.value
        try:
            value = await asyncio.get_running_loop().run_in_executor(
                None, lambda: self._call(*key))
            self.error = ""
        except (ConnectionFailed, OSError) as e:
            self.error = f"node manager: {e}"
            return hit.value if hit is not None else None
        except SlicectlError:  # the NM answered: no such sliver (any more), or not ours
            value = None
        self._cache[key] = _Entry(value, self.clock())
        self._cache.move_to_end(key)
        while len(self._cache) > self.max_entries:
            self._cache.popitem(last=False)
        return value

    async def node(self) -> dict[str, Any]:
        got = await self._ask("status")
        return got if isinstance(got, dict) else {}

    async def slice(self, name: str) -> SliceInfo:
        got = await self._ask("get_sliver", name)
        if not isinstance(got, dict):
            return SliceInfo(name)
        contacts = got.get("contacts") or []
        line = stop_line(got.get("stopped"))
        return SliceInfo(name, str(got.get("description") or ""),
                         tuple(str(c) for c in contacts), f"stopped {line}" if line else "")


def nm_directory(sock: Path, ttl_s: float = 30.0) -> Directory:
    return Directory(Client(sock, timeout=10), ttl_s)
