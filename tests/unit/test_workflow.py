"""predraft.workers.dispatch and .drafting against SQLite: claiming quiet studies, finishing, drafting."""

from __future__ import annotations

import sqlite3
import threading
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import pydicom
import pytest
from sqlalchemy import select

from predraft.core.db import session_scope
from predraft.core.schema import Draft, Event, Instance, Prediction, Study, utcnow
from predraft.core.settings import ExpectedViewsRule
from predraft.core.states import InstanceState, StudyState
from predraft.listener.ingest import InstanceHeader, record_instance
from predraft.listener.spool import Spool
from predraft.models.card import load_card

# predraft.workers.tasks at collection: its shared tasks are then registered in every Celery app a test makes, whichever
# test made the current one (a task module imported later reaches only the apps still active).
from predraft.workers import dispatch, tasks
from predraft.workers.app import CLASSIFY, DRAFT, PREPARE
from predraft.workers.dispatch import claim_ready_studies, finish_if_done, reclassify_stale_instances, start_study
from predraft.workers.drafting import DraftOutcome, apply_outcome, draft_study
from tests.inprocess import RecordingCelery
from tests.unit.conftest import hip_pack_for


def _ingest(url: str, paths) -> int:
    study_id = None
    for path in paths:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        header = InstanceHeader.from_dataset(ds, ds.file_meta.TransferSyntaxUID)
        with session_scope(url) as session:
            study_id = record_instance(
                session, header=header, spool_path=str(path), size_bytes=1, calling_ae="PACS"
            ).study_id
    return study_id


def _age(url: str, study_id: int, seconds: float) -> None:
    with session_scope(url) as session:
        session.get(Study, study_id).last_instance_at = utcnow() - timedelta(seconds=seconds)


def _state(url: str, study_id: int) -> str:
    with session_scope(url) as session:
        return session.get(Study, study_id).state


def test_only_quiet_receiving_studies_are_claimed_once(sqlite_url, demo_study):
    study_id = _ingest(sqlite_url, [image.path for image in demo_study])
    assert claim_ready_studies(sqlite_url, quiet_seconds=60) == []
    assert _state(sqlite_url, study_id) == StudyState.RECEIVING

    _age(sqlite_url, study_id, 120)
    assert claim_ready_studies(sqlite_url, quiet_seconds=60) == [study_id]
    assert _state(sqlite_url, study_id) == StudyState.READY
    assert claim_ready_studies(sqlite_url, quiet_seconds=60) == []


def test_a_study_that_gets_an_image_after_it_was_read_as_quiet_is_not_claimed(sqlite_url, demo_study, monkeypatch):
    """The receiving studies are read without a write lock: an image recorded between that read and the claim
    keeps the study receiving (its quiet time starts again), and the next pass claims it once quiet."""
    study_id = _ingest(sqlite_url, [demo_study[0].path])
    _age(sqlite_url, study_id, 120)
    real = dispatch.read_connection

    @contextmanager
    def read_then_an_image_arrives(url: str):
        with real(url) as connection:
            yield connection
        _ingest(sqlite_url, [demo_study[1].path])

    monkeypatch.setattr(dispatch, "read_connection", read_then_an_image_arrives)
    assert claim_ready_studies(sqlite_url, quiet_seconds=60) == []
    assert _state(sqlite_url, study_id) == StudyState.RECEIVING
    monkeypatch.undo()
    _age(sqlite_url, study_id, 120)
    assert claim_ready_studies(sqlite_url, quiet_seconds=60) == [study_id]


def test_looking_for_ready_studies_does_not_wait_for_a_writer(sqlite_url, demo_study):
    """With nothing ready, a pass takes no write lock: it ends while another connection holds one (before, it
    queued behind the writer, and every instance a listener recorded queued behind the pass)."""
    study_id = _ingest(sqlite_url, [image.path for image in demo_study])
    writer = sqlite3.connect(sqlite_url.removeprefix("sqlite:///"), isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")
    try:
        finished = threading.Event()
        found: list[list[int]] = []
        thread = threading.Thread(
            target=lambda: (found.append(claim_ready_studies(sqlite_url, quiet_seconds=60)), finished.set()),
            daemon=True,
        )
        thread.start()
        assert finished.wait(10), "the pass waited for the writer's lock"
        assert found == [[]]
    finally:
        writer.rollback()
        writer.close()
    _age(sqlite_url, study_id, 120)
    assert claim_ready_studies(sqlite_url, quiet_seconds=60) == [study_id]


def test_a_study_with_its_expected_views_is_claimed_before_its_quiet_time(sqlite_url, demo_study):
    """The demo's StudyDescription says "3 VIEWS": the third image makes it complete at once."""
    rules = [ExpectedViewsRule(pattern=r"\b(\d+)\s*VIEWS?\b")]
    study_id = _ingest(sqlite_url, [image.path for image in demo_study[:2]])
    assert claim_ready_studies(sqlite_url, quiet_seconds=3600, expected_views=rules) == []
    _ingest(sqlite_url, [demo_study[2].path])
    assert claim_ready_studies(sqlite_url, quiet_seconds=3600, expected_views=rules) == [study_id]
    with session_scope(sqlite_url) as session:
        reason = session.scalars(select(Event.message).where(Event.kind == "ready")).one()
    assert reason == "complete: 3 image(s), 3 expected"


def test_a_fixed_view_count_rule_on_the_requested_procedure(sqlite_url, demo_study, tmp_path):
    rules = [ExpectedViewsRule(pattern="^HIP SERIES$", views=2)]
    copies = []
    for image in demo_study[:2]:
        ds = pydicom.dcmread(image.path)
        ds.StudyDescription = "XR HIP"
        ds.RequestedProcedureDescription = "HIP SERIES"
        copies.append(tmp_path / image.path.name)
        ds.save_as(copies[-1])
    study_id = _ingest(sqlite_url, copies[:1])
    assert claim_ready_studies(sqlite_url, quiet_seconds=3600, expected_views=rules) == []
    _ingest(sqlite_url, copies[1:])
    assert claim_ready_studies(sqlite_url, quiet_seconds=3600, expected_views=rules) == [study_id]


def test_expected_views_rules_validate_themselves():
    with pytest.raises(ValueError, match="needs a group"):
        ExpectedViewsRule(pattern="HIP")
    with pytest.raises(ValueError, match="not a regular expression"):
        ExpectedViewsRule(pattern="(", views=2)
    assert ExpectedViewsRule(pattern=r"(\d+) views?").expected("XR PELVIS 2 VIEWS") == 2
    assert ExpectedViewsRule(pattern=r"(\d+) views?").expected("XR PELVIS") is None


def test_start_study_sends_prepare_for_each_waiting_instance(sqlite_url, demo_study):
    study_id = _ingest(sqlite_url, [image.path for image in demo_study])
    _age(sqlite_url, study_id, 120)
    claim_ready_studies(sqlite_url, quiet_seconds=1)
    app = RecordingCelery()

    assert start_study(app, sqlite_url, study_id) == 3
    with session_scope(sqlite_url) as session:
        ids = sorted(session.scalars(select(Instance.id)))
    assert sorted(args[0] for name, args in app.sent) == ids
    assert {name for name, _ in app.sent} == {PREPARE}


def test_finish_if_done_waits_for_every_instance(sqlite_url, demo_study):
    study_id = _ingest(sqlite_url, [image.path for image in demo_study])
    with session_scope(sqlite_url) as session:
        session.get(Study, study_id).state = StudyState.READY
        instances = list(session.scalars(select(Instance).order_by(Instance.id)))
        instances[0].state, instances[1].state = InstanceState.CLASSIFIED, InstanceState.SKIPPED
    app = RecordingCelery()

    assert not finish_if_done(app, sqlite_url, study_id)
    assert app.sent == [] and _state(sqlite_url, study_id) == StudyState.READY

    with session_scope(sqlite_url) as session:
        session.get(Instance, instances[2].id).state = InstanceState.ERROR
    assert finish_if_done(app, sqlite_url, study_id)
    assert app.sent == [(DRAFT, [study_id, 1])]
    assert _state(sqlite_url, study_id) == StudyState.DRAFTING
    assert not finish_if_done(app, sqlite_url, study_id)  # claimed once only
    assert len(app.sent) == 1


def _classify_all(url: str, card, probabilities: dict[str, dict[str, float]]) -> None:
    """Store predictions as the classify task would: one per side seen on each instance."""
    with session_scope(url) as session:
        for instance in session.scalars(select(Instance)):
            ds = pydicom.dcmread(instance.spool_path, stop_before_pixels=True)
            sides = ["right", "left"] if ds.ViewPosition == "AP" and ds.BodyPartExamined == "PELVIS" else ["right"]
            view = {"PELVIS": "ap_pelvis"}.get(
                ds.BodyPartExamined, "frog_leg" if ds.ViewPosition == "AP" else "cross_table_lateral"
            )
            for side in sides:
                scores = probabilities[side]
                top = max(scores, key=scores.get)
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


@pytest.fixture
def drafting_study(sqlite_url, demo_study, tiny_card_path):
    card, _ = load_card(tiny_card_path)
    study_id = _ingest(sqlite_url, [image.path for image in demo_study])
    with session_scope(sqlite_url) as session:
        session.get(Study, study_id).state = StudyState.DRAFTING
    return study_id, card


def test_draft_study_writes_and_records_the_sr(sqlite_url, drafting_study, demo_study, tmp_path):
    study_id, card = drafting_study
    _classify_all(sqlite_url, card, {"right": {"tha": 0.9, "none": 0.1}, "left": {"none": 0.8, "tha": 0.2}})
    spool = Spool(tmp_path / "spool")

    with session_scope(sqlite_url) as session:
        study = session.get(Study, study_id)
        outcome = draft_study(session, study=study, generation=1, packs=[hip_pack_for(card)], spool=spool)
        apply_outcome(session, study=study, generation=1, outcome=outcome)

    assert outcome.state is StudyState.DRAFTED and outcome.draft_id is not None
    assert _state(sqlite_url, study_id) == StudyState.DRAFTED
    with session_scope(sqlite_url) as session:
        draft = session.get(Draft, outcome.draft_id)
        assert [(f["side"], f["hardware"]) for f in draft.findings] == [("right", "tha"), ("left", "none")]
        assert "Right hip: Total hip arthroplasty." in draft.text and "UNTRAINED" in draft.text
        sr = pydicom.dcmread(draft.sr_path)
        assert sr.SOPInstanceUID == draft.sr_sop_instance_uid
        assert sr.StudyInstanceUID == session.get(Study, study_id).study_uid
        assert sr.SeriesInstanceUID == draft.sr_series_uid
        assert "drafted" in list(session.scalars(select(Event.kind)))

    with session_scope(sqlite_url) as session:  # idempotent: the same draft again
        again = draft_study(
            session, study=session.get(Study, study_id), generation=1, packs=[hip_pack_for(card)], spool=spool
        )
    assert (again.state, again.draft_id, again.message) == (StudyState.DRAFTED, outcome.draft_id, "already drafted")


def _referenced_uids(sr) -> set[str]:
    return {
        item.ReferencedSOPInstanceUID
        for study in sr.CurrentRequestedProcedureEvidenceSequence
        for series in study.ReferencedSeriesSequence
        for item in series.ReferencedSOPSequence
    }


def _purge(url: str, *, images: list[int] | None = None, draft_id: int | None = None) -> None:
    """What spool retention leaves: rows stamped purged whose files are gone. The images are the session's demo
    study, which other tests read: their rows are pointed at a path with no file instead of deleting them."""
    with session_scope(url) as session:
        for instance_id in images or []:
            instance = session.get(Instance, instance_id)
            instance.spool_path = f"{instance.spool_path}.purged-by-the-test"
            instance.purged_at = utcnow()
        if draft_id is not None:
            draft = session.get(Draft, draft_id)
            for path in (draft.sr_path, draft.results_sr_path):
                Path(path).unlink()
            draft.purged_at = utcnow()


def _draft(url: str, study_id: int, generation: int, card, spool: Spool) -> DraftOutcome:
    with session_scope(url) as session:
        study = session.get(Study, study_id)
        return draft_study(session, study=study, generation=generation, packs=[hip_pack_for(card)], spool=spool)


def test_a_redraft_after_retention_purged_some_images_and_the_last_srs_stands_them_in(
    sqlite_url, drafting_study, tmp_path
):
    """A late image re-opens a study whose other images and SRs retention purged: the new draft is written, its
    SRs reference every image (the purged ones by their UIDs) and copy the patient from the image still held."""
    study_id, card = drafting_study
    _classify_all(sqlite_url, card, {"right": {"tha": 0.9, "none": 0.1}, "left": {"none": 0.8, "tha": 0.2}})
    with session_scope(sqlite_url) as session:  # the rectangle each hip was read from, as classify records it
        for prediction in session.scalars(select(Prediction)):
            prediction.region = [0, 96, 0, 96]
    spool = Spool(tmp_path / "spool")
    first = _draft(sqlite_url, study_id, 1, card, spool)
    with session_scope(sqlite_url) as session:
        instances = list(session.scalars(select(Instance).order_by(Instance.id)))
        uids = {instance.sop_instance_uid for instance in instances}
        kept = pydicom.dcmread(instances[-1].spool_path, stop_before_pixels=True)
        purged = [instance.id for instance in instances[:-1]]
    _purge(sqlite_url, images=purged, draft_id=first.draft_id)

    second = _draft(sqlite_url, study_id, 2, card, spool)

    assert second.state is StudyState.DRAFTED and second.draft_id != first.draft_id
    with session_scope(sqlite_url) as session:
        draft = session.get(Draft, second.draft_id)
        sr, results = pydicom.dcmread(draft.sr_path), pydicom.dcmread(draft.results_sr_path)
    for document in (sr, results):
        assert _referenced_uids(document) == uids
        assert (document.PatientName, document.PatientID) == (kept.PatientName, kept.PatientID)
        assert "PredecessorDocumentsSequence" not in document  # the purged SRs are no longer named
    assert "Right hip: Total hip arthroplasty." in draft.text


def test_a_draft_whose_images_were_all_purged_is_an_error_that_says_so(sqlite_url, drafting_study, tmp_path):
    study_id, card = drafting_study
    _classify_all(sqlite_url, card, {"right": {"tha": 0.9, "none": 0.1}, "left": {"none": 0.8, "tha": 0.2}})
    with session_scope(sqlite_url) as session:
        everything = list(session.scalars(select(Instance.id)))
    _purge(sqlite_url, images=everything)

    outcome = _draft(sqlite_url, study_id, 1, card, Spool(tmp_path / "spool"))

    assert (outcome.state, outcome.draft_id) == (StudyState.ERROR, None)
    assert "purged by spool retention" in outcome.message


def test_draft_study_ignores_predictions_of_another_model(sqlite_url, drafting_study, tmp_path):
    study_id, card = drafting_study
    _classify_all(
        sqlite_url,
        card.model_copy(update={"version": "old"}),
        {"right": {"tha": 0.9, "none": 0.1}, "left": {"none": 0.8, "tha": 0.2}},
    )
    with session_scope(sqlite_url) as session:
        outcome = draft_study(
            session,
            study=session.get(Study, study_id),
            generation=1,
            packs=[hip_pack_for(card)],
            spool=Spool(tmp_path / "spool"),
        )
    assert outcome.state is StudyState.OUT_OF_SCOPE and outcome.draft_id is None


@pytest.mark.parametrize(
    "states, expected, match",
    [
        ([InstanceState.SKIPPED] * 3, StudyState.OUT_OF_SCOPE, "no hip or pelvis"),
        ([InstanceState.SKIPPED, InstanceState.ERROR, InstanceState.ERROR], StudyState.ERROR, "2 of 3 instance"),
    ],
)
def test_study_without_classified_images(sqlite_url, drafting_study, tmp_path, states, expected, match):
    study_id, card = drafting_study
    with session_scope(sqlite_url) as session:
        for instance, state in zip(session.scalars(select(Instance).order_by(Instance.id)), states, strict=True):
            instance.state = state
    with session_scope(sqlite_url) as session:
        study = session.get(Study, study_id)
        outcome = draft_study(
            session, study=study, generation=1, packs=[hip_pack_for(card)], spool=Spool(tmp_path / "spool")
        )
        apply_outcome(session, study=study, generation=1, outcome=outcome)
    assert outcome.state is expected and outcome.draft_id is None
    assert match in outcome.message
    with session_scope(sqlite_url) as session:
        study = session.get(Study, study_id)
        assert (study.state, study.error) == (expected, outcome.message)


def test_apply_outcome_leaves_a_reopened_study_alone(sqlite_url, drafting_study):
    study_id, _ = drafting_study
    with session_scope(sqlite_url) as session:
        study = session.get(Study, study_id)
        study.state, study.generation = StudyState.RECEIVING, 2
        apply_outcome(
            session, study=study, generation=1, outcome=DraftOutcome(StudyState.DRAFTED, 1, "SR of generation 1")
        )
    with session_scope(sqlite_url) as session:
        study = session.get(Study, study_id)
        assert (study.state, study.generation, study.drafted_at) == (StudyState.RECEIVING, 2, None)


def test_study_timings_count_from_the_last_instance():
    from datetime import UTC, datetime

    from predraft.core.schema import Export
    from predraft.core.studies import study_timings

    t0 = datetime(2026, 11, 22, 12, 0, 0)  # naive, as SQLite returns them: UTC
    study = Study(
        received_at=t0,
        last_instance_at=t0 + timedelta(seconds=2),
        ready_at=t0 + timedelta(seconds=2.5),
        prepared_at=t0 + timedelta(seconds=3),
        classified_at=t0 + timedelta(seconds=3.5),
    )
    draft = Draft(
        created_at=t0 + timedelta(seconds=4.25),
        exports=[Export(exported_at=t0 + timedelta(seconds=5)), Export(exported_at=None)],
    )
    timings = study_timings(study, draft)
    assert timings["seconds_from_last_instance"] == {
        "ready": 0.5,
        "prepared": 1.0,
        "classified": 1.5,
        "drafted": 2.25,
        "exported": 3.0,
    }
    assert timings["at"]["received"] == datetime(2026, 11, 22, 12, 0, tzinfo=UTC).isoformat(timespec="milliseconds")
    assert study_timings(Study(received_at=t0, last_instance_at=t0), None)["seconds_from_last_instance"] == {}


def test_images_another_model_classified_are_classified_again_before_drafting(
    sqlite_url, drafting_study, clean_settings_env, tiny_card_path, tmp_path, monkeypatch
):
    """A late image after a model upgrade: the first two images hold the old model's predictions only."""
    study_id, card = drafting_study
    _classify_all(
        sqlite_url,
        card.model_copy(update={"version": "old"}),
        {"right": {"tha": 0.9, "none": 0.1}, "left": {"none": 0.8, "tha": 0.2}},
    )
    with session_scope(sqlite_url) as session:
        instances = session.scalars(select(Instance).order_by(Instance.id)).all()
        late = instances[-1]
        for prediction in late.predictions:
            prediction.model_version = card.version
        old_ids = [instance.id for instance in instances[:-1]]
        session.get(Study, study_id).ready_at = utcnow()  # the late image made it ready: this drafting round
    monkeypatch.setenv("PREDRAFT_DATABASE_URL", sqlite_url)
    monkeypatch.setenv("PREDRAFT_MODEL", str(tiny_card_path))
    monkeypatch.setenv("PREDRAFT_VAR_DIR", str(tmp_path / "var"))
    tasks._settings.cache_clear()
    app = RecordingCelery()
    monkeypatch.setattr(tasks.draft, "app", app)  # the prepare messages it sends are recorded
    try:
        tasks.draft.run(study_id, 1)
    finally:
        tasks._settings.cache_clear()

    assert app.sent == [(PREPARE, [instance_id]) for instance_id in old_ids]
    with session_scope(sqlite_url) as session:
        study = session.get(Study, study_id)
        assert study.state == StudyState.READY and study.drafts == []
        assert [i.state for i in study.instances] == [InstanceState.RECEIVED] * 2 + [InstanceState.CLASSIFIED]
        assert session.scalars(select(Event.kind).where(Event.kind == "reclassifying")).all() == ["reclassifying"]
    # Classified again, here by a classify worker whose card is not the draft worker's (a rolling upgrade): its
    # predictions are of this round, so nothing is sent round again and the study drafts (no endless loop).
    with session_scope(sqlite_url) as session:
        for instance in session.scalars(select(Instance).where(Instance.id.in_(old_ids))):
            for prediction in instance.predictions:
                prediction.model_version, prediction.created_at = "another", utcnow()
            instance.state = InstanceState.CLASSIFIED
        study = session.get(Study, study_id)
        study.state = StudyState.DRAFTING
        assert reclassify_stale_instances(session, study=study, models={"hip": (card.name, card.version)}) == []


def test_classifying_replaces_the_predictions_of_every_earlier_model(
    sqlite_url, demo_study, clean_settings_env, tiny_card_path, tmp_path, monkeypatch
):
    card, _ = load_card(tiny_card_path)
    study_id = _ingest(sqlite_url, [demo_study[0].path])  # the AP pelvis: two hips
    with session_scope(sqlite_url) as session:
        instance = session.scalars(select(Instance)).one()
        instance_id = instance.id
        session.add(
            Prediction(
                instance_id=instance_id,
                side="right",
                view="ap_pelvis",
                model_name=card.name,
                model_version="old",
                probabilities={"tha": 1.0},
                top_class="tha",
                top_probability=1.0,
            )
        )
        session.get(Study, study_id).state = StudyState.READY
    for key, value in {
        "PREDRAFT_DATABASE_URL": sqlite_url,
        "PREDRAFT_MODEL": str(tiny_card_path),
        "PREDRAFT_VAR_DIR": str(tmp_path / "var"),
        "PREDRAFT_CLASSIFY_BATCH_WAIT_MS": "0",
    }.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(tasks, "_models", {})
    tasks._settings.cache_clear()
    app = RecordingCelery()
    monkeypatch.setattr(tasks.prepare, "app", app)
    monkeypatch.setattr(tasks.classify, "app", app)
    try:
        tasks.prepare.run(instance_id)
        [(name, args)] = app.sent
        assert name == CLASSIFY
        tasks.classify.run(*args)
    finally:
        tasks._settings.cache_clear()
        for _, batcher in tasks._models.values():
            batcher.close()

    with session_scope(sqlite_url) as session:
        predictions = session.scalars(select(Prediction).order_by(Prediction.side)).all()
        assert [(p.side, p.model_version) for p in predictions] == [("left", card.version), ("right", card.version)]
        assert session.get(Instance, instance_id).state == InstanceState.CLASSIFIED
    assert app.sent[-1] == (DRAFT, [study_id, 1])  # its only image classified: the study drafts


def test_a_drafting_error_leaves_the_study_in_error_with_the_reason(
    sqlite_url, drafting_study, clean_settings_env, tiny_card_path, tmp_path, monkeypatch
):
    study_id, card = drafting_study
    _classify_all(sqlite_url, card, {"right": {"tha": 0.9, "none": 0.1}, "left": {"none": 0.8, "tha": 0.2}})
    with session_scope(sqlite_url) as session:
        session.get(Study, study_id).ready_at = utcnow()
    for key, value in {
        "PREDRAFT_DATABASE_URL": sqlite_url,
        "PREDRAFT_MODEL": str(tiny_card_path),
        "PREDRAFT_VAR_DIR": str(tmp_path / "var"),
    }.items():
        monkeypatch.setenv(key, value)

    def broken(*_args, **_kwargs):
        raise RuntimeError("template exploded")

    monkeypatch.setattr(tasks, "draft_study", broken)
    app = RecordingCelery()
    monkeypatch.setattr(tasks.draft, "app", app)
    tasks._settings.cache_clear()
    try:
        tasks.draft.run(study_id, 1)
    finally:
        tasks._settings.cache_clear()

    assert app.sent == []
    with session_scope(sqlite_url) as session:
        study = session.get(Study, study_id)
        assert (study.state, study.error) == (StudyState.ERROR, "drafting failed: RuntimeError: template exploded")
        assert study.drafts == []
        assert session.scalars(select(Event.message).where(Event.kind == "error")).all() == [study.error]
