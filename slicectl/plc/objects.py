"""PLCAPI's object classes as data: fields, what Add and Update accept, natural keys, and
how read-only list fields are computed.

A wire field is a column of the same name (``fields``), a scalar SQL expression
(``derived``: selectable and filterable), or a ``computed`` value loaded with one extra
query per Get for all rows at once.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import ColumnElement, Table, and_, select
from sqlalchemy.engine import Connection

from . import schema as s
from .fields import DOUBLE, INT, STR, TEXT, TIME, Field

ROLES: dict[int, str] = {10: "admin", 20: "pi", 30: "user", 40: "tech"}
ROLE_IDS: dict[str, int] = {v: k for k, v in ROLES.items()}
KEY_TYPES = ("ssh",)
NODE_TYPES = ("regular", "reservable")
BOOT_STATES = ("boot", "safeboot", "reinstall", "disabled")
NETWORK_METHODS = ("static", "dhcp", "proxy", "tap", "ipmi", "unknown")
NETWORK_TYPES = ("ipv4", "ipv6")
INSTANTIATIONS = ("plc-instantiated", "not-instantiated", "delegated", "nm-controller")

LOGIN_BASE_RE = r"[a-z0-9]+"
SLICE_NAME_RE = r"[a-z0-9]+_[a-z0-9_]+"
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
HOSTNAME_RE = rf"{_LABEL}(?:\.{_LABEL})+"
EMAIL_RE = r"[^@\s]+@[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?"

#: Computed field: (connection, the ids of the rows read, now) -> {id: value}.
Computed = Callable[[Connection, Sequence[int], int], dict[int, Any]]


@dataclass(frozen=True)
class Obj:
    """One PLCAPI object class."""

    name: str
    table: Table
    id: str
    fields: Mapping[str, Field]
    add: frozenset[str] = frozenset()
    update: frozenset[str] = frozenset()
    required: frozenset[str] = frozenset()
    defaults: Mapping[str, object] = field(default_factory=dict)
    key: str | None = None
    key_column: str | None = None
    key_lower: bool = False
    derived: Mapping[str, Callable[[], ColumnElement[Any]]] = field(default_factory=dict)
    computed: Mapping[str, Computed] = field(default_factory=dict)
    write_only: frozenset[str] = frozenset()
    live: Callable[[int], ColumnElement[bool]] | None = None

    @property
    def readable(self) -> tuple[str, ...]:
        return (*[f for f in self.fields if f not in self.write_only], *self.derived,
                *self.computed)

    @property
    def filterable(self) -> frozenset[str]:
        return frozenset(f for f in self.fields if f not in self.write_only) | set(self.derived)

    def field_of(self, name: str) -> Field:
        if name in self.fields:
            return self.fields[name]
        return STR


# computed-field helpers ---------------------------------------------------------------------

def _pairs(conn: Connection, stmt: Any) -> dict[int, list[Any]]:
    out: dict[int, list[Any]] = defaultdict(list)
    for parent, child in conn.execute(stmt):
        out[parent].append(child)
    return out


def children(table: Table, parent: str, child: str, *order: ColumnElement[Any],
             live_slices: bool = False) -> Computed:
    """A list of ``child`` values per ``parent`` id, from ``table``."""
    def load(conn: Connection, ids: Sequence[int], now: int) -> dict[int, Any]:
        pc, cc = table.c[parent], table.c[child]
        stmt = select(pc, cc).where(pc.in_(ids))
        if live_slices:
            join_col = table.c.slice_id if table is not s.slices else None
            if join_col is not None:
                stmt = stmt.join(s.slices, s.slices.c.slice_id == join_col)
            stmt = stmt.where(s.slices.c.expires > now)
        stmt = stmt.order_by(pc, *order, cc) if order else stmt.order_by(pc, cc)
        got = _pairs(conn, stmt)
        return {i: got.get(i, []) for i in ids}
    return load


def role_names(conn: Connection, ids: Sequence[int], now: int) -> dict[int, Any]:
    got = children(s.person_role, "person_id", "role_id")(conn, ids, now)
    return {i: [ROLES[r] for r in v if r in ROLES] for i, v in got.items()}


def tag_type_role_names(conn: Connection, ids: Sequence[int], now: int) -> dict[int, Any]:
    got = children(s.tag_type_role, "tag_type_id", "role_id")(conn, ids, now)
    return {i: [ROLES[r] for r in v if r in ROLES] for i, v in got.items()}


def address_type_names(conn: Connection, ids: Sequence[int], now: int) -> dict[int, Any]:
    stmt = (select(s.address_address_type.c.address_id, s.address_types.c.name)
            .join(s.address_types, s.address_types.c.address_type_id
                  == s.address_address_type.c.address_type_id)
            .where(s.address_address_type.c.address_id.in_(ids))
            .order_by(s.address_address_type.c.address_id, s.address_types.c.address_type_id))
    got = _pairs(conn, stmt)
    return {i: got.get(i, []) for i in ids}


def node_nodegroups(conn: Connection, ids: Sequence[int], now: int) -> dict[int, Any]:
    """Node group membership comes from node tags: a node is in a group when its tag of
    the group's tag type has the group's value."""
    nt, ng = s.node_tags, s.nodegroups
    stmt = (select(nt.c.node_id, ng.c.nodegroup_id)
            .join(ng, and_(ng.c.tag_type_id == nt.c.tag_type_id, ng.c.value == nt.c.value))
            .where(nt.c.node_id.in_(ids)).order_by(nt.c.node_id, ng.c.nodegroup_id))
    got = _pairs(conn, stmt)
    return {i: sorted(set(got.get(i, []))) for i in ids}


def nodegroup_nodes(conn: Connection, ids: Sequence[int], now: int) -> dict[int, Any]:
    nt, ng = s.node_tags, s.nodegroups
    stmt = (select(ng.c.nodegroup_id, nt.c.node_id)
            .join(nt, and_(ng.c.tag_type_id == nt.c.tag_type_id, ng.c.value == nt.c.value))
            .where(ng.c.nodegroup_id.in_(ids)).order_by(ng.c.nodegroup_id, nt.c.node_id))
    got = _pairs(conn, stmt)
    return {i: sorted(set(got.get(i, []))) for i in ids}


def json_column(table: Table, column: str, idcol: str) -> Computed:
    def load(conn: Connection, ids: Sequence[int], now: int) -> dict[int, Any]:
        rows = conn.execute(select(table.c[idcol], table.c[column]).where(table.c[idcol].in_(ids)))
        return {i: json.loads(v) for i, v in rows}
    return load


def tagname_of(table: Table) -> Callable[[], ColumnElement[Any]]:
    def expr() -> ColumnElement[Any]:
        return (select(s.tag_types.c.tagname)
                .where(s.tag_types.c.tag_type_id == table.c.tag_type_id)
                .scalar_subquery())
    return expr


def column_of(other: Table, other_id: str, col: str, table: Table) -> Callable[[], ColumnElement[Any]]:
    def expr() -> ColumnElement[Any]:
        return select(other.c[col]).where(other.c[other_id] == table.c[other_id]).scalar_subquery()
    return expr


# the objects ----------------------------------------------------------------------------------

def _f(kind: str = "string", max_len: int | None = 254, nullable: bool = True, **kw: Any) -> Field:
    return Field(kind, max_len, nullable, **kw)


RO_INT = INT
NN_STR = _f(nullable=False)

SITE = Obj(
    "Site", s.sites, "site_id",
    fields={
        "site_id": RO_INT, "name": NN_STR, "abbreviated_name": _f(max_len=50, nullable=False),
        "login_base": _f(max_len=20, nullable=False, pattern=LOGIN_BASE_RE,
                         doc="lower-case letters and digits"),
        "is_public": _f("boolean", None, False), "enabled": _f("boolean", None, False),
        "latitude": DOUBLE, "longitude": DOUBLE, "url": STR,
        "max_slices": _f("int", None, False, min_value=0),
        "max_slivers": _f("int", None, False, min_value=0),
        "date_created": TIME, "last_updated": TIME,
    },
    add=frozenset({"name", "abbreviated_name", "login_base", "is_public", "enabled", "latitude",
                   "longitude", "url", "max_slices", "max_slivers"}),
    update=frozenset({"name", "abbreviated_name", "login_base", "is_public", "enabled",
                      "latitude", "longitude", "url", "max_slices", "max_slivers"}),
    required=frozenset({"name", "abbreviated_name", "login_base"}),
    defaults={"is_public": True, "enabled": True, "max_slices": 10, "max_slivers": 1000},
    key="login_base",
    computed={
        "person_ids": children(s.person_site, "site_id", "person_id"),
        "slice_ids": children(s.slices, "site_id", "slice_id", live_slices=True),
        "node_ids": children(s.nodes, "site_id", "node_id"),
        "address_ids": children(s.addresses, "site_id", "address_id"),
        "pcu_ids": children(s.pcus, "site_id", "pcu_id"),
    },
)

PERSON = Obj(
    "Person", s.persons, "person_id",
    fields={
        "person_id": RO_INT, "first_name": _f(max_len=128, nullable=False),
        "last_name": _f(max_len=128, nullable=False), "title": _f(max_len=128),
        "email": _f(max_len=254, nullable=False, pattern=EMAIL_RE, doc="an email address"),
        "password": _f(max_len=254), "phone": _f(max_len=64), "url": STR,
        "bio": _f(max_len=4096), "enabled": _f("boolean", None, False),
        "date_created": TIME, "last_updated": TIME,
    },
    add=frozenset({"first_name", "last_name", "title", "email", "password", "phone", "url",
                   "bio"}),
    update=frozenset({"first_name", "last_name", "title", "email", "password", "phone", "url",
                      "bio", "enabled"}),
    required=frozenset({"first_name", "last_name", "email"}),
    defaults={"enabled": False},
    key="email", key_column="email_lc", key_lower=True,
    write_only=frozenset({"password"}),
    computed={
        "role_ids": children(s.person_role, "person_id", "role_id"),
        "roles": role_names,
        "site_ids": children(s.person_site, "person_id", "site_id",
                             s.person_site.c.is_primary.desc()),
        "key_ids": children(s.keys, "person_id", "key_id"),
        "slice_ids": children(s.slice_person, "person_id", "slice_id", live_slices=True),
    },
)

KEY = Obj(
    "Key", s.keys, "key_id",
    fields={"key_id": RO_INT, "key_type": _f(max_len=20, nullable=False, choices=KEY_TYPES),
            "key": _f(max_len=16384, nullable=False), "person_id": RO_INT},
    add=frozenset({"key_type", "key"}), update=frozenset({"key_type", "key"}),
    required=frozenset({"key_type", "key"}),
)

NODE = Obj(
    "Node", s.nodes, "node_id",
    fields={
        "node_id": RO_INT, "hostname": _f(max_len=255, nullable=False, pattern=HOSTNAME_RE,
                                          doc="a fully qualified domain name"),
        "site_id": RO_INT, "node_type": _f(max_len=20, nullable=False, choices=NODE_TYPES),
        "boot_state": _f(max_len=20, nullable=False, choices=BOOT_STATES),
        "model": _f(max_len=255), "version": _f(max_len=64), "last_contact": TIME,
        "date_created": TIME, "last_updated": TIME,
    },
    add=frozenset({"hostname", "node_type", "boot_state", "model", "version"}),
    update=frozenset({"hostname", "node_type", "boot_state", "model", "version"}),
    required=frozenset({"hostname"}),
    defaults={"node_type": "regular", "boot_state": "boot"},
    key="hostname", key_column="hostname_lc", key_lower=True,
    computed={
        "slice_ids": children(s.slice_node, "node_id", "slice_id", live_slices=True),
        "interface_ids": children(s.interfaces, "node_id", "interface_id"),
        "nodegroup_ids": node_nodegroups,
        "conf_file_ids": children(s.conf_file_node, "node_id", "conf_file_id"),
        "node_tag_ids": children(s.node_tags, "node_id", "node_tag_id"),
        "pcu_ids": children(s.pcu_node, "node_id", "pcu_id"),
        "ports": children(s.pcu_node, "node_id", "port"),
    },
)

SLICE = Obj(
    "Slice", s.slices, "slice_id",
    fields={
        "slice_id": RO_INT, "site_id": RO_INT,
        "name": _f(max_len=32, nullable=False, pattern=SLICE_NAME_RE,
                   doc="<login_base>_<name> in [a-z0-9_]"),
        "instantiation": _f(max_len=20, nullable=False, choices=INSTANTIATIONS),
        "url": STR, "description": _f(max_len=2048),
        "max_nodes": _f("int", None, False, min_value=0),
        "creator_person_id": RO_INT, "created": TIME,
        "expires": _f("timestamp", None, False),
    },
    add=frozenset({"name", "instantiation", "url", "description", "max_nodes"}),
    update=frozenset({"instantiation", "url", "description", "max_nodes", "expires"}),
    required=frozenset({"name"}),
    defaults={"instantiation": "plc-instantiated", "max_nodes": 100},
    key="name",
    live=lambda now: s.slices.c.expires > now,
    computed={
        "node_ids": children(s.slice_node, "slice_id", "node_id"),
        "person_ids": children(s.slice_person, "slice_id", "person_id"),
        "slice_tag_ids": children(s.slice_tags, "slice_id", "slice_tag_id"),
    },
)

TAG_TYPE = Obj(
    "TagType", s.tag_types, "tag_type_id",
    fields={"tag_type_id": RO_INT, "tagname": _f(max_len=100, nullable=False),
            "description": _f(max_len=2048), "category": STR},
    add=frozenset({"tagname", "description", "category"}),
    update=frozenset({"tagname", "description", "category"}),
    required=frozenset({"tagname"}),
    key="tagname",
    computed={"role_ids": children(s.tag_type_role, "tag_type_id", "role_id"),
              "roles": tag_type_role_names},
)

SLICE_TAG = Obj(
    "SliceTag", s.slice_tags, "slice_tag_id",
    fields={"slice_tag_id": RO_INT, "slice_id": RO_INT, "tag_type_id": RO_INT,
            "value": TEXT, "node_id": RO_INT},
    derived={"tagname": tagname_of(s.slice_tags),
             "name": column_of(s.slices, "slice_id", "name", s.slice_tags)},
    live=lambda now: s.slice_tags.c.slice_id.in_(
        select(s.slices.c.slice_id).where(s.slices.c.expires > now)),
)

INITSCRIPT = Obj(
    "InitScript", s.initscripts, "initscript_id",
    fields={"initscript_id": RO_INT, "name": NN_STR, "enabled": _f("boolean", None, False),
            "script": _f(max_len=65535, nullable=False)},
    add=frozenset({"name", "enabled", "script"}), update=frozenset({"name", "enabled", "script"}),
    required=frozenset({"name", "script"}), defaults={"enabled": True}, key="name",
)

EVENT = Obj(
    "Event", s.events, "event_id",
    fields={"event_id": RO_INT, "time": TIME, "person_id": RO_INT, "node_id": RO_INT,
            "caller": STR, "method": STR, "object_type": STR},
    computed={"object_ids": json_column(s.events, "object_ids", "event_id"),
              "fields": json_column(s.events, "fields", "event_id")},
)

# the rest of the object set -------------------------------------------------------------------

ADDRESS_TYPE = Obj(
    "AddressType", s.address_types, "address_type_id",
    fields={"address_type_id": RO_INT, "name": _f(max_len=20, nullable=False),
            "description": STR},
    add=frozenset({"name", "description"}), update=frozenset({"name", "description"}),
    required=frozenset({"name"}), key="name",
)

ADDRESS = Obj(
    "Address", s.addresses, "address_id",
    fields={"address_id": RO_INT, "site_id": RO_INT, "line1": STR, "line2": STR, "line3": STR,
            "city": STR, "state": STR, "postalcode": _f(max_len=64), "country": STR},
    add=frozenset({"line1", "line2", "line3", "city", "state", "postalcode", "country"}),
    update=frozenset({"line1", "line2", "line3", "city", "state", "postalcode", "country"}),
    computed={"address_type_ids": children(s.address_address_type, "address_id",
                                           "address_type_id"),
              "address_types": address_type_names},
)

INTERFACE = Obj(
    "Interface", s.interfaces, "interface_id",
    fields={"interface_id": RO_INT, "node_id": RO_INT, "is_primary": _f("boolean", None, False),
            "method": _f(max_len=20, nullable=False, choices=NETWORK_METHODS),
            "type": _f(max_len=20, nullable=False, choices=NETWORK_TYPES),
            "ip": _f(max_len=64), "mac": _f(max_len=64), "gateway": _f(max_len=64),
            "network": _f(max_len=64), "broadcast": _f(max_len=64), "netmask": _f(max_len=64),
            "dns1": _f(max_len=64), "dns2": _f(max_len=64), "bwlimit": _f("int", None, True,
                                                                          min_value=0),
            "hostname": _f(max_len=255)},
    add=frozenset({"is_primary", "method", "type", "ip", "mac", "gateway", "network",
                   "broadcast", "netmask", "dns1", "dns2", "bwlimit", "hostname"}),
    update=frozenset({"is_primary", "method", "type", "ip", "mac", "gateway", "network",
                      "broadcast", "netmask", "dns1", "dns2", "bwlimit", "hostname"}),
    required=frozenset({"method", "type"}), defaults={"is_primary": False},
)

NODE_TAG = Obj(
    "NodeTag", s.node_tags, "node_tag_id",
    fields={"node_tag_id": RO_INT, "node_id": RO_INT, "tag_type_id": RO_INT, "value": TEXT},
    derived={"tagname": tagname_of(s.node_tags),
             "hostname": column_of(s.nodes, "node_id", "hostname", s.node_tags)},
)

NODE_GROUP = Obj(
    "NodeGroup", s.nodegroups, "nodegroup_id",
    fields={"nodegroup_id": RO_INT, "groupname": _f(max_len=50, nullable=False),
            "tag_type_id": RO_INT, "value": _f(max_len=254, nullable=False)},
    update=frozenset({"groupname", "value"}),
    key="groupname",
    derived={"tagname": tagname_of(s.nodegroups)},
    computed={"node_ids": nodegroup_nodes,
              "conf_file_ids": children(s.conf_file_nodegroup, "nodegroup_id", "conf_file_id")},
)

_CF_FIELDS = ("enabled", "source", "dest", "file_permissions", "file_owner", "file_group",
              "preinstall_cmd", "postinstall_cmd", "error_cmd", "ignore_cmd_errors",
              "always_update")
CONF_FILE = Obj(
    "ConfFile", s.conf_files, "conf_file_id",
    fields={"conf_file_id": RO_INT, "enabled": _f("boolean", None, False),
            "source": _f(max_len=1024, nullable=False), "dest": _f(max_len=1024, nullable=False),
            "file_permissions": _f(max_len=20, nullable=False),
            "file_owner": _f(max_len=50, nullable=False),
            "file_group": _f(max_len=50, nullable=False),
            "preinstall_cmd": _f(max_len=1024), "postinstall_cmd": _f(max_len=1024),
            "error_cmd": _f(max_len=1024), "ignore_cmd_errors": _f("boolean", None, False),
            "always_update": _f("boolean", None, False)},
    add=frozenset(_CF_FIELDS), update=frozenset(_CF_FIELDS),
    required=frozenset({"source", "dest"}),
    defaults={"enabled": True, "file_permissions": "0644", "file_owner": "root",
              "file_group": "root", "ignore_cmd_errors": False, "always_update": False},
    computed={"node_ids": children(s.conf_file_node, "conf_file_id", "node_id"),
              "nodegroup_ids": children(s.conf_file_nodegroup, "conf_file_id", "nodegroup_id")},
)

PCU = Obj(
    "PCU", s.pcus, "pcu_id",
    fields={"pcu_id": RO_INT, "site_id": RO_INT, "hostname": _f(max_len=255),
            "ip": _f(max_len=64, nullable=False), "protocol": _f(max_len=64),
            "username": _f(max_len=254), "password": _f(max_len=254), "model": _f(max_len=32),
            "notes": _f(max_len=4096)},
    add=frozenset({"hostname", "ip", "protocol", "username", "password", "model", "notes"}),
    update=frozenset({"hostname", "ip", "protocol", "username", "password", "model", "notes"}),
    required=frozenset({"ip"}),
    computed={"node_ids": children(s.pcu_node, "pcu_id", "node_id"),
              "ports": children(s.pcu_node, "pcu_id", "port")},
)

ILINK = Obj(
    "Ilink", s.ilinks, "ilink_id",
    fields={"ilink_id": RO_INT, "src_interface_id": RO_INT, "dst_interface_id": RO_INT,
            "tag_type_id": RO_INT, "value": TEXT},
    derived={"tagname": tagname_of(s.ilinks)},
)

ALL: tuple[Obj, ...] = (SITE, PERSON, KEY, NODE, SLICE, TAG_TYPE, SLICE_TAG, INITSCRIPT, EVENT,
                        ADDRESS_TYPE, ADDRESS, INTERFACE, NODE_TAG, NODE_GROUP, CONF_FILE, PCU,
                        ILINK)
