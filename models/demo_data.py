"""The demo hip model's training folder: phantoms and FracAtlas hips in one ``labels.csv`` (predraft.models.datasets).

    python -m predraft.models.demo_data ../shared/data var/phantoms/train var/demo2-data

makes ``var/demo2-data`` with ``phantoms`` and ``fracatlas`` linked in and a ``labels.csv`` whose rows are the
phantoms' own and, for FracAtlas, one row per hip:

- the hip images predraft labelled by type and side (models/data/fracatlas_hip_hardware.csv): an AP pelvis
  (``field`` pelvis) as two hips (``view`` ap_pelvis), a single hip as the whole image with its side;
  hips outside the image are left out;
- every other FracAtlas hip image (no hardware by FracAtlas' flag) as two ``none`` hips, split at the
  midline as an AP pelvis is: the model learns that real native hips read as no hardware.

Patients are FracAtlas' groups (predraft.models.gate_labels.fracatlas_groups): one patient's runs never straddle
the split.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

from predraft.models.datasets import LABELS_FILE
from predraft.models.gate_labels import HIP_LABELS, fracatlas_groups

COLUMNS = ("patient", "study", "image", "side", "class", "view")


def fracatlas_hip_rows(data_dir: Path, hip_labels: Path = HIP_LABELS) -> list[dict[str, str]]:
    with (Path(data_dir) / "fracatlas" / "dataset.csv").open(newline="") as handle:
        records = [record for record in csv.DictReader(handle) if record["hip"] == "1"]
    with Path(hip_labels).open(newline="") as handle:
        labelled = {record["image_id"]: record for record in csv.DictReader(handle)}
    with (Path(data_dir) / "fracatlas" / "dataset.csv").open(newline="") as handle:
        group_of = fracatlas_groups([record["image_id"] for record in csv.DictReader(handle)])
    rows = []
    for record in records:
        image = record["image_id"]
        common = {"patient": group_of[image], "study": group_of[image], "image": f"fracatlas/images/{image}"}
        placed = labelled.get(image)
        if placed is None:
            if record["hardware"] == "1":
                continue  # FracAtlas says hardware, but predraft's labelling has not placed it: not guessed
            rows += [{**common, "side": side, "class": "none", "view": "ap_pelvis"} for side in ("right", "left")]
        elif placed["field"] == "pelvis":
            rows += [
                {**common, "side": side, "class": placed[side], "view": "ap_pelvis"}
                for side in ("right", "left")
                if placed[side] not in {"not_visible", "unsure"}
            ]
        else:
            sides = [side for side in ("right", "left") if placed[side] not in {"not_visible", "unsure"}]
            side = sides[0] if len(sides) == 1 else "unknown"
            rows.append({**common, "side": side, "class": placed[sides[0]] if sides else "none", "view": ""})
    return rows


def build_folder(data_dir: Path, phantoms_dir: Path, out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, target in (("phantoms", Path(phantoms_dir)), ("fracatlas", Path(data_dir) / "fracatlas")):
        link = out_dir / name
        if link.is_symlink():
            link.unlink()
        link.symlink_to(target.resolve(), target_is_directory=True)
    with (Path(phantoms_dir) / LABELS_FILE).open(newline="") as handle:
        phantoms = [{**record, "image": f"phantoms/{record['image']}"} for record in csv.DictReader(handle)]
    with (out_dir / LABELS_FILE).open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        writer.writerows(phantoms + fracatlas_hip_rows(Path(data_dir)))
    return out_dir / LABELS_FILE


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit("usage: python -m predraft.models.demo_data DATA_DIR PHANTOMS_DIR OUT_DIR")
    print(build_folder(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])))
