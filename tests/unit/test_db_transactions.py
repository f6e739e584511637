"""predraft.core.db on SQLite: a write transaction waits for another writer in short steps and gives up at its
timeout; a read connection neither waits for a writer nor holds one up."""

from __future__ import annotations

import sqlite3
import threading
import time

import pytest
from sqlalchemy import func, select, text

from predraft.core.db import BUSY_TIMEOUT_MS, begin_writing, read_connection, session_scope
from predraft.core.schema import Instance

HOLD_S = 0.3


def _path(url: str) -> str:
    return url.removeprefix("sqlite:///")


def _hold_write_lock(url: str, seconds: float) -> threading.Thread:
    """Another connection takes SQLite's write lock (BEGIN IMMEDIATE) for ``seconds``."""
    with session_scope(url) as session:  # predraft's first connection turns the database to WAL, as a service's does
        session.execute(text("SELECT 1"))
    taken = threading.Event()

    def hold() -> None:
        other = sqlite3.connect(_path(url), isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        taken.set()
        time.sleep(seconds)
        other.execute("COMMIT")
        other.close()

    thread = threading.Thread(target=hold)
    thread.start()
    assert taken.wait(5)
    return thread


def test_a_write_transaction_waits_for_another_writer_and_then_begins(sqlite_url):
    holder = _hold_write_lock(sqlite_url, HOLD_S)
    started = time.monotonic()
    with session_scope(sqlite_url) as session:
        session.execute(text("UPDATE studies SET error = NULL WHERE id = -1"))
    waited = time.monotonic() - started
    holder.join()

    assert HOLD_S * 0.8 <= waited < HOLD_S + 1.0


def test_begin_writing_gives_up_at_its_timeout_and_restores_the_busy_timeout(sqlite_url):
    holder = _hold_write_lock(sqlite_url, HOLD_S * 2)
    connection = sqlite3.connect(_path(sqlite_url), isolation_level=None)
    try:
        started = time.monotonic()
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            begin_writing(connection, timeout_ms=100)
        assert 0.09 <= time.monotonic() - started < HOLD_S * 2
        assert connection.execute("PRAGMA busy_timeout").fetchone()[0] == BUSY_TIMEOUT_MS
        assert connection.in_transaction is False
    finally:
        connection.close()
        holder.join()


def test_begin_writing_raises_other_errors_at_once(tmp_path):
    connection = sqlite3.connect(tmp_path / "db.sqlite", isolation_level=None)
    connection.execute("BEGIN")
    try:
        with pytest.raises(sqlite3.OperationalError, match="within a transaction"):
            begin_writing(connection)
    finally:
        connection.close()


def test_a_read_connection_reads_while_another_connection_holds_the_write_lock(sqlite_url):
    holder = _hold_write_lock(sqlite_url, 5)
    counts: list[int] = []

    def read() -> None:
        with read_connection(sqlite_url) as connection:
            counts.append(connection.scalar(select(func.count()).select_from(Instance)))

    reader = threading.Thread(target=read)
    started = time.monotonic()
    reader.start()
    reader.join(3)
    elapsed = time.monotonic() - started
    holder.join()

    assert counts == [0] and elapsed < 3


def test_insert_or_nothing_is_built_for_postgresql_and_sqlite_only() -> None:
    from sqlalchemy.dialects import postgresql, sqlite

    from predraft.core.db import insert_or_nothing
    from predraft.core.schema import Study

    for name, dialect in (("postgresql", postgresql.dialect()), ("sqlite", sqlite.dialect())):
        sql = str(insert_or_nothing(Study, "study_uid", name).compile(dialect=dialect))
        assert "ON CONFLICT (study_uid) DO NOTHING" in sql
    with pytest.raises(NotImplementedError, match="'mysql' is not supported"):
        insert_or_nothing(Study, "study_uid", "mysql")
