"""The broker's public face: whether it answers, its queues declared, and how many messages wait in each.

Only what kombu offers every transport is used: ``queue_declare(passive=True)`` counts the messages waiting
in a queue (not those delivered to a worker, nor the retries a worker holds for their ETA), and
``SimpleQueue`` declares one. No transport's storage is read: what was sent, what runs and what waits for a
retry is in the database (:mod:`predraft.workers.leases`, :mod:`predraft.workers.work`). The transports differ
in one way, handled here: kombu's Redis transport answers NOT_FOUND for a queue that holds no message (Redis
drops an empty list), which counts as 0; its SQLAlchemy transport (the embedded default) knows every declared
queue.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import text
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from predraft.core.db import bounded_engine
from predraft.core.settings import redact_url

if TYPE_CHECKING:
    from redis import Redis


#: The AMQP reply code kombu's virtual transports give a passive declaration of a queue they do not know.
_NOT_FOUND = 404


class BrokerUnreachable(RuntimeError):
    """The broker could not be read; the message names it without its password."""


def is_redis(broker_url: str) -> bool:
    return broker_url.startswith(("redis://", "rediss://"))


def _check_supported(broker_url: str) -> None:
    if not is_redis(broker_url) and not broker_url.startswith("sqla+"):
        raise ValueError(
            f"cannot read the queues of broker {_redact(broker_url)}: only redis:// and sqla+ are supported"
        )


def declare_queues(broker_url: str, queues: Iterable[str], *, attempts: int = 3) -> None:
    """Create ``queues`` on an embedded (SQLAlchemy) broker now; nothing to do on Redis.

    kombu's SQLAlchemy transport creates a queue's row the first time a process uses the queue and does not
    expect another process to insert it meanwhile: on a fresh broker, the listener's first ``prepare`` and
    the worker's start could both insert it, and the loser's publish failed with a UNIQUE error, leaving a
    ready study to the sweeper. ``predraft serve`` declares the queues before it starts its parts; the
    listener does so at start too. A concurrent declaration here is simply tried again.
    """
    _check_supported(broker_url)
    if is_redis(broker_url):
        return
    from kombu import Connection  # here, not at the top: kombu; `predraft queue stats` imports this and must start fast

    for attempt in range(attempts):
        try:
            with Connection(broker_url) as connection:
                for name in queues:
                    connection.SimpleQueue(name).close()  # declares the queue (its row) as a consumer would
            return
        except IntegrityError:
            if attempt == attempts - 1:
                raise
            time.sleep(0.1)


def ping_broker(broker_url: str, *, timeout: float = 2.0) -> None:
    """Raise :class:`BrokerUnreachable` (naming the broker without its password) unless it answers.

    An embedded (SQLite) broker must exist and be readable: a missing file means no part of predraft has
    run on it, or the settings point elsewhere."""
    _check_supported(broker_url)
    if is_redis(broker_url):
        import redis  # here, not at the top: Redis brokers only; `predraft queue ...` must start fast

        client = _redis_client(broker_url, timeout)
        try:
            client.ping()
        except redis.RedisError as exc:
            raise BrokerUnreachable(f"cannot reach the broker {_redact(broker_url)}: {exc}") from exc
        finally:
            client.close()
        return
    database_url = broker_url.removeprefix("sqla+")
    path = _sqlite_path(database_url)
    if path is not None and not path.is_file():
        raise BrokerUnreachable(
            f"cannot reach the broker {_redact(broker_url)}: {path} is not a file (has "
            "`predraft serve` or a worker run with these settings?)"
        )
    engine = bounded_engine(database_url, timeout)
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
            connection.dialect.get_table_names(connection)
    except SQLAlchemyError as exc:
        raise BrokerUnreachable(f"cannot reach the broker {_redact(broker_url)}: {_first_line(exc)}") from exc
    finally:
        engine.dispose()


def waiting_counts(broker_url: str, queues: Iterable[str], *, timeout: float = 3.0) -> dict[str, int]:
    """How many messages wait in each of ``queues`` (kombu's ``queue_declare(passive=True)``), in one connection.

    Waiting: published and not yet delivered to any worker. Raises :class:`BrokerUnreachable` (naming the
    broker without its password) when the broker does not answer."""
    queues = list(queues)
    _check_supported(broker_url)
    # here, not at the top: kombu; `predraft queue stats` imports this and must start fast
    from kombu import Connection
    from kombu.exceptions import ChannelError

    counts = {}
    try:
        with Connection(
            broker_url, connect_timeout=timeout, transport_options=_transport_options(broker_url, timeout)
        ) as connection:
            connection.ensure_connection(max_retries=0, timeout=timeout)
            channel = connection.default_channel
            for queue in queues:
                try:
                    counts[queue] = int(channel.queue_declare(queue=queue, passive=True).message_count)
                except ChannelError as exc:  # Redis: a queue that holds no message has no list (NOT_FOUND)
                    if int(exc.reply_code) != _NOT_FOUND:
                        raise
                    counts[queue] = 0
    except BrokerUnreachable:
        raise
    except Exception as exc:  # kombu raises the transport's own errors (redis, SQLAlchemy, socket)
        raise _unreachable(broker_url, exc) from exc
    return counts


def _transport_options(broker_url: str, timeout: float) -> dict[str, object]:
    """Transport options that bound each broker call by ``timeout`` seconds."""
    if is_redis(broker_url):
        return {"socket_timeout": timeout, "socket_connect_timeout": timeout}
    return {}


def _redis_client(broker_url: str, timeout: float) -> Redis:
    import redis  # here, not at the top: Redis brokers only; `predraft queue ...` must start fast

    return redis.Redis.from_url(broker_url, socket_timeout=timeout, socket_connect_timeout=timeout)


def _unreachable(broker_url: str, exc: Exception) -> BrokerUnreachable:
    return BrokerUnreachable(f"broker {_redact(broker_url)} could not be read: {_first_line(exc)}")


# --- kombu's SQLAlchemy transport ----------------------------------------------------------------------------------


def _sqlite_path(database_url: str) -> Path | None:
    if database_url.startswith("sqlite:///"):
        return Path(database_url.removeprefix("sqlite:///"))
    return None


def _first_line(exc: BaseException) -> str:
    return (str(exc).splitlines() or [type(exc).__name__])[0]


def _redact(url: str) -> str:
    return redact_url(url) or ""
