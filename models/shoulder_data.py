"""The shoulder pack's development and held-out folders, from ``../shared/data``.

    python -m predraft.models.shoulder_data ../shared/data var/shoulder

writes two folders, the images linked in, not copied:

- ``var/shoulder/development/``: a training folder (``labels.csv``: patient, study, image, side, class; the layout
  of predraft.models.datasets, for ``predraft train --pack models/packs/shoulder``): the shoulder-implant images
  not held out (``models/data/shoulder_implants_holdout.csv``, made by ``predraft holdout`` before anyone looked),
  labelled by manufacturer, and the FracAtlas shoulders without hardware not held out, labelled ``none``;
- ``var/shoulder/holdout/``: the held-out images of both, in the shoulder-implant set's own layout (``images/``
  and ``labels.csv`` with ``image`` and ``label``), for ``predraft evaluate CARD FOLDER``.

Each shoulder-implant image is its own patient (the set names none). FracAtlas shoulders are grouped by
FracAtlas' runs (predraft.models.gate_labels.fracatlas_groups), and a fifth of the groups is held out
(predraft.models.holdout, seed 0), so that no patient's films straddle the two parts.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

from predraft.models.datasets import LABELS_FILE
from predraft.models.gate_labels import fracatlas_groups
from predraft.models.holdout import HOLDOUT, stratified_holdout

SHOULDER_HOLDOUT = Path(__file__).resolve().parent / "data" / "shoulder_implants_holdout.csv"
#: The shoulder-implant set's manufacturers as the pack's class names.
MANUFACTURERS = {"Cofield": "cofield", "Depuy": "depuy", "Tornier": "tornier", "Zimmer": "zimmer"}
NO_ARTHROPLASTY = "none"


def _link(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.is_symlink() or target.exists():
        target.unlink()
    target.symlink_to(source.resolve())


def fracatlas_shoulders(shared: Path) -> dict[str, str]:
    """FracAtlas shoulder images without hardware, by image id, with their group (one patient's run)."""
    with (shared / "fracatlas" / "dataset.csv").open(newline="") as handle:
        every = list(csv.DictReader(handle))
    groups = fracatlas_groups(sorted(row["image_id"] for row in every))  # runs are counted over the whole set
    rows = [row for row in every if row["shoulder"] == "1" and row["hardware"] == "0"]
    return {row["image_id"]: groups[row["image_id"]] for row in rows}


def _fracatlas_path(shared: Path, image_id: str) -> Path:
    found = sorted((shared / "fracatlas" / "images").rglob(image_id))
    if not found:
        raise FileNotFoundError(f"FracAtlas image {image_id} is not under {shared / 'fracatlas' / 'images'}")
    return found[0]


def write_shoulder_folders(shared: Path, out: Path, *, seed: int = 0) -> dict[str, int]:
    """Write ``out/development`` and ``out/holdout`` (see the module docstring); the count of rows of each."""
    development, holdout = out / "development", out / "holdout"
    train_rows: list[dict[str, str]] = []
    held_rows: list[dict[str, str]] = []
    with SHOULDER_HOLDOUT.open(newline="") as handle:
        for row in csv.DictReader(handle):
            source = shared / "shoulder-implants" / "images" / row["image"]
            label = MANUFACTURERS[row["manufacturer"]]
            if row["part"] == HOLDOUT:
                _link(source, holdout / "images" / row["image"])
                held_rows.append({"image": row["image"], "label": label})
            else:
                name = f"implants/{row['image']}"
                _link(source, development / name)
                patient = f"si-{Path(row['image']).stem}"
                train_rows.append(
                    {"patient": patient, "study": patient, "image": name, "side": "unknown", "class": label}
                )
    shoulders = fracatlas_shoulders(shared)
    groups = sorted(set(shoulders.values()))
    parts = stratified_holdout(dict.fromkeys(groups, NO_ARTHROPLASTY), fraction=0.2, seed=seed)
    held_groups = {group for group, part in parts.items() if part == HOLDOUT}
    for image_id, group in sorted(shoulders.items()):
        source = _fracatlas_path(shared, image_id)
        if group in held_groups:
            _link(source, holdout / "images" / image_id)
            held_rows.append({"image": image_id, "label": NO_ARTHROPLASTY})
        else:
            name = f"fracatlas/{image_id}"
            _link(source, development / name)
            patient = f"fa-{group}"
            train_rows.append(
                {
                    "patient": patient,
                    "study": f"fa-{image_id}",
                    "image": name,
                    "side": "unknown",
                    "class": NO_ARTHROPLASTY,
                }
            )
    _write(development / LABELS_FILE, ("patient", "study", "image", "side", "class"), train_rows)
    _write(holdout / LABELS_FILE, ("image", "label"), held_rows)
    return {"development": len(train_rows), "holdout": len(held_rows)}


def _write(path: Path, columns: tuple[str, ...], rows: list[dict[str, str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


if __name__ == "__main__":
    counts = write_shoulder_folders(Path(sys.argv[1]), Path(sys.argv[2]))
    print(", ".join(f"{part}: {count} images" for part, count in counts.items()))
