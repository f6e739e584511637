"""The ``predraft.export`` task (queue ``export``): send one draft's SRs (the narrative SR and the AI results SR
beside it) to one configured destination.

One task per (draft, destination), sent once the draft is committed (:func:`send_exports`). Idempotent:
the exports row is the record: each try claims it first (``sending``), and a task whose row is already
``sent`` or ``dead``, or claimed by another try, does nothing, so a redelivered message never sends an SR
twice. A try that fails for a reason a retry can mend (see
:mod:`predraft.workers.export`) is retried by Celery after ``export_retry_delay_seconds``, doubled each time up to
``export_retry_max_delay_seconds``, at most ``export_max_retries`` times; then, or at once for a refusal no
retry can mend, the row is ``dead`` with its error, until ``predraft studies resend`` queues it again.
Every try is counted on the row with its error.

Logs name database ids, destination names and errors; never patient data.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from datetime import timedelta
from functools import lru_cache
from pathlib import Path

from celery import Celery, Task, shared_task
from sqlalchemy.exc import OperationalError

from predraft.core.db import session_scope
from predraft.core.metrics import EXPORTS
from predraft.core.schema import utcnow
from predraft.core.settings import Settings, get_settings
from predraft.workers.app import EXPORT
from predraft.workers.export import Delivery, ExportError, send_documents
from predraft.workers.export_service import ExportJob, begin_attempt, record_failure, record_sent, retry_delay
from predraft.workers.leases import LeasedTask, holder_of, lease_seconds, new_task_id

log = logging.getLogger(__name__)

#: Retries of a try that met a database error (separate from the network retries the settings bound).
DATABASE_RETRIES = 20
#: Retries, in the task itself, of recording a try's outcome (0.5 s, doubled each time, at most 30 s apart).
RECORD_RETRIES = 8


@lru_cache(maxsize=1)
def _settings() -> Settings:
    return get_settings()


def send_exports(app: Celery, draft_id: int, task_ids: Mapping[str, str]) -> None:
    """Send one export task per destination, with the task id stamped on its row (after the rows are committed:
    :func:`predraft.workers.export_service.queue_exports` gives ``task_ids``)."""
    for name, task_id in task_ids.items():
        app.send_task(EXPORT, args=[draft_id, name], task_id=task_id)


class ExportTask(LeasedTask):
    """The export task's class: its rows' leases live in the configured database."""

    def database_url(self) -> str:
        return _settings().database_url


def _try(settings: Settings, job: ExportJob) -> Delivery | ExportError:
    """One try; every failure, an unexpected one included, comes back as an ExportError."""
    try:
        destination = settings.export.destination(job.destination)
    except KeyError as exc:
        return ExportError(f"{exc.args[0]}: it was removed from export_destinations", retryable=False)
    try:
        return send_documents(destination, [Path(path) for path in job.sr_paths])
    except ExportError as exc:
        return exc
    except Exception as exc:  # a bug or a surprise: recorded on the row, not lost in a worker log
        log.exception("export %d to %s failed unexpectedly", job.export_id, job.destination)
        return ExportError(f"unexpected {type(exc).__name__}: {exc}", retryable=False)


def _record(settings: Settings, service: Callable[..., None], **values: object) -> None:
    """Record a try's outcome on its claimed row, retrying a database error here: a retry of the whole task
    would find the row claimed (``sending``) by this very try and do nothing, leaving it claimed."""
    for attempt in range(RECORD_RETRIES + 1):
        try:
            with session_scope(settings.database_url) as session:
                service(session, **values)
            return
        except OperationalError:
            if attempt == RECORD_RETRIES:
                raise  # the row stays claimed; the sweeper takes the abandoned claim over
            log.warning("recording an export try met a database error; again in %.1f s", 0.5 * 2**attempt)
            time.sleep(min(0.5 * 2**attempt, 30.0))


@shared_task(
    name=EXPORT,
    bind=True,
    base=ExportTask,
    autoretry_for=(OperationalError,),
    retry_backoff=True,
    retry_backoff_max=300,
    retry_jitter=True,
    max_retries=DATABASE_RETRIES,
)
def export(self: Task, draft_id: int, destination: str) -> str:
    """Send the SR of ``draft_id`` to the destination named ``destination``; returns the row's new state
    (or "nothing to do")."""
    settings = _settings()
    with session_scope(settings.database_url) as session:
        job = begin_attempt(
            session,
            draft_id=draft_id,
            destination=destination,
            task_id=self.request.id or new_task_id(),
            holder=holder_of(self),
            lease_seconds=lease_seconds(settings.workers.sweep_stale_seconds),
        )
    if job is None:
        log.info("export of draft %d to %s: nothing to do (sent, dead or not queued)", draft_id, destination)
        return "nothing to do"

    outcome = _try(settings, job)
    if isinstance(outcome, Delivery):
        _record(settings, record_sent, export_id=job.export_id, note=outcome.note)
        EXPORTS.labels(destination=destination, outcome="sent").inc()
        log.info(
            "export %d of draft %d to %s: sent (try %d)%s",
            job.export_id,
            draft_id,
            destination,
            job.attempt,
            f"; {outcome.note}" if outcome.note else "",
        )
        return "sent"

    retries = self.request.retries or 0
    dead = not outcome.retryable or retries >= settings.export.max_retries
    delay = retry_delay(
        retries, first=settings.export.retry_delay_seconds, longest=settings.export.retry_max_delay_seconds
    )
    retry_at = None if dead else utcnow() + timedelta(seconds=delay)
    _record(settings, record_failure, export_id=job.export_id, error=str(outcome), retry_at=retry_at)
    EXPORTS.labels(destination=destination, outcome="dead" if dead else "failed").inc()
    if dead:
        why = "no retry can mend it" if not outcome.retryable else f"{retries} retries spent"
        log.warning("export %d of draft %d to %s is dead (%s): %s", job.export_id, draft_id, destination, why, outcome)
        return "dead"
    log.warning(
        "export %d of draft %d to %s failed (try %d), retry in %.0f s: %s",
        job.export_id,
        draft_id,
        destination,
        job.attempt,
        delay,
        outcome,
    )
    raise self.retry(countdown=delay, max_retries=settings.export.max_retries)
