"""Synthetic hip radiographs ("phantoms") written as DICOM, with labels for training and tests.

Public API:

* ``write_phantom_dataset(out_dir, *, studies, seed, size=900, jobs=1) -> Path``: a data set of DICOM
  studies and its ``labels.csv`` (columns ``patient,study,image,side,class,view``); deterministic in
  ``seed``. See predraft.models.phantoms.dataset for the plans, the class balance and the CSV's contract.
* ``summarise_labels(labels) -> LabelsSummary``: patients, studies, images and hips per class of a CSV.
* ``write_demo_study(out_dir, *, seed=0) -> list[PhantomImage]``: the three-view demo study (AP pelvis,
  right frog-leg, right cross-table lateral; right THA, native left hip) that ``predraft demo`` sends.
* ``render_picture(hardware, *, view, side, seed, size, other) -> np.ndarray``: one plain rendering (no
  acquisition variation) of a patient whose ``side`` hip has ``hardware``; display values in [0, 1], for
  pictures (scripts/phantom_pictures.py) and tests.

The modules, one job each: ``geometry`` (raster primitives), ``parts`` (3-D parts and attenuation),
``camera`` (projection of parts per view), ``anatomy`` (femurs, pelvis, spine, soft tissue),
``hardware`` (one builder per hardware class), ``render`` (one radiograph with acquisition variation),
``dicom`` (tags, pixel encoding, writing), ``dataset`` (patients, plans, labels CSV, demo study).
"""

from __future__ import annotations

import numpy as np

from predraft.models.phantoms.anatomy import sample_anatomy
from predraft.models.phantoms.dataset import (
    DEFAULT_SIZE,
    LABEL_COLUMNS,
    LABELS_NAME,
    LabelsSummary,
    PhantomImage,
    plan_studies,
    summarise_labels,
    write_demo_study,
    write_phantom_dataset,
)
from predraft.models.phantoms.hardware import build_implant
from predraft.models.phantoms.render import Acquisition, render
from predraft.models.taxonomy import HardwareClass, Side, View


def render_picture(
    hardware: HardwareClass | str,
    *,
    view: View | str = View.AP_HIP,
    side: Side | str = Side.RIGHT,
    seed: int = 0,
    size: int = DEFAULT_SIZE,
    other: HardwareClass | str = HardwareClass.NONE,
) -> np.ndarray:
    """A plain rendering of a patient whose ``side`` hip has ``hardware`` (the other hip ``other``).

    ``view`` AP pelvis shows both hips; the others show ``side``. Display values in [0, 1], float32, in
    the standard orientation, without noise, borders or markers.
    """
    hardware, other, view, side = HardwareClass(hardware), HardwareClass(other), View(view), Side(side)
    if side is Side.UNKNOWN:
        raise ValueError("side must be right or left")
    rng = np.random.default_rng([seed, 2])
    anatomy = sample_anatomy(rng)
    opposite = Side.LEFT if side is Side.RIGHT else Side.RIGHT
    implants = {
        side: build_implant(hardware, anatomy.femurs[side], rng),
        opposite: build_implant(other, anatomy.femurs[opposite], rng),
    }
    image, _ = render(
        anatomy,
        implants,
        view,
        None if view is View.AP_PELVIS else side,
        size=size,
        acquisition=Acquisition(noise=0.0),
        rng=np.random.default_rng([seed, 3]),
    )
    return image


__all__ = [
    "DEFAULT_SIZE",
    "LABEL_COLUMNS",
    "LABELS_NAME",
    "LabelsSummary",
    "PhantomImage",
    "plan_studies",
    "render_picture",
    "summarise_labels",
    "write_demo_study",
    "write_phantom_dataset",
]
