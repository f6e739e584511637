"""The admin view of the work items: listing and showing what waits, runs, failed or is dead; retrying
and purging; the workers report (``predraft queue ls/show/retry/purge``, ``predraft workers``; the counts of
``queue stats`` are :mod:`predraft.workers.stats`).

Read from the broker (:mod:`predraft.workers.queues`), the workers (:mod:`predraft.workers.presence`)
and the database (dead letters, exports, and the studies and instances that work is about).

A *work item* is one of:

- a broker message, named by its Celery task id: ``waiting`` (in its queue), ``running`` (delivered to a
  worker, not yet acknowledged) or ``failed`` (a try failed; its retry waits for its ETA);
- ``D<n>``: dead letter ``n``, a task whose retries are spent (``dead`` until retried);
- ``E<n>``: export row ``n`` of a study's newest SR, when ``failed`` (its retry is scheduled) or ``dead``
  (given up). Exports of an SR that a newer one superseded are left out: the newer SR is what counts.

Items are :class:`WorkItem` (JSON: :meth:`WorkItem.as_json`, the keys of :data:`ITEM_KEYS`, then the worker
that holds a message and ``show``'s details). They name studies and instances by UID and carry errors and
tracebacks, never patient names or ids.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from celery import Celery
from sqlalchemy import select
from sqlalchemy.orm import Session, aliased

from predraft.core.clock import as_utc
from predraft.core.db import session_scope
from predraft.core.schema import DeadLetter, Draft, Export, Instance, Study
from predraft.core.settings import Settings, redact_url
from predraft.core.states import LISTED_WORK_STATES, ExportState, WorkState
from predraft.core.studies import newest_report, newest_report_first
from predraft.workers.dead_letters import DeadLetterError, retry_dead_letter
from predraft.workers.export_service import requeue_latest_draft
from predraft.workers.names import CLASSIFY, DRAFT, EXPORT, PREPARE, QUEUE_OF_TASK, QUEUES
from predraft.workers.presence import HeldTask, WorkerStatus, broadcasts, online_workers
from predraft.workers.queues import (
    QueuedMessage,
    delivered_messages,
    find_message,
    messages_with_eta,
    queue_counts,
    waiting_messages,
)

STATES = tuple(state.value for state in LISTED_WORK_STATES)
ITEM_KEYS = (
    "id",
    "state",
    "queue",
    "task",
    "study_uid",
    "instance_uid",
    "destination",
    "attempts",
    "since",
    "retry_at",
    "error",
)
#: How ``list_work`` orders items: what needs an administrator first.
_LISTING_ORDER = (WorkState.DEAD, WorkState.FAILED, WorkState.RUNNING, WorkState.WAITING)
_TASK_ID = re.compile(r"^[0-9A-Za-z][0-9A-Za-z-]{7,63}$")
_ROW_ID = re.compile(r"^([DE])(\d+)$", re.IGNORECASE)


@dataclass(frozen=True)
class WorkItem:
    """One work item as the admin view lists and shows it (see the module docstring for the kinds)."""

    id: str
    state: WorkState
    queue: str
    task: str
    study_uid: str | None = None
    instance_uid: str | None = None
    destination: str | None = None
    attempts: int | None = None
    since: str | None = None  # ISO 8601, UTC
    retry_at: str | None = None  # ISO 8601, UTC: when a failed item's retry is due
    error: str | None = None
    worker: str | None = None  # the worker that holds a message the broker cannot say is delivered
    details: Mapping[str, Any] = field(default_factory=dict)  # what ``show`` adds

    def as_json(self) -> dict[str, Any]:
        """The keys of :data:`ITEM_KEYS`, then ``worker`` when known, then the details."""
        data: dict[str, Any] = {key: getattr(self, key) for key in ITEM_KEYS}
        data["state"] = self.state.value
        if self.worker:
            data["worker"] = self.worker
        return data | dict(self.details)


class RetryRefused(LookupError):
    """No such item, or one that cannot be retried (the message says why)."""


def _newest_sr() -> Any:
    """A correlated subquery: the id of the newest SR row (draft, or the report its review issued) of the
    study of ``Draft`` (the same row ``predraft studies resend`` sends)."""
    newer = aliased(Draft)
    return (
        select(newer.id)
        .where(newer.study_id == Draft.study_id)
        .order_by(*newest_report_first(newer))
        .limit(1)
        .scalar_subquery()
    )


# --- listing --------------------------------------------------------------------------------------------------------


def list_work(
    settings: Settings,
    *,
    queue: str | None = None,
    state: str | None = None,
    limit: int = 100,
    now: datetime | None = None,
) -> list[WorkItem]:
    """Work items in ``state`` (default: every state) of ``queue`` (default: every queue), dead first, then
    failed, running and waiting, each oldest first. Waiting messages: the ``limit`` oldest of each queue."""
    if queue is not None and queue not in QUEUES:
        raise ValueError(f"unknown queue {queue!r}; known: {', '.join(QUEUES)}")
    if state is not None and state not in STATES:
        raise ValueError(f"unknown state {state!r}; known: {', '.join(STATES)}")
    now = now or datetime.now(UTC)
    queues = [queue] if queue else list(QUEUES)
    wanted = [WorkState(state)] if state else list(LISTED_WORK_STATES)
    messages: list[tuple[WorkState, QueuedMessage | HeldTask, str | None]] = []  # (state, message, worker)
    if WorkState.WAITING in wanted:
        messages += [
            (WorkState.WAITING, m, None)
            for m in waiting_messages(settings.broker_url, queues, limit=limit)
            if not m.retry_pending(now)
        ]
    if {WorkState.RUNNING, WorkState.FAILED} & set(wanted):
        # what runs: on Redis the broker says (unacked); the embedded broker cannot, so the workers say
        workers = [] if broadcasts(settings.broker_url) else online_workers(settings, now=now)
        if WorkState.RUNNING in wanted:
            messages += [
                (WorkState.RUNNING, m, None)
                for m in delivered_messages(settings.broker_url, queues)
                if not m.retry_pending(now)
            ]
            messages += [
                (WorkState.RUNNING, task, worker.hostname)
                for worker in workers
                for task in worker.tasks
                if task.queue in queues and task.state != "scheduled" and not task.retry_pending(now)
            ]
        if WorkState.FAILED in wanted:
            messages += [
                (WorkState.FAILED, m, None)
                for m in messages_with_eta(settings.broker_url, queues)
                if m.retry_pending(now)
            ]
            messages += [
                (WorkState.FAILED, task, worker.hostname)
                for worker in workers
                for task in worker.tasks
                if task.queue in queues and task.retry_pending(now)
            ]
    with session_scope(settings.database_url) as session:
        items: list[WorkItem] = []
        if WorkState.DEAD in wanted:
            items += [_dead_letter_item(letter, session) for letter in _dead_letters(session, queues)]
            if "export" in queues:
                items += [_export_item(export, session) for export in _exports(session, ExportState.DEAD)]
        if WorkState.FAILED in wanted and "export" in queues:
            exports, messages = _fold_export_retries(_exports(session, ExportState.FAILED), messages, session)
            items += exports
        items += [_message_item(kind, message, worker, session) for kind, message, worker in messages]
    order = {state: index for index, state in enumerate(_LISTING_ORDER)}
    items.sort(key=lambda item: (order[item.state], item.since or ""))
    return items


def _fold_export_retries(
    exports: list[Export], messages: list[tuple[WorkState, QueuedMessage | HeldTask, str | None]], session: Session
) -> tuple[list[WorkItem], list[tuple[WorkState, QueuedMessage | HeldTask, str | None]]]:
    """The items of failed exports, and the messages that are not their retries. A failed export's retry
    message belongs to its ``E<n>`` item: its ETA becomes the item's ``retry_at``."""
    items = {(export.draft_id, export.destination): _export_item(export, session) for export in exports}
    others = []
    for entry in messages:
        kind, message, _ = entry
        key = (message.first_arg, message.args[1] if len(message.args) > 1 else None)
        if kind is WorkState.FAILED and message.task == EXPORT and key in items:
            items[key] = replace(items[key], retry_at=_iso(message.eta))
        else:
            others.append(entry)
    return list(items.values()), others


def _dead_letters(session: Session, queues: Iterable[str]) -> list[DeadLetter]:
    names = [task for task, queue in QUEUE_OF_TASK.items() if queue in set(queues)]
    return list(
        session.scalars(
            select(DeadLetter)
            .where(DeadLetter.retried_at.is_(None), DeadLetter.task_name.in_(names))
            .order_by(DeadLetter.created_at, DeadLetter.id)
        )
    )


def _exports(session: Session, state: ExportState) -> list[Export]:
    return list(
        session.scalars(
            select(Export)
            .join(Draft, Draft.id == Export.draft_id)
            .where(Export.state == state, Draft.id == _newest_sr())
            .order_by(Export.updated_at, Export.id)
        )
    )


def _dead_letter_item(letter: DeadLetter, session: Session, *, detail: bool = False) -> WorkItem:
    study_uid, instance_uid = _uids(session, study_id=letter.study_id, instance_id=letter.instance_id)
    extra = (
        {"task_id": letter.task_id, "traceback": letter.traceback, "retried_at": _iso(letter.retried_at)}
        if detail
        else {}
    )
    return WorkItem(
        id=f"D{letter.id}",
        state=WorkState.DEAD if letter.retried_at is None else WorkState.RETRIED,
        queue=QUEUE_OF_TASK.get(letter.task_name, ""),
        task=letter.task_name,
        study_uid=study_uid,
        instance_uid=instance_uid,
        attempts=letter.attempts,
        since=_iso(letter.created_at),
        error=letter.error,
        details=extra,
    )


def _export_item(export: Export, session: Session, *, detail: bool = False) -> WorkItem:
    draft = export.draft
    study_uid = session.scalar(select(Study.study_uid).where(Study.id == draft.study_id))
    extra = (
        {
            "draft_generation": draft.generation,
            "sr_sop_instance_uid": draft.sr_sop_instance_uid,
            "export_state": export.state,
            "exported_at": _iso(export.exported_at),
        }
        if detail
        else {}
    )
    return WorkItem(
        id=f"E{export.id}",
        state=WorkState(export.state.value),
        queue="export",
        task=EXPORT,
        study_uid=study_uid,
        destination=export.destination,
        attempts=export.attempts,
        since=_iso(export.updated_at),
        error=export.last_error,
        details=extra,
    )


def _message_item(
    state: WorkState,
    message: QueuedMessage | HeldTask,
    worker: str | None,
    session: Session,
) -> WorkItem:
    if isinstance(message, QueuedMessage):
        since = message.since if message.delivered else (message.sent_at or message.since)
        task_id, attempts = message.task_id, message.retries
    else:
        since, task_id, attempts = message.started_at, message.task_id, message.retries
    study_uid = instance_uid = destination = None
    first = message.first_arg if isinstance(message.first_arg, int) else None
    if message.task in (PREPARE, CLASSIFY):
        study_uid, instance_uid = _uids(session, instance_id=first)
    elif message.task == DRAFT:
        study_uid, _ = _uids(session, study_id=first)
    elif message.task == EXPORT:
        study_id = session.scalar(select(Draft.study_id).where(Draft.id == first)) if first is not None else None
        study_uid, _ = _uids(session, study_id=study_id)
        destination = message.args[1] if len(message.args) > 1 else None
    return WorkItem(
        id=task_id,
        state=state,
        queue=message.queue or QUEUE_OF_TASK.get(message.task, ""),
        task=message.task,
        study_uid=study_uid,
        instance_uid=instance_uid,
        destination=destination,
        attempts=attempts,
        since=_iso(since),
        retry_at=_iso(message.eta) if state is WorkState.FAILED else None,
        worker=worker,
    )


def _uids(
    session: Session, *, study_id: int | None = None, instance_id: int | None = None
) -> tuple[str | None, str | None]:
    instance_uid = None
    if instance_id is not None:
        row = session.execute(
            select(Instance.sop_instance_uid, Instance.study_id).where(Instance.id == instance_id)
        ).first()
        if row is not None:
            instance_uid, study_id = row.sop_instance_uid, row.study_id
    study_uid = session.scalar(select(Study.study_uid).where(Study.id == study_id)) if study_id is not None else None
    return study_uid, instance_uid


def _iso(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    return as_utc(moment).astimezone(UTC).isoformat(timespec="seconds")


# --- one item -------------------------------------------------------------------------------------------------------


def show_work(settings: Settings, item_id: str, *, now: datetime | None = None) -> WorkItem | None:
    """The item ``item_id`` (``D<n>``, ``E<n>`` or a task id) with its details: for a dead letter the task id
    and traceback; for an export the draft generation and SR; for a message the worker that holds it. None
    when there is no such item (a message that finished is gone from the broker)."""
    now = now or datetime.now(UTC)
    row = _ROW_ID.match(item_id.strip())
    with session_scope(settings.database_url) as session:
        if row is not None:
            kind, number = row.group(1).upper(), int(row.group(2))
            if kind == "D":
                letter = session.get(DeadLetter, number)
                return None if letter is None else _dead_letter_item(letter, session, detail=True)
            export = session.get(Export, number)
            if export is None:
                return None
            return _export_item(export, session, detail=True)
        if not _TASK_ID.match(item_id):
            return None
        message = find_message(settings.broker_url, QUEUES, item_id)
        if message is not None:
            state = (
                WorkState.FAILED
                if message.retry_pending(now)
                else (WorkState.RUNNING if message.delivered else WorkState.WAITING)
            )
            return _message_item(state, message, None, session)
        if not broadcasts(settings.broker_url):
            for worker in online_workers(settings, now=now):
                for task in worker.tasks:
                    if task.task_id == item_id:
                        state = WorkState.FAILED if task.retry_pending(now) else WorkState.RUNNING
                        return _message_item(state, task, worker.hostname, session)
        letter = session.scalar(
            select(DeadLetter).where(DeadLetter.task_id == item_id).order_by(DeadLetter.id.desc()).limit(1)
        )
        return None if letter is None else _dead_letter_item(letter, session, detail=True)


# --- mending --------------------------------------------------------------------------------------------------------


def dead_item_ids(settings: Settings) -> list[str]:
    """The ids of every dead item: dead letters not yet retried, then dead exports of newest SRs."""
    with session_scope(settings.database_url) as session:
        return [f"D{letter.id}" for letter in _dead_letters(session, QUEUES)] + [
            f"E{export.id}" for export in _exports(session, ExportState.DEAD)
        ]


def retry_work(app: Celery, settings: Settings, item_id: str) -> str:
    """Send the work of dead item ``item_id`` again; returns what was sent. ``D<n>``: the dead letter's work
    (:func:`predraft.workers.dead_letters.retry_dead_letter`: an instance is prepared again, a study drafted again).
    ``E<n>``: a dead export of a study's newest SR is made pending afresh and sent (as ``predraft studies
    resend --destination`` would). Raises :class:`RetryRefused` for anything else."""
    row = _ROW_ID.match(item_id.strip())
    if row is None:
        raise RetryRefused(f"{item_id!r} is not a dead item: retry takes D<n> (a dead letter) or E<n> (an export)")
    kind, number = row.group(1).upper(), int(row.group(2))
    if kind == "D":
        try:
            return retry_dead_letter(app, settings.database_url, number)
        except DeadLetterError as exc:
            raise RetryRefused(str(exc)) from None
    # here, not at the top: it loads pynetdicom and pydicom (via predraft.workers.export), and `predraft queue ls`,
    # `queue show` and `predraft workers` import this module and must start fast
    from predraft.workers.export_task import send_exports

    with session_scope(settings.database_url) as session:
        export = session.get(Export, number)
        if export is None:
            raise RetryRefused(f"no export E{number}")
        if export.state != ExportState.DEAD:
            raise RetryRefused(f"export E{number} is {export.state}, not dead: nothing to retry")
        newest = newest_report(session, export.draft.study_id)
        if newest is None or newest.id != export.draft_id:
            raise RetryRefused(
                f"export E{number} is of an SR that a newer one superseded: `predraft studies resend` sends the newest"
            )
        study_uid = session.scalar(select(Study.study_uid).where(Study.id == export.draft.study_id))
        assert study_uid is not None  # a draft's study_id is a foreign key; studies are never deleted
        draft, queued = requeue_latest_draft(session, study_uid=study_uid, destinations=[export.destination])
        draft_id = draft.id
    send_exports(app, draft_id, queued)
    return f"export of draft row {draft_id} to {queued[0]}"


def purge_queue(app: Celery, queue: str) -> int:
    """Delete the messages waiting in ``queue`` from the broker; returns how many. Nothing else is touched:
    no spool file, no database row; running tasks finish. The sweeper later sends again the work the
    database still says is pending (after ``sweep_stale_seconds``)."""
    if queue not in QUEUES:
        raise ValueError(f"unknown queue {queue!r}; known: {', '.join(QUEUES)}")
    with app.connection_for_write() as connection:
        return int(connection.default_channel.queue_purge(queue) or 0)


def waiting_count(settings: Settings, queue: str) -> int:
    """How many messages wait in ``queue`` (what a purge would delete, retries included)."""
    count = queue_counts(settings.broker_url, [queue], now=datetime.now(UTC))[queue]
    return count.waiting


def workers_report(app: Celery, settings: Settings, *, timeout: float, now: datetime | None = None) -> dict[str, Any]:
    """The online workers (their heartbeats; on Redis each also asked, by Celery inspect waiting ``timeout``
    seconds, whether it answers its broker), the queues that none of them consumes, and ``problems``: no
    worker online, a queue without one, a worker that did not answer."""
    now = now or datetime.now(UTC)
    workers: list[WorkerStatus] = online_workers(settings, now=now, app=app, inspect_timeout=timeout)
    consumed = {queue for worker in workers for queue in worker.queues}
    missing = [queue for queue in QUEUES if queue not in consumed]
    problems = ([] if workers else ["no worker online"]) + [
        f"no online worker consumes queue {queue}" for queue in missing
    ]
    problems += [
        f"worker {worker.hostname} sends heartbeats but did not answer inspect within {timeout:g} s"
        for worker in workers
        if worker.answers_inspect is False
    ]
    return {
        "broker": redact_url(settings.broker_url),
        "workers": [worker.as_json(now) for worker in workers],
        "queues_without_workers": missing,
        "problems": problems,
    }
