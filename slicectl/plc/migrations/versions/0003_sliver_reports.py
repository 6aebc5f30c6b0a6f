"""What nodes report they run: a row per node and sliver (slicectl's ReportSlivers).

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "sliver_reports",
        sa.Column("node_id", sa.Integer(), nullable=False),
        sa.Column("slice_name", sa.String(length=64), nullable=False),
        sa.Column("state", sa.String(length=20), nullable=False),
        sa.Column("updated", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["node_id"], ["nodes.node_id"],
                                name=op.f("fk_sliver_reports_node_id_nodes"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("node_id", "slice_name", name=op.f("pk_sliver_reports")),
    )


def downgrade() -> None:
    op.drop_table("sliver_reports")
