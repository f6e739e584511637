"""The exports table: one row per (draft, destination), the record of where each drafted SR was sent.

Services: each takes an open session and never commits; the caller (the draft and export tasks, the CLI)
owns the transaction and sends the export tasks once it has committed.

A row's life: ``pending`` when the draft is recorded (or re-queued by ``predraft studies resend``), its
export message stamped on it (:func:`predraft.workers.leases.stamp_dispatch`); each try first claims the row
(``sending``, counted in ``attempts``, leased to its worker as :mod:`predraft.workers.leases` describes), so that
two deliveries of one export message never both send; a delivery makes it ``sent`` with ``exported_at``; a
failed try makes it ``failed`` with ``last_error`` and ``retry_at`` while a retry is due, or ``dead`` when none
is (retries spent, or a refusal no retry can mend). A claim whose lease lapsed is of a worker that died
mid-try: the sweeper sends again, and that delivery takes the claim over.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import ColumnElement, or_, select, update
from sqlalchemy.engine import CursorResult
from sqlalchemy.orm import Session

from predraft.core.db import insert_ignoring_conflict
from predraft.core.events import record_event
from predraft.core.schema import Draft, Export, Study, utcnow
from predraft.core.states import EXPORTABLE_STATES, EventKind, ExportState
from predraft.core.studies import newest_report
from predraft.workers.leases import stamp_dispatch
from predraft.workers.work import lease_is_free

#: Longest error text kept on a row.
MAX_ERROR_LENGTH = 2000


@dataclass(frozen=True)
class ExportJob:
    """What one try of an export needs: the row, the draft's SR files (the narrative SR first, then the AI results
    SR where there is one: :meth:`predraft.core.schema.Draft.documents`), and which try this is (1 for the first)."""

    export_id: int
    draft_id: int
    study_id: int
    destination: str
    sr_paths: tuple[str, ...]
    attempt: int


def queue_exports(session: Session, *, draft_id: int, destinations: Sequence[str]) -> dict[str, str]:
    """Give ``draft_id`` a pending export row for each of ``destinations`` that has none yet.

    Returns, for each destination whose row is still pending (new, or queued before and not tried), the task
    id stamped on the row, with which the caller sends its export task after committing
    (:func:`predraft.workers.export_task.send_exports`). Safe to call again for the same draft.
    """
    for name in destinations:
        insert_ignoring_conflict(
            session,
            Export,
            {"draft_id": draft_id, "destination": name, "state": ExportState.PENDING},
            key=("draft_id", "destination"),
        )
    pending = dict(
        session.execute(
            select(Export.destination, Export.id).where(
                Export.draft_id == draft_id,
                Export.destination.in_(list(destinations)),
                Export.state == ExportState.PENDING,
            )
        ).all()
    )
    stamped = stamp_dispatch(session, Export, [pending[name] for name in destinations if name in pending])
    return {name: stamped[pending[name]] for name in destinations if name in pending}


def _export(session: Session, draft_id: int, destination: str) -> Export | None:
    return session.scalar(select(Export).where(Export.draft_id == draft_id, Export.destination == destination))


def abandoned_claim(now: datetime) -> ColumnElement[bool]:
    """SQL condition: the row is ``sending`` under a lease that lapsed at ``now`` (its worker died mid-try), or
    under none (the try ended without recording its outcome), so a new try may take it over."""
    return (Export.state == ExportState.SENDING) & lease_is_free(Export, now)


def begin_attempt(
    session: Session, *, draft_id: int, destination: str, task_id: str, holder: str, lease_seconds: float
) -> ExportJob | None:
    """Claim the next try of the export of ``draft_id`` to ``destination`` as task ``task_id`` of worker
    ``holder`` (the row becomes ``sending``, its ``attempts`` one more, leased for ``lease_seconds``) and say
    what to send.

    None when there is nothing to do: no such row; it is already ``sent`` or ``dead`` (a redelivered or
    stale task; only ``predraft studies resend`` brings a row back to pending); or another try holds its live
    lease. The claim is one conditional UPDATE, so of two deliveries of the same message only one sends.
    """
    row = _export(session, draft_id, destination)
    if row is None:
        return None
    now = utcnow()
    claimed = cast(
        CursorResult[Any],
        session.execute(
            update(Export)
            .where(
                Export.id == row.id,
                or_(Export.state.in_(EXPORTABLE_STATES), abandoned_claim(now)),
                lease_is_free(Export, now),
            )
            .values(
                state=ExportState.SENDING,
                attempts=Export.attempts + 1,
                updated_at=now,
                task_id=task_id,
                leased_at=now,
                leased_until=now + timedelta(seconds=lease_seconds),
                leased_by=holder,
                retry_at=None,
            )
            .execution_options(synchronize_session=False)
        ),
    )
    if claimed.rowcount != 1:
        return None
    session.refresh(row)
    draft = row.draft
    return ExportJob(
        export_id=row.id,
        draft_id=draft.id,
        study_id=draft.study_id,
        destination=destination,
        sr_paths=tuple(document.path for document in draft.documents()),
        attempt=row.attempts,
    )


def record_sent(session: Session, *, export_id: int, note: str | None = None) -> None:
    """The destination stored the SR (``note``: the warning it gave, if any)."""
    row = session.get_one(Export, export_id)
    row.state, row.exported_at, row.last_error = ExportState.SENT, utcnow(), note
    _end_lease(row, retry_at=None)
    message = f"SR of draft {row.draft_id} to {row.destination}" + (f": {note}" if note else "")
    record_event(session, EventKind.EXPORTED, message[:MAX_ERROR_LENGTH], study_id=row.draft.study_id)


def record_failure(session: Session, *, export_id: int, error: str, retry_at: datetime | None) -> None:
    """A try failed with ``error``: ``failed`` awaiting its retry at ``retry_at``, or ``dead`` when none follows
    (``retry_at`` None)."""
    dead = retry_at is None
    row = session.get_one(Export, export_id)
    row.state = ExportState.DEAD if dead else ExportState.FAILED
    row.last_error = error[:MAX_ERROR_LENGTH]
    _end_lease(row, retry_at=retry_at)
    kind = EventKind.EXPORT_DEAD if dead else EventKind.EXPORT_FAILED
    record_event(
        session,
        kind,
        f"SR of draft {row.draft_id} to {row.destination}, try {row.attempts}: {error}"[:MAX_ERROR_LENGTH],
        study_id=row.draft.study_id,
    )


def _end_lease(row: Export, *, retry_at: datetime | None) -> None:
    """The try's lease ends with its outcome; the row says a message is out only while a retry is due."""
    row.leased_at = row.leased_until = row.leased_by = None
    row.retry_at = retry_at
    if retry_at is None:
        row.dispatched_at = None


class NothingToResend(LookupError):
    """The study is unknown or has no draft yet."""


def requeue_latest_draft(
    session: Session, *, study_uid: str, destinations: Sequence[str]
) -> tuple[Draft, dict[str, str]]:
    """Make the export of the study's latest SR (its newest draft, or the verified report or rejection notice
    a review issued for that draft) to each of ``destinations`` pending again, as a fresh
    row (attempts 0, no error, not exported), whatever state it was in, except a row a worker is sending now
    (``sending``): that try's outcome would overwrite the new row, so it is left to finish. Returns the draft
    and, for each destination to send an export task for once the caller has committed, the task id stamped on
    its row. Raises NothingToResend."""
    study = session.scalar(select(Study).where(Study.study_uid == study_uid))
    if study is None:
        raise NothingToResend(f"no study with StudyInstanceUID {study_uid}")
    draft = newest_report(session, study.id)
    if draft is None:
        raise NothingToResend(f"study {study_uid} has no draft (state {study.state})")
    rows = {}
    for name in destinations:
        row = _export(session, draft.id, name)
        if row is not None and row.state == ExportState.SENDING:
            continue
        if row is None:
            row = Export(draft_id=draft.id, destination=name, state=ExportState.PENDING, attempts=0)
            session.add(row)
        else:
            row.state, row.attempts, row.last_error, row.exported_at = ExportState.PENDING, 0, None, None
        rows[name] = row
        record_event(
            session, EventKind.EXPORT_QUEUED, f"SR of draft {draft.id} to {name}, by resend", study_id=study.id
        )
    session.flush()
    stamped = stamp_dispatch(session, Export, [row.id for row in rows.values()])
    for row in rows.values():
        session.refresh(row)
    return draft, {name: stamped[row.id] for name, row in rows.items()}


def retry_delay(retries: int, *, first: float, longest: float) -> float:
    """Seconds to wait before retry number ``retries + 1``: ``first``, doubled each time, at most ``longest``."""
    if retries < 0:
        raise ValueError(f"retries must be >= 0, not {retries}")
    return min(longest, first * 2.0 ** min(retries, 64))
