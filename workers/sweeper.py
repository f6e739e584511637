"""The sweeper: work that the database says is out but that no worker holds or will get is sent again.

Messages can be lost: a Redis without persistence restarts, a worker dies while it holds a message whose
redelivery would wait for the broker's visibility timeout (or, on the embedded broker, never comes), the
listener fails to publish after committing. The database is the truth about what is due and what was sent
(:mod:`predraft.workers.leases`); the broker is asked only how many messages wait in each queue
(:func:`predraft.workers.queues.waiting_counts`). A due row's message counts as lost, ``stale_seconds``
(``sweep_stale_seconds``) after the last sign of it, when:

- its lease lapsed: the worker that ran it stopped renewing it (it died), so its message is gone from the
  queue; an export left ``sending`` with no lease (a try that could not record its outcome) likewise;
- its retry was due ``stale_seconds`` ago and no worker took it (the worker that held it died);
- it was sent ``stale_seconds`` ago, no worker has taken it, **and its queue is empty**: a message still in
  the queue is only late. So a long backlog is never sent again wholesale; a lost message behind a backlog is
  sent again once the backlog has drained.

What is sent again, each with a fresh task id stamped on the row:

- an instance ``received`` in a ``ready`` study -> ``prepare``;
- an instance ``prepared`` (its images travelled in the lost ``classify`` message) -> back to ``received``
  and ``prepare``;
- a ``drafting`` study with no draft of its generation -> ``draft``;
- an export ``pending``, ``failed`` or ``sending`` -> ``export``.

A ``ready`` study whose instances are all finished is moved on (``finish_if_done``). Work with a dead letter
not yet retried is left alone. If a message thought lost was not (a worker had prefetched it and starts it
late), the work runs twice, which the leases and the idempotent tasks absorb: a study is still drafted once.
Each row is taken over with one conditional UPDATE, so two listeners never both send it again.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, cast

from celery import Celery
from sqlalchemy import ColumnElement, and_, exists, func, or_, select, update
from sqlalchemy.engine import CursorResult
from sqlalchemy.orm import Session

from predraft.core.db import session_scope
from predraft.core.events import record_event
from predraft.core.schema import DeadLetter, Draft, Export, Instance, LeasedModel, Study, utcnow
from predraft.core.states import FINISHED_INSTANCE_STATES, EventKind, ExportState, InstanceState, StudyState
from predraft.workers.app import CLASSIFY, DRAFT, EXPORT, PREPARE, QUEUES
from predraft.workers.dispatch import finish_if_done
from predraft.workers.leases import dispatch_values, new_task_id
from predraft.workers.queues import waiting_counts
from predraft.workers.work import KIND_OF_TASK

log = logging.getLogger(__name__)


@dataclass
class SweepReport:
    """What one sweep sent again, by row id."""

    prepared: list[int] = field(default_factory=list)
    reclassified: list[int] = field(default_factory=list)
    finished: list[int] = field(default_factory=list)
    drafted: list[int] = field(default_factory=list)
    exported: list[int] = field(default_factory=list)

    @property
    def total(self) -> int:
        return len(self.prepared) + len(self.reclassified) + len(self.finished) + len(self.drafted) + len(self.exported)


@dataclass(frozen=True)
class _Clock:
    now: datetime
    cutoff: datetime


def lost(model: LeasedModel, *, since: Any, clock: _Clock, queue_empty: bool) -> ColumnElement[bool]:
    """SQL condition: the message of a due row of ``model`` is lost (see the module docstring). ``since``: the
    column that dates a row sent before leases existed (no ``dispatched_at``)."""
    lapsed = model.leased_until < clock.now
    overdue = model.leased_until.is_(None) & (model.retry_at < clock.cutoff)
    if not queue_empty:
        return or_(lapsed, overdue)
    unclaimed = and_(
        model.leased_until.is_(None),
        model.retry_at.is_(None),
        func.coalesce(model.dispatched_at, since) < clock.cutoff,
    )
    return or_(lapsed, overdue, unclaimed)


def sweep(app: Celery, database_url: str, broker_url: str, *, stale_seconds: float) -> SweepReport:
    """One pass; see the module docstring. Raises :class:`predraft.workers.queues.BrokerUnreachable` if the broker
    cannot be read (nothing is sent then: a broker that cannot be read cannot be trusted to be empty)."""
    now = utcnow()
    clock = _Clock(now=now, cutoff=now - timedelta(seconds=stale_seconds))
    empty = {queue for queue, count in waiting_counts(broker_url, QUEUES).items() if count == 0}
    report = SweepReport()
    sends: list[tuple[str, list[Any], str]] = []  # (task, arguments, task id), sent once committed
    with session_scope(database_url) as session:
        sends += _instances(session, clock, empty, report)
        unfinished = exists().where(Instance.study_id == Study.id, Instance.state.not_in(FINISHED_INSTANCE_STATES))
        report.finished = list(
            session.scalars(
                select(Study.id).where(Study.state == StudyState.READY, Study.ready_at < clock.cutoff, ~unfinished)
            ).all()
        )
        sends += _drafts(session, clock, "draft" in empty, report)
        sends += _exports(session, clock, "export" in empty, report)
    for task, args, task_id in sends:
        app.send_task(task, args=args, task_id=task_id)
    for study_id in report.finished:
        finish_if_done(app, database_url, study_id)
    if report.total:
        log.warning(
            "sweeper sent again: %d prepare, %d re-prepare, %d finish, %d draft, %d export",
            len(report.prepared),
            len(report.reclassified),
            len(report.finished),
            len(report.drafted),
            len(report.exported),
        )
    return report


def _take_over(
    session: Session, model: LeasedModel, row_id: int, condition: ColumnElement[bool], **values: Any
) -> str | None:
    """Stamp a new message on row ``row_id`` if ``condition`` still holds (one conditional UPDATE); its task id."""
    task_id = new_task_id()
    result = cast(
        CursorResult[Any],
        session.execute(
            update(model)
            .where(model.id == row_id, condition)
            .values(**dispatch_values(task_id, fresh=False), **values)
            .execution_options(synchronize_session=False)
        ),
    )
    return task_id if result.rowcount == 1 else None


def _instances(
    session: Session, clock: _Clock, empty: set[str], report: SweepReport
) -> list[tuple[str, list[Any], str]]:
    undead = ~exists().where(DeadLetter.instance_id == Instance.id, DeadLetter.retried_at.is_(None))
    in_ready_study = exists().where(Study.id == Instance.study_id, Study.state == StudyState.READY)
    sends = []
    for task in (PREPARE, CLASSIFY):
        kind = KIND_OF_TASK[task]
        condition = and_(
            kind.due(),
            in_ready_study,
            undead,
            lost(Instance, since=Instance.updated_at, clock=clock, queue_empty=kind.queue in empty),
        )
        for instance_id, state, study_id in session.execute(
            select(Instance.id, Instance.state, Instance.study_id).where(condition)
        ).all():
            task_id = _take_over(session, Instance, instance_id, condition, state=InstanceState.RECEIVED)
            if task_id is None:
                continue
            (report.reclassified if state == InstanceState.PREPARED else report.prepared).append(instance_id)
            sends.append((PREPARE, [instance_id], task_id))
            record_event(
                session,
                EventKind.SWEPT,
                f"{state}: its message was lost; prepare sent again",
                study_id=study_id,
                instance_id=instance_id,
            )
    return sends


def _drafts(
    session: Session, clock: _Clock, queue_empty: bool, report: SweepReport
) -> list[tuple[str, list[Any], str]]:
    has_draft = exists().where(Draft.study_id == Study.id, Draft.generation == Study.generation)
    undead = ~exists().where(
        DeadLetter.study_id == Study.id, DeadLetter.retried_at.is_(None), DeadLetter.instance_id.is_(None)
    )
    condition = and_(
        KIND_OF_TASK[DRAFT].due(),
        ~has_draft,
        undead,
        lost(Study, since=Study.ready_at, clock=clock, queue_empty=queue_empty),
    )
    sends = []
    for study_id, generation in session.execute(select(Study.id, Study.generation).where(condition)).all():
        task_id = _take_over(session, Study, study_id, condition)
        if task_id is None:
            continue
        report.drafted.append(study_id)
        sends.append((DRAFT, [study_id, generation], task_id))
        record_event(session, EventKind.SWEPT, "drafting: its message was lost; draft sent again", study_id=study_id)
    return sends


def _exports(
    session: Session, clock: _Clock, queue_empty: bool, report: SweepReport
) -> list[tuple[str, list[Any], str]]:
    unrecorded = and_(
        Export.state == ExportState.SENDING, Export.leased_until.is_(None), Export.updated_at < clock.cutoff
    )
    condition = and_(
        KIND_OF_TASK[EXPORT].due(),
        or_(lost(Export, since=Export.updated_at, clock=clock, queue_empty=queue_empty), unrecorded),
    )
    sends = []
    for export_id, draft_id, destination in session.execute(
        select(Export.id, Export.draft_id, Export.destination).where(condition)
    ).all():
        task_id = _take_over(session, Export, export_id, condition)
        if task_id is None:
            continue
        report.exported.append(export_id)
        sends.append((EXPORT, [draft_id, destination], task_id))
    return sends
