"""A task card's thresholds and figures fitted again from its run's out-of-fold readings, without training.

    .venv/bin/python scripts/refit_thresholds.py models/gate/card.json docs/evaluation/gate-out-of-fold.csv \
        --labels models/data/gate_labels.csv --images var/gate-images --version 1.2.0 --out var/runs/gate-refit

``predraft train-task`` fits a card's thresholds (:func:`predraft.models.tasktraining.fit_thresholds`) and
measures its figures on the out-of-fold probabilities it writes to ``out_of_fold.csv``. When those rules change,
this refits the tasks of that CSV by the current rules, with the card's own training settings (``training`` in
the card), and writes a card that differs only in those tasks' thresholds and cross-validated figures and in its
version: same weights (copied beside it, sha256 unchanged), temperatures and added heads. Running
``train-task`` again with the same settings gives the same thresholds and figures, as the out-of-fold readings
do not depend on the rules (only the fourth decimal of a probability can differ: the CSV keeps five).

Fitted and measured on the same readings, a balanced threshold flatters itself a little; ``--report`` also
writes the gate class's figures with its threshold cross-fitted: for each fold, fitted on the other folds'
readings and applied to that fold's.

Gate 1.2.0 was made so from gate 1.1.0 (2026-12-07): its hip threshold is now the balanced point of hip or not
(``docs/evaluation/gate-hip-threshold.json``).
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
from pathlib import Path

import numpy as np

from predraft.models.taskcard import load_task_card, write_task_card
from predraft.models.taskdata import TaskRow, read_task_rows
from predraft.models.taskmetrics import grouped_rate, task_targets
from predraft.models.tasktraining import (
    CARD,
    TaskTrainingConfig,
    fit_thresholds,
    read_out_of_fold,
    threshold_and_measure,
)


def cross_fitted_gate(
    probabilities: dict[str, np.ndarray],
    targets: np.ndarray,
    rows: list[TaskRow],
    folds: np.ndarray,
    classes: dict[str, tuple[str, ...]],
    config: TaskTrainingConfig,
) -> dict[str, object]:
    """The gate class's threshold fitted on every fold but one and applied to that one, fold by fold: the share of
    real rows of the class at or above it and of the others below it, as grouped rates."""
    task, name = config.gate_task, config.gate_class
    assert task is not None and name is not None
    column, index = list(classes).index(task), classes[task].index(name)
    real = np.array([row.source not in config.synthetic_sources for row in rows]) & (targets[:, column] >= 0)
    called = np.zeros(len(rows), dtype=bool)
    per_fold = {}
    only_gate = config.model_copy(update={"binary": {}, "tasks": {task: classes[task]}})
    for fold in sorted(set(folds[real].tolist())):
        fitting = real & (folds != fold)
        fitted = fit_thresholds(
            {task: probabilities[task][fitting]}, targets[fitting][:, [column]], {task: classes[task]}, only_gate
        )
        per_fold[fold] = fitted[task][name]
        held = real & (folds == fold)
        called[held] = probabilities[task][held, index] >= per_fold[fold]
    groups = np.array([row.group for row in rows])
    is_class = targets[:, column] == index

    def rate(hits: np.ndarray, mask: np.ndarray) -> dict[str, object]:
        return grouped_rate(hits[mask], groups[mask], n_bootstrap=config.n_bootstrap, seed=config.seed)

    return {
        "thresholds_by_held_out_fold": per_fold,
        f"{name}_at_or_above": rate(called, real & is_class),
        "other_below": rate(~called, real & ~is_class),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("card", type=Path)
    parser.add_argument("out_of_fold", type=Path)
    parser.add_argument("--labels", type=Path, required=True, help="the CSV the run was trained on")
    parser.add_argument("--images", type=Path, required=True, help="the folder its image paths are relative to")
    parser.add_argument("--version", required=True, help="the refitted card's version")
    parser.add_argument("--out", type=Path, required=True, help="folder for the refitted card and its weights")
    parser.add_argument("--report", type=Path, help="JSON for the gate class's threshold, fitted and cross-fitted")
    args = parser.parse_args()

    card, weights = load_task_card(args.card)
    settings = {key: value for key, value in card.training.items() if key in TaskTrainingConfig.model_fields}
    if "binary_task" in card.training:  # cards before train-task took several binary tasks
        settings["binary"] = {card.training["binary_task"]: card.training["positive_class"]}
    config = TaskTrainingConfig(**settings)
    with args.out_of_fold.open(newline="") as handle:
        header = next(csv.reader(handle))
    tasks = [task for task in card.tasks if f"label_{task}" in header]
    classes = {task: card.tasks[task] for task in tasks}
    rows = read_task_rows(args.labels, args.images, tasks)
    try:
        probabilities, folds = read_out_of_fold(args.out_of_fold, rows, classes)
    except ValueError as exc:  # a CSV from another run or labels file: say so, without a traceback
        raise SystemExit(str(exc)) from exc
    targets = task_targets(rows, classes)
    thresholds, metrics = threshold_and_measure(probabilities, targets, rows, classes, config)

    cross_validation = {**card.metrics.get("cross_validation", {}), **metrics}
    refitted = card.model_copy(
        update={
            "version": args.version,
            "thresholds": {**card.thresholds, **thresholds},
            "metrics": {**card.metrics, "cross_validation": cross_validation},
        }
    )
    args.out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(weights, args.out / card.weights)
    write_task_card(refitted, args.out / CARD)
    for task in tasks:
        print(f"{task}: thresholds {card.thresholds.get(task)} -> {thresholds.get(task)}")
    for rule, figure in metrics.get(config.gate_task or "", {}).get("service_rules", {}).items():
        print(f"{rule}: {figure['value']} {figure['ci95']} (n={figure['n']})")
    print(f"wrote {args.out / CARD}")
    if args.report and config.gate_task in classes:
        report = {
            "card": f"{refitted.display_name} (from {card.display_name}, {args.out_of_fold.name})",
            "threshold": thresholds[config.gate_task][config.gate_class],
            "fitted_on_all_folds": metrics[config.gate_task]["service_rules"],
            "cross_fitted": cross_fitted_gate(probabilities, targets, rows, folds, classes, config),
        }
        args.report.write_text(json.dumps(report, indent=2) + "\n")
        print(f"cross-fitted: {report['cross_fitted']}")


if __name__ == "__main__":
    main()
