"""Helpers of the export tests: a drafted study in a SQLite database, and the export task run in-process.

The task is run eagerly (``Task.apply``): Celery then runs each retry at once, in the same call, so the
tests see every try without waiting for the backoff.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest
from sqlalchemy import select

from predraft.core.db import session_scope
from predraft.core.schema import Event, Export, Instance, Prediction, Study
from predraft.core.states import EventKind, InstanceState, StudyState
from predraft.listener.ingest import InstanceHeader, record_instance
from predraft.listener.spool import Spool
from predraft.models.card import load_card
from predraft.workers import export_task
from predraft.workers.drafting import apply_outcome, draft_study
from predraft.workers.export_service import queue_exports
from tests.conftest import embedded_broker
from tests.unit.conftest import hip_pack_for


@dataclass(frozen=True)
class Drafted:
    database_url: str
    study_uid: str
    draft_id: int
    sr_sop_instance_uid: str
    sr_path: Path
    #: The AI results SR's UID, when the draft was made with one.
    results_sr_sop_instance_uid: str | None = None


def make_draft(
    database_url: str, image_paths: list[Path], card_path: Path, spool_dir: Path, *, results_sr: bool = False
) -> Drafted:
    """Record ``image_paths`` as one study, classify every hip as THA (right) and none (left), draft it (with the
    AI results SR beside the narrative one when ``results_sr``: most export tests follow one SR's tries)."""
    card, _ = load_card(card_path)
    for path in image_paths:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        header = InstanceHeader.from_dataset(ds, ds.file_meta.TransferSyntaxUID)
        with session_scope(database_url) as session:
            record_instance(session, header=header, spool_path=str(path), size_bytes=1, calling_ae="PACS")
    with session_scope(database_url) as session:
        for instance in session.scalars(select(Instance)):
            ds = pydicom.dcmread(instance.spool_path, stop_before_pixels=True)
            pelvis = ds.BodyPartExamined == "PELVIS"
            view = "ap_pelvis" if pelvis else "frog_leg" if ds.ViewPosition == "AP" else "cross_table_lateral"
            for side in ("right", "left") if pelvis else ("right",):
                scores = {"tha": 0.9, "none": 0.1} if side == "right" else {"none": 0.9, "tha": 0.1}
                top = max(scores, key=scores.__getitem__)
                session.add(
                    Prediction(
                        instance_id=instance.id,
                        side=side,
                        view=view,
                        model_name=card.name,
                        model_version=card.version,
                        probabilities=scores,
                        top_class=top,
                        top_probability=scores[top],
                    )
                )
            instance.state = InstanceState.CLASSIFIED
        study = session.scalars(select(Study)).one()
        study.state = StudyState.DRAFTING
    with session_scope(database_url) as session:
        study = session.scalars(select(Study)).one()
        outcome = draft_study(
            session,
            study=study,
            generation=1,
            packs=[hip_pack_for(card)],
            spool=Spool(spool_dir),
            results_sr=results_sr,
        )
        apply_outcome(session, study=study, generation=1, outcome=outcome)
        draft = study.drafts[-1]
        return Drafted(
            database_url,
            study.study_uid,
            draft.id,
            draft.sr_sop_instance_uid,
            Path(draft.sr_path),
            draft.results_sr_sop_instance_uid,
        )


def configure(
    monkeypatch: pytest.MonkeyPatch, drafted: Drafted, destinations: list[dict], *, max_retries: int = 2
) -> None:
    """Settings of the export task (from the environment, as a worker reads them), with no backoff wait."""
    broker = Path(drafted.database_url.removeprefix("sqlite:///")).with_name("broker.sqlite")
    for key, value in {
        "PREDRAFT_DATABASE_URL": drafted.database_url,
        "PREDRAFT_BROKER_URL": embedded_broker(broker),  # every admin command checks it answers
        "PREDRAFT_EXPORT_DESTINATIONS": json.dumps(destinations),
        "PREDRAFT_EXPORT_MAX_RETRIES": str(max_retries),
        "PREDRAFT_EXPORT_RETRY_DELAY_SECONDS": "0",
    }.items():
        monkeypatch.setenv(key, value)
    export_task._settings.cache_clear()


def queue(drafted: Drafted, *names: str) -> list[str]:
    """Queue the draft's exports to ``names``; the destinations whose rows are pending (stamped with a task id)."""
    with session_scope(drafted.database_url) as session:
        return list(queue_exports(session, draft_id=drafted.draft_id, destinations=list(names)))


def run_export(drafted: Drafted, name: str) -> str:
    """The export task, run in this process with its retries; the state it ends in."""
    return export_task.export.apply(args=[drafted.draft_id, name]).get()


def export_row(drafted: Drafted, name: str) -> Export:
    with session_scope(drafted.database_url) as session:
        return session.scalars(
            select(Export).where(Export.draft_id == drafted.draft_id, Export.destination == name)
        ).one()


def event_kinds(drafted: Drafted) -> list[str]:
    with session_scope(drafted.database_url) as session:
        exports = [kind for kind in EventKind if kind.startswith("export")]
        return list(session.scalars(select(Event.kind).where(Event.kind.in_(exports)).order_by(Event.id)))
