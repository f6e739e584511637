"""Spool retention: an instance records when its image file was purged from the spool (instances.purged_at), a
draft when its SR file was (drafts.purged_at), and the event log takes the kind "purged"
(predraft.workers.retention). Rows are never deleted by retention: only the files go.

The event kinds are written out as they are at this revision (a migration must not change when the enum does).
The downgrade deletes the "purged" events, which the older constraint refuses.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None

#: The event kinds of revision 0009, which this one extends.
KINDS_BEFORE = (
    "study_opened", "study_reopened", "received", "duplicate", "ready", "scope_flag", "classified", "skipped",
    "reclassifying", "drafting", "drafted", "out_of_scope", "error", "swept", "dead_letter", "retry",
    "export_queued", "exported", "export_failed", "export_dead", "reviewed",
)  # fmt: skip
KINDS = (*KINDS_BEFORE, "purged")


def _check_event_kinds(kinds: tuple[str, ...]) -> None:
    values = ", ".join(f"'{kind}'" for kind in kinds)
    with op.batch_alter_table("events") as batch:
        batch.drop_constraint("ck_events_kind", type_="check")
        batch.create_check_constraint("ck_events_kind", f"kind IN ({values})")


def upgrade() -> None:
    with op.batch_alter_table("instances") as batch:
        batch.add_column(sa.Column("purged_at", sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table("drafts") as batch:
        batch.add_column(sa.Column("purged_at", sa.DateTime(timezone=True), nullable=True))
    _check_event_kinds(KINDS)


def downgrade() -> None:
    op.execute("DELETE FROM events WHERE kind = 'purged'")
    _check_event_kinds(KINDS_BEFORE)
    with op.batch_alter_table("drafts") as batch:
        batch.drop_column("purged_at")
    with op.batch_alter_table("instances") as batch:
        batch.drop_column("purged_at")
