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
    """A fresh SQLite database migrated to head by predraft.db.upgrade."""
    from predraft.db import upgrade

    url = f"sqlite:///{tmp_path}/db.sqlite"
    upgrade(url)
    return url


@pytest.fixture(scope="session")
def demo_study(tmp_path_factory):
    """The three-view demo phantom study: AP pelvis, right frog-leg, right cross-table lateral."""
    from models.phantoms import write_demo_study

    return write_demo_study(tmp_path_factory.mktemp("demo-study"))


@pytest.fixture(scope="session")
def tiny_card_path(tmp_path_factory) -> Path:
    """A tiny untrained timm model and its card."""
    from models.factory import write_untrained_model

    return write_untrained_model(tmp_path_factory.mktemp("tiny-model"), architecture=TINY_ARCHITECTURE,
                                 input_size=TINY_INPUT_SIZE)
