"""Where sensor values come from: /proc, cgroup v1 files, the node manager.

The readers take their roots as arguments (the sidecar passes the real ones, tests a
directory of their own); none of them blocks for long: file reads of a few hundred bytes,
and the node manager, which is called from a thread (see :class:`NMView`).
"""

from __future__ import annotations

import asyncio
import itertools
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slicectl.core.errors import ConnectionFailed, SlicectlError
from slicectl.ipc.rpc import Client

MEMINFO_FIELDS = (
    ("MemTotal", "total_kb"), ("MemFree", "free_kb"), ("MemAvailable", "available_kb"),
    ("Buffers", "buffers_kb"), ("Cached", "cached_kb"), ("SwapTotal", "swap_total_kb"),
    ("SwapFree", "swap_free_kb"),
)


def meminfo(proc: Path) -> dict[str, int]:
    """The fields of :data:`MEMINFO_FIELDS` from ``<proc>/meminfo``, in kB."""
    wanted = dict(MEMINFO_FIELDS)
    out = dict.fromkeys(wanted.values(), 0)
    for line in (proc / "meminfo").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in wanted:
            out[wanted[key]] = int(rest.split()[0])
    return out


def loadavg(proc: Path) -> tuple[float, float, float]:
    a, b, c = (proc / "loadavg").read_text().split()[:3]
    return float(a), float(b), float(c)


def uptime_s(proc: Path) -> float:
    return float((proc / "uptime").read_text().split()[0])


def cpu_count(proc: Path) -> int:
    text = (proc / "cpuinfo").read_text()
    return sum(1 for ln in text.splitlines() if ln.startswith("processor")) or (os.cpu_count() or 1)


def node_address(override: str = "") -> str:
    """The node's primary IPv4 address: the source address of its default route (no packet
    is sent), or ``override``."""
    if override:
        return override
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))
            return str(s.getsockname()[0])
        except OSError:
            return "127.0.0.1"


def local_addresses(proc: Path) -> frozenset[str]:
    """The IPv4 addresses of this network namespace's interfaces (the ``/32 host LOCAL``
    entries of ``<proc>/net/fib_trie``); empty when the file cannot be read, so that an
    address is never taken for the node's by mistake."""
    try:
        lines = (proc / "net" / "fib_trie").read_text().splitlines()
    except OSError:
        return frozenset()
    out = set()
    for prev, line in itertools.pairwise(lines):
        if line.strip() == "/32 host LOCAL" and "|--" in prev:
            out.add(prev.split("|--", 1)[1].strip())
    return frozenset(out)


@dataclass(frozen=True)
class CgroupUsage:
    cpu_s: float | None
    mem_bytes: int | None
    mem_limit_bytes: int | None
    cpu_cap_pct: float | None


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


#: The kernel's "no limit" for memory.limit_in_bytes (page-rounded LONG_MAX).
MEM_UNLIMITED = 1 << 62


def cgroup_usage(root: Path, parent: str, container_id: str, ncpus: int) -> CgroupUsage:
    """CPU seconds, memory use and caps of one container from cgroup v1 files under ``root``
    (``<root>/<controller>/<parent>/<id>/...``); None for what cannot be read."""
    rel = Path(parent.lstrip("/")) / container_id
    ns = _read_int(root / "cpuacct" / rel / "cpuacct.usage")
    limit = _read_int(root / "memory" / rel / "memory.limit_in_bytes")
    quota = _read_int(root / "cpu" / rel / "cpu.cfs_quota_us")
    period = _read_int(root / "cpu" / rel / "cpu.cfs_period_us")
    cap = (round(100 * quota / period / ncpus, 2)
           if quota is not None and quota > 0 and period else None)
    return CgroupUsage(
        cpu_s=None if ns is None else ns / 1e9,
        mem_bytes=_read_int(root / "memory" / rel / "memory.usage_in_bytes"),
        mem_limit_bytes=None if limit is None or limit >= MEM_UNLIMITED else limit,
        cpu_cap_pct=cap,
    )


class NMView:
    """The node manager's sliver list (``list``) and creation services' reports
    (``services``), each fetched in a worker thread and cached.

    Concurrent requests share one fetch; a result younger than ``max_age`` is reused.
    """

    def __init__(self, sock: Path, timeout_s: float = 10) -> None:
        self.client = Client(sock, timeout=timeout_s)
        self._at: dict[str, float] = {}
        self._value: dict[str, list[dict[str, Any]]] = {}
        self._pending: dict[str, asyncio.Future[list[dict[str, Any]]]] = {}

    @property
    def age_s(self) -> float:
        return time.monotonic() - self._at.get("list", 0.0)

    async def slivers(self, max_age_s: float) -> list[dict[str, Any]]:
        """Raises ConnectionFailed (or another SlicectlError) when the NM cannot answer."""
        return await self._get("list", max_age_s)

    async def services(self, max_age_s: float) -> list[dict[str, Any]]:
        """The last report of each slice creation service (the node agent's among them)."""
        return await self._get("services", max_age_s)

    async def _get(self, method: str, max_age_s: float) -> list[dict[str, Any]]:
        at = self._at.get(method, 0.0)
        if at and time.monotonic() - at <= max_age_s:
            return self._value[method]
        pending = self._pending.get(method)
        if pending is None:
            loop = asyncio.get_running_loop()
            pending = self._pending[method] = loop.run_in_executor(None, self._fetch, method)
            # Waiters may be cancelled; the outcome is still taken, never left unretrieved.
            pending.add_done_callback(lambda f: f.cancelled() or f.exception())
        try:
            return await asyncio.shield(pending)
        finally:
            if self._pending.get(method) is pending and pending.done():
                del self._pending[method]

    def _fetch(self, method: str = "list") -> list[dict[str, Any]]:
        try:
            result = self.client.call(method)
        except SlicectlError:
            raise
        except OSError as e:
            raise ConnectionFailed(f"node manager at {self.client.path}: {e}") from e
        self._value[method] = list(result)
        self._at[method] = time.monotonic()
        return self._value[method]
