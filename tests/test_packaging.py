"""The installed distribution: one top-level name, and layers that run one way (import-linter's contract in
pyproject.toml, checked on a regular install of this checkout as CI does in scripts/checks.sh)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _source_copy(folder: Path) -> Path:
    """The checkout's files without what building leaves behind: setuptools would pack a stale build/lib too."""
    copy = folder / "source"
    ignored = shutil.ignore_patterns(".git", ".venv", "build", "dist", "var", "*.egg-info", "__pycache__", "output")
    shutil.copytree(REPO_ROOT, copy, ignore=ignored)
    return copy


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """This checkout installed (not editable) into a folder of its own, without its dependencies."""
    folder = tmp_path_factory.mktemp("installed")
    target = folder / "site"
    source = _source_copy(folder)
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target), str(source)],
        check=True,
        capture_output=True,
    )
    return target


def _lint_imports(installed: Path) -> subprocess.CompletedProcess[str]:
    # Run from the installed folder: lint-imports puts the working directory first on sys.path.
    return subprocess.run(
        [str(LINT_IMPORTS), str(REPO_ROOT / "pyproject.toml")],
        cwd=installed,
        text=True,
        capture_output=True,
        env={"PYTHONPATH": str(installed), "PATH": "/usr/bin:/bin"},
    )


@pytest.mark.slow
def test_the_wheel_installs_nothing_but_predraft(tmp_path):
    source = _source_copy(tmp_path)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", str(tmp_path), str(source)],
        check=True,
        capture_output=True,
    )
    [wheel] = tmp_path.glob("predraft-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    assert {name.split("/")[0] for name in names} == {"predraft", wheel.name.split("-py3")[0] + ".dist-info"}
    # The stage folders are subpackages, with their data: templates, the bundled models, the migrations.
    for path in (
        "predraft/listener/spool.py",
        "predraft/workers/tasks.py",
        "predraft/models/gate/weights.safetensors",
        "predraft/models/packs/hip/pack.toml",
        "predraft/models/packs/hip/card.json",
        "predraft/models/packs/hip/weights.safetensors",
        "predraft/models/packs/shoulder/card.json",
        "predraft/models/packs/shoulder/templates/finding.txt.j2",
        "predraft/reporting/templates/draft.txt.j2",
        "predraft/worklist/templates/worklist.html.j2",
        "predraft/migrations/versions/0001_initial_schema.py",
        "predraft/core/settings.py",
    ):
        assert path in names, path


@pytest.mark.slow
def test_the_layer_contract_holds_and_a_wrong_way_import_breaks_it(installed):
    kept = _lint_imports(installed)
    assert kept.returncode == 0, kept.stdout + kept.stderr
    assert "Layers run one way KEPT" in kept.stdout

    # The foundation reaching up into the workers, the kind of arrow the layers forbid:
    clock = installed / "predraft" / "core" / "clock.py"
    clock.write_text(clock.read_text() + "\nfrom predraft.workers import dispatch  # noqa\n")
    broken = _lint_imports(installed)
    assert broken.returncode == 1, broken.stdout + broken.stderr
    assert "Layers run one way BROKEN" in broken.stdout
    assert "predraft.core.clock -> predraft.workers.dispatch" in broken.stdout
