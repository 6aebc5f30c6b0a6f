"""Apply HTB plans with pyroute2 and read them back: the node's IFB tree and sliver classes.

Netlink errors are told apart by errno (``NetlinkError.code``); every function opens its
own ``IPRoute`` in a ``with`` block.
"""

from __future__ import annotations

import errno
import socket
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from slicectl.core.errors import EngineError
from slicectl.core.netplan import (
    DEFAULT_MINOR,
    MAJOR,
    HtbClass,
    SliverTc,
    handle,
    handle_text,
    root_classes,
)

RTM_NEWTCLASS, RTM_GETTCLASS = 40, 42
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_ACK, NLM_F_ECHO, NLM_F_DUMP = 0x1, 0x4, 0x8, 0x300
NLMSG_HEADER = struct.Struct("=IHHII")
TCMSG = struct.Struct("=BxxxiIII")
RTATTR = struct.Struct("=HH")
TCA_OPTIONS, TCA_STATS2 = 2, 7
TCA_HTB_PARMS = 1
TCA_STATS_BASIC, TCA_STATS_QUEUE, TCA_STATS_PKT64 = 1, 3, 8
#: struct tc_htb_opt: two struct tc_ratespec (12 bytes, the rate in bytes/s last) first
HTB_RATES = struct.Struct("=8xI8xI")
#: struct gnet_stats_basic (bytes, packets); struct gnet_stats_queue (qlen, backlog, drops)
BASIC = struct.Struct("=QI")
QUEUE_DROPS = struct.Struct("=III")
ETH_P_ALL = 0x0003
ETH_P_IP = 0x0800
INGRESS = 0xFFFF0000


@dataclass(frozen=True)
class ClassStats:
    classid: int
    parent: int
    rate_bps: int
    ceil_bps: int
    bytes: int
    packets: int
    drops: int


def _index(ipr: IPRoute, ifname: str) -> int:
    found = ipr.link_lookup(ifname=ifname)
    if not found:
        raise EngineError(f"interface {ifname}: expected it to exist, found none")
    return int(found[0])


def _set_class(ipr: IPRoute, idx: int, c: HtbClass) -> None:
    ipr.tc("replace-class", "htb", idx, c.classid, parent=c.parent, rate=f"{c.rate_kbit}kbit",
           ceil=f"{c.ceil_kbit}kbit", quantum=c.quantum)


def ensure_tree(ifb: str, cap_kbit: int) -> None:
    """Create the IFB device and its HTB root (idempotent); set the node cap live."""
    with IPRoute() as ipr:
        if not ipr.link_lookup(ifname=ifb):
            try:
                ipr.link("add", ifname=ifb, kind="ifb")
            except NetlinkError as e:
                raise EngineError(f"interface {ifb}: cannot create an IFB device "
                                  f"(errno {e.code}); is the ifb module available?") from e
        idx = _index(ipr, ifb)
        # The leaves' FIFOs take the device's queue length; an IFB's default of 32 packets
        # is too short for TCP at the rates the tree shapes to.
        ipr.link("set", index=idx, state="up", txqlen=1000)
        qdiscs = [q for q in ipr.get_qdiscs(idx) if q["handle"] == MAJOR]
        if not qdiscs or qdiscs[0].get_attr("TCA_KIND") != "htb":
            if qdiscs:
                ipr.tc("del", index=idx, handle=MAJOR, parent=0xFFFFFFFF)
            ipr.tc("add", "htb", idx, MAJOR, default=DEFAULT_MINOR)
        for c in root_classes(cap_kbit):
            _set_class(ipr, idx, c)


def remove_tree(ifb: str) -> None:
    with IPRoute() as ipr:
        found = ipr.link_lookup(ifname=ifb)
        if found:
            ipr.link("del", index=found[0])


def apply_sliver(ifb: str, plan: SliverTc) -> None:
    """Set the sliver's classes and (re)place its filters."""
    with IPRoute() as ipr:
        idx = _index(ipr, ifb)
        for c in plan.classes:
            _set_class(ipr, idx, c)
        _del_prio(ipr, idx, plan.prio)
        for f in plan.filters:
            ipr.tc("add-filter", "u32", idx, parent=MAJOR, prio=f.prio, protocol=ETH_P_IP,
                   target=f.target, keys=list(f.keys))


def update_classes(ifb: str, plan: SliverTc) -> None:
    with IPRoute() as ipr:
        idx = _index(ipr, ifb)
        for c in plan.classes:
            _set_class(ipr, idx, c)


def _del_prio(ipr: IPRoute, idx: int, prio: int) -> None:
    try:
        ipr.tc("del-filter", "u32", idx, parent=MAJOR, prio=prio, protocol=ETH_P_IP, target=0)
    except NetlinkError as e:
        if e.code not in (errno.ENOENT, errno.EINVAL):
            raise


def remove_sliver(ifb: str, plan: SliverTc) -> None:
    """Remove the sliver's filters and classes (leaves first); absent parts are fine."""
    with IPRoute() as ipr:
        found = ipr.link_lookup(ifname=ifb)
        if not found:
            return
        idx = found[0]
        _del_prio(ipr, idx, plan.prio)
        for c in reversed(plan.classes):
            try:
                ipr.tc("del-class", index=idx, handle=c.classid, parent=c.parent)
            except NetlinkError as e:
                if e.code not in (errno.ENOENT, errno.EINVAL):
                    raise EngineError(f"tc class {handle_text(c.classid)} on {ifb}: cannot "
                                      f"remove it (errno {e.code})") from e


def redirect_to_ifb(veth: str, ifb: str) -> None:
    """Send everything arriving on ``veth`` (the sliver's egress) through the IFB tree."""
    with IPRoute() as ipr:
        vidx = _index(ipr, veth)
        iidx = _index(ipr, ifb)
        try:
            ipr.tc("add", "ingress", vidx, INGRESS)
        except NetlinkError as e:
            if e.code != errno.EEXIST:
                raise
        try:
            ipr.tc("del-filter", "u32", vidx, parent=INGRESS, prio=1, protocol=ETH_P_ALL, target=0)
        except NetlinkError as e:
            if e.code not in (errno.ENOENT, errno.EINVAL):
                raise
        ipr.tc("add-filter", "u32", vidx, parent=INGRESS, prio=1, protocol=ETH_P_ALL,
               target=0xFFFF0001, keys=["0x0/0x0+0"],
               action={"kind": "mirred", "direction": "egress", "action": "redirect",
                       "ifindex": iidx})


def has_redirect(veth: str) -> bool:
    with IPRoute() as ipr:
        found = ipr.link_lookup(ifname=veth)
        if not found:
            return False
        return any(f.get_attr("TCA_KIND") == "u32" for f in ipr.get_filters(found[0], parent=INGRESS))


def read_classes(ifb: str) -> dict[int, ClassStats]:
    """Every HTB class on the IFB with its rate, ceil and kernel counters: one netlink
    dump, decoded with struct (the counter poll's one read per pass; a node of 1,000
    slivers holds 3,000 classes, and a general-purpose decoder spent 40% of a core on
    them every 2 s). Never used for one sliver's operation (see read_classes_of)."""
    out: dict[int, ClassStats] = {}
    try:
        idx = socket.if_nametoindex(ifb)
    except OSError:
        return out
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        sock.bind((0, 0))
        sock.settimeout(5)
        body = TCMSG.pack(socket.AF_UNSPEC, idx, 0, 0, 0)
        sock.send(NLMSG_HEADER.pack(NLMSG_HEADER.size + len(body), RTM_GETTCLASS,
                                    NLM_F_REQUEST | NLM_F_DUMP, 1, 0) + body)
        for kind, data, start, end in replies(sock, f"tc classes of {ifb}", 1 << 20):
            if kind == RTM_NEWTCLASS:
                stats = _decode_class(data, start, end)
                out[stats.classid] = stats
    return out


def replies(sock: socket.socket, what: str, bufsize: int, seq: int | None = None,
            fine: tuple[int, ...] = (0,)) -> Iterator[tuple[int, bytes, int, int]]:
    """(type, datagram, payload start, payload end) of each netlink answer to request
    ``seq`` (None: to any), until the kernel says done or acks; an error whose errno is
    not in ``fine`` raises.

    Raises:
        EngineError: naming ``what``, for a malformed answer or an error.
    """
    while True:
        data = sock.recv(bufsize)
        offset = 0
        while offset + NLMSG_HEADER.size <= len(data):
            length, kind, _, got_seq, _ = NLMSG_HEADER.unpack_from(data, offset)
            if length < NLMSG_HEADER.size or offset + length > len(data):
                raise EngineError(f"{what}: a netlink answer of {length} bytes in a datagram "
                                  f"of {len(data) - offset}, expected at least "
                                  f"{NLMSG_HEADER.size} and at most the datagram")
            if seq is None or got_seq == seq:
                if kind == NLMSG_DONE:
                    return
                if kind == NLMSG_ERROR:
                    code = -struct.unpack_from("=i", data, offset + NLMSG_HEADER.size)[0]
                    if code in fine:
                        return
                    raise EngineError(f"{what}: the kernel refused (errno {code}, "
                                      f"{errno.errorcode.get(code, '?')})")
                yield kind, data, offset + NLMSG_HEADER.size, offset + length
            offset += (length + 3) & ~3


def _attrs(data: bytes, start: int, end: int) -> dict[int, tuple[int, int]]:
    """Netlink attributes between ``start`` and ``end``: type -> (payload start, end)."""
    out: dict[int, tuple[int, int]] = {}
    while start + RTATTR.size <= end:
        length, kind = RTATTR.unpack_from(data, start)
        if length < RTATTR.size:
            break
        out[kind & 0x3FFF] = (start + RTATTR.size, start + length)
        start += (length + 3) & ~3
    return out


def _decode_class(data: bytes, start: int, end: int) -> ClassStats:
    _, _, classid, parent, _ = TCMSG.unpack_from(data, start)
    top = _attrs(data, start + TCMSG.size, end)
    rate = ceil = nbytes = packets = drops = 0
    if TCA_OPTIONS in top:
        opts = _attrs(data, *top[TCA_OPTIONS])
        if TCA_HTB_PARMS in opts and opts[TCA_HTB_PARMS][1] - opts[TCA_HTB_PARMS][0] >= 24:
            rate, ceil = HTB_RATES.unpack_from(data, opts[TCA_HTB_PARMS][0])
    if TCA_STATS2 in top:
        st = _attrs(data, *top[TCA_STATS2])
        if TCA_STATS_BASIC in st:
            nbytes, packets = BASIC.unpack_from(data, st[TCA_STATS_BASIC][0])
        if TCA_STATS_PKT64 in st:
            (packets,) = struct.unpack_from("=Q", data, st[TCA_STATS_PKT64][0])
        if TCA_STATS_QUEUE in st:
            drops = QUEUE_DROPS.unpack_from(data, st[TCA_STATS_QUEUE][0])[2]
    return ClassStats(classid=classid, parent=parent, rate_bps=rate, ceil_bps=ceil,
                      bytes=nbytes, packets=packets, drops=drops)


def _get_class(sock: socket.socket, idx: int, classid: int, seq: int) -> ClassStats | None:
    """One RTM_GETTCLASS request: the kernel answers with the class (NLM_F_ECHO sends it
    to the asker, not only the TC group) and an ack, or ENOENT."""
    body = TCMSG.pack(socket.AF_UNSPEC, idx, classid, 0, 0)
    sock.send(NLMSG_HEADER.pack(NLMSG_HEADER.size + len(body), RTM_GETTCLASS,
                                NLM_F_REQUEST | NLM_F_ACK | NLM_F_ECHO, seq, 0) + body)
    found: ClassStats | None = None
    for kind, data, start, end in replies(sock, f"tc class {handle_text(classid)}", 65536,
                                          seq, (0, errno.ENOENT)):
        if kind == RTM_NEWTCLASS:
            found = _decode_class(data, start, end)
    return found


def read_classes_of(ifb: str, classids: Iterable[int]) -> dict[int, ClassStats]:
    """The named HTB classes on the IFB (those that exist), each asked for by itself, so
    the cost does not grow with the number of slivers on the node."""
    out: dict[int, ClassStats] = {}
    try:
        idx = socket.if_nametoindex(ifb)
    except OSError:
        return out
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE) as sock:
        sock.bind((0, 0))
        sock.settimeout(5)
        for seq, classid in enumerate(classids, start=1):
            got = _get_class(sock, idx, classid, seq)
            if got is not None:
                out[classid] = got
    return out


def read_back(ifb: str, plan: SliverTc) -> None:
    """Check the kernel holds the planned classes with the planned rates."""
    held = read_classes_of(ifb, [c.classid for c in plan.classes])
    for c in plan.classes:
        got = held.get(c.classid)
        if got is None:
            raise EngineError(f"tc class {handle_text(c.classid)} on {ifb}: expected it, found none")
        want_rate, want_ceil = c.rate_kbit * 125, c.ceil_kbit * 125
        if (got.rate_bps, got.ceil_bps) != (want_rate, want_ceil) or got.parent != c.parent:
            raise EngineError(
                f"tc class {handle_text(c.classid)} on {ifb}: expected rate {want_rate} ceil "
                f"{want_ceil} B/s under {handle_text(c.parent)}, found rate {got.rate_bps} ceil "
                f"{got.ceil_bps} under {handle_text(got.parent)}")


__all__ = ["ClassStats", "apply_sliver", "ensure_tree", "handle", "read_back", "read_classes",
           "read_classes_of", "redirect_to_ifb", "remove_sliver", "remove_tree", "update_classes"]
