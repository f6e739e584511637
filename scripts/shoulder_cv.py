"""K-fold cross-validation of the shoulder pack's recipe on the development folder, as Urban et al. evaluated.

    .venv/bin/python scripts/shoulder_cv.py var/shoulder/development var/cv/shoulder --folds 10 \
        --init-weights var/runs/gate-1.2.0/weights.safetensors --input-size 160 --epochs 14

Patients (one per shoulder-implant image; FracAtlas runs) are dealt into ``--folds`` folds stratified by class
(seed 0). For each fold, the recipe is trained on the other folds (90 % training, 10 % validation for the early
figures, the temperature and the thresholds: ``predraft train``'s own steps) and evaluated on the fold with
``predraft evaluate``'s code. Written: each fold's run and evaluation, and ``summary.json``: per fold and as mean
and standard deviation, the accuracy and Cohen's kappa over every image and over the arthroplasty images only
(the four manufacturers, as the paper reports), the share of arthroplasty images that get a manufacturer's name
and how often that name is right, and the "no arthroplasty" figures apart.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
from sklearn.metrics import cohen_kappa_score

from predraft.evaluate import evaluate_model
from predraft.models.datasets import LABELS_FILE
from predraft.models.pack import read_pack
from predraft.models.training import TrainingConfig, choose_class_thresholds, train

PACK = Path(__file__).resolve().parents[1] / "models" / "packs" / "shoulder"
NONE = "none"


def _folds(rows: list[dict[str, str]], folds: int, seed: int) -> dict[str, int]:
    by_class: dict[str, list[str]] = defaultdict(list)
    for patient, label in sorted({(row["patient"], row["class"]) for row in rows}):
        by_class[label].append(patient)
    rng = np.random.default_rng(seed)
    fold_of: dict[str, int] = {}
    offset = 0
    for label in sorted(by_class):
        patients = [by_class[label][i] for i in rng.permutation(len(by_class[label]))]
        for index, patient in enumerate(patients):
            fold_of.setdefault(patient, (index + offset) % folds)
        offset += len(patients)
    return fold_of


def _folder(development: Path, target: Path, rows: list[dict[str, str]], columns: list[str]) -> Path:
    target.mkdir(parents=True, exist_ok=True)
    for child in development.iterdir():
        if child.is_dir() and not (target / child.name).exists():
            (target / child.name).symlink_to(child.resolve())
    with (target / LABELS_FILE).open("w", newline="") as handle:
        writer = csv.DictWriter(handle, columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return target


def _figures(predictions: Path, study_report: dict) -> dict[str, float | int | None]:
    with predictions.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    truth, predicted = [row["class"] for row in rows], [row["predicted"] for row in rows]
    implants = [(t, p) for t, p in zip(truth, predicted, strict=True) if t != NONE]
    nones = [(t, p) for t, p in zip(truth, predicted, strict=True) if t == NONE]
    per_class = study_report["abstention"]["per_class"]
    named = sum(c["named"] for name, c in per_class.items() if name != NONE)
    named_right = sum(c["named_right"] for name, c in per_class.items() if name != NONE)
    implant_count = sum(c["labelled"] for name, c in per_class.items() if name != NONE)
    return {
        "images": len(rows),
        "accuracy": float(np.mean([t == p for t, p in zip(truth, predicted, strict=True)])),
        "kappa": float(cohen_kappa_score(truth, predicted)),
        "arthroplasty_images": len(implants),
        "arthroplasty_accuracy": float(np.mean([t == p for t, p in implants])) if implants else None,
        "arthroplasty_kappa": float(cohen_kappa_score(*zip(*implants, strict=True))) if implants else None,
        "named_share": named / implant_count if implant_count else None,
        "named_precision": named_right / named if named else None,
        "named": named,
        "none_images": len(nones),
        "none_read_as_none": float(np.mean([p == NONE for _, p in nones])) if nones else None,
        "arthroplasty_read_as_none": float(np.mean([p == NONE for _, p in implants])) if implants else None,
    }


def out_of_fold_thresholds(out: Path, classes: tuple[str, ...], target_precision: float) -> dict[str, object]:
    """Class thresholds fitted on every fold's out-of-fold predictions together (each image predicted by the model
    that did not train on it): many more images than one run's validation part, so a threshold that reaches the
    precision by luck on a few images is less likely. Returns them with the share named and its precision."""
    probs, labels = [], []
    for predictions in sorted(out.glob("fold-*/evaluation/predictions.csv")):
        with predictions.open(newline="") as handle:
            for row in csv.DictReader(handle):
                probs.append([float(row[f"p_{name}"]) for name in classes])
                labels.append(classes.index(row["class"]))
    p, y = np.asarray(probs), np.asarray(labels)
    thresholds = choose_class_thresholds(p, y, classes, target_precision=target_precision)
    top, confidence = p.argmax(axis=1), p.max(axis=1)
    named = np.array([confidence[i] >= thresholds[classes[top[i]]] for i in range(len(y))])
    implant = y != classes.index(NONE)
    named_implant = named & implant & (top != classes.index(NONE))
    return {
        "images": len(y),
        "target_precision": target_precision,
        "class_thresholds": thresholds,
        "arthroplasty_named_share": float(named_implant.sum() / implant.sum()),
        "arthroplasty_named_precision": float((top[named_implant] == y[named_implant]).mean())
        if named_implant.any()
        else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("development", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--folds", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--architecture", default="regnetx_002")
    parser.add_argument("--input-size", type=int, default=160)
    parser.add_argument("--head-epochs", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=14)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--init-weights", type=Path)
    parser.add_argument("--flip", action="store_true", help="mirror training images left-right too")
    parser.add_argument(
        "--thresholds-only", type=float, metavar="PRECISION",
        help="fit class thresholds for this precision on the folds' out-of-fold predictions already in OUT, and stop",
    )  # fmt: skip
    args = parser.parse_args()
    if args.thresholds_only is not None:
        fitted = out_of_fold_thresholds(args.out, read_pack(PACK).class_names, args.thresholds_only)
        (args.out / "thresholds.json").write_text(json.dumps(fitted, indent=1) + "\n")
        print(json.dumps(fitted, indent=1))
        return

    with (args.development / LABELS_FILE).open(newline="") as handle:
        reader = csv.DictReader(handle)
        columns = list(reader.fieldnames or [])
        rows = list(reader)
    fold_of = _folds(rows, args.folds, args.seed)
    pack = read_pack(PACK)
    results = []
    for fold in range(args.folds):
        started = time.monotonic()
        work = args.out / f"fold-{fold}"
        train_dir = _folder(
            args.development, work / "train", [r for r in rows if fold_of[r["patient"]] != fold], columns
        )
        test_dir = _folder(args.development, work / "test", [r for r in rows if fold_of[r["patient"]] == fold], columns)
        config = TrainingConfig(
            architecture=args.architecture,
            input_size=args.input_size,
            head_epochs=args.head_epochs,
            epochs=args.epochs,
            lr=args.lr,
            batch_size=32,
            seed=args.seed,
            fractions=(0.9, 0.1, 0.0),
            flip=args.flip,
            init_weights=args.init_weights.resolve() if args.init_weights else None,
            name=f"shoulder-cv-{fold}",
            classes=pack.class_names,
            framing=pack.framing,
        )
        card = train(train_dir, work / "run", config, workers=0)
        report = evaluate_model(card, test_dir, work / "evaluation", n_bootstrap=0, pack=pack)
        figures = _figures(work / "evaluation" / "predictions.csv", report["study"])
        figures["minutes"] = round((time.monotonic() - started) / 60, 2)
        results.append(figures)
        print(f"fold {fold}: {json.dumps(figures)}", flush=True)
    keys = [key for key in results[0] if isinstance(results[0][key], float)]
    summary = {
        "recipe": vars(args) | {"development": str(args.development), "out": str(args.out),
                                "init_weights": str(args.init_weights) if args.init_weights else None},
        "folds": results,
        "mean": {k: statistics.mean(r[k] for r in results if r[k] is not None) for k in keys},
        "sd": {k: statistics.stdev(r[k] for r in results if r[k] is not None) for k in keys},
    }  # fmt: skip
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(json.dumps({"mean": summary["mean"], "sd": summary["sd"]}, indent=1))


if __name__ == "__main__":
    main()
