"""Work leases: the rows whose work travels as a task message (instances, studies, exports) record the message
sent for it, the worker that holds it and when its retry is due, so that the database, not the broker's
storage, says what is pending (predraft.workers.leases).

Rows already on their way keep their meaning: an export being sent keeps its claim for the 900 s that claims
lasted before this revision, and a failed export's retry is taken to be due 600 s (the longest retry delay by
default) after its failure.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-06
"""

from __future__ import annotations

from datetime import timedelta

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

LEASED_TABLES = ("instances", "studies", "exports")
#: How long a ``sending`` claim lasted before leases, and the longest export retry delay by default.
OLD_CLAIM = timedelta(seconds=900)
OLD_LONGEST_RETRY = timedelta(seconds=600)


def upgrade() -> None:
    for table in LEASED_TABLES:
        with op.batch_alter_table(table) as batch_op:
            batch_op.add_column(sa.Column("task_id", sa.String(64), nullable=True))
            batch_op.add_column(sa.Column("dispatched_at", sa.DateTime(timezone=True), nullable=True))
            batch_op.add_column(sa.Column("leased_at", sa.DateTime(timezone=True), nullable=True))
            batch_op.add_column(sa.Column("leased_until", sa.DateTime(timezone=True), nullable=True))
            batch_op.add_column(sa.Column("leased_by", sa.String(255), nullable=True))
            if table != "exports":  # exports count their tries since revision 0004
                batch_op.add_column(sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"))
            batch_op.add_column(sa.Column("retry_at", sa.DateTime(timezone=True), nullable=True))
            batch_op.create_index(f"ix_{table}_task_id", ["task_id"])
    exports = sa.table(
        "exports",
        sa.column("id", sa.Integer()),
        sa.column("state", sa.String()),
        sa.column("updated_at", sa.DateTime(timezone=True)),
        sa.column("leased_at", sa.DateTime(timezone=True)),
        sa.column("leased_until", sa.DateTime(timezone=True)),
        sa.column("retry_at", sa.DateTime(timezone=True)),
    )
    connection = op.get_bind()
    rows = connection.execute(
        sa.select(exports.c.id, exports.c.state, exports.c.updated_at).where(exports.c.state.in_(["sending", "failed"]))
    ).all()
    for export_id, state, updated_at in rows:
        values = (
            {"leased_at": updated_at, "leased_until": updated_at + OLD_CLAIM}
            if state == "sending"
            else {"retry_at": updated_at + OLD_LONGEST_RETRY}
        )
        connection.execute(sa.update(exports).where(exports.c.id == export_id).values(**values))


def downgrade() -> None:
    for table in LEASED_TABLES:
        with op.batch_alter_table(table) as batch_op:
            batch_op.drop_index(f"ix_{table}_task_id")
            for column in ("retry_at", "leased_by", "leased_until", "leased_at", "dispatched_at", "task_id"):
                batch_op.drop_column(column)
            if table != "exports":
                batch_op.drop_column("attempts")
