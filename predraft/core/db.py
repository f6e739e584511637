"""Database engine and sessions, and applying the Alembic migrations."""

from __future__ import annotations

import importlib.resources
import sqlite3
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Engine, Insert, create_engine, event
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import ConnectionPoolEntry

from predraft.core.settings import redact_url

if TYPE_CHECKING:
    from alembic.config import Config

#: Alembic's scripts, as a package resource: ``predraft.migrations`` (the repository's ``migrations/``) sits above
#: this layer (its scripts import the schema), so it is named, never imported, here.
MIGRATIONS_PACKAGE = "predraft.migrations"


def bounded_engine(database_url: str, timeout: float) -> Engine:
    """A throwaway engine whose connection attempt gives up after ``timeout`` seconds (SQLite: its busy wait;
    others: the driver's connect timeout, at least 1 s), for checks and admin reads that must not hang. Unlike
    :func:`get_engine` it creates no folder and sets no pragmas; dispose it after use."""
    if database_url.startswith("sqlite"):
        return create_engine(database_url, connect_args={"timeout": timeout})
    return create_engine(database_url, connect_args={"connect_timeout": max(1, int(timeout))})


#: How long an SQLite statement waits for another connection's lock before it fails with "database is locked".
BUSY_TIMEOUT_MS = 30_000
#: The first and the longest pause between two tries of a write transaction's BEGIN IMMEDIATE.
FIRST_PAUSE_S, LONGEST_PAUSE_S = 0.0001, 0.002


def begin_writing(connection: sqlite3.Connection, *, timeout_ms: int = BUSY_TIMEOUT_MS) -> None:
    """``BEGIN IMMEDIATE`` on the SQLite ``connection``, waiting up to ``timeout_ms`` for a writer of another
    connection to finish.

    SQLite's own busy handler sleeps 1, 2, 5, 10, 15, 20, 25... ms between its tries, so a transaction that
    waits behind another for 0.3 ms sleeps 1 ms, and one that just missed two turns sleeps 8 ms: with
    several listener processes recording at once that was most of an instance's wait. Here the BEGIN is
    tried again after pauses of 0.1 ms growing to 2 ms (the busy timeout is off for those tries and set back
    after). Raises sqlite3.OperationalError ("database is locked") when the wait runs out, like SQLite."""
    connection.execute("PRAGMA busy_timeout=0")
    try:
        deadline = time.monotonic() + timeout_ms / 1000
        pause = FIRST_PAUSE_S
        while True:
            try:
                connection.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                if exc.sqlite_errorcode != sqlite3.SQLITE_BUSY or time.monotonic() > deadline:
                    raise
            time.sleep(pause)
            pause = min(pause * 1.5, LONGEST_PAUSE_S)
    finally:
        connection.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")


@lru_cache(maxsize=8)
def get_engine(database_url: str) -> Engine:
    """One engine per URL and process. Bound parameters (patient names among them) are kept out of
    exception messages, so that a logged database error carries no patient data.

    SQLite (the embedded default) is written by the listener, the worker and the web app at once: it
    gets WAL, a busy timeout and ``BEGIN IMMEDIATE`` transactions (:func:`begin_writing`), so a transaction
    that reads and then writes never fails on a snapshot another process moved on (and check-then-insert is
    safe).
    A connection of :func:`read_connection` begins a deferred transaction instead, which takes no write lock.
    """
    if database_url.startswith("sqlite:///"):
        Path(database_url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            database_url, connect_args={"timeout": 30, "check_same_thread": False}, hide_parameters=True
        )

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection: sqlite3.Connection, _record: ConnectionPoolEntry) -> None:
            dbapi_connection.isolation_level = None  # SQLAlchemy's "begin" event below starts transactions
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=FULL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _begin_immediate(connection: Connection) -> None:
            if connection.get_execution_options().get(READ_ONLY, False):
                connection.exec_driver_sql("BEGIN")
            else:
                begin_writing(connection.connection.dbapi_connection)  # type: ignore[arg-type]  # pysqlite's

        return engine
    return create_engine(database_url, pool_pre_ping=True, hide_parameters=True)


#: A connection's execution option: its transactions only read (on SQLite a deferred ``BEGIN``, which waits for
#: no writer and holds none up, instead of ``BEGIN IMMEDIATE``).
READ_ONLY = "predraft_read_only"


@contextmanager
def read_connection(database_url: str) -> Iterator[Connection]:
    """A connection for reads that must not queue behind writers (a check in the sender's wait, say): its
    transaction is deferred on SQLite (see :data:`READ_ONLY`) and rolled back when the block ends. A write
    on it is a mistake that SQLite may refuse with "database is locked"."""
    with get_engine(database_url).connect() as connection:
        connection.execution_options(**{READ_ONLY: True})
        yield connection


def insert_or_nothing(table: type[Any], key: str | Sequence[str], dialect: str) -> Insert:
    """``INSERT INTO table ... ON CONFLICT (key) DO NOTHING`` in the SQL ``dialect`` (PostgreSQL or SQLite), its
    values given by ``.values()`` or bound when it runs; ``key`` is a column or the columns of a unique
    constraint. Raises NotImplementedError for another dialect."""
    columns = [key] if isinstance(key, str) else list(key)
    if dialect == "postgresql":
        return postgresql_insert(table).on_conflict_do_nothing(index_elements=columns)
    if dialect == "sqlite":
        return sqlite_insert(table).on_conflict_do_nothing(index_elements=columns)
    raise NotImplementedError(f"database dialect {dialect!r} is not supported (PostgreSQL or SQLite)")


def insert_ignoring_conflict(
    session: Session, table: type[Any], values: dict[str, object], key: str | Sequence[str]
) -> bool:
    """INSERT ``values`` into ``table`` unless a row with the same unique ``key`` (a column, or the columns
    of a unique constraint) exists.

    Returns True when this call inserted the row. Safe against a concurrent insert of the same key
    (PostgreSQL and SQLite ``ON CONFLICT DO NOTHING``).
    """
    statement = insert_or_nothing(table, key, session.get_bind().dialect.name).values(**values)
    # RETURNING, not rowcount: on PostgreSQL an ORM insert's rowcount is -1 whether or not a row went in.
    return session.execute(statement.returning(*table.__table__.primary_key.columns)).first() is not None


@lru_cache(maxsize=8)
def _session_factory(database_url: str) -> sessionmaker[Session]:
    return sessionmaker(get_engine(database_url), expire_on_commit=False)


@contextmanager
def session_scope(database_url: str) -> Iterator[Session]:
    """A session that commits when the block ends and rolls back on an exception."""
    session = _session_factory(database_url)()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


class SchemaError(RuntimeError):
    """The database is not at the schema revision this code expects."""


def alembic_config(database_url: str) -> Config:
    from alembic.config import Config  # here, not at the top: Alembic (150 modules); the worker's tasks, the
    # listener's ingest, the web app and `predraft studies ...` import this module for sessions, and only
    # `predraft db upgrade`, `serve` and the schema check at a service's start need Alembic

    config = Config()
    config.set_main_option("script_location", str(importlib.resources.files(MIGRATIONS_PACKAGE)))
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    config.attributes["configure_logging"] = False
    return config


def upgrade(database_url: str, revision: str = "head") -> None:
    """Apply the Alembic migrations up to ``revision``."""
    from alembic import command  # here, not at the top: Alembic, as in alembic_config

    get_engine(database_url)  # creates the SQLite folder
    command.upgrade(alembic_config(database_url), revision)


def check_schema(database_url: str) -> None:
    """Raise SchemaError unless the database is at the newest migration."""
    from alembic.runtime.migration import MigrationContext  # here, not at the top: Alembic, as in alembic_config
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(alembic_config(database_url)).get_current_head()
    with get_engine(database_url).connect() as connection:
        current = MigrationContext.configure(connection).get_current_revision()
    if current != head:
        raise SchemaError(
            f"database {redact_url(database_url)} is at schema revision {current or 'none'}, "
            f"this predraft needs {head}: run `predraft db upgrade`"
        )
