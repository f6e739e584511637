"""Spool retention (predraft.workers.retention, ``predraft spool ...``) on SQLite and PostgreSQL: a spool filled with
old finished studies, a recent one and old ones still in work; only the old finished studies' files go, their rows
stay, and nothing of a study in work is touched.

Rows are made as predraft's own code leaves them (a pending export stamped with its message, a failed one with its
retry due, a draft task's lease), dated back by the test; the files are bytes of known sizes in the spool's folders.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from pydicom.uid import generate_uid
from sqlalchemy import create_engine, func, select, text, update

from predraft.cli import main
from predraft.core.db import session_scope
from predraft.core.schema import Draft, Event, Export, Instance, Review, Series, Study, User, utcnow
from predraft.core.settings import get_settings
from predraft.core.states import (
    EventKind,
    ExportState,
    InstanceState,
    ReportKind,
    ReviewAction,
    Role,
    StudyState,
)
from predraft.workers.retention import PurgeKind, purge_spool, purge_study, purgeable
from predraft.workers.stability import StabilityMonitor
from tests.inprocess import RecordingCelery

PATIENT = "Doe^Jane"
OLD_DAYS = 40.0
RECENT_DAYS = 5.0
KEEP_DAYS = 30.0
#: The studies whose images go with KEEP_DAYS; every other one of the filled spool is kept.
FINISHED_AND_OLD = ("reviewed_old", "reviewed_old_3_images", "exported_old")


@dataclass
class Made:
    """A study made by :func:`make_study`: its row, its UID and its files."""

    study_id: int
    study_uid: str
    images: list[Path] = field(default_factory=list)
    srs: list[Path] = field(default_factory=list)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def url(request: pytest.FixtureRequest) -> str:
    return request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "postgres_url")


@pytest.fixture
def spool(tmp_path: Path) -> Path:
    root = tmp_path / "spool"
    for folder in ("incoming", "sr"):
        (root / folder).mkdir(parents=True)
    return root


def _write(path: Path, size: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\0" * size)
    return path


def _user(session: Any) -> int:
    user_id = session.scalar(select(User.id).where(User.username == "rad"))
    if user_id is None:
        user = User(username="rad", display_name="Rad^One", role=Role.RADIOLOGIST, password_hash="not a hash")
        session.add(user)
        session.flush()
        user_id = user.id
    return int(user_id)


def make_study(
    url: str,
    spool: Path,
    *,
    state: StudyState,
    age_days: float,
    images: int = 2,
    instance_state: InstanceState = InstanceState.CLASSIFIED,
    export: ExportState | None = ExportState.SENT,
    reviewed: bool = False,
    review_age_days: float | None = None,
    image_folder: Path | None = None,
    **study_values: Any,
) -> Made:
    """A study dated ``age_days`` back: ``images`` instances with files, a draft with its SR (unless the study is
    still before drafting), its export in ``export`` (None: none), and with ``reviewed`` a review that issued a
    verified SR (exported too) ``review_age_days`` back (default: ``age_days``)."""
    then = utcnow() - timedelta(days=age_days)
    study_uid = generate_uid()
    made = Made(0, study_uid)
    drafted = state in (StudyState.DRAFTED, StudyState.REVIEWED)
    with session_scope(url) as session:
        study = Study(
            study_uid=study_uid,
            patient_name=PATIENT,
            patient_id="P-1",
            state=state,
            received_at=then,
            last_instance_at=then,
            drafted_at=then if drafted else None,
            **study_values,
        )
        session.add(study)
        session.flush()
        series = Series(study_id=study.id, series_uid=generate_uid(), modality="CR")
        session.add(series)
        session.flush()
        for number in range(images):
            sop = generate_uid()
            folder = image_folder or spool / "incoming" / study_uid
            made.images.append(_write(folder / f"{sop}.dcm", 1000 + number))
            session.add(
                Instance(
                    study_id=study.id,
                    series_id=series.id,
                    sop_instance_uid=sop,
                    sop_class_uid="1.2.840.10008.5.1.4.1.1.1",
                    transfer_syntax_uid="1.2.840.10008.1.2.1",
                    spool_path=str(made.images[-1]),
                    size_bytes=1000 + number,
                    state=instance_state,
                    received_at=then,
                    updated_at=then,
                    dispatched_at=then if instance_state == InstanceState.PREPARED else None,
                )
            )
        if drafted:
            draft = _draft(session, spool, made, study.id, ReportKind.DRAFT, then, export)
            if reviewed:
                review_then = utcnow() - timedelta(days=review_age_days or age_days)
                report = _draft(session, spool, made, study.id, ReportKind.VERIFIED, review_then, ExportState.SENT)
                session.add(
                    Review(
                        draft_id=draft,
                        study_id=study.id,
                        user_id=_user(session),
                        action=ReviewAction.ACCEPTED,
                        report_id=report,
                        created_at=review_then,
                    )
                )
        made.study_id = study.id
    return made


def _draft(
    session: Any,
    spool: Path,
    made: Made,
    study_id: int,
    kind: ReportKind,
    then: datetime,
    export: ExportState | None,
) -> int:
    sr_uid = generate_uid()
    made.srs.append(_write(spool / "sr" / made.study_uid / f"{sr_uid}.dcm", 500))
    draft = Draft(
        study_id=study_id,
        generation=1,
        kind=kind,
        text="No hardware.",
        findings=[],
        model_name="m",
        model_version="v",
        sr_sop_instance_uid=sr_uid,
        sr_series_uid=generate_uid(),
        sr_path=str(made.srs[-1]),
        created_at=then,
    )
    session.add(draft)
    session.flush()
    if export is not None:
        session.add(
            Export(
                draft_id=draft.id,
                destination="pacs",
                state=export,
                attempts=1,
                created_at=then,
                updated_at=then,
                exported_at=then if export == ExportState.SENT else None,
                # as the export's own code leaves a row: a pending one's message out, a failed one's retry due
                dispatched_at=then if export in (ExportState.PENDING, ExportState.FAILED) else None,
                retry_at=utcnow() + timedelta(minutes=5) if export == ExportState.FAILED else None,
            )
        )
    return int(draft.id)


@pytest.fixture
def filled(url: str, spool: Path) -> dict[str, Made]:
    """The spool of a routing target: old finished studies, a recent one, and old ones still in work or not
    finished."""
    finished = {"state": StudyState.REVIEWED, "reviewed": True}
    return {
        "reviewed_old": make_study(url, spool, age_days=OLD_DAYS, **finished),
        "reviewed_old_3_images": make_study(url, spool, age_days=OLD_DAYS, images=3, **finished),
        "exported_old": make_study(url, spool, state=StudyState.DRAFTED, age_days=OLD_DAYS),
        "reviewed_recent": make_study(url, spool, age_days=RECENT_DAYS, **finished),
        "reviewed_old_but_reviewed_recently": make_study(url, spool, age_days=OLD_DAYS, review_age_days=1, **finished),
        "classifying_old": make_study(
            url, spool, state=StudyState.READY, age_days=OLD_DAYS, instance_state=InstanceState.PREPARED, export=None
        ),
        "export_pending_old": make_study(
            url, spool, state=StudyState.DRAFTED, age_days=OLD_DAYS, export=ExportState.PENDING
        ),
        "export_failed_old": make_study(
            url, spool, state=StudyState.DRAFTED, age_days=OLD_DAYS, export=ExportState.FAILED
        ),
        "export_dead_old": make_study(url, spool, state=StudyState.DRAFTED, age_days=OLD_DAYS, export=ExportState.DEAD),
        "drafted_never_exported_old": make_study(url, spool, state=StudyState.DRAFTED, age_days=OLD_DAYS, export=None),
        "reviewed_old_draft_task_leased": make_study(
            url, spool, age_days=OLD_DAYS, leased_until=utcnow() + timedelta(minutes=2), **finished
        ),
        "out_of_scope_old": make_study(
            url, spool, state=StudyState.OUT_OF_SCOPE, age_days=OLD_DAYS, instance_state=InstanceState.SKIPPED
        ),
        "error_old": make_study(
            url, spool, state=StudyState.ERROR, age_days=OLD_DAYS, instance_state=InstanceState.ERROR
        ),
    }


def _purge(url: str, spool: Path, **kwargs: Any) -> Any:
    return purge_spool(url, spool_root=spool, **{"images_days": KEEP_DAYS, "srs_days": None, **kwargs})


def _ids(filled: dict[str, Made], names: tuple[str, ...] = FINISHED_AND_OLD) -> list[int]:
    return sorted(filled[name].study_id for name in names)


def _purged_instances(url: str) -> set[int]:
    with session_scope(url) as session:
        return set(session.scalars(select(Instance.study_id).where(Instance.purged_at.is_not(None))))


def _purge_events(url: str) -> list[tuple[int | None, str]]:
    with session_scope(url) as session:
        return list(session.execute(select(Event.study_id, Event.message).where(Event.kind == EventKind.PURGED)).all())


def _counts(url: str) -> dict[str, int]:
    with session_scope(url) as session:
        return {
            model.__tablename__: session.scalar(select(func.count()).select_from(model)) or 0
            for model in (Study, Series, Instance, Draft, Export, Review)
        }


# --- The acceptance: only the old finished images go -------------------------------------------------------------


def test_only_the_images_of_old_finished_studies_go_and_their_rows_stay(url, spool, filled):
    rows_before = _counts(url)
    dry = _purge(url, spool, dry_run=True)
    (images,) = dry.kinds
    assert [study.study_id for study in images.studies] == _ids(filled)
    assert images.files == 2 + 3 + 2 and images.size_bytes == (1000 + 1001) * 2 + 1000 + 1001 + 1002
    assert all(path.is_file() for made in filled.values() for path in made.images + made.srs)  # nothing deleted
    assert _purged_instances(url) == set() and _purge_events(url) == []

    done = _purge(url, spool)
    assert {**done.as_json(), "dry_run": True} == dry.as_json()  # the same studies, files and bytes
    for name, made in filled.items():
        gone = name in FINISHED_AND_OLD
        assert [path.exists() for path in made.images] == [not gone] * len(made.images), name
        assert all(path.is_file() for path in made.srs), f"{name}: an SR went without retention_srs_days"
    assert _counts(url) == rows_before  # no row is deleted
    assert _purged_instances(url) == set(_ids(filled))
    events = _purge_events(url)
    assert sorted(study_id for study_id, _ in events) == _ids(filled)
    assert all(message.startswith("images: ") and PATIENT not in message for _, message in events)


def test_a_second_pass_is_harmless(url, spool, filled):
    first = _purge(url, spool)
    with session_scope(url) as session:
        stamps = dict(
            session.execute(select(Instance.id, Instance.purged_at).where(Instance.purged_at.is_not(None))).all()
        )
    second = _purge(url, spool)
    assert first.files == 7 and (second.files, second.kinds[0].studies) == (0, [])
    assert len(_purge_events(url)) == 3
    with session_scope(url) as session:
        again = dict(
            session.execute(select(Instance.id, Instance.purged_at).where(Instance.purged_at.is_not(None))).all()
        )
    assert again == stamps  # the first purge's times are kept


def test_a_file_already_missing_is_fine(url, spool, filled):
    made = filled["reviewed_old"]
    made.images[0].unlink()
    done = _purge(url, spool)
    (study,) = [s for s in done.kinds[0].studies if s.study_id == made.study_id]
    assert [file.size_bytes for file in study.files] == [0, 1001]  # counted, as nothing freed
    with session_scope(url) as session:
        marked = session.scalars(select(Instance.purged_at).where(Instance.study_id == made.study_id)).all()
    assert len(marked) == 2 and None not in marked


def test_srs_go_only_by_their_own_setting(url, spool, filled):
    _purge(url, spool)
    assert all(path.is_file() for made in filled.values() for path in made.srs)
    done = _purge(url, spool, images_days=None, srs_days=KEEP_DAYS)
    assert [kind.kind for kind in done.kinds] == [PurgeKind.SRS]
    assert [study.study_id for study in done.kinds[0].studies] == _ids(filled)
    for name, made in filled.items():
        assert [path.exists() for path in made.srs] == [name not in FINISHED_AND_OLD] * len(made.srs), name
    with session_scope(url) as session:
        marked = set(session.scalars(select(Draft.study_id).where(Draft.purged_at.is_not(None))))
    assert marked == set(_ids(filled))
    assert _counts(url)["drafts"] == sum(len(made.srs) for made in filled.values())


def test_a_study_that_a_late_image_reopens_meanwhile_is_left_alone(url, spool, filled):
    made = filled["reviewed_old"]
    now = utcnow()
    cutoff = now - timedelta(days=KEEP_DAYS)
    with session_scope(url) as session:
        planned = purgeable(session, kind=PurgeKind.IMAGES, cutoff=cutoff, spool_root=spool)
    assert made.study_id in [study.study_id for study in planned]
    with session_scope(url) as session:  # as record_instance re-opens it
        session.execute(
            update(Study)
            .where(Study.id == made.study_id)
            .values(state=StudyState.RECEIVING, generation=2, last_instance_at=now)
        )
    with session_scope(url) as session:
        went = purge_study(
            session, kind=PurgeKind.IMAGES, study_id=made.study_id, cutoff=cutoff, spool_root=spool, now=now
        )
    assert went is None and all(path.is_file() for path in made.images)
    assert _purged_instances(url) == set()


def test_files_outside_the_spool_are_left_where_they_are(url, spool, tmp_path):
    elsewhere = make_study(
        url, spool, state=StudyState.REVIEWED, reviewed=True, age_days=OLD_DAYS, image_folder=tmp_path / "elsewhere"
    )
    done = _purge(url, spool, srs_days=KEEP_DAYS)
    assert [kind.kind for kind in done.kinds] == [PurgeKind.IMAGES, PurgeKind.SRS]
    assert done.kinds[0].studies == [] and [s.study_id for s in done.kinds[1].studies] == [elsewhere.study_id]
    assert all(path.is_file() for path in elsewhere.images) and _purged_instances(url) == set()


def test_days_must_be_positive(url, spool):
    with pytest.raises(ValueError, match="images are kept a positive number of days, not 0"):
        _purge(url, spool, images_days=0)


@pytest.mark.postgres
def test_a_study_another_purge_holds_is_skipped_until_it_is_free(postgres_url, spool):
    url = postgres_url
    held = make_study(url, spool, state=StudyState.REVIEWED, reviewed=True, age_days=OLD_DAYS)
    other = make_study(url, spool, state=StudyState.REVIEWED, reviewed=True, age_days=OLD_DAYS)
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT id FROM studies WHERE id = :id FOR UPDATE"), {"id": held.study_id})
            done = _purge(url, spool)  # does not wait for the lock: it skips that study
            assert [study.study_id for study in done.kinds[0].studies] == [other.study_id]
            assert all(path.is_file() for path in held.images)
            connection.rollback()
    finally:
        engine.dispose()
    assert [study.study_id for study in _purge(url, spool).kinds[0].studies] == [held.study_id]
    assert not any(path.exists() for path in held.images)


# --- The listener runs it; settings ---------------------------------------------------------------------------


@pytest.mark.parametrize("images_days", [None, KEEP_DAYS])
def test_the_listener_purges_when_a_retention_is_set(url, spool, filled, clean_settings_env, images_days):
    values = {"database_url": url, "spool_dir": spool, "retention_images_days": images_days}
    settings = get_settings(var_dir=clean_settings_env / "var", **{k: v for k, v in values.items() if v is not None})
    StabilityMonitor(settings, RecordingCelery()).tick()
    assert _purged_instances(url) == (set(_ids(filled)) if images_days else set())


def test_retention_settings(clean_settings_env, monkeypatch):
    settings = get_settings()
    assert (settings.retention.images_days, settings.retention.srs_days) == (None, None)  # kept forever
    assert settings.retention.interval_seconds == 3600
    monkeypatch.setenv("PREDRAFT_RETENTION_IMAGES_DAYS", "90")
    monkeypatch.setenv("PREDRAFT_RETENTION_SRS_DAYS", "3650")
    assert (get_settings().retention.images_days, get_settings().retention.srs_days) == (90, 3650)
    for name, value in (("retention_images_days", 0), ("retention_srs_days", -1), ("retention_interval_seconds", 0)):
        with pytest.raises(ValidationError, match=rf"{name}\n  Input should be greater than 0"):
            get_settings(**{name: value})


# --- predraft spool ... ----------------------------------------------------------------------------------------


@pytest.fixture
def cli_site(url, spool, clean_settings_env, monkeypatch) -> Iterator[str]:
    monkeypatch.setenv("PREDRAFT_VAR_DIR", str(clean_settings_env / "var"))
    monkeypatch.setenv("PREDRAFT_DATABASE_URL", url)
    monkeypatch.setenv("PREDRAFT_SPOOL_DIR", str(spool))
    yield url


def _run(capsys, *argv: str) -> tuple[int, Any, str]:
    capsys.readouterr()
    code = main(list(argv))
    captured = capsys.readouterr()
    out = json.loads(captured.out) if "--json" in argv and captured.out.strip() else captured.out
    return code, out, captured.err


def test_spool_purge_dry_run_lists_what_would_go_and_deletes_nothing(cli_site, filled, capsys):
    code, report, _ = _run(capsys, "spool", "purge", "--dry-run", "--older-than-days", "30", "--json")
    assert code == 0 and report["dry_run"] is True
    (images,) = report["kinds"]
    assert [study["study_id"] for study in images["studies"]] == _ids(filled)
    assert [study["study_uid"] for study in images["studies"]] == [
        made.study_uid for made in sorted((filled[n] for n in FINISHED_AND_OLD), key=lambda m: m.study_id)
    ]
    assert (report["files"], images["files"]) == (7, 7)
    assert all(path.is_file() for made in filled.values() for path in made.images)
    code, shown, _ = _run(capsys, "spool", "purge", "--dry-run", "--older-than-days", "30")
    assert code == 0 and "would go" in shown and "database rows are kept" in shown
    assert filled["reviewed_old"].study_uid in shown and PATIENT not in shown


def test_spool_purge_asks_first_and_then_purges(cli_site, filled, capsys, monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO("n\n"))
    assert main(["spool", "purge", "--older-than-days", "30"]) == 1  # declined
    assert "Delete 7 file(s)" in capsys.readouterr().err
    assert all(path.is_file() for made in filled.values() for path in made.images)
    code, report, _ = _run(capsys, "spool", "purge", "--older-than-days", "30", "--yes", "--json")
    assert code == 0 and report["dry_run"] is False and report["files"] == 7
    assert _purged_instances(cli_site) == set(_ids(filled))
    code, shown, _ = _run(capsys, "spool", "purge", "--older-than-days", "30", "--yes")
    assert code == 0 and "none" in shown and "total: 0 file(s)" in shown


def test_spool_purge_needs_a_retention(cli_site, capsys):
    code, _, err = _run(capsys, "spool", "purge", "--dry-run")
    assert code == 1 and "retention is off" in err
    assert main(["spool", "purge", "--older-than-days", "0"]) == 2  # a usage error, named


def test_spool_usage(cli_site, filled, spool, capsys, monkeypatch):
    monkeypatch.setenv("PREDRAFT_RETENTION_IMAGES_DAYS", "30")
    monkeypatch.setenv("PREDRAFT_SPOOL_MIN_FREE_BYTES", "0")
    code, usage, _ = _run(capsys, "spool", "usage", "--json")
    images = sum(len(made.images) for made in filled.values())
    assert code == 0 and usage["folders"]["incoming"]["files"] == images
    assert usage["folders"]["sr"]["files"] == sum(len(made.srs) for made in filled.values())
    assert usage["reclaimable"] == {"files": 7, "bytes": (1000 + 1001) * 2 + 1000 + 1001 + 1002}
    assert usage["root"] == str(spool) and usage["below_floor"] is False
    monkeypatch.setenv(
        "PREDRAFT_SPOOL_MIN_FREE_BYTES", str(os.statvfs(spool).f_bavail * os.statvfs(spool).f_frsize * 4)
    )
    code, shown, _ = _run(capsys, "spool", "usage")
    assert code == 1 and "BELOW" in shown and "images after 30 days" in shown
