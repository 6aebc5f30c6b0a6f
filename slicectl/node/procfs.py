"""Who a socket peer is, read from /proc and pinned by a pidfd: the one caller-identity
helper of the node manager, the raw-socket shim and the admin sniffer.

:func:`pin` runs at accept: it takes the peer's pidfd (:class:`slicectl.ipc.peer.Peer`),
reads its cgroup and pid namespace from ``/proc`` and confirms through the pidfd that the
same process is still alive, so what was read is the peer's. :meth:`PinnedPeer.check`
runs again when a request is served. :meth:`PinnedPeer.who` then names the peer: host
root, a sliver of this node, or a node service; anything else is refused.

Fail closed (DESIGN.md): a process that is gone, a cgroup that cannot be read, a
container that is no sliver or service of this node, a host process that is not uid 0 or
lives in another pid namespace: all are refused with a one-line reason. uid 0 inside a
container is never root.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Literal

from slicectl.core.errors import PermissionDenied
from slicectl.ipc.peer import Peer, PeerRefused

_CID = re.compile(r"(?<![0-9a-f])([0-9a-f]{64})(?![0-9a-f])")

Kind = Literal["root", "slice", "service"]


def container_ids(cgroup_text: str) -> list[str]:
    """Docker container ids in a ``/proc/PID/cgroup`` text, in path order (outermost
    first), each once."""
    out: list[str] = []
    for m in _CID.finditer(cgroup_text):
        if m.group(1) not in out:
            out.append(m.group(1))
    return out


@lru_cache(maxsize=1)
def _own() -> tuple[frozenset[str], str]:
    """This process's own container ids (a node that is itself a container, as in the
    multi-node testbed) and pid namespace."""
    with open("/proc/self/cgroup") as f:
        ids = frozenset(container_ids(f.read()))
    return ids, os.readlink("/proc/self/ns/pid")


def own_containers() -> frozenset[str]:
    """The container ids this process is in itself (none on a host)."""
    return _own()[0]


def container_in(cgroup_text: str, own: frozenset[str] = frozenset()) -> str | None:
    """The innermost container id of a cgroup text beyond the ones this process is in
    itself; None for a process of the host (of this node)."""
    ids = [c for c in container_ids(cgroup_text) if c not in own]
    return ids[-1] if ids else None


@dataclass(frozen=True)
class Who:
    """A positively identified peer: ``kind`` root, slice or service, and its name."""

    kind: Kind
    name: str = ""

    def __str__(self) -> str:
        return "root" if self.kind == "root" else f"{self.kind}:{self.name}"


@dataclass
class PinnedPeer:
    """A peer pinned at accept: its pidfd, uid, and the container it was found in."""

    peer: Peer
    container_id: str | None
    same_pid_ns: bool

    @property
    def pid(self) -> int:
        return self.peer.pid

    @property
    def uid(self) -> int:
        return self.peer.uid

    @property
    def pidfd(self) -> int:
        """A pidfd of the peer's process (readable once it exits)."""
        return self.peer.pidfd

    @property
    def owner(self) -> str:
        """What the peer's connections count against: its container, or the host."""
        return self.container_id or "host"

    @property
    def host_root(self) -> bool:
        """uid 0 in a host process of this node: no container in its cgroup beyond this
        process's own, and this process's pid namespace."""
        return self.container_id is None and self.same_pid_ns and self.uid == 0

    def alive(self) -> bool:
        return self.peer.alive()

    def check(self) -> None:
        """Raise PeerRefused unless the process that connected still lives."""
        self.peer.check()

    def who(self, sliver_of: Callable[[str], str | None],
            service_of: Callable[[str], str | None] = lambda cid: None) -> Who:
        """Name the peer, checking again that it is alive.

        Args:
            sliver_of: the slice whose sliver is the container with this id, or None.
            service_of: the node service that is the container with this id, or None.

        Raises:
            PermissionDenied: the process is gone, or it is no host root, sliver or
                service of this node.
        """
        self.check()
        cid = self.container_id
        if cid is None:
            if not self.same_pid_ns:
                raise PermissionDenied(f"caller pid {self.pid}: expected a host process or "
                                       "a container, found another pid namespace")
            if self.uid != 0:
                raise PermissionDenied(f"caller uid {self.uid}: expected root, found "
                                       "another user")
            return Who("root")
        name = sliver_of(cid)
        if name is not None:
            return Who("slice", name)
        service = service_of(cid)
        if service is not None:
            return Who("service", service)
        raise PermissionDenied(f"caller pid {self.pid}: in container {cid[:12]}, which is "
                               "no sliver or service of this node")

    def close(self) -> None:
        self.peer.close()


def pin(sock: socket.socket) -> PinnedPeer:
    """Pin the peer of a unix socket: pidfd, cgroup and pid namespace, read race-free.

    Raises:
        PeerRefused: the process is gone or its /proc entries cannot be read.
    """
    peer = Peer.of(sock)
    try:
        cgroup = peer.read("cgroup")
        try:
            ns = os.readlink(f"/proc/{peer.pid}/ns/pid")
        except OSError as e:
            peer.check()
            raise PeerRefused(f"peer pid {peer.pid}: expected its pid namespace readable, "
                              f"found {e.strerror}") from e
        peer.check()
        own, own_ns = _own()
        if not cgroup.strip():
            raise PeerRefused(f"peer pid {peer.pid}: expected a cgroup, found none")
        return PinnedPeer(peer, container_in(cgroup, own), ns == own_ns)
    except BaseException:
        peer.close()
        raise


#: /proc/net/tcp state of a listening socket.
_TCP_LISTEN = "0A"


def parse_net_table(text: str, tcp: bool) -> set[int]:
    """Local ports in a /proc/net/{tcp,tcp6,udp,udp6} table: listening TCP sockets, or
    any bound UDP socket."""
    ports: set[int] = set()
    for line in text.splitlines()[1:]:
        cols = line.split()
        if len(cols) < 4 or ":" not in cols[1]:
            continue
        if tcp and cols[3] != _TCP_LISTEN:
            continue
        with contextlib.suppress(ValueError):
            ports.add(int(cols[1].rsplit(":", 1)[1], 16))
    ports.discard(0)
    return ports


def host_listeners(net: Path = Path("/proc/net")) -> frozenset[tuple[str, int]]:
    """(proto, port) of every socket listening in this process's network namespace (the
    host's, for the node manager)."""
    out: set[tuple[str, int]] = set()
    for name, proto in (("tcp", "tcp"), ("tcp6", "tcp"), ("udp", "udp"), ("udp6", "udp")):
        try:
            text = (net / name).read_text()
        except OSError:
            continue
        out |= {(proto, p) for p in parse_net_table(text, proto == "tcp")}
    return frozenset(out)
