"""Dormant slivers: when idleness makes a sliver dormant, what stays, and what wakes it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from slicectl.core.errors import PermissionDenied, StateError, ValidationError
from slicectl.core.idleness import IdleMark, idle_step
from slicectl.node.nm.reconcile import AWAKE, KEEP, reconcile_step
from slicectl.node.nm.views import shown_state
from slicectl.node.store import DORMANT, RUNNING
from tests.unit.nm_fakes import ROOT, FakeNode, bound, fake_node, plain, privileged
from tests.unit.test_nm import row

pytestmark = pytest.mark.unit

T0 = 1_800_000_000.0


@pytest.mark.parametrize(("mark", "now", "pids", "sent", "after", "expect"), [
    # never: the setting is 0
    (IdleMark(T0, None), T0 + 999, 2, None, 0, (None, False)),
    # a first idle look starts the mark
    (None, T0, 2, (10, 1), 60, (IdleMark(T0, (10, 1)), False)),
    # idle since T0, not yet long enough
    (IdleMark(T0, (10, 1)), T0 + 59, 2, (10, 1), 60, (IdleMark(T0, (10, 1)), False)),
    # idle long enough
    (IdleMark(T0, (10, 1)), T0 + 60, 2, (10, 1), 60, (IdleMark(T0, (10, 1)), True)),
    # it sent something since the mark: idleness starts again now
    (IdleMark(T0, (10, 1)), T0 + 90, 2, (80, 2), 60, (IdleMark(T0 + 90, (80, 2)), False)),
    # a process besides its init (a login, a daemon): not idle
    (IdleMark(T0, (10, 1)), T0 + 90, 3, (10, 1), 60, (None, False)),
    # its processes cannot be read (it is not running): not idle
    (IdleMark(T0, (10, 1)), T0 + 90, None, (10, 1), 60, (None, False)),
    # never sent anything at all: still idle
    (IdleMark(T0, None), T0 + 60, 1, None, 60, (IdleMark(T0, None), True)),
])
def test_idle_step(mark: IdleMark | None, now: float, pids: int | None,
                   sent: tuple[int, int] | None, after: int,
                   expect: tuple[IdleMark | None, bool]) -> None:
    assert idle_step(mark, now, pids, sent, after) == expect


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def node(tmp_path: Path) -> FakeNode:
    return fake_node(tmp_path, now=T0)


def idle_node(node: FakeNode, after: int = 60) -> Clock:
    clock = Clock()
    node.nm.dormancy.clock = clock
    node.nm.set_node(ROOT, "dormant_after_s", after)
    return clock


def look(node: FakeNode, clock: Clock, at: float) -> list[str]:
    clock.now = T0 + at
    return node.nm.dormancy.check()[1]


def test_an_idle_sliver_becomes_dormant_and_keeps_everything_but_its_run(node: FakeNode) -> None:
    clock = idle_node(node)
    bound(node, "pl_a", net_min_kbit=100, tcp_ports=[40001])
    assert look(node, clock, 0) == []
    assert look(node, clock, 59) == []
    assert look(node, clock, 60) == ["pl_a"]
    assert node.engine.containers["sliver-pl_a"].status == "exited"
    assert node.store.get_sliver("pl_a").state == DORMANT
    assert node.store.get_sliver("pl_a").desired == RUNNING
    assert node.net.parked == ["pl_a"]
    assert "pl_a" in node.net.attached, "its classes stay"
    assert "pl_a" in node.net.ports, "its reserved ports stay"
    view = node.nm.get_sliver(ROOT, "pl_a")
    assert view.state == "dormant" and view.desired == "running"
    assert [s.state for s in node.nm.list_slivers(ROOT)] == ["dormant"]
    assert node.nm.status(ROOT)["dormant"] == 1
    assert look(node, clock, 500) == [], "a dormant sliver is not looked at again"


def test_activity_keeps_a_sliver_awake(node: FakeNode) -> None:
    clock = idle_node(node)
    bound(node, "pl_login")
    bound(node, "pl_talks")
    bound(node, "pl_quiet")
    cid = node.store.get_sliver("pl_login").container_id
    assert look(node, clock, 0) == []
    node.engine.pids[cid] = 5  # somebody logged in
    node.net.sent_by["pl_talks"] = (1500, 1)
    assert look(node, clock, 30) == []
    node.net.sent_by["pl_talks"] = (3000, 2)
    assert look(node, clock, 60) == ["pl_quiet"]
    node.engine.pids[cid] = 2  # logged out after the look at 60
    assert look(node, clock, 89) == []
    assert look(node, clock, 120) == ["pl_talks"], "idle for 60 s since it last sent"
    assert look(node, clock, 148) == []
    assert look(node, clock, 149) == ["pl_login"], "idle for 60 s since a look saw it idle"


def test_the_setting_is_validated_and_zero_means_never(node: FakeNode) -> None:
    for bad in (-1, "60", True, 10**9):
        with pytest.raises(ValidationError, match="dormant_after_s"):
            node.nm.set_node(ROOT, "dormant_after_s", bad)
    with pytest.raises(PermissionDenied):
        node.nm.set_node(privileged("pl_agent"), "dormant_after_s", 60)
    clock = idle_node(node, after=0)
    bound(node, "pl_a")
    assert look(node, clock, 0) == [] and look(node, clock, 10**6) == []
    assert node.nm.status(ROOT)["dormant_after_s"] == 0


def test_wake_starts_a_dormant_sliver_with_its_limits_and_network(node: FakeNode) -> None:
    clock = idle_node(node)
    bound(node, "pl_a")
    look(node, clock, 0)
    look(node, clock, 60)
    node.engine.calls.clear()
    assert node.nm.wake(ROOT, "pl_a") is True
    assert node.engine.calls == [("start", "sliver-pl_a"), ("confine", "sliver-pl_a")]
    assert node.store.get_sliver("pl_a").state == RUNNING
    assert node.nm.get_sliver(ROOT, "pl_a").state == "running"
    assert node.nm.wake(ROOT, "pl_a") is False, "waking a running sliver only counts a use"
    assert look(node, clock, 61) == []
    assert look(node, clock, 120) == []
    assert look(node, clock, 121) == ["pl_a"]


def test_a_wake_during_a_look_keeps_the_sliver_awake(node: FakeNode) -> None:
    clock = idle_node(node)
    bound(node, "pl_a")
    look(node, clock, 0)
    real = node.engine.pid_counts

    def racing(parent: str, ids: list[str]) -> dict[str, int]:
        node.nm.wake(ROOT, "pl_a")  # a login's wake lands between the look and the stop
        return real(parent, ids)

    node.engine.pid_counts = racing  # type: ignore[method-assign]
    assert look(node, clock, 60) == []
    assert node.engine.containers["sliver-pl_a"].status == "running"


def test_start_wakes_a_dormant_sliver_and_stop_keeps_it_down(node: FakeNode) -> None:
    clock = idle_node(node)
    bound(node, "pl_a")
    bound(node, "pl_b")
    look(node, clock, 0)
    assert sorted(look(node, clock, 60)) == ["pl_a", "pl_b"]
    assert node.nm.start(ROOT, "pl_a").state == "running"
    assert node.store.get_sliver("pl_a").state == RUNNING
    assert node.nm.stop(ROOT, "pl_b").state == "exited"
    assert node.store.get_sliver("pl_b").state == "stopped"
    with pytest.raises(StateError, match="expected a sliver meant to run"):
        node.nm.wake(ROOT, "pl_b")


def test_only_root_or_the_creator_may_wake(node: FakeNode) -> None:
    idle_node(node)
    bound(node, "pl_mine", by=privileged("pl_agent"))
    with pytest.raises(PermissionDenied):
        node.nm.wake(plain("pl_mine"), "pl_mine")
    with pytest.raises(PermissionDenied):
        node.nm.wake(privileged("pl_other"), "pl_mine")
    assert node.nm.wake(privileged("pl_agent"), "pl_mine") is False


@pytest.mark.parametrize(("summary", "step"), [
    ({"State": "exited"}, KEEP),
    ({"State": "running"}, AWAKE),
])
def test_reconcile_step_of_a_dormant_sliver(summary: dict[str, Any], step: str) -> None:
    assert reconcile_step(row(DORMANT, RUNNING), summary) == step


def test_reconcile_keeps_dormant_slivers_down(node: FakeNode) -> None:
    clock = idle_node(node)
    bound(node, "pl_a")
    bound(node, "pl_b")
    look(node, clock, 0)
    look(node, clock, 60)
    node.engine.containers["sliver-pl_b"].status = "running"  # started from outside
    node.net.attached.clear()
    assert node.nm.reconcile() == ["pl_b is running again"]
    assert node.engine.containers["sliver-pl_a"].status == "exited"
    assert node.store.get_sliver("pl_a").state == DORMANT
    assert node.store.get_sliver("pl_b").state == RUNNING
    assert sorted(node.net.attached) == ["pl_b"], "the woken one gets its network again"


def test_the_engine_starting_a_dormant_sliver_makes_it_running(node: FakeNode) -> None:
    clock = idle_node(node)
    bound(node, "pl_a")
    look(node, clock, 0)
    look(node, clock, 60)
    node.engine.containers["sliver-pl_a"].status = "running"
    node.nm.sliver_started("pl_a")
    assert node.store.get_sliver("pl_a").state == RUNNING


@pytest.mark.parametrize(("kept", "engine", "shown"), [
    (DORMANT, "exited", "dormant"),
    (DORMANT, "running", "running"),
    (RUNNING, "exited", "exited"),
    ("stopped", "exited", "exited"),
])
def test_shown_state(kept: str, engine: str, shown: str) -> None:
    assert shown_state(kept, engine) == shown


def test_a_connection_to_a_reserved_port_wakes_only_a_dormant_sliver(node: FakeNode) -> None:
    clock = idle_node(node)
    bound(node, "pl_web", tcp_ports=[8080])
    bound(node, "pl_off")
    look(node, clock, 0)
    assert sorted(look(node, clock, 60)) == ["pl_off", "pl_web"]
    node.nm.stop(ROOT, "pl_off")
    node.engine.calls.clear()
    node.nm.wake_on_connection("pl_off")     # stopped by its creator: stays stopped
    node.nm.wake_on_connection("pl_gone")    # no such sliver: nothing
    assert node.engine.calls == []
    node.nm.wake_on_connection("pl_web")
    assert node.engine.calls == [("start", "sliver-pl_web"), ("confine", "sliver-pl_web")]
    assert node.store.get_sliver("pl_web").state == RUNNING
    node.nm.wake_on_connection("pl_web")     # a second logged packet: already up
    assert len(node.engine.calls) == 2


def test_reconcile_parks_the_dormant_slivers_of_a_restarted_node_manager(
        node: FakeNode) -> None:
    clock = idle_node(node)
    bound(node, "pl_a", tcp_ports=[8080])
    look(node, clock, 0)
    look(node, clock, 60)
    node.net.parked.clear()
    assert node.nm.reconcile() == []
    assert node.net.parked == ["pl_a"]


def test_a_use_between_the_look_and_the_stop_keeps_the_sliver_awake(node: FakeNode) -> None:
    clock = idle_node(node)
    bound(node, "pl_a")
    look(node, clock, 0)
    real = node.nm.slivers.locked

    @contextmanager
    def used_first(name: str) -> Iterator[None]:
        node.nm.dormancy.used(name)  # a login's wake got in just before the stop's lock
        with real(name):
            yield

    node.nm.slivers.locked = used_first  # type: ignore[method-assign]
    assert look(node, clock, 60) == []
    assert node.engine.containers["sliver-pl_a"].status == "running"
