"""predraft.models.phantoms: deterministic data sets whose every image the view rules and the pixel pipeline read as
labelled, realistic DICOM, hardware of every class visible and distinct at 160 px, and the CLI.

Contact sheets (letterboxed pipeline outputs per class, each view x two patients) go to
$PREDRAFT_TEST_OUTPUT (default tests/output/, git-ignored) for a look by eye.
"""

from __future__ import annotations

import csv
import hashlib
import itertools
import os
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.uid import ExplicitVRLittleEndian

from predraft.cli import main
from predraft.models.phantoms import (
    LABEL_COLUMNS,
    plan_studies,
    render_picture,
    summarise_labels,
    write_demo_study,
    write_phantom_dataset,
)
from predraft.models.phantoms.anatomy import sample_anatomy
from predraft.models.phantoms.dataset import ImagePlan, StudyPlan, write_study
from predraft.models.phantoms.dicom import Encoding
from predraft.models.phantoms.hardware import build_implant
from predraft.models.phantoms.render import Acquisition, render
from predraft.models.prepare import prepare_file
from predraft.models.taxonomy import CLASS_ORDER, RADIOGRAPH_SOP_CLASSES, HardwareClass, Side, View
from predraft.models.views import classify_view

INPUT_SIZE = 160
OUTPUT_DIR = Path(os.environ.get("PREDRAFT_TEST_OUTPUT", Path(__file__).resolve().parents[1] / "output"))
ONE_HIP_VIEWS = (View.AP_HIP, View.FROG_LEG, View.CROSS_TABLE_LATERAL)


def _labels(folder: Path) -> list[dict[str, str]]:
    with (folder / "labels.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


def _digests(folder: Path) -> dict[str, str]:
    return {
        path.relative_to(folder).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """40 studies at 320 px: enough images for every plan, modality, encoding and tag profile."""
    folder = tmp_path_factory.mktemp("phantom-set")
    write_phantom_dataset(folder, studies=40, seed=7, size=320)
    return folder


# --- determinism ------------------------------------------------------------------------------------------------


def test_the_same_seed_writes_byte_identical_files(tmp_path):
    first = write_phantom_dataset(tmp_path / "a", studies=4, seed=3, size=256).parent
    second = write_phantom_dataset(tmp_path / "b", studies=4, seed=3, size=256, jobs=2).parent
    assert _digests(first) == _digests(second)
    uids = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in first.rglob("*.dcm")}
    assert uids == {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in second.rglob("*.dcm")}


def test_another_seed_writes_other_images_and_uids(tmp_path):
    first = write_phantom_dataset(tmp_path / "a", studies=2, seed=3, size=256).parent
    other = write_phantom_dataset(tmp_path / "b", studies=2, seed=4, size=256).parent
    assert set(_digests(first).values()).isdisjoint(_digests(other).values())
    studies = {row["study"] for row in _labels(first)}
    assert studies.isdisjoint(row["study"] for row in _labels(other))


# --- the labels CSV and the study plans ---------------------------------------------------------------------------


def test_labels_have_one_row_per_image_and_visible_hip(dataset):
    rows = _labels(dataset)
    with (dataset / "labels.csv").open() as handle:
        assert handle.readline().strip() == ",".join(LABEL_COLUMNS)
    per_image = defaultdict(list)
    for row in rows:
        assert (dataset / row["image"]).is_file()
        per_image[row["image"]].append(row)
        HardwareClass(row["class"])
    for image, image_rows in per_image.items():
        view = View(image_rows[0]["view"])
        expected = ["right", "left"] if view is View.AP_PELVIS else [image_rows[0]["side"]]
        assert [row["side"] for row in image_rows] == expected, image
        assert image_rows[0]["side"] in {"right", "left"}
        ds = pydicom.dcmread(dataset / image, stop_before_pixels=True)
        assert (ds.PatientID, ds.StudyInstanceUID) == (image_rows[0]["patient"], image_rows[0]["study"])
    assert {View(row["view"]) for row in rows} == {View.AP_PELVIS, *ONE_HIP_VIEWS}


def test_patients_keep_their_hardware_across_two_studies(dataset):
    studies, hardware = defaultdict(set), defaultdict(set)
    for row in _labels(dataset):
        studies[row["patient"]].add(row["study"])
        hardware[(row["patient"], row["side"])].add(row["class"])
    assert any(len(uids) == 2 for uids in studies.values())
    assert sum(len(uids) == 1 for uids in studies.values()) > len(studies) / 2
    assert all(len(classes) == 1 for classes in hardware.values())
    summary = summarise_labels(dataset / "labels.csv")
    assert (summary.patients, summary.studies) == (len(studies), 40)


def test_operated_sides_are_balanced_over_the_nine_classes():
    plans = plan_studies(3000, seed=1)
    operated = Counter()
    both = 0
    for plan in plans:
        classes = list(plan.hardware.values())
        operated[max(classes, key=lambda c: c is not HardwareClass.NONE)] += plan.visit == 0
        both += all(c is not HardwareClass.NONE for c in classes) and plan.visit == 0
    first_visits = sum(operated.values())
    for hardware in CLASS_ORDER[1:]:  # "none" also gains the patients drawn none on both sides
        assert abs(operated[hardware] / first_visits - 1 / 9) < 0.025, (hardware, operated[hardware])
    assert 0.1 < both / first_visits < 0.3
    assert {plan.plan for plan in plans} >= {"pelvis", "pelvis_frog_cross", "hip_cross", "bilateral_pelvis"}


def test_plans_refuse_no_studies():
    with pytest.raises(ValueError, match="studies must be at least 1, got 0"):
        plan_studies(0, seed=1)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"size": 64}, "size must be at least 128 pixels, got 64"),
        ({"jobs": 0}, "jobs must be at least 1, got 0"),
    ],
)
def test_bad_dataset_arguments_are_refused(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        write_phantom_dataset(tmp_path, studies=1, seed=0, **kwargs)


def test_bad_encoding_and_hardware_are_refused():
    with pytest.raises(ValueError, match="bits_stored must be 10 to 16, got 9"):
        Encoding(bits_stored=9)
    with pytest.raises(ValueError, match="INVERSE is only written with MONOCHROME1"):
        Encoding(photometric="MONOCHROME2", presentation_lut="INVERSE")
    anatomy = sample_anatomy(np.random.default_rng(0))
    with pytest.raises(ValueError, match="'screws' is not a valid HardwareClass"):
        build_implant("screws", anatomy.femurs[Side.RIGHT], np.random.default_rng(0))
    with pytest.raises(ValueError, match="a frog-leg lateral shows one hip"):
        render(anatomy, {}, View.FROG_LEG, None, size=256, acquisition=Acquisition(), rng=np.random.default_rng(0))


# --- every image is read as labelled ----------------------------------------------------------------------------


def test_every_image_passes_the_view_rules_and_the_pipeline_as_labelled(dataset):
    per_image = defaultdict(list)
    for row in _labels(dataset):
        per_image[row["image"]].append(row)
    for image, rows in per_image.items():
        sides = tuple(Side(row["side"]) for row in rows)
        result = classify_view(pydicom.dcmread(dataset / image, stop_before_pixels=True))
        assert (result.view, result.sides, result.in_scope) == (View(rows[0]["view"]), sides, True), image
        labels, hips, *_ = prepare_file(dataset / image, input_size=INPUT_SIZE)
        assert tuple(hip.side for hip in hips) == sides, image
        assert all(hip.pixels.shape == (INPUT_SIZE, INPUT_SIZE) and hip.pixels.std() > 10 for hip in hips), image


def test_tags_vary_as_real_radiographs_do(dataset):
    headers = [pydicom.dcmread(path, stop_before_pixels=True) for path in sorted(dataset.rglob("*.dcm"))]
    assert {ds.Modality for ds in headers} == {"CR", "DX"}
    assert {ds.PhotometricInterpretation for ds in headers} == {"MONOCHROME1", "MONOCHROME2"}
    bits = {int(ds.BitsStored) for ds in headers}
    assert min(bits) >= 10 and max(bits) <= 16 and len(bits) >= 3
    for keyword in ("ViewPosition", "BodyPartExamined", "PatientOrientation", "SeriesDescription"):
        present = sum(bool(ds.get(keyword)) for ds in headers)
        assert len(headers) / 2 < present < len(headers), keyword  # empty or missing on some images
    assert any("BodyPartExamined" in ds and not ds.BodyPartExamined for ds in headers)  # Type 2, sent empty
    assert any("BodyPartExamined" not in ds for ds in headers)  # or left out
    assert any(isinstance(ds.get("WindowCenter"), pydicom.multival.MultiValue) for ds in headers)  # two windows
    assert any("RescaleSlope" in ds for ds in headers if ds.Modality == "CR")
    assert any("RescaleSlope" not in ds for ds in headers if ds.Modality == "CR")
    descriptions = {str(ds.get("SeriesDescription", "")) for ds in headers}
    assert any(text != text.upper() for text in descriptions)  # free text, not only coded upper case


def test_headers_are_those_of_cr_and_dx_for_presentation(dataset):
    series = set()
    studies = defaultdict(set)
    for path in sorted(dataset.rglob("*.dcm")):
        ds = pydicom.dcmread(path)
        assert ds.preamble is not None and ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert ds.SOPClassUID == ds.file_meta.MediaStorageSOPClassUID
        assert ds.SOPClassUID == RADIOGRAPH_SOP_CLASSES[ds.Modality == "DX"]
        for keyword in (
            "PatientName",
            "PatientID",
            "AccessionNumber",
            "StudyDate",
            "StudyDescription",
            "PixelSpacing",
            "SeriesInstanceUID",
            "Manufacturer",
        ):
            assert ds.get(keyword), (path, keyword)
        assert 0.2 < float(ds.PixelSpacing[0]) < 2.0
        assert int(ds.pixel_array.max()) < 2 ** int(ds.BitsStored)
        if ds.Modality == "DX":
            assert ds.PresentationIntentType == "FOR PRESENTATION"
            assert "WindowCenter" in ds and "RescaleSlope" in ds
            expected = "INVERSE" if ds.PhotometricInterpretation == "MONOCHROME1" else "IDENTITY"
            assert ds.PresentationLUTShape == expected
        elif "PresentationLUTShape" in ds:
            assert (ds.PresentationLUTShape == "INVERSE") == (ds.PhotometricInterpretation == "MONOCHROME1")
        series.add(ds.SeriesInstanceUID)
        studies[ds.StudyInstanceUID].add(ds.AccessionNumber)
    assert len(series) == len(list(dataset.rglob("*.dcm")))  # one series per image
    assert all(len(accessions) == 1 for accessions in studies.values())


# --- hardware: on the right side, visible and distinct at 160 px on every view ---------------------------------


def test_ap_pelvis_shows_the_patients_right_on_the_images_left():
    image = render_picture(HardwareClass.THA, view=View.AP_PELVIS, side=Side.RIGHT, size=400)
    metal = image >= 0.97
    half = image.shape[1] // 2
    assert metal[:, :half].sum() > 200 and metal[:, half:].sum() == 0


_VIEWS = (View.AP_PELVIS, View.AP_HIP, View.FROG_LEG, View.CROSS_TABLE_LATERAL)


@pytest.fixture(scope="module")
def hips_by_class(tmp_path_factory) -> dict[tuple[int, View, HardwareClass], np.ndarray]:
    """The pipeline's 160 px right hip per (patient, view, class): same patient, acquisition and
    encoding for every class, so only the hardware differs."""
    root = tmp_path_factory.mktemp("per-class")
    images = tuple(ImagePlan(view, None if view is View.AP_PELVIS else Side.RIGHT) for view in _VIEWS)
    hips = {}
    for patient, hardware in itertools.product((0, 1), CLASS_ORDER):
        plan = StudyPlan(
            index=patient,
            patient=patient,
            visit=0,
            modality="CR",
            plan="per_class",
            images=images,
            hardware={Side.RIGHT: hardware, Side.LEFT: HardwareClass.NONE},
        )
        folder = root / f"{patient}-{hardware.value}"
        files = dict.fromkeys(row[2] for row in write_study(folder, plan, seed=11))  # the AP pelvis has two rows
        for name, view in zip(files, _VIEWS, strict=True):
            _, prepared, *_ = prepare_file(folder / name, input_size=INPUT_SIZE)
            hips[(patient, view, hardware)] = next(hip.pixels for hip in prepared if hip.side is Side.RIGHT)
    _contact_sheets(hips)
    return hips


def _contact_sheets(hips: dict[tuple[int, View, HardwareClass], np.ndarray]) -> None:
    OUTPUT_DIR.mkdir(parents=True, exist_ok=True)
    for hardware in CLASS_ORDER:
        sheet = Image.new("L", (len(_VIEWS) * (INPUT_SIZE + 4), 2 * (INPUT_SIZE + 4)), 96)
        for (patient, view, cls), pixels in hips.items():
            if cls is hardware:
                sheet.paste(
                    Image.fromarray(pixels), (_VIEWS.index(view) * (INPUT_SIZE + 4) + 2, patient * (INPUT_SIZE + 4) + 2)
                )
        sheet.save(OUTPUT_DIR / f"phantoms_{hardware.value}.png")


def _hardware_mask(hips, patient: int, view: View, hardware: HardwareClass) -> np.ndarray:
    """Pixels the hardware changed (vs the same hip without hardware) by more than 40 grey levels."""
    none = hips[(patient, view, HardwareClass.NONE)].astype(np.int16)
    return np.abs(hips[(patient, view, hardware)].astype(np.int16) - none) > 40


@pytest.mark.parametrize("view", _VIEWS, ids=lambda v: v.value)
def test_every_class_is_visible_and_distinct_from_every_other_at_160_px(hips_by_class, view):
    for patient in (0, 1):
        masks = {hardware: _hardware_mask(hips_by_class, patient, view, hardware) for hardware in CLASS_ORDER}
        for hardware in CLASS_ORDER[1:]:
            assert masks[hardware].sum() >= 40, (patient, view, hardware, int(masks[hardware].sum()))
        for first, second in itertools.combinations(CLASS_ORDER, 2):
            differ = int((masks[first] ^ masks[second]).sum())
            assert differ >= 40, (patient, view, first, second, differ)


def test_contact_sheets_are_written(hips_by_class):
    for hardware in CLASS_ORDER:
        assert (OUTPUT_DIR / f"phantoms_{hardware.value}.png").is_file()


def test_tha_has_a_cup_that_hemiarthroplasty_and_post_infectious_lack():
    """The hard pairs: a cup (metal above the head, lateral to the native acetabular roof) only on THA."""
    anatomy = sample_anatomy(np.random.default_rng(5))
    femur = anatomy.femurs[Side.RIGHT]
    for hardware, has_cup in (
        (HardwareClass.THA, True),
        (HardwareClass.THA_PLUS_FIXATION, True),
        (HardwareClass.HEMI, False),
        (HardwareClass.POST_INFECTIOUS, False),
    ):
        for seed in range(8):
            implant = build_implant(hardware, femur, np.random.default_rng(seed))
            cups = [part for part in implant.parts if part.attached == "pelvis" and type(part).__name__ == "Sphere"]
            assert bool(cups) is has_cup, (hardware, seed)
            if hardware is HardwareClass.POST_INFECTIOUS:
                assert all(part.layer != "metal" or type(part).__name__ != "Sphere" for part in implant.parts)


# --- speed, the demo study and the CLI -----------------------------------------------------------------------------


def test_rendering_takes_about_a_tenth_of_a_second_per_image():
    anatomy = sample_anatomy(np.random.default_rng(1))
    implants = {
        Side.RIGHT: build_implant(
            HardwareClass.THA_PLUS_FIXATION, anatomy.femurs[Side.RIGHT], np.random.default_rng(1)
        ),
        Side.LEFT: build_implant(HardwareClass.DHS, anatomy.femurs[Side.LEFT], np.random.default_rng(2)),
    }
    render(anatomy, implants, View.AP_PELVIS, None, size=900, acquisition=Acquisition(), rng=np.random.default_rng(0))
    start = time.perf_counter()
    for index, view in enumerate(_VIEWS * 2):
        render(
            anatomy,
            implants,
            view,
            None if view is View.AP_PELVIS else Side.RIGHT,
            size=900,
            acquisition=Acquisition(spine_hardware=view is View.AP_PELVIS, markers=("R",)),
            rng=np.random.default_rng(index),
        )
    per_image = (time.perf_counter() - start) / 8
    assert per_image < 0.3, f"{per_image:.3f} s per image"  # about 0.06 s on one core of the dev machine


def test_demo_study_is_the_three_view_right_tha_study(tmp_path):
    images = write_demo_study(tmp_path / "a")
    again = write_demo_study(tmp_path / "b")
    assert [(image.view, image.sides) for image in images] == [
        (View.AP_PELVIS, (Side.RIGHT, Side.LEFT)),
        (View.FROG_LEG, (Side.RIGHT,)),
        (View.CROSS_TABLE_LATERAL, (Side.RIGHT,)),
    ]
    for image in images:
        ds = pydicom.dcmread(image.path)
        assert (ds.Modality, ds.BitsStored, ds.PhotometricInterpretation) == ("CR", 12, "MONOCHROME2")
        assert "3 VIEWS" in ds.StudyDescription and ds.SOPInstanceUID == image.sop_instance_uid
        result = classify_view(ds)
        assert (result.view, result.sides) == (image.view, image.sides)
    assert {i.sop_instance_uid for i in images}.isdisjoint(i.sop_instance_uid for i in again)  # sendable again
    _, hips, *_ = prepare_file(images[0].path, input_size=INPUT_SIZE)
    metal = {hip.side: int((hip.pixels == 255).sum()) for hip in hips}
    assert metal[Side.RIGHT] > 100 and metal[Side.LEFT] == 0


def test_cli_writes_a_dataset_and_counts_its_classes(tmp_path, capsys):
    assert main(["phantoms", str(tmp_path / "set"), "--studies", "3", "--seed", "2", "--size", "200"]) == 0
    out = capsys.readouterr().out
    assert f"labels: {tmp_path / 'set' / 'labels.csv'}" in out
    assert "wrote 3 studies" in out and all(hardware.value in out for hardware in CLASS_ORDER)
    assert len(_labels(tmp_path / "set")) >= 3


def test_cli_refuses_a_bad_size(tmp_path, capsys):
    assert main(["phantoms", str(tmp_path / "set"), "--studies", "1", "--size", "20"]) == 2
    assert "20 is not in the range x>=128" in capsys.readouterr().err
