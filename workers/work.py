"""The work the database says is out, by queue: sent and waiting, running under a lease, or waiting for a retry.

Each task's work is a row with lease columns (:mod:`predraft.workers.leases`) in the state that makes it due:

========  =========  =====================================
task      queue      rows
========  =========  =====================================
prepare   prepare    instances ``received``
classify  classify   instances ``prepared``
draft     draft      studies ``drafting``
export    export     exports ``pending``, ``failed``, ``sending``
========  =========  =====================================

A row so due is, at ``now``: **running** while a live lease holds it; else **failed** (its retry waits) while
``retry_at`` is ahead; else **waiting** once a message was sent for it (``dispatched_at``). The broker's own
count of what waits in each queue is :func:`predraft.workers.queues.waiting_counts`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, and_, case, func, or_, select
from sqlalchemy.orm import Session

from predraft.core.clock import as_utc
from predraft.core.schema import Export, Instance, LeasedModel, Study
from predraft.core.states import ExportState, InstanceState, StudyState, WorkState
from predraft.workers.names import CLASSIFY, DRAFT, EXPORT, PREPARE, QUEUE_OF_TASK


@dataclass(frozen=True)
class WorkKind:
    """One task's work: the table its rows are in and the states that make a row's work this task's."""

    task: str
    model: LeasedModel
    states: tuple[Any, ...]

    @property
    def queue(self) -> str:
        return QUEUE_OF_TASK[self.task]

    def due(self) -> ColumnElement[bool]:
        """SQL condition: the row's work is this task's."""
        return self.model.state.in_(self.states)


KINDS = (
    WorkKind(PREPARE, Instance, (InstanceState.RECEIVED,)),
    WorkKind(CLASSIFY, Instance, (InstanceState.PREPARED,)),
    WorkKind(DRAFT, Study, (StudyState.DRAFTING,)),
    WorkKind(EXPORT, Export, (ExportState.PENDING, ExportState.FAILED, ExportState.SENDING)),
)
KIND_OF_TASK = {kind.task: kind for kind in KINDS}


def lease_is_free(model: LeasedModel, now: datetime) -> ColumnElement[bool]:
    """SQL condition: no live lease holds the row (none was taken, or it lapsed)."""
    return or_(model.leased_until.is_(None), model.leased_until < now)


def running(model: LeasedModel, now: datetime) -> ColumnElement[bool]:
    """SQL condition: a live lease holds the row."""
    return model.leased_until >= now


def retrying(model: LeasedModel, now: datetime) -> ColumnElement[bool]:
    """SQL condition: no live lease, and a retry is due after ``now``."""
    return and_(lease_is_free(model, now), model.retry_at > now)


def waiting(model: LeasedModel, now: datetime) -> ColumnElement[bool]:
    """SQL condition: a message was sent for the row, which neither runs nor waits for a retry."""
    return and_(
        model.dispatched_at.is_not(None),
        lease_is_free(model, now),
        or_(model.retry_at.is_(None), model.retry_at <= now),
    )


#: The condition of each phase a due row can be in.
PHASE_CONDITIONS = {WorkState.RUNNING: running, WorkState.FAILED: retrying, WorkState.WAITING: waiting}


@dataclass(frozen=True)
class QueueWork:
    """What the database says of one queue's work at one moment."""

    queue: str
    running: int = 0
    retries_pending: int = 0
    #: When the oldest row that says a message waits for a worker was sent (None: none).
    oldest_sent_at: datetime | None = None


def queue_work(session: Session, now: datetime) -> dict[str, QueueWork]:
    """Per queue: the rows running and waiting for a retry, and when the oldest sent and waiting one was sent;
    one query per task."""
    found: dict[str, QueueWork] = {}
    for kind in KINDS:
        model = kind.model
        row = session.execute(
            select(
                func.coalesce(func.sum(case((running(model, now), 1), else_=0)), 0),
                func.coalesce(func.sum(case((retrying(model, now), 1), else_=0)), 0),
                func.min(case((waiting(model, now), model.dispatched_at), else_=None)),
            ).where(kind.due())
        ).one()
        previous = found.get(kind.queue, QueueWork(kind.queue))
        oldest = [moment for moment in (previous.oldest_sent_at, row[2] and as_utc(row[2])) if moment is not None]
        found[kind.queue] = QueueWork(
            queue=kind.queue,
            running=previous.running + int(row[0]),
            retries_pending=previous.retries_pending + int(row[1]),
            oldest_sent_at=min(oldest) if oldest else None,
        )
    return found
