"""Labelled hip images for training and evaluation: the labels CSV, the patient split, the prepared pixels.

A data folder holds images (DICOM files, or PNG or JPEG) and ``labels.csv`` with one row per image and visible
hip: ``patient,study,image,side,class`` and optionally ``view``. ``image`` is the file's path relative
to the folder, ``side`` is ``right`` or ``left`` (``unknown`` for a single hip whose side no tag
states), ``class`` a hardware class key (``none``, ``tha``, ... see :mod:`predraft.models.taxonomy`).

Every image goes through the very code that prepares a received instance (:func:`predraft.models.prepare.prepare_file`:
decode, window, crop, orient, split an AP pelvis, letterbox), so a model is trained and evaluated on
what it will see in service. A PNG is one grey-level image: a single hip, or an AP pelvis (``view``
``ap_pelvis``) displayed as usual, the patient's right on the image's left.

The split is by patient (no patient in two sets), stratified by the patient's class: 70/10/20 by
default, the reference paper's split.
"""

from __future__ import annotations

import csv
import hashlib
import multiprocessing
import os
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
from PIL import Image

from predraft.models.framing import HIP_HALVES, IMPLANT_CROP, Framing, implant_crop
from predraft.models.pixels import crop_collimation, letterbox, split_bilateral
from predraft.models.taxonomy import CLASS_ORDER, Side, View

_Job = TypeVar("_Job")
_Result = TypeVar("_Result")

LABELS_FILE = "labels.csv"
REQUIRED_COLUMNS = ("patient", "study", "image", "side", "class")
#: An image set's own layout: ``labels.csv`` with this column and one label column, the images in this folder.
IMAGE_SET_COLUMN, IMAGE_SET_FOLDER = "image", "images"
SPLITS = ("train", "validation", "test")
#: The reference paper's split: 70 % training, 10 % validation, 20 % test, by patient.
PAPER_FRACTIONS = (0.7, 0.1, 0.2)


class LabelsError(ValueError):
    """A labels CSV that cannot be used; the message names the file and the line."""


@dataclass(frozen=True)
class LabelRow:
    """One side (a hip) on one image, with its reference class (a class name of the pack being trained)."""

    patient: str
    study: str
    image: str
    side: Side
    hardware: str
    view: View | None = None


def read_labels(data_dir: Path, classes: Sequence[str] = CLASS_ORDER) -> list[LabelRow]:
    """The rows of ``data_dir/labels.csv``, validated (columns, sides, classes among ``classes``, by default the
    hip pack's, files present, no duplicates).

    Two layouts: a side per row (``patient, study, image, side, class``, optional ``view``), or an image set's
    own (``image`` and one label column, the images under ``images/``, as ``../shared/data/shoulder-implants``):
    then each image is its own patient and study, of unstated side. Class names match without regard to case."""
    path = Path(data_dir) / LABELS_FILE
    if not path.is_file():
        raise LabelsError(f"{path} does not exist: a data folder needs a labels CSV ({', '.join(REQUIRED_COLUMNS)})")
    rows: list[LabelRow] = []
    seen: set[tuple[str, Side]] = set()
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        columns = list(reader.fieldnames or ())
        if IMAGE_SET_COLUMN in columns and len(columns) == 2 and not set(REQUIRED_COLUMNS) <= set(columns):
            return _image_set_rows(Path(data_dir), path, reader, columns, classes)
        missing = [column for column in REQUIRED_COLUMNS if column not in columns]
        if missing:
            raise LabelsError(f"{path} lacks the column(s) {', '.join(missing)}; it has {reader.fieldnames}")
        for line, record in enumerate(reader, start=2):
            try:
                row = LabelRow(
                    patient=_required(record, "patient"),
                    study=_required(record, "study"),
                    image=_required(record, "image"),
                    side=Side(record["side"].strip().lower()),
                    hardware=_known_class(record["class"], classes),
                    view=View(record["view"].strip().lower()) if (record.get("view") or "").strip() else None,
                )
            except ValueError as exc:
                raise LabelsError(f"{path}, line {line}: {exc}") from exc
            if (row.image, row.side) in seen:
                raise LabelsError(f"{path}, line {line}: {row.image} {row.side.value} is labelled twice")
            if not (Path(data_dir) / row.image).is_file():
                raise LabelsError(f"{path}, line {line}: image {row.image} does not exist in {data_dir}")
            seen.add((row.image, row.side))
            rows.append(row)
    if not rows:
        raise LabelsError(f"{path} holds no rows")
    return rows


def _image_set_rows(
    data_dir: Path, path: Path, reader: csv.DictReader[str], columns: list[str], classes: Sequence[str]
) -> list[LabelRow]:
    label_column = next(column for column in columns if column != IMAGE_SET_COLUMN)
    rows = []
    for line, record in enumerate(reader, start=2):
        try:
            image = _required(record, IMAGE_SET_COLUMN)
            hardware = _known_class(record[label_column], classes)
        except ValueError as exc:
            raise LabelsError(f"{path}, line {line}: {exc}") from exc
        name = f"{IMAGE_SET_FOLDER}/{image}"
        if not (data_dir / name).is_file():
            raise LabelsError(f"{path}, line {line}: image {image} does not exist in {data_dir / IMAGE_SET_FOLDER}")
        rows.append(LabelRow(Path(image).stem, image, name, Side.UNKNOWN, hardware))
    if len({row.image for row in rows}) != len(rows):
        raise LabelsError(f"{path} names an image twice")
    if not rows:
        raise LabelsError(f"{path} holds no rows")
    return rows


def _known_class(value: str, classes: Sequence[str]) -> str:
    name = (value or "").strip().lower()
    if name not in classes:
        raise ValueError(f"class {name!r} is not one of {', '.join(classes)}")
    return name


def _required(record: dict[str, str], column: str) -> str:
    value = (record.get(column) or "").strip()
    if not value:
        raise ValueError(f"column {column!r} is empty")
    return value


def patient_stratum(rows: Iterable[LabelRow], classes: Sequence[str] = CLASS_ORDER) -> str:
    """The class a patient is stratified by: the first of ``classes`` after the first (the hip's ``none``) among
    their sides, else the first."""
    seen = {row.hardware for row in rows}
    named = [name for name in classes[1:] if name in seen]
    return named[0] if named else classes[0]


def split_patients(
    rows: Sequence[LabelRow],
    *,
    fractions: Sequence[float] = PAPER_FRACTIONS,
    seed: int = 0,
    classes: Sequence[str] = CLASS_ORDER,
) -> dict[str, str]:
    """Patient -> ``train``/``validation``/``test``, stratified by :func:`patient_stratum`.

    Within each stratum the patients are shuffled with ``seed`` and cut at the cumulative fractions
    (rounded), so every class lands in every set in proportion. Deterministic for a seed and a set of rows.
    """
    if len(fractions) != 3 or any(f < 0 for f in fractions) or not np.isclose(sum(fractions), 1.0):
        raise ValueError(f"fractions {list(fractions)} must be three non-negative numbers summing to 1")
    by_patient: dict[str, list[LabelRow]] = defaultdict(list)
    for row in rows:
        by_patient[row.patient].append(row)
    strata: dict[str, list[str]] = defaultdict(list)
    for patient in sorted(by_patient):
        strata[patient_stratum(by_patient[patient], classes)].append(patient)
    rng = np.random.default_rng(seed)
    assignment: dict[str, str] = {}
    cumulative = np.cumsum(fractions)
    for hardware in classes:
        patients = strata.get(hardware, [])
        order = rng.permutation(len(patients))
        cuts = [round(c * len(patients)) for c in cumulative]
        for position, index in enumerate(order):
            assignment[patients[index]] = SPLITS[next(i for i, cut in enumerate(cuts) if position < cut)]
    return assignment


def write_split(assignment: dict[str, str], path: Path) -> None:
    with Path(path).open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["patient", "split"])
        writer.writerows(sorted(assignment.items()))


def read_split(path: Path) -> dict[str, str]:
    with Path(path).open(newline="") as handle:
        assignment = {record["patient"]: record["split"] for record in csv.DictReader(handle)}
    unknown = sorted(set(assignment.values()) - set(SPLITS))
    if unknown:
        raise LabelsError(f"{path} names unknown split(s) {unknown}; expected {', '.join(SPLITS)}")
    return assignment


@dataclass(frozen=True)
class PreparedImages:
    """Letterboxed hips (uint8, N x S x S) aligned with their label rows."""

    pixels: np.ndarray
    rows: tuple[LabelRow, ...]

    def targets(self, classes: Sequence[str]) -> np.ndarray:
        """Each row's class as its index in ``classes`` (the model's output order)."""
        return np.array([list(classes).index(row.hardware) for row in self.rows], dtype=np.int64)

    def subset(self, keep: Sequence[bool] | np.ndarray) -> PreparedImages:
        mask = np.asarray(keep, dtype=bool)
        return PreparedImages(self.pixels[mask], tuple(row for row, k in zip(self.rows, mask, strict=True) if k))


def prepare_images(
    data_dir: Path,
    rows: Sequence[LabelRow],
    *,
    input_size: int,
    workers: int | None = None,
    cache_dir: Path | None = None,
    framing: Framing = HIP_HALVES,
) -> PreparedImages:
    """Prepare every labelled side at ``input_size`` in the pack's ``framing`` (predraft.models.framing); rows
    whose image yields no such side raise LabelsError.

    Images are prepared in ``workers`` processes (default: the CPU count). With ``cache_dir``, the result
    is kept there under a key of the rows and the size, and read back on the next call (a resumed training
    run does not decode everything again).
    """
    data_dir = Path(data_dir)
    cache = _cache_path(cache_dir, rows, input_size, framing) if cache_dir is not None else None
    if cache is not None and cache.is_file():
        with np.load(cache) as stored:
            return PreparedImages(stored["pixels"], tuple(rows))
    by_image: dict[str, list[LabelRow]] = defaultdict(list)
    for row in rows:
        by_image[row.image].append(row)
    images = list(by_image)
    jobs = [(data_dir / image, input_size, by_image[image][0].view, framing) for image in images]
    results = map_in_processes(_prepare_one, jobs, workers=workers, chunksize=8)
    hips: dict[tuple[str, Side], np.ndarray] = {}
    for image, found in zip(images, results, strict=True):
        if isinstance(found, str):
            raise LabelsError(f"image {image} cannot be prepared: {found}")
        for side, pixels in found.items():
            hips[(image, side)] = pixels
    pixels = np.empty((len(rows), input_size, input_size), dtype=np.uint8)
    for index, row in enumerate(rows):
        key = (row.image, row.side)
        if key not in hips:
            single = [side for (image, side) in hips if image == row.image]
            if len(single) == 1 and row.side is not Side.UNKNOWN and single[0] is Side.UNKNOWN:
                key = (row.image, Side.UNKNOWN)  # the label knows a side that the tags do not state
            else:
                raise LabelsError(
                    f"image {row.image} shows no {row.side.value} hip (it shows "
                    f"{', '.join(side.value for (image, side) in hips if image == row.image)})"
                )
        pixels[index] = hips[key]
    prepared = PreparedImages(pixels, tuple(rows))
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        partial = cache.with_suffix(".partial.npz")
        np.savez(partial, pixels=pixels)
        partial.replace(cache)
    return prepared


def map_in_processes(
    function: Callable[[_Job], _Result], jobs: Sequence[_Job], *, workers: int | None, chunksize: int
) -> list[_Result]:
    """``function`` over ``jobs`` in order, in ``workers`` processes (default: the CPU count; one: in this one).

    forkserver, not fork: a fork of a process holding threads or broker connections (a worker, a test process)
    can hang in the child, e.g. in kombu's after-fork clean-up of a Redis connection.
    """
    workers = max(1, min(workers or os.cpu_count() or 1, len(jobs)))
    if workers == 1:
        return [function(job) for job in jobs]
    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("forkserver")) as pool:
        return list(pool.map(function, jobs, chunksize=chunksize))


def read_picture(path: Path) -> np.ndarray:
    """A PNG or JPEG radiograph as float32 grey levels in [0, 1] (8 or 16 bits; colour as its luminance)."""
    with Image.open(path) as opened:
        grey = np.asarray(opened.convert("I;16") if opened.mode.startswith("I") else opened.convert("L"))
    return grey.astype(np.float32) / (65535.0 if grey.dtype == np.uint16 else 255.0)


def _cache_path(cache_dir: Path, rows: Sequence[LabelRow], input_size: int, framing: Framing) -> Path:
    digest = hashlib.sha256(f"{input_size}{'' if framing == HIP_HALVES else framing}".encode())
    for row in rows:
        digest.update(f"\n{row.image}\t{row.side.value}\t{row.view}".encode())
    return Path(cache_dir) / f"prepared-{input_size}px-{digest.hexdigest()[:16]}.npz"


def _prepare_one(job: tuple[Path, int, View | None, Framing]) -> dict[Side, np.ndarray] | str:
    """The letterboxed sides of one image by side, in its framing, or the reason it cannot be prepared."""
    # here, not at the top: it loads cv2 and scipy (via predraft.models.metal); predraft.models.taskdata imports this
    # module, in each of its forkserver pool processes too, and never prepares a DICOM file through it
    from predraft.models.prepare import prepare_file

    path, input_size, view, framing = job
    try:
        if path.suffix.lower() in {".png", ".jpg", ".jpeg"}:
            return _prepare_png(path, input_size, view, framing)
        prepared = prepare_file(path, input_size=input_size, with_implant_crop=framing == IMPLANT_CROP)
        hips = [prepared.crop] if framing == IMPLANT_CROP and prepared.crop is not None else prepared.hips
    except Exception as exc:  # reported per image with its reason
        return f"{type(exc).__name__}: {exc}"
    return {hip.side: hip.pixels for hip in hips}


def _prepare_png(path: Path, input_size: int, view: View | None, framing: Framing) -> dict[Side, np.ndarray]:
    image = crop_collimation(read_picture(path))
    if framing == IMPLANT_CROP:
        return {Side.UNKNOWN: letterbox(implant_crop(image), input_size)}
    if view is View.AP_PELVIS:
        return {side: letterbox(half, input_size) for side, half in split_bilateral(image, None).items()}
    return {Side.UNKNOWN: letterbox(image, input_size)}
