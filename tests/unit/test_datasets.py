"""Labels CSV, the patient-level stratified split, and preparing PNG data folders."""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from predraft.models.datasets import (
    LabelRow,
    LabelsError,
    patient_stratum,
    prepare_images,
    read_labels,
    read_split,
    split_patients,
    write_split,
)
from predraft.models.taxonomy import CLASS_ORDER, HardwareClass, Side, View

HEADER = ["patient", "study", "image", "side", "class", "view"]


def _write_labels(folder: Path, rows: list[list[str]], header: list[str] = HEADER) -> None:
    with (folder / "labels.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)


def _png(path: Path, pixels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


def test_read_labels_parses_rows(tmp_path: Path) -> None:
    _png(tmp_path / "a.png", np.zeros((20, 20), np.uint8))
    _write_labels(
        tmp_path, [["p1", "s1", "a.png", "Right", "THA", "ap_hip"], ["p1", "s1", "a.png", "left", "none", ""]]
    )
    rows = read_labels(tmp_path)
    assert rows == [
        LabelRow("p1", "s1", "a.png", Side.RIGHT, HardwareClass.THA, View.AP_HIP),
        LabelRow("p1", "s1", "a.png", Side.LEFT, HardwareClass.NONE, None),
    ]


@pytest.mark.parametrize(
    ("rows", "header", "message"),
    [
        ([["p1", "s1", "a.png", "right", "tha", ""]], ["patient", "study", "image", "side"], "lacks the column"),
        ([["p1", "s1", "a.png", "middle", "tha", ""]], HEADER, "line 2"),
        ([["p1", "s1", "a.png", "right", "screws", ""]], HEADER, "class 'screws' is not one of none, tha"),
        ([["p1", "s1", "missing.png", "right", "tha", ""]], HEADER, "missing.png does not exist"),
        (
            [["p1", "s1", "a.png", "right", "tha", ""], ["p1", "s1", "a.png", "right", "none", ""]],
            HEADER,
            "labelled twice",
        ),
        ([["", "s1", "a.png", "right", "tha", ""]], HEADER, "'patient' is empty"),
        ([], HEADER, "holds no rows"),
    ],
)
def test_read_labels_refuses_bad_csv(tmp_path: Path, rows: list[list[str]], header: list[str], message: str) -> None:
    _png(tmp_path / "a.png", np.zeros((20, 20), np.uint8))
    _write_labels(tmp_path, rows, header)
    with pytest.raises(LabelsError, match=message):
        read_labels(tmp_path)


def test_missing_labels_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(LabelsError, match="labels.csv does not exist"):
        read_labels(tmp_path)


def test_patient_stratum_is_the_hardware_not_the_native_side() -> None:
    rows = [
        LabelRow("p", "s", "a", Side.RIGHT, HardwareClass.NONE),
        LabelRow("p", "s", "a", Side.LEFT, HardwareClass.DHS),
    ]
    assert patient_stratum(rows) == HardwareClass.DHS
    assert patient_stratum(rows[:1]) == HardwareClass.NONE
    # a pack of its own classes: the first is the one a patient falls back to
    assert patient_stratum(rows, ("none", "dhs")) == "dhs" and patient_stratum(rows[1:], ("dhs", "none")) == "dhs"


def _synthetic_rows(per_class: int) -> list[LabelRow]:
    rows = []
    for hardware in CLASS_ORDER:
        for index in range(per_class):
            patient = f"{hardware.value}-{index}"
            for study in range(1 + index % 2):  # some patients have two studies
                rows.append(LabelRow(patient, f"{patient}-s{study}", f"{patient}-{study}.dcm", Side.RIGHT, hardware))
                rows.append(
                    LabelRow(patient, f"{patient}-s{study}", f"{patient}-{study}.dcm", Side.LEFT, HardwareClass.NONE)
                )
    return rows


def test_split_is_by_patient_stratified_and_deterministic() -> None:
    rows = _synthetic_rows(per_class=20)
    assignment = split_patients(rows, seed=3)
    assert assignment == split_patients(rows, seed=3)
    assert assignment != split_patients(rows, seed=4)
    assert set(assignment) == {row.patient for row in rows}
    for hardware in CLASS_ORDER:  # 20 patients per class: 14 / 2 / 4
        counts = Counter(split for patient, split in assignment.items() if patient.startswith(hardware.value + "-"))
        assert counts == {"train": 14, "validation": 2, "test": 4}, hardware
    # a patient's studies never straddle two sets
    by_study_split = {(row.patient, assignment[row.patient]) for row in rows}
    assert len(by_study_split) == len(assignment)


def test_split_refuses_bad_fractions() -> None:
    with pytest.raises(ValueError, match="fractions"):
        split_patients(_synthetic_rows(2), fractions=(0.8, 0.1, 0.2))


def test_split_file_round_trips(tmp_path: Path) -> None:
    assignment = split_patients(_synthetic_rows(5), seed=0)
    write_split(assignment, tmp_path / "split.csv")
    assert read_split(tmp_path / "split.csv") == assignment
    (tmp_path / "bad.csv").write_text("patient,split\np1,holdout\n")
    with pytest.raises(LabelsError, match="holdout"):
        read_split(tmp_path / "bad.csv")


def test_prepare_png_single_hip_and_pelvis(tmp_path: Path) -> None:
    pelvis = np.zeros((100, 200), np.uint8)
    pelvis[40:60, 20:40] = 255  # a bright square on the image's left: the patient's right hip
    hip = np.full((80, 40), 128, np.uint8)
    _png(tmp_path / "pelvis.png", pelvis)
    _png(tmp_path / "hip.png", hip)
    _write_labels(
        tmp_path,
        [
            ["p", "s", "pelvis.png", "right", "tha", "ap_pelvis"],
            ["p", "s", "pelvis.png", "left", "none", "ap_pelvis"],
            ["p", "s", "hip.png", "left", "hemi", "ap_hip"],
        ],
    )
    rows = read_labels(tmp_path)
    prepared = prepare_images(tmp_path, rows, input_size=32, workers=1, cache_dir=tmp_path / "cache")
    assert prepared.pixels.shape == (3, 32, 32) and prepared.pixels.dtype == np.uint8
    assert prepared.pixels[0].max() == 255 and prepared.pixels[1].max() == 0  # the square is in the right half
    assert list(prepared.targets(CLASS_ORDER)) == [
        CLASS_ORDER.index(HardwareClass.THA),
        0,
        CLASS_ORDER.index(HardwareClass.HEMI),
    ]
    cached = list((tmp_path / "cache").glob("prepared-32px-*.npz"))
    assert len(cached) == 1
    again = prepare_images(tmp_path, rows, input_size=32, workers=1, cache_dir=tmp_path / "cache")
    assert np.array_equal(again.pixels, prepared.pixels)


def test_prepare_reports_an_unreadable_image(tmp_path: Path) -> None:
    (tmp_path / "broken.dcm").write_bytes(b"not dicom at all")
    _write_labels(tmp_path, [["p", "s", "broken.dcm", "right", "tha", ""]])
    with pytest.raises(LabelsError, match="broken.dcm cannot be prepared"):
        prepare_images(tmp_path, read_labels(tmp_path), input_size=32, workers=1)


def test_an_image_set_in_its_own_layout_is_read_with_case_blind_classes(tmp_path) -> None:
    (tmp_path / "images").mkdir()
    for name in ("a.jpg", "b.jpg"):
        Image.fromarray(np.full((40, 30), 128, dtype=np.uint8)).save(tmp_path / "images" / name)
    (tmp_path / "labels.csv").write_text("image,manufacturer\na.jpg,Zimmer\nb.jpg,DEPUY\n")
    rows = read_labels(tmp_path, ("none", "depuy", "zimmer"))
    assert [(row.patient, row.image, row.side, row.hardware) for row in rows] == [
        ("a", "images/a.jpg", Side.UNKNOWN, "zimmer"),
        ("b", "images/b.jpg", Side.UNKNOWN, "depuy"),
    ]
    (tmp_path / "labels.csv").write_text("image,manufacturer\na.jpg,Tornier\n")
    with pytest.raises(LabelsError, match=r"line 2: class 'tornier' is not one of none, depuy, zimmer"):
        read_labels(tmp_path, ("none", "depuy", "zimmer"))
    (tmp_path / "labels.csv").write_text("image,manufacturer\nc.jpg,Zimmer\n")
    with pytest.raises(LabelsError, match="image c.jpg does not exist"):
        read_labels(tmp_path, ("none", "depuy", "zimmer"))
