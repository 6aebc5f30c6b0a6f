"""Who is at the other end of a unix socket, pinned at connect time.

``SO_PEERCRED`` gives the pid, uid and gid the peer had when it called ``connect()``;
``SO_PEERPIDFD`` (Linux 6.5+, option 77; Python 3.11 has no constant) gives a pidfd for
that very process. A pid number can be reused once its process is gone, a pidfd cannot:
while the pidfd says the process is alive, ``/proc/<pid>`` is that process. So a reader
reads ``/proc/<pid>/...`` and then asks :meth:`Peer.alive`; if it is still alive, what it
read was the peer's. A peer whose process is gone is refused, never guessed at.

Stdlib only (the ``ipc`` layer).
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import struct
from dataclasses import dataclass

from slicectl.core.errors import PermissionDenied

SO_PEERCRED = 17
SO_PEERPIDFD = 77
_CRED = struct.Struct("3i")


class PeerRefused(PermissionDenied):
    """The peer could not be positively identified (its process is gone, or it gave no
    credentials); the caller gets nothing."""


def peer_credentials(sock: socket.socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of the process that connected the other end of a unix socket, as
    they were at ``connect()`` (pid in this process's pid namespace)."""
    raw = sock.getsockopt(socket.SOL_SOCKET, SO_PEERCRED, _CRED.size)
    pid, uid, gid = _CRED.unpack(raw)
    return pid, uid, gid


def pidfd_alive(pidfd: int) -> bool:
    """True while the process a pidfd names has not exited (a zombie has exited)."""
    p = select.poll()
    p.register(pidfd, select.POLLIN)
    return not p.poll(0)


@dataclass
class Peer:
    """A connected peer: its credentials at connect time and a pidfd for its process.

    Close it (or use it as a context manager) when the connection ends.
    """

    pid: int
    uid: int
    gid: int
    pidfd: int

    @classmethod
    def of(cls, sock: socket.socket) -> Peer:
        """Pin the peer of ``sock``.

        Raises:
            PeerRefused: no credentials (pid 0: the peer is in no pid namespace we can
                see), no pidfd, or the process already gone.
        """
        try:
            pid, uid, gid = peer_credentials(sock)
        except OSError as e:
            raise PeerRefused(f"peer: expected credentials on the socket, found none "
                              f"({e.strerror})") from e
        if pid <= 0:
            raise PeerRefused(f"peer: expected a process this node can see, found pid {pid}")
        try:
            pidfd = sock.getsockopt(socket.SOL_SOCKET, SO_PEERPIDFD)
        except OSError as e:
            raise PeerRefused(f"peer pid {pid}: expected a live process, found it gone "
                              f"({e.strerror})") from e
        peer = cls(pid=pid, uid=uid, gid=gid, pidfd=pidfd)
        if not pidfd_alive(pidfd):
            peer.close()
            raise PeerRefused(f"peer pid {pid}: expected a live process, found it exited "
                              "since it connected")
        return peer

    def alive(self) -> bool:
        return self.pidfd >= 0 and pidfd_alive(self.pidfd)

    def check(self) -> None:
        """Raise :class:`PeerRefused` unless the process that connected still lives."""
        if not self.alive():
            raise PeerRefused(f"peer pid {self.pid}: expected the process that connected, "
                              "found it exited (a connection is not passed on)")

    def read(self, relative: str, limit: int = 1 << 16) -> str:
        """Read ``/proc/<pid>/<relative>`` race-free: the text is the peer's own, or
        :class:`PeerRefused` is raised (the process is gone or the file unreadable)."""
        self.check()
        try:
            with open(f"/proc/{self.pid}/{relative}", "rb") as f:
                data = f.read(limit)
        except OSError as e:
            self.check()  # gone meanwhile: say so
            raise PeerRefused(f"peer pid {self.pid}: expected /proc/{self.pid}/{relative} "
                              f"readable, found {e.strerror}") from e
        self.check()  # still alive after the read: the pid named the peer throughout
        return data.decode(errors="replace")

    def close(self) -> None:
        if self.pidfd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.pidfd)
            self.pidfd = -1

    def __enter__(self) -> Peer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
