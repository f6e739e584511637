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
