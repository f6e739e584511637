"""Hardware-present figures of gate runs side by side, from their out-of-fold readings (issue 15, screening).

    .venv/bin/python scripts/gate_hardware_compare.py --out docs/evaluation/gate-hardware-recipes-screening.json \\
        bundled=docs/evaluation/gate-out-of-fold.csv catavgmax=var/runs/gate-base-cam/out_of_fold.csv ...

Each NAME=CSV is an ``out_of_fold.csv`` as ``predraft train-task`` writes it (or ``out_of_fold_as_is.csv`` of
``scripts/gate_init_screening.py``), all of the same folds. For each: what
``scripts/gate_hardware_test_time.py`` reports for a way of reading (ROC AUC on real whole images, all and
FracAtlas alone; sensitivity and specificity on whole images at the balanced threshold, fitted on the same
readings and cross-fitted, with 95 % CIs from a bootstrap over groups; FracAtlas AP pelvis halves found), plus
region accuracy (argmax) and the FracAtlas images with hardware read lowest, so that a change that finds more
of them shows by name. The rows are ``models/data/gate_labels.csv``'s (``--images``: the folder
``scripts/train_gate.sh`` makes), read with ``read_out_of_fold``; phantom rows are left out. Prints one line per
run and writes the JSON.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
from gate_hardware_test_time import figures  # scripts/ is on sys.path when a script there runs
from gate_init_screening import LABELS, ROOT, gate_config

from predraft.models.taskdata import TaskRow, read_task_rows, task_classes
from predraft.models.tasktraining import read_out_of_fold

LOWEST = 12


def read_run(path: Path, rows: list[TaskRow], classes: dict[str, tuple[str, ...]]) -> dict[str, Any]:
    """The run's real ``rows``: hardware figures, region accuracy and its lowest-read FracAtlas hardware images."""
    probabilities, fold_of = read_out_of_fold(path, rows, classes)
    labelled = [index for index, row in enumerate(rows) if "hardware" in row.labels]
    present = classes["hardware"].index("present")
    probability = np.clip(probabilities["hardware"][labelled, present], 1e-6, 1 - 1e-6)
    positive = np.array([rows[index].labels["hardware"] == "present" for index in labelled])
    whole = np.array([rows[index].crop == "whole" for index in labelled])
    fracatlas = np.array([rows[index].source == "fracatlas" for index in labelled])
    found = figures(
        np.log(probability / (1 - probability)),
        positive,
        whole,
        fracatlas,
        np.array([rows[index].group for index in labelled]),
        fold_of[labelled],
    )
    regional = [index for index, row in enumerate(rows) if "region" in row.labels]
    read_as = probabilities["region"][regional].argmax(axis=1)
    truth = [classes["region"].index(rows[index].labels["region"]) for index in regional]
    found["region_accuracy"] = round(float(np.mean(read_as == np.array(truth))), 4)
    missed = sorted(
        (float(value), rows[index].image)
        for value, index, hit, real in zip(probability, labelled, positive & whole, fracatlas, strict=True)
        if hit and real
    )
    found["fracatlas_hardware_read_lowest"] = [[image, round(value, 4)] for value, image in missed[:LOWEST]]
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="NAME=out_of_fold.csv")
    parser.add_argument("--images", type=Path, default=ROOT / "var" / "gate-images")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    config = gate_config(None, 20)
    every = read_task_rows(LABELS, args.images, list(config.tasks))
    rows = [row for row in every if row.source not in config.synthetic_sources]
    classes = {task: task_classes(every, task, order) for task, order in config.tasks.items()}
    # p(present) is all a hardware figure reads: a run with or without the ``external`` class compares alike
    classes["hardware"] = ("present",)
    summary = {}
    for item in args.runs:
        name, _, csv_path = item.partition("=")
        summary[name] = {"out_of_fold": csv_path} | read_run(Path(csv_path), rows, classes)
        run = summary[name]
        at = run["whole_images_cross_fitted"]
        print(
            f"{name:12} region {run['region_accuracy']:.4f}  AUC {run['auc_whole_images']:.4f} "
            f"(FracAtlas {run['auc_fracatlas_whole_images']:.4f})  cross-fitted "
            f"{at['sensitivity']['value']:.3f} / {at['specificity']['value']:.3f}  "
            f"halves {run['fracatlas_pelvis_halves_found']}"
        )
    args.out.write_text(json.dumps(summary, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
