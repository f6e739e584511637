"""Helpers shared by CLI commands."""

from __future__ import annotations

import click
from pydantic import ValidationError

from predraft.core.settings import Settings, get_settings


def load_settings() -> Settings:
    """Settings, or a clear CLI error naming what is wrong."""
    try:
        return get_settings()
    except (ValidationError, FileNotFoundError) as exc:
        raise click.ClickException(f"invalid settings: {exc}") from exc


def load_settings_with_schema() -> Settings:
    """Settings for a service command, after checking the database schema is current."""
    from sqlalchemy.exc import SQLAlchemyError

    from predraft.core.db import SchemaError, check_schema

    settings = load_settings()
    try:
        check_schema(settings.database_url)
    except (SchemaError, SQLAlchemyError) as exc:
        raise click.ClickException(str(exc).splitlines()[0]) from exc
    return settings
