"""The rest of PLCAPI's object set: addresses, interfaces, node tags and groups, conf files,
PCUs, ilinks and the key blacklist.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "address_types",
        sa.Column("address_type_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=20), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("address_type_id", name=op.f("pk_address_types")),
        sa.UniqueConstraint("name", name=op.f("uq_address_types_name")),
    )
    op.create_table(
        "conf_files",
        sa.Column("conf_file_id", sa.Integer(), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("dest", sa.Text(), nullable=False),
        sa.Column("file_permissions", sa.Text(), nullable=False),
        sa.Column("file_owner", sa.Text(), nullable=False),
        sa.Column("file_group", sa.Text(), nullable=False),
        sa.Column("preinstall_cmd", sa.Text(), nullable=True),
        sa.Column("postinstall_cmd", sa.Text(), nullable=True),
        sa.Column("error_cmd", sa.Text(), nullable=True),
        sa.Column("ignore_cmd_errors", sa.Boolean(), nullable=False),
        sa.Column("always_update", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("conf_file_id", name=op.f("pk_conf_files")),
    )
    op.create_table(
        "key_blacklist",
        sa.Column("key_hash", sa.String(length=64), nullable=False),
        sa.Column("time", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("key_hash", name=op.f("pk_key_blacklist")),
    )
    op.create_table(
        "addresses",
        sa.Column("address_id", sa.Integer(), nullable=False),
        sa.Column("site_id", sa.Integer(), nullable=False),
        sa.Column("line1", sa.Text(), nullable=True),
        sa.Column("line2", sa.Text(), nullable=True),
        sa.Column("line3", sa.Text(), nullable=True),
        sa.Column("city", sa.Text(), nullable=True),
        sa.Column("state", sa.Text(), nullable=True),
        sa.Column("postalcode", sa.Text(), nullable=True),
        sa.Column("country", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["site_id"], ["sites.site_id"], name=op.f("fk_addresses_site_id_sites"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("address_id", name=op.f("pk_addresses")),
    )
    op.create_index(op.f("ix_addresses_site_id"), "addresses", ["site_id"], unique=False)
    op.create_table(
        "nodegroups",
        sa.Column("nodegroup_id", sa.Integer(), nullable=False),
        sa.Column("groupname", sa.String(length=50), nullable=False),
        sa.Column("tag_type_id", sa.Integer(), nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ["tag_type_id"],
            ["tag_types.tag_type_id"],
            name=op.f("fk_nodegroups_tag_type_id_tag_types"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("nodegroup_id", name=op.f("pk_nodegroups")),
        sa.UniqueConstraint("groupname", name=op.f("uq_nodegroups_groupname")),
    )
    op.create_index(op.f("ix_nodegroups_tag_type_id"), "nodegroups", ["tag_type_id"], unique=False)
    op.create_table(
        "pcus",
        sa.Column("pcu_id", sa.Integer(), nullable=False),
        sa.Column("site_id", sa.Integer(), nullable=False),
        sa.Column("hostname", sa.Text(), nullable=True),
        sa.Column("ip", sa.Text(), nullable=False),
        sa.Column("protocol", sa.Text(), nullable=True),
        sa.Column("username", sa.Text(), nullable=True),
        sa.Column("password", sa.Text(), nullable=True),
        sa.Column("model", sa.Text(), nullable=True),
        sa.Column("notes", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["site_id"], ["sites.site_id"], name=op.f("fk_pcus_site_id_sites"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("pcu_id", name=op.f("pk_pcus")),
    )
    op.create_index(op.f("ix_pcus_site_id"), "pcus", ["site_id"], unique=False)
    op.create_table(
        "address_address_type",
        sa.Column("address_id", sa.Integer(), nullable=False),
        sa.Column("address_type_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["address_id"],
            ["addresses.address_id"],
            name=op.f("fk_address_address_type_address_id_addresses"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["address_type_id"],
            ["address_types.address_type_id"],
            name=op.f("fk_address_address_type_address_type_id_address_types"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("address_id", "address_type_id", name=op.f("pk_address_address_type")),
    )
    op.create_table(
        "conf_file_node",
        sa.Column("conf_file_id", sa.Integer(), nullable=False),
        sa.Column("node_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["conf_file_id"],
            ["conf_files.conf_file_id"],
            name=op.f("fk_conf_file_node_conf_file_id_conf_files"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["node_id"], ["nodes.node_id"], name=op.f("fk_conf_file_node_node_id_nodes"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("conf_file_id", "node_id", name=op.f("pk_conf_file_node")),
    )
    op.create_table(
        "conf_file_nodegroup",
        sa.Column("conf_file_id", sa.Integer(), nullable=False),
        sa.Column("nodegroup_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["conf_file_id"],
            ["conf_files.conf_file_id"],
            name=op.f("fk_conf_file_nodegroup_conf_file_id_conf_files"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["nodegroup_id"],
            ["nodegroups.nodegroup_id"],
            name=op.f("fk_conf_file_nodegroup_nodegroup_id_nodegroups"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("conf_file_id", "nodegroup_id", name=op.f("pk_conf_file_nodegroup")),
    )
    op.create_table(
        "interfaces",
        sa.Column("interface_id", sa.Integer(), nullable=False),
        sa.Column("node_id", sa.Integer(), nullable=False),
        sa.Column("is_primary", sa.Boolean(), nullable=False),
        sa.Column("method", sa.String(length=20), nullable=False),
        sa.Column("type", sa.String(length=20), nullable=False),
        sa.Column("ip", sa.Text(), nullable=True),
        sa.Column("mac", sa.Text(), nullable=True),
        sa.Column("gateway", sa.Text(), nullable=True),
        sa.Column("network", sa.Text(), nullable=True),
        sa.Column("broadcast", sa.Text(), nullable=True),
        sa.Column("netmask", sa.Text(), nullable=True),
        sa.Column("dns1", sa.Text(), nullable=True),
        sa.Column("dns2", sa.Text(), nullable=True),
        sa.Column("bwlimit", sa.Integer(), nullable=True),
        sa.Column("hostname", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["node_id"], ["nodes.node_id"], name=op.f("fk_interfaces_node_id_nodes"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("interface_id", name=op.f("pk_interfaces")),
    )
    op.create_index(op.f("ix_interfaces_node_id"), "interfaces", ["node_id"], unique=False)
    op.create_table(
        "node_tags",
        sa.Column("node_tag_id", sa.Integer(), nullable=False),
        sa.Column("node_id", sa.Integer(), nullable=False),
        sa.Column("tag_type_id", sa.Integer(), nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ["node_id"], ["nodes.node_id"], name=op.f("fk_node_tags_node_id_nodes"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["tag_type_id"],
            ["tag_types.tag_type_id"],
            name=op.f("fk_node_tags_tag_type_id_tag_types"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("node_tag_id", name=op.f("pk_node_tags")),
    )
    op.create_index(op.f("ix_node_tags_node_id"), "node_tags", ["node_id"], unique=False)
    op.create_index(op.f("ix_node_tags_tag_type_id"), "node_tags", ["tag_type_id"], unique=False)
    op.create_table(
        "pcu_node",
        sa.Column("pcu_id", sa.Integer(), nullable=False),
        sa.Column("node_id", sa.Integer(), nullable=False),
        sa.Column("port", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["node_id"], ["nodes.node_id"], name=op.f("fk_pcu_node_node_id_nodes"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["pcu_id"], ["pcus.pcu_id"], name=op.f("fk_pcu_node_pcu_id_pcus"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("pcu_id", "node_id", name=op.f("pk_pcu_node")),
    )
    op.create_table(
        "ilinks",
        sa.Column("ilink_id", sa.Integer(), nullable=False),
        sa.Column("src_interface_id", sa.Integer(), nullable=False),
        sa.Column("dst_interface_id", sa.Integer(), nullable=False),
        sa.Column("tag_type_id", sa.Integer(), nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ["dst_interface_id"],
            ["interfaces.interface_id"],
            name=op.f("fk_ilinks_dst_interface_id_interfaces"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["src_interface_id"],
            ["interfaces.interface_id"],
            name=op.f("fk_ilinks_src_interface_id_interfaces"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["tag_type_id"],
            ["tag_types.tag_type_id"],
            name=op.f("fk_ilinks_tag_type_id_tag_types"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("ilink_id", name=op.f("pk_ilinks")),
    )
    op.create_index(op.f("ix_ilinks_tag_type_id"), "ilinks", ["tag_type_id"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_ilinks_tag_type_id"), table_name="ilinks")
    op.drop_table("ilinks")
    op.drop_table("pcu_node")
    op.drop_index(op.f("ix_node_tags_tag_type_id"), table_name="node_tags")
    op.drop_index(op.f("ix_node_tags_node_id"), table_name="node_tags")
    op.drop_table("node_tags")
    op.drop_index(op.f("ix_interfaces_node_id"), table_name="interfaces")
    op.drop_table("interfaces")
    op.drop_table("conf_file_nodegroup")
    op.drop_table("conf_file_node")
    op.drop_table("address_address_type")
    op.drop_index(op.f("ix_pcus_site_id"), table_name="pcus")
    op.drop_table("pcus")
    op.drop_index(op.f("ix_nodegroups_tag_type_id"), table_name="nodegroups")
    op.drop_table("nodegroups")
    op.drop_index(op.f("ix_addresses_site_id"), table_name="addresses")
    op.drop_table("addresses")
    op.drop_table("key_blacklist")
    op.drop_table("conf_files")
    op.drop_table("address_types")
