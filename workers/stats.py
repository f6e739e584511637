"""``predraft queue stats``: per queue what waits, runs, waits for a retry and is dead, and the workers online.

Fast whatever the backlog: the broker only counts what waits in each queue
(:func:`predraft.workers.queues.waiting_counts`); what runs, waits for a retry and how long the oldest message
has waited is in the database (:func:`predraft.workers.work.queue_work`, one query per task); the workers are
their heartbeats (:mod:`predraft.workers.presence`: nobody is waited for); the dead work is two counting
queries. Imports no Celery, so that the command itself starts quickly.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, text
from sqlalchemy.orm import Session

from predraft.core.db import bounded_engine
from predraft.core.settings import Settings, redact_url
from predraft.workers.names import QUEUE_OF_TASK, QUEUES
from predraft.workers.presence import online_workers
from predraft.workers.queues import waiting_counts
from predraft.workers.work import queue_work

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

    ``waiting`` is the broker's count of messages in the queue; ``running`` the work under a live lease and
    ``retries_pending`` the work whose retry is ahead, from the database, the same on every broker;
    ``oldest_waiting_seconds`` the age of the oldest work sent and not yet taken (when the queue holds any).
    """
    now = now or datetime.now(UTC)
    waiting = waiting_counts(settings.broker_url, QUEUES, timeout=timeout)
    engine = bounded_engine(settings.database_url, timeout)
    try:
        with Session(engine) as session:
            work = queue_work(session, now)
        dead = dead_counts(engine)
    finally:
        engine.dispose()
    workers = online_workers(settings, now=now, timeout=timeout)
    queues = []
    for queue in QUEUES:
        mine = work[queue]
        queues.append(
            {
                "queue": queue,
                "waiting": waiting[queue],
                "running": mine.running,
                "retries_pending": mine.retries_pending,
                "dead": dead.get(queue, 0),
                "oldest_waiting_seconds": (
                    round(max(0.0, (now - mine.oldest_sent_at).total_seconds()), 1)
                    if mine.oldest_sent_at and waiting[queue]
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


def dead_counts(engine: Engine) -> dict[str, int]:
    """Dead work by queue: dead letters not yet retried, and (queue ``export``) dead exports of newest SRs."""
    with engine.connect() as connection:
        letters = connection.execute(text(_DEAD_LETTERS)).all()
        exports = connection.execute(text(_DEAD_EXPORTS)).scalar() or 0
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
