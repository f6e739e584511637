"""AI results: each prediction records the rectangle of its image that the model read (predictions.region), and
a draft may carry a second SR beside its narrative one, the TID 1500 AI results SR (drafts.results_sr_*).
Predictions and drafts made before have neither.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("predictions") as batch:
        batch.add_column(sa.Column("region", sa.JSON(), nullable=True))
    with op.batch_alter_table("drafts") as batch:
        batch.add_column(sa.Column("results_sr_sop_instance_uid", sa.String(64), nullable=True))
        batch.add_column(sa.Column("results_sr_series_uid", sa.String(64), nullable=True))
        batch.add_column(sa.Column("results_sr_path", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("drafts") as batch:
        batch.drop_column("results_sr_path")
        batch.drop_column("results_sr_series_uid")
        batch.drop_column("results_sr_sop_instance_uid")
    with op.batch_alter_table("predictions") as batch:
        batch.drop_column("region")
