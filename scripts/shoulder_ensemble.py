"""Screening of test-time augmentation and ensembling for the shoulder pack (issue 17), on one split.

    .venv/bin/python -m predraft.models.shoulder_data ../shared/data var/shoulder
    .venv/bin/predraft train var/shoulder/development --pack models/packs/shoulder --out var/runs/shoulder-a \
        --architecture regnetx_002 --input-size 160 --head-epochs 1 --epochs 30 --lr 5e-4 --flip \
        --init-weights var/runs/gate-1.2.0/weights.safetensors --device cpu --workers 0  # -b, -c: others
    .venv/bin/python scripts/shoulder_ensemble.py var/shoulder/development var/runs/shoulder-a var/runs/shoulder-b \
        var/runs/shoulder-c --out var/eval/shoulder-ensemble.json

Every run must have been trained with the same seed, hence the same patient split (``split.csv``, checked): the
figures are on that split's test part, the thresholds of each variant fitted on its validation part for a
precision of 0.95, as ``predraft train`` fits a card's. Variants: each run alone, each with test-time mirroring
(the mean of the image's and its left-right mirror's probabilities), the runs' mean, and the mean with mirroring.
The held-out part (``var/shoulder/holdout``) is not read.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from sklearn.metrics import cohen_kappa_score

from predraft.models.datasets import prepare_images, read_labels, read_split
from predraft.models.factory import load_classifier
from predraft.models.pack import read_pack
from predraft.models.training import choose_class_thresholds

PACK = Path(__file__).resolve().parents[1] / "models" / "packs" / "shoulder"
NONE = "none"
PRECISION = 0.95


def _probabilities(run: Path, data: Path, rows: dict[str, list], framing) -> dict[str, dict[str, np.ndarray]]:
    """{split: {"plain": P, "mirrored": P}} of the run's model on each split's rows."""
    classifier = load_classifier(run / "card.json", "cpu")
    out: dict[str, dict[str, np.ndarray]] = {}
    for split, split_rows in rows.items():
        pixels = prepare_images(data, split_rows, input_size=classifier.card.input_size, framing=framing).pixels
        plain = classifier.predict(pixels)
        mirror = classifier.predict(np.ascontiguousarray(pixels[:, :, ::-1]))
        out[split] = {"plain": plain, "mirrored": (plain + mirror) / 2}
    return out


def _figures(p_val: np.ndarray, y_val: np.ndarray, p: np.ndarray, y: np.ndarray, classes: tuple[str, ...]) -> dict:
    top = p.argmax(axis=1)
    implant = y != classes.index(NONE)
    thresholds = choose_class_thresholds(p_val, y_val, classes, target_precision=PRECISION)
    confidence = p.max(axis=1)
    named = np.array([confidence[i] >= thresholds[classes[top[i]]] for i in range(len(y))])
    named_implant = named & implant & (top != classes.index(NONE))
    return {
        "accuracy": round(float((top == y).mean()), 4),
        "kappa": round(float(cohen_kappa_score(y, top)), 4),
        "arthroplasty_accuracy": round(float((top[implant] == y[implant]).mean()), 4),
        "arthroplasty_kappa": round(float(cohen_kappa_score(y[implant], top[implant])), 4),
        "named": int(named_implant.sum()),
        "named_right": int((top[named_implant] == y[named_implant]).sum()),
        "named_share": round(float(named_implant.sum() / implant.sum()), 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("development", type=Path)
    parser.add_argument("runs", type=Path, nargs="+")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    pack = read_pack(PACK)
    classes = pack.class_names
    splits = [read_split(run / "split.csv") for run in args.runs]
    if any(split != splits[0] for split in splits[1:]):
        raise SystemExit("the runs were trained on different splits (another seed): their test parts differ")
    labelled = read_labels(args.development, classes)
    rows = {name: [row for row in labelled if splits[0].get(row.patient) == name] for name in ("validation", "test")}
    truth = {name: np.array([classes.index(row.hardware) for row in split_rows]) for name, split_rows in rows.items()}
    readings = {run.name: _probabilities(run, args.development, rows, pack.framing) for run in args.runs}
    variants: dict[str, dict[str, np.ndarray]] = {}
    for name, reading in readings.items():
        variants[name] = {split: reading[split]["plain"] for split in rows}
        variants[f"{name}, mirrored"] = {split: reading[split]["mirrored"] for split in rows}
    for kind, suffix in (("plain", ""), ("mirrored", ", mirrored")):
        variants[f"mean of {len(readings)}{suffix}"] = {
            split: np.mean([reading[split][kind] for reading in readings.values()], axis=0) for split in rows
        }
    report = {
        "test_images": len(rows["test"]),
        "test_arthroplasties": int((truth["test"] != classes.index(NONE)).sum()),
        "target_precision": PRECISION,
        "variants": {
            name: _figures(p["validation"], truth["validation"], p["test"], truth["test"], classes)
            for name, p in variants.items()
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
