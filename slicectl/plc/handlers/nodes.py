"""Nodes, their keys, and GetSlivers: a node's whole view of what it should run."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from sqlalchemy import and_, func, literal, or_, select, text, union_all, update

from .. import crud
from .. import schema as s
from ..auth import new_node_key
from ..call import Call
from ..errors import InvalidArgument
from ..methods import TABLE, Fields, Ref, arg
from ..objects import BOOT_STATES, NODE, NODE_TYPES, ROLE_IDS, SITE
from ..policy import ADMIN, EVERYONE, check_write_node, deny
from ..policy import NODE as NODE_ROLE
from ..views import CachedView
from ..wire import Prerendered, render_members
from .common import key_free, lookup, register_delete, register_get

WRITERS = frozenset({"admin", "pi", "tech"})

register_get(NODE, EVERYONE)
lookup("GetNodeTypes", EVERYONE, lambda: list(NODE_TYPES), "The node types.")
lookup("GetBootStates", EVERYONE, lambda: list(BOOT_STATES), "The boot states.")


def writable_node(call: Call, ref: object) -> dict[str, Any]:
    row = crud.resolve(call.conn, NODE, ref)
    check_write_node(call.caller, row["site_id"])
    return row


@TABLE.method("AddNode", WRITERS, arg("site_id_or_login_base", Ref(SITE)),
              arg("node_fields", Fields(NODE, "add")), returns="int", writes=True)
def add_node(call: Call, sref: object, fields: dict[str, Any]) -> int:
    """Add a node at a site; it gets a fresh node key (see GetNodeKey)."""
    site = crud.resolve(call.conn, SITE, sref)
    check_write_node(call.caller, site["site_id"])
    key_free(call, NODE, fields)
    values = {"model": None, "version": None, **NODE.defaults, **fields,
              "hostname_lc": fields["hostname"].lower(), "site_id": site["site_id"],
              "node_key": new_node_key(), "date_created": call.now, "last_updated": call.now}
    node_id = crud.insert_row(call.conn, NODE, values)
    call.event("Node", [node_id], fields)
    return node_id


@TABLE.method("UpdateNode", WRITERS, arg("node_id_or_hostname", Ref(NODE)),
              arg("node_fields", Fields(NODE, "update")), returns="int", writes=True)
def update_node(call: Call, ref: object, fields: dict[str, Any]) -> int:
    """Update a node (admins, and PIs and techs of its site)."""
    row = writable_node(call, ref)
    values = dict(fields)
    key_free(call, NODE, fields, row["node_id"])
    if "hostname" in fields:
        values["hostname_lc"] = fields["hostname"].lower()
    crud.update_row(call.conn, NODE, row["node_id"], {**values, "last_updated": call.now})
    call.event("Node", [row["node_id"]], fields)
    return 1


register_delete(NODE, WRITERS, guard=lambda call, row: check_write_node(call.caller, row["site_id"]),
                doc="Delete a node (slices lose it, its interfaces and tags go).")


@TABLE.method("GetNodeKey", ADMIN, arg("node_id_or_hostname", Ref(NODE)), returns="string",
              writes=False)
def get_node_key(call: Call, ref: object) -> str:
    """The node's secret key (base64), for its boot configuration (NODE_ID, NODE_KEY)."""
    return str(crud.resolve(call.conn, NODE, ref)["node_key"])


@TABLE.method("RegenerateNodeKey", ADMIN, arg("node_id_or_hostname", Ref(NODE)),
              returns="string", writes=True)
def regenerate_node_key(call: Call, ref: object) -> str:
    """Give the node a new key (the old one stops working) and return it."""
    row = crud.resolve(call.conn, NODE, ref)
    key = new_node_key()
    crud.update_row(call.conn, NODE, row["node_id"], {"node_key": key})
    call.conn.execute(s.sessions.delete().where(s.sessions.c.node_id == row["node_id"]))
    call.event("Node", [row["node_id"]], {"node_key": "regenerated"})
    return key


# GetSlivers -----------------------------------------------------------------------------------

def _keys_of(call: Call, persons: Any) -> dict[int, list[dict[str, str]]]:
    """The keys of the enabled persons among ``persons`` (a subquery of person ids), by
    person, in key_id order."""
    out: dict[int, list[dict[str, str]]] = defaultdict(list)
    rows = call.conn.execute(
        select(s.keys.c.key_id, s.keys.c.person_id, s.keys.c.key_type, s.keys.c.key)
        .join(s.persons, s.persons.c.person_id == s.keys.c.person_id)
        .where(s.keys.c.person_id.in_(persons), s.persons.c.enabled.is_(True)))
    for _, pid, kt, key in sorted(rows):  # by key_id
        out[pid].append({"key_type": kt, "key": key})
    return out


#: At most this many contacts per sliver (members first, then the site's PIs).
MAX_CONTACTS = 20


def _contacts_of(call: Call, live: Any) -> dict[int, list[str]]:
    """Whom to write about each live slice (slicectl's extension of GetSlivers, for the
    node's audit pages): the e-mail addresses of its enabled members, then of its site's
    enabled PIs, each once."""
    pr, ps = s.person_role, s.person_site
    members = (select(s.slice_person.c.slice_id, s.persons.c.person_id, s.persons.c.email,
                      literal(0).label("rank"))
               .join(s.persons, s.persons.c.person_id == s.slice_person.c.person_id)
               .where(s.slice_person.c.slice_id.in_(live), s.persons.c.enabled.is_(True)))
    pis = (select(s.slices.c.slice_id, s.persons.c.person_id, s.persons.c.email,
                  literal(1).label("rank"))
           .join(ps, ps.c.site_id == s.slices.c.site_id)
           .join(pr, and_(pr.c.person_id == ps.c.person_id, pr.c.role_id == ROLE_IDS["pi"]))
           .join(s.persons, s.persons.c.person_id == ps.c.person_id)
           .where(s.slices.c.slice_id.in_(live), s.persons.c.enabled.is_(True)))
    out: dict[int, list[str]] = defaultdict(list)
    for sid, _rank, _pid, email in sorted(
            (r[0], r[3], r[1], r[2]) for r in call.conn.execute(union_all(members, pis))):
        if email not in out[sid] and len(out[sid]) < MAX_CONTACTS:
            out[sid].append(email)
    return out


def slivers_view(call: Call, node: dict[str, Any]) -> dict[str, Any]:
    """GetSlivers' answer for ``node`` (pure reads). Every query names the node's live
    slices as a subquery, not as a list of ids: the statements stay the same from call
    to call, so the database plans each once (psycopg prepares them)."""
    conn, now, nid = call.conn, call.now, node["node_id"]
    live = (select(s.slice_node.c.slice_id)
            .join(s.slices, s.slices.c.slice_id == s.slice_node.c.slice_id)
            .where(s.slice_node.c.node_id == nid, s.slices.c.expires > now))
    slices = [dict(r) for r in conn.execute(
        select(s.slices.c.slice_id, s.slices.c.name, s.slices.c.instantiation,
               s.slices.c.expires, s.slices.c.description, s.slices.c.url)
        .where(s.slices.c.slice_id.in_(live))
        .order_by(s.slices.c.name)).mappings()]
    members: dict[int, list[int]] = defaultdict(list)
    tags: dict[int, list[tuple[bool, int, str, str]]] = defaultdict(list)
    if slices:
        for sid, pid in conn.execute(select(s.slice_person.c.slice_id, s.slice_person.c.person_id)
                                     .where(s.slice_person.c.slice_id.in_(live))):
            members[sid].append(pid)
        for sid, tnid, tid, name, value in conn.execute(
                select(s.slice_tags.c.slice_id, s.slice_tags.c.node_id, s.slice_tags.c.slice_tag_id,
                       s.tag_types.c.tagname, s.slice_tags.c.value)
                .join(s.tag_types, s.tag_types.c.tag_type_id == s.slice_tags.c.tag_type_id)
                .where(s.slice_tags.c.slice_id.in_(live))):
            # the node scope is filtered here: an OR with "node_id IS NULL" in SQL made
            # SQLite walk the node_id index over every global tag of every slice
            if tnid is None or tnid == nid:
                tags[sid].append((tnid is None, tid, name, value))
    keys = _keys_of(call, select(s.slice_person.c.person_id)
                    .where(s.slice_person.c.slice_id.in_(live))) if members else {}
    contacts = _contacts_of(call, live) if slices else {}
    slivers = []
    for sl in slices:
        local = {name for glob, _, name, _ in tags[sl["slice_id"]] if not glob}
        attrs = [{"tagname": name, "value": value}
                 for glob, _, name, value in sorted(tags[sl["slice_id"]])
                 if not glob or name not in local]
        slivers.append({**sl, "keys": [k for p in sorted(members[sl["slice_id"]]) for k in keys[p]],
                        "attributes": attrs, "description": sl["description"] or "",
                        "url": sl["url"] or "", "contacts": contacts.get(sl["slice_id"], [])})
    pr = s.person_role
    site_admins = conn.execute(
        select(s.person_site.c.person_id).join(pr, pr.c.person_id == s.person_site.c.person_id)
        .where(s.person_site.c.site_id == node["site_id"],
               pr.c.role_id.in_([ROLE_IDS["pi"], ROLE_IDS["tech"]]))).scalars().all()
    admins = conn.execute(select(pr.c.person_id).where(pr.c.role_id == ROLE_IDS["admin"])
                          ).scalars().all()
    akeys = _keys_of(call, sorted(set(site_admins) | set(admins)))
    accounts = [
        {"name": "site_admin", "keys": [k for p in sorted(set(site_admins)) for k in akeys[p]]},
        {"name": "root", "keys": [k for p in sorted(set(admins)) for k in akeys[p]]},
    ]
    initscripts = [dict(r) for r in conn.execute(
        select(s.initscripts).where(s.initscripts.c.enabled.is_(True))
        .order_by(s.initscripts.c.initscript_id)).mappings()]
    interfaces = [dict(r) for r in conn.execute(
        select(s.interfaces).where(s.interfaces.c.node_id == nid)
        .order_by(s.interfaces.c.interface_id)).mappings()]
    groups = select(s.nodegroups.c.nodegroup_id).join(s.node_tags, and_(
        s.node_tags.c.tag_type_id == s.nodegroups.c.tag_type_id,
        s.node_tags.c.value == s.nodegroups.c.value)).where(s.node_tags.c.node_id == nid)
    bound = or_(
        s.conf_files.c.conf_file_id.in_(select(s.conf_file_node.c.conf_file_id)
                                        .where(s.conf_file_node.c.node_id == nid)),
        s.conf_files.c.conf_file_id.in_(select(s.conf_file_nodegroup.c.conf_file_id)
                                        .where(s.conf_file_nodegroup.c.nodegroup_id.in_(groups))))
    conf_files = [dict(r) for r in conn.execute(
        select(s.conf_files).where(s.conf_files.c.enabled.is_(True), bound)
        .order_by(s.conf_files.c.conf_file_id)).mappings()]
    return {"timestamp": now, "node_id": nid, "hostname": node["hostname"], "slivers": slivers,
            "accounts": accounts, "initscripts": initscripts, "interfaces": interfaces,
            "conf_files": conf_files}


@TABLE.method("GetSlivers", ADMIN | NODE_ROLE,
              arg("node_id_or_hostname", Ref(NODE), optional=True), returns="struct",
              writes=True)
def get_slivers(call: Call, ref: object) -> dict[str, Any]:
    """What a node should run: its live slivers (keys of enabled members; node-scoped tags
    before and instead of global ones), the site_admin and root accounts, initscripts,
    interfaces and conf files. A node calls it without a node argument; this records its
    last contact."""
    if call.caller.kind == "node":
        if ref is not None:
            other = crud.resolve(call.conn, NODE, ref)["node_id"]
            if other != call.caller.node_id:
                raise deny("A node may get only its own slivers")
        ref = call.caller.node_id
    elif ref is None:
        raise InvalidArgument("Invalid node_id_or_hostname value: expected a node, got nil")
    node = crud.resolve(call.conn, NODE, ref)
    if call.caller.kind == "node":
        if call.conn.dialect.name == "postgresql":
            # a last contact lost in a crash is harmless: do not wait for its flush to disk
            call.conn.execute(text("SET LOCAL synchronous_commit TO OFF"))
        call.conn.execute(update(s.nodes).where(s.nodes.c.node_id == node["node_id"])
                          .values(last_contact=call.now))
    if not call.wire or call.api is None:
        return slivers_view(call, node)
    views = call.api.views
    version = views.version(call.conn.execute(select(func.max(s.events.c.event_id))).scalar() or 0)
    cached = views.get(node["node_id"], version, call.now)
    if cached is None:
        view = slivers_view(call, node)
        del view["timestamp"]
        cached = CachedView(version, min((sl["expires"] for sl in view["slivers"]),
                                         default=NEVER), render_members(view))
        views.put(node["node_id"], cached)
    return Prerendered({"timestamp": call.now}, cached.tail)


#: A view that lists no slice never stops being true by itself.
NEVER = 2**62


