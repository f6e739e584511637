"""The QIDO-RS matching keys PS3.18 requires that were held in no column: a study's StudyTime,
ReferringPhysicianName and StudyID (studies.study_time, referring_physician_name, study_identifier), a series'
SeriesNumber (series.series_number) and an instance's InstanceNumber (instances.instance_number), as received.

Rows recorded before this revision get empty values (the files are not read back here: some may be purged, and
a migration is no place to parse received files); such a study, series or instance matches these keys only
universally, as docs/conformance.md says.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None

#: (table, column, length) of each column added.
COLUMNS = (
    ("studies", "study_time", 16),
    ("studies", "referring_physician_name", 324),
    ("studies", "study_identifier", 16),
    ("series", "series_number", 12),
    ("instances", "instance_number", 12),
)


def upgrade() -> None:
    for table, column, length in COLUMNS:
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column(column, sa.String(length), nullable=False, server_default=""))


def downgrade() -> None:
    for table, column, _length in reversed(COLUMNS):
        with op.batch_alter_table(table) as batch:
            batch.drop_column(column)
