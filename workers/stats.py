"""``predraft queue stats``: per queue what waits, runs, waits for a retry and is dead, and the workers online.

Fast whatever the backlog: the broker is counted, never read message by message
(:func:`predraft.workers.queues.queue_counts`), the workers are their heartbeats
(:mod:`predraft.workers.presence`: nobody is waited for), and the dead work is two counting queries. Imports
neither Celery nor the ORM, so that the command itself starts quickly.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import create_engine, text

from predraft.core.settings import Settings, redact_url
from predraft.workers.names import QUEUE_OF_TASK, QUEUES
from predraft.workers.presence import online_workers
from predraft.workers.queues import queue_counts

#: Dead letters not yet retried, by task.
_DEAD_LETTERS = "SELECT task_name, COUNT(*) FROM dead_letters WHERE retried_at IS NULL GROUP BY task_name"
#: Dead exports of each study's newest SR (a draft, or the report its review issued): the exports of an SR
#: that a newer one superseded do not count (the newer SR is what the PACS needs).
_DEAD_EXPORTS = (
    "SELECT COUNT(*) FROM exports e JOIN drafts d ON d.id = e.draft_id WHERE e.state = 'dead' AND "
    "d.id = (SELECT n.id FROM drafts n WHERE n.study_id = d.study_id "
    "ORDER BY n.generation DESC, n.id DESC LIMIT 1)"
)


def queue_stats(settings: Settings, *, now: datetime | None = None, timeout: float = 3.0) -> dict[str, Any]:
    """Per queue: ``waiting``, ``running``, ``retries_pending``, ``dead``, ``oldest_waiting_seconds`` and how
    many online ``workers`` consume it; the ``workers``; and ``problems``: dead work, and queues that no
    online worker consumes.

    ``running`` is what the broker holds delivered and unacknowledged (Redis), or what the workers say they
    run (kombu's SQLAlchemy transport keeps no such state); ``retries_pending`` the messages whose ETA is
    ahead (see :data:`predraft.workers.queues.RETRY_SCAN_WINDOW`), and on the embedded broker the retries workers hold.
    """
    now = now or datetime.now(UTC)
    counts = queue_counts(settings.broker_url, QUEUES, now=now, timeout=timeout)
    dead = dead_counts(settings.database_url, timeout=timeout)
    workers = online_workers(settings, now=now, timeout=timeout)
    held = [task for worker in workers for task in worker.tasks]
    queues = []
    for queue in QUEUES:
        count = counts[queue]
        running, retries = count.delivered, count.retries
        if running is None:  # kombu's SQLAlchemy transport: what runs is what the workers hold
            mine = [task for task in held if task.queue == queue]
            retries += sum(1 for task in mine if _pending(task.eta, now))
            running = sum(1 for task in mine if task.state != "scheduled" and not _pending(task.eta, now))
        queues.append(
            {
                "queue": queue,
                "waiting": count.waiting,
                "running": running,
                "retries_pending": retries,
                "dead": dead.get(queue, 0),
                "oldest_waiting_seconds": (
                    round(max(0.0, (now - count.oldest_sent_at).total_seconds()), 1)
                    if count.oldest_sent_at and count.waiting
                    else None
                ),
                "workers": sum(1 for worker in workers if queue in worker.queues),
            }
        )
    return {
        "broker": redact_url(settings.broker_url),
        "queues": queues,
        "workers": [worker.as_json(now) for worker in workers],
        "problems": _problems(queues),
    }


def dead_counts(database_url: str, *, timeout: float = 3.0) -> dict[str, int]:
    """Dead work by queue: dead letters not yet retried, and (queue ``export``) dead exports of newest SRs."""
    connect_args = (
        {"timeout": timeout} if database_url.startswith("sqlite") else {"connect_timeout": max(1, int(timeout))}
    )
    engine = create_engine(database_url, connect_args=connect_args)
    try:
        with engine.connect() as connection:
            letters = connection.execute(text(_DEAD_LETTERS)).all()
            exports = connection.execute(text(_DEAD_EXPORTS)).scalar() or 0
    finally:
        engine.dispose()
    counts: dict[str, int] = {}
    for task_name, count in letters:
        if task_name in QUEUE_OF_TASK:
            queue = QUEUE_OF_TASK[task_name]
            counts[queue] = counts.get(queue, 0) + int(count)
    if exports:
        counts["export"] = counts.get("export", 0) + int(exports)
    return counts


def _problems(queues: list[dict[str, Any]]) -> list[str]:
    problems = []
    for row in queues:
        if row["dead"]:
            problems.append(f"{row['dead']} dead in queue {row['queue']} (predraft queue ls --state dead)")
        if not row["workers"]:
            backlog = row["waiting"] + row["retries_pending"]
            problems.append(
                f"no online worker consumes queue {row['queue']}"
                + (f" ({backlog} message(s) waiting)" if backlog else "")
            )
    return problems


def _pending(eta: datetime | None, now: datetime) -> bool:
    return eta is not None and eta > now
