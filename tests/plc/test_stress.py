"""PlanetLab's black-box stress test, through a real XML-RPC client: add random sites,
persons (roles, enabled, primary site), keys, nodes, slices (members, nodes) and slice tags,
checking after each add that Get returns exactly what was sent; update everything with new
random values and recheck; delete in reverse order, Get returning [] after each delete;
the counts of all objects at the end equal those at the start."""

from __future__ import annotations

import random
import xmlrpc.client
from typing import Any

from slicectl.testbed.plc import Server
from tests.plc_helpers import ECDSA, ED25519, RSA

ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789 ÄéßΩ日本✓🎉\t\n-_.,'\"<>&"
GETS = ("GetSites", "GetPersons", "GetKeys", "GetNodes", "GetSlices", "GetSliceTags")


def text(rnd: random.Random, n: int) -> str:
    return "".join(rnd.choice(ALPHABET) for _ in range(n))


def ident(rnd: random.Random, n: int) -> str:
    return "".join(rnd.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(n))


def counts(p: xmlrpc.client.ServerProxy, auth: dict[str, Any]) -> dict[str, int]:
    return {g: len(getattr(p, g)(auth, None, [])) for g in GETS}


def same(p: xmlrpc.client.ServerProxy, auth: dict[str, Any], get: str, ref: object,
         sent: dict[str, Any]) -> None:
    got = getattr(p, get)(auth, ref, sorted(sent))
    assert got == [sent], f"{get}({ref!r}) returned {got!r}, sent {sent!r}"


def site_fields(rnd: random.Random, tag: str) -> dict[str, Any]:
    return {"name": text(rnd, 30), "abbreviated_name": text(rnd, 10), "url": None,
            "login_base": f"s{tag}{ident(rnd, 6)}", "is_public": rnd.random() < 0.5,
            "latitude": rnd.uniform(-90, 90), "longitude": rnd.uniform(-180, 180),
            "max_slices": 10}


def person_fields(rnd: random.Random) -> dict[str, Any]:
    return {"first_name": text(rnd, 12), "last_name": text(rnd, 12), "title": text(rnd, 8),
            "phone": text(rnd, 10), "url": f"https://{ident(rnd, 8)}.example/",
            "bio": text(rnd, 200), "email": f"{ident(rnd, 8)}@{ident(rnd, 6)}.example.org"}


def test_stress(server: Server) -> None:
    rnd = random.Random(4242)
    p, root = server.proxy(), server.root
    start = counts(p, root)
    made: list[tuple[str, int]] = []

    sites = []
    for i in range(3):
        f = site_fields(rnd, str(i))
        sid = p.AddSite(root, f)
        same(p, root, "GetSites", sid, f)
        sites.append((sid, f["login_base"]))
        made.append(("Site", sid))

    persons = []
    for _ in range(6):
        f = person_fields(rnd)
        pid = p.AddPerson(root, {**f, "password": text(rnd, 16)})
        same(p, root, "GetPersons", pid, {**f})
        mine = rnd.sample([s for s, _ in sites], rnd.randint(1, 2))
        for s in mine:
            p.AddPersonToSite(root, pid, s)
        p.SetPersonPrimarySite(root, pid, mine[-1])
        roles = rnd.sample(["pi", "user", "tech"], rnd.randint(1, 2))
        for r in roles:
            p.AddRoleToPerson(root, r, pid)
        p.UpdatePerson(root, pid, {"enabled": True})
        got = p.GetPersons(root, pid, ["site_ids", "roles", "enabled"])[0]
        assert got["site_ids"][0] == mine[-1] and sorted(got["site_ids"]) == sorted(mine)
        assert sorted(got["roles"]) == sorted(roles) and got["enabled"] is True
        persons.append(pid)
        made.append(("Person", pid))

    for pid in persons:
        f = {"key_type": "ssh", "key": rnd.choice([ED25519, ECDSA, RSA])}
        kid = p.AddPersonKey(root, pid, f)
        same(p, root, "GetKeys", kid, {**f, "person_id": pid})
        made.append(("Key", kid))

    nodes = []
    for sid, lb in sites:
        for j in range(2):
            f = {"hostname": f"node{j}.{lb}.example.net", "model": text(rnd, 20),
                 "boot_state": rnd.choice(["boot", "safeboot", "reinstall", "disabled"])}
            nid = p.AddNode(root, sid, f)
            same(p, root, "GetNodes", nid, {**f, "site_id": sid})
            nodes.append(nid)
            made.append(("Node", nid))

    slices = []
    for sid, lb in sites:
        for _ in range(2):
            f = {"name": f"{lb}_{ident(rnd, 8)}", "url": f"https://{ident(rnd, 5)}.org/",
                 "description": text(rnd, 100), "max_nodes": rnd.randint(5, 50)}
            slid = p.AddSlice(root, f)
            same(p, root, "GetSlices", slid, {**f, "site_id": sid})
            members = rnd.sample(persons, 2)
            on = rnd.sample(nodes, 3)
            for m in members:
                p.AddPersonToSlice(root, m, slid)
            p.AddSliceToNodes(root, slid, on)
            got = p.GetSlices(root, slid, ["person_ids", "node_ids"])[0]
            assert got == {"person_ids": sorted(members), "node_ids": sorted(on)}
            slices.append(slid)
            made.append(("Slice", slid))

    tags = []
    for slid in slices:
        for tagname in ("vref", "initscript_code"):
            value = text(rnd, 40)
            node = rnd.choice([None, *p.GetSlices(root, slid, ["node_ids"])[0]["node_ids"]])
            tid = p.AddSliceTag(root, slid, tagname, value, *([node] if node else []))
            same(p, root, "GetSliceTags", tid, {"slice_id": slid, "tagname": tagname,
                                                "value": value, "node_id": node})
            tags.append(tid)
            made.append(("SliceTag", tid))

    # updates with new random values, rechecked
    for sid, _ in sites:
        f = {k: v for k, v in site_fields(rnd, "u").items() if k not in ("login_base", "max_slices")}
        p.UpdateSite(root, sid, f)
        same(p, root, "GetSites", sid, f)
    for pid in persons:
        f = person_fields(rnd)
        p.UpdatePerson(root, pid, f)
        same(p, root, "GetPersons", pid, f)
    for nid in nodes:
        f = {"model": text(rnd, 20), "version": text(rnd, 10)}
        p.UpdateNode(root, nid, f)
        same(p, root, "GetNodes", nid, f)
    for slid in slices:
        f = {"url": f"https://{ident(rnd, 5)}.org/", "description": text(rnd, 80)}
        p.UpdateSlice(root, slid, f)
        same(p, root, "GetSlices", slid, f)
    for tid in tags:
        value = text(rnd, 30)
        p.UpdateSliceTag(root, tid, value)
        same(p, root, "GetSliceTags", tid, {"value": value})

    # deletes in reverse order
    for kind, oid in reversed(made):
        delete = {"Site": "DeleteSite", "Person": "DeletePerson", "Key": "DeleteKey",
                  "Node": "DeleteNode", "Slice": "DeleteSlice", "SliceTag": "DeleteSliceTag"}
        assert getattr(p, delete[kind])(root, oid) == 1
        assert getattr(p, f"Get{kind}s")(root, oid) == []
    assert counts(p, root) == start
