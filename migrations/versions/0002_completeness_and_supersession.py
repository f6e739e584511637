"""Requested procedure on studies (for completeness rules); drafts record the draft they supersede;
an instance's sender (calling AE title or STOW:<user>) gets room for 64 characters.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("studies") as batch_op:
        batch_op.add_column(sa.Column("requested_procedure", sa.String(length=64), nullable=False, server_default=""))
    with op.batch_alter_table("drafts") as batch_op:
        batch_op.add_column(sa.Column("supersedes_id", sa.Integer(), nullable=True))
        batch_op.create_foreign_key("fk_drafts_supersedes_id", "drafts", ["supersedes_id"], ["id"])
    with op.batch_alter_table("instances") as batch_op:
        batch_op.alter_column(
            "calling_ae", type_=sa.String(length=64), existing_type=sa.String(length=16), existing_nullable=False
        )


def downgrade() -> None:
    with op.batch_alter_table("instances") as batch_op:
        batch_op.alter_column(
            "calling_ae", type_=sa.String(length=16), existing_type=sa.String(length=64), existing_nullable=False
        )
    with op.batch_alter_table("drafts") as batch_op:
        batch_op.drop_constraint("fk_drafts_supersedes_id", type_="foreignkey")
        batch_op.drop_column("supersedes_id")
    with op.batch_alter_table("studies") as batch_op:
        batch_op.drop_column("requested_procedure")
