"""predraft.models.metal: the model-free metal detector on real radiographs, pasted metal and phantoms of every class.

Every image reaches ``detect_metal`` as it does in predraft.workers.prepare: ``to_unit_range(ds, decode(ds))`` ->
``crop_collimation`` -> ``split_bilateral(...)[side]`` (AP pelvis) or ``standard_orientation`` (one hip).
"""

from __future__ import annotations

import csv
import functools
from pathlib import Path

import cv2
import numpy as np
import pydicom
import pytest

from predraft.models import metal
from predraft.models.metal import MetalFinding, detect_metal
from predraft.models.pixels import crop_collimation, decode, split_bilateral, standard_orientation, to_unit_range
from predraft.models.taxonomy import HardwareClass, Side, View
from predraft.models.views import classify_view
from tests.conftest import real_file

# Every decodable transfer syntax of RG2 and RG3 (RG2_JPLY and RG3_JPLY hold a known-bad stream).
RG2_FILES = [
    "RG2_UNC.dcm",
    "RG2_RLE.dcm",
    "RG2_JPLL.dcm",
    "RG2_JLSL.dcm",
    "RG2_J2KR.dcm",
    "RG2_JLSN.dcm",
    "RG2_J2KI.dcm",
    "RG2_JPLY_fixed.dcm",
]
RG3_FILES = [
    "RG3_UNC.dcm",
    "RG3_RLE.dcm",
    "RG3_JPLL.dcm",
    "RG3_JLSL.dcm",
    "RG3_J2KR.dcm",
    "RG3_JLSN.dcm",
    "RG3_J2KI.dcm",
]
OTHER_FILES = ["RG1_UNCR.dcm", "RG1_J2KR.dcm", "RG1_J2KI.dcm", "RG1_JLSN.dcm", "966_fixed.dcm", "dx_image.dcm"]


@functools.cache
def _dataset(name: str) -> pydicom.Dataset:
    return pydicom.dcmread(real_file(name))


def _unit(ds: pydicom.Dataset, stored: np.ndarray) -> np.ndarray:
    """The pipeline up to the split: window/LUT and inversion, then the collimation crop."""
    return crop_collimation(to_unit_range(ds, stored))


@functools.cache
def _cropped(name: str) -> np.ndarray:
    ds = _dataset(name)
    image = _unit(ds, decode(ds))
    image.setflags(write=False)
    return image


def _one_hip(name: str) -> np.ndarray:
    """The whole image as one hip (standard orientation), a copy that a test may paste into."""
    return np.array(standard_orientation(_cropped(name), _dataset(name).get("PatientOrientation")))


def _halves(name: str) -> dict[Side, np.ndarray]:
    return split_bilateral(_cropped(name), _dataset(name).get("PatientOrientation"))


# --- drawing metal (full-resolution pixel coordinates, row then column) ---------------------------------


def _rod(shape: tuple[int, ...], start: tuple[float, float], end: tuple[float, float], radius: float) -> np.ndarray:
    mask = np.zeros(shape, np.uint8)
    cv2.line(mask, (round(start[1]), round(start[0])), (round(end[1]), round(end[0])), 1, thickness=round(2 * radius))
    return mask.astype(np.float32)


def _stem(
    shape: tuple[int, ...],
    head: tuple[float, float],
    top: tuple[float, float],
    tip: tuple[float, float],
) -> np.ndarray:
    """A femoral stem tapering from 18 to 9 mm, its neck and a 28 mm head, at 0.2 mm per pixel (RG2)."""
    mask = np.zeros(shape, np.uint8)
    axis = np.subtract(tip, top) / np.hypot(*np.subtract(tip, top))
    normal = np.array([-axis[1], axis[0]])
    corners = [
        np.add(top, normal * 45),
        np.subtract(top, normal * 45),
        np.subtract(tip, normal * 22),
        np.add(tip, normal * 22),
    ]
    cv2.fillConvexPoly(mask, np.array([[round(c[1]), round(c[0])] for c in corners], np.int32), 1)
    cv2.line(mask, (round(top[1]), round(top[0])), (round(head[1]), round(head[0])), 1, thickness=50)
    cv2.circle(mask, (round(head[1]), round(head[0])), 70, 1, thickness=-1)
    return mask.astype(np.float32)


def _letter(shape: tuple[int, ...], text: str, bottom_left: tuple[float, float], height: float) -> np.ndarray:
    mask = np.zeros(shape, np.uint8)
    scale = height / 22.0
    cv2.putText(
        mask,
        text,
        (round(bottom_left[1]), round(bottom_left[0])),
        cv2.FONT_HERSHEY_SIMPLEX,
        scale,
        1,
        thickness=max(1, round(2.5 * scale)),
    )
    return mask.astype(np.float32)


def _paste(image: np.ndarray, mask: np.ndarray, value: float, blur: float = 1.5) -> np.ndarray:
    """``value`` where ``mask`` is set, with an edge blurred by ``blur`` px (the detector's unsharpness)."""
    weight = cv2.GaussianBlur(mask, (0, 0), blur)
    return (image * (1.0 - weight) + np.float32(value) * weight).astype(np.float32)


def _gaussian(image: np.ndarray, centre: tuple[float, float], sigma: float, value: float) -> np.ndarray:
    rows, columns = np.ogrid[: image.shape[0], : image.shape[1]]
    weight = np.exp(-((rows - centre[0]) ** 2 + (columns - centre[1]) ** 2) / (2 * sigma**2)).astype(np.float32)
    return (image + (np.float32(value) - image) * weight).astype(np.float32)


# RG2 (2140 x 1628 after the crop, 0.2 mm per pixel): the femoral head's centre, the neck running down and
# to the right into the shaft; the lumbar spine fills the top left.
RG2_HEAD = (813.0, 814.0)


def _rg2_metal_level() -> float:
    """Metal stops the beam: it is as bright as the unexposed detector, the brightest value on RG2."""
    return float(_cropped("RG2_UNC.dcm").max())


# --- real radiographs --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", RG2_FILES + RG3_FILES + OTHER_FILES)
def test_real_radiographs_without_hardware_show_no_metal(name):
    hips = {"whole image": _one_hip(name), **{f"{side} half": half for side, half in _halves(name).items()}}
    for part, image in hips.items():
        finding = detect_metal(image)
        assert finding.present is False, f"{name}, {part}: {finding}"
        assert finding.area_fraction == 0.0
        assert 0.0 <= finding.score < 0.5
        assert finding.reason


def test_the_native_hip_is_far_from_the_decision_boundary():
    # RG2 is the native hip the issue names: its best candidate region must not be a near miss.
    assert detect_metal(_one_hip("RG2_UNC.dcm")).score < 0.35


# --- pasted metal near the hip -----------------------------------------------------------------------------


def test_a_screw_along_the_femoral_neck_is_metal():
    image = _one_hip("RG2_UNC.dcm")
    screw = _rod(image.shape, (1090, 1060), (800, 820), radius=17)  # 7 mm across, 75 mm long
    finding = detect_metal(_paste(image, screw, _rg2_metal_level()))
    assert finding.present is True, finding
    assert finding.score >= 0.5
    assert 0.003 < finding.area_fraction < 0.02
    assert finding.reason.startswith("dense sharply bounded region of ")
    assert finding.reason.endswith(" of the hip field")


def test_a_stem_with_its_head_is_metal():
    image = _one_hip("RG2_UNC.dcm")
    stem = _stem(image.shape, head=RG2_HEAD, top=(930, 930), tip=(1400, 1230))
    finding = detect_metal(_paste(image, stem, _rg2_metal_level()))
    assert finding.present is True, finding
    assert finding.area_fraction > 0.02  # a stem and head cover far more than a screw


def test_three_cannulated_screws_in_the_half_holding_the_hip_are_metal():
    # RG2 split at its midline: the neck and shaft lie in the image's right half (columns 814 onwards).
    half = np.array(_halves("RG2_UNC.dcm")[Side.LEFT])
    screws = sum(_rod(half.shape, (1100 + d, 330 - d // 3), (880 + d, 60 - d // 3), radius=16) for d in (-80, 0, 80))
    finding = detect_metal(_paste(half, np.clip(screws, 0, 1), _rg2_metal_level()))
    assert finding.present is True, finding


def test_without_the_paste_the_same_half_has_no_metal():
    assert detect_metal(np.array(_halves("RG2_UNC.dcm")[Side.LEFT])).present is False


def test_pedicle_screws_and_a_rod_on_the_lumbar_spine_do_not_count(monkeypatch):
    image = _one_hip("RG2_UNC.dcm")
    # two pedicle screws and a rod in the top-medial corner (L4-L5 on RG2), at full white
    hardware = (
        _rod(image.shape, (300, 150), (330, 330), 16)
        + _rod(image.shape, (560, 150), (590, 330), 16)
        + _rod(image.shape, (250, 340), (650, 340), 11)
    )
    spine = _paste(image, np.clip(hardware, 0, 1), 1.0)
    finding = detect_metal(spine)
    assert finding.present is False, finding
    # ... and it is the hip field that rules them out: near the hip they would count
    monkeypatch.setattr(metal, "SPINE_BOX", (0.0, 0.0))
    monkeypatch.setattr(metal, "EDGE_MARGIN", 0.0)
    assert detect_metal(spine).present is True


@pytest.mark.parametrize(("text", "corner"), [("R", "top left"), ("L", "bottom right")])
def test_burned_in_marker_letters_in_a_corner_do_not_count(text, corner):
    image = _one_hip("RG2_UNC.dcm")
    height, width = image.shape
    bottom_left = (200, 80) if corner == "top left" else (height - 60, width - 170)
    letter = _letter(image.shape, text, bottom_left, height=120)  # 2.4 cm tall, full white
    finding = detect_metal(_paste(image, letter, 1.0, blur=0.7))
    assert finding.present is False, finding


def test_a_bright_but_smooth_blob_like_bone_is_not_metal():
    image = _one_hip("RG2_UNC.dcm")
    blob = _gaussian(image, (950, 900), sigma=70, value=_rg2_metal_level())  # as bright as metal at its peak
    finding = detect_metal(blob)
    assert finding.present is False, finding


@pytest.mark.parametrize(("gain", "offset"), [(0.6, 0.15), (0.9, 0.05), (0.5, 0.5)])
def test_a_linear_change_of_window_changes_nothing(gain, offset):
    # contrast and brightness of the display: every measure is relative to the image's own levels
    image = _one_hip("RG2_UNC.dcm")
    screwed = _paste(image, _rod(image.shape, (1090, 1060), (800, 820), radius=17), _rg2_metal_level())
    for picture in (image, screwed):
        reference = detect_metal(picture)
        windowed = detect_metal((picture * np.float32(gain) + np.float32(offset)).astype(np.float32))
        assert windowed.present is reference.present
        assert windowed.score == pytest.approx(reference.score, abs=0.02)


def test_metal_at_full_white_is_found_in_a_window_that_compresses_the_top():
    # a gamma-like display curve (the bright end compressed), metal at full white as a VOI LUT puts it
    image = _one_hip("RG2_UNC.dcm")
    screwed = _paste(image, _rod(image.shape, (1090, 1060), (800, 820), radius=17), 1.0)
    assert detect_metal(screwed**0.6).present is True
    assert detect_metal(image**0.6).present is False


def test_a_plate_on_the_monochrome1_tibia_is_metal():
    # RG3 is MONOCHROME1: metal stops the beam and is stored as the LOWEST value; the pipeline inverts it.
    ds = _dataset("RG3_UNC.dcm")
    stored = decode(ds)
    assert ds.PhotometricInterpretation == "MONOCHROME1"
    plate = np.zeros(stored.shape, np.float32)
    height, width = stored.shape
    # along the tibial shaft in the middle of the leg (the image is stored mirrored: PatientOrientation R\F)
    plate += _rod(stored.shape, (0.38 * height, 0.55 * width), (0.62 * height, 0.55 * width), radius=28)
    for row in (0.42, 0.5, 0.58):
        plate += _rod(stored.shape, (row * height, 0.47 * width), (row * height, 0.63 * width), radius=12)
    pasted = _paste(stored, np.clip(plate, 0, 1), float(stored.min()))
    image = standard_orientation(_unit(ds, pasted), ds.get("PatientOrientation"))
    assert image[round(0.5 * image.shape[0])].max() > 0.95  # the plate is bright after the inversion
    finding = detect_metal(image)
    assert finding.present is True, finding
    assert detect_metal(_one_hip("RG3_UNC.dcm")).present is False


# --- the contract --------------------------------------------------------------------------------------------


def test_finding_is_a_frozen_record():
    finding = detect_metal(_one_hip("dx_image.dcm"))
    assert isinstance(finding, MetalFinding)
    with pytest.raises(AttributeError):
        finding.present = True  # type: ignore[misc]


def test_flat_image_has_no_metal_and_says_why():
    finding = detect_metal(np.full((300, 200), 0.7, np.float32))
    assert finding == MetalFinding(False, 0.0, 0.0, "no region denser than the background (the image is flat)")


def test_small_and_non_contiguous_inputs_are_accepted():
    image = _one_hip("RG2_UNC.dcm")
    assert detect_metal(image[::-1, ::-2]).present is False  # a flipped, strided view
    assert detect_metal(cv2.resize(image, (120, 160), interpolation=cv2.INTER_AREA)).present is False
    assert detect_metal(image.astype(np.float64)).present is False


@pytest.mark.parametrize(
    ("image", "error", "message"),
    [
        ([[0.0, 1.0], [1.0, 0.0]], TypeError, "image must be a numpy array, got list"),
        (np.zeros((4, 4, 3), np.float32), ValueError, r"image must be a 2-D array .* got shape \(4, 4, 3\)"),
        (np.zeros((1, 40), np.float32), ValueError, r"at least 2 x 2 pixels, got shape \(1, 40\)"),
        (np.zeros((40, 40), bool), TypeError, "image must hold real numbers, got dtype bool"),
        (np.full((40, 40), np.nan, np.float32), ValueError, "image holds NaN or infinite values"),
        (np.full((40, 40), 4095.0, np.float32), ValueError, r"image values must lie in \[0, 1\].*4095"),
    ],
)
def test_bad_input_is_refused_with_its_reason(image, error, message):
    with pytest.raises(error, match=message):
        detect_metal(image)


# --- phantoms of every class -------------------------------------------------------------------------------

#: Phantom studies in the set (about 120 hips; this seed draws every class) and its seed.
PHANTOM_STUDIES, PHANTOM_SEED = 40, 7
#: Share of hips that may be misjudged, measured on 200 studies (614 hips, seed 11) of the phantoms as
#: they render now: 0 of 180 ``none`` hips called metal, 27 of 386 hips with hardware other than
#: post-infectious missed (7 %: tha 7/57, hemi 7/59, cannulated screws 7/54, imn 3/39, dhs 2/56, plate
#: 1/64, tha + fixation 0/57), nearly all on frog-leg and cross-table views where the phantom renders the
#: femoral shaft as dense as the implant in it, so the implant has no edge left. (An earlier rendering
#: without that saturation: 1/180 and 2/386.) ``post_infectious`` is not asserted hip by hip: most of its
#: phantoms carry no metal the detector can see (a cement spacer, antibiotic beads on a 0.3 mm wire, a
#: cerclage wire) or only a broken screw under the size floor; 9 of 48 were found.
ALLOWED_FALSE_POSITIVE_SHARE = 0.02
ALLOWED_MISS_SHARE = 0.10


@pytest.fixture(scope="session")
def phantom_hips(tmp_path_factory) -> list[tuple[dict[str, str], np.ndarray]]:
    """(labels row, hip image as the pipeline holds it) for every row of a small phantom data set."""
    from predraft.models.phantoms import write_phantom_dataset

    out_dir = tmp_path_factory.mktemp("metal-phantoms")
    labels = write_phantom_dataset(out_dir, studies=PHANTOM_STUDIES, seed=PHANTOM_SEED)
    with Path(labels).open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    prepared: dict[str, dict[Side, np.ndarray]] = {}
    hips = []
    for row in rows:
        if row["image"] not in prepared:
            ds = pydicom.dcmread(out_dir / row["image"])
            view = classify_view(ds)
            image = _unit(ds, decode(ds))
            orientation = ds.get("PatientOrientation")
            if view.view is View.AP_PELVIS:
                prepared[row["image"]] = split_bilateral(image, orientation)
            else:
                prepared[row["image"]] = {side: standard_orientation(image, orientation) for side in view.sides}
        images = prepared[row["image"]]
        hips.append((row, images.get(Side(row["side"])) if len(images) > 1 else next(iter(images.values()))))
    return hips


def test_phantom_set_covers_every_class(phantom_hips):
    assert {HardwareClass(row["class"]) for row, _ in phantom_hips} == set(HardwareClass)
    assert all(image is not None for _, image in phantom_hips)


def test_phantoms_metal_present_for_hardware_and_absent_for_native_hips(phantom_hips):
    wrong: dict[HardwareClass, list[str]] = {}
    for row, image in phantom_hips:
        hardware = HardwareClass(row["class"])
        if hardware is HardwareClass.POST_INFECTIOUS:
            continue
        finding = detect_metal(image)
        if finding.present is not (hardware is not HardwareClass.NONE):
            wrong.setdefault(hardware, []).append(f"{row['image']} {row['side']}: {finding}")
    native = sum(row["class"] == HardwareClass.NONE for row, _ in phantom_hips)
    with_hardware = sum(
        row["class"] not in (HardwareClass.NONE, HardwareClass.POST_INFECTIOUS) for row, _ in phantom_hips
    )
    assert native >= 20 and with_hardware >= 40
    false_positives = wrong.pop(HardwareClass.NONE, [])
    misses = [line for lines in wrong.values() for line in lines]
    assert len(false_positives) <= max(1, int(ALLOWED_FALSE_POSITIVE_SHARE * native)), false_positives
    assert len(misses) <= int(ALLOWED_MISS_SHARE * with_hardware), misses


def test_phantom_post_infectious_hips_are_reported_not_forced(phantom_hips):
    # No hip-by-hip assertion (see ALLOWED_MISS_SHARE), but the findings stay well formed.
    findings = [detect_metal(image) for row, image in phantom_hips if row["class"] == HardwareClass.POST_INFECTIOUS]
    assert findings, "the phantom set has no post-infectious hip"
    assert all(0.0 <= f.score <= 1.0 and (f.area_fraction > 0) is f.present for f in findings)
