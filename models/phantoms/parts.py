"""Three-dimensional parts of bones and implants, in millimetres, in the patient's frame.

Contract: the frame is X toward the patient's left, Y toward the feet, Z anterior; every part is a
frozen value with its attenuation per millimetre (``mu``) and the layer it belongs to. A part is
``attached`` to the femur (it moves with the femur's pose in a frog-leg) or to the pelvis (an
acetabular cup, its screws). Parts know nothing of cameras or pixels; predraft.models.phantoms.camera projects
them.

Attenuation units (per mm of path; the renderer maps the sum A to a display value 1 - exp(-A / 2.2)):
a whole pelvis of soft tissue sums to about 1, a femoral head of bone adds about 1.5, cement somewhat
more than bone of the same thickness, titanium and steel far more. Layers: tissue superposes; bone,
cement and metal are each max-composited (one bone or implant drawn from overlapping parts shows no
seams).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

Vec = np.ndarray

#: Attenuation per mm.
MU_CORTICAL = 0.1
MU_TRABECULAR = 0.032
MU_CEMENT = 0.07
MU_BEAD = 0.3  # antibiotic beads carry more contrast medium than bone cement
MU_TITANIUM = 0.35
MU_STEEL = 1.1
MU_COCR = 1.3

TISSUE, BONE, CEMENT, METAL = "tissue", "bone", "cement", "metal"
FEMUR, PELVIS = "femur", "pelvis"


def vec(x: float, y: float, z: float) -> Vec:
    return np.array([x, y, z], dtype=np.float64)


def unit(v: Vec) -> Vec:
    norm = float(np.linalg.norm(v))
    if norm == 0.0:
        raise ValueError("cannot normalise a zero vector")
    return np.asarray(v, dtype=np.float64) / norm


@dataclass(frozen=True)
class Thread:
    """A threaded length of a rod: from ``start`` to ``end`` mm along it, ``pitch`` mm, ``height`` mm deep."""

    start: float
    end: float
    pitch: float
    height: float


@dataclass(frozen=True, eq=False)
class Rod:
    """A cylinder tapered from ``r_start`` to ``r_end``, rounded ends if ``caps``; see geometry.rod for the
    hollow (``inner``), the tube (``wall``, ``core``) and ``thread``."""

    start: Vec
    end: Vec
    r_start: float
    r_end: float
    mu: float
    layer: str = METAL
    attached: str = FEMUR
    inner: float = 0.0
    wall: float = 0.0
    core: float = 0.0
    thread: Thread | None = None
    caps: bool | tuple[bool, bool] = True


@dataclass(frozen=True, eq=False)
class Sphere:
    """A sphere shell (``r_in`` > 0) or ball, cut by a plane when ``coverage`` < 1 (see geometry.shell)."""

    centre: Vec
    radius: float
    mu: float
    layer: str = METAL
    attached: str = FEMUR
    r_in: float = 0.0
    axis: Vec = field(default_factory=lambda: vec(0.0, -1.0, 0.0))
    coverage: float = 1.0
    core: float = 0.0


@dataclass(frozen=True, eq=False)
class Slab:
    """A flat bar (a plate): centre line ``start`` to ``end``, ``width`` along ``width_dir``, ``thickness`` across."""

    start: Vec
    end: Vec
    width_dir: Vec
    width: float
    thickness: float
    mu: float
    layer: str = METAL
    attached: str = FEMUR


@dataclass(frozen=True, eq=False)
class Ring:
    """A wire loop (a cerclage) of ``radius`` about ``centre`` in the plane normal to ``normal``; ``arc`` in turns."""

    centre: Vec
    normal: Vec
    radius: float
    wire: float
    mu: float
    layer: str = METAL
    attached: str = FEMUR
    arc: tuple[float, float] = (0.0, 1.0)


Part = Rod | Sphere | Slab | Ring
