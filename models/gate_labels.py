"""The gate's training CSV, built from FracAtlas' labels, predraft's own hip-hardware labelling and the
shoulder-implant set (see models/data/FRACATLAS_LABELS.md). Run as a module to rebuild the committed CSV:

    python -m predraft.models.gate_labels ../shared/data models/data/gate_labels.csv [var/phantoms/train]

Paths in the CSV are relative to one images folder holding ``fracatlas/``, ``shoulder-implants/`` (from the
data folder) and ``phantoms/`` (``predraft phantoms --studies 1500 --seed 1``); scripts/train_gate.sh
links them together.

Rules (the same every time, written down before any model was trained):

- region: FracAtlas images flagged hip count as ``hip`` (hip and leg together show the hip); otherwise the
  first of shoulder, hand, leg that is flagged. Every shoulder-implant image is ``shoulder``.
- hardware: FracAtlas' own hardware flag (``present``/``absent``); every shoulder-implant image is
  ``present`` (each shows an arthroplasty). Where predraft's review of FracAtlas films without the flag
  (models/data/fracatlas_hardware_review.csv, see FRACATLAS_LABELS.md) saw a cast, jewellery or other metal
  outside the body, the image is ``external`` (no implant: a negative for "hardware present", but a class of
  its own, so that the head learns it apart from ``absent``); where it saw an implant, ``present``. This rule
  was added after gate 1.2.0 was trained: the films reviewed were its surest false alarms.
- field (hip images only, whole): ``pelvis`` when the image shows both hips upright, one each side of the
  image's midline (an AP pelvis, or a longer frontal film centred on the pelvis), so that splitting it at the
  midline gives one hip per half; else ``other`` (one hip, a lateral or oblique, a pelvis turned 90 degrees or
  off centre, a whole-body film). FracAtlas images from models/data/fracatlas_hip_field.csv (labelled by eye,
  see FRACATLAS_LABELS.md); phantoms from their view (AP pelvis or not).
- hip halves: each FracAtlas hip image whose hips predraft's labelling places (an AP pelvis) adds its two
  halves with that side's hardware; each hip image FracAtlas marks without hardware adds its two halves as
  ``absent`` (no region label: the gate reads whole images). So the hardware head also learns the hip crops
  that the service gives it.
- groups: FracAtlas numbers a patient's images consecutively, so a run of ids no more than
  :data:`RUN_GAP` apart is one group; the runs that predraft's labelling found to be one patient (notes
  "same construct as ...") are joined. Each shoulder-implant image is its own group (the set names no
  patients).
"""

from __future__ import annotations

import csv
import re
import sys
from pathlib import Path

#: Ids at most this far apart belong to one run (one patient's images come in sequence).
RUN_GAP = 2
#: Runs that the hip labelling found to be one patient although their ids lie far apart.
SAME_PATIENT = (("IMG0000453.jpg", "IMG0002607.jpg", "IMG0002749.jpg", "IMG0004113.jpg"),)
HIP_LABELS = Path(__file__).resolve().parent / "data" / "fracatlas_hip_hardware.csv"
FIELD_LABELS = Path(__file__).resolve().parent / "data" / "fracatlas_hip_field.csv"
HARDWARE_REVIEW = Path(__file__).resolve().parent / "data" / "fracatlas_hardware_review.csv"
#: The hardware classes: ``external`` is a film without an implant but with a cast, jewellery or other metal.
HARDWARE_CLASSES = ("absent", "external", "present")
#: The hardware classes of a film without an implant: the negatives of "hardware present".
NO_IMPLANT = frozenset({"absent", "external"})
COLUMNS = ("image", "group", "source", "crop", "region", "hardware", "field")
#: Phantom patients added (the first ones of ``predraft phantoms --studies 1500 --seed 1``), so the gate knows
#: the demo's phantoms as hips and its hardware head their implants. Synthetic: no part in thresholds or figures.
PHANTOM_PATIENTS = 250


def _number(image_id: str) -> int:
    return int(re.sub(r"\D", "", image_id))


def fracatlas_groups(image_ids: list[str]) -> dict[str, str]:
    """Each FracAtlas image id's group: runs of ids no more than RUN_GAP apart, SAME_PATIENT runs joined."""
    group_of: dict[str, str] = {}
    previous, group = None, ""
    for image_id in sorted(image_ids, key=_number):
        number = _number(image_id)
        if previous is None or number - previous > RUN_GAP:
            group = f"fracatlas-{number:07d}"
        group_of[image_id] = group
        previous = number
    for joined in SAME_PATIENT:
        target = group_of[joined[0]]
        members = {group_of[image] for image in joined}
        for image, found in group_of.items():
            if found in members:
                group_of[image] = target
    return group_of


def _region(record: dict[str, str]) -> str:
    if record["hip"] == "1":
        return "hip"
    for region in ("shoulder", "hand", "leg"):
        if record[region] == "1":
            return region
    return ""


def read_hardware_review(path: Path = HARDWARE_REVIEW) -> dict[str, str]:
    """Each reviewed FracAtlas image id's hardware class (``external`` or ``present``), validated."""
    with Path(path).open(newline="") as handle:
        review = {record["image_id"]: record["hardware"] for record in csv.DictReader(handle)}
    wrong = {image: value for image, value in review.items() if value not in HARDWARE_CLASSES[1:]}
    if wrong:
        raise ValueError(f"{path}: hardware must be one of {HARDWARE_CLASSES[1:]}, not {wrong}")
    return review


def build_rows(
    data_dir: Path,
    hip_labels: Path = HIP_LABELS,
    phantoms_dir: Path | None = None,
    field_labels: Path = FIELD_LABELS,
    hardware_review: Path = HARDWARE_REVIEW,
) -> list[dict[str, str]]:
    data_dir = Path(data_dir)
    with (data_dir / "fracatlas" / "dataset.csv").open(newline="") as handle:
        records = sorted(csv.DictReader(handle), key=lambda record: _number(record["image_id"]))
    with Path(hip_labels).open(newline="") as handle:
        hips = {record["image_id"]: record for record in csv.DictReader(handle)}
    with Path(field_labels).open(newline="") as handle:
        fields = {record["image_id"]: record["field"] for record in csv.DictReader(handle)}
    reviewed = read_hardware_review(hardware_review)
    group_of = fracatlas_groups([record["image_id"] for record in records])
    rows = []
    for record in records:
        image, region = record["image_id"], _region(record)
        path = f"fracatlas/images/{image}"
        hardware = "present" if record["hardware"] == "1" else reviewed.get(image, "absent")
        rows.append(
            {
                "image": path,
                "group": group_of[image],
                "source": "fracatlas",
                "crop": "whole",
                "region": region,
                "hardware": hardware,
                "field": fields[image] if region == "hip" else "",
            }
        )
        if region != "hip":
            continue
        placed = hips.get(image)
        if placed is not None and placed["field"] == "pelvis":
            sides = {"image_left": placed["right"], "image_right": placed["left"]}  # patient's right on the left
        elif placed is None and hardware in NO_IMPLANT:
            sides = {"image_left": "none", "image_right": "none"}
        else:
            continue
        for crop, hardware_class in sides.items():
            if hardware_class in {"not_visible", "unsure", ""}:
                continue
            rows.append(
                {
                    "image": path,
                    "group": group_of[image],
                    "source": "fracatlas",
                    "crop": crop,
                    "region": "",
                    "hardware": "absent" if hardware_class == "none" else "present",
                    "field": "",
                }
            )
    shoulder_dir = data_dir / "shoulder-implants"
    with (shoulder_dir / "labels.csv").open(newline="") as handle:
        for record in csv.DictReader(handle):
            rows.append(
                {
                    "image": f"shoulder-implants/images/{record['image']}",
                    "group": f"shoulder-implants-{record['image']}",
                    "source": "shoulder-implants",
                    "crop": "whole",
                    "region": "shoulder",
                    "hardware": "present",
                    "field": "",
                }
            )
    if phantoms_dir is not None:
        rows.extend(phantom_rows(Path(phantoms_dir)))
    return rows


def phantom_rows(phantoms_dir: Path, patients: int = PHANTOM_PATIENTS) -> list[dict[str, str]]:
    """Rows for the first ``patients`` phantom patients (paths ``phantoms/...``): each image whole as a hip,
    hardware present when any hip on it holds hardware (else unlabelled: phantoms may show lumbar hardware,
    which does not count), field ``pelvis`` for an AP pelvis, else ``other``; an AP pelvis also as its two
    halves. A post-infectious hip (a spacer may hold no metal) leaves hardware unlabelled."""
    with (phantoms_dir / "labels.csv").open(newline="") as handle:
        records = list(csv.DictReader(handle))
    chosen = set(sorted({record["patient"] for record in records})[:patients])
    by_image: dict[str, list[dict[str, str]]] = {}
    for record in records:
        if record["patient"] in chosen:
            by_image.setdefault(record["image"], []).append(record)

    def hardware(classes: list[str]) -> str:
        if "post_infectious" in classes:
            return ""
        return "present" if any(name != "none" for name in classes) else "absent"

    rows = []
    for image, hips in by_image.items():
        common = {"image": f"phantoms/{image}", "group": f"phantoms-{hips[0]['patient']}", "source": "phantoms"}
        # Whole phantom images without hip hardware may still show lumbar hardware: hardware left unlabelled.
        whole = hardware([h["class"] for h in hips])
        pelvis = hips[0].get("view") == "ap_pelvis"
        rows.append(
            {
                **common,
                "crop": "whole",
                "region": "hip",
                "hardware": "" if whole == "absent" else whole,
                "field": "pelvis" if pelvis else "other",
            }
        )
        if pelvis:
            for hip in hips:
                crop = "image_left" if hip["side"] == "right" else "image_right"
                rows.append({**common, "crop": crop, "region": "", "hardware": hardware([hip["class"]]), "field": ""})
    return rows


def write_rows(rows: list[dict[str, str]], path: Path) -> None:
    with Path(path).open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


if __name__ == "__main__":
    if len(sys.argv) not in (3, 4):
        sys.exit("usage: python -m predraft.models.gate_labels DATA_DIR OUT_CSV [PHANTOMS_DIR]")
    write_rows(
        build_rows(Path(sys.argv[1]), phantoms_dir=Path(sys.argv[3]) if len(sys.argv) == 4 else None), Path(sys.argv[2])
    )
