"""The gate's hardware head read another way at test time: larger inputs and tiles (issue 15, screening).

    .venv/bin/python scripts/gate_init_screening.py var/runs/gate-folds --init var/runs/demo-4/weights.safetensors \
        --out var/gate-folds-screening.json      # the bundled gate's own cross-validation, fold weights kept
    .venv/bin/python scripts/gate_hardware_test_time.py var/runs/gate-folds \
        --out docs/evaluation/gate-hardware-test-time-screening.json

``gate_init_screening.py`` started from the demo hip model 1.1.0 runs the first step of ``scripts/train_gate.sh``
(same folds, fold seeds and settings), so its out-of-fold readings are gate 1.0.0's (byte-identical to
``docs/evaluation/gate-out-of-fold.csv`` when this was run) and it keeps each fold's network. This script has
each fold's network read the real rows it never saw (FracAtlas and the shoulder implants, whole images and the
AP pelvis halves; phantoms left out) in several ways, and scores each way by the hardware head's logit
difference (present minus absent):

- ``whole-S``: the whole image prepared at S px instead of the 160 px it was trained at (the network's global
  pooling takes any size), so that small hardware covers more pixels;
- ``tiles-S``: the image prepared at S px, read as 3 x 3 overlapping 160 px tiles, the largest score kept;
- ``mean-of-160-and-X``: the mean of the 160 px score and way X's.

For each way: the ROC AUC on whole images (all real, and FracAtlas alone), sensitivity and specificity on whole
images at the balanced threshold, fitted on the same readings and cross-fitted (fitted on four folds, applied to
the fifth), with a 95 % CI from a bootstrap over groups, and the FracAtlas AP pelvis halves found at that
threshold (a hip crop, as the service checks it). The cost of a way is counted in 160 px network passes.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
from gate_init_screening import LABELS, gate_config  # scripts/ is on sys.path when a script there runs
from safetensors.torch import load_file
from scipy.special import logsumexp
from sklearn.metrics import roc_auc_score

from predraft.models.gate_labels import HARDWARE_CLASSES
from predraft.models.imagetask import TaskNetwork
from predraft.models.taskdata import TaskRow, prepare_task_images, read_task_rows, task_classes
from predraft.models.taskmetrics import grouped_rate
from predraft.models.tasktraining import TaskTrainingConfig, balanced_threshold, predict_logits

ROOT = Path(__file__).resolve().parents[1]
TRAINED_SIZE = 160
SIZES = (192, 224, 256, 320)
TILED_SIZES = (256, 320)
BOOTSTRAP = 1000
#: The hardware head's column of "present" (absent, external, present since gate 1.3.0).
PRESENT = HARDWARE_CLASSES.index("present")


def _scores(network: TaskNetwork, pixels: np.ndarray) -> np.ndarray:
    """The log-odds of hardware present against every other hardware class (absent, and external since 1.3.0)."""
    logits = predict_logits(network, pixels, batch_size=64)["hardware"]
    return logits[:, PRESENT] - logsumexp(np.delete(logits, PRESENT, axis=1), axis=1)


def _tiled(network: TaskNetwork, pixels: np.ndarray) -> np.ndarray:
    """The largest score of the 3 x 3 overlapping 160 px tiles of (N, S, S) ``pixels``."""
    step = (pixels.shape[1] - TRAINED_SIZE) // 2
    best = np.full(len(pixels), -np.inf)
    for top in range(0, 3 * step, step):
        for left in range(0, 3 * step, step):
            tile = np.ascontiguousarray(pixels[:, top : top + TRAINED_SIZE, left : left + TRAINED_SIZE])
            best = np.maximum(best, _scores(network, tile))
    return best


def read_every_way(
    run: Path, rows: list[TaskRow], images: Path, fold_of: np.ndarray, config: TaskTrainingConfig
) -> dict[str, np.ndarray]:
    """Each way's score for every row, read by the network of the row's fold (``config``: the run's)."""
    classes = {task: task_classes(rows, task, order) for task, order in config.tasks.items()}
    networks = []
    for fold in range(config.folds):
        network = TaskNetwork(config.architecture, classes, config.global_pool)
        network.load_state_dict(load_file(str(run / f"fold{fold}.safetensors")))
        networks.append(network.eval())
    ways: dict[str, np.ndarray] = {}
    for size in (TRAINED_SIZE, *SIZES):
        started = time.monotonic()
        pixels = prepare_task_images(images, rows, input_size=size, cache_dir=run / "cache")
        whole, tiles = np.zeros(len(rows)), np.zeros(len(rows))
        for fold, network in enumerate(networks):
            held = fold_of == fold
            whole[held] = _scores(network, pixels[held])
            if size in TILED_SIZES:
                tiles[held] = _tiled(network, pixels[held])
        ways[f"whole-{size}"] = whole
        if size in TILED_SIZES:
            ways[f"tiles-{size}"] = tiles
        print(f"{size} px read in {time.monotonic() - started:.0f} s", flush=True)
    for way in [way for way in ways if way != f"whole-{TRAINED_SIZE}"]:
        ways[f"mean-of-160-and-{way}"] = (ways[f"whole-{TRAINED_SIZE}"] + ways[way]) / 2
    return ways


def passes(way: str) -> float:
    """The way's cost in 160 px network passes (a pass at S px costs about (S / 160)^2)."""
    if way.startswith("mean-of-160-and-"):
        return 1 + passes(way.removeprefix("mean-of-160-and-"))
    kind, size = way.rsplit("-", 1)
    return 9.0 if kind == "tiles" else round((int(size) / TRAINED_SIZE) ** 2, 2)


def figures(
    score: np.ndarray,
    positive: np.ndarray,
    whole: np.ndarray,
    fracatlas: np.ndarray,
    groups: np.ndarray,
    fold_of: np.ndarray,
) -> dict[str, Any]:
    probability = 1 / (1 + np.exp(-score))  # balanced_threshold floors scores to 1e-4: it wants [0, 1]
    threshold = balanced_threshold(probability[whole], positive[whole])
    called = probability >= threshold
    cross_fitted = np.zeros(len(score), dtype=bool)
    for fold in np.unique(fold_of):
        others = whole & (fold_of != fold)
        fold_threshold = balanced_threshold(probability[others], positive[others])
        cross_fitted[fold_of == fold] = probability[fold_of == fold] >= fold_threshold

    def rates(calls: np.ndarray, rows: np.ndarray) -> dict[str, Any]:
        hit, miss = rows & positive, rows & ~positive
        return {
            "sensitivity": grouped_rate(calls[hit], groups[hit], n_bootstrap=BOOTSTRAP, seed=0),
            "specificity": grouped_rate(~calls[miss], groups[miss], n_bootstrap=BOOTSTRAP, seed=0),
        }

    halves = ~whole & fracatlas
    return {
        "auc_whole_images": round(float(roc_auc_score(positive[whole], score[whole])), 4),
        "auc_fracatlas_whole_images": round(
            float(roc_auc_score(positive[whole & fracatlas], score[whole & fracatlas])), 4
        ),
        "whole_images_at_balanced_threshold": rates(called, whole),
        "whole_images_cross_fitted": rates(cross_fitted, whole),
        "fracatlas_whole_images_sensitivity_at_balanced_threshold": round(
            float(called[whole & fracatlas & positive].mean()), 4
        ),
        "fracatlas_pelvis_halves_found": [int(called[halves & positive].sum()), int((halves & positive).sum())],
        "fracatlas_pelvis_halves_false_alarms": [
            int(called[halves & ~positive].sum()),
            int((halves & ~positive).sum()),
        ],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="gate_init_screening.py's run folder (fold weights, logits.npz)")
    parser.add_argument("--images", type=Path, default=ROOT / "var" / "gate-images")
    parser.add_argument("--out", type=Path, required=True, help="the summary JSON")
    args = parser.parse_args()
    config = gate_config(None, 20)
    every = read_task_rows(LABELS, args.images, list(config.tasks))
    kept = [i for i, row in enumerate(every) if row.source not in config.synthetic_sources and "hardware" in row.labels]
    rows = [every[i] for i in kept]
    fold_of = np.load(args.run / "logits.npz")["fold_of"][kept]
    ways = read_every_way(args.run, rows, args.images, fold_of, config)
    positive = np.array([row.labels["hardware"] == "present" for row in rows])
    whole = np.array([row.crop == "whole" for row in rows])
    fracatlas = np.array([row.source == "fracatlas" for row in rows])
    groups = np.array([row.group for row in rows])
    summary = {
        "run": str(args.run),
        "rows": {
            "whole_images": int(whole.sum()),
            "with_hardware": int((whole & positive).sum()),
            "halves": int((~whole).sum()),
        },
        "ways": {
            way: {"network_passes_of_160_px": passes(way)} | figures(score, positive, whole, fracatlas, groups, fold_of)
            for way, score in ways.items()
        },
    }
    args.out.write_text(json.dumps(summary, indent=1) + "\n")
    for way, found in summary["ways"].items():
        at = found["whole_images_cross_fitted"]
        print(
            f"{way:28} passes {found['network_passes_of_160_px']:5.2f}  AUC {found['auc_whole_images']:.4f} "
            f"(FracAtlas {found['auc_fracatlas_whole_images']:.4f})  cross-fitted "
            f"{at['sensitivity']['value']:.3f} / {at['specificity']['value']:.3f}"
        )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
