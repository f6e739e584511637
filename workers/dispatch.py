"""Moving studies between states and sending the tasks that follow.

Each function claims its step with a conditional UPDATE (so two processes never claim the same study),
stamps the message it sends on the row (:func:`predraft.workers.leases.stamp_dispatch`) and commits before
the task is sent, so a worker never sees a state older than its message.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import Any, cast

from celery import Celery
from sqlalchemy import ColumnElement, and_, exists, func, or_, select, true, update
from sqlalchemy.engine import CursorResult
from sqlalchemy.orm import Session

from predraft.core.clock import as_utc
from predraft.core.db import read_connection, session_scope
from predraft.core.events import record_event
from predraft.core.schema import Instance, Prediction, Study, utcnow
from predraft.core.settings import ExpectedViewsRule, expected_view_count
from predraft.core.states import FINISHED_INSTANCE_STATES, EventKind, InstanceState, StudyState
from predraft.models.pack import DEFAULT_PACK
from predraft.models.taxonomy import CLASSIFIABLE_SOP_CLASSES
from predraft.workers.app import DRAFT, PREPARE
from predraft.workers.leases import stamp_dispatch

log = logging.getLogger(__name__)


def claim_ready_studies(
    database_url: str, *, quiet_seconds: float, expected_views: Sequence[ExpectedViewsRule] = ()
) -> list[int]:
    """Mark READY every receiving study that is complete or quiet; return their ids.

    Complete: the first rule of ``expected_views`` that matches its StudyDescription or
    RequestedProcedureDescription gives a count, and the study holds at least that many images (a rule that
    gives no count, a minimum such as "2+ VIEWS", leaves it to the quiet time). Quiet: no new image for
    ``quiet_seconds``.

    The receiving studies are read without a write lock (:func:`predraft.core.db.read_connection`): this runs
    every ``stability_poll_seconds``, and on SQLite a write transaction held while the query runs makes every
    listener's recording of an instance wait for it. A write transaction is begun only for studies found
    ready, each claimed with an UPDATE conditional on what was read: still receiving, and (when found quiet)
    no image recorded since.
    """
    now = utcnow()
    cutoff = now - timedelta(seconds=quiet_seconds)
    images = (
        select(func.count(Instance.id))
        .where(Instance.study_id == Study.id, Instance.sop_class_uid.in_(CLASSIFIABLE_SOP_CLASSES))
        .scalar_subquery()
    )
    with read_connection(database_url) as connection:
        candidates = connection.execute(
            select(Study.id, Study.last_instance_at, Study.study_description, Study.requested_procedure, images).where(
                Study.state == StudyState.RECEIVING
            )
        ).all()
    due: list[tuple[int, str, ColumnElement[bool]]] = []
    for study_id, last_instance_at, description, procedure, count in candidates:
        expected = expected_view_count(expected_views, description, procedure)
        if expected is not None and count >= expected:
            # Images are only ever added: a study complete when read is complete when claimed.
            due.append((study_id, f"complete: {count} image(s), {expected} expected", true()))
        elif as_utc(last_instance_at) < cutoff:
            quiet = Study.last_instance_at == last_instance_at
            due.append((study_id, f"quiet for {quiet_seconds:g} s with {count} image(s)", quiet))
    claimed: list[int] = []
    if not due:
        return claimed
    with session_scope(database_url) as session:
        for study_id, reason, unchanged in due:
            result = cast(
                CursorResult[Any],
                session.execute(
                    update(Study)
                    .where(Study.id == study_id, Study.state == StudyState.RECEIVING, unchanged)
                    .values(state=StudyState.READY, ready_at=now)
                ),
            )
            if result.rowcount == 1:
                record_event(session, EventKind.READY, reason, study_id=study_id)
                claimed.append(study_id)
    return claimed


def start_study(app: Celery, database_url: str, study_id: int) -> int:
    """Send ``prepare`` for every instance of a READY study still waiting; if none waits, try to
    finish the study. Returns the number of tasks sent."""
    with session_scope(database_url) as session:
        waiting = session.scalars(
            select(Instance.id).where(Instance.study_id == study_id, Instance.state == InstanceState.RECEIVED)
        ).all()
        task_ids = stamp_dispatch(session, Instance, waiting)
    for instance_id, task_id in task_ids.items():
        app.send_task(PREPARE, args=[instance_id], task_id=task_id)
    if not waiting:
        finish_if_done(app, database_url, study_id)
    return len(waiting)


def finish_if_done(app: Celery, database_url: str, study_id: int) -> bool:
    """When every instance of a READY study is finished, move it to DRAFTING and send ``draft``."""
    unfinished = exists().where(Instance.study_id == study_id, Instance.state.not_in(FINISHED_INSTANCE_STATES))
    with session_scope(database_url) as session:
        result = cast(
            CursorResult[Any],
            session.execute(
                update(Study)
                .where(Study.id == study_id, Study.state == StudyState.READY, ~unfinished)
                .values(state=StudyState.DRAFTING)
            ),
        )
        if result.rowcount != 1:
            return False
        generation = session.scalar(select(Study.generation).where(Study.id == study_id))
        record_event(session, EventKind.DRAFTING, f"generation {generation}", study_id=study_id)
        task_id = stamp_dispatch(session, Study, [study_id])[study_id]
    app.send_task(DRAFT, args=[study_id, generation], task_id=task_id)
    return True


def reclassify_stale_instances(session: Session, *, study: Study, models: Mapping[str, tuple[str, str]]) -> list[int]:
    """Send back to preparation the images of ``study`` that another model than their pack's (``models``: pack
    name -> model name and version, as installed now) classified before this drafting round.

    Called by the draft task, its study row locked, before drafting: a study re-opened by a late image after
    a model upgrade would otherwise be drafted from the late image alone (the only one with predictions of the
    model configured now). Stale: a classified instance with no prediction of this model and only predictions
    made before the study became ready (``ready_at``). The study goes back to READY and those instances to
    RECEIVED; the caller sends ``prepare`` for the returned ids once it has committed.

    Once per round: predictions made since the study became ready are never stale, so a classify worker
    whose card differs from the draft worker's (a rolling upgrade) cannot send a study round forever; the
    draft then reads only the predictions of the draft worker's model, as it did before this step existed.
    """
    if study.ready_at is None:  # never made ready (not a study the listener or a redraft moved on)
        return []
    current = exists().where(
        Prediction.instance_id == Instance.id,
        or_(
            *(
                and_(
                    func.coalesce(Instance.pack, DEFAULT_PACK) == pack,
                    Prediction.model_name == name,
                    Prediction.model_version == version,
                )
                for pack, (name, version) in models.items()
            )
        ),
    )
    other = exists().where(Prediction.instance_id == Instance.id)
    fresh = exists().where(Prediction.instance_id == Instance.id, Prediction.created_at >= study.ready_at)
    stale = list(
        session.scalars(
            select(Instance.id)
            .where(Instance.study_id == study.id, Instance.state == InstanceState.CLASSIFIED, other, ~current, ~fresh)
            .order_by(Instance.id)
        )
    )
    if stale:
        session.execute(update(Instance).where(Instance.id.in_(stale)).values(state=InstanceState.RECEIVED))
        study.state = StudyState.READY
        record_event(
            session,
            EventKind.RECLASSIFYING,
            f"{len(stale)} image(s) classified by another model than their pack's "
            f"({', '.join(f'{name} {version}' for name, version in models.values())}): prepared and classified "
            "again before drafting",
            study_id=study.id,
        )
    return stale


#: States in which a study is on its way to a draft already: a redraft would only race it.
_IN_PROGRESS = frozenset({StudyState.RECEIVING, StudyState.READY, StudyState.DRAFTING})


class CannotRedraft(LookupError):
    """No such study, or one that is being drafted already."""


#: The instances a redraft prepares again: classified and failed ones; with a requested pack, skipped ones too.
_REPREPARED = {
    False: (InstanceState.CLASSIFIED, InstanceState.ERROR),
    True: (InstanceState.CLASSIFIED, InstanceState.ERROR, InstanceState.SKIPPED),
}


def redraft_study(app: Celery, database_url: str, *, study_uid: str, pack: str | None = None) -> int:
    """Draft a finished study (drafted, out of scope, in error, or any later state) again; return its new
    generation. With ``pack`` (a radiologist's "draft anyway"), the study is drafted with that pack whatever
    routing says: its images skipped as out of scope are prepared again too, and each goes to that pack (an image
    that is no radiograph, or whose tags name a region outside the skeleton, stays out).

    The study is re-opened as a late image re-opens it (:func:`predraft.listener.ingest.record_instance`): a new
    generation, no error; then it is READY at once (no quiet wait: nothing new arrives) and
    :func:`start_study` prepares what waits and drafts it, so the new draft's SR supersedes the previous one.
    Every classified (or failed) instance is prepared and classified again, by the model configured now: a
    redraft after a model upgrade drafts from the new model's predictions, and an instance that failed before
    is tried again. Claimed with a conditional UPDATE, so a concurrent redraft or late image cannot draft it
    twice.
    """
    with session_scope(database_url) as session:
        study = session.execute(
            select(Study.id, Study.state, Study.generation).where(Study.study_uid == study_uid)
        ).first()
        if study is None:
            raise CannotRedraft(f"no study with StudyInstanceUID {study_uid}")
        if study.state in _IN_PROGRESS:
            raise CannotRedraft(f"study {study_uid} is {study.state}: it is on its way to a draft already")
        generation = study.generation + 1
        claimed = cast(
            CursorResult[Any],
            session.execute(
                update(Study)
                .where(Study.id == study.id, Study.state == study.state, Study.generation == study.generation)
                .values(
                    state=StudyState.READY,
                    generation=generation,
                    error=None,
                    ready_at=utcnow(),
                    **({"requested_pack": pack} if pack is not None else {}),
                )
            ),
        )
        if claimed.rowcount != 1:
            raise CannotRedraft(f"study {study_uid} changed meanwhile; try again")
        session.execute(
            update(Instance)
            .where(Instance.study_id == study.id, Instance.state.in_(_REPREPARED[pack is not None]))
            .values(state=InstanceState.RECEIVED, error=None)
        )
        record_event(
            session,
            EventKind.STUDY_REOPENED,
            f"redraft requested while {study.state}; generation {generation}"
            + (f"; drafted with the {pack} pack on request" if pack is not None else ""),
            study_id=study.id,
        )
    start_study(app, database_url, study.id)
    return generation
