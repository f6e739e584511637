"""Helpers shared by CLI commands."""

from __future__ import annotations

import click
from pydantic import ValidationError

from predraft.settings import Settings, get_settings


def load_settings() -> Settings:
    """Settings, or a clear CLI error naming what is wrong."""
    try:
        return get_settings()
    except (ValidationError, FileNotFoundError) as exc:
        raise click.ClickException(f"invalid settings: {exc}") from exc
