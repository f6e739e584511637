"""The Alembic migrations build exactly the schema in predraft/core/schema.py, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import inspect, select, text
from sqlalchemy.exc import IntegrityError

from predraft.core import db
from predraft.core.schema import Event
from predraft.core.states import EventKind


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'migrations.sqlite'}"
        db.upgrade(url)
        return url
    return request.getfixturevalue("postgres_url")  # already upgraded


def test_migrations_match_the_schema(database_url: str) -> None:
    command.check(db.alembic_config(database_url))  # raises if autogenerate would emit any operation
    db.check_schema(database_url)


def test_downgrade_to_base_and_up_again(database_url: str) -> None:
    command.downgrade(db.alembic_config(database_url), "base")
    assert set(inspect(db.get_engine(database_url)).get_table_names()) <= {"alembic_version"}
    with pytest.raises(db.SchemaError, match="predraft db upgrade"):
        db.check_schema(database_url)
    db.upgrade(database_url)
    assert {"studies", "series", "instances", "predictions", "drafts", "events"} <= set(
        inspect(db.get_engine(database_url)).get_table_names()
    )


def test_the_database_refuses_a_state_no_enum_member_has(database_url: str) -> None:
    engine = db.get_engine(database_url)
    with pytest.raises(IntegrityError, match="ck_studies_state|CHECK constraint failed"), engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO studies (study_uid, patient_id, patient_name, accession_number, study_date, "
                "study_description, requested_procedure, state, generation, received_at, last_instance_at) "
                "VALUES ('1.2.3.999', '', '', '', '', '', '', 'finished', 1, :now, :now)"
            ),
            {"now": datetime.now(UTC)},
        )
    with engine.begin() as connection:  # a member's value goes in, and reads back as the member
        connection.execute(
            text("INSERT INTO events (at, kind, message) VALUES (:now, 'swept', 'test')"), {"now": datetime.now(UTC)}
        )
    with db.session_scope(database_url) as session:
        kind = session.scalars(select(Event.kind).where(Event.message == "test")).one()
    assert kind is EventKind.SWEPT


def test_the_upgrade_to_typed_states_stops_on_a_value_it_does_not_know(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.sqlite'}"
    db.upgrade(url, "0008")
    with db.get_engine(url).begin() as connection:
        connection.execute(text("INSERT INTO events (at, kind, message) VALUES ('2026-01-01', 'mystery', '')"))
    with pytest.raises(RuntimeError, match=r"events.kind holds values predraft does not know: \['mystery'\]"):
        db.upgrade(url)
    assert inspect(db.get_engine(url)).get_check_constraints("events") == []  # nothing changed


def test_the_upgrade_to_leases_keeps_exports_on_their_way(tmp_path: Path) -> None:
    """An export being sent keeps its 900 s claim; a failed one's retry is due 600 s after its failure."""
    url = f"sqlite:///{tmp_path / 'old.sqlite'}"
    db.upgrade(url, "0009")
    with db.get_engine(url).begin() as connection:
        connection.execute(
            text(
                "INSERT INTO studies (id, study_uid, patient_id, patient_name, accession_number, study_date, "
                "study_description, requested_procedure, state, generation, received_at, last_instance_at) "
                "VALUES (1, '1.2.3', '', '', '', '', '', '', 'drafted', 1, '2026-01-01', '2026-01-01')"
            )
        )
        connection.execute(
            text(
                "INSERT INTO drafts (id, study_id, generation, text, findings, model_name, model_version, "
                "sr_sop_instance_uid, sr_series_uid, sr_path, created_at, kind) "
                "VALUES (1, 1, 1, 't', '[]', 'm', 'v', '1.2.4', '1.2.5', '/x', '2026-01-01', 'draft')"
            )
        )
        for export_id, state in ((1, "sending"), (2, "failed"), (3, "sent")):
            connection.execute(
                text(
                    "INSERT INTO exports (id, draft_id, destination, state, attempts, created_at, updated_at) "
                    "VALUES (:id, 1, :name, :state, 1, '2026-01-01 10:00:00', '2026-01-01 10:00:00')"
                ),
                {"id": export_id, "name": state, "state": state},
            )
    db.upgrade(url)
    with db.get_engine(url).connect() as connection:
        rows = connection.execute(
            text("SELECT state, leased_at, leased_until, retry_at, attempts FROM exports ORDER BY id")
        ).all()
        instance_attempts = connection.execute(text("SELECT COUNT(*) FROM instances WHERE attempts != 0")).scalar()
    assert [tuple(str(value)[:19] if value is not None else None for value in row[1:4]) for row in rows] == [
        ("2026-01-01 10:00:00", "2026-01-01 10:15:00", None),
        (None, None, "2026-01-01 10:10:00"),
        (None, None, None),
    ]
    assert [row.attempts for row in rows] == [1, 1, 1] and instance_attempts == 0
