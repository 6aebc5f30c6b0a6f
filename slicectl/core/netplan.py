"""Network plans for slivers, as plain data: addresses, the HTB tree, filters, firewall.

Pure: nothing here touches the kernel. :mod:`slicectl.node.tc` and :mod:`slicectl.node.firewall`
apply these plans and read them back.

The HTB tree lives on one IFB device per node; each sliver's host-side veth redirects
its ingress (the sliver's egress) there. Class ids come from the sliver's xid, so a
sliver's classes and filters can be found and removed without any other state::

    1:c000  root, rate = ceil = node cap
    1:8000  default (non-IP and unclassified traffic)
    1:c000+xid  the sliver: rate net_min_kbit, ceil net_max_kbit
        1:xid         its ordinary IP traffic
        1:4000+xid    its ICMP (a few packets per second)
        1:8000+xid    its packets with IP options (a few per second)

A sliver's u32 filters share one priority, ``FILTER_PRIO_BASE + xid``, in the order
ICMP, options-free IP, anything else from its address (so: IP options).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from slicectl.core.errors import ValidationError
from slicectl.core.rspec import RSpec

#: The highest xid: class ids hold it in their low 14 bits (see the tree above).
MAX_NET_XID = 0x3FFF
ROOT_MINOR = 0xC000
DEFAULT_MINOR = 0x8000
ICMP_BASE = 0x4000
OPTS_BASE = 0x8000
PARENT_BASE = 0xC000
MAJOR = 0x10000
FILTER_PRIO_BASE = 100
ICMP_KBIT = 16      # about 20 pings of 100 bytes per second
OPTS_KBIT = 8
DEFAULT_KBIT = 100
MTU = 1514


@dataclass(frozen=True)
class HtbClass:
    classid: int
    parent: int
    rate_kbit: int
    ceil_kbit: int
    quantum: int


@dataclass(frozen=True)
class U32Filter:
    prio: int
    target: int
    keys: tuple[str, ...]


@dataclass(frozen=True)
class SliverTc:
    xid: int
    classes: tuple[HtbClass, ...]
    filters: tuple[U32Filter, ...]

    @property
    def prio(self) -> int:
        return FILTER_PRIO_BASE + self.xid

    @property
    def parent_class(self) -> int:
        return self.classes[0].classid


def handle(minor: int) -> int:
    return MAJOR | minor


def parent_classid(xid: int) -> int:
    """The class holding all of a sliver's traffic (its counters are the sliver's)."""
    return handle(PARENT_BASE + xid)


def handle_text(h: int) -> str:
    return f"{h >> 16:x}:{h & 0xFFFF:x}"


def sliver_address(subnet: str, xid: int) -> str:
    """The sliver's fixed address: a pure function of its xid, in the upper half of the
    node subnet (the engine's dynamic allocations, for sidecars, start at the bottom)."""
    net = ipaddress.ip_network(subnet)
    top = sliver_xid_range(subnet)[1]
    if not 1 <= xid <= top:
        raise ValidationError("xid", f"a security context from 1 to {top} (subnet {subnet})", xid)
    addr = net.network_address + net.num_addresses // 2 + xid
    return str(addr)


def node_gateway(subnet: str) -> str:
    """The node's address on its bridge (the engine gives the gateway the first host)."""
    return str(ipaddress.ip_network(subnet).network_address + 1)


def sliver_xid_range(subnet: str) -> tuple[int, int]:
    """(address of xid 0, highest valid xid) as integers: the inverse of sliver_address,
    for tagging packets by address at line rate."""
    net = ipaddress.ip_network(subnet)
    base = int(net.network_address) + net.num_addresses // 2
    return base, min(MAX_NET_XID, int(net.broadcast_address) - 1 - base)


def quantum(rate_kbit: int) -> int:
    """HTB lends excess in proportion to quantum; make it proportional to rate where the
    kernel's bounds (an MTU .. 200000 bytes) allow."""
    return max(MTU, min(200_000, rate_kbit * 1000 // 8 // 10))


def root_classes(cap_kbit: int) -> tuple[HtbClass, HtbClass]:
    root = HtbClass(handle(ROOT_MINOR), MAJOR, cap_kbit, cap_kbit, quantum(cap_kbit))
    default = HtbClass(handle(DEFAULT_MINOR), root.classid, min(DEFAULT_KBIT, cap_kbit),
                       cap_kbit, MTU)
    return root, default


def ip_key(address: str) -> str:
    return f"0x{int(ipaddress.ip_address(address)):08x}/0xffffffff+12"


def sliver_tc(xid: int, address: str, rspec: RSpec, cap_kbit: int,
              ceil_kbit: int | None = None) -> SliverTc:
    """The classes and filters of one sliver. ``ceil_kbit`` overrides the rspec's ceiling
    (the daily byte budget lowers it)."""
    ceil = min(ceil_kbit if ceil_kbit is not None else rspec.net_max_kbit, cap_kbit)
    rate = min(rspec.net_min_kbit, ceil)
    parent = HtbClass(parent_classid(xid), handle(ROOT_MINOR), rate + 2, max(ceil, rate + 2),
                      quantum(rate))
    data = HtbClass(handle(xid), parent.classid, rate, max(ceil, rate), quantum(rate))
    icmp = HtbClass(handle(ICMP_BASE + xid), parent.classid, 1, ICMP_KBIT, MTU)
    opts = HtbClass(handle(OPTS_BASE + xid), parent.classid, 1, OPTS_KBIT, MTU)
    src = ip_key(address)
    prio = FILTER_PRIO_BASE + xid
    filters = (
        U32Filter(prio, icmp.classid, ("0x1/0xff+9", src)),
        U32Filter(prio, data.classid, ("0x45/0xff+0", src)),
        U32Filter(prio, opts.classid, (src,)),
    )
    return SliverTc(xid, (parent, data, icmp, opts), filters)


@dataclass(frozen=True)
class PortGrant:
    """A reserved (protocol, port) forwarded to one sliver."""

    slice: str
    address: str
    proto: str
    port: int


def port_grants(slivers: Iterable[tuple[str, str, RSpec]]) -> list[PortGrant]:
    out = [PortGrant(name, addr, proto, port)
           for name, addr, spec in slivers for proto, port in sorted(spec.ports())]
    return sorted(out, key=lambda g: (g.proto, g.port))


CHAIN_DNAT = "SLICECTL-DNAT"
CHAIN_SNAT = "SLICECTL-SNAT"
CHAIN_FWD = "SLICECTL-FWD"
CHAIN_INPUT = "SLICECTL-INPUT"
CHAIN_HOST = "SLICECTL-HOST"
CHAIN_OUT = "SLICECTL-OUT"
#: Link-local addresses, cloud metadata servers among them (169.254.169.254).
LINK_LOCAL = "169.254.0.0/16"


def chain_names(node_tag: str) -> dict[str, str]:
    """Chain names of one node manager instance (iptables allows 28 characters)."""
    suffix = "" if node_tag == "node" else f"-{node_tag}"[:12]
    return {k: f"{v}{suffix}" for k, v in
            (("dnat", CHAIN_DNAT), ("snat", CHAIN_SNAT), ("fwd", CHAIN_FWD),
             ("input", CHAIN_INPUT), ("host", CHAIN_HOST), ("out", CHAIN_OUT))}


def input_rules(local_ports: list[int], bridge: str, chains: dict[str, str]) -> str:
    """iptables-restore text replacing the INPUT-side chain: node-local service ports (the
    sensor server's) are accepted from lo and the node's bridge and dropped otherwise."""
    flt = ["*filter", f":{chains['input']} - [0:0]"]
    for port in sorted(set(local_ports)):
        comment = f'-m comment --comment "slicectl node-local service port {port}"'
        for iface in ("lo", bridge):
            flt.append(f"-A {chains['input']} -i {iface} -p tcp -m tcp --dport {port} "
                       f"{comment} -j RETURN")
        flt.append(f"-A {chains['input']} -p tcp -m tcp --dport {port} {comment} -j DROP")
    return "\n".join([*flt, "COMMIT", ""])


def host_rules(bridge: str, chains: dict[str, str], services: Iterable[tuple[str, int]],
               allow_link_local: bool = False) -> str:
    """iptables-restore text replacing the chain that walls the host off from slivers.

    What arrives from the node's bridge (from slivers) may reach on the host only: replies
    to the host's own connections, ICMP echo, the ``services`` meant for slivers (the
    sensor server; DNS where the node offers it) and, if node policy allows, link-local
    addresses. Everything else is refused (a TCP reset, else ICMP admin-prohibited), so a
    host listener on any address, the bridge's or another, is unreachable from a sliver.
    """
    c = chains["host"]
    flt = ["*filter", f":{c} - [0:0]",
           f"-A {c} ! -i {bridge} -j RETURN",
           f"-A {c} -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN",
           f"-A {c} -p icmp -m icmp --icmp-type 8 -j RETURN"]
    for proto, port in sorted(set(services)):
        if proto not in ("tcp", "udp") or not 1 <= port <= 65535:
            raise ValidationError("sliver service", "tcp or udp and a port from 1 to 65535",
                                  f"{proto}/{port}", as_text=True)
        flt.append(f"-A {c} -p {proto} -m {proto} --dport {port} "
                   f'-m comment --comment "slicectl service for slivers" -j RETURN')
    if allow_link_local:
        flt.append(f'-A {c} -d {LINK_LOCAL} -m comment --comment "slicectl policy '
                   'allow_link_local" -j RETURN')
    flt += [f'-A {c} -p tcp -m comment --comment "slicectl host walled off from slivers" '
            "-j REJECT --reject-with tcp-reset",
            f'-A {c} -m comment --comment "slicectl host walled off from slivers" '
            "-j REJECT --reject-with icmp-admin-prohibited"]
    return "\n".join([*flt, "COMMIT", ""])


def firewall_rules(grants: list[PortGrant], bridge: str, subnet: str,
                   chains: dict[str, str], allow_link_local: bool = False,
                   parked: frozenset[str] = frozenset(), wake_group: int | None = None,
                   refused_prefixes: tuple[str, ...] = ()) -> str:
    """iptables-restore text (for ``--noflush``) that replaces our chains' contents.

    - DNAT: connections to the node's own addresses on a reserved port go to its sliver;
    - SNAT: packets a sliver sends from its reserved port leave with that same port, and
      slivers reaching a reserved port through the node's address (hairpin) are
      masqueraded so the reply returns the same way;
    - FWD: packets from slivers that conntrack finds INVALID are dropped (NAT never sees
      them, so they would leave with the sliver's private source address), as is traffic
      to link-local addresses unless node policy allows it, and to the prefixes node
      policy refuses (``refused_prefixes``, the site's own network, say); forwarded
      connections are let through only to reserved ports; with ``wake_group``, the first
      packets of those to the ``parked`` (dormant) slices are logged to that NFLOG group
      first (see :func:`wake_rules`);
    - OUT: the same wake rules for connections the host itself makes to a reserved port
      of the node's address (they leave through OUTPUT, never FORWARD).
    """
    nat = ["*nat", f":{chains['dnat']} - [0:0]", f":{chains['snat']} - [0:0]"]
    fwd = chains["fwd"]
    flt = ["*filter", f":{fwd} - [0:0]", f":{chains['out']} - [0:0]",
           f"-A {fwd} -i {bridge} -m conntrack --ctstate INVALID "
           '-m comment --comment "slicectl no private source leaves the node" -j DROP']
    if not allow_link_local:
        flt.append(f"-A {fwd} -i {bridge} -d {LINK_LOCAL} "
                   '-m comment --comment "slicectl link-local is not for slivers" '
                   "-j REJECT --reject-with icmp-admin-prohibited")
    flt += [f"-A {fwd} -i {bridge} -d {prefix} "
            '-m comment --comment "slicectl policy refused_prefixes" '
            "-j REJECT --reject-with icmp-admin-prohibited" for prefix in refused_prefixes]
    if wake_group is not None:
        flt += [f"-A {rule}" for g in grants if g.slice in parked
                for rule in wake_rules(g, bridge, chains, wake_group)]
    for g in grants:
        for table, rule in grant_rules(g, bridge, subnet, chains):
            (nat if table == "nat" else flt).append(f"-A {rule}")
    return "\n".join([*nat, "COMMIT", *flt, "COMMIT", ""])


#: The NFLOG prefix of a wake rule, before the slice's name.
WAKE_PREFIX = "slicectl-wake "


def wake_rules(g: PortGrant, bridge: str, chains: dict[str, str], group: int) -> list[str]:
    """The filter rules (chain and rule, as ``-I``/``-D`` take them) that log packets of
    connections to a dormant sliver's reserved port to NFLOG ``group``, with the slice in
    the prefix, so the node manager wakes it; at most 10 a second each. One is in the
    forwarding chain (connections from outside and from slivers), one in the output chain
    (connections the host makes to the node's address). Each must come before anything
    that accepts the packet; the packet goes on to the sliver, which is up within a second,
    in time for the connection's first retransmission. The output rule names no
    interface: OUTPUT's chains see the device of the route before the DNAT (``lo``)."""
    match = (f"-p {g.proto} -m {g.proto} --dport {g.port} "
             f"-m conntrack --ctstate DNAT -m limit --limit 10/sec "
             f'-m comment --comment "slicectl {g.slice}" -j NFLOG --nflog-prefix '
             f'"{WAKE_PREFIX}{g.slice}" --nflog-group {group}')
    return [f"{chains['fwd']} -d {g.address}/32 -o {bridge} {match}",
            f"{chains['out']} -d {g.address}/32 {match}"]


def wake_delta(old: Iterable[PortGrant], new: Iterable[PortGrant], bridge: str,
               chains: dict[str, str], group: int) -> str | None:
    """iptables-restore text (for ``--noflush``) that takes the wake rules of ``old``
    grants out and puts those of ``new`` in (first in their chains), or None if no
    change."""
    changes = grant_changes(old, new)
    if changes is None:
        return None
    gone, came = changes
    lines = [f"-D {rule}" for g in gone for rule in wake_rules(g, bridge, chains, group)]
    lines += [f"-I {rule}" for g in came for rule in wake_rules(g, bridge, chains, group)]
    return "\n".join(["*filter", *lines, "COMMIT", ""])


def jump_rules(chains: dict[str, str]) -> list[tuple[str, str, list[str]]]:
    """(table, chain, rule) jumps into our chains, each added once at the top."""
    return [
        ("nat", "PREROUTING", ["-m", "addrtype", "--dst-type", "LOCAL", "-j", chains["dnat"]]),
        ("nat", "OUTPUT", ["!", "-d", "127.0.0.0/8", "-m", "addrtype", "--dst-type", "LOCAL",
                           "-j", chains["dnat"]]),
        ("nat", "POSTROUTING", ["-j", chains["snat"]]),
        ("filter", "DOCKER-USER", ["-j", chains["fwd"]]),
        ("filter", "INPUT", ["-j", chains["input"]]),
        ("filter", "INPUT", ["-j", chains["host"]]),
        ("filter", "OUTPUT", ["-j", chains["out"]]),
    ]


def grant_rules(g: PortGrant, bridge: str, subnet: str,
                chains: dict[str, str]) -> list[tuple[str, str]]:
    """(table, chain and rule) of one reserved port, as ``-A``/``-D`` take them."""
    comment = f'-m comment --comment "slicectl {g.slice}"'
    return [
        ("nat", f"{chains['dnat']} -p {g.proto} -m {g.proto} --dport {g.port} {comment} "
                f"-j DNAT --to-destination {g.address}:{g.port}"),
        ("nat", f"{chains['snat']} -s {g.address}/32 ! -o {bridge} -p {g.proto} -m {g.proto} "
                f"--sport {g.port} {comment} -j MASQUERADE --to-ports {g.port}"),
        ("nat", f"{chains['snat']} -s {subnet} -d {g.address}/32 -o {bridge} -p {g.proto} "
                f"-m {g.proto} --dport {g.port} {comment} -j MASQUERADE"),
        ("filter", f"{chains['fwd']} -d {g.address}/32 -o {bridge} -p {g.proto} -m {g.proto} "
                   f"--dport {g.port} -m conntrack --ctstate DNAT {comment} -j ACCEPT"),
    ]


def grant_changes(old: Iterable[PortGrant], new: Iterable[PortGrant]
                  ) -> tuple[list[PortGrant], list[PortGrant]] | None:
    """The grants ``old`` has and ``new`` lacks, and those ``new`` adds, each in port
    order; None when the two are the same."""
    before, after = set(old), set(new)
    if before == after:
        return None
    return (sorted(before - after, key=lambda g: (g.proto, g.port)),
            sorted(after - before, key=lambda g: (g.proto, g.port)))


def grants_delta(old: Iterable[PortGrant], new: Iterable[PortGrant], bridge: str, subnet: str,
                 chains: dict[str, str]) -> str | None:
    """iptables-restore text (for ``--noflush``) that changes one slice's reserved ports
    from ``old`` to ``new`` by deleting and appending only its own rules (other slices'
    rules and the chains' fixed rules stay as they are), or None when nothing changes."""
    changes = grant_changes(old, new)
    if changes is None:
        return None
    gone, came = changes
    tables: dict[str, list[str]] = {"nat": [], "filter": []}
    for g in gone:
        for table, rule in grant_rules(g, bridge, subnet, chains):
            tables[table].append(f"-D {rule}")
    for g in came:
        for table, rule in grant_rules(g, bridge, subnet, chains):
            tables[table].append(f"-A {rule}")
    out: list[str] = []
    for table, lines in tables.items():
        if lines:
            out += [f"*{table}", *lines, "COMMIT"]
    return "\n".join([*out, ""])
