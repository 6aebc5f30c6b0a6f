"""The node manager dies, restarts, and finds the engine out of step: nothing is lost,
nothing is orphaned, nothing is bound twice. Also expiry."""

from __future__ import annotations

import contextlib
import signal
import sqlite3
import threading
import time
from typing import Any

import docker
import pytest

from slicectl.core.errors import SlicectlError

from .conftest import NMHandle, wait_for


def our_containers(engine: docker.DockerClient, nm: NMHandle) -> list[Any]:
    return engine.containers.list(all=True, filters={"label": f"org.slicectl.node={nm.cfg.node_id}"})


def db_rows(nm: NMHandle, sql: str) -> list[tuple[Any, ...]]:
    db = sqlite3.connect(str(nm.cfg.db_path), timeout=10)
    try:
        return db.execute(sql).fetchall()
    finally:
        db.close()




def test_restart_leaves_slivers_running_and_rcaps_valid(nm: NMHandle,
                                                         engine: docker.DockerClient) -> None:
    name = nm.slice("keep")
    info = nm.call("bind", name, nm.call("acquire", {"cpu_share": 5}))
    spare = nm.call("acquire", {"cpu_share": 7})
    c = engine.containers.get(info["container_id"])
    started_at = c.attrs["State"]["StartedAt"]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        nm.kill(sig)
        c.reload()
        assert c.status == "running"  # slivers do not depend on the NM process
        nm.start()
    c.reload()
    assert c.attrs["State"]["StartedAt"] == started_at  # not restarted, just found
    assert nm.call("get_sliver", name)["state"] == "running"
    assert nm.call("rcap_info", spare)["state"] == "usable"
    assert [x.id for x in our_containers(engine, nm)] == [c.id]
    nm.call("bind", name, spare)  # the unbound rcap still works after two restarts
    assert nm.call("get_sliver", name)["rspec"]["cpu_share"] == 12


@pytest.mark.parametrize("delay_s", [0.0, 0.02, 0.06, 0.12, 0.25])
def test_kill_during_bind(nm: NMHandle, engine: docker.DockerClient, delay_s: float) -> None:
    """SIGKILL at several points of a bind: after restart the bind either happened once,
    fully, or not at all; no orphan container or account is left."""
    name = nm.slice("crash")
    rcap = nm.call("acquire", {"cpu_share": 3})
    errors: list[BaseException] = []

    def bind() -> None:
        try:
            nm.call("bind", name, rcap)
        except (SlicectlError, OSError) as e:
            errors.append(e)

    t = threading.Thread(target=bind)
    t.start()
    time.sleep(delay_s)
    nm.kill(signal.SIGKILL)
    t.join(30)
    nm.start()
    bound = db_rows(nm, f"SELECT slice FROM rcaps WHERE rcap = '{rcap}'")
    slivers = db_rows(nm, "SELECT slice, state FROM slivers")
    containers = our_containers(engine, nm)
    if bound == [(name,)]:
        # The bind was recorded: reconcile finished it.
        assert slivers == [(name, "running")]
        assert len(containers) == 1 and containers[0].status == "running"
        assert nm.call("get_sliver", name)["state"] == "running"
    else:
        # Not recorded: nothing of it may exist, and the rcap is still usable.
        assert bound == [(None,)]
        assert slivers == []
        assert containers == []
        assert nm.call("rcap_info", rcap)["state"] == "usable"
        nm.call("bind", name, rcap)
    assert len(our_containers(engine, nm)) == 1
    assert len(db_rows(nm, "SELECT rcap FROM rcaps WHERE slice IS NOT NULL")) == 1


def test_kill_after_container_created(nm: NMHandle, engine: docker.DockerClient) -> None:
    """Kill exactly when the container exists: reconcile adopts it instead of making another."""
    name = nm.slice("adopt")
    rcap = nm.call("acquire", {})
    def bind() -> None:
        with contextlib.suppress(SlicectlError, OSError):
            nm.call("bind", name, rcap)

    t = threading.Thread(target=bind)
    t.start()
    wait_for(lambda: bool(our_containers(engine, nm)), what="the sliver container")
    nm.kill(signal.SIGKILL)
    t.join(30)
    first = our_containers(engine, nm)[0].id
    nm.start()
    cs = our_containers(engine, nm)
    assert [c.id for c in cs] == [first]
    assert cs[0].status == "running"
    assert db_rows(nm, "SELECT slice, state FROM slivers") == [(name, "running")]


def test_reconcile_repairs_the_engine(nm: NMHandle, engine: docker.DockerClient) -> None:
    lost = nm.slice("lost")
    down = nm.slice("down")
    nm.call("bind", lost, nm.call("acquire", {}))
    nm.call("bind", down, nm.call("acquire", {}))
    nm.stop()
    # Behind the NM's back: remove one sliver, stop another, add a stray labelled container.
    engine.containers.get(f"sliver-{lost}").remove(force=True)
    engine.containers.get(f"sliver-{down}").stop(timeout=1)
    stray = engine.containers.create(
        "slicectl/reference:latest", name=f"sliver-{nm.slice('stray')}",
        labels={"org.slicectl.node": nm.cfg.node_id, "org.slicectl.kind": "sliver",
                "org.slicectl.slice": nm.slice("stray")})
    nm.start()
    states = {s["name"]: s["state"] for s in nm.call("list")}
    assert states == {lost: "running", down: "running"}
    with pytest.raises(docker.errors.NotFound):
        engine.containers.get(stray.id)
    assert "recreated " + lost in nm.log()


def test_destroy_finishes_after_a_crash(nm: NMHandle, engine: docker.DockerClient) -> None:
    name = nm.slice("gone")
    nm.call("bind", name, nm.call("acquire", {}))
    nm.stop()
    # A destroy that recorded its intent and then died.
    db = sqlite3.connect(str(nm.cfg.db_path))
    db.execute("UPDATE slivers SET desired = 'destroyed' WHERE slice = ?", (name,))
    db.commit()
    db.close()
    nm.start()
    assert nm.call("list") == []
    assert our_containers(engine, nm) == []


def test_expiry_stops_and_frees(nm: NMHandle, engine: docker.DockerClient) -> None:
    name = nm.slice("brief")
    nm.call("bind", name, nm.call("acquire", {"cpu_share": 900, "end": "3s"}))
    assert len(our_containers(engine, nm)) == 1
    wait_for(lambda: nm.call("list") == [], timeout=40, what="the sliver to expire")
    assert our_containers(engine, nm) == []
    assert nm.call("list_rcaps") == []
    assert not (nm.cfg.slivers_dir / name).exists()
    nm.call("acquire", {"cpu_share": 1000})  # its shares are free again
