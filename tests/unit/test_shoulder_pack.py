"""The bundled shoulder pack: its contract, its card's attribution, and ``predraft evaluate CARD FOLDER`` on a
folder laid out as the shoulder-implant set is (``images/`` and ``labels.csv`` with ``image, manufacturer``)."""

from __future__ import annotations

import csv
import json
import shutil

import pytest

from predraft.cli import main
from predraft.models.pack import bundled_pack
from predraft.models.shoulder_data import SHOULDER_HOLDOUT
from tests.conftest import REPO_ROOT

IMPLANTS = REPO_ROOT.parent / "shared" / "data" / "shoulder-implants"


def test_the_shoulder_pack_reads_shoulders_with_five_classes_and_attributes_its_data():
    shoulder = bundled_pack("shoulder", verify_weights=True)
    assert shoulder.pack.regions == ("shoulder",) and shoulder.pack.framing == "implant_crop"
    assert shoulder.pack.class_names == ("none", "cofield", "depuy", "tornier", "zimmer")
    assert shoulder.card.trained and "Urban" in shoulder.card.training_data
    assert "not for clinical use" in shoulder.card.training_data
    assert shoulder.pack.sentence(None, "zimmer") == "Shoulder arthroplasty, manufacturer indeterminate."
    assert shoulder.pack.sentence(None, "none") == "Indeterminate, review."


def test_evaluate_reads_a_folder_in_the_shoulder_implant_sets_layout(tmp_path, capsys):
    if not (IMPLANTS / "images").is_dir():
        pytest.skip(f"{IMPLANTS} is absent (../shared/data/shoulder-implants is not checked out)")
    with SHOULDER_HOLDOUT.open(newline="") as handle:
        held = [row for row in csv.DictReader(handle) if row["part"] == "holdout"][:12]
    folder = tmp_path / "set"
    (folder / "images").mkdir(parents=True)
    for row in held:
        shutil.copy(IMPLANTS / "images" / row["image"], folder / "images" / row["image"])
    with (folder / "labels.csv").open("w", newline="") as handle:  # the set's own spelling: "Depuy", "Zimmer"
        writer = csv.writer(handle)
        writer.writerow(["image", "manufacturer"])
        writer.writerows((row["image"], row["manufacturer"]) for row in held)
    card = bundled_pack("shoulder").card_path
    assert main(["evaluate", str(card), str(folder), "--out", str(tmp_path / "out"), "--bootstrap", "20"]) == 0
    assert "image: n=12" in capsys.readouterr().out
    for name in ("image_metrics.json", "study_metrics.json", "image_confusion.png", "predictions.csv"):
        assert (tmp_path / "out" / name).is_file(), name
    report = json.loads((tmp_path / "out" / "study_metrics.json").read_text())
    per_class = report["abstention"]["per_class"]
    assert sum(entry["labelled"] for entry in per_class.values()) == 12
    assert per_class["none"]["labelled"] == 0
    with (tmp_path / "out" / "predictions.csv").open(newline="") as handle:
        assert {row["class"] for row in csv.DictReader(handle)} <= {"cofield", "depuy", "tornier", "zimmer"}
