"""PLCAPI in process on SQLite: each method's happy path, the rules, GetSlivers, events,
system.* and faults. The wire itself is tested in tests/plc (a real server)."""

from __future__ import annotations

import xmlrpc.client
from dataclasses import replace
from typing import Any

import pytest

from slicectl.plc.api import PLCAPI, BadRequest
from slicectl.plc.errors import PLCFault
from tests.plc_helpers import ECDSA, ED25519, ROOT, RSA, Client, Clock, World, password

DAY = 86400
WEEK = 7 * DAY


def fault(fn: Any, *args: Any) -> PLCFault:
    with pytest.raises(PLCFault) as e:
        fn(*args)
    return e.value


def code(fn: Any, *args: Any) -> int:
    return fault(fn, *args).fault_code


# sites, persons, keys ---------------------------------------------------------------------------

def test_site_round_trip(world: World) -> None:
    r = world.root
    got = r.GetSites(world.site_id)[0]
    assert got["login_base"] == "pu" and got["max_slices"] == 5 and got["enabled"] is True
    assert sorted(got["person_ids"]) == sorted(
        [world.pi.person_id, world.user.person_id, world.tech.person_id])  # type: ignore[attr-defined]
    assert got["node_ids"] == [world.node_id]
    assert r.UpdateSite("pu", {"name": "Princeton U.", "latitude": 40.35}) == 1
    assert r.GetSites("pu", ["name", "latitude"]) == [{"name": "Princeton U.", "latitude": 40.35}]
    assert code(r.AddSite, {"name": "x", "abbreviated_name": "x", "login_base": "pu"}) == 102
    assert code(r.AddSite, {"name": "x", "abbreviated_name": "x", "login_base": "Bad!"}) == 102


def test_anonymous_reads_sites_and_nodes_only(world: World) -> None:
    anon = Client(world.api, {"AuthMethod": "anonymous"})
    assert [s["login_base"] for s in anon.GetSites()] == ["pu", "other"]
    assert anon.GetNodes(None, ["hostname"]) == [{"hostname": "node1.pu.edu"}]
    assert code(anon.GetPersons) == 108
    assert code(anon.GetSlices) == 108


def test_pi_updates_own_site_but_not_limits(world: World) -> None:
    assert world.pi.UpdateSite(world.site_id, {"url": "https://pu.edu"}) == 1
    assert code(world.pi.UpdateSite, world.site_id, {"max_slices": 100}) == 108
    assert code(world.pi.UpdateSite, world.site_id, {"login_base": "zz"}) == 108
    assert code(world.pi.UpdateSite, world.other_site_id, {"url": "x"}) == 108


def test_person_starts_disabled_and_cannot_log_in(world: World) -> None:
    r = world.root
    pid = r.AddPerson({"email": "New@PU.edu", "first_name": "N", "last_name": "P",
                       "password": "pw"})
    got = r.GetPersons(pid)[0]
    assert got["enabled"] is False and "password" not in got and got["email"] == "New@PU.edu"
    new = Client(world.api, password("new@pu.edu", "pw"))
    r.AddRoleToPerson("user", pid)
    assert code(new.AuthCheck) == 103
    r.UpdatePerson("new@pu.edu", {"enabled": True})
    assert new.AuthCheck() == 1
    assert code(r.AddPerson, {"email": "x@y.z", "first_name": "a", "last_name": "b",
                              "role_ids": [10]}) == 102
    assert code(r.AddPerson, {"email": "new@pu.edu", "first_name": "a", "last_name": "b"}) == 102


def test_roles_and_primary_site(world: World) -> None:
    r = world.root
    pid = world.user.person_id  # type: ignore[attr-defined]
    assert world.pi.AddRoleToPerson("tech", pid) == 1
    assert code(world.pi.AddRoleToPerson, "admin", pid) == 108
    assert code(world.pi.AddRoleToPerson, "pi", pid) == 108
    assert sorted(r.GetPersons(pid)[0]["roles"]) == ["tech", "user"]
    r.AddPersonToSite(pid, world.other_site_id)
    assert r.GetPersons(pid)[0]["site_ids"] == [world.site_id, world.other_site_id]
    assert world.user.SetPersonPrimarySite(pid, "other") == 1
    assert r.GetPersons(pid)[0]["site_ids"] == [world.other_site_id, world.site_id]
    assert r.DeletePersonFromSite(pid, "other") == 1
    assert r.GetPersons(pid)[0]["site_ids"] == [world.site_id]
    assert r.DeleteRoleFromPerson(30, pid) == 1
    assert r.GetPersons(pid)[0]["roles"] == ["tech"]
    assert code(world.pi.AddPersonToSite, pid, "other") == 108


@pytest.mark.parametrize("key", [ED25519, ECDSA, RSA])
def test_keys_accepted(world: World, key: str) -> None:
    pid = world.user.person_id  # type: ignore[attr-defined]
    kid = world.user.AddPersonKey(pid, {"key_type": "ssh", "key": key})
    assert world.root.GetKeys(kid) == [{"key_id": kid, "key_type": "ssh", "key": key,
                                        "person_id": pid}]
    assert world.root.GetPersons(pid)[0]["key_ids"] == [kid]


@pytest.mark.parametrize("bad", [
    "command=\"/bin/sh\" " + ED25519, ED25519 + "\nssh-ed25519 AAAA", "ssh-ed25519 !!!notbase64",
    "ssh-dss AAAAB3NzaC1kc3MAAACBAP", "hello", "", "ssh-ed25519 " + ECDSA.split()[1],
    "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAAAQQDBFadPsTElj+HBgGqyhS9Cc0TyIVVis69VY1rruqqkratV2Hx+SKHC8P"
    "dQ/byDAl8xGGxBZkfRLFx4ucLdFSq1 short",
])
def test_bad_keys_refused(world: World, bad: str) -> None:
    pid = world.user.person_id  # type: ignore[attr-defined]
    assert code(world.user.AddPersonKey, pid, {"key_type": "ssh", "key": bad}) == 102
    assert world.root.GetKeys() == []


def test_blacklisted_key_vanishes_for_good(world: World) -> None:
    pid = world.user.person_id  # type: ignore[attr-defined]
    kid = world.user.AddPersonKey(pid, {"key_type": "ssh", "key": ED25519})
    assert world.root.BlacklistKey(kid) == 1
    assert world.root.GetKeys(kid) == []
    f = fault(world.user.AddPersonKey, pid, {"key_type": "ssh", "key": ED25519})
    assert f.fault_code == 102 and "blacklisted" in f.message


def test_others_keys_are_not_mine(world: World) -> None:
    pid = world.user.person_id  # type: ignore[attr-defined]
    kid = world.user.AddPersonKey(pid, {"key_type": "ssh", "key": ED25519})
    assert code(world.outsider.DeleteKey, kid) == 108
    assert code(world.outsider.AddPersonKey, pid, {"key_type": "ssh", "key": ECDSA}) == 108
    assert world.pi.DeleteKey(kid) == 1


# slices -----------------------------------------------------------------------------------------

def test_slice_rules(world: World, plc_clock: Clock) -> None:
    pi, r = world.pi, world.root
    sid = pi.AddSlice({"name": "pu_test", "url": "https://x", "description": "d"})
    got = pi.GetSlices("pu_test")[0]
    assert got["expires"] == int(plc_clock.now) + 2 * WEEK
    assert got["creator_person_id"] == world.pi.person_id  # type: ignore[attr-defined]
    assert got["instantiation"] == "plc-instantiated" and got["max_nodes"] == 100
    assert code(pi.AddSlice, {"name": "other_test"}) == 108
    assert code(pi.AddSlice, {"name": "nosuch_test"}) == 102
    assert code(pi.AddSlice, {"name": "pu_x", "expires": 5}) == 102
    assert code(pi.AddSlice, {"name": "pu-bad"}) == 102
    assert code(pi.AddSlice, {"name": "pu_test"}) == 102
    assert code(pi.UpdateSlice, sid, {"name": "pu_new"}) == 102
    for i in range(4):
        pi.AddSlice({"name": f"pu_s{i}"})
    f = fault(pi.AddSlice, {"name": "pu_s9"})
    assert f.fault_code == 102 and "max_slices" in f.message
    assert code(world.user.AddSlice, {"name": "pu_u"}) == 108
    r.UpdateSite("pu", {"enabled": False})
    assert code(pi.AuthCheck) == 103


def test_renewal(world: World, plc_clock: Clock) -> None:
    pi, r = world.pi, world.root
    now = int(plc_clock.now)
    pi.AddSlice({"name": "pu_bare"})
    f = fault(pi.UpdateSlice, "pu_bare", {"expires": now + 4 * WEEK})
    assert f.fault_code == 102 and "url" in f.message
    pi.UpdateSlice("pu_bare", {"url": "https://pu.edu/exp", "description": "an experiment"})
    assert pi.UpdateSlice("pu_bare", {"expires": now + 8 * WEEK}) == 1
    assert code(pi.UpdateSlice, "pu_bare", {"expires": now + 8 * WEEK + 1}) == 102
    assert code(pi.UpdateSlice, "pu_bare", {"expires": now - 1}) == 102
    assert r.UpdateSlice("pu_bare", {"expires": now + 52 * WEEK}) == 1
    assert r.UpdateSlice("pu_bare", {"expires": "2030-01-01 00:00:00"}) == 1
    assert pi.GetSlices("pu_bare", ["expires"]) == [{"expires": 1893456000}]


def test_expired_slices_vanish(world: World, plc_clock: Clock) -> None:
    pi = world.pi
    sid = pi.AddSlice({"name": "pu_short"})
    pi.AddSliceToNodes(sid, ["node1.pu.edu"])
    assert [s["name"] for s in world.node.GetSlivers()["slivers"]] == ["pu_short"]
    plc_clock.now += 2 * WEEK + 1
    assert pi.GetSlices() == []
    assert world.node.GetSlivers()["slivers"] == []
    assert world.root.GetNodes(world.node_id)[0]["slice_ids"] == []
    assert world.root.GetSites("pu")[0]["slice_ids"] == []
    assert code(pi.UpdateSlice, sid, {"description": "x"}) == 102
    # and the name counts for nothing against max_slices once expired
    for i in range(5):
        pi.AddSlice({"name": f"pu_n{i}"})


def test_members_and_nodes(world: World) -> None:
    pi, user = world.pi, world.user
    uid = user.person_id  # type: ignore[attr-defined]
    pi.AddSlice({"name": "pu_m"})
    assert code(user.AddSliceToNodes, "pu_m", [world.node_id]) == 108
    assert pi.AddPersonToSlice(uid, "pu_m") == 1
    assert pi.AddPersonToSlice("user@pu.edu", "pu_m") == 1  # idempotent
    assert code(user.AddPersonToSlice, world.tech.person_id, "pu_m") == 108  # type: ignore[attr-defined]
    assert user.AddSliceToNodes("pu_m", ["node1.pu.edu"]) == 1
    assert user.AddSliceToNodes("pu_m", [world.node_id]) == 1
    got = user.GetSlices("pu_m")[0]
    assert got["node_ids"] == [world.node_id] and got["person_ids"] == [uid]
    assert code(world.outsider.DeleteSlice, "pu_m") == 108
    assert code(user.AddSliceToNodes, "pu_m", ["no.such.host"]) == 102
    assert user.DeleteSliceFromNodes("pu_m", [world.node_id]) == 1
    assert user.DeleteSliceFromNodes("pu_m", [world.node_id]) == 1
    assert pi.DeletePersonFromSlice(uid, "pu_m") == 1
    assert code(user.UpdateSlice, "pu_m", {"description": "x"}) == 108
    assert pi.DeleteSlice("pu_m") == 1
    assert pi.GetSlices("pu_m") == []


def test_slice_tags(world: World) -> None:
    pi, r, user = world.pi, world.root, world.user
    pi.AddSlice({"name": "pu_t"})
    pi.AddPersonToSlice(user.person_id, "pu_t")  # type: ignore[attr-defined]
    assert code(user.AddSliceTag, "pu_t", "cpu_share", "50") == 108
    tid = r.AddSliceTag("pu_t", "cpu_share", "50")
    local = r.AddSliceTag("pu_t", "cpu_share", "70", "node1.pu.edu")
    assert code(r.AddSliceTag, "pu_t", "cpu_share", "50") == 102
    code_tag = user.AddSliceTag("pu_t", "initscript_code", "#!/bin/sh\necho hi\t\n")
    assert code(user.AddSliceTag, "pu_t", "initscript", "nosuch") == 102
    r.AddInitScript({"name": "stamp", "script": "#!/bin/sh\ntouch /stamp\n"})
    user.AddSliceTag("pu_t", "initscript", "stamp")
    assert r.GetSliceTags(tid)[0] == {"slice_tag_id": tid, "slice_id": r.GetSlices("pu_t")[0]["slice_id"],
                                      "tag_type_id": r.GetTagTypes("cpu_share")[0]["tag_type_id"],
                                      "value": "50", "node_id": None, "tagname": "cpu_share",
                                      "name": "pu_t"}
    assert r.GetSliceTags({"tagname": "initscript_code"}, ["value"]) == [
        {"value": "#!/bin/sh\necho hi\t\n"}]
    pi.AddSliceToNodes("pu_t", [world.node_id])
    attrs = world.node.GetSlivers()["slivers"][0]["attributes"]
    assert {"tagname": "cpu_share", "value": "70"} in attrs
    assert {"tagname": "cpu_share", "value": "50"} not in attrs
    assert attrs[0] == {"tagname": "cpu_share", "value": "70"}  # node-scoped first
    assert user.UpdateSliceTag(code_tag, "echo bye") == 1
    assert code(user.UpdateSliceTag, local, "99") == 108
    assert code(user.DeleteSliceTag, tid) == 108
    assert r.DeleteSliceTag(local) == 1
    attrs = world.node.GetSlivers()["slivers"][0]["attributes"]
    assert {"tagname": "cpu_share", "value": "50"} in attrs


def test_tag_types(world: World) -> None:
    r = world.root
    tid = r.AddTagType({"tagname": "arch", "category": "node/config", "description": "cpu"})
    got = r.GetTagTypes("arch")[0]
    assert got["roles"] == ["admin"] and got["role_ids"] == [10] and got["tag_type_id"] == tid
    assert r.AddRoleToTagType("pi", "arch") == 1
    assert sorted(r.GetTagTypes(tid)[0]["roles"]) == ["admin", "pi"]
    assert code(world.pi.AddTagType, {"tagname": "x"}) == 108
    assert r.UpdateTagType(tid, {"description": "architecture"}) == 1
    assert r.DeleteTagType("arch") == 1
    assert r.GetTagTypes("arch") == []
    resource = {t["tagname"]: t["roles"] for t in r.GetTagTypes()}
    assert resource["cpu_share"] == ["admin"] and "user" in resource["vref"]


# nodes and GetSlivers -------------------------------------------------------------------------------

def test_node_writes(world: World) -> None:
    assert world.tech.UpdateNode("node1.pu.edu", {"boot_state": "safeboot"}) == 1
    assert code(world.user.UpdateNode, world.node_id, {"model": "x"}) == 108
    assert code(world.outsider.UpdateNode, world.node_id, {"model": "x"}) == 108
    assert code(world.tech.UpdateNode, world.node_id, {"boot_state": "exploded"}) == 102
    assert code(world.root.AddNode, "pu", {"hostname": "not a host"}) == 102
    assert code(world.root.AddNode, "pu", {"hostname": "NODE1.pu.edu"}) == 102
    assert code(world.pi.GetNodeKey, world.node_id) == 108
    nid = world.pi.AddNode("pu", {"hostname": "node2.pu.edu", "model": "x"})
    assert world.root.GetNodes("node2.pu.edu", ["site_id", "model", "boot_state"]) == [
        {"site_id": world.site_id, "model": "x", "boot_state": "boot"}]
    assert world.pi.DeleteNode(nid) == 1


def test_getslivers_accounts(world: World) -> None:
    """site_admin: the keys of the node's site's enabled PIs and techs (not its users,
    not another site's PIs); root: the admins'. A node with no slice gets them too."""
    def key(c: Client, k: str) -> None:
        c.AddPersonKey(c.person_id, {"key_type": "ssh", "key": k})  # type: ignore[attr-defined]

    key(world.pi, ECDSA)
    key(world.tech, ED25519)
    key(world.user, RSA)
    key(world.outsider, RSA)
    world.root.AddPersonKey(ROOT, {"key_type": "ssh", "key": RSA})
    site = [{"key_type": "ssh", "key": ECDSA}, {"key_type": "ssh", "key": ED25519}]
    assert world.node.GetSlivers()["accounts"] == [
        {"name": "site_admin", "keys": site}, {"name": "root", "keys": [{"key_type": "ssh", "key": RSA}]}]
    world.root.UpdatePerson(world.tech.person_id, {"enabled": False})  # type: ignore[attr-defined]
    assert world.node.GetSlivers()["accounts"][0] == {"name": "site_admin", "keys": site[:1]}


def test_getslivers_shape(world: World, plc_clock: Clock) -> None:
    pi, r, user = world.pi, world.root, world.user
    uid = user.person_id  # type: ignore[attr-defined]
    user.AddPersonKey(uid, {"key_type": "ssh", "key": ED25519})
    pi.AddPersonKey(world.pi.person_id, {"key_type": "ssh", "key": ECDSA})  # type: ignore[attr-defined]
    r.AddPersonKey(ROOT, {"key_type": "ssh", "key": RSA})
    sid = pi.AddSlice({"name": "pu_g"})
    pi.AddPersonToSlice(uid, sid)
    pi.AddSliceToNodes(sid, [world.node_id])
    view = world.node.GetSlivers()
    assert set(view) == {"timestamp", "node_id", "hostname", "slivers", "accounts",
                         "initscripts", "interfaces", "conf_files"}
    assert view["node_id"] == world.node_id and view["hostname"] == "node1.pu.edu"
    assert view["slivers"] == [{"name": "pu_g", "slice_id": sid,
                                "instantiation": "plc-instantiated",
                                "expires": int(plc_clock.now) + 2 * WEEK,
                                "keys": [{"key_type": "ssh", "key": ED25519}],
                                "attributes": [], "description": "", "url": "",
                                # slicectl's extension: members, then the site's PIs
                                "contacts": ["user@pu.edu", "pi@pu.edu"]}]
    assert view["accounts"] == [{"name": "site_admin", "keys": [{"key_type": "ssh", "key": ECDSA}]},
                                {"name": "root", "keys": [{"key_type": "ssh", "key": RSA}]}]
    assert r.GetNodes(world.node_id)[0]["last_contact"] == int(plc_clock.now)
    # a disabled member's keys do not reach the node
    r.UpdatePerson(uid, {"enabled": False})
    assert world.node.GetSlivers()["slivers"][0]["keys"] == []
    assert world.node.GetSlivers()["slivers"][0]["contacts"] == ["pi@pu.edu"]
    # an admin asks for a node by name; a node only for itself
    assert r.GetSlivers("node1.pu.edu")["node_id"] == world.node_id
    other = r.AddNode("other", {"hostname": "n.other.org"})
    assert code(world.node.GetSlivers, other) == 108
    assert code(world.pi.GetSlivers, world.node_id) == 108


def test_hmac_auth(world: World) -> None:
    bad = Client(world.api, {"AuthMethod": "hmac", "node_id": world.node_id, "value": "00" * 20})
    assert code(bad.GetSlivers) == 103
    assert world.node.AuthCheck() == 1
    key = world.node.GetSession()
    sess = Client(world.api, {"AuthMethod": "session", "session": key})
    assert sess.GetSlivers()["node_id"] == world.node_id
    new_key = world.root.RegenerateNodeKey(world.node_id)
    assert new_key != world.node_key
    assert code(world.node.AuthCheck) == 103
    assert code(sess.AuthCheck) == 103


# sessions and logins ----------------------------------------------------------------------------------

def test_sessions(world: World, plc_clock: Clock) -> None:
    key = world.pi.GetSession()
    assert len(key) >= 43
    sess = Client(world.api, {"AuthMethod": "session", "session": key})
    assert sess.GetSlices() == []
    plc_clock.now += 24 * 3600 + 1
    assert code(sess.AuthCheck) == 103
    key = world.pi.GetSession()
    sess = Client(world.api, {"AuthMethod": "session", "session": key})
    assert sess.DeleteSession() == 1
    assert code(sess.AuthCheck) == 103


def test_failed_logins_are_limited_per_account(world: World) -> None:
    wrong = Client(world.api, password("pi@pu.edu", "nope"), source="10.0.0.1")
    for _ in range(10):
        assert code(wrong.AuthCheck) == 103
    f = fault(world.pi.AuthCheck)
    assert f.fault_code == 103 and "too many" in f.message
    assert world.user.AuthCheck() == 1


def test_failed_logins_are_limited_per_source(world: World) -> None:
    for i in range(50):
        assert code(Client(world.api, password(f"x{i}@y.z", "nope"), "10.9.9.9").AuthCheck) == 103
    assert "too many" in fault(Client(world.api, password("user@pu.edu", "user-pw"),
                                      "10.9.9.9").AuthCheck).message
    assert world.user.AuthCheck() == 1


# events ----------------------------------------------------------------------------------------------

def test_every_write_is_an_event(world: World, plc_clock: Clock) -> None:
    pi, r = world.pi, world.root
    sid = pi.AddSlice({"name": "pu_ev", "description": "who deleted me"})
    pi.UpdatePerson(world.user.person_id, {"phone": "123", "password": "secret"})  # type: ignore[attr-defined]
    plc_clock.now += 10
    pi.DeleteSlice(sid)
    gone = r.GetEvents({"method": "DeleteSlice"})
    assert gone == [{"event_id": gone[0]["event_id"], "time": int(plc_clock.now),
                     "person_id": world.pi.person_id, "node_id": None,  # type: ignore[attr-defined]
                     "caller": "pi@pu.edu", "method": "DeleteSlice", "object_type": "Slice",
                     "object_ids": [sid], "fields": {}}]
    upd = r.GetEvents({"method": "UpdatePerson", "caller": "pi@pu.edu"})[0]
    assert upd["fields"] == {"phone": "123"}
    assert r.GetEvents({"method": "AddSlice"}, ["fields"]) == [
        {"fields": {"name": "pu_ev", "description": "who deleted me"}}]
    assert code(pi.GetEvents) == 108
    before = len(r.GetEvents())
    assert code(pi.AddSlice, {"name": "pu_ev", "bogus": 1}) == 102
    assert len(r.GetEvents()) == before


# system.*, multicall, wire faults ------------------------------------------------------------------------

def test_system_methods(plc_api: PLCAPI) -> None:
    c = Client(plc_api, {})
    names = c.call("system.listMethods")
    for m in ("AddSite", "GetSlivers", "GetEvents", "system.multicall", "AddIlink",
              "GetNetworkTypes", "BlacklistKey", "AddConfFileToNodeGroup", "DeleteNodeFromPCU"):
        assert m in names
    assert c.call("system.methodSignature", "AddSliceTag") == [
        ["int", "struct", "int", "int", "string"], ["int", "struct", "int", "int", "string", "int"]]
    help_text = c.call("system.methodHelp", "UpdateSlice")
    assert "Roles: admin, pi, user, tech" in help_text and "8 weeks" in help_text
    assert code(c.call, "system.methodHelp", "NoSuch") == 100
    assert code(c.call, "NoSuch") == 100


def test_multicall(world: World) -> None:
    auth = world.root.auth
    out = world.api.call("system.multicall", [[
        {"methodName": "GetSites", "params": [auth, "pu", ["login_base"]]},
        {"methodName": "GetSites", "params": [auth, {"nope": 1}]},
        {"methodName": "system.multicall", "params": [[]]},
        {"methodName": "AuthCheck", "params": [auth]},
        "garbage",
    ]])
    assert out[0] == [[{"login_base": "pu"}]]
    assert out[1]["faultCode"] == 102 and out[2]["faultCode"] == 102
    assert out[3] == [1] and out[4]["faultCode"] == 102


@pytest.mark.parametrize("params,expected", [
    ([], 101),
    ([{"AuthMethod": "password", "Username": ROOT, "AuthString": "root-password"}, None, None, 3], 101),
    (["notastruct"], 102),
    ([{"AuthMethod": "telepathy"}], 103),
    ([{"AuthMethod": "password", "Username": 5, "AuthString": []}], 103),
])
def test_bad_calls(plc_api: PLCAPI, params: list[Any], expected: int) -> None:
    assert code(plc_api.call, "GetSites", params) == expected


@pytest.mark.parametrize("fields", [
    {"name": 5, "abbreviated_name": "x", "login_base": "ok"},
    {"name": "x" * 255, "abbreviated_name": "x", "login_base": "ok"},
    {"name": "x", "abbreviated_name": "x", "login_base": "ok", "latitude": "north"},
    {"name": "x", "abbreviated_name": "x", "login_base": "ok", "max_slices": 2**40},
    {"name": "x", "abbreviated_name": "x", "login_base": "ok", "site_id": 7},
    {"name": "x", "abbreviated_name": "x"},
    {"name": "x", "abbreviated_name": "x", "login_base": "ok", "enabled": "yes"},
    {"name": "x", "abbreviated_name": "x", "login_base": "ok", "max_slices": -1},
    {"name": "x", "abbreviated_name": "x", "login_base": "a" * 21},
])
def test_bad_fields_are_102_and_write_nothing(world: World, fields: dict[str, Any]) -> None:
    before = len(world.root.GetSites())
    f = fault(world.root.AddSite, fields)
    assert f.fault_code == 102 and f.message.startswith("Invalid argument: ")
    assert len(world.root.GetSites()) == before


def test_values_come_back_exactly(world: World) -> None:
    text = "Ünïcødé ✓ 日本語\ttab\nnewline 🎉"
    r = world.root
    r.UpdateSite("pu", {"name": text, "latitude": -12.345678901, "url": None})
    assert r.GetSites("pu", ["name", "latitude", "url"]) == [
        {"name": text, "latitude": -12.345678901, "url": None}]
    f = fault(r.UpdateSite, "pu", {"name": "日" * 85})  # 255 bytes in UTF-8
    assert f.fault_code == 102 and "bytes" in f.message
    r.UpdateSite("pu", {"name": "日" * 84 + "ab"})  # 254 bytes


def test_wire_handle(plc_api: PLCAPI) -> None:
    body = xmlrpc.client.dumps((), "system.listMethods").encode()
    (names,), _ = xmlrpc.client.loads(plc_api.handle(body))
    assert "GetSlivers" in names
    out = plc_api.handle(xmlrpc.client.dumps(({"AuthMethod": "anonymous"}, {"~x": 1}),
                                             "GetSites").encode())
    with pytest.raises(xmlrpc.client.Fault) as e:
        xmlrpc.client.loads(out)
    assert e.value.faultCode == 102
    for bad in (b"", b"not xml", b"<methodCall>", b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "b">]>'
                b"<methodCall><methodName>&a;</methodName></methodCall>",
                b"<methodCall><params><param><value><int>x</int></value></param></params></methodCall>"):
        with pytest.raises(BadRequest):
            plc_api.handle(bad)
    deep: Any = 1
    for _ in range(100):
        deep = [deep]
    out = plc_api.handle(xmlrpc.client.dumps(({"AuthMethod": "anonymous"}, deep), "GetSites").encode())
    with pytest.raises(xmlrpc.client.Fault) as e:
        xmlrpc.client.loads(out)
    assert e.value.faultCode == 102
    out = plc_api.handle(xmlrpc.client.dumps(
        ({"AuthMethod": "anonymous"}, xmlrpc.client.DateTime(0)), "GetSites").encode())
    with pytest.raises(xmlrpc.client.Fault) as e:
        xmlrpc.client.loads(out)
    assert e.value.faultCode == 102


def _wire_getslivers(world: World) -> dict[str, Any]:
    """GetSlivers as the node sends it over the wire: through api.handle, parsed back."""
    auth = world.node.auth([]) if callable(world.node.auth) else world.node.auth
    body = xmlrpc.client.dumps((auth,), "GetSlivers", allow_none=True).encode()
    (view,), _ = xmlrpc.client.loads(world.api.handle(body, "127.0.0.1"))
    return dict(view)


def test_getslivers_on_the_wire_is_cached_until_anything_changes(
        world: World, plc_clock: Clock) -> None:
    pi, r = world.pi, world.root
    uid = world.user.person_id  # type: ignore[attr-defined]
    sid = pi.AddSlice({"name": "pu_c"})
    pi.AddPersonToSlice(uid, sid)
    pi.AddSliceToNodes(sid, [world.node_id])
    views = world.api.views
    first = _wire_getslivers(world)
    assert first == world.node.GetSlivers()  # the cached text says what the dict says
    plc_clock.now += 10
    again = _wire_getslivers(world)
    assert views.hits == 1 and again["timestamp"] == first["timestamp"] + 10
    assert {**again, "timestamp": 0} == {**first, "timestamp": 0}
    # every kind of change reaches the next poll: a key, a tag, a member disabled
    world.user.AddPersonKey(uid, {"key_type": "ssh", "key": ED25519})
    assert _wire_getslivers(world)["slivers"][0]["keys"] == [{"key_type": "ssh", "key": ED25519}]
    r.AddSliceTag(sid, "vref", "debian")
    assert _wire_getslivers(world)["slivers"][0]["attributes"] == [
        {"tagname": "vref", "value": "debian"}]
    r.UpdatePerson(uid, {"enabled": False})
    assert _wire_getslivers(world)["slivers"][0]["keys"] == []
    # a write the cache did not see (another PLC process on the same database) shows
    # through the event it records
    with world.api.db.transaction(write=True) as conn:
        from sqlalchemy import insert

        from slicectl.plc import schema as s
        conn.execute(s.slice_node.delete().where(s.slice_node.c.slice_id == sid))
        conn.execute(insert(s.events).values(time=int(plc_clock.now), caller="other-plc",
                                             method="DeleteSliceFromNodes",
                                             object_type="Slice", object_ids="[]", fields="{}"))
    assert _wire_getslivers(world)["slivers"] == []
    # and time alone: a slice that expires leaves the answer without any write
    pi.AddSliceToNodes(sid, [world.node_id])
    assert [x["name"] for x in _wire_getslivers(world)["slivers"]] == ["pu_c"]
    plc_clock.now = first["slivers"][0]["expires"]
    assert _wire_getslivers(world)["slivers"] == []


def test_the_view_cache_is_bounded_by_bytes() -> None:
    from slicectl.plc.views import CachedView, ViewCache

    cache = ViewCache(max_bytes=250)
    for node in range(5):
        cache.put(node, CachedView((0, 0), 100, "x" * 100))
    assert len(cache) == 2  # the least recently used went first
    assert cache.get(4, (0, 0), 0) is not None and cache.get(0, (0, 0), 0) is None
    assert cache.get(4, (1, 0), 0) is None and cache.get(4, (0, 0), 100) is None


def test_nodes_report_their_slivers_and_people_see_where_a_slice_is_live(
        world: World, plc_clock: Clock) -> None:
    pi, r = world.pi, world.root
    sid = pi.AddSlice({"name": "pu_live"})
    pi.AddSliceToNodes(sid, [world.node_id])
    events = len(r.GetEvents())
    assert r.GetSliverStates("pu_live") == [
        {"node_id": world.node_id, "hostname": "node1.pu.edu", "listed": True,
         "state": "unreported", "detail": "", "updated": None, "last_contact": None}]
    assert world.node.ReportSlivers([{"name": "pu_live", "state": "running"},
                                     {"name": "pu_gone", "state": "stopped"}]) == 2
    got = pi.GetSliverStates(sid)
    assert [(g["state"], g["listed"], g["updated"]) for g in got] == [
        ("running", True, int(plc_clock.now))]
    assert len(r.GetEvents()) == events  # a report wakes no waiting node
    # a report replaces the last one; bad reports are refused whole
    assert world.node.ReportSlivers([]) == 0
    assert pi.GetSliverStates(sid)[0]["state"] == "unreported"
    assert code(world.node.ReportSlivers, [{"name": "pu_live", "state": "on fire"}]) == 102
    assert code(world.node.ReportSlivers, [{"name": "x", "state": "running"}] * 2) == 102
    assert code(world.node.ReportSlivers, "everything") == 102
    # a node says why it runs none (its local policy refused the slice)
    why = "slice pu_live: refused by this node's policy (refused_sites: pu)"
    assert world.node.ReportSlivers([{"name": "pu_live", "state": "refused", "detail": why}]) == 1
    assert [(g["state"], g["detail"]) for g in pi.GetSliverStates(sid)] == [("refused", why)]
    for bad in ("x" * 301, "two\nlines", 7):
        assert code(world.node.ReportSlivers,
                    [{"name": "pu_live", "state": "refused", "detail": bad}]) == 102
    assert code(world.node.ReportSlivers,
                [{"name": "pu_live", "state": "running", "why": "x"}]) == 102
    assert code(pi.ReportSlivers, []) == 108  # only nodes report
    assert code(world.outsider.GetSliverStates, sid) == 108  # not of the slice's site


def test_change_notices_can_be_turned_off(world: World) -> None:
    """``plc serve --no-change-notices``: WaitForChange is refused as a PLC without the
    extension would refuse it, and GetSlivers still answers (nodes fall back to it)."""
    assert isinstance(world.node.WaitForChange(-1), int)
    world.api.settings = replace(world.api.settings, change_notices=False)
    with pytest.raises(PLCFault) as e:
        world.node.WaitForChange(-1)
    assert e.value.fault_code == 109 and "--no-change-notices" in str(e.value)
    assert world.node.GetSlivers()["node_id"] == world.node_id


def test_the_demo_sites_pi_is_the_nodes_site_admin(world: World) -> None:
    """make up's demo: the demo PI, with the demo key, is a PI of the node's site too, so
    GetSlivers gives the node's site_admin account that key (idempotently)."""
    from slicectl.plc.demo import ensure_demo_slice

    for _ in range(2):
        ensure_demo_slice(world.root, world.node_id, ED25519)  # type: ignore[arg-type]
    accounts = world.node.GetSlivers()["accounts"]
    assert accounts[0] == {"name": "site_admin", "keys": [{"key_type": "ssh", "key": ED25519}]}
