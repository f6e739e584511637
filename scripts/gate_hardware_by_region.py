"""Hardware present with a threshold per body region instead of one, from the gate's out-of-fold readings (issue 15).

    .venv/bin/python scripts/gate_hardware_by_region.py --out docs/evaluation/gate-hardware-by-region.json

No training: the bundled gate's kept out-of-fold readings (``docs/evaluation/gate-out-of-fold.csv``; ``--images``
is the folder ``scripts/train_gate.sh`` makes) are recalibrated per region. Each real image gets a region: the
region head's top reading for a whole image, hip for a half of an AP pelvis (in service the hardware check reads
hip crops). A logistic regression of hardware on the logit of p(present) and the region (an offset per region,
and, in a second variant, a slope per region too) is fitted on whole images, then one balanced threshold on its
output (as ``balanced_threshold`` fits the card's); that is one threshold on p(present) per region. Measured
two ways: fitted and measured on the same readings (as the card's figures are), and cross-fitted (fitted on four
folds, applied to the fifth), with 95 % CIs from a bootstrap over groups; beside them the single balanced
threshold the same two ways. Prints a summary and writes the JSON.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from gate_init_screening import LABELS, ROOT, gate_config  # scripts/ is on sys.path when a script there runs
from sklearn.linear_model import LogisticRegression

from predraft.models.taskdata import read_task_rows, task_classes
from predraft.models.taskmetrics import grouped_rate
from predraft.models.tasktraining import balanced_threshold, read_out_of_fold

BOOTSTRAP = 1000
OUT_OF_FOLD = ROOT / "docs" / "evaluation" / "gate-out-of-fold.csv"


class RegionCalibration:
    """p(present) recalibrated per region, with one balanced threshold: fitted on whole images only."""

    def __init__(
        self, logit: np.ndarray, region: np.ndarray, positive: np.ndarray, regions: tuple[str, ...], *, slopes: bool
    ) -> None:
        if not positive.any() or positive.all():
            raise ValueError("a calibration needs images with and without hardware")
        self.regions, self.slopes = regions, slopes
        self.model = LogisticRegression(C=1.0).fit(self._features(logit, region), positive)
        self.threshold = balanced_threshold(self.probability(logit, region), positive)

    def _features(self, logit: np.ndarray, region: np.ndarray) -> np.ndarray:
        one_hot = np.stack([region == name for name in self.regions], axis=1).astype(float)
        columns = [logit[:, None], one_hot] + ([one_hot * logit[:, None]] if self.slopes else [])
        return np.concatenate(columns, axis=1)

    def probability(self, logit: np.ndarray, region: np.ndarray) -> np.ndarray:
        return self.model.predict_proba(self._features(logit, region))[:, 1]

    def calls(self, logit: np.ndarray, region: np.ndarray) -> np.ndarray:
        return self.probability(logit, region) >= self.threshold

    def thresholds_on_p(self) -> dict[str, float]:
        """The same rule as one threshold on the head's p(present) per region (the recalibration is monotone)."""
        grid = np.linspace(-12, 12, 24001)
        found = {}
        for name in self.regions:
            called = self.calls(grid, np.full(len(grid), name))
            found[name] = round(float(1 / (1 + np.exp(-grid[called.argmax()]))), 4) if called.any() else 1.0
        return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=Path, default=ROOT / "var" / "gate-images")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    config = gate_config(None, 20)
    every = read_task_rows(LABELS, args.images, list(config.tasks))
    classes = {task: task_classes(every, task, order) for task, order in config.tasks.items()}
    real = [row for row in every if row.source not in config.synthetic_sources]
    probabilities, fold_of = read_out_of_fold(OUT_OF_FOLD, real, classes)
    kept = [index for index, row in enumerate(real) if "hardware" in row.labels]
    rows = [real[index] for index in kept]
    fold_of = fold_of[kept]
    present = np.clip(probabilities["hardware"][kept, classes["hardware"].index("present")], 1e-6, 1 - 1e-6)
    logit = np.log(present / (1 - present))
    positive = np.array([row.labels["hardware"] == "present" for row in rows])
    whole = np.array([row.crop == "whole" for row in rows])
    fracatlas = np.array([row.source == "fracatlas" for row in rows])
    groups = np.array([row.group for row in rows])
    regions = classes["region"]
    region = np.where(whole, np.array(regions)[probabilities["region"][kept].argmax(axis=1)], "hip")

    def rates(calls: np.ndarray, among: np.ndarray) -> dict[str, Any]:
        hit, miss = among & positive, among & ~positive
        return {
            "sensitivity": grouped_rate(calls[hit], groups[hit], n_bootstrap=BOOTSTRAP, seed=0),
            "specificity": grouped_rate(~calls[miss], groups[miss], n_bootstrap=BOOTSTRAP, seed=0),
        }

    def report(in_sample: np.ndarray, cross_fitted: np.ndarray) -> dict[str, Any]:
        halves = ~whole & fracatlas
        hip_images = whole & fracatlas & np.array([row.labels.get("region") == "hip" for row in rows])
        return {
            "whole_images_fitted_on_the_same_readings": rates(in_sample, whole),
            "whole_images_cross_fitted": rates(cross_fitted, whole),
            "fracatlas_whole_images_sensitivity_cross_fitted": round(
                float(cross_fitted[whole & fracatlas & positive].mean()), 4
            ),
            "fracatlas_hip_images_cross_fitted": rates(cross_fitted, hip_images),
            "fracatlas_pelvis_halves_found_cross_fitted": [
                int(cross_fitted[halves & positive].sum()),
                int((halves & positive).sum()),
            ],
            "fracatlas_pelvis_halves_false_alarms_cross_fitted": [
                int(cross_fitted[halves & ~positive].sum()),
                int((halves & ~positive).sum()),
            ],
        }

    def fitted_and_cross_fitted(fit: Callable[[np.ndarray], Callable[[np.ndarray], np.ndarray]]) -> np.ndarray:
        """``fit(train)`` is a rule fitted on the rows of mask ``train`` that calls the rows of a mask: the calls
        of the rule fitted on every whole image, and of the rule fitted on the other folds' whole images, fold by
        fold, stacked (two rows)."""
        cross = np.zeros(len(rows), dtype=bool)
        for fold in np.unique(fold_of):
            held = fold_of == fold
            cross[held] = fit(whole & ~held)(held)
        return np.stack([fit(whole)(np.ones(len(rows), dtype=bool)), cross])

    def single(train: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
        threshold = balanced_threshold(present[train], positive[train])
        return lambda among: present[among] >= threshold

    single_threshold = balanced_threshold(present[whole], positive[whole])
    summary: dict[str, Any] = {
        "out_of_fold": str(OUT_OF_FOLD.relative_to(ROOT)),
        "images": {
            "whole": int(whole.sum()),
            "with_hardware": int((whole & positive).sum()),
            "pelvis_halves": int((~whole).sum()),
        },
        "single_threshold": {"threshold": round(single_threshold, 4)} | report(*fitted_and_cross_fitted(single)),
    }
    for slopes in (False, True):

        def calibrated(train: np.ndarray, slopes: bool = slopes) -> Callable[[np.ndarray], np.ndarray]:
            fitted = RegionCalibration(logit[train], region[train], positive[train], regions, slopes=slopes)
            return lambda among: fitted.calls(logit[among], region[among])

        on_every_image = RegionCalibration(logit[whole], region[whole], positive[whole], regions, slopes=slopes)
        name = "per_region_offset_and_slope" if slopes else "per_region_offset"
        summary[name] = {"thresholds_on_p": on_every_image.thresholds_on_p()} | report(
            *fitted_and_cross_fitted(calibrated)
        )
    for name, run in summary.items():
        if isinstance(run, dict) and "whole_images_cross_fitted" in run:
            same, cross = run["whole_images_fitted_on_the_same_readings"], run["whole_images_cross_fitted"]
            print(
                f"{name:28} same readings {same['sensitivity']['value']:.3f} / {same['specificity']['value']:.3f}  "
                f"cross-fitted {cross['sensitivity']['value']:.3f} / {cross['specificity']['value']:.3f}  "
                f"hip halves found {run['fracatlas_pelvis_halves_found_cross_fitted']} "
                f"false alarms {run['fracatlas_pelvis_halves_false_alarms_cross_fitted']}"
            )
    args.out.write_text(json.dumps(summary, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
