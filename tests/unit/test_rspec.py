"""rspec parsing, combining and splitting, as tables."""

from __future__ import annotations

from pathlib import Path

import pytest

from slicectl.core.errors import UsageError, ValidationError
from slicectl.core.rspec import (
    DEFAULT_LIFETIME_S,
    RSpec,
    combine,
    load_rspec_file,
    parse_rspec,
    split,
    validate_slice_name,
)
from slicectl.core.units import iso

NOW = 1_800_000_000.0


def test_defaults() -> None:
    s = parse_rspec({}, NOW)
    assert (s.cpu_share, s.cpu_capped, s.mem_mb, s.disk_mb, s.nofile, s.nproc) == (
        1, False, 512, 1024, 1024, 512)
    assert (s.net_min_kbit, s.net_max_kbit, s.tcp_ports, s.udp_ports) == (5, 10000, (), ())
    assert (s.create_vm, s.nm_privileged, s.raw_sockets) == (True, False, True)
    assert s.start == NOW
    assert s.end == NOW + DEFAULT_LIFETIME_S
    assert parse_rspec(None, NOW) == s


@pytest.mark.parametrize(
    ("data", "field", "fragment"),
    [
        ({"cpu_share": 0}, "cpu_share", "an integer from 1 to 1000"),
        ({"cpu_share": 1001}, "cpu_share", "found 1001"),
        ({"cpu_share": "10"}, "cpu_share", "found '10'"),
        ({"cpu_share": True}, "cpu_share", "found True"),
        ({"cpu_share": 2.5}, "cpu_share", "found 2.5"),
        ({"mem_mb": 1}, "mem_mb", "an integer from 16"),
        ({"cpu_capped": "yes"}, "cpu_capped", "true or false"),
        ({"nm_privileged": 1}, "nm_privileged", "true or false"),
        ({"tcp_ports": 80}, "tcp_ports", "a list of distinct port numbers"),
        ({"tcp_ports": [8080, 8080]}, "tcp_ports", "distinct"),
        ({"udp_ports": [0]}, "udp_ports", "from 1 to 65535"),
        ({"udp_ports": [70000]}, "udp_ports", "from 1 to 65535"),
        ({"bogus": 1}, "bogus", "a known rspec field"),
        ({"start": "tomorrow"}, "start", "ISO 8601"),
        ({"end": "5 parsecs"}, "end", "ISO 8601"),
        ({"end": "2000-01-01T00:00:00Z"}, "end", "a time after start"),
        ({"start": "1h", "end": "30m"}, "end", "a time after start"),
        ({"net_min_kbit": 500, "net_max_kbit": 100}, "net_max_kbit", "at least net_min_kbit"),
    ],
)
def test_bad_fields_name_the_field(data: dict[str, object], field: str, fragment: str) -> None:
    with pytest.raises(ValidationError) as err:
        parse_rspec(data, NOW)
    msg = str(err.value)
    assert msg.startswith(f"{field}: expected ")
    assert fragment in msg
    assert "\n" not in msg
    assert err.value.exit_code == 2


@pytest.mark.parametrize(
    ("start", "end", "want_start", "want_end"),
    [
        ("now", "90s", NOW, NOW + 90),
        ("now", "2w", NOW, NOW + 14 * 86400),
        ("1h", None, NOW + 3600, NOW + 3600 + DEFAULT_LIFETIME_S),
        ("2027-01-15T12:00:00Z", "2027-01-16T12:00:00+00:00", 1800014400.0, 1800100800.0),
        ("2027-01-15T12:00:00", "3w", 1800014400.0, NOW + 21 * 86400),
    ],
)
def test_times(start: str, end: str | None, want_start: float, want_end: float) -> None:
    data: dict[str, object] = {"start": start}
    if end is not None:
        data["end"] = end
    s = parse_rspec(data, NOW)
    assert (s.start, s.end) == (want_start, want_end)


def test_wire_round_trip() -> None:
    s = parse_rspec({"cpu_share": 7, "tcp_ports": [9000, 80], "end": "3d"}, NOW)
    wire = s.to_wire()
    assert wire["tcp_ports"] == [80, 9000]
    assert wire["end"] == iso(NOW + 3 * 86400)
    assert parse_rspec(wire, NOW - 10) == s


@pytest.mark.parametrize(
    ("name", "ok"),
    [("pl_demo", True), ("princeton_codeen", True), ("a_b_c", True), ("x1_2", True),
     ("demo", False), ("Pl_demo", False), ("pl-demo", False), ("_pl", False),
     ("pl_" + "x" * 29, True), ("pl_" + "x" * 30, False), ("", False), (7, False)],
)
def test_slice_names(name: object, ok: bool) -> None:
    if ok:
        assert validate_slice_name(name) == name
    else:
        with pytest.raises(ValidationError, match="^slice: expected a name like site_name"):
            validate_slice_name(name)


def spec(**kw: object) -> RSpec:
    return parse_rspec(kw, NOW)


def test_combine_adds_quantities_and_unites_ports() -> None:
    a = spec(cpu_share=10, mem_mb=256, tcp_ports=[80], end="1d", nm_privileged=True)
    b = spec(cpu_share=995, mem_mb=512, tcp_ports=[81], udp_ports=[53], end="2d",
             net_max_kbit=20000)
    c = combine([a, b])
    assert c.cpu_share == 1000  # capped at the node total
    assert c.mem_mb == 768
    assert c.tcp_ports == (80, 81)
    assert c.udp_ports == (53,)
    assert c.end == NOW + 2 * 86400
    assert c.net_max_kbit == 20000
    assert c.nm_privileged
    assert combine([a]) is a


BIG = {"mem_mb": 4096, "disk_mb": 4096, "nofile": 4096, "nproc": 4096, "net_min_kbit": 50,
       "cpu_share": 100}


def test_split_moves_quantities_and_ports() -> None:
    parent = spec(**{**BIG, "mem_mb": 2048, "tcp_ports": [80, 81], "end": "1d"})
    part = spec(cpu_share=30, mem_mb=512, tcp_ports=[81], end="12h")
    rest = split(parent, part)
    assert (rest.cpu_share, rest.mem_mb, rest.tcp_ports) == (70, 1536, (80,))
    assert (rest.disk_mb, rest.nofile, rest.nproc) == (4096 - 1024, 4096 - 1024, 4096 - 512)
    assert rest.end == parent.end


@pytest.mark.parametrize(
    ("parent", "part", "field"),
    [
        ({"cpu_share": 10}, {"cpu_share": 10}, "cpu_share"),  # parent must keep its minimum
        ({"mem_mb": 512}, {"mem_mb": 600}, "mem_mb"),
        ({"tcp_ports": [80]}, {"tcp_ports": [81]}, "tcp_ports"),
        ({"nm_privileged": False}, {"nm_privileged": True}, "nm_privileged"),
        ({"cpu_capped": True}, {"cpu_capped": False}, "cpu_capped"),
        ({"end": "1d"}, {"end": "2d"}, "start/end"),
        ({"net_max_kbit": 1000}, {"net_max_kbit": 2000}, "net_max_kbit"),
    ],
)
def test_split_refuses_what_does_not_fit(parent: dict[str, object], part: dict[str, object],
                                         field: str) -> None:
    with pytest.raises(ValidationError) as err:
        split(spec(**{**BIG, **parent}), spec(**part))
    assert str(err.value).startswith(f"{field}: expected ")


def test_rspec_file(tmp_path: Path) -> None:
    f = tmp_path / "r.yaml"
    f.write_text("cpu_share: 20\nstart: 2027-01-15T12:00:00Z\nend: 2w\ntcp_ports: [8080]\n")
    s = load_rspec_file(f, NOW)
    assert (s.cpu_share, s.start, s.tcp_ports) == (20, 1800014400.0, (8080,))
    f.write_text("cpu_share: [1\n")
    with pytest.raises(UsageError, match="expected YAML, found a syntax error at line"):
        load_rspec_file(f, NOW)
    f.write_text("- 1\n- 2\n")
    with pytest.raises(ValidationError, match="^rspec: expected a mapping"):
        load_rspec_file(f, NOW)
    with pytest.raises(UsageError, match="cannot read it"):
        load_rspec_file(tmp_path / "missing.yaml", NOW)
    f.write_text("")
    assert load_rspec_file(f, NOW) == parse_rspec({}, NOW)


def test_split_conserves_the_daily_budget() -> None:
    parent = spec(**{**BIG, "net_max_kbyte_day": 1000})
    part = spec(net_max_kbyte_day=300)
    rest = split(parent, part)
    assert rest.net_max_kbyte_day + part.net_max_kbyte_day == 1000
    for bad in (0, 1000, 1001):  # none (unlimited), all of it, more than it
        with pytest.raises(ValidationError, match=r"^net_max_kbyte_day: expected from 1 to 999"):
            split(parent, spec(net_max_kbyte_day=bad))
    # an rcap without a budget may give parts with or without one
    assert split(spec(**BIG), spec(net_max_kbyte_day=5)).net_max_kbyte_day == 0


def test_an_rcap_without_a_budget_does_not_lift_anothers() -> None:
    limited, free = spec(net_max_kbyte_day=500), spec()
    assert combine([limited, free]).net_max_kbyte_day == 500
    assert combine([limited, spec(net_max_kbyte_day=200)]).net_max_kbyte_day == 700
    assert combine([free, spec()]).net_max_kbyte_day == 0
