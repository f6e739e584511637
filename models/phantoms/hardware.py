"""Hip hardware, one builder per hardware class, as 3-D parts placed on a patient's femur.

Contract: ``build_implant(hardware, femur, rng)`` returns an ``Implant``: its parts (predraft.models.phantoms.parts,
in the patient frame, femur-attached unless they sit in the pelvis) and how much of the femur it
resected. The design (sizes, angles, screw counts) comes from ``rng`` alone, so a patient's implant is
the same on every view and every study. Geometry follows the real devices; what tells the classes
apart is built in, not left to chance:

* ``tha``: metal-backed hemispherical cup (a half-moon: open toward the femur, often with dome screws),
  a smaller metal head concentric in it (the polyethylene liner is a lucent gap), a stem in the canal.
* ``hemi``: stem and a large head the size of the native head, in the native acetabulum; no cup. The
  bipolar kind has a thin outer shell wrapping past the equator round a small inner head.
* ``imn``: a nail down the canal from the greater trochanter, a lag or helical screw through it up the
  neck, distal locking screw(s).
* ``cannulated_screws``: three parallel cannulated screws along the neck, an inverted triangle.
* ``dhs``: one large lag screw in a barrel, a side plate on the lateral cortex, cortical screws.
* ``plate``: a proximal femoral locking plate over the trochanter: several thin screws fanned into
  the neck and head, shaft screws; no barrel, no large lag screw.
* ``tha_plus_fixation``: a THA plus a lateral plate and/or cerclage cables round the shaft.
* ``post_infectious``: an antibiotic cement spacer (irregular, less dense than metal, maybe a thin
  metal core) and/or cement beads, and/or residual broken hardware; never a cup, never a metal head.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from predraft.models.phantoms.anatomy import GIRDLESTONE, HEAD_RESECTED, INTACT, Femur, rotation
from predraft.models.phantoms.parts import (
    CEMENT,
    MU_BEAD,
    MU_CEMENT,
    MU_COCR,
    MU_STEEL,
    MU_TITANIUM,
    PELVIS,
    Part,
    Ring,
    Rod,
    Slab,
    Sphere,
    Thread,
    Vec,
    unit,
    vec,
)
from predraft.models.taxonomy import HardwareClass


@dataclass(frozen=True, eq=False)
class Implant:
    hardware: HardwareClass
    parts: tuple[Part, ...]
    resection: str = INTACT


def _screw(
    start: Vec,
    end: Vec,
    radius: float,
    mu: float,
    *,
    threaded: float | None = None,
    pitch: float = 1.75,
    height: float = 0.5,
    inner: float = 0.0,
    head: float = 0.0,
) -> list[Part]:
    """A screw from its head (``start``) to its tip; threads over the last ``threaded`` mm (None: all)."""
    length = float(np.linalg.norm(end - start))
    threaded = length if threaded is None else min(threaded, length)
    parts: list[Part] = [
        Rod(start, end, radius, radius * 0.85, mu, inner=inner, thread=Thread(length - threaded, length, pitch, height))
    ]
    if head > 0:
        axis = unit(end - start)
        parts.append(Rod(start - axis * 2.5, start + axis * 1.0, head, head, mu, caps=False))
    return parts


def _rotate_about(direction: Vec, axis: Vec, angle: float) -> Vec:
    return rotation(axis, angle) @ direction


# --- components shared by several classes -----------------------------------------------------------------


def _stem(femur: Femur, head_centre: Vec, rng: np.random.Generator, *, length: float | None = None) -> list[Part]:
    """A femoral stem: trunnion and neck from the head, a tapered body down the canal."""
    mu = MU_TITANIUM * 1.6 if rng.random() < 0.5 else MU_COCR
    n, lateral = femur.neck_dir, femur.lateral
    length = length if length is not None else rng.uniform(120.0, 165.0)
    width = femur.canal_radius * rng.uniform(0.95, 1.15)
    shoulder = femur.shaft(-14.0) + lateral * (femur.shaft_radius * 0.35)
    neck_end = head_centre + n * (femur.neck_length * 0.62)
    waist = femur.shaft(35.0)
    parts: list[Part] = [
        Rod(head_centre, neck_end, 5.0, 7.0, mu),
        Rod(neck_end, waist, width * 1.35, width, mu),
        Rod(shoulder, waist, width * 0.9, width, mu),
        Rod(waist, femur.shaft(length), width, width * 0.5, mu),
    ]
    if rng.random() < 0.4:  # cemented: a mantle round the body and a plug below the tip
        parts += [
            Rod(neck_end, waist, width * 1.35 + 3.0, width + 3.0, MU_CEMENT, CEMENT),
            Rod(waist, femur.shaft(length + 12.0), width + 3.0, width * 0.5 + 3.0, MU_CEMENT, CEMENT),
        ]
    if rng.random() < 0.5:  # a collar resting on the calcar
        collar = head_centre + n * (femur.neck_length * 0.55)
        parts.append(Rod(collar - n * 1.5, collar + n * 1.5, width * 1.6, width * 1.6, mu, caps=False))
    return parts


def _cup(femur: Femur, rng: np.random.Generator) -> tuple[Vec, list[Part]]:
    """An acetabular cup round the hip centre, opening down and out; its centre and parts (pelvis-attached)."""
    sigma = femur.sigma
    inclination = math.radians(rng.uniform(35.0, 52.0))
    anteversion = math.radians(rng.uniform(5.0, 25.0))
    opening = unit(
        vec(
            sigma * math.sin(inclination) * math.cos(anteversion),
            math.cos(inclination) * math.cos(anteversion),
            math.sin(anteversion),
        )
    )
    dome = -opening
    radius = femur.head_radius + rng.uniform(1.5, 4.0)
    centre = femur.head + vec(-sigma * rng.uniform(0.0, 3.0), rng.uniform(-2.0, 1.0), 0.0)
    shell = rng.uniform(3.0, 4.5)
    parts: list[Part] = [
        Sphere(centre, radius, MU_TITANIUM, attached=PELVIS, r_in=radius - shell, axis=dome, coverage=0.0)
    ]
    for _ in range(int(rng.choice([0, 1, 2, 2, 3]))):  # dome screws up into the ilium
        direction = unit(dome + vec(rng.normal(0, 0.3), -0.5, rng.normal(0, 0.3)))
        start = centre + direction * (radius - shell - 1.0)
        parts += [
            Rod(
                start,
                start + direction * rng.uniform(22.0, 38.0),
                3.25,
                2.8,
                MU_TITANIUM * 1.6,
                attached=PELVIS,
                thread=Thread(4.0, 60.0, 2.5, 0.6),
            )
        ]
    return centre, parts


def _tha_parts(femur: Femur, rng: np.random.Generator, *, stem_length: float | None = None) -> list[Part]:
    centre, parts = _cup(femur, rng)
    head_radius = float(rng.choice([14.0, 16.0, 18.0]))
    wear = vec(femur.sigma * rng.uniform(0.0, 1.0), -rng.uniform(0.0, 2.0), 0.0)
    head = centre + wear
    parts.append(Sphere(head, head_radius, MU_COCR))
    return parts + _stem(femur, head, rng, length=stem_length)


def _shaft_screws(
    femur: Femur, ts: list[float], rng: np.random.Generator, *, offset: float = 6.0, unicortical: bool = False
) -> list[Part]:
    """Cortical screws across the shaft from a lateral plate at the levels ``ts`` (mm down the shaft)."""
    parts: list[Part] = []
    lateral = femur.lateral
    for t in ts:
        direction = _rotate_about(-lateral, femur.anterior, math.radians(rng.normal(0.0, 4.0)))
        start = femur.shaft(t) + lateral * (femur.outer_radius(t) + offset)
        length = offset + (9.0 if unicortical else 2.0 * femur.outer_radius(t) + 3.0)
        parts += _screw(start, start + direction * length, 2.25, MU_STEEL, pitch=1.75, height=0.55, head=4.0)
    return parts


def _side_plate(femur: Femur, top: float, bottom: float, *, width: float, thickness: float = 5.5) -> list[Part]:
    """A plate on the lateral cortex from ``top`` to ``bottom`` (mm down the shaft), following its flare."""
    lateral = femur.lateral
    parts: list[Part] = []
    levels = [top, *[t for t in (top + 15.0, 30.0, 50.0) if top < t < bottom], bottom]
    for a, b in zip(levels[:-1], levels[1:], strict=True):
        start = femur.lateral_cortex(a) + lateral * (thickness / 2 + 0.5)
        end = femur.lateral_cortex(b) + lateral * (thickness / 2 + 0.5)
        parts.append(Slab(start, end, femur.anterior, width, thickness, MU_STEEL))
    return parts


# --- one builder per class ------------------------------------------------------------------------------------


def build_none(femur: Femur, rng: np.random.Generator) -> Implant:
    return Implant(HardwareClass.NONE, ())


def build_tha(femur: Femur, rng: np.random.Generator) -> Implant:
    return Implant(HardwareClass.THA, tuple(_tha_parts(femur, rng)), HEAD_RESECTED)


def build_hemi(femur: Femur, rng: np.random.Generator) -> Implant:
    radius = femur.head_radius - 0.3
    parts: list[Part]
    if rng.random() < 0.5:  # bipolar: a metal shell wrapping well past the equator round a small inner
        # head, polyethylene between; its outline is a whole circle (a THA cup's is a half-moon)
        inner = float(rng.choice([11.0, 12.0, 14.0]))
        shell = rng.uniform(2.5, 3.5)
        parts = [
            Sphere(
                femur.head, radius, MU_COCR, r_in=radius - shell, axis=-femur.neck_dir, coverage=rng.uniform(0.6, 0.8)
            ),
            Sphere(femur.head + femur.neck_dir * rng.uniform(0.0, 2.0), inner, MU_COCR),
        ]
        head = femur.head
    else:  # unipolar (monoblock or modular): one large head
        parts = [Sphere(femur.head, radius, MU_COCR)]
        head = femur.head
    return Implant(HardwareClass.HEMI, tuple(parts + _stem(femur, head, rng)), HEAD_RESECTED)


def build_imn(femur: Femur, rng: np.random.Generator) -> Implant:
    lateral, n = femur.lateral, femur.neck_dir
    entry = femur.trochanter_tip() + femur.shaft_dir * rng.uniform(2.0, 6.0)  # flush with the trochanter's tip
    junction = femur.shaft(rng.uniform(35.0, 50.0))
    long_nail = rng.random() < 0.3
    tip_t = rng.uniform(330.0, 400.0) if long_nail else rng.uniform(150.0, 185.0)
    proximal_r = rng.uniform(7.5, 8.5)
    distal_r = rng.uniform(5.0, 6.0)
    parts: list[Part] = [
        Rod(entry, junction, proximal_r, proximal_r, MU_TITANIUM * 1.6, inner=2.0, caps=False),
        Rod(junction, femur.shaft(tip_t), proximal_r, distal_r, MU_TITANIUM * 1.6, inner=2.0),
        Rod(
            entry - femur.shaft_dir * 2.0,
            entry + femur.shaft_dir * 2.0,
            proximal_r,
            proximal_r,
            MU_TITANIUM * 1.6,
            caps=False,
        ),  # end cap
    ]
    superior, _ = femur.neck_frame()
    offset = -superior * rng.uniform(0.0, 4.0)
    start = femur.head + n * (femur.neck_exit() + 6.0) + offset
    tip = femur.head - n * (femur.head_radius - rng.uniform(7.0, 11.0)) + offset
    if rng.random() < 0.5:  # lag screw with a threaded tip
        parts += _screw(start, tip, 5.25, MU_TITANIUM * 1.6, threaded=25.0, pitch=3.0, height=1.6)
    else:  # helical blade: a broad, smooth blade
        parts += [Rod(start, tip, 5.6, 5.2, MU_TITANIUM * 1.6)]
    for index in range(1 if rng.random() < 0.6 else 2):
        t = tip_t - rng.uniform(20.0, 30.0) - 28.0 * index
        cross = _rotate_about(-lateral, femur.shaft_dir, math.radians(rng.normal(0.0, 8.0)))
        screw_start = femur.shaft(t) + lateral * (femur.shaft_radius + 4.0)
        parts += _screw(
            screw_start, screw_start + cross * (2 * femur.shaft_radius + 7.0), 2.5, MU_TITANIUM * 1.6, head=4.0
        )
    return Implant(HardwareClass.IMN, tuple(parts))


def build_cannulated_screws(femur: Femur, rng: np.random.Generator) -> Implant:
    n = femur.neck_dir
    superior, anterior = femur.neck_frame()
    turn = math.radians(rng.uniform(-20.0, 20.0))
    spread = rng.uniform(6.0, 8.0)
    mu = MU_STEEL if rng.random() < 0.6 else MU_TITANIUM * 1.6
    thread = float(rng.choice([16.0, 32.0]))
    washers = rng.random() < 0.35
    parts: list[Part] = []
    # inverted triangle: one screw low along the calcar, two high (anterior and posterior)
    for angle in (math.pi, math.pi / 2 - 0.9, -(math.pi / 2 - 0.9)):
        offset = (math.cos(angle + turn) * superior + math.sin(angle + turn) * anterior) * spread
        # a line parallel to the neck axis meets the lateral cortex further along it the lower it lies
        shift = -float(offset @ femur.lateral) / max(float(n @ femur.lateral), 0.3)
        start = femur.head + n * (femur.neck_exit() + 4.0 + shift) + offset
        tip = femur.head - n * (femur.head_radius - rng.uniform(4.0, 7.0)) + offset * 0.95
        parts += _screw(start, tip, 3.65, mu, threaded=thread, pitch=2.75, height=1.0, inner=1.3, head=4.2)
        if washers:
            parts.append(Rod(start + n * 1.0, start + n * 2.5, 6.5, 6.5, mu, caps=False))
    return Implant(HardwareClass.CANNULATED_SCREWS, tuple(parts))


def build_dhs(femur: Femur, rng: np.random.Generator) -> Implant:
    n = femur.neck_dir
    superior, _ = femur.neck_frame()
    offset = -superior * rng.uniform(0.0, 3.0)
    exit_at = femur.neck_exit()
    tip = femur.head - n * (femur.head_radius - rng.uniform(7.0, 11.0)) + offset
    barrel_out = femur.head + n * (exit_at + 3.0) + offset
    barrel_in = femur.head + n * (exit_at - 36.0) + offset
    parts: list[Part] = _screw(
        femur.head + n * (exit_at - 30.0) + offset, tip, 6.25, MU_STEEL, threaded=22.0, pitch=3.0, height=2.2
    )
    parts.append(Rod(barrel_out, barrel_in, 6.5, 6.5, MU_STEEL, caps=False))
    parts.append(Rod(femur.head + n * (exit_at - 30.0) + offset, barrel_in, 4.0, 4.0, MU_STEEL))  # shank
    exit_t = float((barrel_out - femur.base) @ femur.shaft_dir)
    holes = int(rng.integers(2, 7))
    bottom = exit_t + 22.0 + 16.0 * holes
    parts += _side_plate(femur, exit_t - 6.0, bottom, width=19.0, thickness=5.8)
    parts += _shaft_screws(femur, [exit_t + 24.0 + 16.0 * k for k in range(holes)], rng, offset=6.5)
    return Implant(HardwareClass.DHS, tuple(parts))


def build_plate(femur: Femur, rng: np.random.Generator) -> Implant:
    n = femur.neck_dir
    superior, anterior = femur.neck_frame()
    lateral = femur.lateral
    top = -36.0
    bottom = rng.uniform(130.0, 230.0)
    parts: list[Part] = _side_plate(femur, top, bottom, width=rng.uniform(16.0, 18.0), thickness=5.0)
    parts.append(
        Slab(
            femur.lateral_cortex(top) + lateral * 3.0,
            femur.lateral_cortex(8.0) + lateral * 3.0,
            femur.anterior,
            rng.uniform(24.0, 30.0),
            5.0,
            MU_STEEL,
        )
    )  # the proximal, trochanteric part
    # proximal locking screws fanned from the plate into the neck and head (5 mm, no barrel)
    count = int(rng.integers(3, 5))
    for index in range(count):
        t = top + 10.0 + index * rng.uniform(9.0, 12.0)
        start = femur.lateral_cortex(t) + lateral * 5.5
        target = (
            femur.head
            - n * (femur.head_radius * 0.35)
            + superior * (9.0 - index * 6.0)
            + anterior * rng.normal(0.0, 5.0)
        )
        parts += _screw(
            start,
            start + unit(target - start) * (float(np.linalg.norm(target - start)) + femur.head_radius * 0.3),
            2.6,
            MU_STEEL,
            pitch=2.0,
            height=0.6,
            head=4.2,
        )
    shaft_levels = [45.0 + 14.0 * k for k in range(int((bottom - 55.0) // 14.0))]
    shaft_levels = [t for t in shaft_levels if rng.random() < 0.75] or shaft_levels[-1:]
    parts += _shaft_screws(femur, shaft_levels, rng, offset=5.5)
    return Implant(HardwareClass.PLATE, tuple(parts))


def _cerclage(femur: Femur, t: float, rng: np.random.Generator, *, arc: tuple[float, float] = (0.0, 1.0)) -> list[Part]:
    normal = _rotate_about(femur.shaft_dir, femur.anterior, math.radians(rng.normal(0.0, 6.0)))
    centre = femur.shaft(t)
    parts: list[Part] = [Ring(centre, normal, femur.outer_radius(t) + 1.2, 1.0, MU_STEEL, arc=arc)]
    if arc == (0.0, 1.0):  # the crimp sleeve on the lateral side
        crimp = centre + femur.lateral * (femur.outer_radius(t) + 2.5)
        parts.append(Rod(crimp - femur.anterior * 3.5, crimp + femur.anterior * 3.5, 1.8, 1.8, MU_STEEL))
    return parts


def build_tha_plus_fixation(femur: Femur, rng: np.random.Generator) -> Implant:
    stem_length = rng.uniform(130.0, 230.0)
    parts = _tha_parts(femur, rng, stem_length=stem_length)
    kind = rng.choice(["plate_and_cables", "plate", "cables"], p=[0.45, 0.25, 0.3])
    if kind in {"plate_and_cables", "plate"}:
        bottom = stem_length + rng.uniform(60.0, 110.0)
        parts += _side_plate(femur, -30.0, bottom, width=17.0, thickness=5.0)
        below = [t for t in np.arange(stem_length + 18.0, bottom - 8.0, 15.0)]
        parts += _shaft_screws(femur, below, rng, offset=5.5)
        beside = [t for t in np.arange(20.0, stem_length - 10.0, 30.0)]
        parts += _shaft_screws(femur, beside, rng, offset=5.5, unicortical=True)
    if kind in {"plate_and_cables", "cables"}:
        # at least one below the stem's tip, where it crosses the whole shaft
        for t in np.linspace(rng.uniform(15.0, 40.0), stem_length + rng.uniform(15.0, 35.0), int(rng.integers(2, 6))):
            parts += _cerclage(femur, float(t), rng)
    return Implant(HardwareClass.THA_PLUS_FIXATION, tuple(parts), HEAD_RESECTED)


def _spacer(femur: Femur, rng: np.random.Generator) -> list[Part]:
    """An articulating antibiotic cement spacer: lumpy head in the acetabulum, a thick irregular stem."""
    head = femur.head + vec(rng.normal(0.0, 2.0), rng.uniform(0.0, 4.0), 0.0)
    radius = femur.head_radius + rng.uniform(-1.0, 3.0)
    parts: list[Part] = [Sphere(head, radius, MU_CEMENT, CEMENT)]
    for _ in range(int(rng.integers(3, 7))):  # hand-moulded: lumps bulge out of the sphere
        direction = unit(rng.normal(0.0, 1.0, 3) * vec(1.0, 1.0, 0.3))
        parts.append(
            Sphere(
                head + direction * radius * rng.uniform(0.8, 1.0), radius * rng.uniform(0.3, 0.45), MU_CEMENT, CEMENT
            )
        )
    length = rng.uniform(90.0, 160.0)
    neck = head + femur.neck_dir * (femur.neck_length * 0.7)
    thick = femur.canal_radius * rng.uniform(1.1, 1.4)
    parts += [
        Rod(head, neck, radius * 0.55, thick * 1.3, MU_CEMENT, CEMENT),
        Rod(neck, femur.shaft(35.0), thick * 1.3, thick, MU_CEMENT, CEMENT),
        Rod(femur.shaft(35.0), femur.shaft(length), thick, thick * 0.75, MU_CEMENT, CEMENT),
    ]
    for t in rng.uniform(30.0, length, int(rng.integers(2, 5))):  # irregular moulding along the stem
        parts.append(
            Sphere(
                femur.shaft(float(t)) + femur.lateral * rng.normal(0.0, 3.0),
                thick * rng.uniform(1.0, 1.3),
                MU_CEMENT,
                CEMENT,
            )
        )
    if rng.random() < 0.6:  # a thin metal core (a pin or rod moulded into the cement)
        core = rng.uniform(1.4, 2.4)
        parts.append(Rod(head - femur.neck_dir * radius * 0.3, neck, core, core, MU_STEEL))
        parts.append(Rod(neck, femur.shaft(length - 12.0), core, core, MU_STEEL))
    return parts


def _beads(femur: Femur, rng: np.random.Generator) -> list[Part]:
    """A chain of antibiotic cement beads on a wire, coiled in the joint and along the proximal femur."""
    count = int(rng.integers(8, 24))
    centre = femur.head + femur.neck_dir * rng.uniform(0.0, 30.0)
    radius = rng.uniform(15.0, 35.0)
    phase = rng.uniform(0.0, 2 * math.pi)
    step = rng.uniform(0.28, 0.4)
    drift = femur.shaft_dir * rng.uniform(1.0, 4.0)
    points = [
        centre
        + radius * (math.cos(phase + k * step) * femur.lateral + math.sin(phase + k * step) * vec(0.0, -1.0, 0.0) * 0.8)
        + drift * k
        + femur.anterior * rng.normal(0.0, 3.0)
        for k in range(count)
    ]
    parts: list[Part] = [Sphere(p, 3.5, MU_BEAD, CEMENT) for p in points]
    parts += [Rod(a, b, 0.3, 0.3, MU_STEEL) for a, b in zip(points[:-1], points[1:], strict=True)]
    return parts


def _residual(femur: Femur, rng: np.random.Generator) -> list[Part]:
    """Hardware left behind: a broken screw in the neck or shaft, or a broken cerclage wire."""
    if rng.random() < 0.6:
        t = rng.uniform(-10.0, 120.0)
        direction = _rotate_about(-femur.lateral, femur.anterior, math.radians(rng.uniform(-40.0, 40.0)))
        start = femur.shaft(t) + femur.lateral * rng.uniform(-5.0, 10.0)
        length = rng.uniform(14.0, 30.0)
        return [
            Rod(
                start,
                start + direction * length,
                rng.uniform(2.2, 3.6),
                2.0,
                MU_STEEL,
                caps=False,
                thread=Thread(0.0, length, 2.0, 0.6),
            )
        ]
    first = rng.uniform(0.0, 0.5)
    return _cerclage(femur, rng.uniform(40.0, 140.0), rng, arc=(first, first + rng.uniform(0.35, 0.7)))


def build_post_infectious(femur: Femur, rng: np.random.Generator) -> Implant:
    kind = rng.choice(["spacer", "beads", "spacer_and_beads", "residual"], p=[0.4, 0.25, 0.2, 0.15])
    parts: list[Part] = []
    if kind in {"spacer", "spacer_and_beads"}:
        parts += _spacer(femur, rng)
    if kind in {"beads", "spacer_and_beads"}:
        parts += _beads(femur, rng)
    if kind == "residual" or rng.random() < 0.35:
        parts += _residual(femur, rng)
        if kind == "residual" and rng.random() < 0.5:
            parts += _residual(femur, rng)
    resection = HEAD_RESECTED if "spacer" in kind else GIRDLESTONE
    return Implant(HardwareClass.POST_INFECTIOUS, tuple(parts), resection)


BUILDERS: dict[HardwareClass, Callable[[Femur, np.random.Generator], Implant]] = {
    HardwareClass.NONE: build_none,
    HardwareClass.THA: build_tha,
    HardwareClass.HEMI: build_hemi,
    HardwareClass.IMN: build_imn,
    HardwareClass.CANNULATED_SCREWS: build_cannulated_screws,
    HardwareClass.DHS: build_dhs,
    HardwareClass.PLATE: build_plate,
    HardwareClass.THA_PLUS_FIXATION: build_tha_plus_fixation,
    HardwareClass.POST_INFECTIOUS: build_post_infectious,
}


def build_implant(hardware: HardwareClass | str, femur: Femur, rng: np.random.Generator) -> Implant:
    """The implant of class ``hardware`` on ``femur``, designed from ``rng``."""
    return BUILDERS[HardwareClass(hardware)](femur, rng)
