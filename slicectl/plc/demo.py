"""``make up``'s demo slice, made in PLC as a site would make it: the site ``demo``, a PI
and a user (with the demo key), the slice ``demo_slice`` with the user as member, on
this node. The PI is also a PI of the node's own site with the demo key, so the node's
site_admin account takes it (``ssh site_admin@node``). Idempotent: what exists is kept,
a changed key replaces the old one."""

from __future__ import annotations

import time

from .client import PLC

#: make up renews the demo slice to this far ahead when less than half of it is left.
RENEW_S = 8 * 7 * 86400

SITE = "demo"
PI = "pi@demo.localdomain"
USER = "user@demo.localdomain"
SLICE = "demo_slice"


def _person(plc: PLC, email: str, first: str, role: str) -> int:
    found = plc.GetPersons({"email": email}, ["person_id"])
    if found:
        return int(found[0]["person_id"])
    pid = int(plc.AddPerson({"email": email, "first_name": first, "last_name": "Demo"}))
    plc.AddPersonToSite(pid, SITE)
    plc.AddRoleToPerson(role, pid)
    plc.UpdatePerson(pid, {"enabled": True})
    return pid


def ensure_demo_slice(plc: PLC, node_id: int, key: str) -> int:
    """The demo slice on node ``node_id`` with ``key`` its member's only key; its id."""
    if not plc.GetSites({"login_base": SITE}, ["site_id"]):
        plc.AddSite({"login_base": SITE, "name": "slicectl demo site", "abbreviated_name": "demo",
                     "enabled": True, "max_slices": 10})
    pi = _person(plc, PI, "Pat", "pi")
    site_id = plc.GetNodes(node_id, ["site_id"])[0]["site_id"]
    if site_id not in plc.GetPersons(pi, ["site_ids"])[0]["site_ids"]:
        plc.AddPersonToSite(pi, site_id)  # the node's site: its site_admin account
    user = _person(plc, USER, "Uma", "user")
    for person in (user, pi):
        keys = plc.GetKeys({"person_id": person}, ["key_id", "key"])
        if [k["key"] for k in keys] != [key]:
            for k in keys:
                plc.DeleteKey(k["key_id"])
            plc.AddPersonKey(person, {"key_type": "ssh", "key": key})
    found = plc.GetSlices({"name": SLICE}, ["slice_id", "person_ids", "node_ids", "expires"])
    now = int(time.time())
    if found:
        sl = found[0]
        if sl["expires"] < now + RENEW_S // 2:
            plc.UpdateSlice(SLICE, {"expires": now + RENEW_S})
    else:
        sid = plc.AddSlice({"name": SLICE, "url": "https://localhost/",
                            "description": "demo slice created by `make up`"})
        sl = {"slice_id": sid, "person_ids": [], "node_ids": []}
        plc.UpdateSlice(SLICE, {"expires": now + RENEW_S})
    if user not in sl["person_ids"]:
        plc.AddPersonToSlice(user, SLICE)
    if node_id not in sl["node_ids"]:
        plc.AddSliceToNodes(SLICE, [node_id])
    return int(sl["slice_id"])
