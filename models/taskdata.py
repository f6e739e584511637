"""Labelled images for image tasks: a folder of images plus a CSV, prepared as the service prepares them.

The CSV has one row per training example:

- ``image``: the file's path relative to the images folder (JPEG, PNG, or DICOM);
- ``group``: the unit that is never split (a patient, or a run of images of one patient); rows of one
  group always land in the same fold;
- ``source`` (optional): where the row comes from (``fracatlas``, ``phantoms``...); figures are reported per
  source, and sources a run names as synthetic take no part in its thresholds or headline figures;
- ``crop`` (optional): ``whole`` (default), ``image_left`` or ``image_right``: the left or right half of
  the image as displayed, as :func:`predraft.models.pixels.split_bilateral` cuts an AP pelvis (the patient's right
  hip is on the image's left);
- one column per task (e.g. ``region``, ``hardware``): the row's class for that task, or empty when the
  row says nothing about it.

Pixels go through the service's own steps (grey levels in [0, 1], collimation cropped, split, letterboxed),
so a model is trained on what it will see in service.
"""

from __future__ import annotations

import csv
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom

from predraft.models.datasets import map_in_processes, read_picture
from predraft.models.pixels import (
    crop_collimation,
    decode,
    letterbox,
    split_bilateral,
    standard_orientation,
    to_unit_range,
)
from predraft.models.taxonomy import Side

CROPS = ("whole", "image_left", "image_right")
_RESERVED = ("image", "group", "crop", "source")


class TaskLabelsError(ValueError):
    """A task CSV that cannot be used; the message names the file and the line."""


@dataclass(frozen=True)
class TaskRow:
    image: str
    group: str
    crop: str
    labels: dict[str, str]  # task -> class; a task the row says nothing about is absent
    source: str = ""


def read_task_rows(
    csv_path: Path, images_dir: Path, tasks: Sequence[str], sources: Sequence[str] = ()
) -> list[TaskRow]:
    """The CSV's rows for ``tasks``, validated: columns present, crops known, files present, no duplicates.

    A row that labels none of ``tasks`` is left out, and so is, when ``sources`` are named, a row of another
    source (before its file is looked for: a folder may hold one source's images only).
    """
    csv_path, images_dir = Path(csv_path), Path(images_dir)
    with csv_path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        columns = reader.fieldnames or []
        missing = [column for column in ("image", "group", *tasks) if column not in columns]
        if missing:
            raise TaskLabelsError(f"{csv_path} lacks the column(s) {missing} (it has {columns})")
        rows, seen = [], set()
        for line, record in enumerate(reader, start=2):
            crop = (record.get("crop") or "whole").strip()
            if crop not in CROPS:
                raise TaskLabelsError(f"{csv_path} line {line}: crop {crop!r} is not one of {CROPS}")
            image, group = record["image"].strip(), record["group"].strip()
            if not image or not group:
                raise TaskLabelsError(f"{csv_path} line {line}: image and group must not be empty")
            if (image, crop) in seen:
                raise TaskLabelsError(f"{csv_path} line {line}: {image} ({crop}) appears twice")
            seen.add((image, crop))
            labels = {task: record[task].strip() for task in tasks if (record[task] or "").strip()}
            source = (record.get("source") or "").strip()
            if not labels or (sources and source not in sources):
                continue
            if not (images_dir / image).is_file():
                raise TaskLabelsError(f"{csv_path} line {line}: image {images_dir / image} does not exist")
            rows.append(TaskRow(image, group, crop, labels, source))
    if not rows:
        raise TaskLabelsError(
            f"{csv_path} has no row labelled for {list(tasks)}"
            + (f" among the sources {list(sources)}" if sources else "")
        )
    return rows


def task_classes(rows: Sequence[TaskRow], task: str, order: Sequence[str] | None = None) -> tuple[str, ...]:
    """The classes of ``task``: ``order`` if given (every label must be in it), else sorted as found."""
    found = sorted({row.labels[task] for row in rows if task in row.labels})
    if order is None:
        return tuple(found)
    unknown = [name for name in found if name not in order]
    if unknown:
        raise TaskLabelsError(f"task {task!r} has labels {unknown} outside the classes {list(order)}")
    return tuple(order)


def read_grey(path: Path) -> np.ndarray:
    """A radiograph file as float32 grey levels in [0, 1]: JPEG or PNG by Pillow (colour as luminance),
    anything else as DICOM through the service's decode and window, in the standard orientation."""
    if path.suffix.lower() in {".jpg", ".jpeg", ".png"}:
        return read_picture(path)
    ds = pydicom.dcmread(path)
    return standard_orientation(to_unit_range(ds, decode(ds), overwrite_input=True), ds.get("PatientOrientation"))


def crop_image(image: np.ndarray, crop: str) -> np.ndarray:
    """The collimation-cropped image, or the half of it that ``crop`` names (as an AP pelvis is split)."""
    image = crop_collimation(image)
    if crop == "whole":
        return image
    halves = split_bilateral(image, None)
    return halves[Side.RIGHT] if crop == "image_left" else halves[Side.LEFT]


def _prepare_one(job: tuple[Path, tuple[str, ...], int]) -> list[np.ndarray] | str:
    path, crops, size = job
    try:
        image = read_grey(path)
        return [letterbox(crop_image(image, crop), size) for crop in crops]
    except Exception as exc:  # reported per image with its reason
        return f"{type(exc).__name__}: {exc}"


def prepare_task_images(
    images_dir: Path,
    rows: Sequence[TaskRow],
    *,
    input_size: int,
    workers: int | None = None,
    cache_dir: Path | None = None,
) -> np.ndarray:
    """uint8 (N, S, S) pixels of ``rows``, in order; cached under ``cache_dir`` by rows and size."""
    images_dir = Path(images_dir)
    digest = hashlib.sha256(str(input_size).encode())
    for row in rows:
        digest.update(f"\n{row.image}\t{row.crop}".encode())
    cache = Path(cache_dir) / f"task-{input_size}px-{digest.hexdigest()[:16]}.npy" if cache_dir else None
    if cache is not None and cache.is_file():
        return np.load(cache)
    by_image: dict[str, list[str]] = {}
    for row in rows:
        by_image.setdefault(row.image, []).append(row.crop)
    jobs = [(images_dir / image, tuple(crops), input_size) for image, crops in by_image.items()]
    results = map_in_processes(_prepare_one, jobs, workers=workers, chunksize=16)
    prepared: dict[tuple[str, str], np.ndarray] = {}
    for (image, crops), result in zip(by_image.items(), results, strict=True):
        if isinstance(result, str):
            raise TaskLabelsError(f"image {image} cannot be prepared: {result}")
        prepared.update({(image, crop): pixels for crop, pixels in zip(crops, result, strict=True)})
    pixels = np.stack([prepared[(row.image, row.crop)] for row in rows])
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.save(cache.with_suffix(".partial.npy"), pixels)
        cache.with_suffix(".partial.npy").replace(cache)
    return pixels
