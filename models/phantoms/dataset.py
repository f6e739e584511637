"""Phantom data sets: patients, study plans, DICOM files and the labels CSV; and the demo study.

Contract of ``write_phantom_dataset(out_dir, studies=N, seed=S)``:

* writes N studies of DICOM files under ``out_dir`` (``<patient>/<accession>/<nn>_<view>[_<side>].dcm``)
  and ``out_dir/labels.csv`` with the columns ``patient,study,image,side,class,view``: one row per
  (image, hip it shows): an AP pelvis gives two rows (right, left), every other view one. ``image`` is
  the file's path relative to ``out_dir`` (POSIX separators), ``study`` the StudyInstanceUID, ``class``
  a predraft.models.taxonomy.HardwareClass value, ``view`` a View value. Rows follow the study plan order.
* Patients: most have one study, about a fifth two (same hardware, another date and plan), so a
  patient-level split is meaningful. Each patient has an operated side whose class is drawn uniformly
  over the nine classes; the other hip is ``none`` in 80 % of patients and otherwise has its own class.
* Study plans: AP pelvis + frog-leg + cross-table of the operated side; AP pelvis alone; AP hip +
  cross-table; AP pelvis + AP hip + cross-table; AP pelvis + frog-leg; AP hip + frog-leg + cross-table;
  for patients with hardware on both sides also the bilateral AP pelvis alone.
* Deterministic: everything (pixels, tags, UIDs, dates) derives from ``seed`` through numpy generators
  keyed by (seed, purpose, patient or study, image) and ``pydicom.uid.generate_uid(entropy_srcs=...)``,
  so the same seed writes byte-identical files, whatever ``jobs`` is; different seeds differ.

``write_demo_study`` writes the fixed three-view demo study (AP pelvis, right frog-leg, right
cross-table lateral; right THA, native left hip; CR, 12-bit MONOCHROME2, canonical tags) with fresh
UIDs and today's date on every call, so a demo can be sent again and again.
"""

from __future__ import annotations

import csv
import multiprocessing
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from datetime import date, datetime, timedelta
from pathlib import Path

import numpy as np
from pydicom.uid import generate_uid

from predraft.models.phantoms.anatomy import Anatomy, sample_anatomy
from predraft.models.phantoms.dicom import (
    Encoding,
    Study,
    TagProfile,
    image_dataset,
    sample_encoding,
    sample_profile,
    write_dataset,
)
from predraft.models.phantoms.hardware import Implant, build_implant
from predraft.models.phantoms.render import Acquisition, render, sample_acquisition
from predraft.models.taxonomy import CLASS_ORDER, HardwareClass, Side, View

LABEL_COLUMNS = ("patient", "study", "image", "side", "class", "view")
LABELS_NAME = "labels.csv"
#: Default long side of an image in pixels (an AP pelvis is 900 x 732, about 1.3 MB).
DEFAULT_SIZE = 900
_OPERATED = "operated"
#: The demo's pixels: 12-bit MONOCHROME2, one window clipping a little at both ends, as CR processing does.
DEMO_ENCODING = Encoding(bits_stored=12, window=(0.04, 0.85))
# (name, weight, [(view, which hip)]): the plans a study follows
_PLANS: tuple[tuple[str, float, tuple[tuple[View, str | None], ...]], ...] = (
    (
        "pelvis_frog_cross",
        0.25,
        ((View.AP_PELVIS, None), (View.FROG_LEG, _OPERATED), (View.CROSS_TABLE_LATERAL, _OPERATED)),
    ),
    ("pelvis", 0.18, ((View.AP_PELVIS, None),)),
    ("hip_cross", 0.15, ((View.AP_HIP, _OPERATED), (View.CROSS_TABLE_LATERAL, _OPERATED))),
    (
        "pelvis_hip_cross",
        0.15,
        ((View.AP_PELVIS, None), (View.AP_HIP, _OPERATED), (View.CROSS_TABLE_LATERAL, _OPERATED)),
    ),
    ("pelvis_frog", 0.12, ((View.AP_PELVIS, None), (View.FROG_LEG, _OPERATED))),
    (
        "hip_frog_cross",
        0.10,
        ((View.AP_HIP, _OPERATED), (View.FROG_LEG, _OPERATED), (View.CROSS_TABLE_LATERAL, _OPERATED)),
    ),
    ("bilateral_pelvis", 0.05, ((View.AP_PELVIS, None),)),
)
_LAYOUTS = {name: views for name, _, views in _PLANS}
_SURNAMES = (
    "SMITH",
    "GARCIA",
    "MULLER",
    "ROSSI",
    "NGUYEN",
    "KOWALSKI",
    "SILVA",
    "OKAFOR",
    "TANAKA",
    "JANSEN",
    "DUBOIS",
    "HANSEN",
    "MURPHY",
    "COHEN",
    "PETROV",
    "LINDQVIST",
    "MORALES",
    "NAKAMURA",
    "BRAUN",
    "KHAN",
)
_GIVEN = (
    "ANNA",
    "JOHN",
    "MARIA",
    "PETER",
    "ELENA",
    "JAMES",
    "SOFIA",
    "DAVID",
    "LINA",
    "OMAR",
    "GRACE",
    "LUCAS",
    "ROSA",
    "HENRY",
    "YUKI",
    "AMIR",
    "IRENE",
    "PAUL",
    "NORA",
    "FELIX",
)


@dataclass(frozen=True)
class PhantomImage:
    """One written image: its file, view, the hips it shows and its SOPInstanceUID."""

    path: Path
    view: View
    sides: tuple[Side, ...]
    sop_instance_uid: str


@dataclass(frozen=True)
class ImagePlan:
    view: View
    side: Side | None  # the hip of a one-hip view; None for an AP pelvis


@dataclass(frozen=True)
class StudyPlan:
    index: int  # position in the data set
    patient: int
    visit: int  # 0 for the patient's first study, 1 for the second
    hardware: dict[Side, HardwareClass]
    plan: str
    images: tuple[ImagePlan, ...]
    modality: str


def _rng(seed: int, *keys: int) -> np.random.Generator:
    return np.random.default_rng([seed, *keys])


def _uid(seed: int, *parts: object) -> str:
    return str(generate_uid(entropy_srcs=["predraft-phantoms", str(seed), *map(str, parts)]))


def plan_studies(studies: int, seed: int) -> list[StudyPlan]:
    """The patients and study plans of a data set of ``studies`` studies (see the module docstring)."""
    if studies < 1:
        raise ValueError(f"studies must be at least 1, got {studies}")
    rng = _rng(seed, 0)
    names = [name for name, _, _ in _PLANS]
    weights = np.array([weight for _, weight, _ in _PLANS])
    plans: list[StudyPlan] = []
    patient = 0
    while len(plans) < studies:
        visits = min(2 if rng.random() < 0.22 else 1, studies - len(plans))
        operated = Side.RIGHT if rng.random() < 0.5 else Side.LEFT
        other = Side.LEFT if operated is Side.RIGHT else Side.RIGHT
        hardware = {
            operated: CLASS_ORDER[int(rng.integers(0, len(CLASS_ORDER)))],
            other: HardwareClass.NONE if rng.random() < 0.8 else CLASS_ORDER[int(rng.integers(0, 9))],
        }
        allowed = weights.copy()
        if hardware[other] is HardwareClass.NONE:  # the bilateral plan is for hardware on both sides
            allowed[names.index("bilateral_pelvis")] = 0.0
        for visit in range(visits):
            name = names[int(rng.choice(len(names), p=allowed / allowed.sum()))]
            layout = _LAYOUTS[name]
            images = tuple(ImagePlan(view, None if role is None else operated) for view, role in layout)
            modality = "CR" if rng.random() < 0.55 else "DX"
            plans.append(StudyPlan(len(plans), patient, visit, dict(hardware), name, images, modality))
        patient += 1
    return plans


def _patient(seed: int, patient: int, hardware: dict[Side, HardwareClass]) -> tuple[Anatomy, dict[Side, Implant]]:
    """The patient's anatomy and implants: the same in every study of the patient."""
    rng = _rng(seed, 2, patient)
    anatomy = sample_anatomy(rng)
    implants = {side: build_implant(hardware[side], anatomy.femurs[side], rng) for side in (Side.RIGHT, Side.LEFT)}
    return anatomy, implants


def _study_description(plan: StudyPlan, rng: np.random.Generator) -> str:
    views = len(plan.images)
    hips = {image.side for image in plan.images if image.side is not None}
    side = next(iter(hips)).value.upper() if hips else ""
    pelvis = any(image.view is View.AP_PELVIS for image in plan.images)
    if pelvis and hips:
        options = [
            f"XR PELVIS AND {side} HIP {views} VIEWS",
            f"XR HIP {side} WITH PELVIS {views}V",
            f"Pelvis + {side.lower()} hip",
        ]
    elif pelvis:
        options = ["XR PELVIS 1 VIEW", "XR PELVIS AP ONLY", "Pelvis"]
    else:
        options = [f"XR HIP {side} {views} VIEWS", f"XR {side} HIP 2+ VIEWS", f"Hip {side.lower()}"]
    return options[int(rng.integers(0, len(options)))]


def _study(seed: int, plan: StudyPlan) -> Study:
    rng = _rng(seed, 1, plan.index)
    name_rng = _rng(seed, 4, plan.patient)
    surname = _SURNAMES[int(name_rng.integers(0, len(_SURNAMES)))]
    given = _GIVEN[int(name_rng.integers(0, len(_GIVEN)))]
    birth = date(1930, 1, 1) + timedelta(days=int(name_rng.integers(0, 365 * 60)))
    sex = "F" if name_rng.random() < 0.55 else "M"
    first_visit = date(2019, 1, 1) + timedelta(days=int(name_rng.integers(0, 365 * 5)))
    day = first_visit + timedelta(days=int(plan.visit * name_rng.integers(30, 700)))
    seconds = int(rng.integers(7 * 3600, 19 * 3600))
    return Study(
        patient_name=f"{surname}^{given}",
        patient_id=f"PH{seed}-{plan.patient + 1:05d}",
        birth_date=birth.strftime("%Y%m%d"),
        sex=sex,
        study_uid=_uid(seed, "study", plan.index),
        accession=f"A{seed % 1000:03d}{plan.index + 1:06d}",
        study_id=str(plan.index + 1),
        date=day.strftime("%Y%m%d"),
        time=f"{seconds // 3600:02d}{seconds // 60 % 60:02d}{seconds % 60:02d}",
        description=_study_description(plan, rng),
        modality=plan.modality,
    )


def _file_name(number: int, image: ImagePlan) -> str:
    suffix = f"_{image.side.value}" if image.side is not None else ""
    return f"{number:02d}_{image.view.value}{suffix}.dcm"


def write_study(out_dir: Path, plan: StudyPlan, *, seed: int, size: int = DEFAULT_SIZE) -> list[tuple[str, ...]]:
    """Render and write one planned study under ``out_dir``; return its label rows."""
    anatomy, implants = _patient(seed, plan.patient, plan.hardware)
    study = _study(seed, plan)
    rows: list[tuple[str, ...]] = []
    start = int(study.time[:2]) * 3600 + int(study.time[2:4]) * 60
    for number, image in enumerate(plan.images, start=1):
        rng = _rng(seed, 3, plan.index, number)
        acquisition = sample_acquisition(image.view, image.side, rng)
        pixels, camera = render(anatomy, implants, image.view, image.side, size=size, acquisition=acquisition, rng=rng)
        orientation = camera.patient_orientation()
        if image.view is not View.CROSS_TABLE_LATERAL and rng.random() < 0.05:  # stored mirrored, and says so
            pixels, orientation = pixels[:, ::-1], ["R", orientation[1]]
            profile = replace(sample_profile(rng), orientation=True)  # the pipeline needs it to flip back
        else:
            profile = sample_profile(rng)
        at = start + 60 * number
        relative = Path(study.patient_id) / study.accession / _file_name(number, image)
        ds, _ = image_dataset(
            pixels,
            study=study,
            view=image.view,
            side=image.side,
            orientation=orientation,
            pixel_spacing=1.0 / camera.px_per_mm,
            series_number=number,
            series_uid=_uid(seed, "series", plan.index, number),
            sop_uid=_uid(seed, "image", plan.index, number),
            encoding=sample_encoding(study.modality, rng),
            profile=profile,
            acquisition_time=f"{at // 3600:02d}{at // 60 % 60:02d}{at % 60:02d}",
            exposure=(float(rng.integers(65, 90)), float(rng.integers(8, 40)), float(rng.integers(50, 400))),
        )
        write_dataset(ds, out_dir / relative)
        sides = (Side.RIGHT, Side.LEFT) if image.side is None else (image.side,)
        for side in sides:
            rows.append(
                (
                    study.patient_id,
                    study.study_uid,
                    relative.as_posix(),
                    side.value,
                    plan.hardware[side].value,
                    image.view.value,
                )
            )
    return rows


def _write_one(args: tuple[Path, StudyPlan, int, int]) -> list[tuple[str, ...]]:
    out_dir, plan, seed, size = args
    return write_study(out_dir, plan, seed=seed, size=size)


def write_phantom_dataset(out_dir: Path, *, studies: int, seed: int, size: int = DEFAULT_SIZE, jobs: int = 1) -> Path:
    """Write ``studies`` phantom studies and their labels CSV into ``out_dir``; return the CSV's path.

    ``size`` is each image's long side in pixels; ``jobs`` > 1 renders studies in that many processes
    (the files are the same either way).
    """
    if size < 128:
        raise ValueError(f"size must be at least 128 pixels, got {size}")
    if jobs < 1:
        raise ValueError(f"jobs must be at least 1, got {jobs}")
    out_dir = Path(out_dir)
    plans = plan_studies(studies, seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    work = [(out_dir, plan, seed, size) for plan in plans]
    if jobs == 1:
        results: Iterable[list[tuple[str, ...]]] = map(_write_one, work)
        rows = [row for study_rows in results for row in study_rows]
    else:
        # forkserver, not fork: forking a process that holds threads or connections can hang the child
        with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("forkserver")) as pool:
            rows = [row for study_rows in pool.map(_write_one, work, chunksize=4) for row in study_rows]
    labels = out_dir / LABELS_NAME
    with labels.open("w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(LABEL_COLUMNS)
        writer.writerows(rows)
    return labels


def write_demo_study(out_dir: Path, *, seed: int = 0) -> list[PhantomImage]:
    """Write the three-view demo study (right THA, native left hip) into ``out_dir``."""
    out_dir = Path(out_dir)
    rng = np.random.default_rng(seed)
    anatomy = sample_anatomy(rng)
    implants = {
        Side.RIGHT: build_implant(HardwareClass.THA, anatomy.femurs[Side.RIGHT], rng),
        Side.LEFT: build_implant(HardwareClass.NONE, anatomy.femurs[Side.LEFT], rng),
    }
    now = datetime.now()
    study = Study(
        patient_name="PHANTOM^DEMO",
        patient_id=f"PHANTOM-{seed:04d}",
        birth_date="19500101",
        sex="O",
        study_uid=str(generate_uid()),
        accession=f"DEMO{now:%H%M%S}",
        study_id="1",
        date=now.strftime("%Y%m%d"),
        time=now.strftime("%H%M%S"),
        description="XR PELVIS AND RIGHT HIP 3 VIEWS",
        modality="CR",
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    images = []
    plan = ((View.AP_PELVIS, None), (View.FROG_LEG, Side.RIGHT), (View.CROSS_TABLE_LATERAL, Side.RIGHT))
    for number, (view, side) in enumerate(plan, start=1):
        acquisition = Acquisition(noise=0.008, markers=("R",))
        pixels, camera = render(anatomy, implants, view, side, size=640, acquisition=acquisition, rng=rng)
        sop_uid = str(generate_uid())
        ds, _ = image_dataset(
            pixels,
            study=study,
            view=view,
            side=side,
            orientation=camera.patient_orientation(),
            pixel_spacing=1.0 / camera.px_per_mm,
            series_number=number,
            series_uid=str(generate_uid()),
            sop_uid=sop_uid,
            encoding=DEMO_ENCODING,
            profile=TagProfile.canonical(),
            acquisition_time=study.time,
        )
        path = out_dir / f"{number:02d}_{view.value}.dcm"
        write_dataset(ds, path)
        sides: tuple[Side, ...] = (Side.RIGHT, Side.LEFT) if side is None else (side,)
        images.append(PhantomImage(path, view, sides, sop_uid))
    return images


@dataclass(frozen=True)
class LabelsSummary:
    patients: int
    studies: int
    images: int
    hips: dict[HardwareClass, int]  # rows (hip images) per class, in the model's class order


def summarise_labels(labels: Path) -> LabelsSummary:
    """Patients, studies, images and hip images per class of a labels CSV."""
    hips = dict.fromkeys(CLASS_ORDER, 0)
    patients, studies, images = set(), set(), set()
    with Path(labels).open(newline="") as handle:
        for row in csv.DictReader(handle):
            hips[HardwareClass(row["class"])] += 1
            patients.add(row["patient"])
            studies.add(row["study"])
            images.add(row["image"])
    return LabelsSummary(len(patients), len(studies), len(images), hips)


__all__ = [
    "LABEL_COLUMNS",
    "LabelsSummary",
    "PhantomImage",
    "plan_studies",
    "summarise_labels",
    "write_demo_study",
    "write_phantom_dataset",
    "write_study",
]
