"""The exports table: one row per (draft, destination), the record of where each drafted SR was sent.

Services: each takes an open session and never commits; the caller (the draft and export tasks, the CLI)
owns the transaction and sends the export tasks once it has committed.

A row's life: ``pending`` when the draft is recorded (or re-queued by ``predraft studies resend``);
each try first claims the row (``sending``, counted in ``attempts``), so that two deliveries of one
export message never both send; a delivery makes it ``sent`` with ``exported_at``; a failed try makes
it ``failed`` with ``last_error`` while a retry is due, or ``dead`` when none is (retries spent, or a
refusal no retry can mend). A claim older than :data:`SENDING_CLAIM_SECONDS` is of a worker that died
mid-try: the sweeper sends again, and that delivery takes the claim over.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, cast

from sqlalchemy import ColumnElement, or_, select, update
from sqlalchemy.engine import CursorResult
from sqlalchemy.orm import Session

from predraft.core.db import insert_ignoring_conflict
from predraft.core.events import record_event
from predraft.core.schema import Draft, Export, Study, utcnow
from predraft.core.states import EXPORTABLE_STATES, EventKind, ExportState
from predraft.core.studies import newest_report

#: Longest error text kept on a row.
MAX_ERROR_LENGTH = 2000
#: A ``sending`` claim older than this is taken to be of a worker that died mid-try. Longer than any one
#: try: a try waits at most its destination's ``timeout`` (30 s by default) for each network step.
SENDING_CLAIM_SECONDS = 900.0


@dataclass(frozen=True)
class ExportJob:
    """What one try of an export needs: the row, the SR file, and which try this is (1 for the first)."""

    export_id: int
    draft_id: int
    study_id: int
    destination: str
    sr_path: str
    attempt: int


def queue_exports(session: Session, *, draft_id: int, destinations: Sequence[str]) -> list[str]:
    """Give ``draft_id`` a pending export row for each of ``destinations`` that has none yet.

    Returns the destinations whose row is still pending (new, or queued before and not tried), for which
    the caller sends an export task after committing. Safe to call again for the same draft.
    """
    for name in destinations:
        insert_ignoring_conflict(
            session,
            Export,
            {"draft_id": draft_id, "destination": name, "state": ExportState.PENDING},
            key=("draft_id", "destination"),
        )
    pending = session.scalars(
        select(Export.destination).where(
            Export.draft_id == draft_id, Export.destination.in_(list(destinations)), Export.state == ExportState.PENDING
        )
    ).all()
    return [name for name in destinations if name in set(pending)]


def _export(session: Session, draft_id: int, destination: str) -> Export | None:
    return session.scalar(select(Export).where(Export.draft_id == draft_id, Export.destination == destination))


def abandoned_claim() -> ColumnElement[bool]:
    """SQL condition: the row is ``sending`` under a claim older than :data:`SENDING_CLAIM_SECONDS` (its
    worker died mid-try), so a new try may take it over."""
    return (Export.state == ExportState.SENDING) & (
        Export.updated_at < utcnow() - timedelta(seconds=SENDING_CLAIM_SECONDS)
    )


def begin_attempt(session: Session, *, draft_id: int, destination: str) -> ExportJob | None:
    """Claim the next try of the export of ``draft_id`` to ``destination`` (the row becomes ``sending``,
    its ``attempts`` one more) and say what to send.

    None when there is nothing to do: no such row; it is already ``sent`` or ``dead`` (a redelivered or
    stale task; only ``predraft studies resend`` brings a row back to pending); or another worker claimed
    it less than :data:`SENDING_CLAIM_SECONDS` ago. The claim is one conditional UPDATE, so of two
    deliveries of the same message only one sends.
    """
    row = _export(session, draft_id, destination)
    if row is None:
        return None
    claimed = cast(
        CursorResult[Any],
        session.execute(
            update(Export)
            .where(
                Export.id == row.id,
                or_(Export.state.in_(EXPORTABLE_STATES), abandoned_claim()),
            )
            .values(state=ExportState.SENDING, attempts=Export.attempts + 1, updated_at=utcnow())
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
        sr_path=draft.sr_path,
        attempt=row.attempts,
    )


def record_sent(session: Session, *, export_id: int, note: str | None = None) -> None:
    """The destination stored the SR (``note``: the warning it gave, if any)."""
    row = session.get_one(Export, export_id)
    row.state, row.exported_at, row.last_error = ExportState.SENT, utcnow(), note
    message = f"SR of draft {row.draft_id} to {row.destination}" + (f": {note}" if note else "")
    record_event(session, EventKind.EXPORTED, message[:MAX_ERROR_LENGTH], study_id=row.draft.study_id)


def record_failure(session: Session, *, export_id: int, error: str, dead: bool) -> None:
    """A try failed with ``error``: ``dead`` when no retry follows, else ``failed`` awaiting its retry."""
    row = session.get_one(Export, export_id)
    row.state = ExportState.DEAD if dead else ExportState.FAILED
    row.last_error = error[:MAX_ERROR_LENGTH]
    kind = EventKind.EXPORT_DEAD if dead else EventKind.EXPORT_FAILED
    record_event(
        session,
        kind,
        f"SR of draft {row.draft_id} to {row.destination}, try {row.attempts}: {error}"[:MAX_ERROR_LENGTH],
        study_id=row.draft.study_id,
    )


class NothingToResend(LookupError):
    """The study is unknown or has no draft yet."""


def requeue_latest_draft(session: Session, *, study_uid: str, destinations: Sequence[str]) -> tuple[Draft, list[str]]:
    """Make the export of the study's latest SR (its newest draft, or the verified report or rejection notice
    a review issued for that draft) to each of ``destinations`` pending again, as a fresh
    row (attempts 0, no error, not exported), whatever state it was in, except a row a worker is sending now
    (``sending``): that try's outcome would overwrite the new row, so it is left to finish. Returns the draft
    and the destinations to send an export task for once the caller has committed. Raises NothingToResend."""
    study = session.scalar(select(Study).where(Study.study_uid == study_uid))
    if study is None:
        raise NothingToResend(f"no study with StudyInstanceUID {study_uid}")
    draft = newest_report(session, study.id)
    if draft is None:
        raise NothingToResend(f"study {study_uid} has no draft (state {study.state})")
    queued = []
    for name in destinations:
        row = _export(session, draft.id, name)
        if row is not None and row.state == ExportState.SENDING:
            continue
        queued.append(name)
        if row is None:
            session.add(Export(draft_id=draft.id, destination=name, state=ExportState.PENDING, attempts=0))
        else:
            row.state, row.attempts, row.last_error, row.exported_at = ExportState.PENDING, 0, None, None
        record_event(
            session, EventKind.EXPORT_QUEUED, f"SR of draft {draft.id} to {name}, by resend", study_id=study.id
        )
    session.flush()
    return draft, queued


def retry_delay(retries: int, *, first: float, longest: float) -> float:
    """Seconds to wait before retry number ``retries + 1``: ``first``, doubled each time, at most ``longest``."""
    if retries < 0:
        raise ValueError(f"retries must be >= 0, not {retries}")
    return min(longest, first * 2.0 ** min(retries, 64))
