"""Network plans as tables: addresses, HTB classes and filters, firewall rules, budgets."""

from __future__ import annotations

import pytest

from slicectl.core.errors import ValidationError
from slicectl.core.netplan import (
    ICMP_KBIT,
    OPTS_KBIT,
    PortGrant,
    chain_names,
    firewall_rules,
    grants_delta,
    handle,
    handle_text,
    host_rules,
    port_grants,
    quantum,
    root_classes,
    sliver_address,
    sliver_tc,
    wake_delta,
    wake_rules,
)
from slicectl.core.rspec import parse_rspec
from slicectl.node.network import budget_ceil_kbit, utc_day

NOW = 1_800_000_000.0  # 2027-01-15T08:00:00Z


@pytest.mark.parametrize(
    ("subnet", "xid", "address"),
    [("172.30.0.0/16", 1, "172.30.128.1"), ("172.30.0.0/16", 300, "172.30.129.44"),
     ("172.30.0.0/16", 0x3FFF, "172.30.191.255"), ("172.31.4.0/22", 5, "172.31.6.5"),
     ("172.31.4.0/22", 500, "172.31.7.244")],
)
def test_sliver_address(subnet: str, xid: int, address: str) -> None:
    assert sliver_address(subnet, xid) == address


@pytest.mark.parametrize(("subnet", "xid"), [("172.31.4.0/22", 511), ("172.30.0.0/16", 0),
                                             ("172.30.0.0/16", 0x4000)])
def test_sliver_address_out_of_room(subnet: str, xid: int) -> None:
    with pytest.raises(ValidationError, match="^xid: expected a security context from 1 to"):
        sliver_address(subnet, xid)


@pytest.mark.parametrize(
    ("xid", "minors"),
    [(1, (0xC001, 0x0001, 0x4001, 0x8001)), (0x3FFF, (0xFFFF, 0x3FFF, 0x7FFF, 0xBFFF))],
)
def test_class_ids_come_from_the_xid(xid: int, minors: tuple[int, ...]) -> None:
    plan = sliver_tc(xid, "172.30.128.1", parse_rspec({}, NOW), 100_000)
    assert tuple(c.classid & 0xFFFF for c in plan.classes) == minors
    assert all(c.classid >> 16 == 1 for c in plan.classes)
    assert plan.prio == 100 + xid


@pytest.mark.parametrize(
    ("fields", "cap", "rate", "ceil"),
    [
        ({}, 100_000, 5, 10_000),
        ({"net_min_kbit": 2000, "net_max_kbit": 50_000}, 100_000, 2000, 50_000),
        ({"net_max_kbit": 50_000}, 20_000, 5, 20_000),   # the node cap bounds every ceil
        ({"net_min_kbit": 30_000, "net_max_kbit": 50_000}, 20_000, 20_000, 20_000),
    ],
)
def test_rates_and_ceilings(fields: dict[str, int], cap: int, rate: int, ceil: int) -> None:
    parent, data, icmp, opts = sliver_tc(7, "172.30.128.7", parse_rspec(fields, NOW), cap).classes
    assert (data.rate_kbit, data.ceil_kbit) == (rate, ceil)
    assert data.parent == icmp.parent == opts.parent == parent.classid
    assert parent.parent == handle(0xC000)
    assert parent.rate_kbit >= data.rate_kbit + icmp.rate_kbit + opts.rate_kbit - 1
    assert (icmp.ceil_kbit, opts.ceil_kbit) == (ICMP_KBIT, OPTS_KBIT)


def test_budget_override_lowers_ceiling() -> None:
    plan = sliver_tc(7, "172.30.128.7", parse_rspec({"net_max_kbit": 8000}, NOW), 100_000,
                     ceil_kbit=300)
    assert plan.classes[1].ceil_kbit == 300


def test_filters_classify_icmp_then_plain_ip_then_options() -> None:
    plan = sliver_tc(7, "172.30.128.7", parse_rspec({}, NOW), 100_000)
    src = "0xac1e8007/0xffffffff+12"
    assert [f.keys for f in plan.filters] == [("0x1/0xff+9", src), ("0x45/0xff+0", src), (src,)]
    assert [handle_text(f.target) for f in plan.filters] == ["1:4007", "1:7", "1:8007"]
    assert {f.prio for f in plan.filters} == {107}


@pytest.mark.parametrize(("rate", "q"), [(5, 1514), (1000, 12500), (10_000, 125_000),
                                         (100_000, 200_000)])
def test_quantum_proportional_within_bounds(rate: int, q: int) -> None:
    assert quantum(rate) == q


def test_root() -> None:
    root, default = root_classes(100_000)
    assert (root.classid, root.parent, root.rate_kbit, root.ceil_kbit) == (0x1C000, 0x10000,
                                                                           100_000, 100_000)
    assert default.classid == 0x18000 and default.parent == root.classid


def test_firewall_rules() -> None:
    specs = [("pl_web", "172.30.128.1", parse_rspec({"tcp_ports": [8080], "udp_ports": [53]}, NOW)),
             ("pl_idle", "172.30.128.2", parse_rspec({}, NOW))]
    grants = port_grants(specs)
    assert grants == [PortGrant("pl_web", "172.30.128.1", "tcp", 8080),
                      PortGrant("pl_web", "172.30.128.1", "udp", 53)]
    text = firewall_rules(grants, "slicectl0", "172.30.0.0/16", chain_names("node"))
    lines = text.splitlines()
    assert lines[:3] == ["*nat", ":SLICECTL-DNAT - [0:0]", ":SLICECTL-SNAT - [0:0]"]
    assert ('-A SLICECTL-DNAT -p tcp -m tcp --dport 8080 -m comment --comment "slicectl pl_web" '
            '-j DNAT --to-destination 172.30.128.1:8080') in lines
    assert ('-A SLICECTL-SNAT -s 172.30.128.1/32 ! -o slicectl0 -p udp -m udp --sport 53 '
            '-m comment --comment "slicectl pl_web" -j MASQUERADE --to-ports 53') in lines
    assert any(ln.startswith("-A SLICECTL-FWD -d 172.30.128.1/32 -o slicectl0 -p tcp") and
               "--ctstate DNAT" in ln for ln in lines)
    assert lines.count("COMMIT") == 2
    # No grants: the chains are declared (and so emptied) all the same; only the walls stay.
    empty = firewall_rules([], "slicectl0", "172.30.0.0/16", chain_names("node")).splitlines()
    assert [ln for ln in empty if ln.startswith("-A")] == [ln for ln in lines if any(
        w in ln for w in ("--ctstate INVALID", "169.254.0.0/16"))]
    assert len([ln for ln in empty if ln.startswith("-A")]) == 2
    assert ":SLICECTL-FWD - [0:0]" in empty


GRANT_A = PortGrant("pl_web", "172.30.128.1", "tcp", 8080)
GRANT_B = PortGrant("pl_web", "172.30.128.1", "udp", 53)


@pytest.mark.parametrize(
    ("old", "new", "deleted", "appended"),
    [([], [], None, None),                          # a sliver without ports: nothing to do
     ([GRANT_A], [GRANT_A], None, None),            # unchanged
     ([], [GRANT_A], [], [GRANT_A]),                # a bind that reserves a port
     ([GRANT_A, GRANT_B], [], [GRANT_A, GRANT_B], []),  # a destroy
     ([GRANT_A], [GRANT_B], [GRANT_A], [GRANT_B])],  # a port traded for another
)
def test_grants_delta_touches_only_the_changed_grants(
        old: list[PortGrant], new: list[PortGrant], deleted: list[PortGrant] | None,
        appended: list[PortGrant] | None) -> None:
    chains = chain_names("node")
    text = grants_delta(old, new, "slicectl0", "172.30.0.0/16", chains)
    if deleted is None:
        assert text is None
        return
    assert text is not None
    lines = text.splitlines()
    full = firewall_rules([*deleted, *(appended or [])], "slicectl0", "172.30.0.0/16",
                          chains).splitlines()
    grant_lines = [ln[3:] for ln in full if ln.startswith("-A") and "slicectl pl_web" in ln]
    changed = [ln[3:] for ln in lines if ln.startswith(("-A", "-D"))]
    assert sorted(changed) == sorted(grant_lines)  # the same rules as a full rebuild has
    assert sum(ln.startswith("-D") for ln in lines) == 4 * len(deleted)
    assert sum(ln.startswith("-A") for ln in lines) == 4 * len(appended or [])
    # never a chain declaration (it would flush the chain) and never a fixed wall rule
    assert not any(ln.startswith(":") for ln in lines)
    assert not any("INVALID" in ln or "169.254" in ln for ln in lines)
    assert lines.count("COMMIT") == sum(t in lines for t in ("*nat", "*filter"))


WALLS = {
    "invalid": ('-A SLICECTL-FWD -i slicectl0 -m conntrack --ctstate INVALID -m comment '
                '--comment "slicectl no private source leaves the node" -j DROP'),
    "link-local": ('-A SLICECTL-FWD -i slicectl0 -d 169.254.0.0/16 -m comment --comment '
                   '"slicectl link-local is not for slivers" -j REJECT --reject-with '
                   'icmp-admin-prohibited'),
}


@pytest.mark.parametrize(
    ("allow_link_local", "grants", "walls"),
    [
        (False, [], ["invalid", "link-local"]),
        (True, [], ["invalid"]),
        (False, [PortGrant("pl_web", "172.30.128.1", "tcp", 8080)], ["invalid", "link-local"]),
        (True, [PortGrant("pl_web", "172.30.128.1", "udp", 53)], ["invalid"]),
    ],
)
def test_forward_walls_come_before_any_accept(allow_link_local: bool, grants: list[PortGrant],
                                              walls: list[str]) -> None:
    """INVALID packets from slivers never reach NAT (they would leave with a private
    source); link-local is refused unless node policy allows it. Both precede the accepts."""
    text = firewall_rules(grants, "slicectl0", "172.30.0.0/16", chain_names("node"),
                          allow_link_local=allow_link_local)
    fwd = [ln for ln in text.splitlines() if ln.startswith("-A SLICECTL-FWD ")]
    assert fwd[:len(walls)] == [WALLS[w] for w in walls]
    assert len(fwd) == len(walls) + len(grants)
    assert all("-j ACCEPT" in ln for ln in fwd[len(walls):])


HOST_HEAD = ["-A SLICECTL-HOST ! -i br0 -j RETURN",
             "-A SLICECTL-HOST -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN",
             "-A SLICECTL-HOST -p icmp -m icmp --icmp-type 8 -j RETURN"]
HOST_TAIL = ['-A SLICECTL-HOST -p tcp -m comment --comment "slicectl host walled off from '
             'slivers" -j REJECT --reject-with tcp-reset',
             '-A SLICECTL-HOST -m comment --comment "slicectl host walled off from slivers" '
             '-j REJECT --reject-with icmp-admin-prohibited']


def svc(proto: str, port: int) -> str:
    return (f"-A SLICECTL-HOST -p {proto} -m {proto} --dport {port} -m comment --comment "
            '"slicectl service for slivers" -j RETURN')


LL = ('-A SLICECTL-HOST -d 169.254.0.0/16 -m comment --comment "slicectl policy '
      'allow_link_local" -j RETURN')


@pytest.mark.parametrize(
    ("services", "allow_link_local", "middle"),
    [
        ([], False, []),
        ([("tcp", 33080)], False, [svc("tcp", 33080)]),
        ([("tcp", 33080), ("udp", 53), ("tcp", 53), ("tcp", 33080)], False,
         [svc("tcp", 53), svc("tcp", 33080), svc("udp", 53)]),
        ([("tcp", 33080)], True, [svc("tcp", 33080), LL]),
    ],
)
def test_host_rules(services: list[tuple[str, int]], allow_link_local: bool,
                    middle: list[str]) -> None:
    """From the bridge only replies, echo, the services for slivers (and link-local if
    policy allows) pass; every other host address and port is refused; other interfaces
    are not this chain's business."""
    text = host_rules("br0", chain_names("node"), services, allow_link_local)
    lines = text.splitlines()
    assert lines[:2] == ["*filter", ":SLICECTL-HOST - [0:0]"]
    assert text.endswith("\nCOMMIT\n")
    assert [ln for ln in lines if ln.startswith("-A")] == [*HOST_HEAD, *middle, *HOST_TAIL]


@pytest.mark.parametrize(("services", "message"), [
    ([("sctp", 9)], "sliver service: expected tcp or udp and a port from 1 to 65535, found sctp/9"),
    ([("tcp", 0)], "sliver service: expected tcp or udp and a port from 1 to 65535, found tcp/0"),
])
def test_host_rules_refuse_bad_services(services: list[tuple[str, int]], message: str) -> None:
    with pytest.raises(ValidationError) as e:
        host_rules("br0", chain_names("node"), services)
    assert str(e.value) == message


def test_chain_names_fit_iptables() -> None:
    names = chain_names("test-abcdef")
    assert names["dnat"] == "SLICECTL-DNAT-test-abcdef"
    assert names["out"] == "SLICECTL-OUT-test-abcdef"
    assert all(len(n) <= 28 for n in names.values())


@pytest.mark.parametrize(
    ("used_kbyte", "expect"),
    [(0, None), (799_999, None), (800_000, 5), (900_000, 5)],
)
def test_budget_ceiling(used_kbyte: int, expect: int | None) -> None:
    spec = parse_rspec({"net_max_kbyte_day": 1_000_000, "net_max_kbit": 10_000}, NOW)
    got = budget_ceil_kbit(spec, used_kbyte * 1000, NOW)
    if expect is None:
        assert got is None
    else:
        # 200 MB left over the 16 hours to midnight: about 27 kbit/s; at 900 MB, about 14.
        assert got is not None and got >= expect
        left_s = 86400 - (NOW % 86400)
        assert got == max(5, int((1_000_000 - used_kbyte) * 1000 * 8 / 1000 / left_s))


def test_no_budget_no_ceiling() -> None:
    assert budget_ceil_kbit(parse_rspec({}, NOW), 10**12, NOW) is None
    assert utc_day(NOW) == "2027-01-15"


def test_wake_rules_of_parked_slices_come_after_the_walls_and_before_the_accepts() -> None:
    grants = [GRANT_A, GRANT_B, PortGrant("pl_up", "172.30.128.2", "tcp", 9000)]
    chains = chain_names("node")
    text = firewall_rules(grants, "slicectl0", "172.30.0.0/16", chains,
                          parked=frozenset({"pl_web"}), wake_group=23552)
    fwd = [ln for ln in text.splitlines() if ln.startswith("-A SLICECTL-FWD ")]
    assert fwd[:2] == [WALLS["invalid"], WALLS["link-local"]]
    assert fwd[2:4] == [f"-A {wake_rules(g, 'slicectl0', chains, 23552)[0]}"
                        for g in (GRANT_A, GRANT_B)]
    assert all("-j ACCEPT" in ln for ln in fwd[4:]) and len(fwd[4:]) == 3
    assert fwd[2] == ('-A SLICECTL-FWD -d 172.30.128.1/32 -o slicectl0 -p tcp -m tcp --dport '
                      '8080 -m conntrack --ctstate DNAT -m limit --limit 10/sec -m comment '
                      '--comment "slicectl pl_web" -j NFLOG --nflog-prefix "slicectl-wake '
                      'pl_web" --nflog-group 23552')
    # Connections the host makes leave through OUTPUT: the same match in our output
    # chain, which holds nothing else (and is emptied with the rest).
    out = [ln for ln in text.splitlines() if ln.startswith("-A SLICECTL-OUT ")]
    assert out == [f"-A {wake_rules(g, 'slicectl0', chains, 23552)[1]}"
                   for g in (GRANT_A, GRANT_B)]
    assert out[0] == fwd[2].replace("-A SLICECTL-FWD ", "-A SLICECTL-OUT ").replace(
        " -o slicectl0", ""), "the device OUTPUT sees is the route's before the DNAT"
    assert ":SLICECTL-OUT - [0:0]" in text.splitlines()
    # no group (the node manager could not bind one): no wake rules, the same accepts
    plain = firewall_rules(grants, "slicectl0", "172.30.0.0/16", chains,
                           parked=frozenset({"pl_web"}))
    assert "NFLOG" not in plain


@pytest.mark.parametrize(
    ("old", "new", "lines"),
    [([], [], None),
     ([GRANT_A], [GRANT_A], None),
     ([], [GRANT_A, GRANT_B], ["-I A", "-I B"]),   # parked: its ports log, first in the chain
     ([GRANT_A, GRANT_B], [], ["-D A", "-D B"]),   # woken or gone
     ([GRANT_A], [GRANT_B], ["-D A", "-I B"])],
)
def test_wake_delta(old: list[PortGrant], new: list[PortGrant], lines: list[str] | None) -> None:
    chains = chain_names("node")
    text = wake_delta(old, new, "slicectl0", chains, 23552)
    if lines is None:
        assert text is None
        return
    assert text is not None
    rules = {"A": wake_rules(GRANT_A, "slicectl0", chains, 23552),
             "B": wake_rules(GRANT_B, "slicectl0", chains, 23552)}
    # each grant's two rules, forwarding chain first, output chain second
    expect = [f"{op} {rule}" for op, g in (ln.split() for ln in lines) for rule in rules[g]]
    assert all(r.startswith(("SLICECTL-FWD ", "SLICECTL-OUT ")) for r in rules["A"])
    assert text.splitlines() == ["*filter", *expect, "COMMIT"]
