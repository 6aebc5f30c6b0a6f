"""Admission control over time windows, as tables."""

from __future__ import annotations

import pytest

from slicectl.core.admission import NodeCapacity, check, peak_overlap, room
from slicectl.core.errors import AdmissionError
from slicectl.core.rspec import RSpec, parse_rspec

NOW = 1_800_000_000.0
H = 3600.0
CAP = NodeCapacity(mem_mb=24_000, disk_mb=40_000)


def spec(start_h: float = 0, end_h: float = 24, **kw: object) -> RSpec:
    return parse_rspec({"start": f"{int(start_h * 3600)}s", "end": f"{int(end_h * 3600)}s", **kw},
                       NOW)


@pytest.mark.parametrize(
    ("others", "candidate", "ok"),
    [
        ([], spec(cpu_share=1000), True),
        ([spec(cpu_share=600)], spec(cpu_share=400), True),
        ([spec(cpu_share=600)], spec(cpu_share=401), False),
        # Disjoint windows do not compete.
        ([spec(0, 1, cpu_share=900)], spec(2, 3, cpu_share=900), True),
        # Touching windows [0,1) and [1,2) do not overlap.
        ([spec(0, 1, cpu_share=900)], spec(1, 2, cpu_share=900), True),
        # Two others that never overlap each other: the peak is the larger one.
        ([spec(0, 2, cpu_share=500), spec(3, 5, cpu_share=600)], spec(0, 6, cpu_share=400), True),
        ([spec(0, 2, cpu_share=500), spec(3, 5, cpu_share=600)], spec(0, 6, cpu_share=401), False),
        # Two others that overlap each other inside the candidate's window.
        ([spec(0, 4, cpu_share=300), spec(2, 6, cpu_share=300)], spec(1, 3, cpu_share=400), True),
        ([spec(0, 4, cpu_share=300), spec(2, 6, cpu_share=300)], spec(1, 3, cpu_share=401), False),
    ],
)
def test_cpu_shares_over_time(others: list[RSpec], candidate: RSpec, ok: bool) -> None:
    outstanding = {f"rcap {i}": o for i, o in enumerate(others)}
    if ok:
        check(candidate, outstanding, CAP)
    else:
        with pytest.raises(AdmissionError, match=r"^cpu_share: asked for \d+, but only \d+ of 1000"):
            check(candidate, outstanding, CAP)


def test_peak_instant_is_reported() -> None:
    others = [spec(0, 4, cpu_share=300), spec(2, 6, cpu_share=300)]
    peak, when = peak_overlap(spec(1, 3), others, "cpu_share")
    assert (peak, when) == (600, NOW + 2 * H)


@pytest.mark.parametrize(
    ("candidate", "message"),
    [
        (spec(mem_mb=30_000), "mem_mb: asked for 30000, but the node has 24000"),
        (spec(disk_mb=50_000), "disk_mb: asked for 50000, but the node has 40000"),
        (spec(net_max_kbit=200_000, net_min_kbit=5), "net_max_kbit: asked for 200000"),
        (spec(tcp_ports=[22]), "tcp_ports: port 22 is a node service port"),
        (spec(tcp_ports=[33080]), "tcp_ports: port 33080 is a node service port"),
        (spec(tcp_ports=[80]), "tcp_ports: port 80 is a node service port"),
    ],
)
def test_single_limits(candidate: RSpec, message: str) -> None:
    with pytest.raises(AdmissionError, match=f"^{message}"):
        check(candidate, {}, CAP)


def test_port_conflict_names_owner() -> None:
    held = {"slice pl_web": spec(tcp_ports=[8080], udp_ports=[53])}
    with pytest.raises(AdmissionError, match="tcp_ports: port 8080 is already reserved by slice pl_web"):
        check(spec(tcp_ports=[8080]), held, CAP)
    check(spec(udp_ports=[8080]), held, CAP)  # another protocol
    check(spec(30, 40, tcp_ports=[8080]), held, CAP)  # after the holder's window


def test_bandwidth_guarantees_sum_under_cap() -> None:
    cap = NodeCapacity(mem_mb=24_000, disk_mb=40_000, net_cap_kbit=10_000)
    held = {"a": spec(net_min_kbit=6000, net_max_kbit=10_000)}
    check(spec(net_min_kbit=4000, net_max_kbit=10_000), held, cap)
    with pytest.raises(AdmissionError, match="^net_min_kbit: asked for 4001, but only 4000 of the node cap"):
        check(spec(net_min_kbit=4001, net_max_kbit=10_000), held, cap)


SMALL = NodeCapacity(mem_mb=1000, disk_mb=2000, max_nproc=4000, total_nofile=10_000)


@pytest.mark.parametrize(("others", "candidate", "message"), [
    # memory and disk: 2x overcommit by default
    ([spec(mem_mb=1000)], spec(mem_mb=1000), None),
    ([spec(mem_mb=1000), spec(mem_mb=980)], spec(mem_mb=20), None),
    ([spec(mem_mb=1000), spec(mem_mb=980)], spec(mem_mb=21),
     "mem_mb: asked for 21, but only 20 of 1000 MB of memory x 2 overcommit are free"),
    ([spec(disk_mb=2000), spec(disk_mb=2000)], spec(disk_mb=16),
     "disk_mb: asked for 16, but only 0 of 2000 MB of sliver disk x 2 overcommit"),
    # processes and files: the kernel's limits, no overcommit
    ([spec(nproc=3000)], spec(nproc=1000), None),
    ([spec(nproc=3000)], spec(nproc=1001), "nproc: asked for 1001, but only 1000 of 4000 processes"),
    ([spec(nofile=9000)], spec(nofile=1001), "nofile: asked for 1001, but only 1000 of 10000"),
    # only overlapping windows compete
    ([spec(0, 1, mem_mb=1000), spec(0, 1, mem_mb=1000)], spec(1, 2, mem_mb=1000), None),
])
def test_memory_disk_processes_and_files_sum_under_the_node(
        others: list[RSpec], candidate: RSpec, message: str | None) -> None:
    outstanding = {f"rcap {i}": o for i, o in enumerate(others)}
    if message is None:
        check(candidate, outstanding, SMALL)
    else:
        with pytest.raises(AdmissionError, match=f"^{message}"):
            check(candidate, outstanding, SMALL)


def test_overcommit_comes_from_node_policy() -> None:
    strict = NodeCapacity(mem_mb=1000, disk_mb=2000, mem_overcommit=1.0)
    with pytest.raises(AdmissionError, match=r"of 1000 MB of memory x 1 overcommit"):
        check(spec(mem_mb=16), {"a": spec(mem_mb=1000)}, strict)


def test_cpu_shares_overcommit_from_node_policy() -> None:
    full = {"a": spec(cpu_share=1000)}
    with pytest.raises(AdmissionError, match=r"of 1000 shares x 1 overcommit"):
        check(spec(cpu_share=1), full, CAP)
    ten = NodeCapacity(mem_mb=24_000, disk_mb=40_000, cpu_overcommit=10.0)
    check(spec(cpu_share=1000), {f"r{i}": spec(cpu_share=1000) for i in range(9)}, ten)
    with pytest.raises(AdmissionError, match=r"^cpu_share: asked for 1, but only 0 of 1000 "
                                             r"shares x 10 overcommit"):
        check(spec(cpu_share=1), {f"r{i}": spec(cpu_share=1000) for i in range(10)}, ten)


def test_peaks_sweep_matches_the_brute_force() -> None:
    import random

    rng = random.Random(5)
    others = [spec(a, a + rng.randint(1, 10), cpu_share=rng.randint(1, 50),
                   mem_mb=rng.randint(16, 900))
              for a in (rng.randint(0, 40) for _ in range(200))]
    cand = spec(5, 30)
    for attr in ("cpu_share", "mem_mb"):
        t_points = sorted({cand.start} | {o.start for o in others if cand.start < o.start < cand.end})
        brute = max(sum(getattr(o, attr) for o in others if o.start <= t < o.end) for t in t_points)
        assert peak_overlap(cand, others, attr)[0] == brute


@pytest.mark.parametrize(
    ("others", "candidate", "most", "fits"),
    [
        ([], spec(mem_mb=512), 5, 5),                                 # bounded by ``most``
        ([], spec(mem_mb=24_000), 5, 2),                              # 48,000 MB with overcommit
        ([spec(mem_mb=24_000), spec(mem_mb=23_000)], spec(mem_mb=512), 5, 1),
        ([spec(mem_mb=24_000), spec(mem_mb=23_500)], spec(mem_mb=512), 5, 0),  # 500 MB left
        # the tightest resource counts: shares here
        ([spec(cpu_share=990)], spec(cpu_share=5, mem_mb=16), 5, 2),
        # reservations outside the window take nothing from it
        ([spec(30, 40, mem_mb=24_000), spec(30, 40, mem_mb=24_000)], spec(mem_mb=512), 3, 3),
        # one that could never be admitted alone fits no times
        ([], spec(mem_mb=25_000), 5, 0),
        ([], spec(mem_mb=512), 0, 0),
    ],
)
def test_room_counts_how_many_more_would_be_admitted(others: list[RSpec], candidate: RSpec,
                                                     most: int, fits: int) -> None:
    assert room(candidate, others, CAP, most) == fits
    outstanding = {f"rcap {i}": o for i, o in enumerate(others)}
    for i in range(fits):  # as many as room says are admitted one by one, and no more
        check(candidate, outstanding, CAP)
        outstanding[f"new {i}"] = candidate
    if fits < most:
        with pytest.raises(AdmissionError):
            check(candidate, outstanding, CAP)
