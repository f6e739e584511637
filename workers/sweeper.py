"""The sweeper: work that the database says is pending but no queue holds is sent again.

Messages can be lost: a Redis without persistence restarts, a worker is killed while it holds a
message whose redelivery would wait for the broker's visibility timeout, the listener fails to send
after committing. The database is the truth about what is due, so the sweeper compares it with the
broker (:func:`predraft.workers.queues.queued_messages`) and re-sends, for rows that have not moved for
``stale_seconds``:

- an instance ``received`` in a ``ready`` study, with no ``prepare`` message -> ``prepare``;
- an instance ``prepared`` with neither ``prepare`` nor ``classify`` message (its images travelled in the
  lost message) -> back to ``received`` and ``prepare``;
- a ``ready`` study whose instances are all finished -> drafting (``finish_if_done``);
- a ``drafting`` study with no draft of its generation and no ``draft`` message -> ``draft``;
- an export ``pending`` (never tried), ``failed`` for longer than the longest retry delay too, or
  ``sending`` under a claim abandoned by a dead worker (older than ``SENDING_CLAIM_SECONDS``), with no
  ``export`` message -> ``export``.

A message delivered to a worker but unacknowledged for longer than ``stale_seconds`` counts as lost
(its worker may be dead); if it was not, the work runs twice, which the idempotent tasks absorb: a
study is still drafted once. Work with a dead letter not yet retried is left alone.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, cast

from celery import Celery
from sqlalchemy import and_, exists, or_, select, update
from sqlalchemy.engine import CursorResult

from predraft.core.db import session_scope
from predraft.core.events import record_event
from predraft.core.schema import DeadLetter, Draft, Export, Instance, Study, utcnow
from predraft.core.states import FINISHED_INSTANCE_STATES, EventKind, ExportState, InstanceState, StudyState
from predraft.workers.app import CLASSIFY, DRAFT, EXPORT, PREPARE, QUEUES
from predraft.workers.dispatch import finish_if_done
from predraft.workers.export_service import abandoned_claim
from predraft.workers.queues import queued_messages

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


def sweep(
    app: Celery,
    database_url: str,
    broker_url: str,
    *,
    stale_seconds: float,
    export_retry_max_delay_seconds: float = 600.0,
) -> SweepReport:
    """One pass; see the module docstring. Raises :class:`predraft.workers.queues.BrokerUnreachable` if the broker
    cannot be read (nothing is sent then: a broker that cannot be read cannot be trusted to be empty)."""
    cutoff = utcnow() - timedelta(seconds=stale_seconds)
    messages = [
        message
        for message in queued_messages(broker_url, QUEUES)
        if not message.delivered or message.since is None or message.since > cutoff
    ]
    held = {(message.task, message.first_arg) for message in messages}
    held_exports: dict[str, set[tuple[str, object]]] = {}
    for message in messages:
        if message.task == EXPORT and len(message.args) > 1:
            held_exports.setdefault(str(message.args[1]), set()).add((EXPORT, message.first_arg))
    report = SweepReport()
    undead_instance = ~exists().where(DeadLetter.instance_id == Instance.id, DeadLetter.retried_at.is_(None))
    undead_study = ~exists().where(
        DeadLetter.study_id == Study.id, DeadLetter.retried_at.is_(None), DeadLetter.instance_id.is_(None)
    )
    with session_scope(database_url) as session:
        stale_instances = session.execute(
            select(Instance.id, Instance.state, Instance.study_id)
            .join(Study, Study.id == Instance.study_id)
            .where(
                Study.state == StudyState.READY,
                Instance.updated_at < cutoff,
                undead_instance,
                Instance.state.in_([InstanceState.RECEIVED, InstanceState.PREPARED]),
            )
        ).all()
        for instance_id, state, study_id in stale_instances:
            if (PREPARE, instance_id) in held or (CLASSIFY, instance_id) in held:
                continue
            if state == InstanceState.PREPARED:
                changed = cast(
                    CursorResult[Any],
                    session.execute(
                        update(Instance)
                        .where(Instance.id == instance_id, Instance.state == InstanceState.PREPARED)
                        .values(state=InstanceState.RECEIVED, updated_at=utcnow())
                    ),
                )
                if changed.rowcount != 1:
                    continue
                report.reclassified.append(instance_id)
            else:
                report.prepared.append(instance_id)
            record_event(
                session,
                EventKind.SWEPT,
                f"{state}: no queued task; prepare sent again",
                study_id=study_id,
                instance_id=instance_id,
            )
        unfinished = exists().where(Instance.study_id == Study.id, Instance.state.not_in(FINISHED_INSTANCE_STATES))
        report.finished = list(
            session.scalars(
                select(Study.id).where(Study.state == StudyState.READY, Study.ready_at < cutoff, ~unfinished)
            ).all()
        )
        has_draft = exists().where(Draft.study_id == Study.id, Draft.generation == Study.generation)
        drafting = session.execute(
            select(Study.id, Study.generation).where(
                Study.state == StudyState.DRAFTING, ~has_draft, undead_study, Study.ready_at < cutoff
            )
        ).all()
        report.drafted = [study_id for study_id, _ in drafting if (DRAFT, study_id) not in held]
        generations = dict(drafting)
        for study_id in report.drafted:
            record_event(session, EventKind.SWEPT, "drafting: no queued task; draft sent again", study_id=study_id)
        failed_cutoff = cutoff - timedelta(seconds=export_retry_max_delay_seconds)
        exports = session.execute(
            select(Export.id, Export.draft_id, Export.destination).where(
                or_(
                    and_(Export.state == ExportState.PENDING, Export.updated_at < cutoff),
                    and_(Export.state == ExportState.FAILED, Export.updated_at < failed_cutoff),
                    abandoned_claim(),
                )
            )
        ).all()
        lost_exports = [
            (draft_id, destination)
            for export_id, draft_id, destination in exports
            if (EXPORT, draft_id) not in held_exports.get(destination, set())
        ]
        report.exported = [
            export_id for export_id, draft_id, destination in exports if (draft_id, destination) in lost_exports
        ]
    for instance_id in report.prepared + report.reclassified:
        app.send_task(PREPARE, args=[instance_id])
    for study_id in report.finished:
        finish_if_done(app, database_url, study_id)
    for study_id in report.drafted:
        app.send_task(DRAFT, args=[study_id, generations[study_id]])
    for draft_id, destination in lost_exports:
        app.send_task(EXPORT, args=[draft_id, destination])
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
