"""The held-out part of a labelled set (predraft.models.holdout, ``predraft holdout``), and the shoulder
implant set's held-out part kept in models/data/."""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import pytest

from predraft.cli import main
from predraft.models.holdout import DEVELOPMENT, HOLDOUT, HoldoutError, read_labels, stratified_holdout

REPO = Path(__file__).resolve().parents[2]
SHOULDER_LABELS = REPO.parent / "shared" / "data" / "shoulder-implants" / "labels.csv"
SHOULDER_HOLDOUT = REPO / "models" / "data" / "shoulder_implants_holdout.csv"


def _labels(**counts: int) -> dict[str, str]:
    return {f"{label}.{number}.jpg": label for label, count in counts.items() for number in range(count)}


def test_each_label_holds_out_its_share_and_the_same_seed_the_same_items():
    labels = _labels(depuy=235, zimmer=119, cofield=66, tornier=57, rare=2)
    assignment = stratified_holdout(labels, fraction=0.2, seed=0)
    held = Counter(labels[item] for item, part in assignment.items() if part == HOLDOUT)
    assert held == {"depuy": 47, "zimmer": 24, "cofield": 13, "tornier": 11, "rare": 1}
    assert set(assignment.values()) == {HOLDOUT, DEVELOPMENT} and set(assignment) == set(labels)
    assert stratified_holdout(dict(reversed(list(labels.items()))), fraction=0.2, seed=0) == assignment
    assert stratified_holdout(labels, fraction=0.2, seed=1) != assignment


@pytest.mark.parametrize(
    ("labels", "fraction", "message"),
    [
        ({"a.jpg": "x"}, 0.0, "between 0 and 1"),
        ({"a.jpg": "x"}, 1.0, "between 0 and 1"),
        ({}, 0.2, "no labelled items"),
    ],
)
def test_an_impossible_split_is_refused(labels, fraction, message):
    with pytest.raises(HoldoutError, match=message):
        stratified_holdout(labels, fraction=fraction, seed=0)


def test_labels_naming_an_image_twice_or_lacking_a_column_are_refused(tmp_path):
    twice = tmp_path / "twice.csv"
    twice.write_text("image,manufacturer\na.jpg,Zimmer\na.jpg,Depuy\n")
    with pytest.raises(HoldoutError, match="names 'a.jpg' twice"):
        read_labels(twice, item_column="image", label_column="manufacturer")
    with pytest.raises(HoldoutError, match="no column model"):
        read_labels(twice, item_column="image", label_column="model")


def test_the_command_writes_the_split_and_says_what_it_held_out(tmp_path, capsys):
    labels = tmp_path / "labels.csv"
    labels.write_text("image,kind\n" + "".join(f"{n}.jpg,{'a' if n % 3 else 'b'}\n" for n in range(30)))
    out = tmp_path / "split.csv"
    assert main(["holdout", str(labels), "--label-column", "kind", "--out", str(out)]) == 0
    rows = list(csv.DictReader(out.open()))
    assert Counter((row["kind"], row["part"]) for row in rows) == {
        ("a", DEVELOPMENT): 16,
        ("a", HOLDOUT): 4,
        ("b", DEVELOPMENT): 8,
        ("b", HOLDOUT): 2,
    }
    said = capsys.readouterr().out
    assert "a: 4 of 20 held out" in said and f"wrote {out} (6 of 30 held out)" in said


def test_the_shoulder_sets_held_out_part_is_the_one_the_command_makes_from_its_labels(tmp_path):
    """models/data/shoulder_implants_holdout.csv was made from the labels alone, before any image was opened;
    making it again gives the same file, so every run holds out the same 95 images."""
    out = tmp_path / "again.csv"
    assert main(["holdout", str(SHOULDER_LABELS), "--label-column", "manufacturer", "--out", str(out)]) == 0
    assert out.read_text() == SHOULDER_HOLDOUT.read_text()
    parts = Counter(row["part"] for row in csv.DictReader(SHOULDER_HOLDOUT.open()))
    assert parts == {DEVELOPMENT: 382, HOLDOUT: 95}
