"""Each draft records the packs (body-region readers, predraft.models.pack) whose findings it holds, in the
order of its sections: the worklist, ``studies show`` and the statistics show it. Drafts made before packs
existed were all the hip's.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("drafts") as batch:
        batch.add_column(sa.Column("pack", sa.String(128), nullable=False, server_default="hip"))


def downgrade() -> None:
    with op.batch_alter_table("drafts") as batch:
        batch.drop_column("pack")
