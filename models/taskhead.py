"""One more head on a trained task network: a linear read-out of its frozen features.

The backbone and the card's other heads stay bit for bit as they were, so their cross-validated figures
stand; only the new task is learned. It is a multinomial logistic regression (scikit-learn) on the
backbone's pooled features of the rows that label it, standardised, cross-validated by group first
(StratifiedGroupKFold, as ``train-task``: no group on both sides of a fold). Its softmax temperature and
thresholds are fitted on the out-of-fold predictions by ``train-task``'s rules
(:func:`predraft.models.tasktraining.fit_thresholds`; synthetic sources left out), its figures come with 95 % CIs
from a bootstrap over groups; then it is fitted on every row and written into the network as one more
``torch.nn.Linear`` head.

Caveat, stated in the card: the backbone was trained on the same images for its own tasks, so the new head's
cross-validated figures may be somewhat optimistic (the backbone never saw the new task's labels). The
bundled gate's ``field`` head was made this way (scripts/train_gate.sh):

    python -m predraft.models.taskhead BASE_CARD LABELS.csv --images DIR --out RUN --task field=pelvis,other \\
        --binary pelvis --min-specificity 0.95 --synthetic-source phantoms --version 1.1.0
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedGroupKFold

from predraft.models.card import sha256_of
from predraft.models.imagetask import TaskNetwork, load_task_model, to_network_input
from predraft.models.taskcard import TaskCard, write_task_card
from predraft.models.taskdata import prepare_task_images, read_task_rows, task_classes
from predraft.models.taskmetrics import task_targets
from predraft.models.tasktraining import (
    CARD,
    OUT_OF_FOLD,
    REPORT,
    WEIGHTS,
    TaskTrainingConfig,
    calibrate_and_measure,
    write_out_of_fold,
)

log = logging.getLogger(__name__)

METHOD = "logistic regression on the frozen backbone's pooled features (predraft.models.taskhead)"


def backbone_features(network: TaskNetwork, pixels: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """(N, F) float64 pooled features of uint8 (N, S, S) ``pixels``."""
    parts = []
    with torch.inference_mode():
        for start in range(0, len(pixels), batch_size):
            batch = to_network_input(torch.from_numpy(pixels[start : start + batch_size]))
            parts.append(network.backbone(batch).double().numpy())
    return np.concatenate(parts) if parts else np.zeros((0, 0))


class _Head:
    """Standardisation plus logistic regression; its logits as an (N, C) array and as a Linear layer."""

    def __init__(self, n_classes: int, seed: int) -> None:
        self.n_classes = n_classes
        self.regression = LogisticRegression(C=1.0, max_iter=5000, random_state=seed)

    def fit(self, features: np.ndarray, labels: np.ndarray) -> _Head:
        missing = sorted(set(range(self.n_classes)) - set(labels.tolist()))
        if missing:
            raise ValueError(f"no row of class index {missing} to learn from")
        self.mean, self.scale = features.mean(axis=0), features.std(axis=0) + 1e-6
        self.regression.fit((features - self.mean) / self.scale, labels)
        return self

    def weights(self) -> tuple[np.ndarray, np.ndarray]:
        """(C, F) weight and (C,) bias of the equivalent Linear layer on raw features (softmax-equivalent)."""
        coef, intercept = self.regression.coef_, self.regression.intercept_
        if self.n_classes == 2:  # one score, for class 1; class 0's logit is 0
            coef = np.vstack([np.zeros_like(coef), coef])
            intercept = np.array([0.0, intercept[0]])
        weight = coef / self.scale
        return weight, intercept - weight @ self.mean

    def logits(self, features: np.ndarray) -> np.ndarray:
        weight, bias = self.weights()
        return features @ weight.T + bias


def add_task_head(
    base_card: Path,
    csv_path: Path,
    images_dir: Path,
    out_dir: Path,
    *,
    task: str,
    classes: Sequence[str],
    binary: str | None = None,
    min_specificity: float | None = None,
    synthetic_sources: Sequence[str] = (),
    folds: int = 5,
    seed: int = 0,
    n_bootstrap: int = 1000,
    version: str,
    training_data: str | None = None,
    intended_use: str | None = None,
    progress: Callable[[str], None] = log.info,
) -> TaskCard:
    """Write ``out_dir/card.json`` and ``weights.safetensors``: the base network with a ``task`` head added.

    ``binary`` names the positive class of a two-class task (its threshold by the balanced point, or by
    ``min_specificity``). ``training_data`` and ``intended_use`` replace the base card's, where given.
    Raises ValueError when the task exists already or a class has no row.
    """
    started = time.monotonic()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = load_task_model(Path(base_card))
    base, network = model.card, model.network
    if task in base.tasks:
        raise ValueError(f"{base.display_name} has a {task!r} head already")
    names = tuple(classes)
    config = TaskTrainingConfig(
        tasks={task: names},
        folds=folds,
        seed=seed,
        n_bootstrap=n_bootstrap,
        binary={task: binary} if binary else {},
        min_specificity={task: min_specificity} if min_specificity else {},
        synthetic_sources=tuple(synthetic_sources),
    )
    rows = read_task_rows(csv_path, images_dir, [task])
    task_classes(rows, task, names)  # every label must be one of the classes
    targets = task_targets(rows, {task: names})
    labels, groups = targets[:, 0], np.array([row.group for row in rows])
    progress(f"{len(rows)} rows labelled {task}, {len(set(groups.tolist()))} groups")
    pixels = prepare_task_images(images_dir, rows, input_size=base.input_size, cache_dir=out_dir / "cache")
    features = backbone_features(network, pixels)
    strata = [f"{row.labels[task]}|{row.source}" for row in rows]
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    logits = np.zeros((len(rows), len(names)))
    fold_of = np.full(len(rows), -1)
    for fold, (train, held_out) in enumerate(splitter.split(features, strata, groups)):
        head = _Head(len(names), seed).fit(features[train], labels[train])
        logits[held_out], fold_of[held_out] = head.logits(features[held_out]), fold
    temperatures, probabilities, thresholds, measured = calibrate_and_measure(
        {task: logits}, targets, rows, {task: names}, config
    )
    temperature = temperatures[task]
    metrics: dict[str, Any] = measured[task]  # this head's figures, with its own by_source
    if "by_source" in measured:
        metrics["by_source"] = {source: figures[task] for source, figures in measured["by_source"].items()}
    write_out_of_fold(out_dir / OUT_OF_FOLD, rows, fold_of, probabilities, {task: names})
    weight, bias = _Head(len(names), seed).fit(features, labels).weights()
    linear = torch.nn.Linear(weight.shape[1], len(names))
    with torch.no_grad():
        linear.weight.copy_(torch.from_numpy(weight).float())
        linear.bias.copy_(torch.from_numpy(bias).float())
    network.heads[task] = linear
    save_file({key: value.contiguous() for key, value in network.state_dict().items()}, str(out_dir / WEIGHTS))
    minutes = round((time.monotonic() - started) / 60, 1)
    added = {
        "task": task,
        "method": METHOD,
        "rows": len(rows),
        "groups": len(set(groups.tolist())),
        "folds": folds,
        "seed": seed,
        "base": f"{base.name} {base.version}",
        "minutes": minutes,
        "caveat": "the backbone was trained on these images for its own tasks (not on these labels): the "
        "cross-validated figures may be somewhat optimistic",
    }
    report = {**added, "temperature": temperature, "thresholds": thresholds.get(task, {}), "metrics": metrics}
    (out_dir / REPORT).write_text(json.dumps(report, indent=2) + "\n")
    base_metrics = dict(base.metrics)
    base_metrics["cross_validation"] = {**base_metrics.get("cross_validation", {}), task: metrics}
    base_metrics["added_heads"] = {**base_metrics.get("added_heads", {}), task: added}
    card = base.model_copy(
        update={
            "version": version,
            "tasks": {**base.tasks, task: names},
            "training_data": base.training_data if training_data is None else training_data,
            "intended_use": base.intended_use if intended_use is None else intended_use,
            "temperatures": {**base.temperatures, task: temperature},
            "thresholds": {**base.thresholds, **thresholds},
            "metrics": base_metrics,
            "training": {
                **base.training,
                "added_heads": {
                    **base.training.get("added_heads", {}),
                    task: {
                        **config.model_dump(
                            mode="json",
                            include={"binary", "min_specificity", "synthetic_sources", "folds", "seed", "n_bootstrap"},
                        ),
                        "minutes": minutes,
                    },
                },
            },
            "weights": WEIGHTS,
            "weights_sha256": sha256_of(out_dir / WEIGHTS),
        }
    )
    card = TaskCard.model_validate(card.model_dump())
    write_task_card(card, out_dir / CARD)
    progress(f"{task}: out-of-fold accuracy {metrics['accuracy']['value']}; wrote {out_dir / CARD} in {minutes} min")
    return card


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("base_card", type=Path)
    parser.add_argument("labels", type=Path)
    parser.add_argument("--images", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--task", required=True, help="TASK=class,class,... e.g. field=pelvis,other")
    parser.add_argument("--binary", help="the positive class of a two-class task")
    parser.add_argument("--min-specificity", type=float)
    parser.add_argument("--synthetic-source", action="append", default=[])
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--version", required=True)
    parser.add_argument("--training-data", help="replaces the base card's")
    parser.add_argument("--intended-use", help="replaces the base card's")
    args = parser.parse_args(argv)
    task, _, classes = args.task.partition("=")
    if not classes:
        parser.error("--task takes TASK=class,class,...")
    add_task_head(
        args.base_card,
        args.labels,
        args.images,
        args.out,
        task=task,
        classes=classes.split(","),
        binary=args.binary,
        min_specificity=args.min_specificity,
        synthetic_sources=args.synthetic_source,
        folds=args.folds,
        seed=args.seed,
        version=args.version,
        training_data=args.training_data,
        intended_use=args.intended_use,
        progress=print,
    )


if __name__ == "__main__":
    main()
