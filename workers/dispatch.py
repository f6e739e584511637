"""Moving studies between states and sending the tasks that follow.

Each function claims its step with a conditional UPDATE (so two processes never claim the same study)
and commits before any task is sent, so a worker never sees a state older than its message.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from celery import Celery
from sqlalchemy import exists, select, update

from predraft.db import session_scope
from predraft.events import record_event
from predraft.schema import Instance, Study, utcnow
from predraft.states import FINISHED_INSTANCE_STATES, InstanceState, StudyState
from workers.app import DRAFT, PREPARE

log = logging.getLogger(__name__)


def claim_quiet_studies(database_url: str, *, quiet_seconds: float) -> list[int]:
    """Mark every study that has been quiet for ``quiet_seconds`` READY; return their ids."""
    cutoff = utcnow() - timedelta(seconds=quiet_seconds)
    claimed: list[int] = []
    with session_scope(database_url) as session:
        candidates = session.scalars(
            select(Study.id).where(Study.state == StudyState.RECEIVING, Study.last_instance_at < cutoff)
        ).all()
        for study_id in candidates:
            result = session.execute(
                update(Study)
                .where(Study.id == study_id, Study.state == StudyState.RECEIVING, Study.last_instance_at < cutoff)
                .values(state=StudyState.READY, ready_at=utcnow())
            )
            if result.rowcount == 1:
                record_event(session, "ready", f"quiet for {quiet_seconds:g} s", study_id=study_id)
                claimed.append(study_id)
    return claimed


def start_study(app: Celery, database_url: str, study_id: int) -> int:
    """Send ``prepare`` for every instance of a READY study still waiting; if none waits, try to
    finish the study. Returns the number of tasks sent."""
    with session_scope(database_url) as session:
        waiting = session.scalars(
            select(Instance.id).where(Instance.study_id == study_id, Instance.state == InstanceState.RECEIVED)
        ).all()
    for instance_id in waiting:
        app.send_task(PREPARE, args=[instance_id])
    if not waiting:
        finish_if_done(app, database_url, study_id)
    return len(waiting)


def finish_if_done(app: Celery, database_url: str, study_id: int) -> bool:
    """When every instance of a READY study is finished, move it to DRAFTING and send ``draft``."""
    unfinished = exists().where(
        Instance.study_id == study_id, Instance.state.not_in([s.value for s in FINISHED_INSTANCE_STATES])
    )
    with session_scope(database_url) as session:
        result = session.execute(
            update(Study)
            .where(Study.id == study_id, Study.state == StudyState.READY, ~unfinished)
            .values(state=StudyState.DRAFTING)
        )
        if result.rowcount != 1:
            return False
        generation = session.scalar(select(Study.generation).where(Study.id == study_id))
        record_event(session, "drafting", f"generation {generation}", study_id=study_id)
    app.send_task(DRAFT, args=[study_id, generation])
    return True
