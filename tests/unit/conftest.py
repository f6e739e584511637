"""Fixtures of the unit suite: real radiographs, a clean settings environment, a migrated SQLite
database, the demo phantom study and a tiny untrained model."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

#: Real DICOM radiographs shared beside the repository (see MANIFEST.md there).
REAL_DIR = Path(__file__).resolve().parents[3] / "shared" / "data" / "real"

TINY_ARCHITECTURE = "test_efficientnet"
TINY_INPUT_SIZE = 64


@pytest.fixture
def real_path():
    """``real_path("RG2_UNC.dcm")``: the path of a real test file; skips when the folder is absent."""

    def _path(name: str) -> Path:
        if not REAL_DIR.is_dir():
            pytest.skip(f"real DICOM test files not found: {REAL_DIR} is absent")
        path = REAL_DIR / name
        if not path.is_file():
            pytest.skip(f"real DICOM test file {path} is absent")
        return path

    return _path


@pytest.fixture
def clean_settings_env(monkeypatch, tmp_path):
    """No PREDRAFT_* variables from the caller's shell, and the working directory a fresh folder."""
    for name in list(os.environ):
        if name.startswith("PREDRAFT_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def sqlite_url(tmp_path) -> str:
    """A fresh SQLite database migrated to head by predraft.core.db.upgrade."""
    from predraft.core.db import upgrade

    url = f"sqlite:///{tmp_path}/db.sqlite"
    upgrade(url)
    return url


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def any_url(request: pytest.FixtureRequest) -> str:
    """The same test on a fresh SQLite and a fresh PostgreSQL database (their INSERT ... ON CONFLICT answers and
    their locking differ)."""
    return request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "postgres_url")


@pytest.fixture(scope="session")
def demo_study(tmp_path_factory):
    """The three-view demo phantom study: AP pelvis, right frog-leg, right cross-table lateral."""
    from predraft.models.phantoms import write_demo_study

    return write_demo_study(tmp_path_factory.mktemp("demo-study"))


@pytest.fixture(scope="session")
def tiny_card_path(tmp_path_factory) -> Path:
    """A tiny untrained timm model and its card."""
    from predraft.models.factory import write_untrained_model

    return write_untrained_model(
        tmp_path_factory.mktemp("tiny-model"), architecture=TINY_ARCHITECTURE, input_size=TINY_INPUT_SIZE
    )


#: Predictions of the hips of :func:`drafting_study`'s images.
DRAFTED_PROBABILITIES = {"right": {"tha": 0.9, "none": 0.1}, "left": {"none": 0.8, "tha": 0.2}}


@pytest.fixture
def task_env(sqlite_url, tiny_card_path, tmp_path, monkeypatch):
    """The draft task's settings (SQLite, the tiny model, a spool under tmp_path) and a recording Celery app."""
    from predraft.workers import tasks
    from tests.inprocess import RecordingCelery

    for key, value in {
        "PREDRAFT_DATABASE_URL": sqlite_url,
        "PREDRAFT_MODEL": str(tiny_card_path),
        "PREDRAFT_VAR_DIR": str(tmp_path / "var"),
    }.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(tasks.draft, "app", RecordingCelery())
    tasks._settings.cache_clear()
    yield sqlite_url
    tasks._settings.cache_clear()


def drafting_study(url: str, demo_study, folder: Path, **attributes: str) -> int:
    """The demo study with ``attributes`` set on each image, classified (the right hip THA, the left none), its
    study DRAFTING."""
    import pydicom

    from predraft.core.db import session_scope
    from predraft.core.schema import Study, utcnow
    from predraft.core.settings import get_settings
    from predraft.core.states import StudyState
    from tests.unit.test_workflow import _classify_all, _ingest

    folder.mkdir()
    paths = []
    for image in demo_study:
        ds = pydicom.dcmread(image.path)
        for keyword, value in attributes.items():
            setattr(ds, keyword, value)
        paths.append(folder / image.path.name)
        ds.save_as(paths[-1])
    study_id = _ingest(url, paths)
    card = get_settings().model.hip_pack.card
    _classify_all(url, card, DRAFTED_PROBABILITIES)
    with session_scope(url) as session:
        study = session.get(Study, study_id)
        study.state, study.ready_at = StudyState.DRAFTING, utcnow()
    return study_id


def hip_pack_for(card):
    """The bundled hip pack with ``card`` as its model (as PREDRAFT_MODEL makes it)."""
    import dataclasses

    from predraft.models.pack import bundled_pack

    return dataclasses.replace(bundled_pack(), card=card)
