"""The database schema at the head revision (SQLAlchemy Core tables).

Migrations under ``migrations/versions`` build exactly this; a unit test compares them.
Rows are deleted for real (foreign keys cascade), so a deleted id simply finds nothing.
Timestamps are integer seconds since the epoch.
"""

from __future__ import annotations

from sqlalchemy import (
    Boolean,
    Column,
    Float,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Table,
    Text,
)

metadata = MetaData(naming_convention={
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
})


def _fk(target: str, nullable: bool = False, ondelete: str = "CASCADE") -> Column[int]:
    name = target.split(".")[1]
    return Column(name, Integer, ForeignKey(target, ondelete=ondelete), nullable=nullable,
                  index=True)


# revision 0001: principals, nodes, slices, tags, initscripts, sessions, events -------------

sites = Table(
    "sites", metadata,
    Column("site_id", Integer, primary_key=True),
    Column("login_base", String(20), nullable=False, unique=True),
    Column("name", Text, nullable=False),
    Column("abbreviated_name", Text, nullable=False),
    Column("is_public", Boolean, nullable=False),
    Column("enabled", Boolean, nullable=False),
    Column("latitude", Float(53)),
    Column("longitude", Float(53)),
    Column("url", Text),
    Column("max_slices", Integer, nullable=False),
    Column("max_slivers", Integer, nullable=False),
    Column("date_created", Integer, nullable=False),
    Column("last_updated", Integer, nullable=False),
)

persons = Table(
    "persons", metadata,
    Column("person_id", Integer, primary_key=True),
    Column("email", Text, nullable=False),
    Column("email_lc", String(254), nullable=False, unique=True),
    Column("first_name", Text, nullable=False),
    Column("last_name", Text, nullable=False),
    Column("title", Text),
    Column("phone", Text),
    Column("url", Text),
    Column("bio", Text),
    Column("enabled", Boolean, nullable=False),
    Column("password_hash", Text),
    Column("date_created", Integer, nullable=False),
    Column("last_updated", Integer, nullable=False),
)

person_site = Table(
    "person_site", metadata,
    Column("person_id", Integer, ForeignKey("persons.person_id", ondelete="CASCADE"),
           primary_key=True),
    Column("site_id", Integer, ForeignKey("sites.site_id", ondelete="CASCADE"),
           primary_key=True, index=True),
    Column("is_primary", Boolean, nullable=False),
)

person_role = Table(
    "person_role", metadata,
    Column("person_id", Integer, ForeignKey("persons.person_id", ondelete="CASCADE"),
           primary_key=True),
    Column("role_id", Integer, primary_key=True),
)

keys = Table(
    "keys", metadata,
    Column("key_id", Integer, primary_key=True),
    _fk("persons.person_id"),
    Column("key_type", String(20), nullable=False),
    Column("key", Text, nullable=False),
)

nodes = Table(
    "nodes", metadata,
    Column("node_id", Integer, primary_key=True),
    _fk("sites.site_id"),
    Column("hostname", Text, nullable=False),
    Column("hostname_lc", String(255), nullable=False, unique=True),
    Column("node_type", String(20), nullable=False),
    Column("boot_state", String(20), nullable=False),
    Column("model", Text),
    Column("version", Text),
    Column("node_key", String(64), nullable=False),
    Column("last_contact", Integer),
    Column("date_created", Integer, nullable=False),
    Column("last_updated", Integer, nullable=False),
)

slices = Table(
    "slices", metadata,
    Column("slice_id", Integer, primary_key=True),
    _fk("sites.site_id"),
    Column("name", String(32), nullable=False, unique=True),
    Column("instantiation", String(20), nullable=False),
    Column("url", Text),
    Column("description", Text),
    Column("max_nodes", Integer, nullable=False),
    Column("creator_person_id", Integer,
           ForeignKey("persons.person_id", ondelete="SET NULL"), nullable=True),
    Column("created", Integer, nullable=False),
    Column("expires", Integer, nullable=False, index=True),
)

slice_node = Table(
    "slice_node", metadata,
    Column("slice_id", Integer, ForeignKey("slices.slice_id", ondelete="CASCADE"),
           primary_key=True),
    Column("node_id", Integer, ForeignKey("nodes.node_id", ondelete="CASCADE"),
           primary_key=True, index=True),
)

slice_person = Table(
    "slice_person", metadata,
    Column("slice_id", Integer, ForeignKey("slices.slice_id", ondelete="CASCADE"),
           primary_key=True),
    Column("person_id", Integer, ForeignKey("persons.person_id", ondelete="CASCADE"),
           primary_key=True, index=True),
)

tag_types = Table(
    "tag_types", metadata,
    Column("tag_type_id", Integer, primary_key=True),
    Column("tagname", String(100), nullable=False, unique=True),
    Column("description", Text),
    Column("category", Text),
)

tag_type_role = Table(
    "tag_type_role", metadata,
    Column("tag_type_id", Integer, ForeignKey("tag_types.tag_type_id", ondelete="CASCADE"),
           primary_key=True),
    Column("role_id", Integer, primary_key=True),
)

slice_tags = Table(
    "slice_tags", metadata,
    Column("slice_tag_id", Integer, primary_key=True),
    _fk("slices.slice_id"),
    _fk("tag_types.tag_type_id"),
    Column("value", Text, nullable=False),
    _fk("nodes.node_id", nullable=True),
)

initscripts = Table(
    "initscripts", metadata,
    Column("initscript_id", Integer, primary_key=True),
    Column("name", String(254), nullable=False, unique=True),
    Column("enabled", Boolean, nullable=False),
    Column("script", Text, nullable=False),
)

sessions = Table(
    "sessions", metadata,
    Column("session_hash", String(64), primary_key=True),
    _fk("persons.person_id", nullable=True),
    _fk("nodes.node_id", nullable=True),
    Column("expires", Integer),
)

events = Table(
    "events", metadata,
    Column("event_id", Integer, primary_key=True),
    Column("time", Integer, nullable=False, index=True),
    Column("person_id", Integer),
    Column("node_id", Integer),
    Column("caller", Text, nullable=False),
    Column("method", String(64), nullable=False),
    Column("object_type", String(32), nullable=False),
    Column("object_ids", Text, nullable=False),
    Column("fields", Text, nullable=False),
)

# revision 0002: the rest of PLCAPI's object set ------------------------------------------

address_types = Table(
    "address_types", metadata,
    Column("address_type_id", Integer, primary_key=True),
    Column("name", String(20), nullable=False, unique=True),
    Column("description", Text),
)

addresses = Table(
    "addresses", metadata,
    Column("address_id", Integer, primary_key=True),
    _fk("sites.site_id"),
    Column("line1", Text),
    Column("line2", Text),
    Column("line3", Text),
    Column("city", Text),
    Column("state", Text),
    Column("postalcode", Text),
    Column("country", Text),
)

address_address_type = Table(
    "address_address_type", metadata,
    Column("address_id", Integer, ForeignKey("addresses.address_id", ondelete="CASCADE"),
           primary_key=True),
    Column("address_type_id", Integer,
           ForeignKey("address_types.address_type_id", ondelete="CASCADE"), primary_key=True),
)

interfaces = Table(
    "interfaces", metadata,
    Column("interface_id", Integer, primary_key=True),
    _fk("nodes.node_id"),
    Column("is_primary", Boolean, nullable=False),
    Column("method", String(20), nullable=False),
    Column("type", String(20), nullable=False),
    Column("ip", Text),
    Column("mac", Text),
    Column("gateway", Text),
    Column("network", Text),
    Column("broadcast", Text),
    Column("netmask", Text),
    Column("dns1", Text),
    Column("dns2", Text),
    Column("bwlimit", Integer),
    Column("hostname", Text),
)

node_tags = Table(
    "node_tags", metadata,
    Column("node_tag_id", Integer, primary_key=True),
    _fk("nodes.node_id"),
    _fk("tag_types.tag_type_id"),
    Column("value", Text, nullable=False),
)

nodegroups = Table(
    "nodegroups", metadata,
    Column("nodegroup_id", Integer, primary_key=True),
    Column("groupname", String(50), nullable=False, unique=True),
    _fk("tag_types.tag_type_id"),
    Column("value", Text, nullable=False),
)

conf_files = Table(
    "conf_files", metadata,
    Column("conf_file_id", Integer, primary_key=True),
    Column("enabled", Boolean, nullable=False),
    Column("source", Text, nullable=False),
    Column("dest", Text, nullable=False),
    Column("file_permissions", Text, nullable=False),
    Column("file_owner", Text, nullable=False),
    Column("file_group", Text, nullable=False),
    Column("preinstall_cmd", Text),
    Column("postinstall_cmd", Text),
    Column("error_cmd", Text),
    Column("ignore_cmd_errors", Boolean, nullable=False),
    Column("always_update", Boolean, nullable=False),
)

conf_file_node = Table(
    "conf_file_node", metadata,
    Column("conf_file_id", Integer, ForeignKey("conf_files.conf_file_id", ondelete="CASCADE"),
           primary_key=True),
    Column("node_id", Integer, ForeignKey("nodes.node_id", ondelete="CASCADE"),
           primary_key=True),
)

conf_file_nodegroup = Table(
    "conf_file_nodegroup", metadata,
    Column("conf_file_id", Integer, ForeignKey("conf_files.conf_file_id", ondelete="CASCADE"),
           primary_key=True),
    Column("nodegroup_id", Integer, ForeignKey("nodegroups.nodegroup_id", ondelete="CASCADE"),
           primary_key=True),
)

pcus = Table(
    "pcus", metadata,
    Column("pcu_id", Integer, primary_key=True),
    _fk("sites.site_id"),
    Column("hostname", Text),
    Column("ip", Text, nullable=False),
    Column("protocol", Text),
    Column("username", Text),
    Column("password", Text),
    Column("model", Text),
    Column("notes", Text),
)

pcu_node = Table(
    "pcu_node", metadata,
    Column("pcu_id", Integer, ForeignKey("pcus.pcu_id", ondelete="CASCADE"), primary_key=True),
    Column("node_id", Integer, ForeignKey("nodes.node_id", ondelete="CASCADE"),
           primary_key=True),
    Column("port", Integer, nullable=False),
)

ilinks = Table(
    "ilinks", metadata,
    Column("ilink_id", Integer, primary_key=True),
    Column("src_interface_id", Integer,
           ForeignKey("interfaces.interface_id", ondelete="CASCADE"), nullable=False),
    Column("dst_interface_id", Integer,
           ForeignKey("interfaces.interface_id", ondelete="CASCADE"), nullable=False),
    _fk("tag_types.tag_type_id"),
    Column("value", Text, nullable=False),
)

key_blacklist = Table(
    "key_blacklist", metadata,
    Column("key_hash", String(64), primary_key=True),
    Column("time", Integer, nullable=False),
)

# revision 0003: what nodes report they run (slicectl's extension) -----------------------

sliver_reports = Table(
    "sliver_reports", metadata,
    Column("node_id", Integer, ForeignKey("nodes.node_id", ondelete="CASCADE"),
           primary_key=True),
    Column("slice_name", String(64), primary_key=True),
    Column("state", String(20), nullable=False),
    Column("updated", Integer, nullable=False),
    # revision 0004: why (a node's policy refused the slice, say)
    Column("detail", String(300), nullable=False, server_default=""),
)

#: Tables of revision 0001 (the first); the rest came with 0002.
FIRST_REVISION_TABLES = ("sites", "persons", "person_site", "person_role", "keys", "nodes",
                         "slices", "slice_node", "slice_person", "tag_types", "tag_type_role",
                         "slice_tags", "initscripts", "sessions", "events")
