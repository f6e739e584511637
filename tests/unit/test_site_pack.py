"""A site builds its own pack with predraft's commands (an implant-model pack, as AIMINN's hip stems): it writes a
``pack.toml``, trains the model on its labelled images with ``predraft train --pack``, checks the pack, installs it
by pointing ``PREDRAFT_PACKS_DIR`` at its folder, and the next hip study is drafted by that pack.

The images are generated (phantoms) and relabelled as three stem models: one epoch of a tiny network learns
nothing, and that is not what is tested; every step a site takes is."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pydicom
from sqlalchemy import select

from predraft.cli import main
from predraft.core.db import session_scope
from predraft.core.schema import Draft
from predraft.models.phantoms.dataset import write_phantom_dataset
from tests.inprocess import draft_in_process
from tests.unit.conftest import TINY_ARCHITECTURE, TINY_INPUT_SIZE
from tests.unit.test_packs import STEMS, STEMS_TOML

#: How the phantoms' hip classes become the site's stem models (other hardware is left out of the labels).
RELABEL = {"none": "no_stem", "tha": "stem_a", "tha_plus_fixation": "stem_a", "hemi": "stem_b"}


def _site_labels(phantoms: Path) -> int:
    """Rewrite the phantoms' labels.csv in the site's classes; return how many rows are kept."""
    labels = phantoms / "labels.csv"
    with labels.open(newline="") as handle:
        reader = csv.DictReader(handle)
        columns = reader.fieldnames or []
        rows = [row | {"class": RELABEL[row["class"]]} for row in reader if row["class"] in RELABEL]
    with labels.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, columns)
        writer.writeheader()
        writer.writerows(rows)
    return len(rows)


def test_a_site_trains_checks_installs_and_drafts_with_its_own_pack(tmp_path, clean_settings_env, capsys):
    phantoms = tmp_path / "exports"
    write_phantom_dataset(phantoms, studies=60, seed=5)
    assert _site_labels(phantoms) > 20
    pack = tmp_path / "site-packs" / "stems"
    pack.mkdir(parents=True)
    (pack / "pack.toml").write_text(STEMS_TOML)

    run = tmp_path / "run"
    trained = main(
        ["train", str(phantoms), "--pack", str(pack), "--out", str(run), "--architecture", TINY_ARCHITECTURE,
         "--input-size", str(TINY_INPUT_SIZE), "--head-epochs", "0", "--epochs", "1", "--batch-size", "8",
         "--max-steps-per-epoch", "2", "--name", "site-stems", "--training-data", "generated phantoms"]
    )  # fmt: skip
    assert trained == 0, capsys.readouterr().err
    for name in ("card.json", "weights.safetensors"):
        shutil.copy(run / name, pack / name)
    capsys.readouterr()
    assert main(["packs", "check", str(pack)]) == 0
    assert f"classes ({', '.join(STEMS)})" in capsys.readouterr().out

    study = sorted((phantoms).rglob("*.dcm"))
    first_study = pydicom.dcmread(study[0], stop_before_pixels=True).StudyInstanceUID
    files = [path for path in study if pydicom.dcmread(path, stop_before_pixels=True).StudyInstanceUID == first_study]
    drafted = tmp_path / "drafted"
    drafted.mkdir()
    url = draft_in_process(drafted, files, env={"PREDRAFT_PACKS_DIR": str(pack.parent)})
    with session_scope(url) as session:
        draft = session.scalars(select(Draft)).one()
        assert draft.pack == "stems" and draft.model_name == "site-stems"
        assert {finding["pack"] for finding in draft.findings} == {"stems"}
        assert {finding["top_class"] for finding in draft.findings} <= set(STEMS)
        assert "femoral stem" in draft.text.lower() and "Names the femoral stem's model only" in draft.text
        assert "Total hip arthroplasty" not in draft.text and "orthopedic hardware only" not in draft.text
        sr = pydicom.dcmread(draft.sr_path)
    codes = {
        item.ConceptCodeSequence[0].CodingSchemeDesignator
        for container in sr.ContentSequence
        if container.ValueType == "CONTAINER"
        for item in container.get("ContentSequence", [])
        if item.ValueType == "CODE"
    }
    assert codes <= {"99SITE", "99PREDRAFT"} and codes  # the site's codes (or the indeterminate one), no hip code
