"""Hardware-present figures of gate runs side by side, from their out-of-fold readings (issue 15, screening).

    .venv/bin/python scripts/gate_hardware_compare.py --out docs/evaluation/gate-hardware-recipes-screening.json \\
        bundled=docs/evaluation/gate-out-of-fold.csv catavgmax=var/runs/gate-base-cam/out_of_fold.csv ...

Each NAME=CSV is an ``out_of_fold.csv`` as ``predraft train-task`` writes it (or ``out_of_fold_as_is.csv`` of
``scripts/gate_init_screening.py``), all of the same folds. For each: what
``scripts/gate_hardware_test_time.py`` reports for a way of reading (ROC AUC on real whole images, all and
FracAtlas alone; sensitivity and specificity on whole images at the balanced threshold, fitted on the same
readings and cross-fitted, with 95 % CIs from a bootstrap over groups; FracAtlas AP pelvis halves found), plus
region accuracy (argmax) and the FracAtlas images with hardware read lowest, so that a change that finds more
of them shows by name. Phantom rows are left out. Prints one line per run and writes the JSON.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
from gate_hardware_test_time import figures  # scripts/ is on sys.path when a script there runs

REGIONS = ("hip", "shoulder", "hand", "leg")
LOWEST = 12


def read_run(path: Path) -> dict[str, Any]:
    """The run's real rows: hardware figures, region accuracy and its lowest-read FracAtlas hardware images."""
    with path.open(newline="") as handle:
        records = [record for record in csv.DictReader(handle) if not record["image"].startswith("phantoms/")]
    labelled = [record for record in records if record["label_hardware"]]
    probability = np.clip([float(record["p_hardware_present"]) for record in labelled], 1e-6, 1 - 1e-6)
    positive = np.array([record["label_hardware"] == "present" for record in labelled])
    whole = np.array([record["crop"] == "whole" for record in labelled])
    fracatlas = np.array([record["image"].startswith("fracatlas/") for record in labelled])
    found = figures(
        np.log(probability / (1 - probability)),
        positive,
        whole,
        fracatlas,
        np.array([record["group"] for record in labelled]),
        np.array([int(record["fold"]) for record in labelled]),
    )
    regional = [record for record in records if record["label_region"]]
    read_as = [max(REGIONS, key=lambda region: float(record[f"p_region_{region}"])) for record in regional]
    found["region_accuracy"] = round(
        float(np.mean([guess == record["label_region"] for guess, record in zip(read_as, regional, strict=True)])), 4
    )
    missed = sorted(
        (float(record["p_hardware_present"]), record["image"])
        for record, hit, real in zip(labelled, positive & whole, fracatlas, strict=True)
        if hit and real
    )
    found["fracatlas_hardware_read_lowest"] = [[image, round(value, 4)] for value, image in missed[:LOWEST]]
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="NAME=out_of_fold.csv")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    summary = {}
    for item in args.runs:
        name, _, csv_path = item.partition("=")
        summary[name] = {"out_of_fold": csv_path} | read_run(Path(csv_path))
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
