"""Times as the database gives them back.

SQLite returns naive datetimes for timezone-aware columns; predraft writes only UTC, so a naive value is
UTC. PostgreSQL returns aware values, which pass through unchanged. Kept free of heavy imports: the admin
commands' fast paths use it.
"""

from __future__ import annotations

from datetime import UTC, datetime


def as_utc(moment: datetime) -> datetime:
    """``moment`` with its zone: a naive value is taken as UTC, an aware one is returned as it is."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
