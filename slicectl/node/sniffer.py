"""The administrative sniffer: every packet slivers send, tagged with its slice.

Sliver egress is redirected from each sliver's veth to the node's IFB, where the HTB tree
shapes it; a TPACKET_V3 ring on the IFB therefore sees every packet a sliver sends (after
shaping: what actually leaves), once. A sliver's address is a function of its xid, and a
sliver can neither change its address (no NET_ADMIN) nor forge another (no NET_RAW; the
raw-socket shim checks every packet), so the source address names the sender. With
``inbound`` a second ring on the node bridge sees what the host forwards into slivers.

Records go out on a unix socket in the format of :mod:`slicectl.core.sniffrecord`. Each
consumer has a bounded buffer: one that reads too slowly loses records, counted and told
to it, and never slows the capture or other consumers.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import mmap
import os
import selectors
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slicectl.core.errors import SlicectlError
from slicectl.core.netplan import sliver_xid_range
from slicectl.core.sniffrecord import (
    DROPS,
    HELLO,
    IN,
    OUT,
    RECORD,
    RECORDS,
    SLICES,
    VERSION,
    frame,
    json_frame,
)
from slicectl.core.wire import NetEntry, from_struct
from slicectl.ipc.accepting import Accepts
from slicectl.ipc.refusals import Refusals
from slicectl.ipc.rpc import Client
from slicectl.node.config import NodeConfig, default_config
from slicectl.node.daemons import SNIFFER, daemon_logging, serve_daemon
from slicectl.node.dockerd import open_to_sliver_root
from slicectl.node.engine import SliverEngine, engine_client
from slicectl.node.procfs import PinnedPeer, pin
from slicectl.node.ring import PACKET_OUTGOING, PKT_HDR, PacketRing, bpf_ip

log = logging.getLogger("slicectl.node.sniffer")

SNAPLEN = 96
CONSUMER_BUFFER = 8 << 20
#: At most this many bytes of frames wait for a slice map fetch; past it they go out.
HOLD_MAX = 32 << 20
#: How long a new consumer's peer must live past its connect before it is sent anything.
ACTIVATE_AFTER_S = 0.05
IP_HDR = struct.Struct("!BBHHHBBH4s4s")
PORTS = struct.Struct("!HH")


def parse_block(m: mmap.mmap, base: int, num: int, first: int, out: bytearray,
                direction: int, xid_base: int, xid_max: int, xids: set[int]) -> tuple[int, int]:
    """Append a record per IPv4 packet of a ring block to ``out`` and each sender's xid
    to ``xids``.

    Returns (records appended, packets from no sliver address).
    """
    add_xid = xids.add
    pkt_unpack = PKT_HDR.unpack_from
    ip_unpack = IP_HDR.unpack_from
    ports_unpack = PORTS.unpack_from
    rec_pack = RECORD.pack
    from_bytes = int.from_bytes
    chunks: list[bytes] = []
    unknown = 0
    p = base + first
    for _ in range(num):
        nxt, sec, nsec, snap, _length, _status, mac, net = pkt_unpack(m, p)
        ip = p + net
        caught = snap - (net - mac)
        p += nxt
        if caught < 20:
            continue
        vihl, _tos, total, _id, frag, _ttl, proto, _sum, src, dst = ip_unpack(m, ip)
        xid = from_bytes(src if direction == OUT else dst, "big") - xid_base
        if not 0 < xid <= xid_max:
            unknown += 1
            continue
        add_xid(xid)
        sport = dport = flags = 0
        if not frag & 0x1FFF:
            l4 = ip + (vihl & 15) * 4
            if proto == 6:
                if caught >= l4 - ip + 14:
                    sport, dport = ports_unpack(m, l4)
                    flags = m[l4 + 13]
            elif proto == 17:
                if caught >= l4 - ip + 4:
                    sport, dport = ports_unpack(m, l4)
            elif proto == 1 and caught >= l4 - ip + 2:
                sport, dport = m[l4], m[l4 + 1]
        chunks.append(rec_pack(sec + nsec * 1e-9, xid, src, dst, sport, dport, proto, flags,
                               total, direction))
    out += b"".join(chunks)
    return len(chunks), unknown


@dataclass
class Consumer:
    sock: socket.socket
    peer: str
    pinned: PinnedPeer | None = None
    out: bytearray = field(default_factory=bytearray)
    dropped: int = 0
    sent_drops: tuple[int, int, int] = (-1, -1, -1)
    #: nothing is sent before this time (monotonic); then only if the peer still lives
    ready_at: float = 0.0


def peer_allowed(peer: PinnedPeer, slivers: dict[str, NetEntry],
                 service_of: Callable[[str], str | None]) -> str | None:
    """Who the pinned peer is if it may read records: host root, one of this node's
    service containers, or a sliver granted ``admin_sniffer``; None otherwise (also when
    its process is gone or it is no sliver or service of this node)."""
    def slice_of(cid: str) -> str | None:
        entry = slivers.get(cid)
        return entry.slice if entry else None

    try:
        who = peer.who(slice_of, service_of)
    except SlicectlError:
        return None
    if who.kind == "root":
        return f"pid {peer.pid}"
    if who.kind == "slice":
        entry = slivers[peer.container_id or ""]
        return f"slice {who.name}" if entry.admin_sniffer else None
    return f"service {who.name}"


class Sniffer:
    """Capture rings, consumers and the slice map, driven by one selector loop."""

    def __init__(self, cfg: NodeConfig, net_map: Callable[[], list[dict[str, Any]] | None],
                 inbound: bool = False, consumer_buffer: int = CONSUMER_BUFFER,
                 service_of: Callable[[str], str | None] = lambda cid: None) -> None:
        self.cfg = cfg
        self.policy = cfg.policy()
        self.refusals = Refusals(log)
        self.net_map = net_map
        self.service_of = service_of
        self.inbound = inbound
        self.consumer_buffer = consumer_buffer
        self.xid_base, self.xid_max = sliver_xid_range(cfg.subnet)
        self.names: dict[int, str] = {}
        self.by_container: dict[str, NetEntry] = {}
        self.consumers: dict[int, Consumer] = {}
        self.rings: list[tuple[PacketRing, int]] = []
        self.sel = selectors.DefaultSelector()
        self.kernel_drops = 0
        self.unknown = 0
        self.stop = threading.Event()
        self._last_fetch_request = 0.0
        self._refreshing = False
        self._fetched: list[dict[str, Any]] | None = None
        self._held: list[tuple[bytes, int]] = []
        self._held_bytes = 0
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self.listener: socket.socket | None = None
        self.accepts: Accepts | None = None
        self.pending: list[Consumer] = []

    @property
    def sock_path(self) -> Path:
        return self.cfg.sniffer_dir / "records.sock"

    # slice map ----------------------------------------------------------------------

    def refresh(self) -> bool:
        """Reload the slice map from the node manager now (``net_map`` returns None when
        the map is unchanged since its last call); True if it changed."""
        try:
            rows = self.net_map()
        except SlicectlError as e:
            log.warning("slice map: %s", e)
            return False
        return rows is not None and self.apply_map(rows)

    def apply_map(self, rows: list[dict[str, Any]]) -> bool:
        """Take the NM's ``net_map`` structs as this node's slice map; True if it changed."""
        entries = [from_struct(NetEntry, r) for r in rows]
        names = {e.xid: e.slice for e in entries}
        changed = names != self.names
        self.names = names
        self.by_container = {e.container_id: e for e in entries if e.container_id}
        if changed:
            self.broadcast(json_frame(SLICES, {str(k): v for k, v in names.items()}), 0)
        return changed

    def request_refresh(self) -> None:
        """Fetch the map on a thread: the capture loop never waits for the node manager.
        The result comes back through the wake-up socket (see :meth:`refreshed`)."""
        if self._refreshing:
            return
        self._refreshing = True

        def fetch() -> None:
            try:
                self._fetched = self.net_map()
            except SlicectlError as e:
                log.warning("slice map: %s", e)
                self._fetched = None
            self._wake_w.send(b"r")

        threading.Thread(target=fetch, name="slice-map", daemon=True).start()

    def refreshed(self) -> None:
        """A fetch finished: apply it, then release the records held back for it."""
        with contextlib.suppress(BlockingIOError):
            self._wake_r.recv(64)
        self._refreshing = False
        if self._fetched is not None:
            self.apply_map(self._fetched)
        held, self._held, self._held_bytes = self._held, [], 0
        for data, count in held:
            self.broadcast(data, count)

    # consumers ----------------------------------------------------------------------

    def accept(self, listener: socket.socket) -> None:
        assert self.accepts is not None
        sock = self.accepts.accept()
        if sock is None:
            return
        try:
            pinned = pin(sock)
        except SlicectlError as e:
            self.refusals.count("unidentified", "consumer not pinned", str(e))
            sock.close()
            return
        cid = pinned.container_id
        if cid is not None and cid not in self.by_container:
            self.refresh()  # a sliver made since the last fetch (connections are rare)
        peer = peer_allowed(pinned, self.by_container, self.service_of)
        owner = pinned.owner
        held = sum(1 for c in self.consumers.values()
                   if c.pinned is not None and c.pinned.owner == owner)
        if peer is None or (cid is not None and held >= self.policy.sniffer_consumers_per_owner):
            self.refusals.count(owner[:12], "no admin_sniffer right" if peer is None else
                                f"{held} consumers open already (node policy)")
            pinned.close()
            sock.close()
            return
        sock.setblocking(False)
        # Nothing is sent until the peer has lived a moment past its connect: a child that
        # connects and exits hands its parent nothing (issue 11; see activate()).
        c = Consumer(sock, peer, pinned=pinned, ready_at=time.monotonic() + ACTIVATE_AFTER_S)
        self.consumers[sock.fileno()] = c
        self.sel.register(sock, selectors.EVENT_READ, ("consumer", c))
        hello = {"version": VERSION, "node": self.cfg.node_id, "record": RECORD.format,
                 "record_size": RECORD.size}
        c.out += json_frame(HELLO, hello)
        c.out += json_frame(SLICES, {str(k): v for k, v in self.names.items()})
        self.send_drops(c)
        self.pending.append(c)

    def activate(self) -> None:
        """Start sending to pending consumers whose wait is over and whose peer lives."""
        now = time.monotonic()
        while self.pending and self.pending[0].ready_at <= now:
            c = self.pending.pop(0)
            if c.sock.fileno() < 0:
                continue  # dropped meanwhile
            if c.pinned is not None and not c.pinned.alive():
                self.refusals.count(c.peer, "consumer gone after connect")
                self.drop_consumer(c)
                continue
            log.info("consumer %s connected (%d now)", c.peer, len(self.consumers))
            self.flush(c)

    def drop_consumer(self, c: Consumer) -> None:
        fd = c.sock.fileno()
        self.consumers.pop(fd, None)
        with contextlib.suppress(KeyError, ValueError):
            self.sel.unregister(c.sock)
        c.sock.close()
        if c.pinned is not None:
            c.pinned.close()
        log.info("consumer %s left (lost %d records)", c.peer, c.dropped)

    def flush(self, c: Consumer) -> None:
        if c.ready_at > time.monotonic():
            return  # not yet active (see activate)
        try:
            while c.out:
                n = c.sock.send(c.out)
                del c.out[:n]
        except BlockingIOError:
            pass
        except OSError:
            self.drop_consumer(c)
            return
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if c.out else 0)
        self.sel.modify(c.sock, events, ("consumer", c))

    def broadcast(self, data: bytes, records: int) -> None:
        for c in list(self.consumers.values()):
            if records and len(c.out) + len(data) > self.consumer_buffer:
                c.dropped += records
                continue
            c.out += data
            self.flush(c)

    def send_drops(self, c: Consumer) -> None:
        counts = (self.kernel_drops, c.dropped, self.unknown)
        if counts != c.sent_drops:
            c.sent_drops = counts
            c.out += json_frame(DROPS, {"kernel": counts[0], "consumer": counts[1],
                                        "unknown": counts[2]})

    # capture ------------------------------------------------------------------------

    def open_rings(self) -> None:
        self.rings.append((PacketRing(self.cfg.ifb, bpf_ip(SNAPLEN)), OUT))
        if self.inbound:
            self.rings.append((PacketRing(self.cfg.bridge, bpf_ip(SNAPLEN, PACKET_OUTGOING)), IN))
        for ring, direction in self.rings:
            self.sel.register(ring.fileno(), selectors.EVENT_READ, ("ring", (ring, direction)))

    def drain(self, ring: PacketRing, direction: int) -> None:
        out = bytearray()
        xids: set[int] = set()
        count = 0
        for base, num, first in ring.ready_blocks():
            n, unknown = parse_block(ring.map, base, num, first, out, direction,
                                     self.xid_base, self.xid_max, xids)
            count += n
            self.unknown += unknown
            if len(out) > 1 << 20:
                self.publish(out, count, xids)
                out, count = bytearray(), 0
        if count:
            self.publish(out, count, xids)

    def publish(self, records: bytearray, count: int, xids: set[int]) -> None:
        """Send records to every consumer. Records of a sliver whose name is not known yet
        (its first packets can beat the periodic map refresh) are held, with all that
        follows them, until a fetch of the map returns, so that consumers always learn
        a slice's name before its records."""
        data = frame(RECORDS, bytes(records))
        unknown = not xids <= self.names.keys()
        if unknown:
            now = time.monotonic()
            if now - self._last_fetch_request > 0.5:
                self._last_fetch_request = now
                self.request_refresh()
        if (self._held or (unknown and self._refreshing)) \
                and self._held_bytes + len(data) <= HOLD_MAX:
            self._held.append((data, count))
            self._held_bytes += len(data)
            return
        self.broadcast(data, count)

    def tick(self) -> None:
        for ring, _ in self.rings:
            self.kernel_drops += ring.stats().drops
        for c in list(self.consumers.values()):
            if c.pinned is not None and not c.pinned.peer.alive():
                self.drop_consumer(c)  # the reader is gone: a connection is not passed on
                continue
            self.send_drops(c)
            if c.out:
                self.flush(c)
        if self.accepts is not None:
            self.accepts.resume()

    # the loop -----------------------------------------------------------------------

    def listen(self) -> socket.socket:
        self.cfg.sniffer_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.sock_path.with_suffix(".new")
        tmp.unlink(missing_ok=True)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(tmp))
        open_to_sliver_root(tmp)  # admin_sniffer slivers' root; the rights are checked per peer
        listener.listen(64)
        os.replace(tmp, self.sock_path)
        listener.setblocking(False)
        self.accepts = Accepts(self.sel, listener, ("listen", listener), log)
        self.listener = listener
        return listener

    def handle(self, kind: str, obj: Any, mask: int) -> None:
        if kind == "ring":
            self.drain(*obj)
        elif kind == "wake":
            self.refreshed()
        elif kind == "listen":
            self.accept(obj)
        elif kind == "consumer":
            if mask & selectors.EVENT_READ:
                try:
                    if not obj.sock.recv(4096):  # consumers have nothing to say
                        self.drop_consumer(obj)
                        return
                except BlockingIOError:
                    pass
                except OSError:
                    self.drop_consumer(obj)
                    return
            if mask & selectors.EVENT_WRITE:
                self.flush(obj)

    def run(self, map_every_s: float = 2.0) -> None:
        self.refresh()
        self.open_rings()
        self.listen()
        self.sel.register(self._wake_r, selectors.EVENT_READ, ("wake", None))
        next_tick = next_map = time.monotonic()
        while not self.stop.is_set():
            wait = 0.2 if not self.pending else \
                max(0.0, min(0.2, self.pending[0].ready_at - time.monotonic()))
            for key, mask in self.sel.select(timeout=wait):
                kind, obj = key.data
                try:
                    self.handle(kind, obj, mask)
                except Exception:  # a bad consumer ends, never the sniffer
                    log.exception("%s event failed", kind)
                    if isinstance(obj, Consumer):
                        with contextlib.suppress(Exception):
                            self.drop_consumer(obj)
            self.activate()
            now = time.monotonic()
            if now >= next_tick:
                next_tick = now + 1.0
                self.tick()
            if now >= next_map:
                next_map = now + map_every_s
                self.request_refresh()

    def close(self) -> None:
        for c in list(self.consumers.values()):
            self.drop_consumer(c)
        for ring, _ in self.rings:
            ring.close()
        if self.listener is not None:
            self.listener.close()
        self._wake_r.close()
        self._wake_w.close()


class MapPoller:
    """The node manager's net map when it may have changed since the last call, else None
    (``net_map_since``: an unchanged node answers with a number, not every sliver)."""

    def __init__(self, call: Callable[..., Any]) -> None:
        self.call = call
        self.generation = -1

    def __call__(self) -> list[dict[str, Any]] | None:
        got = self.call("net_map_since", self.generation)
        rows: list[dict[str, Any]] = got["entries"]
        changed = bool(got["changed"])
        self.generation = int(got["generation"])
        return rows if changed else None


def serve(cfg: NodeConfig, inbound: bool) -> None:
    nm = Client(cfg.nm_sock, timeout=30)

    engine = SliverEngine(engine_client(cfg.engine_url), cfg.node_id)
    sniffer = Sniffer(cfg, MapPoller(nm.call), inbound=inbound, service_of=engine.service_of)
    log.info("admin sniffer %s on %s%s, records at %s", cfg.node_id, cfg.ifb,
             f" and {cfg.bridge}" if inbound else "", sniffer.sock_path)
    serve_daemon(SNIFFER.pidfile(cfg), sniffer.stop, sniffer.run, sniffer.close)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="slicectl-sniffer",
                                     description="slicectl administrative sniffer")
    parser.add_argument("--inbound", action="store_true",
                        help="also record what slivers receive from outside the node")
    args = parser.parse_args(argv)
    daemon_logging()
    serve(default_config(), args.inbound)
    return 0


if __name__ == "__main__":
    sys.exit(main())
