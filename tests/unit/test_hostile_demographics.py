"""Hostile demographics (issue 14, item 5): a study is drafted whatever its patient attributes hold, and no
patient value reaches a log, stderr or a study's error text, with logging set up as a worker process does."""

from __future__ import annotations

import logging
import uuid
import warnings
from pathlib import Path

import pydicom
import pytest
from pydicom.valuerep import DA
from sqlalchemy import select

from predraft.core.bootstrap import configure_logging
from predraft.core.db import session_scope
from predraft.core.schema import Draft, Event, Study
from predraft.core.settings import get_settings
from predraft.core.states import StudyState
from predraft.workers import tasks
from tests.unit.conftest import drafting_study

BAD_BIRTH_DATE = "1975-03-02"


@pytest.fixture
def process_logging(clean_settings_env: Path, caplog: pytest.LogCaptureFixture):
    """Logging as a predraft worker has it: configure_logging, then Celery's logging.captureWarnings(True);
    caplog still sees every record. Everything is put back afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    levels = {name: logging.getLogger(name).level for name in ("pydicom", "highdicom", "py.warnings")}
    filters, showwarning, formatwarning = warnings.filters[:], warnings.showwarning, warnings.formatwarning
    configure_logging(get_settings(var_dir=clean_settings_env))
    logging.captureWarnings(True)
    root.addHandler(caplog.handler)
    caplog.set_level(logging.DEBUG)
    yield caplog
    logging.captureWarnings(False)
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, old in levels.items():
        logging.getLogger(name).setLevel(old)
    warnings.filters[:], warnings.showwarning, warnings.formatwarning = filters, showwarning, formatwarning


def _everything_written(caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]) -> str:
    records = "\n".join(record.getMessage() + (record.exc_text or "") for record in caplog.records)
    out, err = capfd.readouterr()
    return "\n".join([records, caplog.text, out, err])


def test_a_name_without_caret_is_kept_in_the_sr_and_never_logged(
    process_logging, task_env, demo_study, tmp_path, capfd
):
    canary = f"CANARY {uuid.uuid4().hex[:12].upper()}"  # no "^": highdicom warns about it, quoting it
    study_id = drafting_study(task_env, demo_study, tmp_path / "images", PatientName=canary)

    tasks.draft.run(study_id, 1)

    with session_scope(task_env) as session:
        study = session.get(Study, study_id)
        assert study.state == StudyState.DRAFTED, study.error
        sr = pydicom.dcmread(session.scalars(select(Draft.sr_path)).one())
    assert str(sr.PatientName) == canary  # valid DICOM (one component): kept as it is
    written = _everything_written(process_logging, capfd)
    assert "drafted" in written  # the logs were captured
    assert canary not in written


def test_a_malformed_birth_date_is_emptied_and_the_study_drafted(
    process_logging, task_env, demo_study, tmp_path, capfd
):
    canary = f"CANARY^{uuid.uuid4().hex[:12].upper()}"
    study_id = drafting_study(
        task_env, demo_study, tmp_path / "images", PatientName=canary, PatientBirthDate=BAD_BIRTH_DATE
    )

    tasks.draft.run(study_id, 1)

    with session_scope(task_env) as session:
        study = session.get(Study, study_id)
        assert (study.state, study.error) == (StudyState.DRAFTED, None)
        sr = pydicom.dcmread(session.scalars(select(Draft.sr_path)).one())
        events = " ".join(session.scalars(select(Event.message)).all())
    assert sr.PatientBirthDate == ""  # emptied, never rewritten to 19750302
    assert str(sr.PatientName) == canary
    written = _everything_written(process_logging, capfd) + events
    assert BAD_BIRTH_DATE not in written and canary not in written


def test_a_library_error_quoting_a_value_leaves_no_value_in_the_error_text_or_the_log(
    process_logging, task_env, demo_study, tmp_path, monkeypatch, capfd
):
    study_id = drafting_study(task_env, demo_study, tmp_path / "images")

    def quoting(*_args, **_kwargs):
        DA(BAD_BIRTH_DATE)  # pydicom raises ValueError, quoting the value

    monkeypatch.setattr(tasks, "draft_study", quoting)
    with pytest.raises(ValueError, match=BAD_BIRTH_DATE):
        quoting()

    tasks.draft.run(study_id, 1)

    with session_scope(task_env) as session:
        study = session.get(Study, study_id)
        assert study.state == StudyState.ERROR
        assert study.error.startswith("drafting failed: ValueError")
        events = " ".join(session.scalars(select(Event.message)).all())
    written = _everything_written(process_logging, capfd)
    assert "could not be drafted" in written
    assert BAD_BIRTH_DATE not in study.error + events + written


def test_a_dead_letter_keeps_no_library_message(process_logging, task_env, capfd) -> None:
    """A task that fails for good is recorded and logged without the message of an exception raised in a
    library (pydicom quotes the value it could not read), in its error and its traceback alike."""
    from predraft.core.schema import DeadLetter

    try:
        DA(BAD_BIRTH_DATE)
    except ValueError as exc:
        assert BAD_BIRTH_DATE in str(exc)  # the library does quote it
        tasks.draft.on_failure(exc, "task-0001", (), {}, None)
    with session_scope(task_env) as session:
        letter = session.scalars(select(DeadLetter)).one()
        stored = f"{letter.error}\n{letter.traceback}"
    assert letter.task_name == tasks.draft.name and "ValueError" in letter.error
    assert "valuerep.py" in letter.traceback  # where it was raised is kept
    written = _everything_written(process_logging, capfd)
    assert "failed for good" in written
    assert BAD_BIRTH_DATE not in stored and BAD_BIRTH_DATE not in written
