"""The site's admin sliver's view of the node and its hands on it: every process read
from the host's ``/proc`` (pids as the host sees them), and kills through pidfds, each
checked again to be the sliver's. What may be killed is decided in
:mod:`slicectl.core.procs`.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable
from pathlib import Path

from slicectl.core.errors import SlicectlError
from slicectl.core.procs import HOST, OTHER, Proc, inner_pid, parse_stat, proc_row
from slicectl.ipc.peer import pidfd_alive
from slicectl.node.procfs import container_in, own_containers


class ProcTable:
    """The node's processes, each named by whose it is.

    Args:
        slice_of: the slice whose sliver is a container id, or None.
        service_of: the node service that is a container id, or None.
        proc: where ``/proc`` is (tests of the parsing pass their own).
    """

    def __init__(self, slice_of: Callable[[str], str | None],
                 service_of: Callable[[str], str | None], proc: Path = Path("/proc")) -> None:
        self.slice_of = slice_of
        self.service_of = service_of
        self.proc = proc
        self.hz = os.sysconf("SC_CLK_TCK")
        self.page_kb = os.sysconf("SC_PAGE_SIZE") // 1024

    def owner(self, cgroup_text: str, cache: dict[str, str] | None = None
              ) -> tuple[str, str | None]:
        """(whose, container id) of a process by its cgroup text; ``cache`` keeps the
        names of containers already seen."""
        cid = container_in(cgroup_text, own_containers())
        if cid is None:
            return HOST, None
        if cache is not None and cid in cache:
            return cache[cid], cid
        name = self.slice_of(cid)
        if name is None:
            service = self.service_of(cid)
            name = OTHER if service is None else f"service:{service}"
        if cache is not None:
            cache[cid] = name
        return name, cid

    def scan(self) -> list[Proc]:
        """Every process alive now, by pid (one that exits while it is read is left out)."""
        uptime = float((self.proc / "uptime").read_text().split()[0])
        seen: dict[str, str] = {}
        out = []
        for entry in self.proc.iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = parse_stat((entry / "stat").read_text(errors="replace"))
                status = (entry / "status").read_text(errors="replace")
                cgroup = (entry / "cgroup").read_text(errors="replace")
                cmdline = (entry / "cmdline").read_bytes()
            except (OSError, SlicectlError):
                continue  # gone meanwhile
            whose, _ = self.owner(cgroup, seen)
            out.append(proc_row(int(entry.name), whose, stat, inner_pid(status), cmdline,
                                uptime, self.hz, self.page_kb))
        return sorted(out, key=lambda p: p.pid)

    def kill(self, pids: list[int], container_id: str) -> list[int]:
        """SIGKILL each of ``pids`` that is still a process of container
        ``container_id``: the pid is pinned by a pidfd, its cgroup read, and the pidfd
        checked alive after the read (so the pid was not reused between). Returns the
        pids killed."""
        done = []
        for pid in pids:
            try:
                fd = os.pidfd_open(pid)
            except OSError:
                continue  # exited since the scan
            try:
                cgroup = (self.proc / str(pid) / "cgroup").read_text(errors="replace")
                if not pidfd_alive(fd) or self.owner(cgroup)[1] != container_id:
                    continue
                signal.pidfd_send_signal(fd, signal.SIGKILL)
                done.append(pid)
            except OSError:
                continue
            finally:
                with contextlib.suppress(OSError):
                    os.close(fd)
        return done
