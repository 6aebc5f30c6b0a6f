"""The node manager's decisions, on fakes at the engine/kernel boundary and a real store."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from slicectl.core.containerplan import ContainerPlan
from slicectl.core.errors import (
    AdmissionError,
    EngineError,
    PermissionDenied,
    SlicectlError,
    StateError,
    UsageError,
    ValidationError,
)
from slicectl.node.nm.api import NodeManagerAPI, check_arguments
from slicectl.node.nm.callers import Caller, Callers
from slicectl.node.nm.reconcile import (
    CREATE,
    FINISH_DESTROY,
    KEEP,
    RECREATE,
    START,
    reconcile_step,
)
from slicectl.node.store import CREATING, RUNNING, STOPPED, SliverRow
from tests.unit.nm_fakes import (
    END,
    ROOT,
    SERVICE,
    FakeNode,
    bound,
    fake_node,
    pinned,
    plain,
    privileged,
)


@pytest.fixture
def node(tmp_path: Path) -> FakeNode:
    return fake_node(tmp_path)


# admission --------------------------------------------------------------------------

@pytest.mark.parametrize(("caller", "rspec", "error", "match"), [
    (ROOT, {"cpu_share": 1001}, SlicectlError, "cpu_share"),
    (plain("pl_x"), {}, PermissionDenied, "nm_privileged"),
    (SERVICE, {}, PermissionDenied, "nm_privileged"),
    (ROOT, {"tcp_ports": [22]}, AdmissionError, "22"),
    (ROOT, {"net_min_kbit": 200_000}, SlicectlError, "net_min_kbit"),
    # a privileged slice gets no more than it holds: rights only root grants
    (privileged("pl_agent"), {"nm_privileged": True}, PermissionDenied,
     "^nm_privileged: expected false, only the node's root may grant it, found true asked "
     "by slice:pl_agent"),
    (privileged("pl_agent"), {"admin_sniffer": True}, PermissionDenied, "^admin_sniffer"),
    (privileged("pl_agent"), {"tcp_ports": [80]}, AdmissionError, "node service port"),
    (ROOT, {"mem_mb": 24_001}, AdmissionError, "mem_mb: asked for 24001, but the node has"),
])
def test_acquire_refusals(node: FakeNode, caller: Caller, rspec: dict[str, Any],
                          error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        node.nm.acquire(caller, {"end": END, **rspec})
    assert node.store.rcaps() == []


def test_admission_sums_outstanding_shares(node: FakeNode) -> None:
    node.nm.acquire(ROOT, {"end": END, "cpu_share": 600})
    with pytest.raises(AdmissionError, match="cpu_share"):
        node.nm.acquire(ROOT, {"end": END, "cpu_share": 500})
    node.nm.acquire(ROOT, {"end": END, "cpu_share": 400})


def test_root_grants_rights_a_privileged_slice_may_not(node: FakeNode) -> None:
    rcap = node.nm.acquire(ROOT, {"end": END, "nm_privileged": True, "admin_sniffer": True})
    assert node.store.get_rcap(rcap).rspec.nm_privileged


def test_admission_sums_memory_with_the_overcommit(node: FakeNode) -> None:
    node.nm.acquire(ROOT, {"end": END, "mem_mb": 24_000})   # the fake node has 24,000 MB, 2x
    node.nm.acquire(ROOT, {"end": END, "mem_mb": 23_000, "cpu_share": 1})
    with pytest.raises(AdmissionError, match="^mem_mb: asked for 1024, but only 1000 of 24000 MB"):
        node.nm.acquire(ROOT, {"end": END, "mem_mb": 1024})


def test_a_port_the_host_listens_on_cannot_be_reserved(node: FakeNode) -> None:
    node.nm.rcaps.host_ports = lambda: frozenset({("tcp", 8080)})
    with pytest.raises(AdmissionError, match="^tcp_ports: port 8080 has a listener on the "):
        node.nm.acquire(ROOT, {"end": END, "tcp_ports": [8080]})
    node.nm.acquire(ROOT, {"end": END, "udp_ports": [8080]})


def test_a_privileged_slice_cannot_squat_another_creators_name(node: FakeNode) -> None:
    a, b = privileged("pl_agent"), privileged("pl_other")
    node.nm.bind(a, "pl_x", node.nm.acquire(a, {"end": END}))
    node.nm.destroy(a, "pl_x")
    rcap = node.nm.acquire(b, {"end": END})
    with pytest.raises(PermissionDenied, match="^slice pl_x: the name belongs to slice:pl_agent"):
        node.nm.bind(b, "pl_x", rcap)
    assert node.store.find_sliver("pl_x") is None and node.store.get_rcap(rcap).slice is None
    with pytest.raises(PermissionDenied, match="belongs to slice:pl_agent"):
        node.nm.release_name(b, "pl_x")
    node.nm.release_name(a, "pl_x")        # its owner gives it up
    node.nm.bind(b, "pl_x", rcap)
    assert node.store.name_owner("pl_x") == "slice:pl_other"


def test_a_failed_first_bind_keeps_no_name(node: FakeNode) -> None:
    node.engine.fail_start.add("sliver-pl_a")
    with pytest.raises(SlicectlError):
        bound(node, "pl_a", by=privileged("pl_agent"))
    assert node.store.name_owner("pl_a") is None


# bind ---------------------------------------------------------------------------------

def test_bind_creates_starts_and_attaches(node: FakeNode) -> None:
    bound(node, "pl_a", cpu_share=3)
    assert [c for c in node.engine.calls if c[0] in ("create", "start")] == [
        ("create", "sliver-pl_a"), ("start", "sliver-pl_a")]
    assert "pl_a" in node.accounts.users and "pl_a" in node.net.attached
    assert node.net.attached["pl_a"].rspec.cpu_share == 3
    assert node.net.port_syncs[-1] == ["pl_a"]
    row = node.store.get_sliver("pl_a")
    assert (row.state, row.desired, row.created_by) == (RUNNING, RUNNING, "root")
    assert node.accounts.logins["pl_a"] == node.engine.containers["sliver-pl_a"].id


def test_bind_reads_the_slice_rcaps_once(node: FakeNode, monkeypatch: pytest.MonkeyPatch) -> None:
    rcap = node.nm.acquire(ROOT, {"end": END})
    reads: list[str | None] = []
    real = node.store.rcaps

    def counting(slice_name: str | None = None) -> Any:
        reads.append(slice_name)
        return real(slice_name)

    monkeypatch.setattr(node.store, "rcaps", counting)
    node.nm.slivers.bind(ROOT, "pl_a", rcap, None)
    assert reads.count("pl_a") == 1
    assert None not in reads, "a bind read every slice's rcaps"


def test_the_engines_start_event_of_a_sliver_just_bound_does_not_attach_it_again(
        node: FakeNode) -> None:
    bound(node, "pl_a")
    confines = node.engine.calls.count(("confine", "sliver-pl_a"))
    node.nm.sliver_started("pl_a")  # the event of the start bind itself made
    assert node.engine.calls.count(("confine", "sliver-pl_a")) == confines
    node.net.attached.clear()
    node.engine.containers["sliver-pl_a"].status = "exited"
    node.nm.sliver_started("pl_a")  # not running: nothing to attach
    node.engine.containers["sliver-pl_a"].status = "running"
    node.nm.slivers._attached["pl_a"] = 1  # the engine restarted it: a new init
    node.nm.sliver_started("pl_a")
    assert node.engine.calls.count(("confine", "sliver-pl_a")) == confines + 1
    assert "pl_a" in node.net.attached


def test_a_bind_changes_the_port_rules_of_its_own_slice_only(node: FakeNode) -> None:
    bound(node, "pl_web", tcp_ports=[8080])
    bound(node, "pl_idle")
    assert set(node.net.ports) == {"pl_web", "pl_idle"}
    assert node.net.port_syncs.count(["pl_idle", "pl_web"]) == 1  # no rebuild from all
    node.nm.destroy(ROOT, "pl_web")
    assert set(node.net.ports) == {"pl_idle"}


def test_bind_onto_an_existing_sliver_adds_resources(node: FakeNode) -> None:
    bound(node, "pl_a", cpu_share=2)
    extra = node.nm.acquire(ROOT, {"end": END, "cpu_share": 5, "create_vm": False})
    info = node.nm.bind(ROOT, "pl_a", extra, {"keys": ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIE"
                                                      "xampleKeyForTestsOnlyxxxxxxxxxxxxxxxxxxxxxxx"]})
    assert [c for c in node.engine.calls if c[0] == "create"] == [("create", "sliver-pl_a")]
    assert node.engine.containers["sliver-pl_a"].resources["cpu_shares"] == 7 * 256
    assert info.rspec["cpu_share"] == 7 and len(info.rcaps) == 2
    assert node.accounts.keys["pl_a"][0].startswith("ssh-ed25519 ")


def test_bind_without_create_vm_needs_a_sliver(node: FakeNode) -> None:
    rcap = node.nm.acquire(ROOT, {"end": END, "create_vm": False})
    with pytest.raises(StateError, match="create_vm false"):
        node.nm.bind(ROOT, "pl_a", rcap)
    assert node.store.get_rcap(rcap).slice is None
    assert node.store.slivers() == [] and node.engine.calls == []


def test_a_failed_bind_leaves_nothing(node: FakeNode) -> None:
    node.engine.fail_start.add("sliver-pl_a")
    rcap = node.nm.acquire(ROOT, {"end": END})
    with pytest.raises(EngineError, match="could not start"):
        node.nm.bind(ROOT, "pl_a", rcap)
    assert node.store.get_rcap(rcap).slice is None
    assert node.store.find_sliver("pl_a") is None
    assert node.engine.containers == {} and node.accounts.users == {}
    assert "pl_a" not in node.net.attached and node.net.port_syncs[-1] == []


def test_a_sliver_whose_rcaps_are_going_is_left_out_of_the_list(node: FakeNode) -> None:
    """A destroy (or a lease's end) removes the rcaps first: a list at that moment skips
    the sliver rather than failing for every sliver of the node."""
    bound(node, "pl_going")
    bound(node, "pl_stays")
    for row in node.store.rcaps("pl_going"):
        node.store.delete_rcap(row.rcap)
    assert [s.name for s in node.nm.list_slivers(ROOT)] == ["pl_stays"]


def test_a_privileged_slice_manages_only_what_it_created(node: FakeNode) -> None:
    agent = privileged("pl_agent")
    bound(node, "pl_mine", by=agent)
    bound(node, "pl_theirs")
    assert [s.name for s in node.nm.list_slivers(agent)] == ["pl_mine"]
    with pytest.raises(PermissionDenied, match="did not create it"):
        node.nm.destroy(agent, "pl_theirs")
    rcap = node.nm.acquire(agent, {"end": END})
    with pytest.raises(PermissionDenied, match="did not create it"):
        node.nm.bind(agent, "pl_theirs", rcap)
    assert node.nm.destroy(agent, "pl_mine") is True


# destroy and stop ---------------------------------------------------------------------

def test_destroy_records_its_intent_before_removing(node: FakeNode) -> None:
    bound(node, "pl_a")
    seen: list[str] = []
    node.engine.on_remove.append(lambda name: seen.append(node.store.get_sliver("pl_a").desired))
    node.nm.destroy(ROOT, "pl_a")
    assert seen == ["destroyed"]
    assert node.store.find_sliver("pl_a") is None and node.store.rcaps() == []
    assert node.accounts.users == {} and node.net.port_syncs[-1] == []


def test_stop_and_start(node: FakeNode) -> None:
    bound(node, "pl_a")
    assert node.nm.stop(ROOT, "pl_a").state == "exited"
    assert node.store.get_sliver("pl_a").desired == STOPPED
    assert node.nm.start(ROOT, "pl_a").state == "running"


# reconcile ------------------------------------------------------------------------------

def row(state: str, desired: str) -> SliverRow:
    return SliverRow(slice="pl_a", xid=1, uid=20000, state=state, desired=desired,
                     container_id="c", created_by="root", created=0.0, description="",
                     contacts=[], keys=[], initscript="")


@pytest.mark.parametrize(("state", "desired", "summary", "step"), [
    (RUNNING, "destroyed", {"State": "running"}, FINISH_DESTROY),
    (CREATING, RUNNING, None, CREATE),
    (CREATING, RUNNING, {"State": "created"}, CREATE),
    (RUNNING, RUNNING, None, RECREATE),
    (STOPPED, STOPPED, None, RECREATE),
    (RUNNING, RUNNING, {"State": "exited"}, START),
    (RUNNING, RUNNING, {"State": "running"}, KEEP),
    (STOPPED, STOPPED, {"State": "exited"}, KEEP),
])
def test_reconcile_step(state: str, desired: str, summary: dict[str, Any] | None,
                        step: str) -> None:
    assert reconcile_step(row(state, desired), summary) == step


def test_reconcile_restores_the_database_view(node: FakeNode) -> None:
    bound(node, "pl_lost")
    bound(node, "pl_down")
    bound(node, "pl_gone")
    node.engine.containers.pop("sliver-pl_lost")
    node.engine.containers["sliver-pl_down"].status = "exited"
    node.store.update_sliver("pl_gone", desired="destroyed")
    node.engine.create(ContainerPlan("sliver-pl_orphan", "img",
                                     {"labels": {"org.slicectl.slice": "pl_orphan"}}))
    node.accounts.users["pl_stray"] = 1
    actions = node.nm.reconcile()
    assert set(actions) == {"recreated pl_lost", "started pl_down", "finished destroying pl_gone",
                            "removed orphan container sliver-pl_orphan",
                            "removed orphan account pl_stray"}
    assert sorted(node.engine.containers) == ["sliver-pl_down", "sliver-pl_lost"]
    assert all(c.status == "running" for c in node.engine.containers.values())
    assert node.nm.reconcile() == []


def test_expiry_destroys_a_sliver_left_without_rcaps(tmp_path: Path) -> None:
    node = fake_node(tmp_path)
    rcap = node.nm.acquire(ROOT, {"end": "2027-01-15T09:00:00Z"})
    node.nm.bind(ROOT, "pl_a", rcap)
    assert node.nm.expire() == []
    node.nm.rcaps.clock = node.nm.reconciler.clock = lambda: 1_900_000_000.0
    assert node.nm.expire() == ["expired slice pl_a"]
    assert node.store.find_sliver("pl_a") is None and node.engine.containers == {}


# who may call what ------------------------------------------------------------------

@pytest.mark.parametrize(("who", "method", "allowed"), [
    ("root", "net_map", True), ("agent", "net_map", False), ("service", "net_map", False),
    ("root", "net_map_since", True), ("agent", "net_map_since", False),
    ("plain", "net_map_since", False),
    ("root", "list_claims", True), ("agent", "list_claims", True), ("plain", "list_claims", False),
    ("root", "set_node", True), ("agent", "set_node", False),
    ("root", "list_rcaps", True), ("agent", "list_rcaps", True), ("plain", "list_rcaps", False),
    ("service", "list_slivers", True), ("plain", "list_slivers", False),
    ("plain", "get_own_sliver", True), ("service", "get_own_sliver", True),
    ("other", "get_own_sliver", False), ("agent", "get_keys", False), ("root", "get_keys", True),
])
def test_who_may_call_what(node: FakeNode, who: str, method: str, allowed: bool) -> None:
    bound(node, "pl_plain")
    caller = {"root": ROOT, "agent": privileged("pl_agent"), "plain": plain("pl_plain"),
              "other": plain("pl_other"), "service": SERVICE}[who]
    calls = {
        "net_map": lambda: node.nm.net_map(caller),
        "net_map_since": lambda: node.nm.net_map_since(caller, -1),
        "list_claims": lambda: node.nm.list_claims(caller),
        "set_node": lambda: node.nm.set_node(caller, "net_cap_kbit", 50_000),
        "list_rcaps": lambda: node.nm.list_rcaps(caller),
        "list_slivers": lambda: node.nm.list_slivers(caller),
        "get_own_sliver": lambda: node.nm.get_sliver(caller, "pl_plain"),
        "get_keys": lambda: node.nm.get_keys(caller, "pl_plain"),
    }
    if allowed:
        calls[method]()
    else:
        with pytest.raises(PermissionDenied):
            calls[method]()


def test_the_net_map_comes_only_when_it_may_have_changed(node: FakeNode) -> None:
    first = node.nm.net_map_since(ROOT, -1)
    assert first["changed"] and first["entries"] == []
    same = node.nm.net_map_since(ROOT, first["generation"])
    assert same == {"generation": first["generation"], "changed": False, "entries": []}
    bound(node, "pl_a")
    after = node.nm.net_map_since(ROOT, first["generation"])
    assert after["changed"] and [e.slice for e in after["entries"]] == ["pl_a"]
    assert after["entries"] == node.nm.net_map(ROOT)
    # what the map is made of moves it: a sliver's row, an rcap's; a destroy too
    g = after["generation"]
    node.nm.destroy(ROOT, "pl_a")
    gone = node.nm.net_map_since(ROOT, g)
    assert gone["changed"] and gone["entries"] == [] and gone["generation"] > g
    # other writes (events, settings) do not
    g = gone["generation"]
    node.nm.set_node(ROOT, "net_cap_kbit", 50_000)
    assert not node.nm.net_map_since(ROOT, g)["changed"]
    with pytest.raises(ValidationError, match="generation: expected an integer"):
        node.nm.net_map_since(ROOT, "7")


def test_the_sniffers_poller_passes_on_only_a_changed_map() -> None:
    from slicectl.node.sniffer import MapPoller

    answers = [{"generation": 3, "changed": True, "entries": [{"slice": "pl_a"}]},
               {"generation": 3, "changed": False, "entries": []},
               {"generation": 5, "changed": True, "entries": []}]
    asked: list[object] = []

    def call(method: str, generation: object) -> dict[str, object]:
        asked.append((method, generation))
        return answers.pop(0)

    poll = MapPoller(call)
    assert poll() == [{"slice": "pl_a"}] and poll() is None and poll() == []
    assert asked == [("net_map_since", -1), ("net_map_since", 3), ("net_map_since", 3)]


def test_service_callers_get_reads_only(node: FakeNode) -> None:
    node.engine.services["e" * 64] = "sensors"
    api = NodeManagerAPI(node.nm)
    assert api("status", (), pinned(0, "e" * 64))["caller"] == "service:sensors"
    with pytest.raises(PermissionDenied, match="may call only"):
        api("acquire", ({},), pinned(0, "e" * 64))


@pytest.mark.parametrize(("uid", "container", "alive", "same_ns", "expect"), [
    (0, None, True, True, "root"),
    (1000, None, True, True, "expected root, found another user"),
    (0, None, False, True, "found it exited"),          # connected, then exited
    (0, None, True, False, "another pid namespace"),    # a host process we cannot place
    (0, "a" * 64, True, True, "slice:pl_a"),
    (0, "a" * 64, False, True, "found it exited"),      # fork, connect, exit: not the parent
    (0, "b" * 64, True, True, "service:auditd"),
    (0, "c" * 64, True, True, "no sliver or service of this node"),
])
def test_identify_callers(uid: int, container: str | None, alive: bool, same_ns: bool,
                          expect: str) -> None:
    sliver = replace(row(RUNNING, RUNNING), container_id="a" * 64)
    callers = Callers({"a" * 64: sliver}.get, lambda s: (False, False), {"b" * 64: "auditd"}.get)
    peer = pinned(uid, container, alive, same_ns)
    if ":" in expect or expect == "root":
        assert callers.identify(peer).name == expect
    else:
        with pytest.raises(PermissionDenied, match=expect):
            callers.identify(peer)


# the RPC face -----------------------------------------------------------------------

def test_wrong_argument_count_is_the_callers_fault(node: FakeNode) -> None:
    with pytest.raises(UsageError, match=r"^bind: expected arguments \(slice_name, rcap, attrs\)"):
        check_arguments("bind", node.nm.bind, ())
    check_arguments("bind", node.nm.bind, ("pl_a", "0" * 32))


def test_a_type_error_inside_a_method_is_not_called_the_callers(node: FakeNode) -> None:
    api = NodeManagerAPI(node.nm)

    def broken(caller: Caller) -> None:
        raise TypeError("a bug")

    node.nm.status = broken  # type: ignore[method-assign]
    with pytest.raises(TypeError, match="a bug"):
        api("status", (), pinned())


def test_set_info_changes_description_and_contacts_only(node: FakeNode) -> None:
    agent = privileged("pl_agent")
    bound(node, "pl_mine", by=agent)
    bound(node, "pl_theirs")
    assert node.nm.set_info(agent, "pl_mine", {"description": "d", "contacts": ["a@b.org"]})
    view = node.nm.get_sliver(agent, "pl_mine")
    assert (view.description, view.contacts) == ("d", ["a@b.org"])
    with pytest.raises(ValidationError, match="info: expected a struct of description"):
        node.nm.set_info(agent, "pl_mine", {"keys": []})
    with pytest.raises(ValidationError, match=r"contacts\[0\]"):
        node.nm.set_info(agent, "pl_mine", {"contacts": ["nobody"]})
    with pytest.raises(PermissionDenied, match="did not create it"):
        node.nm.set_info(agent, "pl_theirs", {"description": "mine now"})
