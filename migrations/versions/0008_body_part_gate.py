"""Instances record the body-part gate's reading and why scope was decided as it was.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("instances") as batch_op:
        batch_op.add_column(sa.Column("region_read", sa.String(32), nullable=True))
        batch_op.add_column(sa.Column("region_probability", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("scope_flag", sa.String(32), nullable=True))
        batch_op.add_column(sa.Column("scope_note", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("instances") as batch_op:
        for column in ("scope_note", "scope_flag", "region_probability", "region_read"):
            batch_op.drop_column(column)
