"""Does a real film read the same when it arrives as DICOM as when the gate learned it from a JPEG? (issue 15)

    .venv/bin/python scripts/gate_dicom_encodings.py --out docs/evaluation/gate-dicom-encodings.json
    # --images: the folder scripts/train_gate.sh makes (var/gate-images; only its fracatlas/ is read)

The gate (and the demo hip model) learned FracAtlas' films as JPEGs, read as grey / 255
(``predraft.models.taskdata.read_grey``). A site sends them as DICOM. This wraps the same films the ways a digitiser
or an export would (8-bit MONOCHROME2 uncompressed, without and with a full-range window; the same 8 bits shifted
into 12 stored bits (times 16), rescaled to them (times 4095 / 255) and stored in 16 unscaled; JPEG Baseline, grey
and colour) and prepares each as a received instance (``prepare_file``), then reads the training image and every
wrapped one with the bundled gate. The images: every FracAtlas image with hardware and ``--negatives`` without,
drawn with a fixed seed. The gate saw these films in training, so its figures here are flattering; what counts is
how far each encoding moves from the training reading (mean absolute difference of the 160 px gate images in grey
levels, median change of p(hardware), region accuracy and hardware figures at the card's threshold). Then the demo
hip model reads FracAtlas' native hip films (hip, no hardware), each sent as tagged DICOM in each encoding (an AP
pelvis tagged so, and split; another film tagged HIP): the share of hips it would draft as hardware, the issue's
false-hardware figure, on films it was partly trained on (flattering again: compare the encodings).
Prints a table and writes the JSON.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from gate_init_screening import LABELS, ROOT, gate_config  # scripts/ is on sys.path when a script there runs
from PIL import Image
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import ExplicitVRLittleEndian, JPEGBaseline8Bit, generate_uid
from sklearn.metrics import roc_auc_score

from predraft.models.gate_labels import NO_IMPLANT
from predraft.models.pixels import letterbox
from predraft.models.prepare import prepare_file
from predraft.models.scope import HARDWARE_PRESENT, HARDWARE_TASK
from predraft.models.taskcard import GATE_CARD
from predraft.models.taskdata import crop_image, read_grey, read_task_rows
from predraft.workers.gate import load_gate

CR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.1"
FIELD_LABELS = ROOT / "models" / "data" / "fracatlas_hip_field.csv"


def _dataset(grey: np.ndarray, path: Path) -> FileDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = CR_IMAGE_STORAGE, generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = CR_IMAGE_STORAGE, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.Modality, ds.PatientID = generate_uid(), generate_uid(), "CR", "X"
    ds.Rows, ds.Columns = grey.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = grey.tobytes()
    return ds


def _jpeg(ds: FileDataset, grey: np.ndarray, colour: bool) -> None:
    buffer = io.BytesIO()
    (Image.fromarray(grey).convert("RGB") if colour else Image.fromarray(grey)).save(buffer, "JPEG", quality=95)
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    if colour:
        ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "YBR_FULL_422", 0
    ds.PixelData = encapsulate([buffer.getvalue()])
    ds["PixelData"].VR = "OB"


def _window(ds: FileDataset, grey: np.ndarray) -> None:
    ds.WindowCenter, ds.WindowWidth = 128, 256  # LINEAR (PS3.3 C.11.2.1.2.1): exactly value / 255


def _stored_in(bits: int, values: Callable[[np.ndarray], np.ndarray]) -> Callable[[FileDataset, np.ndarray], None]:
    """The encoding that stores ``values(grey)`` in 16-bit words, ``bits`` of them stored, with no window."""

    def encode(ds: FileDataset, grey: np.ndarray) -> None:
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, bits, bits - 1
        ds.PixelData = values(grey).astype(np.uint16).tobytes()

    return encode


#: How each encoding changes the plain 8-bit dataset.
ENCODINGS: dict[str, Callable[[FileDataset, np.ndarray], None]] = {
    "8_bit_no_window": lambda ds, grey: None,
    "8_bit_full_range_window": _window,
    "12_bit_shifted_no_window": _stored_in(12, lambda grey: grey.astype(np.uint16) * 16),
    "16_bit_unscaled_no_window": _stored_in(16, lambda grey: grey),  # the values unchanged, 0 to 255
    "12_bit_rescaled_no_window": _stored_in(12, lambda grey: np.rint(grey * (4095 / 255))),  # stretched to 0-4095
    "jpeg_baseline_grey": lambda ds, grey: _jpeg(ds, grey, colour=False),
    "jpeg_baseline_colour": lambda ds, grey: _jpeg(ds, grey, colour=True),
}


def _encoded(grey: np.ndarray, path: Path, encode: Callable[[FileDataset, np.ndarray], None], **tags: str) -> Path:
    ds = _dataset(grey, path)
    encode(ds, grey)
    for keyword, value in tags.items():
        setattr(ds, keyword, value)
    ds.save_as(path, enforce_file_format=True)
    return path


def native_hips_read_by_the_hip_model(images: Path, scratch: Path) -> dict[str, Any]:
    """The demo hip model on FracAtlas' native hip films sent as tagged DICOM, each encoding: the share of hips it
    reads as hardware (top class not none) and drafts as hardware (that class at or above its threshold). An AP
    pelvis (``fracatlas_hip_field.csv``) is tagged PELVIS, AP and split in two, any other film HIP, one hip."""
    from predraft.models.card import DEMO_MODEL_CARD  # torch and timm: here, as the gate's own import
    from predraft.models.factory import load_classifier

    classifier = load_classifier(DEMO_MODEL_CARD)
    card, names = classifier.card, list(classifier.card.classes)
    with FIELD_LABELS.open(newline="") as handle:
        pelves = {row["image_id"] for row in csv.DictReader(handle) if row["field"] == "pelvis"}
    rows = [
        row
        for row in read_task_rows(LABELS, images, ["region", "hardware"], sources=("fracatlas",))
        if row.crop == "whole" and row.labels.get("region") == "hip" and row.labels.get("hardware") in NO_IMPLANT
    ]
    hips: dict[str, list[np.ndarray]] = {name: [] for name in ENCODINGS}
    for row in rows:
        with Image.open(images / row.image) as opened:
            grey = np.asarray(opened.convert("L"))
        pelvis = Path(row.image).name in pelves
        tags = {"BodyPartExamined": "PELVIS", "ViewPosition": "AP"} if pelvis else {"BodyPartExamined": "HIP"}
        for name, encode in ENCODINGS.items():
            prepared = prepare_file(_encoded(grey, scratch / "hip.dcm", encode, **tags), input_size=card.input_size)
            hips[name].extend(hip.pixels for hip in prepared.hips)
    found: dict[str, Any] = {"model": card.display_name, "films": len(rows)}
    for name, crops in hips.items():
        probabilities = np.concatenate(
            [classifier.predict(np.stack(crops[start : start + 64])) for start in range(0, len(crops), 64)]
        )
        top = probabilities.argmax(axis=1)
        read = np.array([names[index] != "none" for index in top])
        drafted = read & np.array(
            [probabilities[i, index] >= card.threshold_for(names[index]) for i, index in enumerate(top)]
        )
        found[name] = {
            "hips": len(crops),
            "read_as_hardware": round(float(read.mean()), 4),
            "drafted_as_hardware": round(float(drafted.mean()), 4),
        }
        print(f"{name:26} demo hip model on {len(crops)} native hips: drafted as hardware {drafted.mean():.3f}")
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=Path, default=ROOT / "var" / "gate-images")
    parser.add_argument("--negatives", type=int, default=300)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    config = gate_config(None, 20)
    rows = [
        row
        for row in read_task_rows(LABELS, args.images, list(config.tasks), sources=("fracatlas",))
        if row.crop == "whole"
    ]
    with_hardware = [row for row in rows if row.labels[HARDWARE_TASK] == HARDWARE_PRESENT]
    without = [row for row in rows if row.labels["hardware"] in NO_IMPLANT]
    drawn = np.random.default_rng(0).choice(len(without), args.negatives, replace=False)
    sample = with_hardware + [without[index] for index in sorted(drawn)]
    gate = load_gate(GATE_CARD)
    pixels: dict[str, list[np.ndarray]] = {"training": [], **{name: [] for name in ENCODINGS}}
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "film.dcm"
        for row in sample:
            jpeg = args.images / row.image
            pixels["training"].append(letterbox(crop_image(read_grey(jpeg), "whole"), gate.size))
            with Image.open(jpeg) as opened:
                grey = np.asarray(opened.convert("L"))
            for name, encode in ENCODINGS.items():
                prepared = prepare_file(_encoded(grey, path, encode), input_size=64, gate_size=gate.size).gate_pixels
                assert prepared is not None
                pixels[name].append(prepared)
    positive = np.array([row.labels[HARDWARE_TASK] == HARDWARE_PRESENT for row in sample])
    regions = gate.model.card.tasks["region"]
    truth = np.array([row.labels["region"] for row in sample])
    threshold = gate.hardware_threshold
    summary: dict[str, Any] = {
        "gate": gate.model.card.display_name,
        "images": {"with_hardware": int(positive.sum()), "without": int((~positive).sum())},
        "encodings": {},
    }
    reference = np.stack(pixels["training"]).astype(np.float32)
    base: np.ndarray | None = None
    for name, images in pixels.items():
        stacked = np.stack(images)
        readings = gate.model.predict(stacked)
        present = readings[HARDWARE_TASK][:, gate.model.card.tasks[HARDWARE_TASK].index(HARDWARE_PRESENT)]
        base = present if base is None else base
        summary["encodings"][name] = {
            "grey_levels_from_training_image": round(float(np.abs(stacked - reference).mean()), 3),
            "region_accuracy": round(float(np.mean(np.array(regions)[readings["region"].argmax(axis=1)] == truth)), 4),
            "hardware_auc": round(float(roc_auc_score(positive, present)), 4),
            "hardware_sensitivity_at_card_threshold": round(float((present[positive] >= threshold).mean()), 4),
            "hardware_specificity_at_card_threshold": round(float((present[~positive] < threshold).mean()), 4),
            "median_change_of_p_hardware": round(float(np.median(np.abs(present - base))), 4),
        }
        row = summary["encodings"][name]
        print(
            f"{name:26} grey levels {row['grey_levels_from_training_image']:6.2f}  region {row['region_accuracy']:.3f}"
            f"  hardware AUC {row['hardware_auc']:.4f}  sens {row['hardware_sensitivity_at_card_threshold']:.3f}"
            f"  spec {row['hardware_specificity_at_card_threshold']:.3f}"
        )
    with tempfile.TemporaryDirectory() as scratch:
        summary["demo_hip_model_on_native_hips"] = native_hips_read_by_the_hip_model(args.images, Path(scratch))
    args.out.write_text(json.dumps(summary, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
