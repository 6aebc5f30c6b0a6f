"""Why a node runs no sliver PLC lists for it: a detail beside each reported state (the
node's policy refused the slice, say).

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("sliver_reports") as batch:
        batch.add_column(sa.Column("detail", sa.String(length=300), nullable=False,
                                   server_default=""))


def downgrade() -> None:
    with op.batch_alter_table("sliver_reports") as batch:
        batch.drop_column("detail")
