"""Evaluation of a classifier's predictions: metrics with bootstrap confidence intervals, plots and a report.

A pure library over any prediction table (per image, or per study and side once the caller has
aggregated): integer ``labels`` (N,), ``probabilities`` (N, C) whose rows sum to 1, and the ``classes``
in the probabilities' column order. Nothing here knows about models, DICOM or the CLI.

:func:`evaluate_predictions` returns a JSON-serialisable dict (schema below); :func:`plot_confusion_matrix`
and :func:`plot_roc_curves` draw PNGs from that dict (also from one read back from JSON);
:func:`write_report` writes the three files. Matplotlib is used through ``Figure`` and ``FigureCanvasAgg``
only: no pyplot, no change to the global backend or rcParams.

Contract of the metrics
-----------------------
* The predicted class of a row is the argmax of its probabilities; a tie goes to the lowest index.
* ``accuracy`` is the share of rows predicted correctly; it is always defined.
* ``cohen_kappa`` is unweighted: ``(p_o - p_e) / (1 - p_e)`` with ``p_o`` the accuracy and ``p_e`` the sum
  over classes of (share of labels in the class) x (share of predictions in the class). It is null, with a
  reason, when fewer than two classes are present in the labels (then it says nothing about agreement).
* Per class k (one-vs-rest), with TP, FP, FN from the confusion matrix:

  - ``recall`` = TP / (TP + FN); null when the class is absent from the labels.
  - ``precision`` = TP / (TP + FP). Zero-division rule: a class that is never predicted has precision
    0.0 when it is present in the labels (the model misses it: the conservative value, scikit-learn's
    ``zero_division=0``) and null when it is also absent from the labels (there is nothing to measure).
    A class absent from the labels but predicted has precision 0.0 (every such prediction is wrong).
  - ``f1`` = 2 TP / (2 TP + FP + FN) (the harmonic mean of precision and recall where both exist); null
    only when the class is in neither the labels nor the predictions.
  - ``auc``: area under the one-vs-rest ROC curve of the class's probability column, i.e. the share of
    (positive, negative) pairs in which the positive row scores higher, ties counting 1/2 (Mann-Whitney);
    equal to scikit-learn's ``roc_auc_score`` on that column. Null when the class is absent from the
    labels (no positives) or is the only class present (no negatives); its ROC curve is then null too.
  - ``support``: the number of rows labelled with the class (a plain integer, no interval).

* ``macro``: the unweighted mean over the classes whose metric is defined (not null) in the full table;
  the classes averaged are listed per metric in ``macro_classes``.

Contract of the intervals
-------------------------
Percentile bootstrap: ``n_bootstrap`` resamples drawn with replacement, each the size of the table; the
interval is the ``(1 - confidence)/2`` and ``(1 + confidence)/2`` percentiles (linear interpolation) of the
metric over the resamples. With ``groups`` (e.g. patient ids) the resampling unit is the group: whole
groups are drawn with replacement (as many draws as there are groups) and every row of a drawn group is
taken, so correlated rows of one patient move together (a cluster bootstrap). Without ``groups`` each row
is its own unit. Resamples are drawn from ``numpy.random.default_rng(seed)``, so a seed gives the same
intervals every time.

A resample in which a metric is undefined (by the rules above; for a macro average: any of the classes
averaged in the full table is undefined in the resample) is skipped for that metric alone; every metric
reports ``n_resamples``, the number of resamples its interval comes from. ``ci_low``/``ci_high`` are null
when the metric itself is null, when ``n_bootstrap`` is 0, or when no resample was valid. A percentile
interval need not contain the point estimate (for a skewed metric on a small table); it is not adjusted.

Schema of the report
--------------------
``{"schema_version": 1, "n": int, "n_groups": int | null, "classes": [str, ...],
"prediction_rule": str, "bootstrap": {"n_bootstrap", "confidence", "seed", "unit"},
"accuracy": M, "cohen_kappa": M, "per_class": {name: {"support": int, "precision": M, "recall": M,
"f1": M, "auc": M}}, "macro": {"precision": M, "recall": M, "f1": M, "auc": M},
"macro_classes": {metric: [name, ...]}, "confusion_matrix": [[int, ...], ...] (rows true, columns
predicted, in ``classes`` order), "roc": {name: {"fpr": [float], "tpr": [float]} | null}}`` where
``M = {"value": float | null, "ci_low": float | null, "ci_high": float | null, "n_resamples": int,
"reason": str | null}`` (``reason`` says why ``value`` is null).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from sklearn.metrics import roc_curve

#: How far a row of probabilities may sum from 1 (float32 softmax outputs, averaged probabilities).
ROW_SUM_TOLERANCE = 1e-3
#: Version of the report's layout; raise it when keys change meaning.
SCHEMA_VERSION = 1
PREDICTION_RULE = "argmax of the probabilities; a tie goes to the lowest class index"

_PER_CLASS_METRICS = ("precision", "recall", "f1", "auc")
_ABSENT = "class absent from the labels"
_ONLY_CLASS = "the only class present in the labels: no negatives"
_NEVER = "class absent from both the labels and the predictions"
_FEW_CLASSES = "fewer than two classes present in the labels"


# --- validation -------------------------------------------------------------------------------------


def _check_classes(classes: object) -> list[str]:
    if isinstance(classes, str | bytes) or not isinstance(classes, Sequence):
        raise TypeError(f"classes must be a sequence of class names, not {type(classes).__name__}")
    names: list[str] = []
    for name in classes:
        if not isinstance(name, str):
            raise TypeError(f"classes must be strings, got {name!r} ({type(name).__name__})")
        names.append(str(name))  # a StrEnum member becomes its value
    if len(names) < 2:
        raise ValueError(f"classes must name at least two classes, got {names}")
    if len(set(names)) != len(names):
        repeated = sorted({name for name in names if names.count(name) > 1})
        raise ValueError(f"classes must be unique, {repeated} repeated")
    return names


def _check_probabilities(probabilities: object, n_classes: int) -> np.ndarray:
    try:
        values = np.asarray(probabilities, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"probabilities must be an array of numbers: {exc}") from exc
    if values.ndim != 2 or values.shape[0] < 1:
        raise ValueError(
            f"probabilities must be a 2-D array (rows, classes) with at least one row, got shape {values.shape}"
        )
    if values.shape[1] != n_classes:
        raise ValueError(f"probabilities have {values.shape[1]} columns but {n_classes} classes are named")
    finite = np.isfinite(values)
    if not finite.all():
        rows = np.flatnonzero(~finite.all(axis=1))
        raise ValueError(
            f"probabilities hold {int((~finite).sum())} NaN or infinite value(s), first in row {int(rows[0])}"
        )
    if values.min() < 0.0 or values.max() > 1.0:
        raise ValueError(f"probabilities must lie in [0, 1], got {values.min():g}..{values.max():g}")
    sums = values.sum(axis=1)
    off = np.flatnonzero(np.abs(sums - 1.0) > ROW_SUM_TOLERANCE)
    if off.size:
        raise ValueError(
            f"probability rows must sum to 1 (within {ROW_SUM_TOLERANCE:g}): {off.size} do not, "
            f"first row {int(off[0])} sums to {sums[off[0]]:.6g}"
        )
    return values


def _check_labels(labels: object, n_rows: int, n_classes: int) -> np.ndarray:
    targets = np.asarray(labels)
    if targets.dtype == np.bool_ or not (
        np.issubdtype(targets.dtype, np.integer) or np.issubdtype(targets.dtype, np.floating)
    ):
        raise TypeError(f"labels must be integer class indices, not {targets.dtype}")
    if targets.shape != (n_rows,):
        raise ValueError(
            f"labels of shape {targets.shape} do not match probabilities with {n_rows} rows: expected ({n_rows},)"
        )
    if np.issubdtype(targets.dtype, np.floating):
        # A float column (e.g. read from a table that once held missing values) is accepted when whole.
        if not np.isfinite(targets).all():
            raise ValueError(f"labels hold {int((~np.isfinite(targets)).sum())} NaN or infinite value(s)")
        if not (targets == np.round(targets)).all():
            raise ValueError("labels must be whole class indices, got fractional values")
    low, high = targets.min(), targets.max()
    if low < 0 or high >= n_classes:
        raise ValueError(f"labels must lie in [0, {n_classes - 1}], got {low:g}..{high:g}")
    return targets.astype(np.intp)


def _check_groups(groups: npt.ArrayLike, n_rows: int) -> np.ndarray:
    """Integer codes 0..G-1 for the groups, in order of first appearance."""
    if isinstance(groups, str | bytes):
        raise TypeError("groups must be a sequence with one group id per row, not a string")
    items = list(np.asarray(groups, dtype=object).ravel()) if np.ndim(groups) == 1 else None
    if items is None or len(items) != n_rows:
        raise ValueError(
            f"groups of shape {np.shape(groups)} do not match probabilities with {n_rows} rows: expected ({n_rows},)"
        )
    codes: dict[object, int] = {}
    out = np.empty(n_rows, dtype=np.intp)
    for row, item in enumerate(items):
        key = item.item() if isinstance(item, np.generic) else item
        if key is None or (isinstance(key, float) and math.isnan(key)):
            raise ValueError(f"groups must not hold missing ids: row {row} is {key!r}")
        out[row] = codes.setdefault(key, len(codes))
    return out


def _check_bootstrap(n_bootstrap: object, confidence: object, seed: object) -> tuple[int, float, int]:
    if isinstance(n_bootstrap, bool) or not isinstance(n_bootstrap, int | np.integer):
        raise TypeError(f"n_bootstrap must be an int, not {type(n_bootstrap).__name__}")
    if n_bootstrap < 0:
        raise ValueError(f"n_bootstrap {n_bootstrap} must be 0 (no intervals) or more")
    if isinstance(confidence, bool) or not isinstance(confidence, int | float | np.floating):
        raise TypeError(f"confidence must be a number, not {type(confidence).__name__}")
    if not 0.0 < float(confidence) < 1.0:
        raise ValueError(f"confidence {confidence} must lie strictly between 0 and 1")
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer):
        raise TypeError(f"seed must be an int, not {type(seed).__name__}")
    if seed < 0:
        raise ValueError(f"seed {seed} must be non-negative")
    return int(n_bootstrap), float(confidence), int(seed)


# --- metrics on a weighted table ----------------------------------------------------------------------
# A bootstrap resample is the full table with integer weights (how often each row was drawn), so the
# point estimate (all weights 1) and every resample go through the same code.


class _Table:
    """Rows in a form that makes weighted metrics cheap: confusion cells and per-class score ranks."""

    def __init__(self, labels: np.ndarray, probabilities: np.ndarray, n_classes: int) -> None:
        self.n_classes = n_classes
        self.predicted = probabilities.argmax(axis=1)
        self.cell = labels * n_classes + self.predicted
        # Per class: which rows are positive, and the rank of each row's score among the class's distinct
        # scores (tied scores share a rank), split into positive and negative rows.
        self.auc_parts: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]] = []
        for k in range(n_classes):
            distinct, inverse = np.unique(probabilities[:, k], return_inverse=True)
            ranks = inverse.ravel()
            positive = np.flatnonzero(labels == k)
            negative = np.flatnonzero(labels != k)
            self.auc_parts.append((positive, ranks[positive], negative, ranks[negative], len(distinct)))

    def confusion(self, weights: np.ndarray) -> np.ndarray:
        counts = np.bincount(self.cell, weights=weights, minlength=self.n_classes**2)
        return counts.reshape(self.n_classes, self.n_classes)

    def auc(self, k: int, weights: np.ndarray) -> float | None:
        """Weighted Mann-Whitney AUC of class k against the rest; None without positives or negatives."""
        positive, positive_ranks, negative, negative_ranks, n_distinct = self.auc_parts[k]
        pos = np.bincount(positive_ranks, weights=weights[positive], minlength=n_distinct)
        neg = np.bincount(negative_ranks, weights=weights[negative], minlength=n_distinct)
        n_pos, n_neg = pos.sum(), neg.sum()
        if n_pos == 0 or n_neg == 0:
            return None
        below = np.cumsum(neg) - neg  # negatives scoring strictly lower than each distinct score
        return float((pos * (below + 0.5 * neg)).sum() / (n_pos * n_neg))


def _metrics(table: _Table, weights: np.ndarray) -> dict[str, float | None]:
    """Every metric of the weighted table, keyed ``accuracy``, ``cohen_kappa``, ``<metric>/<k>``."""
    matrix = table.confusion(weights)
    total = matrix.sum()
    true = matrix.sum(axis=1)
    pred = matrix.sum(axis=0)
    tp = np.diag(matrix)
    out: dict[str, float | None] = {"accuracy": float(tp.sum() / total)}
    if np.count_nonzero(true) < 2:
        out["cohen_kappa"] = None
    else:
        p_o = tp.sum() / total
        p_e = float((true * pred).sum()) / total**2
        out["cohen_kappa"] = float((p_o - p_e) / (1.0 - p_e))
    for k in range(table.n_classes):
        fp, fn = pred[k] - tp[k], true[k] - tp[k]
        if pred[k] > 0:
            out[f"precision/{k}"] = float(tp[k] / pred[k])
        else:
            out[f"precision/{k}"] = 0.0 if true[k] > 0 else None
        out[f"recall/{k}"] = float(tp[k] / true[k]) if true[k] > 0 else None
        denominator = 2 * tp[k] + fp + fn
        out[f"f1/{k}"] = float(2 * tp[k] / denominator) if denominator > 0 else None
        out[f"auc/{k}"] = table.auc(k, weights)
    return out


def _macro(values: dict[str, float | None], metric: str, averaged: list[int]) -> float | None:
    parts = [values[f"{metric}/{k}"] for k in averaged]
    if not parts or any(part is None for part in parts):
        return None
    return float(np.mean([part for part in parts if part is not None]))


def _null_reason(metric: str, support: int) -> str:
    """Why a per-class metric is null (only asked when it is)."""
    if metric == "auc" and support > 0:
        return _ONLY_CLASS
    if metric in ("precision", "f1"):
        return _NEVER
    return _ABSENT


# --- the public API -----------------------------------------------------------------------------------


def evaluate_predictions(
    labels: Any,
    probabilities: Any,
    classes: Sequence[str],
    *,
    groups: Any = None,
    n_bootstrap: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, Any]:
    """Metrics of a prediction table with percentile-bootstrap intervals, as a JSON-serialisable dict.

    ``labels``: (N,) integer class indices (whole-valued floats are accepted); ``probabilities``: (N, C)
    rows in [0, 1] summing to 1 within :data:`ROW_SUM_TOLERANCE`; ``classes``: the C class names in the
    columns' order; ``groups``: optional (N,) cluster ids (e.g. patient ids) to resample whole clusters.
    ``n_bootstrap`` 0 skips the intervals. See the module docstring for every rule and the schema.
    Raises ``TypeError`` for a wrong type and ``ValueError`` for a wrong value, naming the argument.
    """
    names = _check_classes(classes)
    values = _check_probabilities(probabilities, len(names))
    n = values.shape[0]
    targets = _check_labels(labels, n, len(names))
    units = _check_groups(groups, n) if groups is not None else np.arange(n, dtype=np.intp)
    n_units = int(units.max()) + 1
    n_bootstrap, confidence, seed = _check_bootstrap(n_bootstrap, confidence, seed)

    table = _Table(targets, values, len(names))
    point = _metrics(table, np.ones(n))
    support = np.bincount(targets, minlength=len(names))
    averaged = {
        metric: [k for k in range(len(names)) if point[f"{metric}/{k}"] is not None] for metric in _PER_CLASS_METRICS
    }
    for metric in _PER_CLASS_METRICS:
        point[f"macro/{metric}"] = _macro(point, metric, averaged[metric])

    # Resample: each draw picks n_units units with replacement; a row's weight is its unit's count.
    samples: dict[str, list[float]] = {key: [] for key in point}
    rng = np.random.default_rng(seed)
    for _ in range(n_bootstrap):
        drawn = np.bincount(rng.integers(0, n_units, size=n_units), minlength=n_units)
        resample = _metrics(table, drawn[units].astype(np.float64))
        for metric in _PER_CLASS_METRICS:
            resample[f"macro/{metric}"] = _macro(resample, metric, averaged[metric])
        for key, value in resample.items():
            if value is not None:
                samples[key].append(value)

    tail = 100.0 * (1.0 - confidence) / 2.0

    def summary(key: str, reason: str) -> dict[str, Any]:
        value = point[key]
        valid = samples[key]
        low = high = None
        if value is not None and valid:
            low, high = (float(x) for x in np.percentile(valid, [tail, 100.0 - tail]))
        return {
            "value": value,
            "ci_low": low,
            "ci_high": high,
            "n_resamples": len(valid),
            "reason": None if value is not None else reason,
        }

    per_class: dict[str, dict[str, Any]] = {}
    roc: dict[str, dict[str, list[float]] | None] = {}
    for k, name in enumerate(names):
        entry: dict[str, Any] = {"support": int(support[k])}
        for metric in _PER_CLASS_METRICS:
            entry[metric] = summary(f"{metric}/{k}", _null_reason(metric, int(support[k])))
        per_class[name] = entry
        roc[name] = _roc_points(targets == k, values[:, k]) if point[f"auc/{k}"] is not None else None

    return {
        "schema_version": SCHEMA_VERSION,
        "n": int(n),
        "n_groups": n_units if groups is not None else None,
        "classes": names,
        "prediction_rule": PREDICTION_RULE,
        "bootstrap": {
            "n_bootstrap": n_bootstrap,
            "confidence": confidence,
            "seed": seed,
            "unit": "group" if groups is not None else "row",
        },
        "accuracy": summary("accuracy", "never null"),
        "cohen_kappa": summary("cohen_kappa", _FEW_CLASSES),
        "per_class": per_class,
        "macro": {
            metric: summary(f"macro/{metric}", f"no class has a defined {metric}") for metric in _PER_CLASS_METRICS
        },
        "macro_classes": {metric: [names[k] for k in averaged[metric]] for metric in _PER_CLASS_METRICS},
        "confusion_matrix": table.confusion(np.ones(n)).astype(int).tolist(),
        "roc": roc,
    }


def _roc_points(positive: np.ndarray, scores: np.ndarray) -> dict[str, list[float]]:
    fpr, tpr, _ = roc_curve(positive.astype(np.intp), scores, drop_intermediate=True)
    return {"fpr": [float(x) for x in fpr], "tpr": [float(x) for x in tpr]}


# --- plots and files ----------------------------------------------------------------------------------


def _check_report(report: object, keys: tuple[str, ...]) -> dict[str, Any]:
    if not isinstance(report, dict):
        raise TypeError(f"report must be the dict from evaluate_predictions, not {type(report).__name__}")
    missing = [key for key in keys if key not in report]
    if missing:
        raise ValueError(f"report lacks {missing}: pass the dict from evaluate_predictions")
    return report


def _png_path(path: str | Path) -> Path:
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"path {path} must end in .png: the plots are written as PNG")
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _new_figure(width: float, height: float) -> Any:
    figure = Figure(figsize=(width, height), dpi=110, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def plot_confusion_matrix(report: dict[str, Any], path: str | Path) -> Path:
    """Draw the report's confusion matrix as a PNG at ``path`` and return the path.

    Rows are the true classes, columns the predicted ones; each cell shows its count and its share of
    the row (the class's recall on the diagonal; a share that would round to 0 or 1 but is neither reads
    "<0.01" or ">0.99"); the colour is the row share. A class absent from the labels has an empty row,
    drawn blank with a dash for the share.
    """
    report = _check_report(report, ("classes", "confusion_matrix", "n"))
    names = list(report["classes"])
    counts = np.asarray(report["confusion_matrix"], dtype=np.int64)
    if counts.shape != (len(names), len(names)):
        raise ValueError(f"confusion_matrix of shape {counts.shape} does not match {len(names)} classes")
    path = _png_path(path)
    row_totals = counts.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        shares = np.where(row_totals > 0, counts / np.maximum(row_totals, 1), np.nan)

    size = max(4.5, 0.85 * len(names) + 2.5)
    figure = _new_figure(size + 1.0, size)
    axes = figure.add_subplot()
    image = axes.imshow(np.nan_to_num(shares), cmap="Blues", vmin=0.0, vmax=1.0)
    colorbar = figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04)
    colorbar.set_label("share of the true class (row)")
    for i in range(len(names)):
        for j in range(len(names)):
            share = shares[i, j]
            if math.isnan(share):
                text = f"{counts[i, j]}\n-"
            elif 0 < share < 0.005:  # a few errors in a large row must read as neither none nor all
                text = f"{counts[i, j]}\n<0.01"
            elif 0.995 <= share < 1:
                text = f"{counts[i, j]}\n>0.99"
            else:
                text = f"{counts[i, j]}\n{share:.2f}"
            dark = not math.isnan(share) and share > 0.55
            axes.text(j, i, text, ha="center", va="center", fontsize=8, color="white" if dark else "black")
    ticks = np.arange(len(names))
    axes.set_xticks(ticks, labels=names, rotation=45, ha="right", rotation_mode="anchor")
    axes.set_yticks(ticks, labels=names)
    axes.set_xlabel("predicted class")
    axes.set_ylabel("true class")
    title = f"Confusion matrix (n = {report['n']})"
    accuracy, kappa = report.get("accuracy"), report.get("cohen_kappa")
    if isinstance(accuracy, dict) and accuracy.get("value") is not None:
        title += f"\naccuracy {accuracy['value']:.3f}"
        if isinstance(kappa, dict) and kappa.get("value") is not None:
            title += f", Cohen's kappa {kappa['value']:.3f}"
    axes.set_title(title, fontsize=10)
    figure.savefig(path, format="png", bbox_inches="tight")
    return path


def plot_roc_curves(report: dict[str, Any], path: str | Path) -> Path:
    """Draw one-vs-rest ROC curves of every class, with its AUC in the legend, as a PNG; return the path.

    The dashed diagonal is a classifier that guesses. A class whose AUC is null (absent from the labels,
    or the only class present) has no curve; the legend says "AUC n/a" for it.
    """
    report = _check_report(report, ("classes", "roc", "per_class"))
    names = list(report["classes"])
    path = _png_path(path)
    figure = _new_figure(6.5, 6.5)
    axes = figure.add_subplot()
    axes.plot([0.0, 1.0], [0.0, 1.0], linestyle="--", color="0.6", linewidth=1.0, label="chance (AUC 0.5)")
    styles = ["-", "-.", ":"]  # beyond ten classes the colours repeat with another line style
    for k, name in enumerate(names):
        color, style = f"C{k % 10}", styles[(k // 10) % len(styles)]
        points = report["roc"].get(name)
        auc = report["per_class"][name]["auc"].get("value")
        if points is None or auc is None:
            axes.plot([], [], linestyle="none", label=f"{name} (AUC n/a)")
            continue
        axes.plot(
            points["fpr"], points["tpr"], color=color, linestyle=style, linewidth=1.6, label=f"{name} (AUC {auc:.3f})"
        )
    axes.set_xlim(-0.01, 1.01)
    axes.set_ylim(-0.01, 1.01)
    axes.set_aspect("equal")
    axes.set_xlabel("false positive rate (1 - specificity)")
    axes.set_ylabel("true positive rate (sensitivity)")
    axes.set_title("One-vs-rest ROC curves per class", fontsize=10)
    axes.grid(True, linewidth=0.4, alpha=0.5)
    axes.legend(loc="lower right", fontsize=8, framealpha=0.9)  # the corner a useful curve leaves empty
    figure.savefig(path, format="png", bbox_inches="tight")
    return path


def write_report(report: dict[str, Any], out_dir: str | Path, *, prefix: str = "image") -> dict[str, Path]:
    """Write ``<prefix>_metrics.json``, ``<prefix>_confusion.png`` and ``<prefix>_roc.png`` in ``out_dir``.

    Creates ``out_dir`` if needed and overwrites files of the same names. The JSON is strict (no NaN or
    Infinity). Returns ``{"metrics": path, "confusion": path, "roc": path}``.
    """
    report = _check_report(report, ("classes", "confusion_matrix", "roc", "per_class", "n"))
    if not isinstance(prefix, str):
        raise TypeError(f"prefix must be a string, not {type(prefix).__name__}")
    if not prefix or prefix in (".", "..") or any(sep in prefix for sep in ("/", "\\")):
        raise ValueError(f"prefix {prefix!r} must be a non-empty file name stem without path separators")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics = out_dir / f"{prefix}_metrics.json"
    metrics.write_text(json.dumps(report, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    return {
        "metrics": metrics,
        "confusion": plot_confusion_matrix(report, out_dir / f"{prefix}_confusion.png"),
        "roc": plot_roc_curves(report, out_dir / f"{prefix}_roc.png"),
    }
