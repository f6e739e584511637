"""Figures of an image task model's probabilities against labels, each with a 95 % CI from a bootstrap over groups.

Training reports them on out-of-fold predictions (:mod:`predraft.models.tasktraining`); ``predraft evaluate-real``
reports them on real labelled images. Every rate is a share of rows (images or hip halves) with the rows'
groups (patients, or runs of one patient's images) as the unit the bootstrap resamples, so a patient seen
ten times weighs in the interval as one patient seen ten times, not as ten patients.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import numpy as np


class _Row(Protocol):
    """What the figures need of a row (a :class:`predraft.models.taskdata.TaskRow` is one)."""

    @property
    def group(self) -> str: ...
    @property
    def crop(self) -> str: ...
    @property
    def labels(self) -> dict[str, str]: ...


def _group_draws(groups: np.ndarray, *, n_bootstrap: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(each row's group index, ``n_bootstrap`` draws of as many group indices as there are groups, with
    replacement): the bootstrap every figure here shares, so one seed draws the same groups for each."""
    _, group_index = np.unique(groups, return_inverse=True)
    groups_count = int(group_index.max()) + 1
    draws = np.random.default_rng(seed).integers(0, groups_count, size=(n_bootstrap, groups_count))
    return group_index, draws


def grouped_rate(hits: np.ndarray, groups: np.ndarray, *, n_bootstrap: int, seed: int) -> dict[str, Any]:
    """The share of True in ``hits`` with a 95 % percentile CI from a bootstrap over ``groups``.

    Returns ``{"value", "ci95": [low, high], "n", "hits"}`` (rounded to 4 places), or
    ``{"value": None, "ci95": None, "n": 0}`` when ``hits`` is empty. Each bootstrap draw takes as many
    groups as there are, with replacement, and pools their rows.
    """
    hits = np.asarray(hits, dtype=bool)
    if len(hits) == 0:
        return {"value": None, "ci95": None, "n": 0}
    group_index, draws = _group_draws(groups, n_bootstrap=n_bootstrap, seed=seed)
    per_group_n = np.bincount(group_index)
    per_group_hits = np.bincount(group_index, weights=hits.astype(float))
    shares = per_group_hits[draws].sum(axis=1) / np.maximum(1, per_group_n[draws].sum(axis=1))
    low, high = np.percentile(shares, [2.5, 97.5])
    return {
        "value": round(float(hits.mean()), 4),
        "ci95": [round(float(low), 4), round(float(high), 4)],
        "n": int(len(hits)),
        "hits": int(hits.sum()),
    }


def cohen_kappa(confusion: np.ndarray) -> float | None:
    """Cohen's kappa of a (K, K) confusion matrix (rows: truth, columns: prediction): agreement beyond what the
    two margins give by chance. None for an empty matrix, or one whose chance agreement is already 1."""
    total = float(confusion.sum())
    if total == 0:
        return None
    observed = float(np.trace(confusion)) / total
    expected = float((confusion.sum(axis=0) * confusion.sum(axis=1)).sum()) / total**2
    return None if expected >= 1.0 else (observed - expected) / (1.0 - expected)


def grouped_kappa(
    truth: np.ndarray, predicted: np.ndarray, groups: np.ndarray, classes: int, *, n_bootstrap: int, seed: int
) -> dict[str, Any]:
    """Cohen's kappa of ``predicted`` against ``truth`` (class indices below ``classes``) with a 95 % percentile
    CI from the same bootstrap over ``groups`` as :func:`grouped_rate` (the same seed draws the same groups).

    Returns ``{"value", "ci95": [low, high], "n"}`` (rounded to 4 places), or ``{"value": None, "ci95": None,
    "n": 0}`` when there is no row."""
    if len(truth) == 0:
        return {"value": None, "ci95": None, "n": 0}
    group_index, draws = _group_draws(groups, n_bootstrap=n_bootstrap, seed=seed)
    per_group = np.zeros((group_index.max() + 1, classes, classes))
    np.add.at(per_group, (group_index, truth, predicted), 1)
    kappas = [
        kappa
        for start in range(0, n_bootstrap, 64)  # 64 draws at a time: memory stays small for many groups
        for confusion in per_group[draws[start : start + 64]].sum(axis=1)
        if (kappa := cohen_kappa(confusion)) is not None
    ]
    value = cohen_kappa(per_group.sum(axis=0))
    low, high = np.percentile(kappas, [2.5, 97.5]) if kappas else (np.nan, np.nan)
    return {
        "value": None if value is None else round(value, 4),
        "ci95": [round(float(low), 4), round(float(high), 4)] if kappas else None,
        "n": int(len(truth)),
    }


def task_targets(rows: Sequence[_Row], classes: dict[str, tuple[str, ...]]) -> np.ndarray:
    """(N, tasks) class indices in the order of ``classes``, -1 where a row says nothing about a task.

    Raises :class:`ValueError` for a label that is not among its task's classes.
    """
    targets = np.full((len(rows), len(classes)), -1, dtype=np.int64)
    for index, row in enumerate(rows):
        for column, (task, names) in enumerate(classes.items()):
            label = row.labels.get(task)
            if label is None:
                continue
            if label not in names:
                raise ValueError(
                    f"label {label!r} of task {task!r} (group {row.group}) is not among its classes {list(names)}"
                )
            targets[index, column] = names.index(label)
    return targets


def _check_rule(
    rule: str,
    chosen: tuple[str, str] | None,
    classes: dict[str, tuple[str, ...]],
    thresholds: dict[str, dict[str, float]],
) -> None:
    if chosen is None:
        return
    task, name = chosen
    if task not in classes:
        raise ValueError(f"the {rule} task {task!r} is not among the tasks {list(classes)}")
    if name not in classes[task]:
        raise ValueError(f"the {rule} class {name!r} is not among {task}'s classes {list(classes[task])}")
    needed = classes[task] if rule == "gate" else (name,)
    missing = [other for other in needed if other not in thresholds.get(task, {})]
    if missing:
        raise ValueError(f"the {rule} task {task!r} has no threshold for {missing}")


def task_metrics(
    probabilities: dict[str, np.ndarray],
    targets: np.ndarray,
    rows: Sequence[_Row],
    classes: dict[str, tuple[str, ...]],
    thresholds: dict[str, dict[str, float]],
    *,
    gate: tuple[str, str] | None = None,
    binary: Mapping[str, str] | None = None,
    n_bootstrap: int,
    seed: int,
) -> dict[str, Any]:
    """Per task of ``classes``: accuracy, Cohen's kappa (:func:`grouped_kappa`) and each class's sensitivity and
    specificity at argmax; for the gate and binary tasks also the figures of the service's thresholded rules.
    Every other figure is a :func:`grouped_rate` over the rows labelled for the task.

    ``probabilities[task]`` is (N, classes) aligned with ``rows``; ``targets`` is :func:`task_targets`'s
    (N, tasks) array in the order of ``classes``. ``gate`` = (task, class the service is for), e.g.
    ("region", "hip"): ``service_rules`` gives, by the rules of :mod:`predraft.models.scope`, how often a row
    of that class reaches its threshold (a tag that says it is kept; untagged, it is drafted) and how often a
    row of another class stays below it (a tag that says that class is ruled out; untagged, it is refused),
    and how often the class is the row's top reading at or above its threshold (enough to overrule tags that
    name another region), for rows of that class and of the others; every class of the task needs a
    threshold. ``binary`` maps tasks to their positive class, e.g. {"hardware": "present"}:
    each such task's ``at_threshold`` gives sensitivity and specificity of p(positive) >= its threshold,
    separately on whole images and on hip halves (crop other than ``whole``).
    """
    _check_rule("gate", gate, classes, thresholds)
    binary = dict(binary or {})
    for rule in binary.items():
        _check_rule("binary", rule, classes, thresholds)
    groups = np.array([row.group for row in rows])
    crops = np.array([row.crop for row in rows])

    def rate(hits: np.ndarray, mask: np.ndarray) -> dict[str, Any]:
        return grouped_rate(hits[mask], groups[mask], n_bootstrap=n_bootstrap, seed=seed)

    metrics: dict[str, Any] = {}
    for column, (task, names) in enumerate(classes.items()):
        labelled = targets[:, column] >= 0
        predicted = probabilities[task].argmax(axis=1)
        truth = targets[:, column]
        figures: dict[str, Any] = {
            "accuracy": rate(predicted == truth, labelled),
            "kappa": grouped_kappa(
                truth[labelled], predicted[labelled], groups[labelled], len(names), n_bootstrap=n_bootstrap, seed=seed
            ),
            "classes": {},
        }
        for index, name in enumerate(names):
            figures["classes"][name] = {
                "sensitivity": rate(predicted == index, labelled & (truth == index)),
                "specificity": rate(predicted != index, labelled & (truth != index)),
            }
        if gate is not None and task == gate[0]:
            gate_class = gate[1]
            chosen = names.index(gate_class)
            probs = probabilities[task]
            is_class = probs[:, chosen] >= thresholds[task][gate_class]
            reads_as_class = is_class & (predicted == chosen)
            figures["service_rules"] = {
                f"{gate_class}_kept_tagged_or_drafted_untagged": rate(is_class, labelled & (truth == chosen)),
                f"other_ruled_out_tagged_{gate_class}_or_refused_untagged": rate(
                    ~is_class, labelled & (truth != chosen)
                ),
                f"{gate_class}_overrules_other_region_tags": rate(reads_as_class, labelled & (truth == chosen)),
                "other_keeps_own_region_tags": rate(~reads_as_class, labelled & (truth != chosen)),
            }
        if task in binary:
            positive = names.index(binary[task])
            called = probabilities[task][:, positive] >= thresholds[task][binary[task]]
            figures["at_threshold"] = sensitivity_specificity(
                called, truth == positive, labelled, crops, groups, n_bootstrap=n_bootstrap, seed=seed
            )
        metrics[task] = figures
    return metrics


def sensitivity_specificity(
    called: np.ndarray,
    positive: np.ndarray,
    labelled: np.ndarray,
    crops: np.ndarray,
    groups: np.ndarray,
    *,
    n_bootstrap: int,
    seed: int,
) -> dict[str, dict[str, Any]]:
    """Sensitivity and specificity of the calls ``called`` against ``positive`` over the ``labelled`` rows,
    ``{"whole images": {...}, "hip halves": {...}}`` by ``crops`` (``whole`` or not), as grouped rates."""
    called, positive = np.asarray(called, dtype=bool), np.asarray(positive, dtype=bool)
    labelled, crops, groups = np.asarray(labelled, dtype=bool), np.asarray(crops), np.asarray(groups)
    figures: dict[str, dict[str, Any]] = {}
    for crop_name, crop_mask in (("whole images", crops == "whole"), ("hip halves", crops != "whole")):
        mask = labelled & crop_mask
        figures[crop_name] = {
            "sensitivity": grouped_rate(
                called[mask & positive], groups[mask & positive], n_bootstrap=n_bootstrap, seed=seed
            ),
            "specificity": grouped_rate(
                ~called[mask & ~positive], groups[mask & ~positive], n_bootstrap=n_bootstrap, seed=seed
            ),
        }
    return figures
