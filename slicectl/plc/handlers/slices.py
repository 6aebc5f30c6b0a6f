"""Slices, their members and nodes, slice tags, tag types and initscripts."""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy import ColumnElement, insert, or_, select
from sqlalchemy.engine import Connection

from .. import crud
from .. import schema as s
from ..call import Call
from ..errors import InvalidArgument
from ..fields import TEXT, Field
from ..methods import TABLE, Fields, Ref, Refs, arg
from ..objects import INITSCRIPT, NODE, PERSON, ROLE_IDS, SLICE, SLICE_NAME_RE, SLICE_TAG, TAG_TYPE
from ..policy import (
    ADMIN,
    CREATE_LIFETIME_S,
    MEMBER_TAGS,
    PERSONS,
    PI,
    RESOURCE_TAGS,
    check_add_slice,
    check_renewal,
    check_slice_members,
    check_write_slice,
    check_write_tag,
    deny,
    may_write_slice,
)
from ..policy import NODE as NODE_ROLE
from .common import RoleArg, key_free, link, register_delete, register_get, register_update, tag_type


def seed_tag_types(conn: Connection) -> None:
    """The tag types PLC knows from the start: resource tags admin-only, the others also
    writable by PIs and users of the slice."""
    have = set(conn.execute(select(s.tag_types.c.tagname)).scalars())
    for name, roles, category in (
            *[(t, ("admin",), "slice/rspec") for t in RESOURCE_TAGS],
            *[(t, ("admin", "pi", "user"), "slice/general") for t in MEMBER_TAGS]):
        if name in have:
            continue
        tid = conn.execute(insert(s.tag_types).values(
            tagname=name, description=f"slice tag {name}", category=category)
        ).inserted_primary_key
        assert tid is not None
        for r in roles:
            conn.execute(insert(s.tag_type_role).values(tag_type_id=tid[0], role_id=ROLE_IDS[r]))


# slices ---------------------------------------------------------------------------------------

def _visible_slices(call: Call) -> ColumnElement[bool] | None:
    c = call.caller
    if c.is_admin or c.kind == "node":
        return None
    member = select(s.slice_person.c.slice_id).where(s.slice_person.c.person_id == c.person_id)
    return or_(s.slices.c.site_id.in_(c.site_ids), s.slices.c.slice_id.in_(member))


register_get(SLICE, PERSONS | NODE_ROLE, restrict=_visible_slices,
             doc="Return the slices matching the filter; expired slices never appear. "
                 "Non-admins see their sites' slices and those they are members of.")


def live_slice(call: Call, ref: object) -> dict[str, Any]:
    """A slice that has not expired, with its member ids."""
    row = crud.resolve(call.conn, SLICE, ref, call.now)
    row["person_ids"] = list(call.conn.execute(select(s.slice_person.c.person_id).where(
        s.slice_person.c.slice_id == row["slice_id"])).scalars())
    return row


def writable_slice(call: Call, ref: object) -> dict[str, Any]:
    row = live_slice(call, ref)
    check_write_slice(call.caller, row["site_id"], row["person_ids"])
    return row


@TABLE.method("AddSlice", PI, arg("slice_fields", Fields(SLICE, "add")), returns="int",
              writes=True)
def add_slice(call: Call, fields: dict[str, Any]) -> int:
    """Create a slice named <login_base>_<name> under an enabled site below its
    max_slices; it expires two weeks from now."""
    name = fields["name"]
    if not re.fullmatch(SLICE_NAME_RE, name):
        raise InvalidArgument(f"Invalid name value: expected <login_base>_<name>, got {name!r}")
    login_base = name.split("_", 1)[0]
    site = call.conn.execute(select(s.sites).where(s.sites.c.login_base == login_base)
                             ).mappings().first()
    if site is None:
        raise InvalidArgument(f"Invalid name value: expected a prefix naming a site, got "
                              f"{login_base!r}")
    check_add_slice(call.caller, site["site_id"])
    if not site["enabled"]:
        raise InvalidArgument(f"Invalid name value: expected an enabled site, got "
                              f"{login_base!r} (disabled)")
    if call.conn.execute(select(s.slices.c.slice_id).where(s.slices.c.name == name)).first():
        raise InvalidArgument(f"Invalid name value: expected an unused slice name, got {name!r}")
    live = crud.count(call.conn, SLICE, (s.slices.c.site_id == site["site_id"])
                      & (s.slices.c.expires > call.now))
    if live >= site["max_slices"]:
        raise InvalidArgument(f"Invalid name value: expected a site below its max_slices "
                              f"({site['max_slices']}), got {login_base!r} with {live}")
    values = {"url": None, "description": None, **SLICE.defaults, **fields,
              "site_id": site["site_id"], "creator_person_id": call.caller.person_id,
              "created": call.now, "expires": call.now + CREATE_LIFETIME_S}
    slice_id = crud.insert_row(call.conn, SLICE, values)
    call.event("Slice", [slice_id], fields)
    return slice_id


@TABLE.method("UpdateSlice", PERSONS, arg("slice_id_or_name", Ref(SLICE)),
              arg("slice_fields", Fields(SLICE, "update")), returns="int", writes=True)
def update_slice(call: Call, ref: object, fields: dict[str, Any]) -> int:
    """Update a slice; a later ``expires`` renews it (non-admins: at most 8 weeks ahead,
    and only with a url and a description). max_nodes is admin-only."""
    row = writable_slice(call, ref)
    if "max_nodes" in fields and not call.caller.is_admin:
        raise deny("Only admins may change max_nodes")
    if "expires" in fields:
        merged = {**row, **fields}
        check_renewal(call.caller, call.now, fields["expires"], merged["url"],
                      merged["description"])
    crud.update_row(call.conn, SLICE, row["slice_id"], fields)
    call.event("Slice", [row["slice_id"]], fields)
    return 1


@TABLE.method("DeleteSlice", PERSONS, arg("slice_id_or_name", Ref(SLICE)), returns="int",
              writes=True)
def delete_slice(call: Call, ref: object) -> int:
    """Delete a slice (its slivers vanish from every node's GetSlivers)."""
    row = writable_slice(call, ref)
    crud.delete_row(call.conn, SLICE, row["slice_id"])
    call.event("Slice", [row["slice_id"]])
    return 1


def _slice_nodes(call: Call, ref: object, node_refs: list[object], present: bool) -> int:
    row = writable_slice(call, ref)
    nodes = crud.resolve_many(call.conn, NODE, node_refs)
    changed = [n["node_id"] for n in nodes
               if link(call, s.slice_node, present, slice_id=row["slice_id"], node_id=n["node_id"])]
    if present:
        total = crud.count(call.conn, NODE, s.nodes.c.node_id.in_(
            select(s.slice_node.c.node_id).where(s.slice_node.c.slice_id == row["slice_id"])))
        if total > row["max_nodes"]:
            raise InvalidArgument(f"Invalid node_ids value: expected at most max_nodes "
                                  f"({row['max_nodes']}) nodes, got {total}")
    if changed:
        call.event("Slice", [row["slice_id"]], {"node_ids": changed})
    return 1


@TABLE.method("AddSliceToNodes", PERSONS, arg("slice_id_or_name", Ref(SLICE)),
              arg("node_ids_or_hostnames", Refs(NODE)), returns="int", writes=True)
def add_slice_to_nodes(call: Call, ref: object, nodes: list[object]) -> int:
    """Put a slice on nodes (idempotent; at most max_nodes)."""
    return _slice_nodes(call, ref, nodes, True)


@TABLE.method("DeleteSliceFromNodes", PERSONS, arg("slice_id_or_name", Ref(SLICE)),
              arg("node_ids_or_hostnames", Refs(NODE)), returns="int", writes=True)
def delete_slice_from_nodes(call: Call, ref: object, nodes: list[object]) -> int:
    """Take a slice off nodes (idempotent)."""
    return _slice_nodes(call, ref, nodes, False)


def _slice_member(call: Call, pref: object, ref: object, present: bool) -> int:
    person = crud.resolve(call.conn, PERSON, pref)
    row = live_slice(call, ref)
    check_slice_members(call.caller, row["site_id"])
    if link(call, s.slice_person, present, slice_id=row["slice_id"],
            person_id=person["person_id"]):
        call.event("Slice", [row["slice_id"]], {"person_id": person["person_id"]})
    return 1


@TABLE.method("AddPersonToSlice", PI, arg("person_id_or_email", Ref(PERSON)),
              arg("slice_id_or_name", Ref(SLICE)), returns="int", writes=True)
def add_person_to_slice(call: Call, pref: object, ref: object) -> int:
    """Make a person a member of a slice (their keys reach its slivers)."""
    return _slice_member(call, pref, ref, True)


@TABLE.method("DeletePersonFromSlice", PI, arg("person_id_or_email", Ref(PERSON)),
              arg("slice_id_or_name", Ref(SLICE)), returns="int", writes=True)
def delete_person_from_slice(call: Call, pref: object, ref: object) -> int:
    """Remove a member from a slice."""
    return _slice_member(call, pref, ref, False)


# slice tags -----------------------------------------------------------------------------------

register_get(SLICE_TAG, PERSONS | NODE_ROLE,
             doc="Return the slice tags matching the filter (tags of expired slices never "
                 "appear).")

TAGNAME = Field("string", 100, nullable=False)


class TagTypeArg:
    xmlrpc = "int or string"

    def describe(self) -> str:
        return "tag_type_id or tagname"

    def check(self, name: str, value: object) -> object:
        return Ref(TAG_TYPE).check(name, value)


def _tag_check(call: Call, tt: dict[str, Any], row: dict[str, Any], value: str) -> None:
    check_write_tag(call.caller, tt["roles"],
                    may_write_slice(call.caller, row["site_id"], row["person_ids"]))
    if tt["tagname"] == "initscript":
        found = call.conn.execute(select(s.initscripts.c.initscript_id).where(
            s.initscripts.c.name == value)).first()
        if found is None:
            raise InvalidArgument(f"Invalid value value: expected the name of an initscript, "
                                  f"got {value[:40]!r}")


@TABLE.method("AddSliceTag", PERSONS, arg("slice_id_or_name", Ref(SLICE)),
              arg("tag_type_id_or_name", TagTypeArg()), arg("value", TEXT),
              arg("node_id_or_hostname", Ref(NODE), optional=True), returns="int", writes=True)
def add_slice_tag(call: Call, ref: object, tt_ref: object, value: str | None,
                  node_ref: object) -> int:
    """Tag a slice, on all its nodes or (with a node) on one; node-scoped tags win.
    Resource tags are admin-only; the same value and scope again is fault 102."""
    if value is None:
        raise InvalidArgument("Invalid value value: expected string, got nil")
    row = live_slice(call, ref)
    tt = tag_type(call, tt_ref)
    _tag_check(call, tt, row, value)
    node_id = crud.resolve(call.conn, NODE, node_ref)["node_id"] if node_ref is not None else None
    dup = call.conn.execute(select(s.slice_tags.c.slice_tag_id).where(
        s.slice_tags.c.slice_id == row["slice_id"], s.slice_tags.c.tag_type_id == tt["tag_type_id"],
        s.slice_tags.c.value == value,
        s.slice_tags.c.node_id.is_(None) if node_id is None else s.slice_tags.c.node_id == node_id
    )).first()
    if dup is not None:
        raise InvalidArgument(f"Invalid value value: expected a new tag, got {tt['tagname']}="
                              f"{value[:40]!r} already set in that scope")
    tag_id = crud.insert_row(call.conn, SLICE_TAG, {
        "slice_id": row["slice_id"], "tag_type_id": tt["tag_type_id"], "value": value,
        "node_id": node_id})
    call.event("SliceTag", [tag_id], {"slice_id": row["slice_id"], "tagname": tt["tagname"],
                                      "value": value, "node_id": node_id})
    return tag_id


def _writable_tag(call: Call, tag_id: object) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    tag = crud.resolve(call.conn, SLICE_TAG, tag_id, call.now)
    row = live_slice(call, tag["slice_id"])
    tt = tag_type(call, tag["tag_type_id"])
    return tag, row, tt


@TABLE.method("UpdateSliceTag", PERSONS, arg("slice_tag_id", Ref(SLICE_TAG)),
              arg("value", Field("string", 65535, nullable=False)), returns="int", writes=True)
def update_slice_tag(call: Call, tag_id: object, value: str) -> int:
    """Change a slice tag's value."""
    tag, row, tt = _writable_tag(call, tag_id)
    _tag_check(call, tt, row, value)
    crud.update_row(call.conn, SLICE_TAG, tag["slice_tag_id"], {"value": value})
    call.event("SliceTag", [tag["slice_tag_id"]], {"value": value})
    return 1


@TABLE.method("DeleteSliceTag", PERSONS, arg("slice_tag_id", Ref(SLICE_TAG)), returns="int",
              writes=True)
def delete_slice_tag(call: Call, tag_id: object) -> int:
    """Delete a slice tag."""
    tag, row, tt = _writable_tag(call, tag_id)
    check_write_tag(call.caller, tt["roles"],
                    may_write_slice(call.caller, row["site_id"], row["person_ids"]))
    crud.delete_row(call.conn, SLICE_TAG, tag["slice_tag_id"])
    call.event("SliceTag", [tag["slice_tag_id"]])
    return 1


# tag types ------------------------------------------------------------------------------------

register_get(TAG_TYPE, PERSONS | NODE_ROLE)


@TABLE.method("AddTagType", ADMIN, arg("tag_type_fields", Fields(TAG_TYPE, "add")),
              returns="int", writes=True)
def add_tag_type(call: Call, fields: dict[str, Any]) -> int:
    """Add a tag type (writable by admins until AddRoleToTagType says otherwise)."""
    key_free(call, TAG_TYPE, fields)
    tid = crud.insert_row(call.conn, TAG_TYPE, {"description": None, "category": None, **fields})
    call.conn.execute(insert(s.tag_type_role).values(tag_type_id=tid, role_id=ROLE_IDS["admin"]))
    call.event("TagType", [tid], fields)
    return tid


register_update(TAG_TYPE, ADMIN)
register_delete(TAG_TYPE, ADMIN, doc="Delete a tag type and every tag of that type.")


def _tag_type_role(call: Call, role: int, ref: object, present: bool) -> int:
    tt = tag_type(call, ref)
    if link(call, s.tag_type_role, present, tag_type_id=tt["tag_type_id"], role_id=role):
        call.event("TagType", [tt["tag_type_id"]], {"role_id": role})
    return 1


@TABLE.method("AddRoleToTagType", ADMIN, arg("role_id_or_name", RoleArg()),
              arg("tag_type_id_or_name", TagTypeArg()), returns="int", writes=True)
def add_role_to_tag_type(call: Call, role: int, ref: object) -> int:
    """Let a role write tags of this type."""
    return _tag_type_role(call, role, ref, True)


@TABLE.method("DeleteRoleFromTagType", ADMIN, arg("role_id_or_name", RoleArg()),
              arg("tag_type_id_or_name", TagTypeArg()), returns="int", writes=True)
def delete_role_from_tag_type(call: Call, role: int, ref: object) -> int:
    """Stop a role writing tags of this type."""
    return _tag_type_role(call, role, ref, False)


# initscripts ----------------------------------------------------------------------------------

register_get(INITSCRIPT, PERSONS | NODE_ROLE)


@TABLE.method("AddInitScript", ADMIN, arg("initscript_fields", Fields(INITSCRIPT, "add")),
              returns="int", writes=True)
def add_initscript(call: Call, fields: dict[str, Any]) -> int:
    """Add a named initscript; a slice's ``initscript`` tag names one."""
    key_free(call, INITSCRIPT, fields)
    iid = crud.insert_row(call.conn, INITSCRIPT, {**INITSCRIPT.defaults, **fields})
    call.event("InitScript", [iid], fields)
    return iid


register_update(INITSCRIPT, ADMIN)
register_delete(INITSCRIPT, ADMIN)
