"""The Alembic migrations build exactly the schema in predraft/core/schema.py, on SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import inspect

from predraft.core import db


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
