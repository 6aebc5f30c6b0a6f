"""The warm pool on the real engine and kernel: a bind takes a pooled sliver, which then
has the slice's name, account, keys, limits (read back from the kernel), classes and
initscript and accepts ssh; an rspec the pool was not made for gets a new container; the
pool refills; nothing is left of a pooled sliver once destroyed or no longer wanted; a
killed node manager keeps its pool and replaces what vanished meanwhile."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import docker
import pytest

from slicectl.core.containerplan import CPU_SHARES_PER_SHARE, MIB
from slicectl.core.labels import LABEL_NODE, LABEL_SLICE, POOL_PREFIX
from slicectl.core.netplan import parent_classid
from slicectl.node import tc
from slicectl.node.engine import CGROUP_ROOT

from .conftest import NMHandle, wait_for
from .test_ssh import ssh

POOL = 2


def pooled(engine: docker.DockerClient, nm: NMHandle) -> dict[str, str]:
    """This node's pooled containers: id -> name."""
    found = engine.containers.list(all=True, filters={"label": f"{LABEL_NODE}={nm.cfg.node_id}"})
    return {c.id: c.name for c in found if c.name.startswith(POOL_PREFIX)}


def ready(nm: NMHandle) -> int:
    return int(nm.call("status")["pool_ready"])


@pytest.fixture
def pool(nm: NMHandle, engine: docker.DockerClient) -> dict[str, str]:
    out = nm.cli("node", "set", "warm_pool", str(POOL))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"slicectl: warm_pool = {POOL}"
    wait_for(lambda: ready(nm) == POOL, timeout=90, what=f"{POOL} pooled slivers")
    ids = pooled(engine, nm)
    assert len(ids) == POOL
    for cid in ids:
        c = engine.containers.get(cid)
        assert c.status == "running" and LABEL_SLICE not in c.labels
    return ids


def cgroup(c: Any, ctrl: str, file: str) -> int:
    parent = str(c.attrs["HostConfig"]["CgroupParent"]).strip("/")
    return int((CGROUP_ROOT / ctrl / parent / c.id / file).read_text())


def test_a_bind_takes_a_pooled_sliver_and_it_is_the_slices(
        nm: NMHandle, engine: docker.DockerClient, ssh_key: Path, pool: dict[str, str]) -> None:
    name = nm.slice("warm")
    key = Path(f"{ssh_key}.pub").read_text().strip()
    rcap = nm.call("acquire", {"cpu_share": 3, "mem_mb": 300, "nproc": 200,
                               "net_min_kbit": 100})
    info: dict[str, Any] = nm.call("bind", name, rcap, {
        "keys": [key], "initscript": "#!/bin/sh\necho warm > /tmp/stamp\n"})
    cid = info["container_id"]
    assert cid in pool, "the sliver is one of the pooled containers"
    c = engine.containers.get(cid)
    assert c.name == f"sliver-{name}" and c.status == "running"
    # its limits, from the kernel
    assert cgroup(c, "cpu", "cpu.shares") == 3 * CPU_SHARES_PER_SHARE
    assert cgroup(c, "memory", "memory.limit_in_bytes") == 300 * MIB
    assert cgroup(c, "pids", "pids.max") == 200
    assert parent_classid(info["xid"]) in tc.read_classes(nm.cfg.ifb)
    # its account, keys and initscript
    out = ssh(nm.cfg, ssh_key, name, "id -un; ulimit -n; cat /etc/slicectl/identity; "
              "for i in $(seq 50); do [ -f /tmp/stamp ] && break; sleep 0.1; done; "
              "cat /tmp/stamp; pwd")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.split()
    assert lines[0] == name and lines[1] == "1024"
    assert f"slice={name}" in lines and "warm" in lines and lines[-1] == f"/home/{name}"
    # the pool makes up for it, and keeps the sliver's xid out of its own
    wait_for(lambda: ready(nm) == POOL, timeout=90, what="the pool to refill")
    again = pooled(engine, nm)
    assert cid not in again and len(again) == POOL
    assert f"{POOL_PREFIX}{nm.cfg.node_id}-{info['xid']}" not in again.values()


def test_an_rspec_the_pool_was_not_made_for_gets_a_new_container(
        nm: NMHandle, engine: docker.DockerClient, pool: dict[str, str]) -> None:
    info = nm.call("bind", nm.slice("cold"), nm.call("acquire", {"nofile": 4096}))
    assert info["container_id"] not in pool
    assert ready(nm) == POOL and set(pooled(engine, nm)) == set(pool)
    c = engine.containers.get(info["container_id"])
    assert c.labels[LABEL_SLICE] == nm.slice("cold")


def test_nothing_is_left_of_a_destroyed_pooled_sliver_or_an_unwanted_pool(
        nm: NMHandle, engine: docker.DockerClient, pool: dict[str, str]) -> None:
    name = nm.slice("gone")
    info = nm.call("bind", name, nm.call("acquire", {}))
    assert info["container_id"] in pool
    pool_dir = nm.cfg.state_dir / "pool"
    assert (pool_dir / str(info["xid"]) / "etc" / "identity").is_file()
    nm.call("destroy", name)
    with pytest.raises(docker.errors.NotFound):
        engine.containers.get(info["container_id"])
    assert not (pool_dir / str(info["xid"])).exists()
    assert not (nm.cfg.slivers_dir / name).exists()
    assert parent_classid(info["xid"]) not in tc.read_classes(nm.cfg.ifb)
    out = nm.cli("node", "set", "warm_pool", "0")
    assert out.returncode == 0, out.stderr
    assert pooled(engine, nm) == {}
    assert nm.call("status")["pool_ready"] == 0
    assert sorted(p.name for p in pool_dir.iterdir()) == []


def test_a_killed_node_manager_keeps_its_pool_and_replaces_what_vanished(
        nm: NMHandle, engine: docker.DockerClient, pool: dict[str, str]) -> None:
    nm.kill(signal.SIGKILL)
    gone = sorted(pool)[0]
    engine.containers.get(gone).remove(force=True)
    nm.start()
    wait_for(lambda: ready(nm) == POOL, timeout=90, what="the pool to refill")
    now = pooled(engine, nm)
    assert gone not in now and (set(pool) - {gone}) <= set(now)
    assert "removed pooled sliver" in nm.log()
