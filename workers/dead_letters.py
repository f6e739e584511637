"""Dead letters: tasks that failed for good, recorded in the database, and sending their work again.

A task's retries (bounded, with backoff) cover passing trouble: a database or broker that is briefly
away. When they are spent, :func:`record_dead_letter` keeps the task's name, id, the study or instance it
was about, its attempts, error and traceback. The sweeper leaves such work alone (it would only fail
again) until :func:`retry_dead_letter` sends it once more, from its first step: an instance is prepared
again (its letterboxed images are not kept), a study is drafted again.
"""

from __future__ import annotations

import logging
from typing import Any, cast

from celery import Celery
from sqlalchemy import select, update
from sqlalchemy.engine import CursorResult

from predraft.core.db import session_scope
from predraft.core.events import record_event
from predraft.core.schema import DeadLetter, Instance, Study, utcnow
from predraft.core.states import FINISHED_INSTANCE_STATES, EventKind, InstanceState, StudyState
from predraft.workers.app import CLASSIFY, DRAFT, PREPARE
from predraft.workers.dispatch import finish_if_done
from predraft.workers.leases import stamp_dispatch

log = logging.getLogger(__name__)

#: Which row a task's first argument names.
INSTANCE_TASKS = frozenset({PREPARE, CLASSIFY})
STUDY_TASKS = frozenset({DRAFT})


class DeadLetterError(LookupError):
    """No such dead letter, or one whose work cannot be sent again."""


def record_dead_letter(
    database_url: str, *, task_name: str, task_id: str, first_arg: object, attempts: int, error: str, traceback: str
) -> int | None:
    """Record a task that failed for good; returns the row id (None when the database refused it too)."""
    try:
        with session_scope(database_url) as session:
            study_id = instance_id = None
            if task_name in INSTANCE_TASKS and isinstance(first_arg, int):
                instance = session.get(Instance, first_arg)
                if instance is not None:
                    instance_id, study_id = instance.id, instance.study_id
            elif task_name in STUDY_TASKS and isinstance(first_arg, int) and session.get(Study, first_arg) is not None:
                study_id = first_arg
            letter = DeadLetter(
                task_name=task_name,
                task_id=task_id,
                study_id=study_id,
                instance_id=instance_id,
                attempts=attempts,
                error=error[:4000],
                traceback=traceback[-20000:],
            )
            session.add(letter)
            session.flush()
            record_event(
                session,
                EventKind.DEAD_LETTER,
                f"{task_name} failed after {attempts} attempt(s): {error[:500]}",
                study_id=study_id,
                instance_id=instance_id,
            )
            return letter.id
    except Exception:  # the database itself may be why the task failed: say so in the log at least
        log.exception("could not record the dead letter of task %s (%s)", task_name, task_id)
        return None


def retry_dead_letter(app: Celery, database_url: str, dead_letter_id: int) -> str:
    """Send the dead letter's work again; mark it retried. Returns what was sent."""
    with session_scope(database_url) as session:
        letter = session.get(DeadLetter, dead_letter_id)
        if letter is None:
            raise DeadLetterError(f"no dead letter {dead_letter_id}")
        if letter.retried_at is not None:
            raise DeadLetterError(f"dead letter {dead_letter_id} was already retried")
        letter.retried_at = utcnow()
        task_name, instance_id, study_id = letter.task_name, letter.instance_id, letter.study_id
        if task_name in INSTANCE_TASKS and instance_id is not None:
            instance = session.get(Instance, instance_id)
            assert instance is not None  # a dead letter's instance_id is a foreign key; instances are never deleted
            if instance.state not in FINISHED_INSTANCE_STATES:
                instance.state, instance.error = InstanceState.RECEIVED, None
            task_id = stamp_dispatch(session, Instance, [instance_id])[instance_id]
            record_event(
                session,
                EventKind.RETRY,
                f"dead letter {dead_letter_id}: prepare again",
                study_id=study_id,
                instance_id=instance_id,
            )
        elif task_name in STUDY_TASKS and study_id is not None:
            # Only a study still waiting for that draft (or left in error by it): one drafted, reviewed or
            # re-opened since has moved on, and sending it back to READY would undo that (a review's state, a
            # new generation's quiet time).
            moved = cast(
                CursorResult[Any],
                session.execute(
                    update(Study)
                    .where(Study.id == study_id, Study.state.in_([StudyState.DRAFTING, StudyState.ERROR]))
                    .values(state=StudyState.READY, error=None)
                ),
            ).rowcount
            if not moved:
                state = session.scalar(select(Study.state).where(Study.id == study_id))
                record_event(
                    session,
                    EventKind.RETRY,
                    f"dead letter {dead_letter_id}: nothing to send, the study is {state} now",
                    study_id=study_id,
                )
                return f"nothing: study row {study_id} is {state} now, no longer waiting for that draft"
            record_event(session, EventKind.RETRY, f"dead letter {dead_letter_id}: draft again", study_id=study_id)
        else:
            raise DeadLetterError(f"dead letter {dead_letter_id} ({task_name}) names no study or instance to retry")
    if task_name in INSTANCE_TASKS:
        app.send_task(PREPARE, args=[instance_id], task_id=task_id)
        return f"prepare instance row {instance_id}"
    assert study_id is not None  # only the study branch above, which checked it, gets here
    finish_if_done(app, database_url, study_id)
    return f"draft study row {study_id}"
