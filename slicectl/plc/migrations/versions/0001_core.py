"""Principals, nodes, slices, tags, initscripts, sessions and events.

Revision ID: 0001
Revises: None
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "events",
        sa.Column("event_id", sa.Integer(), nullable=False),
        sa.Column("time", sa.Integer(), nullable=False),
        sa.Column("person_id", sa.Integer(), nullable=True),
        sa.Column("node_id", sa.Integer(), nullable=True),
        sa.Column("caller", sa.Text(), nullable=False),
        sa.Column("method", sa.String(length=64), nullable=False),
        sa.Column("object_type", sa.String(length=32), nullable=False),
        sa.Column("object_ids", sa.Text(), nullable=False),
        sa.Column("fields", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("event_id", name=op.f("pk_events")),
    )
    op.create_index(op.f("ix_events_time"), "events", ["time"], unique=False)
    op.create_table(
        "initscripts",
        sa.Column("initscript_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=254), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("script", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("initscript_id", name=op.f("pk_initscripts")),
        sa.UniqueConstraint("name", name=op.f("uq_initscripts_name")),
    )
    op.create_table(
        "persons",
        sa.Column("person_id", sa.Integer(), nullable=False),
        sa.Column("email", sa.Text(), nullable=False),
        sa.Column("email_lc", sa.String(length=254), nullable=False),
        sa.Column("first_name", sa.Text(), nullable=False),
        sa.Column("last_name", sa.Text(), nullable=False),
        sa.Column("title", sa.Text(), nullable=True),
        sa.Column("phone", sa.Text(), nullable=True),
        sa.Column("url", sa.Text(), nullable=True),
        sa.Column("bio", sa.Text(), nullable=True),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("password_hash", sa.Text(), nullable=True),
        sa.Column("date_created", sa.Integer(), nullable=False),
        sa.Column("last_updated", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("person_id", name=op.f("pk_persons")),
        sa.UniqueConstraint("email_lc", name=op.f("uq_persons_email_lc")),
    )
    op.create_table(
        "sites",
        sa.Column("site_id", sa.Integer(), nullable=False),
        sa.Column("login_base", sa.String(length=20), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("abbreviated_name", sa.Text(), nullable=False),
        sa.Column("is_public", sa.Boolean(), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("latitude", sa.Float(precision=53), nullable=True),
        sa.Column("longitude", sa.Float(precision=53), nullable=True),
        sa.Column("url", sa.Text(), nullable=True),
        sa.Column("max_slices", sa.Integer(), nullable=False),
        sa.Column("max_slivers", sa.Integer(), nullable=False),
        sa.Column("date_created", sa.Integer(), nullable=False),
        sa.Column("last_updated", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("site_id", name=op.f("pk_sites")),
        sa.UniqueConstraint("login_base", name=op.f("uq_sites_login_base")),
    )
    op.create_table(
        "tag_types",
        sa.Column("tag_type_id", sa.Integer(), nullable=False),
        sa.Column("tagname", sa.String(length=100), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("category", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("tag_type_id", name=op.f("pk_tag_types")),
        sa.UniqueConstraint("tagname", name=op.f("uq_tag_types_tagname")),
    )
    op.create_table(
        "keys",
        sa.Column("key_id", sa.Integer(), nullable=False),
        sa.Column("person_id", sa.Integer(), nullable=False),
        sa.Column("key_type", sa.String(length=20), nullable=False),
        sa.Column("key", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ["person_id"], ["persons.person_id"], name=op.f("fk_keys_person_id_persons"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("key_id", name=op.f("pk_keys")),
    )
    op.create_index(op.f("ix_keys_person_id"), "keys", ["person_id"], unique=False)
    op.create_table(
        "nodes",
        sa.Column("node_id", sa.Integer(), nullable=False),
        sa.Column("site_id", sa.Integer(), nullable=False),
        sa.Column("hostname", sa.Text(), nullable=False),
        sa.Column("hostname_lc", sa.String(length=255), nullable=False),
        sa.Column("node_type", sa.String(length=20), nullable=False),
        sa.Column("boot_state", sa.String(length=20), nullable=False),
        sa.Column("model", sa.Text(), nullable=True),
        sa.Column("version", sa.Text(), nullable=True),
        sa.Column("node_key", sa.String(length=64), nullable=False),
        sa.Column("last_contact", sa.Integer(), nullable=True),
        sa.Column("date_created", sa.Integer(), nullable=False),
        sa.Column("last_updated", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["site_id"], ["sites.site_id"], name=op.f("fk_nodes_site_id_sites"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("node_id", name=op.f("pk_nodes")),
        sa.UniqueConstraint("hostname_lc", name=op.f("uq_nodes_hostname_lc")),
    )
    op.create_index(op.f("ix_nodes_site_id"), "nodes", ["site_id"], unique=False)
    op.create_table(
        "person_role",
        sa.Column("person_id", sa.Integer(), nullable=False),
        sa.Column("role_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["person_id"],
            ["persons.person_id"],
            name=op.f("fk_person_role_person_id_persons"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("person_id", "role_id", name=op.f("pk_person_role")),
    )
    op.create_table(
        "person_site",
        sa.Column("person_id", sa.Integer(), nullable=False),
        sa.Column("site_id", sa.Integer(), nullable=False),
        sa.Column("is_primary", sa.Boolean(), nullable=False),
        sa.ForeignKeyConstraint(
            ["person_id"],
            ["persons.person_id"],
            name=op.f("fk_person_site_person_id_persons"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["site_id"], ["sites.site_id"], name=op.f("fk_person_site_site_id_sites"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("person_id", "site_id", name=op.f("pk_person_site")),
    )
    op.create_index(op.f("ix_person_site_site_id"), "person_site", ["site_id"], unique=False)
    op.create_table(
        "slices",
        sa.Column("slice_id", sa.Integer(), nullable=False),
        sa.Column("site_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=32), nullable=False),
        sa.Column("instantiation", sa.String(length=20), nullable=False),
        sa.Column("url", sa.Text(), nullable=True),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("max_nodes", sa.Integer(), nullable=False),
        sa.Column("creator_person_id", sa.Integer(), nullable=True),
        sa.Column("created", sa.Integer(), nullable=False),
        sa.Column("expires", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["creator_person_id"],
            ["persons.person_id"],
            name=op.f("fk_slices_creator_person_id_persons"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["site_id"], ["sites.site_id"], name=op.f("fk_slices_site_id_sites"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("slice_id", name=op.f("pk_slices")),
        sa.UniqueConstraint("name", name=op.f("uq_slices_name")),
    )
    op.create_index(op.f("ix_slices_expires"), "slices", ["expires"], unique=False)
    op.create_index(op.f("ix_slices_site_id"), "slices", ["site_id"], unique=False)
    op.create_table(
        "tag_type_role",
        sa.Column("tag_type_id", sa.Integer(), nullable=False),
        sa.Column("role_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["tag_type_id"],
            ["tag_types.tag_type_id"],
            name=op.f("fk_tag_type_role_tag_type_id_tag_types"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("tag_type_id", "role_id", name=op.f("pk_tag_type_role")),
    )
    op.create_table(
        "sessions",
        sa.Column("session_hash", sa.String(length=64), nullable=False),
        sa.Column("person_id", sa.Integer(), nullable=True),
        sa.Column("node_id", sa.Integer(), nullable=True),
        sa.Column("expires", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(
            ["node_id"], ["nodes.node_id"], name=op.f("fk_sessions_node_id_nodes"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["person_id"],
            ["persons.person_id"],
            name=op.f("fk_sessions_person_id_persons"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("session_hash", name=op.f("pk_sessions")),
    )
    op.create_index(op.f("ix_sessions_node_id"), "sessions", ["node_id"], unique=False)
    op.create_index(op.f("ix_sessions_person_id"), "sessions", ["person_id"], unique=False)
    op.create_table(
        "slice_node",
        sa.Column("slice_id", sa.Integer(), nullable=False),
        sa.Column("node_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["node_id"], ["nodes.node_id"], name=op.f("fk_slice_node_node_id_nodes"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["slice_id"], ["slices.slice_id"], name=op.f("fk_slice_node_slice_id_slices"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("slice_id", "node_id", name=op.f("pk_slice_node")),
    )
    op.create_index(op.f("ix_slice_node_node_id"), "slice_node", ["node_id"], unique=False)
    op.create_table(
        "slice_person",
        sa.Column("slice_id", sa.Integer(), nullable=False),
        sa.Column("person_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["person_id"],
            ["persons.person_id"],
            name=op.f("fk_slice_person_person_id_persons"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["slice_id"],
            ["slices.slice_id"],
            name=op.f("fk_slice_person_slice_id_slices"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("slice_id", "person_id", name=op.f("pk_slice_person")),
    )
    op.create_index(op.f("ix_slice_person_person_id"), "slice_person", ["person_id"], unique=False)
    op.create_table(
        "slice_tags",
        sa.Column("slice_tag_id", sa.Integer(), nullable=False),
        sa.Column("slice_id", sa.Integer(), nullable=False),
        sa.Column("tag_type_id", sa.Integer(), nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        sa.Column("node_id", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(
            ["node_id"], ["nodes.node_id"], name=op.f("fk_slice_tags_node_id_nodes"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["slice_id"], ["slices.slice_id"], name=op.f("fk_slice_tags_slice_id_slices"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["tag_type_id"],
            ["tag_types.tag_type_id"],
            name=op.f("fk_slice_tags_tag_type_id_tag_types"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("slice_tag_id", name=op.f("pk_slice_tags")),
    )
    op.create_index(op.f("ix_slice_tags_node_id"), "slice_tags", ["node_id"], unique=False)
    op.create_index(op.f("ix_slice_tags_slice_id"), "slice_tags", ["slice_id"], unique=False)
    op.create_index(op.f("ix_slice_tags_tag_type_id"), "slice_tags", ["tag_type_id"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_slice_tags_tag_type_id"), table_name="slice_tags")
    op.drop_index(op.f("ix_slice_tags_slice_id"), table_name="slice_tags")
    op.drop_index(op.f("ix_slice_tags_node_id"), table_name="slice_tags")
    op.drop_table("slice_tags")
    op.drop_index(op.f("ix_slice_person_person_id"), table_name="slice_person")
    op.drop_table("slice_person")
    op.drop_index(op.f("ix_slice_node_node_id"), table_name="slice_node")
    op.drop_table("slice_node")
    op.drop_index(op.f("ix_sessions_person_id"), table_name="sessions")
    op.drop_index(op.f("ix_sessions_node_id"), table_name="sessions")
    op.drop_table("sessions")
    op.drop_table("tag_type_role")
    op.drop_index(op.f("ix_slices_site_id"), table_name="slices")
    op.drop_index(op.f("ix_slices_expires"), table_name="slices")
    op.drop_table("slices")
    op.drop_index(op.f("ix_person_site_site_id"), table_name="person_site")
    op.drop_table("person_site")
    op.drop_table("person_role")
    op.drop_index(op.f("ix_nodes_site_id"), table_name="nodes")
    op.drop_table("nodes")
    op.drop_index(op.f("ix_keys_person_id"), table_name="keys")
    op.drop_table("keys")
    op.drop_table("tag_types")
    op.drop_table("sites")
    op.drop_table("persons")
    op.drop_table("initscripts")
    op.drop_index(op.f("ix_events_time"), table_name="events")
    op.drop_table("events")
