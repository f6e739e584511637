"""Can the broker and the database be reached? Every admin command asks first, so that an outage is
named at once (exit 2) instead of a hang or a traceback. Imports neither Celery nor the ORM."""

from __future__ import annotations

import re
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from predraft.core.db import bounded_engine
from predraft.core.settings import Settings, redact_url
from predraft.workers.queues import BrokerUnreachable, ping_broker


class Unreachable(RuntimeError):
    """The broker or the database cannot be reached; the message names it without its password."""


def check_reachable(settings: Settings, *, timeout: float = 2.0) -> None:
    """Raise :class:`Unreachable` unless the broker and the database both answer within ``timeout`` seconds.
    Raises ValueError for a broker whose queues predraft cannot read (neither ``redis://`` nor ``sqla+``)."""
    try:
        ping_broker(settings.broker_url, timeout=timeout)
    except BrokerUnreachable as exc:
        raise Unreachable(scrub(str(exc), settings.broker_url)) from exc
    probe_database(settings.database_url, timeout=timeout)


def probe_database(url: str, *, timeout: float) -> None:
    """Connect and ``SELECT 1``; a SQLite database must exist (reading must not create it)."""
    name = redact_url(url)
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).is_file():
        raise Unreachable(f"cannot reach the database {name}: {url.removeprefix('sqlite:///')} is not a file")
    engine = bounded_engine(url, timeout)
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except SQLAlchemyError as exc:
        reason = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise Unreachable(scrub(f"cannot reach the database {name}: {reason}", url)) from exc
    finally:
        engine.dispose()


def scrub(text: str, url: str) -> str:
    """``text`` without the password of ``url`` (should a driver's message quote it)."""
    match = re.search(r"//[^:/@]*:([^@/]*)@", url)
    return text.replace(match.group(1), "***") if match and match.group(1) else text
