"""The prefixes of packets that iptables' NFLOG target sends to one netlink log group.

The node manager's wake rules (see :func:`slicectl.core.netplan.wake_rules`) log the first
packets of connections to a dormant sliver's reserved ports with the prefix
``slicectl-wake <slice>``; this reads them. Only the kernel writes to a log group, and
only root may bind one; the messages are still parsed with every length checked.
"""

from __future__ import annotations

import errno
import socket
import struct
import zlib
from collections.abc import Iterator

from slicectl.core.errors import EngineError

NETLINK_NETFILTER = 12
NFNL_SUBSYS_ULOG = 4
NFULNL_MSG_PACKET = 0
NFULNL_MSG_CONFIG = 1
NFULA_CFG_CMD = 1
NFULA_CFG_MODE = 2
NFULA_CFG_QTHRESH = 5
NFULNL_CFG_CMD_BIND = 1
NFULNL_COPY_META = 1
NFULA_PREFIX = 10
NLMSG_ERROR = 2
NLM_F_REQUEST, NLM_F_ACK = 1, 4
#: netlink attribute type bits that are flags, not the type
NLA_TYPE_MASK = 0x3FFF

_NLMSG = struct.Struct("=IHHII")   # length, type, flags, seq, pid
_NFGEN = struct.Struct("=BBH")     # family, version, res_id (the group, big-endian)
_NFA = struct.Struct("=HH")        # length, type

#: The first log group a node manager tries; it takes the first free one after it.
GROUP_BASE = 0x5C00
GROUP_TRIES = 64


def _align(n: int) -> int:
    return (n + 3) & ~3


def _attr(kind: int, payload: bytes) -> bytes:
    length = _NFA.size + len(payload)
    return _NFA.pack(length, kind) + payload + b"\0" * (_align(length) - length)


def config_message(group: int, seq: int, kind: int, payload: bytes) -> bytes:
    """A NFULNL_MSG_CONFIG request for ``group`` carrying one attribute."""
    body = _NFGEN.pack(socket.AF_UNSPEC, 0, socket.htons(group)) + _attr(kind, payload)
    return _NLMSG.pack(_NLMSG.size + len(body), (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_CONFIG,
                       NLM_F_REQUEST | NLM_F_ACK, seq, 0) + body


def messages(data: bytes) -> Iterator[tuple[int, bytes]]:
    """(type, payload) of each netlink message in one datagram; stops at a bad length."""
    off = 0
    while off + _NLMSG.size <= len(data):
        length, kind, _flags, _seq, _pid = _NLMSG.unpack_from(data, off)
        if length < _NLMSG.size or off + length > len(data):
            return
        yield kind, data[off + _NLMSG.size:off + length]
        off += _align(length)


def attributes(payload: bytes) -> Iterator[tuple[int, bytes]]:
    """(type, value) of each attribute after a message's nfgenmsg; stops at a bad length."""
    off = _NFGEN.size
    while off + _NFA.size <= len(payload):
        length, kind = _NFA.unpack_from(payload, off)
        if length < _NFA.size or off + length > len(payload):
            return
        yield kind & NLA_TYPE_MASK, payload[off + _NFA.size:off + length]
        off += _align(length)


def prefixes(data: bytes) -> list[str]:
    """The prefix of every logged packet in one datagram (a packet without one is
    skipped; bytes that are not text are replaced)."""
    out = []
    for kind, payload in messages(data):
        if kind != (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_PACKET:
            continue
        for akind, value in attributes(payload):
            if akind == NFULA_PREFIX:
                out.append(value.split(b"\0", 1)[0].decode(errors="replace"))
    return out


def ack_errno(data: bytes) -> int | None:
    """The error number of a netlink ack in ``data`` (0: success), or None if none."""
    for kind, payload in messages(data):
        if kind == NLMSG_ERROR and len(payload) >= 4:
            return -int(struct.unpack_from("=i", payload)[0])
    return None


def first_group(node_id: str) -> int:
    """Where a node manager starts looking for a free log group (spread by node id, so
    private nodes on one machine rarely try the same)."""
    return GROUP_BASE + zlib.crc32(node_id.encode()) % 0x400


class LogGroup:
    """A bound NFLOG group: :meth:`read` returns the prefixes of packets logged to it."""

    def __init__(self, group: int) -> None:
        self.group = group
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        try:
            self.sock.bind((0, 0))
            self._configure(1, NFULA_CFG_CMD, struct.pack("=B", NFULNL_CFG_CMD_BIND))
            self._configure(2, NFULA_CFG_MODE, struct.pack(">IBB", 0, NFULNL_COPY_META, 0))
            # each packet at once (the kernel's default batches 100, or 1 s)
            self._configure(3, NFULA_CFG_QTHRESH, struct.pack(">I", 1))
        except BaseException:
            self.sock.close()
            raise

    def _configure(self, seq: int, kind: int, payload: bytes) -> None:
        self.sock.send(config_message(self.group, seq, kind, payload))
        self.sock.settimeout(5)
        err = ack_errno(self.sock.recv(65536))
        if err:
            raise OSError(err, f"NFLOG group {self.group}: {errno.errorcode.get(err, err)}")

    def read(self, timeout: float) -> list[str]:
        """The prefixes that arrive within ``timeout`` seconds of the call (one datagram)."""
        self.sock.settimeout(timeout)
        try:
            return prefixes(self.sock.recv(1 << 16))
        except TimeoutError:
            return []
        except OSError as e:
            if e.errno == errno.ENOBUFS:  # the kernel dropped some: the next ones come
                return []
            raise

    def close(self) -> None:
        self.sock.close()


def open_group(node_id: str) -> LogGroup:
    """Bind the first free log group from :func:`first_group` on.

    Raises:
        EngineError: none of :data:`GROUP_TRIES` groups could be bound.
    """
    start = first_group(node_id)
    last: OSError | None = None
    for group in range(start, start + GROUP_TRIES):
        try:
            return LogGroup(group)
        except OSError as e:
            if e.errno not in (errno.EPERM, errno.EBUSY, errno.EEXIST):  # EPERM: taken
                raise EngineError(f"NFLOG group {group}: cannot bind it: {e}") from e
            last = e
    raise EngineError(f"NFLOG groups {start}-{start + GROUP_TRIES - 1}: all taken ({last}); "
                      "stop another node manager on this machine")
