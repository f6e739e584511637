"""The admin view of the work items: listing and showing what waits, runs, failed or is dead; retrying
and purging; the workers report (``predraft queue ls/show/retry/purge``, ``predraft workers``; the counts of
``queue stats`` are :mod:`predraft.workers.stats`).

Read from the database: the work rows and their leases (:mod:`predraft.workers.work`), dead letters and
exports; the broker is asked only to count or purge a queue (:mod:`predraft.workers.queues`) and the workers
only for the workers report (:mod:`predraft.workers.presence`).

A *work item* is one of:

- a task's work, named by its Celery task id (stamped on the instance, study or export row it is about):
  ``waiting`` (sent, no worker took it yet), ``running`` (a worker holds its lease) or ``failed`` (a try
  failed; its retry waits for its ETA);
- ``D<n>``: dead letter ``n``, a task whose retries are spent (``dead`` until retried);
- ``E<n>``: export row ``n`` of a study's newest SR, when ``failed`` (its retry is scheduled) or ``dead``
  (given up). Exports of an SR that a newer one superseded are left out: the newer SR is what counts.

Items are :class:`WorkItem` (JSON: :meth:`WorkItem.as_json`, the keys of :data:`ITEM_KEYS`, then the worker
that holds a task and ``show``'s details). They name studies and instances by UID and carry errors and
tracebacks, never patient names or ids.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from celery import Celery
from sqlalchemy import func, null, select
from sqlalchemy.orm import Session, aliased

from predraft.core.clock import as_utc
from predraft.core.db import session_scope
from predraft.core.schema import DeadLetter, Draft, Export, Instance, Study
from predraft.core.settings import Settings, redact_url
from predraft.core.states import LISTED_WORK_STATES, ExportState, WorkState
from predraft.core.studies import newest_report, newest_report_first
from predraft.workers.dead_letters import DeadLetterError, retry_dead_letter
from predraft.workers.export_service import requeue_latest_draft
from predraft.workers.names import EXPORT, QUEUE_OF_TASK, QUEUES
from predraft.workers.presence import WorkerStatus, online_workers
from predraft.workers.queues import waiting_counts
from predraft.workers.work import KINDS, PHASE_CONDITIONS, WorkKind

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
#: The state of an ``E<n>`` item by its export row's state (listed: failed and dead; ``show`` takes any row).
_EXPORT_ITEM_STATE = {
    ExportState.PENDING: WorkState.WAITING,
    ExportState.SENDING: WorkState.RUNNING,
    ExportState.FAILED: WorkState.FAILED,
    ExportState.DEAD: WorkState.DEAD,
    ExportState.SENT: WorkState.DONE,
}
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
    worker: str | None = None  # the worker whose lease holds a running task
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
    failed, running and waiting, each oldest first; at most ``limit`` of each task in each state. All from the
    database (:mod:`predraft.workers.work`): a handful of queries whatever the backlog."""
    if queue is not None and queue not in QUEUES:
        raise ValueError(f"unknown queue {queue!r}; known: {', '.join(QUEUES)}")
    if state is not None and state not in STATES:
        raise ValueError(f"unknown state {state!r}; known: {', '.join(STATES)}")
    now = now or datetime.now(UTC)
    queues = [queue] if queue else list(QUEUES)
    wanted = [WorkState(state)] if state else list(LISTED_WORK_STATES)
    items: list[WorkItem] = []
    with session_scope(settings.database_url) as session:
        if WorkState.DEAD in wanted:
            items += [_dead_letter_item(*row) for row in _dead_letters(session, queues, limit=limit)]
            if "export" in queues:
                items += [_export_item(*row) for row in _exports(session, ExportState.DEAD, limit=limit)]
        for kind in KINDS:
            if kind.queue not in queues:
                continue
            for phase in (WorkState.FAILED, WorkState.RUNNING, WorkState.WAITING):
                if phase not in wanted:
                    continue
                if kind.task == EXPORT and phase is WorkState.FAILED:  # E<n>: a failed export of a newest SR
                    items += [_export_item(*row) for row in _exports(session, ExportState.FAILED, limit=limit)]
                else:  # a failed export whose retry is overdue stays its E<n> item
                    items += [
                        _work_item(kind, phase, *row)
                        for row in _work_rows(session, kind, phase, now, limit)
                        if not (isinstance(row[0], Export) and row[0].state == ExportState.FAILED)
                    ]
    order = {state: index for index, state in enumerate(_LISTING_ORDER)}
    items.sort(key=lambda item: (order[item.state], item.since or ""))
    return items


def _since(phase: WorkState) -> str:
    """The column that dates an item in ``phase``: when a worker took it (running), else when it was sent (a
    failed try's release clears ``leased_at``; ``dispatched_at`` stays while its retry is due)."""
    return "leased_at" if phase is WorkState.RUNNING else "dispatched_at"


def _work_statement(kind: WorkKind, phase: WorkState, now: datetime) -> Any:
    """SELECT (row, study UID, instance UID, destination) of ``kind``'s work in ``phase``: one query, joined."""
    model = kind.model
    statement: Any
    if model is Instance:
        statement = select(Instance, Study.study_uid, Instance.sop_instance_uid, null()).join(
            Study, Study.id == Instance.study_id
        )
    elif model is Study:
        statement = select(Study, Study.study_uid, null(), null())
    else:
        statement = (
            select(Export, Study.study_uid, null(), Export.destination)
            .join(Draft, Draft.id == Export.draft_id)
            .join(Study, Study.id == Draft.study_id)
        )
    return statement.where(kind.due(), PHASE_CONDITIONS[phase](model, now))


def _work_rows(session: Session, kind: WorkKind, phase: WorkState, now: datetime, limit: int) -> list[Any]:
    """The oldest ``limit`` of :func:`_work_statement`."""
    statement = (
        _work_statement(kind, phase, now).order_by(getattr(kind.model, _since(phase)), kind.model.id).limit(limit)
    )
    return list(session.execute(statement).all())


def _work_item(
    kind: WorkKind,
    phase: WorkState,
    row: Instance | Study | Export,
    study_uid: str | None,
    instance_uid: str | None,
    destination: str | None,
    *,
    details: Mapping[str, Any] | None = None,
) -> WorkItem:
    return WorkItem(
        id=row.task_id or "",
        state=phase,
        queue=kind.queue,
        task=kind.task,
        study_uid=study_uid,
        instance_uid=instance_uid,
        destination=destination,
        attempts=row.attempts,
        since=_iso(getattr(row, _since(phase))),
        retry_at=_iso(row.retry_at) if phase is WorkState.FAILED else None,
        error=row.last_error if isinstance(row, Export) else None,
        worker=row.leased_by if phase is WorkState.RUNNING else None,
        details=details or {},
    )


def _dead_letters(session: Session, queues: Iterable[str], *, limit: int | None = None) -> list[Any]:
    """(dead letter, study UID, instance UID) of the dead letters not yet retried, oldest first."""
    names = [task for task, queue in QUEUE_OF_TASK.items() if queue in set(queues)]
    statement = _dead_letter_rows().where(DeadLetter.retried_at.is_(None), DeadLetter.task_name.in_(names))
    statement = statement.order_by(DeadLetter.created_at, DeadLetter.id)
    return list(session.execute(statement if limit is None else statement.limit(limit)).all())


def _dead_letter_rows() -> Any:
    """Dead letters with the UIDs of their study and instance, in one query."""
    return (
        select(DeadLetter, Study.study_uid, Instance.sop_instance_uid)
        .outerjoin(Instance, Instance.id == DeadLetter.instance_id)
        .outerjoin(Study, Study.id == func.coalesce(DeadLetter.study_id, Instance.study_id))
    )


def _exports(session: Session, state: ExportState, *, limit: int | None = None) -> list[Any]:
    """(export, study UID) of the exports of newest SRs in ``state``, oldest first."""
    statement = (
        select(Export, Study.study_uid)
        .join(Draft, Draft.id == Export.draft_id)
        .join(Study, Study.id == Draft.study_id)
        .where(Export.state == state, Draft.id == _newest_sr())
        .order_by(Export.updated_at, Export.id)
    )
    return list(session.execute(statement if limit is None else statement.limit(limit)).all())


def _dead_letter_item(
    letter: DeadLetter, study_uid: str | None, instance_uid: str | None, *, detail: bool = False
) -> WorkItem:
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


def _export_item(export: Export, study_uid: str | None, *, detail: bool = False) -> WorkItem:
    extra = (
        {
            "draft_generation": export.draft.generation,
            "sr_sop_instance_uid": export.draft.sr_sop_instance_uid,
            "export_state": export.state,
            "exported_at": _iso(export.exported_at),
        }
        if detail
        else {}
    )
    return WorkItem(
        id=f"E{export.id}",
        state=_EXPORT_ITEM_STATE[export.state],
        queue="export",
        task=EXPORT,
        study_uid=study_uid,
        destination=export.destination,
        attempts=export.attempts,
        since=_iso(export.updated_at),
        retry_at=_iso(export.retry_at) if export.state == ExportState.FAILED else None,
        error=export.last_error,
        details=extra,
    )


def _iso(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    return as_utc(moment).astimezone(UTC).isoformat(timespec="seconds")


# --- one item -------------------------------------------------------------------------------------------------------


def show_work(settings: Settings, item_id: str, *, now: datetime | None = None) -> WorkItem | None:
    """The item ``item_id`` (``D<n>``, ``E<n>`` or a task id) with its details: for a dead letter the task id
    and traceback; for an export the draft generation and SR; for a task the row it is about and the worker
    that holds it. None when there is no such item (a task whose work is done is no item any more)."""
    now = now or datetime.now(UTC)
    row_id = _ROW_ID.match(item_id.strip())
    with session_scope(settings.database_url) as session:
        if row_id is not None:
            kind, number = row_id.group(1).upper(), int(row_id.group(2))
            if kind == "D":
                found = session.execute(_dead_letter_rows().where(DeadLetter.id == number)).first()
                return None if found is None else _dead_letter_item(*found, detail=True)
            export = session.get(Export, number)
            if export is None:
                return None
            study_uid = session.scalar(select(Study.study_uid).where(Study.id == export.draft.study_id))
            return _export_item(export, study_uid, detail=True)
        if not _TASK_ID.match(item_id):
            return None
        for work_kind in KINDS:
            for phase in (WorkState.RUNNING, WorkState.FAILED, WorkState.WAITING):
                statement = _work_statement(work_kind, phase, now).where(work_kind.model.task_id == item_id)
                found_row = session.execute(statement).first()
                if found_row is not None:
                    return _work_item(work_kind, phase, *found_row, details={"row": _row_name(found_row[0])})
        letter = session.execute(
            _dead_letter_rows().where(DeadLetter.task_id == item_id).order_by(DeadLetter.id.desc()).limit(1)
        ).first()
        return None if letter is None else _dead_letter_item(*letter, detail=True)


def _row_name(row: Instance | Study | Export) -> str:
    """Which row a task is about, as the logs name it (``instance row 7``)."""
    return f"{type(row).__name__.lower()} row {row.id}"


# --- mending --------------------------------------------------------------------------------------------------------


def dead_item_ids(settings: Settings) -> list[str]:
    """The ids of every dead item: dead letters not yet retried, then dead exports of newest SRs."""
    with session_scope(settings.database_url) as session:
        return [f"D{letter.id}" for letter, *_ in _dead_letters(session, QUEUES)] + [
            f"E{export.id}" for export, _ in _exports(session, ExportState.DEAD)
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
    return f"export of draft row {draft_id} to {next(iter(queued))}"


def purge_queue(app: Celery, queue: str) -> int:
    """Delete the messages waiting in ``queue`` from the broker; returns how many. Nothing else is touched:
    no spool file, no database row; running tasks finish. The sweeper later sends again the work the
    database still says is pending (after ``sweep_stale_seconds``)."""
    if queue not in QUEUES:
        raise ValueError(f"unknown queue {queue!r}; known: {', '.join(QUEUES)}")
    with app.connection_for_write() as connection:
        return int(connection.default_channel.queue_purge(queue) or 0)


def waiting_count(settings: Settings, queue: str) -> int:
    """How many messages wait in ``queue`` (what a purge would delete)."""
    return waiting_counts(settings.broker_url, [queue])[queue]


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
