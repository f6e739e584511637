"""The gate's cross-validation with another starting point, and with test-time mirroring (issue 15, screening).

    bash scripts/train_gate.sh    # or only its first lines: var/phantoms/train, var/gate-images
    .venv/bin/python scripts/gate_init_screening.py var/runs/gate-random --init none \
        --out docs/evaluation/gate-init-screening.json

Runs the first step of ``scripts/train_gate.sh`` (gate 1.0.0: ``predraft train-task`` on
``models/data/gate_labels.csv``) with the same folds, fold seeds and settings, but its backbone started from
``--init`` (``none``: random weights) instead of the demo hip model 1.1.0's (``var/runs/demo-4``, about two hours
of ``scripts/train_demo.sh`` on a two-core CPU). Each held-out fold is read twice, as it is and mirrored left to
right, and the out-of-fold figures are computed three ways, each with its own temperatures and thresholds fitted
as train-task fits them: as it is (what train-task does), mirrored, and the mean of the two logits (test-time
mirroring). No shipped network is trained. ``--summarise-only`` recomputes the JSON from a run folder's
``logits.npz``.

Beyond train-task's figures, each way gets the operating point a hip threshold alone would give (the p(hip) at
which sensitivity and specificity are balanced, fitted and measured on the same out-of-fold readings, so a little
optimistic), and the bundled gate's own cross-validated figures are copied beside them for comparison.

What it gave (2026-12-06): README, "The body-part gate and hardware check", and
``docs/evaluation/gate-init-screening.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.torch import save_file

from predraft.models.gate_labels import HARDWARE_CLASSES
from predraft.models.taskcard import GLOBAL_POOLS
from predraft.models.taskdata import TaskRow, prepare_task_images, read_task_rows, task_classes
from predraft.models.taskmetrics import task_targets
from predraft.models.tasktraining import (
    TaskTrainingConfig,
    balanced_threshold,
    calibrate_and_measure,
    deal_folds,
    fit_fold,
    predict_logits,
    write_out_of_fold,
)

ROOT = Path(__file__).resolve().parents[1]
LABELS = ROOT / "models" / "data" / "gate_labels.csv"
BUNDLED_CV = ROOT / "docs" / "evaluation" / "gate-cross-validation.json"
WAYS = ("as_is", "mirrored", "mean_of_both")


def gate_config(
    init: Path | None, epochs: int, global_pool: str = "avg", metal_paste: float = 0.0
) -> TaskTrainingConfig:
    """scripts/train_gate.sh's first step, but for its starting point (and, if asked, its epochs, its pooling and
    a share of real films without hardware given synthetic metal, predraft.models.metalpaste)."""
    return TaskTrainingConfig(
        tasks={"region": ("hip", "shoulder", "hand", "leg"), "hardware": HARDWARE_CLASSES},
        architecture="regnetx_002",
        global_pool=global_pool,
        input_size=160,
        epochs=epochs,
        samples_per_epoch=2048,
        lr=2e-3,
        folds=5,
        seed=0,
        gate_task="region",
        gate_class="hip",
        binary={"hardware": "present"},
        metal_paste={"hardware": metal_paste} if metal_paste else {},
        synthetic_sources=("phantoms",),
        init_weights=init,
        name="predraft-gate-screening",
        version="0.0.0",
        training_data="screening only",
    )


def cross_validate(config: TaskTrainingConfig, rows: list[TaskRow], images: Path, run: Path) -> None:
    """Five folds as train-task deals and trains them; fold weights and both readings' logits written to ``run``."""
    classes = {task: task_classes(rows, task, order) for task, order in config.tasks.items()}
    pixels = prepare_task_images(images, rows, input_size=config.input_size, cache_dir=run / "cache")
    targets, fold_of = task_targets(rows, classes), deal_folds(rows, config)
    logits = {f"{way}_{task}": np.zeros((len(rows), len(names))) for way in WAYS[:2] for task, names in classes.items()}
    started = time.monotonic()
    for fold in range(config.folds):
        network = fit_fold(pixels, targets, rows, fold_of, fold, classes, config, progress=print)
        save_file({k: v.contiguous() for k, v in network.state_dict().items()}, str(run / f"fold{fold}.safetensors"))
        held = pixels[fold_of == fold]
        for way, images_read in (("as_is", held), ("mirrored", np.ascontiguousarray(held[:, :, ::-1]))):
            for task, value in predict_logits(network, images_read).items():
                logits[f"{way}_{task}"][fold_of == fold] = value
        print(f"fold {fold + 1} done after {(time.monotonic() - started) / 60:.1f} min", flush=True)
    np.savez(run / "logits.npz", fold_of=fold_of, minutes=(time.monotonic() - started) / 60, **logits)


def _balanced_hip_point(probabilities: np.ndarray, is_hip: np.ndarray) -> dict[str, float]:
    threshold = balanced_threshold(probabilities, is_hip)
    sensitivity = float((probabilities[is_hip] >= threshold).mean())
    specificity = float((probabilities[~is_hip] < threshold).mean())
    return {"threshold": threshold, "sensitivity": round(sensitivity, 4), "specificity": round(specificity, 4)}


def summarise(config: TaskTrainingConfig, rows: list[TaskRow], run: Path) -> dict[str, Any]:
    """Each way's temperatures, thresholds and figures, as train-task computes them, plus the hip operating point."""
    classes = {task: task_classes(rows, task, order) for task, order in config.tasks.items()}
    targets = task_targets(rows, classes)
    stored = np.load(run / "logits.npz")
    real = np.array([row.source not in config.synthetic_sources for row in rows])
    region_column = list(classes).index("region")
    region_rows = real & (targets[:, region_column] >= 0)
    is_hip = targets[region_rows, region_column] == classes["region"].index("hip")
    result: dict[str, Any] = {
        "init": str(config.init_weights) if config.init_weights else "random",
        "epochs": config.epochs,
        "global_pool": config.global_pool,
        "metal_paste": config.metal_paste,
        "minutes_cross_validation": round(float(stored["minutes"]), 1),
        "ways": {},
    }
    for way in WAYS:
        if way == "mean_of_both":
            logits = {task: (stored[f"as_is_{task}"] + stored[f"mirrored_{task}"]) / 2 for task in classes}
        else:
            logits = {task: stored[f"{way}_{task}"] for task in classes}
        temperatures, probabilities, thresholds, metrics = calibrate_and_measure(logits, targets, rows, classes, config)
        write_out_of_fold(run / f"out_of_fold_{way}.csv", rows, stored["fold_of"], probabilities, classes)
        hip = probabilities["region"][region_rows, classes["region"].index("hip")]
        result["ways"][way] = {
            "temperatures": temperatures,
            "thresholds": thresholds,
            "hip_threshold_alone_balanced": _balanced_hip_point(hip, is_hip),
            "metrics": metrics,
        }
    bundled = json.loads(BUNDLED_CV.read_text())
    result["bundled_gate_1_0_0"] = {
        "init": "var/runs/demo-4/weights.safetensors (demo hip model 1.1.0, phantoms only)",
        "thresholds": bundled["thresholds"],
        "metrics": {key: value for key, value in bundled["metrics"].items() if key != "by_source"},
    }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="run folder: fold weights, logits.npz, out_of_fold_*.csv")
    parser.add_argument("--init", required=True, help="backbone weights to start from, or 'none' (random)")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--global-pool", default="avg", choices=GLOBAL_POOLS, help="how the backbone's map is pooled")
    parser.add_argument("--metal-paste", type=float, default=0.0, help="share of real negatives given synthetic metal")
    parser.add_argument("--images", type=Path, default=ROOT / "var" / "gate-images")
    parser.add_argument("--labels", type=Path, default=LABELS, help="the training CSV (a variant of the gate's)")
    parser.add_argument("--out", type=Path, required=True, help="the summary JSON")
    parser.add_argument("--summarise-only", action="store_true", help="the run folder's logits.npz exists")
    args = parser.parse_args()
    init = None if args.init == "none" else Path(args.init)
    config = gate_config(init, args.epochs, args.global_pool, args.metal_paste)
    rows = read_task_rows(args.labels, args.images, list(config.tasks))
    args.run.mkdir(parents=True, exist_ok=True)
    if not args.summarise_only:
        cross_validate(config, rows, args.images, args.run)
    args.out.write_text(json.dumps(summarise(config, rows, args.run), indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
