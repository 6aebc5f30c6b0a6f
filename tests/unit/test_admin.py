"""The site's admin sliver: who may grant the ``admin`` right, what the admin caller may
call, the process table it reads and which pids its kills may touch."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from slicectl.core.errors import PermissionDenied, ValidationError
from slicectl.core.procs import (
    HOST,
    Proc,
    inner_pid,
    kill_targets,
    parse_stat,
    proc_row,
    validate_pids,
)
from slicectl.core.rspec import combine, parse_rspec, part_defaults, split
from slicectl.node.nm.api import ADMIN_METHODS, NodeManagerAPI
from slicectl.node.nm.callers import Caller, Callers
from slicectl.node.store import RUNNING, STOPPED
from tests.unit.nm_fakes import END, ROOT, FakeNode, bound, fake_node, pinned, plain, privileged

pytestmark = pytest.mark.unit
NOW = 1_800_000_000.0
AGENT = Caller(uid=0, pid=5, slice="slicectl_agent", privileged=True, agent=True)
ADMIN = Caller(uid=0, pid=6, slice="site_admin", admin=True)


@pytest.fixture
def node(tmp_path: Path) -> FakeNode:
    return fake_node(tmp_path)


# the rspec field ------------------------------------------------------------------------

def test_admin_is_a_bool_field_never_with_nm_privileged() -> None:
    assert parse_rspec({"admin": True}, NOW).admin
    assert not parse_rspec({}, NOW).admin
    with pytest.raises(ValidationError, match="^admin: expected true or false"):
        parse_rspec({"admin": 1}, NOW)
    with pytest.raises(ValidationError, match="^admin: expected false with nm_privileged"):
        parse_rspec({"admin": True, "nm_privileged": True}, NOW)
    assert combine([parse_rspec({}, NOW), parse_rspec({"admin": True}, NOW)]).admin


def test_a_split_never_adds_admin() -> None:
    parent = parse_rspec({"cpu_share": 10}, NOW)
    with pytest.raises(ValidationError, match="^admin: expected false"):
        split(parent, parse_rspec({**part_defaults(parent), "admin": True}, NOW))
    holder = parse_rspec({"cpu_share": 10, "admin": True}, NOW)
    assert part_defaults(holder)["admin"]
    assert split(holder, parse_rspec(part_defaults(holder), NOW)).admin


# who may grant it -----------------------------------------------------------------------

@pytest.mark.parametrize(("caller", "rspec", "match"), [
    (ROOT, {"admin": True, "admin_sniffer": True}, None),
    (AGENT, {"admin": True}, None),
    (AGENT, {"admin": True, "admin_sniffer": True}, None),
    (AGENT, {"admin_sniffer": True}, r"^admin_sniffer: expected false, only the node's root "
     r"\(the node agent only beside admin\) may grant it"),
    (AGENT, {"nm_privileged": True}, "^nm_privileged: expected false"),
    # another privileged slice (a slice creation service) is not the agent
    (privileged("pl_svc"), {"admin": True}, "^admin: expected false, only root or the node "
     "agent may grant it, found true asked by slice:pl_svc$"),
    (ADMIN, {"admin": True}, "nm_privileged"),
    (plain("pl_x"), {"admin": True}, "nm_privileged"),
])
def test_who_may_acquire_admin(node: FakeNode, caller: Caller, rspec: dict[str, Any],
                               match: str | None) -> None:
    if match is None:
        node.nm.acquire(caller, {"end": END, **rspec})
        return
    with pytest.raises(PermissionDenied, match=match):
        node.nm.acquire(caller, {"end": END, **rspec})
    assert node.store.rcaps() == []


@pytest.mark.parametrize(("name", "created_by", "privileged_", "agent"), [
    ("slicectl_agent", "root", True, True),
    ("slicectl_agent", "slice:pl_svc", True, False),  # a squatter's sliver of that name
    ("slicectl_agent", "root", False, False),         # not privileged: not the agent
    ("pl_svc", "root", True, False),
])
def test_the_agent_is_root_made_privileged_and_named(name: str, created_by: str,
                                                     privileged_: bool, agent: bool) -> None:
    from tests.unit.test_nm import row
    sliver = replace(row(RUNNING, RUNNING), slice=name, container_id="a" * 64,
                     created_by=created_by)
    callers = Callers({"a" * 64: sliver}.get, lambda s: (privileged_, False), {}.get,
                      "slicectl_agent")
    assert callers.identify(pinned(0, "a" * 64)).agent is agent


def test_an_admin_sliver_is_never_privileged() -> None:
    from tests.unit.test_nm import row
    sliver = replace(row(RUNNING, RUNNING), slice="site_admin", container_id="a" * 64)
    callers = Callers({"a" * 64: sliver}.get, lambda s: (True, True), {}.get, "slicectl_agent")
    who = callers.identify(pinned(0, "a" * 64))
    assert who.admin and not who.privileged and who.reads_all and not who.is_root


# what the admin caller may call -----------------------------------------------------------

def admin_node(node: FakeNode) -> str:
    """Bind the site's admin sliver (as the agent would) and a slice; the admin's
    container id."""
    bound(node, "site_admin", admin=True, admin_sniffer=True)
    bound(node, "pl_a", by=privileged("pl_svc"))  # a slice creation service's sliver
    return node.store.get_sliver("site_admin").container_id or ""


@pytest.mark.parametrize("method", ["acquire", "bind", "split", "destroy", "set_keys",
                                    "get_keys", "set_node", "release", "set_initscript",
                                    "net_map", "wake", "start", "stop"])
def test_the_admin_caller_cannot_make_key_or_bind(node: FakeNode, method: str) -> None:
    cid = admin_node(node)
    api = NodeManagerAPI(node.nm)
    assert method not in ADMIN_METHODS
    with pytest.raises(PermissionDenied, match=r"^caller slice:site_admin \(the site's admin\): "
                       "may call only"):
        api(method, ("pl_a",), pinned(0, cid))
    # and the manager itself refuses too: the admin is not nm_privileged
    with pytest.raises(PermissionDenied):
        node.nm.destroy(ADMIN, "pl_a")
    with pytest.raises(PermissionDenied):
        node.nm.set_keys(ADMIN, "pl_a", [])
    with pytest.raises(PermissionDenied):
        node.nm.acquire(ADMIN, {"end": END})


def test_the_admin_reads_everything_and_its_actions_are_events(node: FakeNode) -> None:
    cid = admin_node(node)
    api = NodeManagerAPI(node.nm)
    me = pinned(0, cid)
    assert {s["name"] for s in api("list", (), me)} == {"site_admin", "pl_a"}
    assert api("status", (), me)["caller"] == "slice:site_admin"
    assert api("admin_stop", ("pl_a", "runaway"), me)["desired"] == STOPPED
    assert api("get_sliver", ("pl_a",), me)["stopped"]["by"] == "slice:site_admin"
    # the sliver's creator cannot undo the site's stop; root and the admin can
    with pytest.raises(PermissionDenied, match=r"^slice pl_a: the site's admin stopped it "
                       r"\(slice:site_admin at .*: runaway\); only root or the site's admin"):
        node.nm.start(privileged("pl_svc"), "pl_a")
    assert api("admin_start", ("pl_a",), me)["desired"] == RUNNING
    node.nm.stop(ROOT, "pl_a")
    node.nm.start(ROOT, "pl_a")
    node.nm.set_node(ROOT, "net_cap_kbit", 50_000)
    assert api("admin_cap", (20_000, "a flood"), me)["net_cap_kbit"] == 20_000
    got = [(e["who"], e["action"], e["slice"], e["detail"]) for e in api("events", (), me)]
    assert ("slice:site_admin", "admin_stop", "pl_a", "runaway") in got
    assert ("slice:site_admin", "admin_start", "pl_a", "") in got
    assert ("slice:site_admin", "admin_cap", "", "net_cap_kbit=20000: a flood") in got


def test_the_admin_cap_is_bound_by_local_policy(tmp_path: Path) -> None:
    from slicectl.core.policy import parse_policy
    node = fake_node(tmp_path, policy=parse_policy({"net_cap_max_kbit": 30_000}))
    admin_node(node)
    with pytest.raises(ValidationError, match="net_cap_max_kbit"):
        node.nm.admin_cap(ADMIN, 30_001)
    assert node.nm.admin_cap(ADMIN, 30_000)["net_cap_kbit"] == 30_000


def test_the_admin_acts_on_slices_not_on_the_agent_or_itself(node: FakeNode) -> None:
    admin_node(node)
    bound(node, "slicectl_agent", nm_privileged=True)
    for name in ("slicectl_agent", "site_admin"):
        with pytest.raises(PermissionDenied, match=f"^slice {name}: (the node agent's|an admin) "
                           "sliver; the site's admin acts only on slices' slivers"):
            node.nm.admin_stop(ADMIN, name)
    for who in (plain("pl_a"), privileged("pl_svc"), AGENT):
        with pytest.raises(PermissionDenied, match="expected root or a slice with the admin "
                           "right"):
            node.nm.admin_stop(who, "pl_a")
        with pytest.raises(PermissionDenied, match="admin"):
            node.nm.admin_cap(who, 1000)
        with pytest.raises(PermissionDenied, match="admin"):
            node.nm.admin_ps(who)


# the process table ----------------------------------------------------------------------

STAT = ("4242 (py (evil) x) R 1 4242 4242 0 -1 4194304 100 0 0 0 250 50 0 0 20 0 1 0 "
        "1000 12345678 300 18446744073709551615 0 0 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0")


def test_parse_stat_and_a_row() -> None:
    st = parse_stat(STAT)
    assert (st.comm, st.utime, st.stime, st.start, st.rss_pages) == ("py (evil) x", 250, 50,
                                                                    1000, 300)
    p = proc_row(4242, "pl_a", st, 7, b"python3\0-c\0while 1: pass\0", 40.0, 100, 4)
    assert p == Proc(4242, "pl_a", 7, 3.0, 10.0, 1200, "python3 -c while 1: pass")
    # a kernel thread has no command line; control characters are not passed on
    assert proc_row(2, HOST, st, None, b"", 40.0, 100, 4).command == "[py (evil) x]"
    assert proc_row(2, HOST, st, None, b"a\x1b[2J", 40.0, 100, 4).command == "a?[2J"
    with pytest.raises(ValidationError, match="^/proc/PID/stat"):
        parse_stat("garbage")
    assert inner_pid("Name:\tx\nNSpid:\t4242\t1\n") == 1
    assert inner_pid("Name:\tx\nNSpid:\t4242\n") == 4242
    assert inner_pid("Name:\tx\n") is None


TABLE = [Proc(10, HOST, 10, 0, 0, 0, "sshd"), Proc(20, "pl_a", 1, 0, 0, 0, "init"),
         Proc(21, "pl_a", 5, 0, 0, 0, "loop"), Proc(22, "pl_a", 6, 0, 0, 0, "loop"),
         Proc(30, "pl_b", 1, 0, 0, 0, "init"), Proc(40, "service:auditd", 1, 0, 0, 0, "x")]


@pytest.mark.parametrize(("pids", "expect"), [
    ([], [21, 22]),                  # every process but the sliver's init
    ([22], [22]),
    ([20], [20]),                    # its init, when named
    ([21, 10], "^pid 10: expected a process of slice pl_a's sliver, found a process of the "
     "host$"),
    ([30], "found a process of pl_b$"),
    ([40], "found a process of service:auditd$"),
    ([99], "found no such process$"),
])
def test_kill_targets(pids: list[int], expect: list[int] | str) -> None:
    if isinstance(expect, list):
        assert kill_targets(TABLE, "pl_a", pids) == expect
    else:
        with pytest.raises(PermissionDenied, match=expect):
            kill_targets(TABLE, "pl_a", pids)


@pytest.mark.parametrize("bad", [[0], [-1], [True], ["1"], "1", None])
def test_validate_pids(bad: object) -> None:
    with pytest.raises(ValidationError, match="^pids: expected a list of process ids"):
        validate_pids(bad)


# the agent keeps the admin sliver ---------------------------------------------------------

ED = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAedTThpXyowOnVlyTamP51PoT4OP2uPOGgEKsAZjr81 pi@e"
ED2 = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBedTThpXyowOnVlyTamP51PoT4OP2uPOGgEKsAZjr81 t@e"


def view_with(keys: list[str], slivers: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {"slivers": slivers or [], "initscripts": [],
            "accounts": [{"name": "site_admin", "keys": [{"key_type": "ssh", "key": k}
                                                         for k in keys]},
                         {"name": "root", "keys": []}]}


def test_the_agent_keeps_the_admin_sliver_with_the_sites_keys(tmp_path: Path) -> None:
    from slicectl.agent.sync import Record, converge
    from tests.unit.test_agent import FakeNM
    nm, path = FakeNM(), tmp_path / "agent.json"
    admin = {"slice": "site_admin", "initscript": "#!/bin/sh\n# tools\n"}
    out = converge(nm, view_with([]), Record(), path, NOW, admin)
    assert out.done == ["create site_admin"]
    s = nm.slivers["site_admin"]
    assert s["keys"] == [] and s["initscript"] == admin["initscript"]  # kept with no keys
    assert {k: v for k, v in nm.rcaps[s["rcaps"][0]].items() if k != "end"} == {
        "admin": True, "admin_sniffer": True}
    out = converge(nm, view_with([ED, ED2]), Record.load(path), path, NOW, admin)
    assert out.done == ["set_keys site_admin"] and s["keys"] == [ED, ED2]
    assert converge(nm, view_with([ED, ED2]), Record.load(path), path, NOW, admin).done == []
    # new tools: a new initscript; a PLC slice of the admin's name is never made
    plc = {"name": "site_admin", "slice_id": 9, "instantiation": "plc-instantiated",
           "expires": int(NOW) + 3600, "keys": [], "attributes": []}
    out = converge(nm, view_with([ED], [plc]), Record.load(path), path, NOW,
                   {**admin, "initscript": "#!/bin/sh\n# new\n"})
    assert out.done == ["set_keys site_admin", "set_initscript site_admin"]
    rec = Record.load(path)
    assert "site_admin: the name of the site's admin sliver on this node; not made" in rec.reported
    # a node manager without admin_tools has no admin right: the sliver cannot be kept
    assert converge(nm, view_with([ED]), rec, path, NOW, None).done == ["destroy site_admin"]


def test_the_agent_knows_the_words_of_an_admin_stop() -> None:
    from slicectl.agent.sync import ADMIN_STOPPED
    from slicectl.node.nm import manager
    assert ADMIN_STOPPED == manager.ADMIN_STOPPED
