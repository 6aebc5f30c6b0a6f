"""Fan-out of streamed tuples, and the connection-attempt detector fed by the admin sniffer.

:class:`Hub` hands each new tuple to every subscriber's bounded queue without waiting; a
subscriber whose queue is full (a client that stopped reading) is dropped, so one slow
client never slows the sniffer reader or the other clients.

:class:`ConnectDetector` turns admin-sniffer records into connection attempts: a TCP
segment with SYN and without ACK, or the first UDP packet of a flow not seen for
``udp_idle_s``. It keeps the 100 most recent attempts (the ``connects`` snapshot).
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from slicectl.core.sniffrecord import OUT, RECORD, ip_text

log = logging.getLogger("sensors.streams")

TCP, UDP = 6, 17
SYN, ACK = 0x02, 0x10


@dataclass(eq=False)
class Subscriber:
    """One streaming client: the lines published since its handler last took them."""

    task: asyncio.Task[Any] | None
    #: the one slice whose lines it gets (None: every slice's)
    scope: str | None = None
    lines: list[bytes] = field(default_factory=list)
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    dropped: bool = False

    async def take(self) -> bytes:
        """Everything queued so far, as one write (waits for at least one line)."""
        await self.ready.wait()
        self.ready.clear()
        out = b"".join(self.lines)
        self.lines.clear()
        return out


@dataclass
class Hub:
    """One streaming sensor's subscribers. Lines are formatted once and shared.

    How many subscribers may open is the server's decision (:func:`sensors.callers.
    admit_stream`), made before it subscribes.
    """

    #: lines a subscriber may have waiting before it counts as not reading
    queue_size: int = 4096
    subscribers: set[Subscriber] = field(default_factory=set)
    dropped: int = 0

    def subscribe(self, scope: str | None = None) -> Subscriber:
        """A new subscriber for the calling task; with ``scope``, only that slice's lines."""
        sub = Subscriber(asyncio.current_task(), scope)
        self.subscribers.add(sub)
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        self.subscribers.discard(sub)

    def publish(self, line: bytes, slice_name: str) -> None:
        """Hand ``line`` (a tuple of slice ``slice_name``) to every subscriber that may see it."""
        slow = []
        for sub in self.subscribers:
            if sub.scope is not None and sub.scope != slice_name:
                continue
            sub.lines.append(line)
            sub.ready.set()
            if len(sub.lines) > self.queue_size:
                slow.append(sub)
        for sub in slow:
            self.drop(sub)

    def drop(self, sub: Subscriber) -> None:
        self.subscribers.discard(sub)
        sub.lines.clear()
        if not sub.dropped:
            sub.dropped = True
            self.dropped += 1
            if sub.task is not None:
                sub.task.cancel()


@dataclass(frozen=True)
class Connect:
    time: float
    slice: str
    proto: str
    dst: str
    port: int

    def row(self) -> tuple[Any, ...]:
        return (f"{self.time:.6f}", self.slice, self.proto, self.dst, self.port)


class ConnectDetector:
    """Connection attempts from raw sniffer records (see :data:`RECORD`)."""

    def __init__(self, on_connect: Callable[[Connect], None], ring: int = 100,
                 udp_idle_s: float = 30.0, max_flows: int = 65536) -> None:
        self.on_connect = on_connect
        self.ring: deque[Connect] = deque(maxlen=ring)
        self.slices: dict[int, str] = {}
        self.total = 0
        self.udp_idle_s = udp_idle_s
        self.max_flows = max_flows
        self._flows: OrderedDict[tuple[int, bytes, int, bytes, int], float] = OrderedDict()

    def set_slices(self, mapping: dict[str, str]) -> None:
        self.slices = {int(k): v for k, v in mapping.items()}

    def feed(self, payload: bytes) -> None:
        """Process the payload of one ``R`` frame."""
        self.feed_records(RECORD.iter_unpack(payload))

    def feed_records(self, records: Iterable[tuple[Any, ...]]) -> None:
        flows = self._flows
        for t, xid, src, dst, sport, dport, proto, flags, _len, direction in records:
            if direction != OUT:
                continue
            if proto == TCP:
                if flags & (SYN | ACK) != SYN:
                    continue
                self._emit(t, xid, "tcp", dst, dport)
            elif proto == UDP:
                key = (xid, src, sport, dst, dport)
                last = flows.get(key)
                flows[key] = t
                flows.move_to_end(key)
                if len(flows) > self.max_flows:
                    flows.popitem(last=False)
                if last is None or t - last > self.udp_idle_s:
                    self._emit(t, xid, "udp", dst, dport)

    def _emit(self, t: float, xid: int, proto: str, dst: bytes, port: int) -> None:
        c = Connect(t, self.slices.get(xid, f"xid{xid}"), proto, ip_text(dst), port)
        self.total += 1
        self.ring.append(c)
        self.on_connect(c)
