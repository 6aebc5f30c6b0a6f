"""AF_PACKET capture: classic BPF programs and a TPACKET_V3 memory-mapped ring.

The kernel fills fixed-size blocks of the ring with packets and hands a whole block to
user space at once, so reading costs no system call per packet: the admin sniffer keeps
up with a node's cap at the smallest packets in pure Python this way.

``bpf_*`` functions are pure (they return programs as data); :class:`PacketRing` acts.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import socket
import struct
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from slicectl.core.errors import EngineError

ETH_P_ALL = 0x0003
ETH_P_IP = 0x0800
SOL_PACKET = 263
PACKET_VERSION = 10
PACKET_RX_RING = 5
PACKET_STATISTICS = 6
TPACKET_V3 = 2
SO_ATTACH_FILTER = 26
TP_STATUS_KERNEL = 0
TP_STATUS_USER = 1

PACKET_HOST = 0
PACKET_OUTGOING = 4

# Classic BPF opcodes (linux/bpf_common.h).
LD_H_ABS = 0x28
LD_B_ABS = 0x30
LDX_B_MSH = 0xB1
LD_H_IND = 0x48
LD_B_IND = 0x50
JEQ_K = 0x15
JSET_K = 0x45
RET_K = 0x06
SKF_AD_PROTOCOL = -0x1000 + 0
SKF_AD_PKTTYPE = -0x1000 + 4

BLOCK_DESC = struct.Struct("<III")        # version, offset_to_priv, block_status
BLOCK_HDR = struct.Struct("<II")          # num_pkts, offset_to_first_pkt (at +12)
PKT_HDR = struct.Struct("<IIIIIIHH")      # next, sec, nsec, snaplen, len, status, mac, net
STATS_V3 = struct.Struct("<III")          # packets, drops, freeze_q_cnt

Insn = tuple[int, int, int, int]


def bpf_ip(snaplen: int, pkttype: int | None = None) -> list[Insn]:
    """Accept IPv4 frames (optionally only of one packet type), keeping ``snaplen`` bytes."""
    prog: list[Insn] = []
    if pkttype is not None:
        prog += [(LD_B_ABS, 0, 0, SKF_AD_PKTTYPE & 0xFFFFFFFF), (JEQ_K, 0, 3, pkttype)]
    prog += [(LD_H_ABS, 0, 0, 12), (JEQ_K, 0, 1, ETH_P_IP), (RET_K, 0, 0, snaplen),
             (RET_K, 0, 0, 0)]
    return prog


def pack_program(prog: Sequence[Insn]) -> bytes:
    return b"".join(struct.pack("<HBBI", *insn) for insn in prog)


def attach_filter(sock: socket.socket, prog: Sequence[Insn]) -> None:
    """SO_ATTACH_FILTER: the kernel copies the program, so the buffer may go afterwards."""
    code = ctypes.create_string_buffer(pack_program(prog))
    fprog = struct.pack("HL", len(prog), ctypes.addressof(code))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)


@dataclass(frozen=True)
class RingStats:
    packets: int
    drops: int


class PacketRing:
    """A TPACKET_V3 receive ring on one interface.

    Args:
        ifname: the interface to capture on.
        prog: a classic BPF program deciding what is captured and how much of it.
        block_size: bytes per block (a power of two multiple of the page size).
        blocks: number of blocks; the ring holds ``block_size * blocks`` bytes.
        timeout_ms: the kernel hands over a partly filled block after this long.

    Raises:
        EngineError: the interface does not exist or the ring cannot be set up.
    """

    def __init__(self, ifname: str, prog: Sequence[Insn], block_size: int = 1 << 20,
                 blocks: int = 16, timeout_ms: int = 10) -> None:
        self.ifname = ifname
        self.block_size = block_size
        self.blocks = blocks
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        try:
            attach_filter(self.sock, prog)
            self.sock.setsockopt(SOL_PACKET, PACKET_VERSION, TPACKET_V3)
            req = struct.pack("<IIIIIII", block_size, blocks, 2048, block_size * blocks // 2048,
                              timeout_ms, 0, 0)
            self.sock.setsockopt(SOL_PACKET, PACKET_RX_RING, req)
            self.map = mmap.mmap(self.sock.fileno(), block_size * blocks,
                                 mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
            self.sock.bind((ifname, ETH_P_ALL))
        except OSError as e:
            self.sock.close()
            raise EngineError(f"capture on {ifname}: cannot set up a TPACKET_V3 ring "
                              f"({e.strerror or e})") from e
        self.next_block = 0

    def fileno(self) -> int:
        return self.sock.fileno()

    def ready_blocks(self) -> Iterator[tuple[int, int, int]]:
        """Blocks the kernel has handed over, in order, as (block offset, packets, offset of
        the first packet). Each is given back to the kernel when the caller asks for the
        next one, so parse a block completely before moving on."""
        m = self.map
        while True:
            base = self.next_block * self.block_size
            status = BLOCK_DESC.unpack_from(m, base)[2]
            if not status & TP_STATUS_USER:
                return
            num, first = BLOCK_HDR.unpack_from(m, base + 12)
            try:
                yield base, num, first
            finally:
                struct.pack_into("<I", m, base + 8, TP_STATUS_KERNEL)
                self.next_block = (self.next_block + 1) % self.blocks

    def stats(self) -> RingStats:
        """Packets seen and dropped by the kernel since the last call (it resets them)."""
        raw = self.sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, STATS_V3.size)
        packets, drops, _ = STATS_V3.unpack(raw)
        return RingStats(packets, drops)

    def close(self) -> None:
        try:
            self.map.close()
        finally:
            self.sock.close()


def synthetic_block(frames: Sequence[bytes], slot: int = 128, first: int = 48) -> bytes:
    """A ring block as the kernel lays it out, holding ``frames`` (Ethernet frames, cut to
    the slot): for tests and benchmarks of block parsers. Packets start at ``first``."""
    buf = bytearray(first + len(frames) * slot)
    for i, f in enumerate(frames):
        p = first + i * slot
        caught = f[:slot - 48]
        PKT_HDR.pack_into(buf, p, slot, 1, 500_000_000, len(caught), len(f), 0, 34, 48)
        buf[p + 34:p + 34 + len(caught)] = caught
    return bytes(buf)


CLONE_NEWNET = 0x40000000


def enter_netns(fd: int, what: str) -> None:
    """Move the calling thread into the network namespace open at ``fd``.

    Raises:
        EngineError: the kernel refused (the message names ``what``).
    """
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        raise EngineError(f"setns into {what}: {os.strerror(ctypes.get_errno())}")


@contextmanager
def in_netns(pid: int) -> Iterator[None]:
    """Run the body in the network namespace of ``pid``, then switch back.

    Sockets made inside keep working in their namespace after the switch back.
    """
    own = os.open("/proc/self/ns/net", os.O_RDONLY)
    try:
        try:
            target = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY)
        except OSError as e:
            raise EngineError(f"network namespace of pid {pid}: cannot open it ({e.strerror})") from e
        try:
            enter_netns(target, f"pid {pid}'s network")
        finally:
            os.close(target)
        try:
            yield
        finally:
            enter_netns(own, "the host network (back)")
    finally:
        os.close(own)
