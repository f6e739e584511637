"""``predraft evaluate``: a model on a labelled data folder, per image and per study after aggregation.

Per image: every labelled hip is prepared as in service and classified with the card's calibrated
probabilities. Per study: the hips of each study and side are combined with the aggregation rule the
drafts use (:func:`predraft.reporting.aggregate.aggregate`, the card's thresholds), and the study-side is scored
on its combined probabilities; how many study-sides the rule sent to review ("indeterminate") and the
accuracy of those it decided are reported beside. Confidence intervals come from a bootstrap over
patients. Outputs: ``image_metrics.json``, ``image_confusion.png``, ``image_roc.png`` and the same with
``study_``, plus ``predictions.csv`` (one row per hip).
"""

from __future__ import annotations

import csv
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from predraft.models.card import ModelCard
from predraft.models.datasets import LabelRow, prepare_images, read_labels, read_split
from predraft.models.evaluation import evaluate_predictions, write_report
from predraft.models.factory import load_classifier
from predraft.models.framing import HIP_HALVES
from predraft.models.pack import Pack, installed_packs
from predraft.models.taxonomy import View
from predraft.reporting.aggregate import AggregationRule, HipObservation, aggregate


def evaluate_model(
    card_path: Path,
    data_dir: Path,
    out_dir: Path,
    *,
    device: str = "cpu",
    batch_size: int = 64,
    n_bootstrap: int = 1000,
    seed: int = 0,
    split_file: Path | None = None,
    split: str = "test",
    cache_dir: Path | None = None,
    pack: Pack | None = None,
) -> dict[str, Any]:
    """Evaluate and write the reports into ``out_dir``; return ``{"image": report, "study": report}``.

    The card's classes are the labels' vocabulary (matched without regard to case); images are framed and sides
    combined per study as ``pack`` says (default: the installed pack whose classes the card has; else the hip's
    framing and the rule without pack defaults). ``data_dir`` is a training folder, or an image set in its own
    layout (``images/`` and ``labels.csv`` with ``image`` and one label column).

    With ``split_file`` (a training run's ``split.csv``), only the patients of ``split`` are evaluated.
    With ``cache_dir``, the prepared images are kept there for the next evaluation of the same data.
    """
    classifier = load_classifier(Path(card_path), device)
    card = classifier.card
    classes = tuple(card.classes)
    if pack is None:
        pack = next(
            (p.pack for p in installed_packs(verify_weights=False).packs if p.pack.class_names == classes), None
        )
    if pack is not None and pack.class_names != classes:
        raise ValueError(
            f"{card.display_name} has classes {list(classes)}, the pack {pack.name} {list(pack.class_names)}"
        )
    rule = AggregationRule() if pack is None else AggregationRule.from_pack(pack)
    rows = read_labels(Path(data_dir), classes)
    if split_file is not None:
        assignment = read_split(split_file)
        rows = [row for row in rows if assignment.get(row.patient) == split]
        if not rows:
            raise ValueError(f"no labelled hip of {data_dir} belongs to the {split} set of {split_file}")
    framing = pack.framing if pack is not None else HIP_HALVES
    images = prepare_images(Path(data_dir), rows, input_size=card.input_size, cache_dir=cache_dir, framing=framing)
    probabilities = np.concatenate(
        [classifier.predict(images.pixels[start : start + batch_size]) for start in range(0, len(rows), batch_size)]
    )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_predictions(out_dir / "predictions.csv", images.rows, probabilities, classes)
    groups = [row.patient for row in images.rows]
    image_report = evaluate_predictions(
        images.targets(classes), probabilities, list(classes), groups=groups, n_bootstrap=n_bootstrap, seed=seed
    )
    image_report["model"] = {"name": card.name, "version": card.version, "synthetic_demo": card.synthetic_demo}
    write_report(image_report, out_dir, prefix="image")
    study_report = _study_report(images.rows, probabilities, card, rule, n_bootstrap=n_bootstrap, seed=seed)
    write_report(study_report, out_dir, prefix="study")
    return {"image": image_report, "study": study_report}


def _study_report(
    rows: tuple[LabelRow, ...],
    probabilities: np.ndarray,
    card: ModelCard,
    rule: AggregationRule,
    *,
    n_bootstrap: int,
    seed: int,
) -> dict[str, Any]:
    classes = list(card.classes)
    by_study: dict[str, list[tuple[LabelRow, np.ndarray]]] = defaultdict(list)
    for row, probs in zip(rows, probabilities, strict=True):
        by_study[row.study].append((row, probs))
    labels, combined, groups, decided, correct_decided = [], [], [], 0, 0
    named: Counter[str] = Counter()  # findings that name a class, by class
    named_right: Counter[str] = Counter()  # ... and are right
    for items in by_study.values():
        truth = {row.side: row.hardware for row, _ in items}
        observations = [
            HipObservation(
                row.image, row.side, row.view or View.UNKNOWN, dict(zip(classes, map(float, probs), strict=True))
            )
            for row, probs in items
        ]
        for finding in aggregate(
            observations, threshold=card.threshold, class_thresholds=card.class_thresholds, rule=rule
        ):
            label = classes.index(truth[finding.side])
            labels.append(label)
            combined.append([finding.probabilities[c] for c in classes])
            groups.append(items[0][0].patient)
            if finding.hardware is not None:
                decided += 1
                correct_decided += int(classes.index(finding.hardware) == label)
                named[finding.hardware] += 1
                named_right[finding.hardware] += int(classes.index(finding.hardware) == label)
    probs = np.asarray(combined, dtype=np.float64)
    probs /= probs.sum(axis=1, keepdims=True)
    report = evaluate_predictions(np.asarray(labels), probs, classes, groups=groups, n_bootstrap=n_bootstrap, seed=seed)
    report["abstention"] = {
        "study_sides": len(labels),
        "indeterminate": len(labels) - decided,
        "coverage": decided / len(labels) if labels else None,
        "accuracy_of_decided": correct_decided / decided if decided else None,
        # per class: how many study-sides of that class were labelled, how many the rule named it, how many of
        # those were right (the precision of the class as the draft names it)
        "per_class": {
            name: {
                "labelled": labels.count(index),
                "named": named[name],
                "named_right": named_right[name],
                "precision_of_named": named_right[name] / named[name] if named[name] else None,
            }
            for index, name in enumerate(classes)
        },
    }
    return report


def _write_predictions(
    path: Path, rows: tuple[LabelRow, ...], probabilities: np.ndarray, classes: tuple[str, ...]
) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            ["patient", "study", "image", "side", "view", "class", "predicted", *(f"p_{c}" for c in classes)]
        )
        for row, probs in zip(rows, probabilities, strict=True):
            writer.writerow(
                [
                    row.patient,
                    row.study,
                    row.image,
                    row.side.value,
                    row.view.value if row.view else "",
                    row.hardware,
                    classes[int(np.argmax(probs))],
                    *(f"{p:.6f}" for p in probs),
                ]
            )


def summary_lines(result: dict[str, Any]) -> list[str]:
    """A few lines for the terminal: accuracy and kappa with their intervals, per image and per study."""
    lines = []
    for level in ("image", "study"):
        report = result[level]
        accuracy, kappa = report["accuracy"], report["cohen_kappa"]
        line = f"{level:>5}: n={report['n']}  accuracy {_fmt(accuracy)}  kappa {_fmt(kappa)}"
        if "abstention" in report:
            a = report["abstention"]
            line += f"  indeterminate {a['indeterminate']}/{a['study_sides']}"
        lines.append(line)
    return lines


def _fmt(metric: dict[str, Any] | None) -> str:
    if not metric or metric.get("value") is None:
        return "n/a"
    if metric.get("ci_low") is None:
        return f"{metric['value']:.4f}"
    return f"{metric['value']:.4f} [{metric['ci_low']:.4f}, {metric['ci_high']:.4f}]"
