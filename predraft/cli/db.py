from __future__ import annotations

import click

from predraft.cli.common import load_settings
from predraft.core.settings import redact_url


@click.group()
def db() -> None:
    """The database schema."""


@db.command()
@click.option("--revision", default="head", show_default=True, help="Alembic revision to upgrade to.")
def upgrade(revision: str) -> None:
    """Apply the schema migrations."""
    from predraft.core import db as database

    settings = load_settings()
    database.upgrade(settings.database_url, revision)
    click.echo(f"database {redact_url(settings.database_url)} is at revision {revision}")
