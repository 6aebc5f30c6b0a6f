"""The safe raw socket shim: raw and sniffer sockets for slivers, checked on the host.

Slivers have no CAP_NET_RAW. A sliver granted ``raw_sockets`` finds this shim's socket
(``<run_dir>/shim/raw.sock``, SOCK_SEQPACKET) mounted at ``/run/slicectl/raw``. Each
connection is one safe raw socket (see :mod:`slicectl.saferaw` for the client side):

1. The first message is a JSON request: ``{"op": "open"|"sniff", "proto": "tcp"|"udp"|
   "icmp", "port": N}`` or ``{"op": "open", "proto": "icmp", "icmp_id": N}``. The shim
   finds the caller's sliver from its peer credentials (pid -> cgroup -> container), never
   from what it says; asks the node manager's port manager to record the port; opens, in
   the sliver's network namespace, an AF_PACKET socket filtered (BPF) to the binding and a
   raw IP socket to send with; and, for raw TCP/UDP, drops the bound port in the sliver's
   INPUT chain so its own kernel answers nothing (no RST, no port unreachable).
2. Then every message from the sliver is one IP packet, checked with
   :func:`slicectl.saferaw.packet.check_outgoing` and sent, or refused, counted and
   answered with an ``E`` message. Packets for the binding go back as ``P`` messages
   (kind byte, capture time as a little-endian double, the IP packet).

Both ways go in batches (:mod:`slicectl.saferaw.mmsg`): one ``recvmmsg`` takes up to
``RECV_BURST`` messages of a session, each is checked on its own exactly as if it had
come alone, and the ones that pass leave in one ``sendmmsg``; captured packets likewise.

Closing the connection undoes everything: the port claim, the DROP rule, the sockets.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import select
import selectors
import socket
import struct
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slicectl.core.errors import AdmissionError, EngineError, PermissionDenied, SlicectlError
from slicectl.core.policy import NodePolicy
from slicectl.core.requests import loads_bounded, shim_request
from slicectl.core.wire import NetEntry, from_struct
from slicectl.ipc.accepting import Accepts
from slicectl.ipc.lingering import linger_close
from slicectl.ipc.refusals import Refusals
from slicectl.ipc.rpc import Client
from slicectl.node.config import NodeConfig, default_config
from slicectl.node.daemons import SHIM, daemon_logging, listen_for_slivers, serve_daemon
from slicectl.node.procfs import PinnedPeer, pin
from slicectl.node.ring import (
    ETH_P_ALL,
    ETH_P_IP,
    JEQ_K,
    LD_B_ABS,
    LD_B_IND,
    LD_H_ABS,
    LD_H_IND,
    LDX_B_MSH,
    PACKET_HOST,
    RET_K,
    SKF_AD_PKTTYPE,
    SKF_AD_PROTOCOL,
    Insn,
    attach_filter,
    in_netns,
)
from slicectl.saferaw.mmsg import Outbox, Received
from slicectl.saferaw.packet import (
    ICMP,
    ICMP_ERRORS,
    PROTOS,
    Binding,
    PacketRefused,
    check_outgoing,
    incoming_matches,
    sniff_matches,
)

log = logging.getLogger("slicectl.node.shim")

SNIFF_SNAPLEN = 65535
TS = struct.Struct("<d")
DROP_COMMENT = "slicectl-raw"
#: Socket buffer sizes of a session (the kernel may hold up to twice each): toward the
#: sliver, capture from its network, sending into it. They count against the sliver's
#: node-policy budget (NodePolicy.shim_buffer_mib_per_sliver).
CLIENT_BUFFER = CAPTURE_BUFFER = SEND_BUFFER = 1 << 21
PROC_NET = {"tcp": ("tcp", "tcp6"), "udp": ("udp", "udp6")}
#: Messages a session may have handled per wakeup, each way (one recvmmsg, one sendmmsg).
RECV_BURST = 64
#: A message from a sliver is read into this many bytes: one more than any IP packet, so
#: that a longer message is cut to a length no IPv4 header can claim, and refused.
CLIENT_MESSAGE = 65536 + 1
#: How long the loop keeps polling after traffic before it sleeps (see Shim.run).
BUSY_POLL_S = 0.0005
BUSY_POLL_SHARE = 0.1


# BPF programs for cooked (SOCK_DGRAM) AF_PACKET sockets: offsets start at the IP header.

Op = tuple[int, int | str, int | str, int]


def assemble(items: list[Op | str]) -> list[Insn]:
    """Resolve symbolic jump targets: a ``str`` item is a label; a jump field naming one
    becomes the offset to it (classic BPF jumps only forward)."""
    labels: dict[str, int] = {}
    n = 0
    for it in items:
        if isinstance(it, str):
            labels[it] = n
        else:
            n += 1
    prog: list[Insn] = []
    for it in items:
        if isinstance(it, str):
            continue
        code, jt, jf, k = it
        here = len(prog)
        jt_off = labels[jt] - here - 1 if isinstance(jt, str) else jt
        jf_off = labels[jf] - here - 1 if isinstance(jf, str) else jf
        prog.append((code, jt_off, jf_off, k))
    return prog


def bpf_binding(proto: int, port: int, icmp_id: int, incoming_only: bool,
                sniff: bool) -> list[Insn]:
    """A filter for a cooked AF_PACKET socket (offsets start at the IP header): packets of
    ``proto`` to ``port`` (sniffing: from or to it), ICMP queries carrying ``icmp_id``, and
    every ICMP error (the shim checks what an error quotes). Raw sockets see only
    incoming packets."""
    items: list[Op | str] = []
    if sniff:  # an ETH_P_ALL socket (only those see outgoing packets): keep IPv4 only
        items += [(LD_H_ABS, 0, 0, SKF_AD_PROTOCOL & 0xFFFFFFFF), (JEQ_K, 0, "reject", ETH_P_IP)]
    if incoming_only:
        items += [(LD_B_ABS, 0, 0, SKF_AD_PKTTYPE & 0xFFFFFFFF),
                  (JEQ_K, 0, "reject", PACKET_HOST)]
    items += [(LD_B_ABS, 0, 0, 9),                      # A = protocol
              (LDX_B_MSH, 0, 0, 0)]                     # X = IP header length
    if proto == ICMP:
        items += [(JEQ_K, 0, "reject", ICMP),
                  (LD_B_IND, 0, 0, 0),                  # A = ICMP type
                  (JEQ_K, "query", 0, 0), (JEQ_K, "query", 0, 8),
                  (JEQ_K, "query", 0, 13), (JEQ_K, "query", 0, 14),
                  (JEQ_K, "query", "error_type", 15),
                  "query",                              # a query: check its id
                  (LD_H_IND, 0, 0, 4), (JEQ_K, "accept", "reject", icmp_id & 0xFFFF)]
    else:
        items += [(JEQ_K, 0, "icmp", proto),
                  (LD_H_IND, 0, 0, 2), (JEQ_K, "accept", 0, port)]
        if sniff:
            items += [(LD_H_IND, 0, 0, 0), (JEQ_K, "accept", "reject", port)]
        else:
            items += [(RET_K, 0, 0, 0)]
        items += ["icmp", (JEQ_K, 0, "reject", ICMP), (LD_B_IND, 0, 0, 0)]
    items += ["error_type"]
    for t in sorted(ICMP_ERRORS):
        items += [(JEQ_K, "accept", 0, t)]
    items += ["reject", (RET_K, 0, 0, 0), "accept", (RET_K, 0, 0, 65535)]
    return assemble(items)


def ports_in_use(pid: int, proto: str) -> set[int]:
    """Local ports with a kernel socket in the network namespace of ``pid``."""
    ports: set[int] = set()
    for name in PROC_NET[proto]:
        try:
            lines = Path(f"/proc/{pid}/net/{name}").read_text().splitlines()[1:]
        except OSError:
            continue
        for ln in lines:
            fields = ln.split()
            if len(fields) > 2:
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def in_sliver_iptables(pid: int, *args: str) -> subprocess.CompletedProcess[str]:
    """iptables in the network namespace of the living process ``pid``."""
    return iptables_in(f"/proc/{pid}/ns/net", *args)


def in_held_netns_iptables(netns_fd: int, *args: str) -> subprocess.CompletedProcess[str]:
    """iptables in the network namespace held open as ``netns_fd`` (the process that named
    it may have exited since)."""
    return iptables_in(f"/proc/self/fd/{netns_fd}", *args, fds=(netns_fd,))


def iptables_in(netns: str, *args: str, fds: tuple[int, ...] = ()
                ) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["nsenter", f"--net={netns}", "iptables", "-w", *args],
                          capture_output=True, text=True, check=False, timeout=30,
                          pass_fds=fds)


def drop_rule(proto: str, port: int) -> list[str]:
    return ["INPUT", "-p", proto, "--dport", str(port), "-m", "comment", "--comment",
            DROP_COMMENT, "-j", "DROP"]


def peer_gone(sock: socket.socket) -> bool:
    """An empty read on a SOCK_SEQPACKET socket is an empty message or the peer's close."""
    p = select.poll()
    p.register(sock.fileno(), select.POLLRDHUP)
    return any(ev & (select.POLLRDHUP | select.POLLHUP) for _, ev in p.poll(0))


class ShimError(SlicectlError):
    """A refused request, with the errno name the sliver's socket call raises."""

    def __init__(self, errno_name: str, message: str) -> None:
        super().__init__(message)
        self.errno_name = errno_name


@dataclass
class Session:
    client: socket.socket
    peer: PinnedPeer
    slice: str = ""
    kind: str = ""
    binding: Binding | None = None
    proto_name: str = ""
    cap: socket.socket | None = None
    tx: socket.socket | None = None
    claimed: bool = False
    rule: bool = False
    #: the sliver's network namespace, held from the socket's opening to its close: the
    #: DROP rule goes when the session ends, and by then the process that connected (whose
    #: pid named the namespace) has usually exited
    netns: int = -1
    #: kernel buffer space this session may make the host hold (what its sockets were set to)
    buffers: int = 0

    @property
    def pid(self) -> int:
        return self.peer.pid

    def release_netns(self) -> None:
        if self.netns >= 0:
            os.close(self.netns)
            self.netns = -1


def refuse_client(client: socket.socket, errno_name: str, message: str) -> None:
    """Tell a connection that will not be served why (without blocking) and close it."""
    with contextlib.suppress(OSError):
        client.send(json.dumps({"ok": False, "errno": errno_name, "error": message}).encode(),
                    socket.MSG_DONTWAIT)
    linger_close(client)


class Shim:
    """All sessions of a node, driven by one selector loop."""

    def __init__(self, cfg: NodeConfig, nm: Callable[..., Any],
                 policy: NodePolicy | None = None) -> None:
        self.cfg = cfg
        self.nm = nm
        self.policy = policy or NodePolicy()
        self.accepts: Accepts | None = None
        self.sel = selectors.DefaultSelector()
        self.sessions: dict[int, Session] = {}
        self.slivers: dict[str, NetEntry] = {}
        self.refusals = Refusals(log)
        self.totals: Counter[str] = Counter()
        self.stop = threading.Event()
        self.listener: socket.socket | None = None
        self.buf = memoryview(bytearray(CLIENT_MESSAGE))
        try:
            # Shared by all sessions: the loop serves one event at a time.
            self.from_client = Received(RECV_BURST, CLIENT_MESSAGE)
            self.captured = Received(RECV_BURST, SNIFF_SNAPLEN)
            self.outgoing = Outbox(RECV_BURST, 1, named=True)
            self.to_client = Outbox(RECV_BURST, RECV_BURST * (1 + TS.size))
        except OSError as e:
            raise EngineError(f"batched socket calls: {e}") from e

    @property
    def sock_path(self) -> Path:
        return self.cfg.shim_dir / "raw.sock"

    # who is calling -------------------------------------------------------------------

    def refresh(self) -> None:
        entries = (from_struct(NetEntry, r) for r in self.nm("net_map"))
        self.slivers = {e.container_id: e for e in entries if e.container_id}

    def sliver_of(self, peer: PinnedPeer) -> NetEntry:
        """The net_map entry of the sliver the (pinned, still living) peer is in."""
        def slice_of(cid: str) -> str | None:
            if cid not in self.slivers:
                self.refresh()
            entry = self.slivers.get(cid)
            return entry.slice if entry else None

        try:
            who = peer.who(slice_of)
        except PermissionDenied as e:
            raise ShimError("EPERM", str(e)) from e
        if who.kind != "slice" or peer.container_id is None:
            raise ShimError("EPERM", "safe raw sockets are for slivers; the caller is no "
                                     "container")
        return self.slivers[peer.container_id]

    # opening --------------------------------------------------------------------------

    def open(self, s: Session, req: dict[str, Any]) -> dict[str, Any]:
        try:
            checked = shim_request(req)
        except SlicectlError as e:
            raise ShimError("EINVAL", str(e)) from e
        if checked.op == "stats":
            raise ShimError("EINVAL", "op: expected open or sniff here, found stats")
        row = self.sliver_of(s.peer)
        s.slice = row.slice
        if not row.raw_sockets:
            raise ShimError("EPERM", f"slice {s.slice}: expected the raw_sockets right, found "
                                     "none in its rspec")
        self.reserve_buffers(s, CAPTURE_BUFFER + (SEND_BUFFER if checked.op == "open" else 0))
        op, proto = checked.op, checked.proto
        s.kind, s.proto_name = ("raw" if op == "open" else "sniff"), str(proto)
        pnum = PROTOS[s.proto_name]
        address = row.address
        link_local = self.policy.allow_link_local
        if pnum == ICMP:
            if s.kind == "sniff":
                raise ShimError("EINVAL", "sniff: expected tcp or udp, found icmp")
            ident = checked.icmp_id
            for o in self.sessions.values():
                if o is not s and o.slice == s.slice and o.binding is not None and \
                        o.binding.proto == ICMP and o.binding.icmp_id == ident:
                    raise ShimError("EADDRINUSE", f"ICMP id {ident}: already bound by another "
                                                  "raw socket of this sliver")
            s.binding = Binding(address, ICMP, icmp_id=ident, allow_link_local=link_local)
        else:
            port = checked.port
            in_use = port in ports_in_use(s.pid, s.proto_name)
            if s.kind == "raw" and in_use:
                raise ShimError("EADDRINUSE", f"{proto} port {port}: expected a free port, found "
                                              "a socket of this sliver on it")
            if not (s.kind == "sniff" and in_use):
                self.claim(s, port)
            s.binding = Binding(address, pnum, port=port, allow_link_local=link_local)
        self.open_sockets(s)
        return {"ok": True, "address": address, "slice": s.slice,
                "allow_link_local": link_local}

    def claim(self, s: Session, port: int) -> None:
        held = {(o.proto_name, o.binding.port) for o in self.sessions.values()
                if o is not s and o.claimed and o.slice == s.slice and o.binding is not None}
        if (s.proto_name, port) not in held and len(held) >= self.policy.shim_claims_per_sliver:
            self.refusals.count(s.slice, "claim-cap")
            raise ShimError("EADDRINUSE", f"slice {s.slice}: expected at most "
                                          f"{self.policy.shim_claims_per_sliver} ports held by "
                                          "raw sockets (node policy), found that many")
        try:
            self.nm("claim_port", s.slice, s.proto_name, port, s.kind)
        except AdmissionError as e:
            raise ShimError("EADDRINUSE", str(e)) from e
        except PermissionDenied as e:
            raise ShimError("EACCES", str(e)) from e
        s.claimed = True

    def open_sockets(self, s: Session) -> None:
        b = s.binding
        assert b is not None
        prog = bpf_binding(b.proto, b.port, b.icmp_id, incoming_only=s.kind == "raw",
                           sniff=s.kind == "sniff")
        s.peer.check()
        with in_netns(s.pid):
            ethertype = ETH_P_ALL if s.kind == "sniff" else ETH_P_IP
            cap = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ethertype))
            try:
                attach_filter(cap, prog)
                cap.bind(("eth0", ethertype))
                cap.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, CAPTURE_BUFFER)
                tx = None
                if s.kind == "raw":
                    tx = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
                    tx.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
            except OSError as e:
                cap.close()
                raise ShimError("EIO", f"capture in slice {s.slice}'s network: {e}") from e
        if not s.peer.peer.alive():  # the pid named the peer's namespace throughout
            cap.close()
            if tx is not None:
                tx.close()
            raise ShimError("EPERM", "the calling process went away while its socket opened")
        # Drain what the socket caught before its filter was attached.
        cap.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            while True:
                cap.recv(65535)
        s.cap, s.tx = cap, tx
        if s.kind == "raw" and b.proto != ICMP:
            try:
                s.netns = os.open(f"/proc/{s.pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
            except OSError as e:
                raise ShimError("EPERM", "the calling process went away while its socket "
                                         f"opened ({e.strerror})") from e
            s.peer.check()  # the pid still named the peer when its namespace was opened
            res = in_held_netns_iptables(s.netns, "-I", *drop_rule(s.proto_name, b.port))
            s.rule = res.returncode == 0
            s.peer.check()
            if res.returncode != 0:
                raise ShimError("EIO", f"keeping {s.proto_name} port {b.port} from slice "
                                       f"{s.slice}'s own stack: {res.stderr.strip()}")
        self.sel.register(cap, selectors.EVENT_READ, ("cap", s))

    def close(self, s: Session) -> None:
        self.sessions.pop(s.client.fileno(), None)
        for sock in (s.client, s.cap):
            if sock is not None:
                with contextlib.suppress(KeyError, ValueError):
                    self.sel.unregister(sock)
        if s.rule and s.binding is not None:
            res = in_held_netns_iptables(s.netns, "-D",
                                         *drop_rule(s.proto_name, s.binding.port))
            if res.returncode != 0:
                log.warning("removing the DROP rule of %s/%d from slice %s's network: %s",
                            s.proto_name, s.binding.port, s.slice, res.stderr.strip())
            s.rule = False
        if s.claimed and s.binding is not None:
            still = any(o.claimed and o.slice == s.slice and o.binding is not None
                        and o.binding.port == s.binding.port and o.proto_name == s.proto_name
                        and o.kind == s.kind for o in self.sessions.values())
            if not still:
                try:
                    self.nm("release_port", s.slice, s.proto_name, s.binding.port, s.kind)
                except SlicectlError as e:
                    log.warning("release %s/%d of %s: %s", s.proto_name, s.binding.port,
                                s.slice, e)
        for sock in (s.client, s.cap, s.tx):
            if sock is not None:
                sock.close()
        s.release_netns()
        s.peer.close()

    # traffic --------------------------------------------------------------------------

    def reply(self, s: Session, kind: bytes, payload: bytes) -> None:
        try:
            s.client.send(kind + payload, socket.MSG_DONTWAIT)
        except BlockingIOError:
            self.totals["lost"] += 1
        except OSError:
            pass

    def from_sliver(self, s: Session) -> None:
        """Handle what a sliver sent: its request, then packets (up to ``RECV_BURST`` per
        wakeup, read with one recvmmsg; each checked alone, the passing ones sent with
        one sendmmsg)."""
        if s.binding is None:
            self.request_from(s)
            return
        rx, out = self.from_client, self.outgoing
        try:
            n = rx.recv(s.client, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return
        except OSError:
            self.close(s)
            return
        if n == 0 and peer_gone(s.client):
            self.close(s)
            return
        out.clear()
        b = s.binding
        can_send = s.kind != "sniff" and s.tx is not None
        for i in range(n):
            data = rx.message(i)
            if not data and peer_gone(s.client):
                self.send_out(s, out)
                self.close(s)
                return
            if not can_send:
                self.refuse(s, "sniffer", "sniffer sockets cannot send")
                continue
            try:
                ip = check_outgoing(data, b)
            except PacketRefused as e:
                self.refuse(s, e.reason, e.strerror or str(e))
                continue
            out.add_received(rx, i, dst=ip.dst)
        self.send_out(s, out)

    def request_from(self, s: Session) -> None:
        """The first message of a session (or a root's stats request), read alone."""
        buf = self.buf
        try:
            n = s.client.recv_into(buf, len(buf), socket.MSG_DONTWAIT)
        except BlockingIOError:
            return
        except OSError:
            self.close(s)
            return
        data = bytes(buf[:n])
        if not data and peer_gone(s.client):
            self.close(s)
            return
        self.handle_request(s, data)

    def send_out(self, s: Session, out: Outbox) -> None:
        """Send the checked packets on the session's raw socket. A packet the kernel
        refuses (ENOBUFS, EMSGSIZE, a route) is answered with an ``E`` message and the
        rest go on, as when each was sent alone."""
        while out.pending:
            assert s.tx is not None
            try:
                self.totals["sent"] += out.send(s.tx)
            except OSError as e:
                out.skip()
                self.reply(s, b"E", json.dumps({"ok": False, "errno": "EIO",
                                                "error": f"send: {e.strerror}"}).encode())

    def refuse(self, s: Session, reason: str, message: str) -> None:
        self.refusals.count(s.slice, reason, message)
        self.reply(s, b"E", json.dumps({"ok": False, "errno": "EPERM", "reason": reason,
                                        "error": message}).encode())

    def handle_request(self, s: Session, data: bytes) -> None:
        req: dict[str, Any] | None = None
        try:
            try:
                req = loads_bounded(data)
            except SlicectlError as e:
                raise ShimError("EINVAL", str(e)) from e
            if req.get("op") == "stats":
                self.reply_stats(s)
                return
            answer = self.open(s, req)
        except SlicectlError as e:
            err = e.errno_name if isinstance(e, ShimError) else "EPERM"
            self.refusals.count(s.slice or f"pid {s.pid}", "request", str(e))
            self.reply(s, b"", json.dumps({"ok": False, "errno": err, "error": str(e)}).encode())
            self.close(s)
            return
        log.info("%s %s socket for %s: %s", s.kind, s.proto_name, s.slice, s.binding)
        self.reply(s, b"", json.dumps(answer).encode())

    def reply_stats(self, s: Session) -> None:
        if not (s.peer.alive() and s.peer.host_root):
            raise ShimError("EPERM", f"stats: expected the node's root, found pid {s.pid} "
                                     + ("gone" if not s.peer.alive() else
                                        f"in container {(s.peer.container_id or '')[:12]}"
                                        if s.peer.container_id else f"uid {s.peer.uid}"))
        stats = {"ok": True, "sessions": len(self.sessions) - 1, **self.totals,
                 "refused": [{"slice": r["caller"], "reason": r["reason"], "count": r["count"]}
                             for r in self.refusals.summary()]}
        self.reply(s, b"", json.dumps(stats).encode())

    def to_sliver(self, s: Session) -> None:
        """Forward captured packets for the binding: up to ``RECV_BURST`` per wakeup, read
        with one recvmmsg and passed on with one sendmmsg (stamped with the read's time).
        What the sliver has no room for is counted lost."""
        cap, b = s.cap, s.binding
        assert cap is not None and b is not None
        rx, out = self.captured, self.to_client
        try:
            n = rx.recv(cap, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return
        except OSError:
            self.close(s)
            return
        head = b"P" + TS.pack(time.time())
        out.clear()
        sniff = s.kind == "sniff"
        for i in range(n):
            pkt = rx.message(i)
            if sniff_matches(pkt, b.proto, b.port) if sniff else incoming_matches(pkt, b):
                out.add_received(rx, i, head=head)
        while out.pending:
            try:
                out.send(s.client, socket.MSG_DONTWAIT)
            except BlockingIOError:
                self.totals["lost"] += out.pending
                out.clear()
            except OSError:
                out.clear()

    # the loop -------------------------------------------------------------------------

    def accept(self, listener: socket.socket) -> None:
        """Take a connection and pin its peer. Out of file descriptors, stop accepting
        for a moment (the listener would stay readable and the loop spin)."""
        assert self.accepts is not None
        client = self.accepts.accept()
        if client is None:
            return
        try:
            peer = pin(client)
        except SlicectlError as e:
            refuse_client(client, "EPERM", str(e))
            return
        mine = [o for o in self.sessions.values() if o.peer.owner == peer.owner]
        refusal = None
        if peer.container_id is not None and len(mine) >= self.policy.shim_sessions_per_sliver:
            refusal = ("EMFILE", "session-cap",
                       f"expected at most {self.policy.shim_sessions_per_sliver} sessions "
                       "open at the shim (node policy), found that many")
        elif peer.container_id is not None and sum(o.buffers for o in mine) + CLIENT_BUFFER \
                > self.policy.shim_buffer_mib_per_sliver << 20:
            refusal = ("ENOBUFS", "buffer-cap",
                       f"expected at most {self.policy.shim_buffer_mib_per_sliver} MiB of socket "
                       "buffers at the shim (node policy), found them taken")
        if refusal is not None:
            self.refusals.count(peer.owner[:12], refusal[1])
            refuse_client(client, refusal[0], f"container {peer.owner[:12]}: {refusal[2]}")
            peer.close()
            return
        client.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, CLIENT_BUFFER)
        s = Session(client=client, peer=peer, buffers=CLIENT_BUFFER)
        self.sessions[client.fileno()] = s
        self.sel.register(client, selectors.EVENT_READ, ("client", s))

    def reserve_buffers(self, s: Session, more: int) -> None:
        """Count ``more`` bytes of kernel buffers against the session's sliver, or refuse."""
        held = sum(o.buffers for o in self.sessions.values() if o.peer.owner == s.peer.owner)
        if held + more > self.policy.shim_buffer_mib_per_sliver << 20:
            self.refusals.count(s.slice, "buffer-cap")
            raise ShimError("ENOBUFS", f"slice {s.slice}: expected at most "
                                       f"{self.policy.shim_buffer_mib_per_sliver} MiB of socket "
                                       "buffers at the shim (node policy), found "
                                       f"{held >> 20} MiB held")
        s.buffers += more

    def listen(self) -> None:
        listener = listen_for_slivers(self.sock_path, 256)
        listener.setblocking(False)
        self.accepts = Accepts(self.sel, listener, ("listen", listener), log)
        self.listener = listener

    def cleanup_stale(self) -> None:
        """Forget port claims and DROP rules a previous shim left (it may have crashed)."""
        self.nm("release_claims")
        self.refresh()
        for cid in self.slivers:
            procs = Path(f"/sys/fs/cgroup/pids{self.cfg.cgroup_parent}/{cid}/cgroup.procs")
            try:
                pid = int(procs.read_text().split()[0])
            except (OSError, IndexError, ValueError):
                continue
            rules = in_sliver_iptables(pid, "-S", "INPUT").stdout.splitlines()
            for rule in rules:
                if DROP_COMMENT in rule and rule.startswith("-A "):
                    in_sliver_iptables(pid, "-D", *rule.split()[1:])

    def run(self) -> None:
        """Serve until stopped. After traffic the loop polls without sleeping for a short
        while (``BUSY_POLL_S``): a reply or the next packet then finds the shim awake,
        sparing a cross-CPU wakeup (about 100 us on this kind of VM) per hop. Spinning
        is capped at ``BUSY_POLL_SHARE`` of a CPU; past it the loop sleeps as usual."""
        self.cleanup_stale()
        self.listen()
        busy_until = 0.0
        budget, refilled = BUSY_POLL_SHARE, time.monotonic()
        while not self.stop.is_set():
            now = time.monotonic()
            # Spinning may take at most BUSY_POLL_SHARE of a CPU, refilled every second.
            if now - refilled >= 1.0:
                budget, refilled = BUSY_POLL_SHARE, now
            spin = now < busy_until and budget > 0
            events = self.sel.select(timeout=0 if spin else 0.2)
            if spin and not events:
                budget -= time.monotonic() - now
            if events:
                busy_until = time.monotonic() + BUSY_POLL_S
            if self.accepts is not None:
                self.accepts.resume()
            for key, _mask in events:
                kind, obj = key.data
                try:
                    if kind == "cap":
                        self.to_sliver(obj)
                    elif kind == "client":
                        self.from_sliver(obj)
                    elif kind == "listen":
                        self.accept(obj)
                except Exception:  # a bad session ends, never the shim
                    log.exception("%s event failed; closing its session", kind)
                    if isinstance(obj, Session):
                        self.drop(obj)

    def drop(self, s: Session) -> None:
        try:
            self.close(s)
        except Exception:
            log.exception("closing a session of %s failed", s.slice or "?")
            for sock in (s.client, s.cap, s.tx):
                if sock is not None:
                    with contextlib.suppress(KeyError, ValueError, OSError):
                        self.sel.unregister(sock)
                    sock.close()
            self.sessions = {k: v for k, v in self.sessions.items() if v is not s}
            s.release_netns()
            s.peer.close()

    def shutdown(self) -> None:
        for s in list(self.sessions.values()):
            self.close(s)
        if self.listener is not None:
            self.listener.close()


def serve(cfg: NodeConfig) -> None:
    client = Client(cfg.nm_sock, timeout=30)

    def nm(method: str, *args: Any) -> Any:
        return client.call(method, *args)

    shim = Shim(cfg, nm, cfg.policy())
    log.info("raw-socket shim %s serving at %s", cfg.node_id, shim.sock_path)
    serve_daemon(SHIM.pidfile(cfg), shim.stop, shim.run, shim.shutdown)


def stats(cfg: NodeConfig) -> dict[str, Any]:
    """The shim's counters (sessions, packets sent, lost and refused by slice and reason),
    as host root asks for them."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as s:
        s.connect(str(cfg.shim_dir / "raw.sock"))
        s.send(json.dumps({"op": "stats"}).encode())
        out: dict[str, Any] = json.loads(s.recv(1 << 20))
        return out


def main(argv: list[str] | None = None) -> int:
    argparse.ArgumentParser(prog="slicectl-shim", description="slicectl safe raw socket shim"
                            ).parse_args(argv)
    daemon_logging()
    serve(default_config())
    return 0


if __name__ == "__main__":
    sys.exit(main())
