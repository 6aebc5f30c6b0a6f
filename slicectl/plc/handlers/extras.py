"""The rest of PLCAPI's object set, each method one small entry: address types and site
addresses, interfaces, node tags and node groups, conf files, PCUs and ilinks."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from .. import crud
from .. import schema as s
from ..call import Call
from ..errors import InvalidArgument
from ..fields import TEXT, Field
from ..methods import TABLE, Ref, arg
from ..objects import (
    ADDRESS,
    ADDRESS_TYPE,
    CONF_FILE,
    ILINK,
    INTERFACE,
    NETWORK_METHODS,
    NETWORK_TYPES,
    NODE,
    NODE_GROUP,
    NODE_TAG,
    PCU,
    SITE,
)
from ..policy import ADMIN, EVERYONE, PERSONS, PI, check_write_tag, deny
from ..policy import NODE as NODE_ROLE
from .common import (
    Guard,
    key_free,
    lookup,
    register_add,
    register_delete,
    register_get,
    register_link,
    register_update,
    tag_type,
)
from .slices import TagTypeArg

SITE_STAFF = frozenset({"admin", "pi", "tech"})


def at_site(*roles: str) -> Guard:
    """Admins, or a caller holding one of ``roles`` at the row's site."""
    def guard(call: Call, row: dict[str, Any]) -> None:
        c = call.caller
        if c.is_admin or any(c.has(r, row.get("site_id")) for r in roles):
            return
        raise deny(f"Only admins and {' or '.join(roles)}s of the site may do this")
    return guard


def node_site(call: Call, node_id: int) -> int | None:
    return call.conn.execute(select(s.nodes.c.site_id).where(s.nodes.c.node_id == node_id)).scalar()


def at_node_site(*roles: str) -> Guard:
    """Admins, or ``roles`` at the site of the row's node (``node_id``)."""
    inner = at_site(*roles)

    def guard(call: Call, row: dict[str, Any]) -> None:
        inner(call, {"site_id": node_site(call, row["node_id"])})
    return guard


def at_interface_site(*roles: str) -> Guard:
    """Admins, or ``roles`` at the site of the node of the row's (source) interface."""
    inner = at_node_site(*roles)

    def guard(call: Call, row: dict[str, Any]) -> None:
        iid = row.get("interface_id", row.get("src_interface_id"))
        nid = call.conn.execute(select(s.interfaces.c.node_id).where(
            s.interfaces.c.interface_id == iid)).scalar()
        inner(call, {"node_id": nid})
    return guard


# address types and site addresses ---------------------------------------------------------------

register_get(ADDRESS_TYPE, EVERYONE)
register_add(ADDRESS_TYPE, ADMIN)
register_update(ADDRESS_TYPE, ADMIN)
register_delete(ADDRESS_TYPE, ADMIN)

register_get(ADDRESS, PERSONS, name="GetAddresses")
register_add(ADDRESS, PI, parent=SITE, guard=at_site("pi"), name="AddSiteAddress",
             doc="Add an address to a site (admins, PIs of the site); returns its address_id.")
register_update(ADDRESS, PI, guard=at_site("pi"))
register_delete(ADDRESS, PI, guard=at_site("pi"))
register_link("AddAddressTypeToAddress", PI, s.address_address_type, ADDRESS_TYPE, ADDRESS,
              True, guard=at_site("pi"), guard_right=True,
              doc="Give an address a type (idempotent).")
register_link("DeleteAddressTypeFromAddress", PI, s.address_address_type, ADDRESS_TYPE,
              ADDRESS, False, guard=at_site("pi"), guard_right=True,
              doc="Take a type off an address (idempotent).")

# interfaces -----------------------------------------------------------------------------------

lookup("GetNetworkMethods", EVERYONE, lambda: list(NETWORK_METHODS), "The network methods.")
lookup("GetNetworkTypes", EVERYONE, lambda: list(NETWORK_TYPES), "The network types.")
register_get(INTERFACE, EVERYONE)
register_add(INTERFACE, SITE_STAFF, parent=NODE, guard=at_node_site("pi", "tech"))
register_update(INTERFACE, SITE_STAFF, guard=at_node_site("pi", "tech"))
register_delete(INTERFACE, SITE_STAFF, guard=at_node_site("pi", "tech"))

# ilinks ---------------------------------------------------------------------------------------

register_get(ILINK, EVERYONE)


@TABLE.method("AddIlink", SITE_STAFF, arg("src_interface_id", Ref(INTERFACE)),
              arg("dst_interface_id", Ref(INTERFACE)), arg("tag_type_id_or_name", TagTypeArg()),
              arg("value", TEXT), returns="int", writes=True)
def add_ilink(call: Call, src: object, dst: object, tt_ref: object, value: str | None) -> int:
    """Link two interfaces with a tag (admins, PIs and techs of the source's site)."""
    srow = crud.resolve(call.conn, INTERFACE, src)
    drow = crud.resolve(call.conn, INTERFACE, dst)
    at_node_site("pi", "tech")(call, srow)
    tt = tag_type(call, tt_ref)
    check_write_tag(call.caller, tt["roles"], True)
    values = {"src_interface_id": srow["interface_id"], "dst_interface_id": drow["interface_id"],
              "tag_type_id": tt["tag_type_id"], "value": value or ""}
    new_id = crud.insert_row(call.conn, ILINK, values)
    call.event("Ilink", [new_id], values)
    return new_id


ILINK_GUARD = at_interface_site("pi", "tech")


@TABLE.method("UpdateIlink", SITE_STAFF, arg("ilink_id", Ref(ILINK)), arg("value", TEXT),
              returns="int", writes=True)
def update_ilink(call: Call, ref: object, value: str | None) -> int:
    """Change an ilink's value."""
    row = crud.resolve(call.conn, ILINK, ref)
    ILINK_GUARD(call, row)
    crud.update_row(call.conn, ILINK, row["ilink_id"], {"value": value or ""})
    call.event("Ilink", [row["ilink_id"]], {"value": value})
    return 1


register_delete(ILINK, SITE_STAFF, guard=ILINK_GUARD)

# node tags and node groups ----------------------------------------------------------------------

register_get(NODE_TAG, EVERYONE)


def _node_tag_guard(call: Call, node_id: int, tt: dict[str, Any]) -> None:
    c = call.caller
    site = node_site(call, node_id)
    check_write_tag(c, tt["roles"], c.is_admin or c.has("pi", site) or c.has("tech", site))


@TABLE.method("AddNodeTag", SITE_STAFF, arg("node_id_or_hostname", Ref(NODE)),
              arg("tag_type_id_or_name", TagTypeArg()), arg("value", TEXT), returns="int",
              writes=True)
def add_node_tag(call: Call, nref: object, tt_ref: object, value: str | None) -> int:
    """Tag a node (one tag of each type per node); node groups follow node tags."""
    node = crud.resolve(call.conn, NODE, nref)
    tt = tag_type(call, tt_ref)
    _node_tag_guard(call, node["node_id"], tt)
    if call.conn.execute(select(s.node_tags.c.node_tag_id).where(
            s.node_tags.c.node_id == node["node_id"],
            s.node_tags.c.tag_type_id == tt["tag_type_id"])).first():
        raise InvalidArgument(f"Invalid tag_type value: expected a tag the node does not have, "
                              f"got {tt['tagname']!r} (already set)")
    values = {"node_id": node["node_id"], "tag_type_id": tt["tag_type_id"], "value": value or ""}
    new_id = crud.insert_row(call.conn, NODE_TAG, values)
    call.event("NodeTag", [new_id], values)
    return new_id


@TABLE.method("UpdateNodeTag", SITE_STAFF, arg("node_tag_id", Ref(NODE_TAG)), arg("value", TEXT),
              returns="int", writes=True)
def update_node_tag(call: Call, ref: object, value: str | None) -> int:
    """Change a node tag's value."""
    row = crud.resolve(call.conn, NODE_TAG, ref)
    _node_tag_guard(call, row["node_id"], tag_type(call, row["tag_type_id"]))
    crud.update_row(call.conn, NODE_TAG, row["node_tag_id"], {"value": value or ""})
    call.event("NodeTag", [row["node_tag_id"]], {"value": value})
    return 1


@TABLE.method("DeleteNodeTag", SITE_STAFF, arg("node_tag_id", Ref(NODE_TAG)), returns="int",
              writes=True)
def delete_node_tag(call: Call, ref: object) -> int:
    """Delete a node tag."""
    row = crud.resolve(call.conn, NODE_TAG, ref)
    _node_tag_guard(call, row["node_id"], tag_type(call, row["tag_type_id"]))
    crud.delete_row(call.conn, NODE_TAG, row["node_tag_id"])
    call.event("NodeTag", [row["node_tag_id"]])
    return 1


register_get(NODE_GROUP, EVERYONE)
GROUPNAME = Field("string", 50, nullable=False)


@TABLE.method("AddNodeGroup", ADMIN, arg("groupname", GROUPNAME),
              arg("tag_type_id_or_name", TagTypeArg()), arg("value", Field("string", 254, False)),
              returns="int", writes=True)
def add_node_group(call: Call, groupname: str, tt_ref: object, value: str) -> int:
    """A node group: the nodes whose tag of this type has this value."""
    tt = tag_type(call, tt_ref)
    fields = {"groupname": groupname}
    key_free(call, NODE_GROUP, fields)
    values = {"groupname": groupname, "tag_type_id": tt["tag_type_id"], "value": value}
    new_id = crud.insert_row(call.conn, NODE_GROUP, values)
    call.event("NodeGroup", [new_id], values)
    return new_id


register_update(NODE_GROUP, ADMIN)
register_delete(NODE_GROUP, ADMIN)

# conf files -----------------------------------------------------------------------------------

register_get(CONF_FILE, PERSONS | NODE_ROLE)
register_add(CONF_FILE, ADMIN)
register_update(CONF_FILE, ADMIN)
register_delete(CONF_FILE, ADMIN)
register_link("AddConfFileToNode", ADMIN, s.conf_file_node, CONF_FILE, NODE, True,
              doc="Push a conf file to a node (idempotent).")
register_link("DeleteConfFileFromNode", ADMIN, s.conf_file_node, CONF_FILE, NODE, False,
              doc="Stop pushing a conf file to a node (idempotent).")
register_link("AddConfFileToNodeGroup", ADMIN, s.conf_file_nodegroup, CONF_FILE, NODE_GROUP,
              True, doc="Push a conf file to a node group's nodes (idempotent).")
register_link("DeleteConfFileFromNodeGroup", ADMIN, s.conf_file_nodegroup, CONF_FILE,
              NODE_GROUP, False, doc="Stop pushing a conf file to a node group (idempotent).")

# PCUs -----------------------------------------------------------------------------------------

register_get(PCU, SITE_STAFF)
register_add(PCU, SITE_STAFF, parent=SITE, guard=at_site("pi", "tech"),
             doc="Add a power control unit to a site; returns its pcu_id.")
register_update(PCU, SITE_STAFF, guard=at_site("pi", "tech"))
register_delete(PCU, SITE_STAFF, guard=at_site("pi", "tech"))
PORT = Field("int", None, nullable=False, min_value=0)
register_link("AddNodeToPCU", SITE_STAFF, s.pcu_node, NODE, PCU, True,
              guard=at_site("pi", "tech"), extra=("port", PORT),
              doc="Plug a node into a PCU port (the node's site staff).")
register_link("DeleteNodeFromPCU", SITE_STAFF, s.pcu_node, NODE, PCU, False,
              guard=at_site("pi", "tech"), doc="Unplug a node from a PCU (idempotent).")
