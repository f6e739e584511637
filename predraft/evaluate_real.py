"""``predraft evaluate-real``: the gate, the hip model and the model-free metal check on real labelled images.

The labels are a task CSV (:mod:`predraft.models.taskdata`: ``image``, ``group``, optional ``crop``) with a
``region`` column, a ``hardware`` column (``absent``/``present``, or ``external``: no implant, but a cast, jewellery
or other metal outside the body, a negative like ``absent``) or both; ``models/data/gate_labels.csv``
over ``../shared/data`` is one. No DICOM tags are needed: every figure is about pixels alone. Each CSV row
(a whole image, or the left or right half of one as an AP pelvis is split) is prepared as the service
prepares it and given to

- the gate (a :class:`predraft.models.taskcard.TaskCard`, the bundled one by default): region accuracy, each
  region's sensitivity and specificity at argmax, and the service rules at the card's region thresholds
  (hip-tagged kept, untagged hip accepted, untagged other rejected, other-tagged hip overturned); hardware
  present at the card's threshold, on whole images and on hip halves;
- :func:`predraft.models.metal.detect_metal` on the same crops (its ``present``): the same hardware figures, the
  baseline any learned hardware detector has to beat;
- the hip model (a :class:`predraft.models.card.ModelCard`, the demo by default) on the native hips, the rows that
  are hips without hardware (whole images labelled ``region=hip`` and hardware ``absent`` or ``external``, halves
  labelled so): the share whose top class is not ``none`` (read as hardware) and the share it would
  draft as hardware (that top class at or above its card threshold), whole images and halves apart; and,
  where the gate has a ``field`` head, the same shares over the hips the service drafts from an untagged
  native hip image: its two halves when the gate reads an AP pelvis (p(pelvis) at or above the card's
  threshold, and the CSV holds both halves), else the whole image.

Every figure is a share of rows with a 95 % CI from a bootstrap over the rows' groups
(:func:`predraft.models.taskmetrics.grouped_rate`). Outputs in ``out_dir``: ``real_metrics.json`` (the figures, the
models' names and versions, the row counts) and ``predictions.csv`` (one line per CSV row).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from predraft.models import taskcard
from predraft.models.card import DEMO_MODEL_CARD
from predraft.models.gate_labels import HARDWARE_CLASSES, NO_IMPLANT
from predraft.models.taskdata import TaskRow, crop_image, prepare_task_images, read_grey, read_task_rows, task_classes
from predraft.models.taskmetrics import grouped_rate, sensitivity_specificity, task_metrics, task_targets

METRICS = "real_metrics.json"
PREDICTIONS = "predictions.csv"
#: The CSV columns this command evaluates; a CSV needs at least one.
LABEL_TASKS = ("region", "hardware")
HIP, PRESENT, NONE, FIELD_PELVIS = "hip", "present", "none", "pelvis"
CROP_SETS = (("whole images", "whole"), ("hip halves", "half"))
#: Images per forward pass.
BATCH_SIZE = 64


class EvaluateRealError(ValueError):
    """Inputs that cannot be evaluated: the message says which and why."""


def read_split_sets(split_file: Path) -> dict[str, str]:
    """``patient -> set`` from a CSV with the columns ``patient`` and ``set`` (or ``split``, as a hip training
    run's ``split.csv`` names it)."""
    split_file = Path(split_file)
    with split_file.open(newline="") as handle:
        reader = csv.DictReader(handle)
        columns = reader.fieldnames or []
        column = "set" if "set" in columns else "split" if "split" in columns else None
        if "patient" not in columns or column is None:
            raise EvaluateRealError(
                f"split file {split_file} needs the columns patient and set (or split); it has {columns}"
            )
        return {record["patient"].strip(): (record[column] or "").strip() for record in reader}


def evaluate_real(
    labels_csv: Path,
    images_dir: Path,
    out_dir: Path,
    *,
    gate_card: Path | None = None,
    model_card: Path | None = None,
    split_file: Path | None = None,
    split_set: str = "test",
    sources: Sequence[str] = (),
    n_bootstrap: int = 1000,
    seed: int = 0,
    workers: int | None = None,
    progress: Callable[[str], None] = lambda _: None,
) -> dict[str, Any]:
    """Evaluate and write ``real_metrics.json`` and ``predictions.csv`` into ``out_dir``; return the metrics.

    ``gate_card`` defaults to :data:`predraft.models.taskcard.GATE_CARD`, ``model_card`` to the demo card. With
    ``split_file``, only the rows whose ``group`` is in ``split_set`` are evaluated; with ``sources``, only the
    rows whose ``source`` column names one of them (e.g. the real ones of a CSV that also has phantoms). Raises
    :class:`EvaluateRealError` (or :class:`predraft.models.taskdata.TaskLabelsError`,
    :class:`predraft.models.card.ModelCardError`, both ValueErrors) with a message that says what to fix.
    """
    # scripts/untagged_served_oof.py imports this module for its numpy-only figures (native_hips, served_figures)
    from predraft.models.factory import load_classifier  # here, not at the top: torch and timm (see above)
    from predraft.models.imagetask import load_task_model

    labels_csv, images_dir, out_dir = Path(labels_csv), Path(images_dir), Path(out_dir)
    gate_card = Path(gate_card) if gate_card is not None else taskcard.GATE_CARD
    model_card = Path(model_card) if model_card is not None else DEMO_MODEL_CARD
    if n_bootstrap < 10:
        raise EvaluateRealError(f"n_bootstrap must be at least 10, got {n_bootstrap}")
    tasks = _label_tasks(labels_csv)
    gate = load_task_model(gate_card, inference_only=True)  # as the service reads it
    if "region" not in gate.card.tasks:
        raise EvaluateRealError(f"gate card {gate_card} has no region task (it has {sorted(gate.card.tasks)})")
    rows = read_task_rows(labels_csv, images_dir, tasks, sources)
    if split_file is not None:
        sets = read_split_sets(split_file)
        rows = [row for row in rows if sets.get(row.group) == split_set]
        if not rows:
            raise EvaluateRealError(
                f"no labelled row of {labels_csv} has its group in the {split_set!r} set of {split_file}"
            )
    if "hardware" in tasks:
        task_classes(rows, "hardware", HARDWARE_CLASSES)
    gate_classes = {task: gate.card.tasks[task] for task in LABEL_TASKS if task in tasks and task in gate.card.tasks}
    for task, names in gate_classes.items():
        task_classes(rows, task, names)  # every label must be among the card's classes
    progress(f"{len(rows)} rows, {len({row.group for row in rows})} groups of {labels_csv}")

    gate_probabilities = _predict_gate(gate, images_dir, rows, workers)
    findings = _metal_findings(images_dir, rows)
    hip_classifier = load_classifier(model_card)
    hip_pixels = prepare_task_images(images_dir, rows, input_size=hip_classifier.card.input_size, workers=workers)
    hip_probabilities = np.concatenate(
        [
            hip_classifier.predict(hip_pixels[start : start + BATCH_SIZE])
            for start in range(0, len(hip_pixels), BATCH_SIZE)
        ]
    ).astype(np.float64)
    progress(f"predicted with {gate.card.display_name}, the metal check and {hip_classifier.card.display_name}")

    groups = np.array([row.group for row in rows])
    crops = np.array([row.crop for row in rows])
    gate_rule = ("region", HIP) if HIP in gate_classes.get("region", ()) else None
    binary = {"hardware": PRESENT} if PRESENT in gate_classes.get("hardware", ()) else None
    # the thresholds the service rules use (the card's, 0.5 where it is silent)
    thresholds: dict[str, dict[str, float]] = {}
    if gate_rule is not None:
        thresholds["region"] = {name: gate.card.threshold("region", name) for name in gate_classes["region"]}
    if binary is not None:
        thresholds["hardware"] = {PRESENT: gate.card.threshold("hardware", PRESENT)}
    metrics: dict[str, Any] = {
        "labels": str(labels_csv),
        "images": str(images_dir),
        "split": {"file": str(split_file), "set": split_set} if split_file is not None else None,
        "sources": list(sources) or None,
        "rows": len(rows),
        "groups": len(set(groups.tolist())),
        "rows_by_crop": {crop: int((crops == crop).sum()) for crop in sorted(set(crops.tolist()))},
        "rows_by_source": {
            source or "(none)": sum(row.source == source for row in rows)
            for source in sorted({row.source for row in rows})
        },
        "n_bootstrap": n_bootstrap,
        "seed": seed,
        "models": {
            "gate": {
                "name": gate.card.name,
                "version": gate.card.version,
                "card": str(gate_card),
                "thresholds": thresholds,
            },
            "hip": {
                "name": hip_classifier.card.name,
                "version": hip_classifier.card.version,
                "card": str(model_card),
                "trained": hip_classifier.card.trained,
                "synthetic_demo": hip_classifier.card.synthetic_demo,
            },
            "metal": {"name": "predraft.models.metal.detect_metal", "version": "model-free"},
        },
        "gate": task_metrics(
            gate_probabilities,
            task_targets(rows, gate_classes),
            rows,
            gate_classes,
            thresholds,
            gate=gate_rule,
            binary=binary,
            n_bootstrap=n_bootstrap,
            seed=seed,
        ),
        "hardware_present": None,
        "hip_model": None,
    }
    hardware = np.array([row.labels.get("hardware", "") for row in rows])
    if "hardware" in tasks:
        labelled = hardware != ""
        present = hardware == PRESENT
        metal_called = np.array([finding.present for finding in findings])
        section: dict[str, Any] = {
            "metal": sensitivity_specificity(
                metal_called, present, labelled, crops, groups, n_bootstrap=n_bootstrap, seed=seed
            )
        }
        if binary is not None:
            section = {
                "gate": metrics["gate"]["hardware"]["at_threshold"],
                "gate_threshold": thresholds["hardware"][PRESENT],
                **section,
            }
        metrics["hardware_present"] = section
        pelvis = None
        if FIELD_PELVIS in gate.card.tasks.get("field", ()):
            pelvis = (
                gate_probabilities["field"][:, gate.card.tasks["field"].index(FIELD_PELVIS)],
                gate.card.threshold("field", FIELD_PELVIS),
            )
        metrics["hip_model"] = _hip_model_figures(
            rows, hip_probabilities, hip_classifier.card, groups, pelvis=pelvis, n_bootstrap=n_bootstrap, seed=seed
        )

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / METRICS).write_text(json.dumps(metrics, indent=2) + "\n")
    _write_predictions(
        out_dir / PREDICTIONS,
        rows,
        tasks,
        gate.card.tasks,
        gate_probabilities,
        findings,
        hip_probabilities,
        hip_classifier.card,
    )
    return metrics


def _label_tasks(labels_csv: Path) -> list[str]:
    try:
        with labels_csv.open(newline="") as handle:
            columns = csv.DictReader(handle).fieldnames or []
    except FileNotFoundError as exc:
        raise EvaluateRealError(f"labels {labels_csv} do not exist") from exc
    tasks = [task for task in LABEL_TASKS if task in columns]
    if not tasks:
        raise EvaluateRealError(f"{labels_csv} has neither a region nor a hardware column (it has {columns})")
    return tasks


def _predict_gate(
    gate: Any, images_dir: Path, rows: Sequence[TaskRow], workers: int | None, batch_size: int = BATCH_SIZE
) -> dict[str, np.ndarray]:
    pixels = prepare_task_images(images_dir, rows, input_size=gate.card.input_size, workers=workers)
    batches = [gate.predict(pixels[start : start + batch_size]) for start in range(0, len(pixels), batch_size)]
    return {task: np.concatenate([batch[task] for batch in batches]) for task in gate.card.tasks}


def _metal_findings(images_dir: Path, rows: Sequence[TaskRow]) -> list[Any]:
    """:func:`predraft.models.metal.detect_metal` on each row's crop (collimation cropped, then split), in row order."""
    from predraft.models.metal import detect_metal  # here, not at the top: scipy and OpenCV, which
    # scripts/untagged_served_oof.py (numpy-only figures of this module) does not need

    findings: list[Any] = [None] * len(rows)
    by_image: dict[str, list[int]] = {}
    for index, row in enumerate(rows):
        by_image.setdefault(row.image, []).append(index)
    for image, indices in by_image.items():
        grey = read_grey(images_dir / image)
        for index in indices:
            findings[index] = detect_metal(crop_image(grey, rows[index].crop))
    return findings


def native_hips(rows: Sequence[TaskRow]) -> np.ndarray:
    """The rows that are hips without hardware: whole images labelled region hip and hardware absent or
    external (no implant), and halves labelled so."""
    return np.array(
        [
            row.labels.get("hardware") in NO_IMPLANT and (row.crop != "whole" or row.labels.get("region") == HIP)
            for row in rows
        ],
        dtype=bool,
    )


def _hip_model_figures(
    rows: Sequence[TaskRow],
    probabilities: np.ndarray,
    card: Any,
    groups: np.ndarray,
    *,
    pelvis: tuple[np.ndarray, float] | None = None,
    n_bootstrap: int,
    seed: int,
) -> dict[str, Any]:
    names = list(card.classes)
    top = probabilities.argmax(axis=1)
    top_names = [names[index] for index in top]
    read = np.array([name != NONE for name in top_names])
    drafted = read & np.array(
        [probabilities[index, top[index]] >= card.threshold_for(name) for index, name in enumerate(top_names)]
    )
    native = native_hips(rows)
    crops = np.array([row.crop for row in rows])
    figures: dict[str, Any] = {}
    for label, kind in CROP_SETS:
        mask = native & ((crops == "whole") if kind == "whole" else (crops != "whole"))
        figures[label] = {
            "read_as_hardware": grouped_rate(read[mask], groups[mask], n_bootstrap=n_bootstrap, seed=seed),
            "drafted_as_hardware": grouped_rate(drafted[mask], groups[mask], n_bootstrap=n_bootstrap, seed=seed),
        }
    if pelvis is not None:
        figures["untagged whole images as served (split when read as an AP pelvis)"] = served_figures(
            rows, native, read, drafted, groups, *pelvis, n_bootstrap=n_bootstrap, seed=seed
        )
    return figures


def served_figures(
    rows: Sequence[TaskRow],
    native: np.ndarray,
    read: np.ndarray,
    drafted: np.ndarray,
    groups: np.ndarray,
    pelvis_probability: np.ndarray,
    threshold: float,
    *,
    n_bootstrap: int,
    seed: int,
) -> dict[str, Any]:
    """Over the native whole hip images sent untagged: the share read as an AP pelvis, and over the hips the
    service drafts from them (:func:`untagged_hips_as_served`) the shares ``read`` and ``drafted`` as hardware."""
    served, split = untagged_hips_as_served(rows, native, pelvis_probability, threshold)
    served_rows = np.array(served, dtype=int)
    whole = np.array([index for index, row in enumerate(rows) if native[index] and row.crop == "whole"], dtype=int)
    return {
        "read_as_ap_pelvis": grouped_rate(split, groups[whole], n_bootstrap=n_bootstrap, seed=seed),
        "read_as_hardware": grouped_rate(read[served_rows], groups[served_rows], n_bootstrap=n_bootstrap, seed=seed),
        "drafted_as_hardware": grouped_rate(
            drafted[served_rows], groups[served_rows], n_bootstrap=n_bootstrap, seed=seed
        ),
    }


def untagged_hips_as_served(
    rows: Sequence[TaskRow], native: np.ndarray, pelvis_probability: np.ndarray, threshold: float
) -> tuple[list[int], np.ndarray]:
    """The row indices of the hips the service drafts from each native whole hip image sent untagged (its
    two half rows when p(pelvis) >= ``threshold`` and both are in ``rows``, else the whole row), and per such
    image (in row order) whether it was split."""
    halves: dict[str, dict[str, int]] = {}
    for index, row in enumerate(rows):
        if row.crop != "whole":
            halves.setdefault(row.image, {})[row.crop] = index
    served: list[int] = []
    split: list[bool] = []
    for index, row in enumerate(rows):
        if not native[index] or row.crop != "whole":
            continue
        pair = halves.get(row.image, {})
        as_pelvis = pelvis_probability[index] >= threshold and {"image_left", "image_right"} <= set(pair)
        served.extend([pair["image_left"], pair["image_right"]] if as_pelvis else [index])
        split.append(bool(as_pelvis))
    return served, np.array(split, dtype=bool)


def _write_predictions(
    path: Path,
    rows: Sequence[TaskRow],
    tasks: Sequence[str],
    gate_tasks: dict[str, tuple[str, ...]],
    gate_probabilities: dict[str, np.ndarray],
    findings: Sequence[Any],
    hip_probabilities: np.ndarray,
    hip_card: Any,
) -> None:
    names = list(hip_card.classes)
    gate_columns = [
        (task, index, f"gate_p_{task}_{name}")
        for task, classes in gate_tasks.items()
        for index, name in enumerate(classes)
    ]
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(
            [
                "image",
                "group",
                "crop",
                *[f"label_{task}" for task in tasks],
                *[column for _, _, column in gate_columns],
                "metal_present",
                "metal_score",
                "hip_top_class",
                "hip_top_probability",
                "hip_drafted_as_hardware",
            ]
        )
        for index, row in enumerate(rows):
            top = int(hip_probabilities[index].argmax())
            probability = float(hip_probabilities[index, top])
            drafted = names[top] != NONE and probability >= hip_card.threshold_for(names[top])
            writer.writerow(
                [
                    row.image,
                    row.group,
                    row.crop,
                    *[row.labels.get(task, "") for task in tasks],
                    *[f"{gate_probabilities[task][index, k]:.5f}" for task, k, _ in gate_columns],
                    int(findings[index].present),
                    f"{findings[index].score:.3f}",
                    names[top],
                    f"{probability:.5f}",
                    int(drafted),
                ]
            )


def summary_lines(metrics: dict[str, Any]) -> list[str]:
    """A few lines for the terminal: the main figures with their 95 % CIs."""
    models = metrics["models"]
    lines = [
        f"{metrics['rows']} rows ({', '.join(f'{n} {crop}' for crop, n in metrics['rows_by_crop'].items())}), "
        f"{metrics['groups']} groups"
    ]
    region = metrics["gate"].get("region")
    if region is not None:
        lines.append(
            f"gate {models['gate']['name']} {models['gate']['version']}: region accuracy {_fmt(region['accuracy'])}"
        )
        if HIP in region["classes"]:
            hip = region["classes"][HIP]
            lines.append(f"  hip sensitivity {_fmt(hip['sensitivity'])}  specificity {_fmt(hip['specificity'])}")
        for rule, figure in region.get("service_rules", {}).items():
            lines.append(f"  {rule}: {_fmt(figure)}")
    hardware = metrics.get("hardware_present")
    if hardware:
        for label, _ in CROP_SETS:
            for source in ("gate", "metal"):
                if source in hardware:
                    figures = hardware[source][label]
                    lines.append(
                        f"hardware present, {label}, {source}: sensitivity {_fmt(figures['sensitivity'])}  "
                        f"specificity {_fmt(figures['specificity'])}"
                    )
    hip_model = metrics.get("hip_model")
    if hip_model:
        lines.append(f"hip model {models['hip']['name']} {models['hip']['version']} on hips without hardware:")
        for label, figures in hip_model.items():
            lines.append(
                f"  {label}: read as hardware {_fmt(figures['read_as_hardware'])}  drafted as hardware "
                f"{_fmt(figures['drafted_as_hardware'])}"
            )
            if "read_as_ap_pelvis" in figures:
                lines.append(f"    images read as an AP pelvis {_fmt(figures['read_as_ap_pelvis'])}")
    return lines


def _fmt(figure: dict[str, Any] | None) -> str:
    if not figure or figure.get("value") is None:
        return "n/a (n=0)"
    low, high = figure["ci95"]
    return f"{figure['value']:.3f} [{low:.3f}, {high:.3f}] (n={figure['n']})"
