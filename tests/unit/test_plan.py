"""Container plans, as tables: what the engine is asked to build for an rspec."""

from __future__ import annotations

from pathlib import Path

import pytest

from slicectl.core.containerplan import (
    SLIVER_CAPS,
    NodeFacts,
    SliverIdentity,
    cfs_quota,
    container_plan,
    disk_quota_bytes,
    resource_update,
)
from slicectl.core.rspec import parse_rspec

NOW = 1_800_000_000.0
FACTS = NodeFacts(node_id="n1", ncpus=2, image="sha256:abc", image_bytes=300 << 20,
                  network="slicectl", cgroup_parent="/slicectl", hostname="node1",
                  nm_sock_dir=Path("/run/slicectl/nm"))
IDENT = SliverIdentity(slice="pl_demo", xid=7, uid=20007, etc_dir=Path("/var/lib/x/pl_demo/etc"))


@pytest.mark.parametrize(
    ("share", "ncpus", "period", "quota"),
    [
        (1000, 2, 100_000, 200_000),  # the whole node
        (500, 2, 100_000, 100_000),   # one core's worth
        (100, 1, 100_000, 10_000),
        (10, 2, 100_000, 2_000),
        (5, 2, 100_000, 1_000),
        (1, 2, 500_000, 1_000),       # quota under 1 ms: the period grows instead
        (1, 1, 1_000_000, 1_000),
        (3, 1, 333_334, 1_000),
    ],
)
def test_cfs_quota(share: int, ncpus: int, period: int, quota: int) -> None:
    assert cfs_quota(share, ncpus) == (period, quota)
    p, q = cfs_quota(share, ncpus)
    assert q >= 1000 and p <= 1_000_000
    assert abs(q / p - share * ncpus / 1000) < 0.01


@pytest.mark.parametrize(
    ("fields", "expect"),
    [
        ({}, {"cpu_shares": 256, "cpu_quota": -1, "mem_limit": 512 << 20,
              "memswap_limit": 512 << 20, "pids_limit": 512}),
        ({"cpu_share": 1000, "mem_mb": 64, "nproc": 40},
         {"cpu_shares": 256_000, "mem_limit": 64 << 20, "pids_limit": 40}),
        ({"cpu_share": 250, "cpu_capped": True}, {"cpu_period": 100_000, "cpu_quota": 50_000}),
    ],
)
def test_resource_update(fields: dict[str, object], expect: dict[str, int]) -> None:
    got = resource_update(parse_rspec(fields, NOW), ncpus=2)
    for key, value in expect.items():
        assert got[key] == value, key


def test_container_plan_isolation() -> None:
    plan = container_plan(IDENT, parse_rspec({"nofile": 2048, "disk_mb": 100}, NOW), FACTS)
    kw = plan.kwargs
    assert plan.name == "sliver-pl_demo" == kw["name"]
    assert plan.image == "sha256:abc"
    assert kw["cap_drop"] == ["ALL"]
    assert set(kw["cap_add"]) == set(SLIVER_CAPS)
    for dangerous in ("SYS_ADMIN", "NET_ADMIN", "NET_RAW", "SYS_MODULE", "SYS_RAWIO", "SYS_BOOT",
                      "SYS_TIME", "SYS_PTRACE", "MKNOD"):
        assert dangerous not in kw["cap_add"]
    assert kw["init"] is True
    assert kw["labels"] == {"org.slicectl.slice": "pl_demo", "org.slicectl.node": "n1",
                            "org.slicectl.xid": "7", "org.slicectl.kind": "sliver"}
    assert kw["ulimits"] == [{"Name": "nofile", "Soft": 2048, "Hard": 2048}]
    assert kw["storage_opt"] == {"size": str(100 << 20)}  # simple quotas: the image is free
    assert kw["cgroup_parent"] == "/slicectl"
    assert "cpu_quota" not in kw and "cpu_period" not in kw
    assert kw["environment"]["SLICECTL_UID"] == "20007"
    # No engine socket and no NM socket in an unprivileged sliver.
    sources = [m["Source"] for m in kw["mounts"]]
    assert sources == ["/var/lib/x/pl_demo/etc"]
    assert all(m["ReadOnly"] for m in kw["mounts"])
    assert "privileged" not in kw and "volumes" not in kw


def test_privileged_sliver_gets_only_the_nm_socket_dir() -> None:
    kw = container_plan(IDENT, parse_rspec({"nm_privileged": True}, NOW), FACTS).kwargs
    targets = {m["Target"]: m["Source"] for m in kw["mounts"]}
    assert targets["/run/slicectl/nm"] == "/run/slicectl/nm"
    assert not any("docker.sock" in s for s in targets.values())


def test_capped_plan_has_quota() -> None:
    kw = container_plan(IDENT, parse_rspec({"cpu_share": 100, "cpu_capped": True}, NOW),
                        FACTS).kwargs
    assert (kw["cpu_period"], kw["cpu_quota"]) == (100_000, 20_000)


def test_disk_quota_counts_image_only_under_full_qgroups() -> None:
    spec = parse_rspec({"disk_mb": 16}, NOW)
    assert disk_quota_bytes(spec, FACTS) == 16 << 20
    full = NodeFacts(**{**FACTS.__dict__, "quota_counts_image": True})
    assert disk_quota_bytes(spec, full) == (300 << 20) + (16 << 20)
