"""Routing: each image records the pack that reads it (instances.pack), and a study may carry the pack a
radiologist asked it to be drafted with when routing said out of scope (studies.requested_pack). Images prepared
before packs were all the hip's.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("instances") as batch:
        batch.add_column(sa.Column("pack", sa.String(64), nullable=True))
    with op.batch_alter_table("studies") as batch:
        batch.add_column(sa.Column("requested_pack", sa.String(64), nullable=True))
    op.execute("UPDATE instances SET pack = 'hip' WHERE state IN ('prepared', 'classified')")


def downgrade() -> None:
    with op.batch_alter_table("studies") as batch:
        batch.drop_column("requested_pack")
    with op.batch_alter_table("instances") as batch:
        batch.drop_column("pack")
