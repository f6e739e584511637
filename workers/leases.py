"""Work leases: the database, not the broker's storage, says which work was sent, which a worker holds, and
which waits for its retry.

A row whose work travels as a task message carries the columns of :class:`predraft.core.schema.WorkLease`:
an instance (``prepare`` while received, ``classify`` while prepared), a study (``draft`` while drafting) and an
export (``export`` while pending, failed or sending). Its life, in the same steps as the export claim:

1. **Sent** (:func:`stamp_dispatch`): in the transaction that makes the work due, the row gets a new task id
   and ``dispatched_at``; the caller publishes the message with that task id once it has committed. A crash
   between the two leaves a row that says "sent" with no message: the sweeper finds it.
2. **Claimed** (:func:`work_lease`, :func:`claim`): the task's first step is one conditional UPDATE that
   leases the row to its worker for ``seconds`` (``sweep_stale_seconds``) unless a live lease holds it, so of
   two deliveries of the same work only one runs at a time. The worker's heartbeat renews the leases of the
   tasks it runs (:func:`renew_leases`); a lease that lapses is of a worker that died. A long backlog is
   never leased: a message only counts as taken when a worker starts it.
3. **Released**: when the task returns, the lease and ``dispatched_at`` go (the work is done, or the task
   stamped the next step's message); when it raises, only the lease goes, and a retry records when it is due
   (:class:`LeasedTask`, :func:`record_retry`).

The export task's claim (:func:`predraft.workers.export_service.begin_attempt`) writes the same columns.
"""

from __future__ import annotations

import logging
import socket
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any, cast

from celery import Task
from sqlalchemy import update
from sqlalchemy.engine import CursorResult
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from predraft.core.clock import as_utc
from predraft.core.db import session_scope
from predraft.core.schema import LEASED_MODELS, LeasedModel, utcnow
from predraft.workers.presence import HEARTBEAT_SECONDS
from predraft.workers.work import lease_is_free

log = logging.getLogger(__name__)


#: The lease columns of a row no worker holds.
NO_LEASE: dict[str, None] = {"leased_at": None, "leased_until": None, "leased_by": None}


def new_task_id() -> str:
    """A Celery task id (a UUID, as Celery makes them)."""
    return str(uuid.uuid4())


def lease_seconds(stale_seconds: float) -> float:
    """How long a lease lasts between renewals: ``sweep_stale_seconds``, and at least three heartbeats (a worker
    renews its leases with each, so one late heartbeat does not lose them)."""
    return max(stale_seconds, 3 * HEARTBEAT_SECONDS)


def holder_of(task: Task) -> str:
    """Who holds a lease a task takes: its worker's hostname (``predraft-prepare@host``), which the heartbeat
    renews by; the host's name for a task called directly."""
    return str(task.request.hostname or socket.gethostname())


def dispatch_values(task_id: str, *, fresh: bool) -> dict[str, Any]:
    """The lease columns of a row whose message ``task_id`` is sent now: no lease, no retry due. ``fresh``:
    new work (its tries count from 0); else the same work sent again (a lost message), its tries kept."""
    values: dict[str, Any] = {"task_id": task_id, "dispatched_at": utcnow(), **NO_LEASE, "retry_at": None}
    if fresh:
        values["attempts"] = 0
    return values


def stamp_dispatch(
    session: Session, model: LeasedModel, row_ids: Iterable[int], *, fresh: bool = True
) -> dict[int, str]:
    """Record in the caller's transaction that a message is sent for each of ``row_ids``; returns each row's new
    task id, which the caller passes to ``send_task(task_id=...)`` once it has committed."""
    stamped = {}
    for row_id in row_ids:
        task_id = new_task_id()
        session.execute(
            update(model)
            .where(model.id == row_id)
            .values(**dispatch_values(task_id, fresh=fresh))
            .execution_options(synchronize_session=False)
        )
        stamped[row_id] = task_id
    return stamped


def claim(session: Session, model: LeasedModel, row_id: int, *, task_id: str, holder: str, seconds: float) -> bool:
    """Lease row ``row_id`` to ``holder`` (a worker's hostname) for ``seconds``, as task ``task_id``, unless a
    live lease holds it; one conditional UPDATE, so two claims never both win. Counts the try in
    ``attempts`` and clears ``retry_at``. False: held by another try, or no such row."""
    if seconds <= 0:
        raise ValueError(f"a lease lasts a positive time, not {seconds} s")
    now = utcnow()
    result = cast(
        CursorResult[Any],
        session.execute(
            update(model)
            .where(model.id == row_id, lease_is_free(model, now))
            .values(
                task_id=task_id,
                leased_at=now,
                leased_until=now + timedelta(seconds=seconds),
                leased_by=holder,
                attempts=model.attempts + 1,
                retry_at=None,
            )
            .execution_options(synchronize_session=False)
        ),
    )
    return result.rowcount == 1


def release(session: Session, model: LeasedModel, row_id: int, *, task_id: str, finished: bool) -> None:
    """End the lease of task ``task_id`` on row ``row_id``: nothing when another task holds the row now (the task
    stamped the next step's message, which may already run). ``finished``: the work is done, so the row no
    longer says a message is out (``dispatched_at`` goes too)."""
    values: dict[str, Any] = dict(NO_LEASE)
    if finished:
        values["dispatched_at"] = None
    session.execute(
        update(model)
        .where(model.id == row_id, model.task_id == task_id)
        .values(**values)
        .execution_options(synchronize_session=False)
    )


@contextmanager
def work_lease(
    database_url: str, model: LeasedModel, row_id: int, *, task_id: str | None, holder: str, seconds: float
) -> Iterator[bool]:
    """Hold the lease of row ``row_id`` while the ``with`` block runs: yields False (do nothing) when another try
    holds it. The lease ends when the block does: finished when it returns, kept as sent when it raises (a retry,
    or a dead letter, follows). ``task_id`` None (the task was called directly, not by a worker): a token of its
    own stands for it. A release that meets a database error is left to lapse."""
    token = task_id or new_task_id()
    with session_scope(database_url) as session:
        held = claim(session, model, row_id, task_id=token, holder=holder, seconds=seconds)
    if not held:
        yield False
        return
    finished = False
    try:
        yield True
        finished = True
    finally:
        try:
            with session_scope(database_url) as session:
                release(session, model, row_id, task_id=token, finished=finished)
        except SQLAlchemyError as exc:  # the lease lapses by itself; the sweeper then sends the work again
            log.warning("could not release the lease of task %s: %s", token, type(exc).__name__)


def record_retry(database_url: str, task_id: str, due: datetime) -> None:
    """Task ``task_id`` failed a try (:func:`work_lease` released the row) and its retry is due at ``due``."""
    with session_scope(database_url) as session:
        for model in LEASED_MODELS:
            session.execute(  # a retry that runs already (a countdown near 0) holds a lease: left alone
                update(model)
                .where(model.task_id == task_id, model.leased_until.is_(None))
                .values(retry_at=due)
                .execution_options(synchronize_session=False)
            )


def record_given_up(database_url: str, task_id: str) -> None:
    """Task ``task_id`` failed for good (a dead letter says why): its row no longer says a message is out."""
    with session_scope(database_url) as session:
        for model in LEASED_MODELS:
            session.execute(
                update(model)
                .where(model.task_id == task_id)
                .values(dispatched_at=None, retry_at=None, **NO_LEASE)
                .execution_options(synchronize_session=False)
            )


def renew_leases(database_url: str, *, holder: str, task_ids: Iterable[str], seconds: float) -> int:
    """Extend to ``seconds`` from now the live leases ``holder`` took for ``task_ids`` (the tasks it runs now);
    returns how many. Called by the worker's heartbeat: a lease of a task that ended without releasing it is
    not renewed, and lapses."""
    task_ids = list(task_ids)
    if not task_ids:
        return 0
    now = utcnow()
    renewed = 0
    with session_scope(database_url) as session:
        for model in LEASED_MODELS:
            result = cast(
                CursorResult[Any],
                session.execute(
                    update(model)
                    .where(model.leased_by == holder, model.task_id.in_(task_ids), model.leased_until >= now)
                    .values(leased_until=now + timedelta(seconds=seconds))
                    .execution_options(synchronize_session=False)
                ),
            )
            renewed += result.rowcount
    return renewed


def retry_due(when: object, now: datetime) -> datetime:
    """When a retry is due, from Celery's ``Retry.when``: an ETA (datetime), a countdown in seconds, or None
    (at once)."""
    if isinstance(when, datetime):
        return as_utc(when)
    if isinstance(when, int | float) and not isinstance(when, bool):
        return now + timedelta(seconds=float(when))
    return now


class LeasedTask(Task):
    """A task whose rows carry leases: a retry records on the row when it is due, and a final failure that the
    message is no longer out. Subclasses say where the database is (:meth:`database_url`)."""

    def database_url(self) -> str:
        raise NotImplementedError

    def on_retry(self, exc: BaseException, task_id: str, args: tuple, kwargs: dict, einfo: Any) -> None:
        """Record when the retry is due: Celery's ``Retry.when``. The tracer hands ``einfo`` with the Retry
        wrapped (billiard's ``ExceptionWithTraceback``, the Retry at ``.exc``) or, called directly, bare."""
        retry = getattr(einfo.exception, "exc", einfo.exception)
        try:
            record_retry(self.database_url(), task_id, retry_due(getattr(retry, "when", None), utcnow()))
        except SQLAlchemyError as error:  # the database may be why it retries; the row's lease lapses instead
            log.warning("could not record the retry of task %s: %s", task_id, type(error).__name__)

    def on_failure(self, exc: BaseException, task_id: str, args: tuple, kwargs: dict, einfo: Any) -> None:
        try:
            record_given_up(self.database_url(), task_id)
        except SQLAlchemyError as error:
            log.warning("could not record the end of task %s: %s", task_id, type(error).__name__)
