"""A held-out part of a labelled image set, chosen before anyone looks at the images.

Real radiographs are the measure, and a figure is only honest if nothing was tuned on the images it was
measured on. So the first step with a new labelled set is to put a part of it aside, stratified by label,
and never open it until the final evaluation: :func:`stratified_holdout` chooses that part from the labels
alone (file names and classes, no pixels), deterministically for a seed, and :func:`write_holdout` records
the choice as a CSV kept in the repository (``models/data/``), so that every later run, on any machine,
holds out the same images.
"""

from __future__ import annotations

import csv
from collections import defaultdict
from collections.abc import Mapping
from pathlib import Path

import numpy as np

#: The two parts of a set: what a recipe may be screened and cross-validated on, and what it is judged on once.
DEVELOPMENT, HOLDOUT = "development", "holdout"


class HoldoutError(ValueError):
    """The labels cannot be split as asked (the message says why)."""


def stratified_holdout(labels: Mapping[str, str], *, fraction: float, seed: int) -> dict[str, str]:
    """Item -> ``holdout`` or ``development``: of each label's items, ``round(fraction * count)`` (at least one
    where the label has two or more) are held out, chosen by a generator seeded with ``seed`` from the items
    in sorted order, so the result depends only on the labels, the fraction and the seed."""
    if not 0 < fraction < 1:
        raise HoldoutError(f"the held-out fraction must be between 0 and 1, not {fraction}")
    if not labels:
        raise HoldoutError("no labelled items to split")
    by_label: dict[str, list[str]] = defaultdict(list)
    for item in sorted(labels):
        by_label[labels[item]].append(item)
    rng = np.random.default_rng(seed)
    assignment: dict[str, str] = {}
    for label in sorted(by_label):
        items = by_label[label]
        count = round(fraction * len(items))
        if len(items) >= 2:
            count = min(max(count, 1), len(items) - 1)
        held = {items[index] for index in rng.permutation(len(items))[:count]}
        assignment.update({item: HOLDOUT if item in held else DEVELOPMENT for item in items})
    return assignment


def read_labels(path: Path, *, item_column: str, label_column: str) -> dict[str, str]:
    """``item_column`` -> ``label_column`` of a CSV; an item named twice, or a missing column, is an error."""
    with Path(path).open(newline="") as handle:
        reader = csv.DictReader(handle)
        missing = [name for name in (item_column, label_column) if name not in (reader.fieldnames or [])]
        if missing:
            raise HoldoutError(f"{path} has no column {', '.join(missing)} (columns: {reader.fieldnames})")
        labels: dict[str, str] = {}
        for row in reader:
            item, label = row[item_column].strip(), row[label_column].strip()
            if item in labels:
                raise HoldoutError(f"{path} names {item!r} twice")
            if not item or not label:
                raise HoldoutError(f"{path} line {reader.line_num}: empty {item_column} or {label_column}")
            labels[item] = label
    return labels


def write_holdout(
    labels: Mapping[str, str], assignment: Mapping[str, str], path: Path, *, item_column: str, label_column: str
) -> None:
    """The CSV of a split: one row per item, sorted, with its label and its part."""
    with Path(path).open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow([item_column, label_column, "part"])
        writer.writerows((item, labels[item], assignment[item]) for item in sorted(assignment))
