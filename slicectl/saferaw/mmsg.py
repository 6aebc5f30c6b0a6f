"""Many datagrams per system call: ``recvmmsg(2)`` and ``sendmmsg(2)`` through ctypes.

Python's socket module has neither. The shim on the host reads a sliver's packets and
its capture socket with :class:`Received` and sends with :class:`Outbox`; the sliver's
``saferaw.RawSocket.send_many`` sends with :class:`Outbox` too. Stdlib-only: this module
is copied into the reference image with the rest of ``saferaw``.

Errors are ``OSError`` carrying the errno, as the socket module raises them (so
``BlockingIOError`` for EAGAIN, and callers tell ENOBUFS or EPIPE apart by ``errno``),
each on one line naming the call (``[Errno 105] No buffer space available: 'sendmmsg'``).
EINTR is retried: the kernel returns the count of what it had done before a signal, so a
retry repeats nothing.
"""

from __future__ import annotations

import ctypes
import errno
import os
import socket
import struct
from typing import Any

__all__ = ["Outbox", "Received", "available"]


class IOVec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


class MsgHdr(ctypes.Structure):
    _fields_ = [("msg_name", ctypes.c_void_p), ("msg_namelen", ctypes.c_uint32),
                ("msg_iov", ctypes.c_void_p), ("msg_iovlen", ctypes.c_size_t),
                ("msg_control", ctypes.c_void_p), ("msg_controllen", ctypes.c_size_t),
                ("msg_flags", ctypes.c_int)]


class MMsgHdr(ctypes.Structure):
    _fields_ = [("msg_hdr", MsgHdr), ("msg_len", ctypes.c_uint)]


#: An iovec as native bytes (pointer, size_t), and a message's two: one pack_into each.
_IOV = struct.Struct("PN")
_IOV2 = struct.Struct("PNPN")
_HDR = ctypes.sizeof(MMsgHdr)
#: msg_len and msg_flags of message i are 32-bit words i * _WORDS + _LEN, + _FLAGS.
_WORDS = _HDR // 4
_LEN = MMsgHdr.msg_len.offset // 4
_FLAGS = (MMsgHdr.msg_hdr.offset + MsgHdr.msg_flags.offset) // 4
_SOCKADDR_IN = 16
_libc: Any = None


def _calls() -> Any:
    """libc with sendmmsg and recvmmsg typed, loaded once.

    Raises:
        OSError: ENOSYS, this libc has no sendmmsg or recvmmsg.
    """
    global _libc
    if _libc is None:
        libc = ctypes.CDLL(None, use_errno=True)
        try:
            send, recv = libc.sendmmsg, libc.recvmmsg
        except AttributeError as e:
            raise OSError(errno.ENOSYS, "sendmmsg/recvmmsg: expected them in the C library, "
                                        "found neither") from e
        send.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int]
        recv.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int,
                         ctypes.c_void_p]
        send.restype = recv.restype = ctypes.c_int
        _libc = libc
    return _libc


def available() -> bool:
    """Whether this C library has sendmmsg and recvmmsg."""
    try:
        _calls()
    except OSError:
        return False
    return True


def _fd(sock: socket.socket | int) -> int:
    return sock if isinstance(sock, int) else sock.fileno()


def _failed(call: str) -> OSError:
    """The error of the call that just failed, as the os module words it: strerror as
    the socket module gives it, the call in place of a file name."""
    err = ctypes.get_errno()
    return OSError(err, os.strerror(err), call)


class Received:
    """Up to ``count`` datagrams of up to ``size`` bytes each, read by one ``recv`` call.

    Message ``i`` of the last read is :meth:`message` ``(i)``; a datagram longer than
    ``size`` is cut to it (:meth:`truncated` says so), as ``recv(size)`` would cut it.
    """

    def __init__(self, count: int, size: int) -> None:
        if count < 1 or size < 1:
            raise ValueError(f"Received: expected a count and size of at least 1, found "
                             f"{count} and {size}")
        _calls()
        self.count, self.size = count, size
        self._arena = ctypes.create_string_buffer(count * size)
        self.base = ctypes.addressof(self._arena)
        self.mem = memoryview(self._arena).cast("B")
        self._iov = (IOVec * count)()
        self._hdrs = (MMsgHdr * count)()
        for i in range(count):
            self._iov[i].iov_base, self._iov[i].iov_len = self.base + i * size, size
            self._hdrs[i].msg_hdr.msg_iov = ctypes.addressof(self._iov) + i * ctypes.sizeof(IOVec)
            self._hdrs[i].msg_hdr.msg_iovlen = 1
        self._words = memoryview(self._hdrs).cast("B").cast("I")
        self.n = 0

    def recv(self, sock: socket.socket | int, flags: int = socket.MSG_DONTWAIT,
             limit: int | None = None) -> int:
        """Read up to ``limit`` (at most ``count``) datagrams; returns how many (0 only on
        a stream's end). Raises OSError (BlockingIOError when nothing is waiting)."""
        want = self.count if limit is None else max(1, min(limit, self.count))
        fd, recvmmsg = _fd(sock), _calls().recvmmsg
        self.n = 0
        while True:
            n = recvmmsg(fd, ctypes.addressof(self._hdrs), want, flags, None)
            if n >= 0:
                self.n = n
                return int(n)
            err = _failed("recvmmsg")
            if err.errno != errno.EINTR:
                raise err

    def length(self, i: int) -> int:
        self._index(i)
        return int(self._words[i * _WORDS + _LEN])

    def truncated(self, i: int) -> bool:
        self._index(i)
        return bool(self._words[i * _WORDS + _FLAGS] & socket.MSG_TRUNC)

    def message(self, i: int) -> bytes:
        """A copy of datagram ``i`` of the last read."""
        self._index(i)
        start = i * self.size
        return bytes(self.mem[start:start + self._words[i * _WORDS + _LEN]])

    def _index(self, i: int) -> None:
        if not 0 <= i < self.n:
            raise IndexError(f"message {i}: expected one of the {self.n} last received")


class Outbox:
    """Datagrams queued for one ``sendmmsg`` call: at most ``count`` of them, copied into
    ``capacity`` bytes (or pointing into a :class:`Received`), each optionally with an
    IPv4 destination (``sockaddr_in``, port 0: what raw IP sockets take).

    Queue with :meth:`add` or :meth:`add_received`, then call :meth:`send` until
    :attr:`pending` is 0: each call sends what the kernel takes from the first pending
    message on and raises for that message if it takes none; :meth:`skip` then gives up
    on it (counting is the caller's), :meth:`clear` on all of them.
    """

    def __init__(self, count: int, capacity: int, named: bool = False) -> None:
        if count < 1 or capacity < 1:
            raise ValueError(f"Outbox: expected a count and capacity of at least 1, found "
                             f"{count} and {capacity}")
        _calls()
        self.count, self.capacity, self.named = count, capacity, named
        self._arena = ctypes.create_string_buffer(capacity)
        self.base = ctypes.addressof(self._arena)
        self.mem = memoryview(self._arena).cast("B")
        # Two pieces per message: what was copied here, and what points into a Received.
        self._iov = (IOVec * (2 * count))()
        self._iov_mem = memoryview(self._iov).cast("B")
        self._hdrs = (MMsgHdr * count)()
        self._names = (ctypes.c_uint8 * (_SOCKADDR_IN * count))()
        self._names_mem = memoryview(self._names).cast("B")
        iov_at, name_at = ctypes.addressof(self._iov), ctypes.addressof(self._names)
        for j in range(count):
            h = self._hdrs[j].msg_hdr
            h.msg_iov, h.msg_iovlen = iov_at + 2 * j * ctypes.sizeof(IOVec), 2
            if named:
                h.msg_name, h.msg_namelen = name_at + j * _SOCKADDR_IN, _SOCKADDR_IN
                struct.pack_into("=H", self._names_mem, j * _SOCKADDR_IN, socket.AF_INET)
        self._keep: list[Received] = []
        self.n = self.done = self.used = 0

    @property
    def pending(self) -> int:
        """Messages queued and not yet sent or skipped."""
        return self.n - self.done

    def room(self, size: int) -> bool:
        """Whether a message of ``size`` bytes (copied) fits now."""
        return self.n < self.count and self.used + size <= self.capacity

    def add(self, data: bytes | bytearray | memoryview, dst: bytes | None = None, head: bytes = b"") -> None:
        """Queue ``head + data`` (copied). Raises ValueError when it does not fit (see
        :meth:`room`) or a destination is given to an unnamed box, or not to a named one."""
        view = memoryview(data).cast("B")
        size = len(head) + len(view)
        if not self.room(size):
            raise ValueError(f"Outbox: expected room for a message of {size} bytes, found "
                             f"{self.n} of {self.count} messages and {self.used} of "
                             f"{self.capacity} bytes queued")
        at = self.used
        self.mem[at:at + len(head)] = head
        self.mem[at + len(head):at + size] = view
        self.used += size
        self._queue(self.base + at, size, 0, 0, dst)

    def add_received(self, rx: Received, i: int, dst: bytes | None = None,
                     head: bytes = b"") -> None:
        """Queue ``head`` (copied) and message ``i`` of ``rx`` as it lies there: valid
        until ``rx`` reads again."""
        length = rx.length(i)
        if self.n >= self.count or self.used + len(head) > self.capacity:
            raise ValueError(f"Outbox: expected room for a message, found {self.n} of "
                             f"{self.count} messages and {self.used} of {self.capacity} "
                             "bytes queued")
        at = self.used
        if head:
            self.mem[at:at + len(head)] = head
            self.used += len(head)
        if not self._keep or self._keep[-1] is not rx:
            self._keep.append(rx)
        self._queue(self.base + at, len(head), rx.base + i * rx.size, length, dst)

    def _queue(self, first: int, first_len: int, second: int, second_len: int,
               dst: bytes | None) -> None:
        if (dst is not None) != self.named:
            raise ValueError("Outbox: expected a destination for each message of a named box "
                             "and none for an unnamed one")
        j = self.n
        _IOV2.pack_into(self._iov_mem, j * _IOV2.size, first, first_len, second, second_len)
        if dst is not None:
            if len(dst) != 4:
                raise ValueError(f"Outbox: expected a 4-byte IPv4 destination, found "
                                 f"{len(dst)} bytes")
            self._names_mem[j * _SOCKADDR_IN + 4:j * _SOCKADDR_IN + 8] = dst
        self.n += 1

    def send(self, sock: socket.socket | int, flags: int = 0) -> int:
        """One sendmmsg of the pending messages; returns how many the kernel took (at
        least one). Raises OSError for the first pending message when it took none."""
        if not self.pending:
            return 0
        fd, sendmmsg = _fd(sock), _calls().sendmmsg
        while True:
            n = sendmmsg(fd, ctypes.addressof(self._hdrs) + self.done * _HDR, self.pending,
                         flags)
            if n > 0:
                self.done += n
                if not self.pending:
                    self.clear()
                return int(n)
            if n == 0:  # the kernel takes at least one or fails; never loop on nothing
                raise OSError(errno.EIO, "sendmmsg: expected at least one message sent, "
                                         "found none")
            err = _failed("sendmmsg")
            if err.errno != errno.EINTR:
                raise err

    def skip(self) -> None:
        """Give up on the first pending message (after :meth:`send` raised for it)."""
        if self.pending:
            self.done += 1
            if not self.pending:
                self.clear()

    def clear(self) -> None:
        """Forget every queued message."""
        self.n = self.done = self.used = 0
        self._keep.clear()
