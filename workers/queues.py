"""What the broker holds: the task messages waiting in each queue and those delivered but not yet acknowledged.

Read-only, straight from the broker's storage, for both transports predraft runs on:

- Redis (kombu's Redis transport): each queue is a list (plus one list per priority step, named
  ``<queue>\\x06\\x16<priority>``); kombu LPUSHes new messages and BRPOPs from the other end, so the
  oldest waiting message is the last of the list. Delivered, unacknowledged messages sit in the ``unacked``
  hash with their delivery time in the ``unacked_index`` sorted set.
- SQLAlchemy (the embedded default, kombu's SQLAlchemy transport): ``kombu_message`` rows of a
  ``kombu_queue``; a waiting message is ``visible``, a delivered one ``visible = false``. kombu never
  deletes a delivered row (acknowledging does not touch the table), so this transport cannot tell a task
  that runs from one that finished long ago: what workers run is asked of the workers
  (:mod:`predraft.workers.presence`).

Only task names, ids, arguments and timing headers are decoded (arguments are database ids and, for
``classify``, small images, which are not kept). Nothing here holds patient data.

:func:`queued_messages` reads every message (the sweeper's view). The admin commands use the bounded
readers: :func:`queue_counts` (counts from LLEN / COUNT, the oldest waiting message, and the newest
:data:`RETRY_SCAN_WINDOW` waiting messages of each list searched for a retry's ETA), :func:`waiting_messages`
(the oldest few), :func:`delivered_messages`, :func:`messages_with_eta` and :func:`find_message`.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import create_engine, text
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from predraft.core.clock import as_utc
from predraft.core.settings import redact_url

if TYPE_CHECKING:
    from redis import Redis
    from sqlalchemy.engine import Engine

_REDIS_PRIORITY_SEPARATOR = "\x06\x16"
_REDIS_PRIORITY_STEPS = (3, 6, 9)
#: How many of the newest waiting messages of each list are searched for a retry's ETA. A retry is
#: published when its try fails, so it is among the newest; older ones in a longer backlog count as waiting.
RETRY_SCAN_WINDOW = 2000
#: The JSON of a message whose ``eta`` header is set. Bodies are base64 (no quotes) and quotes inside
#: header strings are escaped, so only the header itself can match.
_ETA_MARK = '"eta": "'

#: Payloads (of the first ARGV[2] entries of each list, all when 0) that contain the plain text ARGV[1].
_REDIS_SEARCH = """
local found = {}
local window = tonumber(ARGV[2])
for _, key in ipairs(KEYS) do
  local n = redis.call('LLEN', key)
  if window > 0 and window < n then n = window end
  local i = 0
  while i < n do
    local last = math.min(i + 999, n - 1)
    for _, payload in ipairs(redis.call('LRANGE', key, i, last)) do
      if string.find(payload, ARGV[1], 1, true) then found[#found + 1] = payload end
    end
    i = last + 1
  end
end
return found
"""


@dataclass(frozen=True)
class QueuedMessage:
    """One task message in the broker. ``delivered`` is True for a message a worker holds unacknowledged."""

    queue: str
    task: str
    task_id: str
    first_arg: Any
    #: Every positional argument but images: ``classify``'s second argument is dropped.
    args: tuple[Any, ...]
    delivered: bool
    #: When it was enqueued (waiting) or delivered (unacknowledged), if the transport says; UTC.
    since: datetime | None
    #: When a retry (or any countdown) is due; None for a message due at once. UTC.
    eta: datetime | None = None
    #: Tries of this task that failed before this message was sent (Celery's ``retries`` header).
    retries: int = 0
    #: When the message was published (the ``predraft_sent_at`` header, :data:`predraft.workers.app.SENT_AT_HEADER`).
    sent_at: datetime | None = None

    def retry_pending(self, now: datetime) -> bool:
        """True while its ETA is ahead: a retry (or countdown) that is not due yet."""
        return self.eta is not None and self.eta > now


@dataclass(frozen=True)
class QueueCounts:
    """What one queue holds, counted without reading every message (:func:`queue_counts`)."""

    queue: str
    #: Undelivered messages, less the retries found waiting for their ETA.
    waiting: int
    #: Delivered and unacknowledged (retries waiting for their ETA excepted); None where the transport
    #: cannot tell (kombu's SQLAlchemy transport keeps every delivered row).
    delivered: int | None
    #: Messages whose ETA is ahead: delivered (Redis) or among the newest waiting ones.
    retries: int
    #: Publication time of the oldest waiting message (None: empty, or sent without the header). UTC.
    oldest_sent_at: datetime | None


class BrokerUnreachable(RuntimeError):
    """The broker could not be read; the message names it without its password."""


def is_redis(broker_url: str) -> bool:
    return broker_url.startswith(("redis://", "rediss://"))


def _check_supported(broker_url: str) -> None:
    if not is_redis(broker_url) and not broker_url.startswith("sqla+"):
        raise ValueError(
            f"cannot read the queues of broker {_redact(broker_url)}: only redis:// and sqla+ are supported"
        )


def queued_messages(broker_url: str, queues: Iterable[str], *, timeout: float = 3.0) -> list[QueuedMessage]:
    """Every task message of ``queues`` in the broker at ``broker_url`` (waiting and delivered)."""
    queues = list(queues)
    _check_supported(broker_url)
    if is_redis(broker_url):
        return _redis_messages(broker_url, queues, timeout)
    return _sqla_messages(broker_url.removeprefix("sqla+"), queues, timeout)


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
    engine = _sqla_engine(database_url, timeout)
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
            connection.dialect.get_table_names(connection)
    except SQLAlchemyError as exc:
        raise BrokerUnreachable(f"cannot reach the broker {_redact(broker_url)}: {_first_line(exc)}") from exc
    finally:
        engine.dispose()


def queue_counts(
    broker_url: str, queues: Iterable[str], *, now: datetime, timeout: float = 3.0, scan_window: int = RETRY_SCAN_WINDOW
) -> dict[str, QueueCounts]:
    """Per queue: waiting, delivered and retry counts and the oldest waiting message, in a few round trips
    whatever the backlog (Redis: LLEN and the last element of each list; SQL: COUNT and MIN)."""
    queues = list(queues)
    _check_supported(broker_url)
    retries = {queue: 0 for queue in queues}
    waiting_retries = {queue: 0 for queue in queues}
    for message in messages_with_eta(broker_url, queues, timeout=timeout, scan_window=scan_window):
        if message.retry_pending(now):
            retries[message.queue] += 1
            if not message.delivered:
                waiting_retries[message.queue] += 1
    if is_redis(broker_url):
        sizes, oldest = _redis_sizes(broker_url, queues, timeout)
        delivered: dict[str, int | None] = {queue: 0 for queue in queues}
        for message in delivered_messages(broker_url, queues, timeout=timeout):
            if not message.retry_pending(now):
                delivered[message.queue] = (delivered[message.queue] or 0) + 1
    else:
        sizes, oldest = _sqla_sizes(broker_url.removeprefix("sqla+"), queues, timeout)
        delivered = {queue: None for queue in queues}
    return {
        queue: QueueCounts(
            queue=queue,
            waiting=max(0, sizes[queue] - waiting_retries[queue]),
            delivered=delivered[queue],
            retries=retries[queue],
            oldest_sent_at=oldest[queue],
        )
        for queue in queues
    }


def waiting_messages(
    broker_url: str, queues: Iterable[str], *, limit: int, timeout: float = 3.0
) -> list[QueuedMessage]:
    """The ``limit`` oldest waiting messages of each queue, oldest first."""
    queues = list(queues)
    _check_supported(broker_url)
    if is_redis(broker_url):
        import redis  # here, not at the top: Redis brokers only; `predraft queue ...` must start fast

        client = _redis_client(broker_url, timeout)
        found: list[QueuedMessage] = []
        try:
            for queue in queues:
                messages = [
                    message
                    for key in _redis_keys(queue)
                    for payload in reversed(client.lrange(key, -limit, -1))
                    if (message := _decode(payload, queue, delivered=False, since=None)) is not None
                ]
                found.extend(messages[:limit])
        except redis.RedisError as exc:
            raise _unreachable(broker_url, exc) from exc
        finally:
            client.close()
        return found
    rows = _sqla_rows(broker_url.removeprefix("sqla+"), queues, timeout, visible_only=True, limit_per_queue=limit)
    return [message for message in _sqla_decode(rows) if message is not None]


def delivered_messages(broker_url: str, queues: Iterable[str], *, timeout: float = 3.0) -> list[QueuedMessage]:
    """Messages delivered to workers and not yet acknowledged (Redis). Empty for kombu's SQLAlchemy
    transport, which cannot tell (ask the workers: :mod:`predraft.workers.presence`)."""
    queues = list(queues)
    _check_supported(broker_url)
    if not is_redis(broker_url):
        return []
    import redis  # here, not at the top: Redis brokers only; `predraft queue ...` must start fast

    client = _redis_client(broker_url, timeout)
    try:
        return _redis_unacked(client, queues)
    except redis.RedisError as exc:
        raise _unreachable(broker_url, exc) from exc
    finally:
        client.close()


def messages_with_eta(
    broker_url: str, queues: Iterable[str], *, timeout: float = 3.0, scan_window: int = RETRY_SCAN_WINDOW
) -> list[QueuedMessage]:
    """Messages that carry an ETA (past or future): among the newest ``scan_window`` waiting messages of
    each list, and (Redis) the delivered ones."""
    return _search(
        broker_url,
        list(queues),
        _ETA_MARK,
        timeout=timeout,
        scan_window=scan_window,
        keep=lambda message: message.eta is not None,
    )


def find_message(broker_url: str, queues: Iterable[str], task_id: str, *, timeout: float = 3.0) -> QueuedMessage | None:
    """The waiting or (Redis) delivered message of task ``task_id``, searching whole queues; None if absent."""
    found = _search(
        broker_url,
        list(queues),
        f'"id": "{task_id}"',
        timeout=timeout,
        scan_window=0,
        keep=lambda message: message.task_id == task_id,
    )
    return found[0] if found else None


def _search(
    broker_url: str, queues: list[str], mark: str, *, timeout: float, scan_window: int, keep: Any
) -> list[QueuedMessage]:
    _check_supported(broker_url)
    if is_redis(broker_url):
        import redis  # here, not at the top: Redis brokers only; `predraft queue ...` must start fast

        client = _redis_client(broker_url, timeout)
        found = []
        try:
            search = client.register_script(_REDIS_SEARCH)
            for queue in queues:
                for payload in search(keys=_redis_keys(queue), args=[mark, scan_window]):
                    message = _decode(payload, queue, delivered=False, since=None)
                    if message is not None and keep(message):
                        found.append(message)
            found.extend(message for message in _redis_unacked(client, queues) if keep(message))
        except redis.RedisError as exc:
            raise _unreachable(broker_url, exc) from exc
        finally:
            client.close()
        return found
    rows = _sqla_rows(
        broker_url.removeprefix("sqla+"), queues, timeout, visible_only=True, contains=mark, newest=scan_window or None
    )
    return [message for message in _sqla_decode(rows) if message is not None and keep(message)]


def _decode(payload: bytes | str, queue: str, *, delivered: bool, since: datetime | None) -> QueuedMessage | None:
    try:
        message = json.loads(payload)
        headers = message.get("headers") or {}
        body = message.get("body", "")
        if (message.get("properties") or {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
        args = json.loads(body)[0] if body else []
    except (ValueError, TypeError, KeyError, IndexError):
        return None
    task = headers.get("task")
    if not task:
        return None
    kept = tuple(arg for arg in args if not isinstance(arg, list | dict))
    return QueuedMessage(
        queue=queue,
        task=str(task),
        task_id=str(headers.get("id", "")),
        first_arg=args[0] if args else None,
        args=kept,
        delivered=delivered,
        since=since,
        eta=_iso(headers.get("eta")),
        retries=_int(headers.get("retries")),
        sent_at=_epoch(headers.get("predraft_sent_at")),
    )


def _iso(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    return as_utc(moment)


def _epoch(value: object) -> datetime | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return datetime.fromtimestamp(value, UTC)
    return None


def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


# --- Redis ------------------------------------------------------------------------------------------------------


def _redis_client(broker_url: str, timeout: float) -> Redis:
    import redis  # here, not at the top: Redis brokers only; `predraft queue ...` must start fast

    return redis.Redis.from_url(broker_url, socket_timeout=timeout, socket_connect_timeout=timeout)


def _redis_keys(queue: str) -> list[str]:
    """The lists of a queue, in kombu's delivery order (priority 0 first)."""
    return [queue, *(f"{queue}{_REDIS_PRIORITY_SEPARATOR}{step}" for step in _REDIS_PRIORITY_STEPS)]


def _redis_sizes(
    broker_url: str, queues: list[str], timeout: float
) -> tuple[dict[str, int], dict[str, datetime | None]]:
    import redis  # here, not at the top: Redis brokers only; `predraft queue ...` must start fast

    client = _redis_client(broker_url, timeout)
    try:
        with client.pipeline(transaction=False) as pipe:
            for queue in queues:
                for key in _redis_keys(queue):
                    pipe.llen(key)
                    pipe.lindex(key, -1)
            replies = pipe.execute()
    except redis.RedisError as exc:
        raise _unreachable(broker_url, exc) from exc
    finally:
        client.close()
    sizes: dict[str, int] = {}
    oldest: dict[str, datetime | None] = {}
    per_queue = 2 * len(_redis_keys(""))
    for index, queue in enumerate(queues):
        chunk = replies[index * per_queue : (index + 1) * per_queue]
        sizes[queue] = sum(int(size) for size in chunk[0::2])
        sent = [
            message.sent_at
            for payload in chunk[1::2]
            if payload is not None
            and (message := _decode(payload, queue, delivered=False, since=None)) is not None
            and message.sent_at is not None
        ]
        oldest[queue] = min(sent) if sent else None
    return sizes, oldest


def _redis_unacked(client: Any, queues: list[str]) -> list[QueuedMessage]:
    delivered_at = {
        tag.decode() if isinstance(tag, bytes) else tag: score
        for tag, score in client.zrange("unacked_index", 0, -1, withscores=True)
    }
    found = []
    for tag, entry in client.hgetall("unacked").items():
        try:
            payload, _exchange, routing_key = json.loads(entry)
        except (ValueError, TypeError):
            continue
        tag = tag.decode() if isinstance(tag, bytes) else tag
        if routing_key not in queues:
            continue
        since = datetime.fromtimestamp(delivered_at[tag], UTC) if tag in delivered_at else None
        message = _decode(json.dumps(payload), routing_key, delivered=True, since=since)
        if message is not None:
            found.append(message)
    return found


def _redis_messages(broker_url: str, queues: list[str], timeout: float) -> list[QueuedMessage]:
    import redis  # here, not at the top: Redis brokers only; `predraft queue ...` must start fast

    client = _redis_client(broker_url, timeout)
    found: list[QueuedMessage] = []
    try:
        for queue in queues:
            for key in _redis_keys(queue):
                for payload in client.lrange(key, 0, -1):
                    message = _decode(payload, queue, delivered=False, since=None)
                    if message is not None:
                        found.append(message)
        found.extend(_redis_unacked(client, queues))
    except redis.RedisError as exc:
        raise BrokerUnreachable(f"broker {_redact(broker_url)} could not be read: {exc}") from exc
    finally:
        client.close()
    return found


def _unreachable(broker_url: str, exc: Exception) -> BrokerUnreachable:
    return BrokerUnreachable(f"broker {_redact(broker_url)} could not be read: {_first_line(exc)}")


# --- kombu's SQLAlchemy transport ----------------------------------------------------------------------------------


def _sqlite_path(database_url: str) -> Path | None:
    if database_url.startswith("sqlite:///"):
        return Path(database_url.removeprefix("sqlite:///"))
    return None


def _sqla_engine(database_url: str, timeout: float) -> Engine:
    if database_url.startswith("sqlite"):
        return create_engine(database_url, connect_args={"timeout": timeout})
    return create_engine(database_url, connect_args={"connect_timeout": max(1, int(timeout))})


def _sqla_select(database_url: str, timeout: float, sql: str, **params: object) -> list[Any]:
    """Rows of ``sql`` on the broker's tables; [] when they do not exist (nothing was ever sent)."""
    engine = _sqla_engine(database_url, timeout)
    try:
        with engine.connect() as connection:
            tables = set(connection.dialect.get_table_names(connection))
            if not {"kombu_queue", "kombu_message"} <= tables:
                return []
            return list(connection.execute(text(sql), params).all())
    except SQLAlchemyError as exc:
        raise BrokerUnreachable(f"broker sqla+{_redact(database_url)} could not be read: {_first_line(exc)}") from exc
    finally:
        engine.dispose()


def _local_to_utc(moment: object) -> datetime | None:
    """kombu stamps rows with naive local time (datetime.now)."""
    if isinstance(moment, str):
        try:
            moment = datetime.fromisoformat(moment)
        except ValueError:
            return None
    return moment.astimezone(UTC) if isinstance(moment, datetime) else None


def _sqla_sizes(
    database_url: str, queues: list[str], timeout: float
) -> tuple[dict[str, int], dict[str, datetime | None]]:
    """Waiting rows per queue, and when the oldest was published. kombu stamps a row only when it is
    delivered, so the publication time comes from the oldest row's header."""
    rows = _sqla_select(
        database_url,
        timeout,
        "SELECT q.name, COUNT(m.id), MIN(m.id) FROM kombu_message m "
        "JOIN kombu_queue q ON q.id = m.queue_id WHERE m.visible = :visible GROUP BY q.name",
        visible=True,
    )
    sizes = {queue: 0 for queue in queues}
    oldest: dict[str, datetime | None] = {queue: None for queue in queues}
    first_ids = {}
    for name, count, first_id in rows:
        if name in sizes:
            sizes[name], first_ids[int(first_id)] = int(count), name
    if first_ids:
        marks = ", ".join(str(message_id) for message_id in first_ids)  # integers from the database
        for message_id, payload in _sqla_select(
            database_url,
            timeout,
            f"SELECT id, payload FROM kombu_message WHERE id IN ({marks})",  # noqa: S608 - fixed SQL, values bound
        ):
            message = _decode(payload, first_ids[int(message_id)], delivered=False, since=None)
            oldest[first_ids[int(message_id)]] = message.sent_at if message is not None else None
    return sizes, oldest


def _sqla_rows(
    database_url: str,
    queues: list[str],
    timeout: float,
    *,
    visible_only: bool,
    limit_per_queue: int | None = None,
    contains: str | None = None,
    newest: int | None = None,
) -> list[Any]:
    """(queue, visible, timestamp, payload) rows: oldest first (``limit_per_queue`` each), or among the
    ``newest`` of each queue those whose payload contains ``contains``."""
    rows = []
    for queue in queues:
        where = "q.name = :queue" + (" AND m.visible = :visible" if visible_only else "")
        if newest is not None:
            inner = (
                f"SELECT m.id FROM kombu_message m JOIN kombu_queue q ON q.id = m.queue_id WHERE {where} "  # noqa: S608 - fixed SQL, values bound
                "ORDER BY m.id DESC LIMIT :newest"
            )
            sql = (
                "SELECT q.name, m.visible, m.timestamp, m.payload FROM kombu_message m "  # noqa: S608 - fixed SQL, values bound
                f"JOIN kombu_queue q ON q.id = m.queue_id WHERE m.id IN ({inner}) AND m.payload LIKE :pattern "
                "ORDER BY m.id"
            )
        else:
            sql = (
                "SELECT q.name, m.visible, m.timestamp, m.payload FROM kombu_message m "  # noqa: S608 - fixed SQL, values bound
                f"JOIN kombu_queue q ON q.id = m.queue_id WHERE {where}"
                + (" AND m.payload LIKE :pattern" if contains is not None else "")
                + " ORDER BY m.id"
                + (" LIMIT :limit" if limit_per_queue is not None else "")
            )
        params: dict[str, object] = {"queue": queue}
        if visible_only:
            params["visible"] = True
        if newest is not None:
            params["newest"] = newest
        if contains is not None:
            params["pattern"] = f"%{contains}%"
        if limit_per_queue is not None and newest is None:
            params["limit"] = limit_per_queue
        rows.extend(_sqla_select(database_url, timeout, sql, **params))
    return rows


def _sqla_decode(rows: list[Any]) -> list[QueuedMessage | None]:
    return [
        _decode(payload, queue, delivered=not visible, since=_local_to_utc(sent_at))
        for queue, visible, sent_at, payload in rows
    ]


def _sqla_messages(database_url: str, queues: list[str], timeout: float) -> list[QueuedMessage]:
    rows = _sqla_select(
        database_url,
        timeout,
        "SELECT q.name, m.visible, m.timestamp, m.payload FROM kombu_message m JOIN kombu_queue q ON q.id = m.queue_id",
    )
    return [message for message in _sqla_decode([row for row in rows if row[0] in queues]) if message is not None]


def _first_line(exc: BaseException) -> str:
    return (str(exc).splitlines() or [type(exc).__name__])[0]


def _redact(url: str) -> str:
    return redact_url(url) or ""
