"""States, kinds, roles and actions are checked by the database: a CHECK constraint on each column that holds
one of predraft's enums (predraft.core.states), so a value no member has cannot be stored.

The values are written out here as they are at this revision (a migration must not change when the enums do).
A database holding a value outside them (none that predraft wrote) is named, and the upgrade stops unchanged.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

#: (table, column, constraint name, allowed values)
CHECKED = (
    ("studies", "state", "ck_studies_state",
     ("receiving", "ready", "drafting", "drafted", "reviewed", "out_of_scope", "error")),
    ("instances", "state", "ck_instances_state", ("received", "prepared", "classified", "skipped", "error")),
    ("exports", "state", "ck_exports_state", ("pending", "sending", "sent", "failed", "dead")),
    ("drafts", "kind", "ck_drafts_kind", ("draft", "verified", "rejection")),
    ("events", "kind", "ck_events_kind",
     ("study_opened", "study_reopened", "received", "duplicate", "ready", "scope_flag", "classified", "skipped",
      "reclassifying", "drafting", "drafted", "out_of_scope", "error", "swept", "dead_letter", "retry",
      "export_queued", "exported", "export_failed", "export_dead", "reviewed")),
    ("users", "role", "ck_users_role", ("radiologist", "admin")),
    ("reviews", "action", "ck_reviews_action", ("accepted", "edited", "rejected")),
)  # fmt: skip


def upgrade() -> None:
    bind = op.get_bind()
    for table, column, _, allowed in CHECKED:
        held = set(bind.execute(sa.text(f"SELECT DISTINCT {column} FROM {table}")).scalars())  # noqa: S608 - names from CHECKED
        unknown = sorted(str(value) for value in held - set(allowed))
        if unknown:
            raise RuntimeError(f"{table}.{column} holds values predraft does not know: {unknown}; nothing changed")
    for table, column, name, allowed in CHECKED:
        values = ", ".join(f"'{value}'" for value in allowed)
        with op.batch_alter_table(table) as batch_op:
            batch_op.create_check_constraint(name, f"{column} IN ({values})")


def downgrade() -> None:
    for table, _, name, _ in reversed(CHECKED):
        with op.batch_alter_table(table) as batch_op:
            batch_op.drop_constraint(name, type_="check")
