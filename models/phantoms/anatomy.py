"""A patient's schematic anatomy: femurs as 3-D parts, pelvis, spine and soft tissue per view.

Contract: ``sample_anatomy(rng)`` draws one patient's proportions (the same for every image of the
patient). ``Femur`` holds one femur's landmarks in the patient frame (predraft.models.phantoms.parts: X to the
patient's left, Y to the feet, Z anterior; millimetres, the midpoint of the femoral heads at the
origin) and ``femur_parts`` turns them into bone parts, resected as an implant requires.
``draw_background`` paints the broad, smooth anatomy (soft tissue, the flat bones of the pelvis, the
lumbar spine) on a coarse grid, ``draw_joint_lines`` the fine cortical outlines of the acetabulum at
full resolution. Proportions follow adult pelvis radiographs: femoral heads 42-54 mm across and about
180-200 mm apart, neck-shaft angle 125-138 degrees, anteversion 5-20 degrees, shaft 26-30 mm across.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from predraft.models.phantoms import geometry
from predraft.models.phantoms.camera import Camera, Pose
from predraft.models.phantoms.parts import (
    BONE,
    MU_CORTICAL,
    MU_TRABECULAR,
    Part,
    Rod,
    Sphere,
    Vec,
    unit,
    vec,
)
from predraft.models.taxonomy import Side, View

#: How much of the femur an implant removed.
INTACT, HEAD_RESECTED, GIRDLESTONE = "intact", "head_resected", "girdlestone"


def rotation(axis: Vec, angle: float) -> np.ndarray:
    """Right-handed rotation by ``angle`` radians about ``axis`` (Rodrigues)."""
    k = unit(axis)
    cross = np.array([[0.0, -k[2], k[1]], [k[2], 0.0, -k[0]], [-k[1], k[0], 0.0]])
    return np.eye(3) + math.sin(angle) * cross + (1.0 - math.cos(angle)) * (cross @ cross)


@dataclass(frozen=True, eq=False)
class Femur:
    """One proximal femur in its neutral pose; ``sigma`` is -1 for the right, +1 for the left."""

    side: Side
    head: Vec
    head_radius: float
    neck_dir: Vec  # unit, from the head centre toward the shaft
    neck_length: float  # head centre to the shaft axis
    shaft_dir: Vec  # unit, down the shaft
    shaft_radius: float
    canal_radius: float

    @property
    def sigma(self) -> float:
        return -1.0 if self.side is Side.RIGHT else 1.0

    @property
    def base(self) -> Vec:
        """Where the neck axis meets the shaft axis."""
        return self.head + self.neck_dir * self.neck_length

    @property
    def lateral(self) -> Vec:
        """Unit vector across the shaft toward the lateral cortex."""
        out = vec(self.sigma, 0.0, 0.0)
        return unit(out - (out @ self.shaft_dir) * self.shaft_dir)

    @property
    def anterior(self) -> Vec:
        return unit(np.cross(self.shaft_dir, self.lateral) * -self.sigma)

    def shaft(self, t: float) -> Vec:
        """The point ``t`` mm down the shaft axis from ``base``."""
        return self.base + self.shaft_dir * t

    def outer_radius(self, t: float) -> float:
        """Radius of the bone at ``t``: the metaphysis flares above the lesser trochanter."""
        flare = np.clip((45.0 - t) / 60.0, 0.0, 1.0)
        return float(self.shaft_radius + flare * (self.shaft_radius * 0.65))

    def lateral_cortex(self, t: float) -> Vec:
        return self.shaft(t) + self.lateral * self.outer_radius(t)

    def trochanter_tip(self) -> Vec:
        return self.shaft(-32.0) + self.lateral * (self.shaft_radius * 0.55)

    def neck_exit(self) -> float:
        """Distance along the neck axis from the head centre to where it leaves the lateral cortex."""
        # the neck axis crosses the shaft axis at neck_length, then runs on to the lateral cortex
        lateral_step = float(self.neck_dir @ self.lateral)
        return self.neck_length + self.outer_radius(20.0) / max(lateral_step, 0.3)

    def neck_frame(self) -> tuple[Vec, Vec]:
        """Two unit vectors across the neck: superior (toward the head's top) and anterior."""
        up = vec(0.0, -1.0, 0.0)
        superior = unit(up - (up @ self.neck_dir) * self.neck_dir)
        return superior, np.cross(self.neck_dir, superior) * -self.sigma


@dataclass(frozen=True, eq=False)
class Anatomy:
    """One patient's proportions (mm)."""

    femurs: dict[Side, Femur]
    pelvis_half_width: float  # soft tissue at the hips
    thigh_radius: float
    iliac_height: float  # crest above the head centres
    iliac_spread: float  # lateral reach of the iliac wings beyond the head centres
    obturator: tuple[float, float]  # foramen half-axes
    sacrum_width: float
    soft: float  # soft-tissue attenuation of the whole trunk


def sample_anatomy(rng: np.random.Generator) -> Anatomy:
    """One patient's proportions, both femurs alike but not identical."""
    half = rng.uniform(88.0, 100.0)
    head_radius = rng.uniform(21.0, 27.0)
    neck_shaft = math.radians(rng.uniform(125.0, 138.0))
    femurs = {}
    for side, sigma in ((Side.RIGHT, -1.0), (Side.LEFT, 1.0)):
        psi = math.pi - neck_shaft + math.radians(rng.normal(0, 1.0))
        anteversion = math.radians(rng.uniform(5.0, 20.0))
        neck_dir = unit(
            vec(sigma * math.sin(psi) * math.cos(anteversion), math.cos(psi), -math.sin(psi) * math.sin(anteversion))
        )
        tilt = math.radians(rng.uniform(4.0, 8.0))
        shaft_radius = rng.uniform(13.0, 15.5)
        femurs[side] = Femur(
            side=side,
            head=vec(sigma * half, 0.0, 0.0),
            head_radius=head_radius + rng.normal(0, 0.3),
            neck_dir=neck_dir,
            neck_length=head_radius * rng.uniform(1.9, 2.2),
            shaft_dir=unit(vec(-sigma * math.sin(tilt), math.cos(tilt), 0.0)),
            shaft_radius=shaft_radius,
            canal_radius=shaft_radius * rng.uniform(0.5, 0.62),
        )
    return Anatomy(
        femurs=femurs,
        pelvis_half_width=rng.uniform(165.0, 200.0),
        thigh_radius=rng.uniform(70.0, 95.0),
        iliac_height=rng.uniform(160.0, 185.0),
        iliac_spread=rng.uniform(35.0, 50.0),
        obturator=(rng.uniform(15.0, 20.0), rng.uniform(22.0, 28.0)),
        sacrum_width=rng.uniform(45.0, 55.0),
        soft=rng.uniform(0.55, 0.85),
    )


def femur_parts(femur: Femur, resection: str = INTACT) -> list[Part]:
    """The bone of one proximal femur (bone layer): head, neck, trochanters, metaphysis and shaft.

    Each piece is a cortical shell round trabecular bone (or marrow in the shaft's canal); the pieces
    are max-composited, so they merge into one outline.
    """
    if resection not in {INTACT, HEAD_RESECTED, GIRDLESTONE}:
        raise ValueError(f"unknown resection {resection!r}")
    h, n, r = femur.head, femur.neck_dir, femur.head_radius
    trabecular = MU_TRABECULAR / MU_CORTICAL
    neck_r = r * 0.68
    parts: list[Part] = []
    if resection == INTACT:
        parts.append(Sphere(h, r, MU_CORTICAL, BONE, r_in=r - 1.6, core=trabecular * 1.15))
        neck_start, caps = h + n * (r * 0.3), True
    elif resection == HEAD_RESECTED:
        neck_start, caps = h + n * (femur.neck_length * 0.5), False
    else:
        neck_start, caps = h + n * (femur.neck_length * 0.9), False
    neck_end = femur.base - n * 2.0
    if resection != GIRDLESTONE:
        parts.append(
            Rod(neck_start, neck_end, neck_r, neck_r * 1.45, MU_CORTICAL, BONE, wall=1.8, core=trabecular, caps=caps)
        )
    lateral, shaft_r = femur.lateral, femur.shaft_radius
    parts += [
        # intertrochanteric region, flaring from the shaft up to the trochanters
        Rod(
            femur.shaft(-4.0) + lateral * 6.0,
            femur.shaft(60.0),
            shaft_r * 1.45,
            shaft_r * 1.02,
            MU_CORTICAL,
            BONE,
            wall=2.2,
            core=trabecular,
            caps=(True, False),
        ),
        # greater trochanter, its tip about level with the head centre
        Rod(
            femur.shaft(-22.0) + lateral * (shaft_r * 0.7),
            femur.shaft(12.0) + lateral * (shaft_r * 0.55),
            shaft_r * 0.85,
            shaft_r * 0.9,
            MU_CORTICAL,
            BONE,
            wall=1.8,
            core=trabecular,
        ),
        # lesser trochanter, posteromedial
        Sphere(
            femur.shaft(34.0) - lateral * (shaft_r + 1.0) - femur.anterior * 5.0,
            7.5,
            MU_CORTICAL,
            BONE,
            r_in=6.0,
            core=trabecular,
        ),
        Rod(
            femur.shaft(60.0),
            femur.shaft(520.0),
            shaft_r * 1.02,
            shaft_r * 0.95,
            MU_CORTICAL,
            BONE,
            inner=femur.canal_radius,
            core=0.05,
            caps=False,
        ),
    ]
    return parts


def femur_pose(femur: Femur, view: View, rng: np.random.Generator) -> Pose:
    """The femur's pose for ``view``: near neutral on frontal and lateral views, flexed, abducted and
    externally rotated on a frog-leg (the shaft then points down and out, the neck foreshortened)."""
    sigma = femur.sigma
    if view is View.FROG_LEG:
        flexion = rotation(vec(1.0, 0.0, 0.0), math.radians(rng.uniform(40.0, 60.0)))
        abduction = rotation(vec(0.0, 0.0, 1.0), -sigma * math.radians(rng.uniform(35.0, 55.0)))
        external = rotation(femur.shaft_dir, sigma * math.radians(rng.uniform(15.0, 35.0)))
        matrix = abduction @ flexion @ external
    else:
        matrix = rotation(vec(0.0, 1.0, 0.0), math.radians(rng.uniform(-10.0, 15.0)) * sigma)
    return Pose(femur.head.copy(), matrix)


# --- the coarse background: soft tissue, pelvis and spine --------------------------------------------------


def _world_grid(camera: Camera) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Patient X, Y, Z (mm) of every pixel centre of ``camera``'s grid, on the plane through its centre."""
    cols = (np.arange(camera.width, dtype=np.float32) - (camera.width - 1) / 2.0) / camera.px_per_mm
    rows = (np.arange(camera.height, dtype=np.float32) - (camera.height - 1) / 2.0) / camera.px_per_mm
    a, b = cols[None, :], rows[:, None]
    return tuple(camera.centre[i] + a * np.float32(camera.u[i]) + b * np.float32(camera.v[i]) for i in range(3))


def _capsule_profile(camera: Camera, start: Vec, end: Vec, radius: float) -> np.ndarray:
    """sqrt(1 - (d / radius)^2) of the in-plane distance d (mm) from the projected segment start-end."""
    (x0, y0), (x1, y1) = camera.project(start), camera.project(end)
    xs = np.arange(camera.width, dtype=np.float32)[None, :]
    ys = np.arange(camera.height, dtype=np.float32)[:, None]
    vx, vy = x1 - x0, y1 - y0
    length_sq = max(vx * vx + vy * vy, 1e-6)
    t = np.clip(((xs - x0) * vx + (ys - y0) * vy) / np.float32(length_sq), 0.0, 1.0)
    dist_sq = (xs - x0 - t * vx) ** 2 + (ys - y0 - t * vy) ** 2
    scale = np.float32(1.0 / (radius * camera.px_per_mm) ** 2)
    return np.sqrt(np.clip(1.0 - dist_sq * scale, 0.0, 1.0))


def draw_background(
    camera: Camera, layer: np.ndarray, anatomy: Anatomy, view: View, poses: dict[Side, Pose], rng: np.random.Generator
) -> None:
    """Soft tissue and the flat bones on a coarse grid (``camera`` and ``layer`` at the coarse scale)."""
    if view is View.CROSS_TABLE_LATERAL:
        _lateral_background(camera, layer, anatomy, poses)
    else:
        _frontal_background(camera, layer, anatomy, poses, rng)


def _frontal_background(
    camera: Camera, layer: np.ndarray, anatomy: Anatomy, poses: dict[Side, Pose], rng: np.random.Generator
) -> None:
    x, y, _ = _world_grid(camera)
    # trunk: an elliptic cross-section, narrowing to the waist above the iliac crests, fading out below
    # the crotch, where the thighs take over
    half = anatomy.pelvis_half_width * (1.0 - 0.18 * np.clip((-y - 120.0) / 120.0, 0.0, 1.0))
    trunk = np.sqrt(np.clip(1.0 - (x / half) ** 2, 0.0, 1.0))
    trunk *= np.clip((110.0 - y) / 80.0, 0.0, 1.0)
    soft = trunk
    for femur in anatomy.femurs.values():
        pose = poses[femur.side]
        start = pose.point(femur.head + femur.lateral * 15.0)
        end = pose.point(femur.shaft(600.0))
        thigh = _capsule_profile(camera, start, end, anatomy.thigh_radius) * np.float32(0.85)
        np.maximum(soft, thigh, out=soft)
    layer += soft * np.float32(anatomy.soft)
    _pelvis_bones(camera, layer, anatomy, rng)
    _lumbar_spine(camera, layer, anatomy)


def _p(camera: Camera, x: float, y: float) -> tuple[float, float]:
    return camera.project(vec(x, y, 0.0))


def _pelvis_bones(camera: Camera, layer: np.ndarray, anatomy: Anatomy, rng: np.random.Generator) -> None:
    s = camera.px_per_mm
    crest, spread = anatomy.iliac_height, anatomy.iliac_spread
    for femur in anatomy.femurs.values():
        sg, hx = femur.sigma, abs(float(femur.head[0]))
        wing = [
            (hx - 35, -22),
            (hx + 16, -30),
            (hx + 30, -50),
            (hx + spread, -85),
            (hx + spread + 5, -125),
            (hx + spread - 10, -0.9 * crest),
            (hx + 5, -crest),
            (hx - 35, -0.97 * crest),
            (hx - 55, -0.8 * crest),
            (hx - 62, -100),
            (hx - 55, -55),
        ]
        outline = [_p(camera, sg * a, b) for a, b in wing]
        geometry.polygon(layer, outline, 0.62)
        cx = sum(a for a, _ in wing) / len(wing)
        cy = sum(b for _, b in wing) / len(wing)
        inset = [_p(camera, sg * (cx + 0.8 * (a - cx)), cy + 0.8 * (b - cy)) for a, b in wing]
        geometry.polygon(layer, inset, -0.3)  # the thin iliac fossa: the wing's rim stands out
        ox, oy = _p(camera, sg * (hx - 5), -42)
        geometry.plateau(layer, ox, oy, 34 * s, 22 * s, 0.4, soft=6 * s)  # supra-acetabular bone
        # obturator ring: pubic and ischial rami round the foramen, ischial tuberosity, pubic body
        fx, fy = _p(camera, sg * (hx - 42), 48)
        a, b = anatomy.obturator
        tilt = sg * math.radians(20)
        geometry.plateau(layer, fx, fy, (a + 11) * s, (b + 11) * s, 0.6, angle=tilt, soft=3 * s)
        geometry.plateau(layer, fx, fy, a * s, b * s, -0.6, angle=tilt, soft=2 * s)
        tx, ty = _p(camera, sg * (hx - 28), 82)
        geometry.plateau(layer, tx, ty, 20 * s, 14 * s, 0.4, soft=4 * s)
        px_, py_ = _p(camera, sg * 13, 42)
        geometry.plateau(layer, px_, py_, 10 * s, 19 * s, 0.3, soft=3 * s)
        # iliopectineal line (pelvic brim), from the sacroiliac joint down to the pubis
        bx, by = _p(camera, 0.0, -48)
        start, stop = (math.radians(15), math.radians(85)) if sg > 0 else (math.radians(95), math.radians(165))
        geometry.arc(layer, bx, by, 72 * s, start, stop, 1.5 * s, 0.35)
    w = anatomy.sacrum_width
    sacrum = [
        (-w, -0.92 * crest),
        (w, -0.92 * crest),
        (0.8 * w, -105),
        (0.5 * w, -62),
        (0.18 * w, -38),
        (-0.18 * w, -38),
        (-0.5 * w, -62),
        (-0.8 * w, -105),
    ]
    geometry.polygon(layer, [_p(camera, a, b) for a, b in sacrum], 0.55)
    for level in range(4):
        for sg in (-1.0, 1.0):
            fx, fy = _p(camera, sg * 0.38 * w, -0.8 * crest + level * 22)
            geometry.plateau(layer, fx, fy, 4.5 * s, 4.0 * s, -0.25)


def _lumbar_spine(camera: Camera, layer: np.ndarray, anatomy: Anatomy) -> None:
    s = camera.px_per_mm
    top = -0.92 * anatomy.iliac_height
    for level in range(3):  # L5, L4, L3
        centre_y = top - 20 - level * 38
        x0, y0 = _p(camera, -26, centre_y)
        x1, y1 = _p(camera, 26, centre_y)
        geometry.band(layer, x0, y0, x1, y1, 14 * s, 0.7, soft=2 * s)
        for sg in (-1.0, 1.0):
            ex, ey = _p(camera, sg * 17, centre_y - 4)
            geometry.plateau(layer, ex, ey, 5.5 * s, 7.5 * s, 0.3, soft=2 * s)
            geometry.plateau(layer, ex, ey, 3.5 * s, 5.0 * s, -0.2, soft=1.5 * s)
            ax, ay = _p(camera, sg * 26, centre_y - 2)
            bx, by = _p(camera, sg * (48 + 6 * (level == 0)), centre_y - 5)
            geometry.band(layer, ax, ay, bx, by, 4.5 * s, 0.32, soft=2 * s)
        sx, sy = _p(camera, 0, centre_y + 8)
        geometry.plateau(layer, sx, sy, 5 * s, 9 * s, 0.28, soft=2 * s)


def _lateral_background(camera: Camera, layer: np.ndarray, anatomy: Anatomy, poses: dict[Side, Pose]) -> None:
    s = camera.px_per_mm
    femur = _imaged_femur(camera, anatomy)
    pose = poses[femur.side]
    thigh = _capsule_profile(camera, pose.point(femur.head), pose.point(femur.shaft(600.0)), anatomy.thigh_radius * 1.1)
    hx, hy = camera.project(femur.head)
    xs = np.arange(camera.width, dtype=np.float32)[None, :]
    ys = np.arange(camera.height, dtype=np.float32)[:, None]
    toward_head = -1.0 if camera.project(femur.shaft(100.0))[0] > hx else 1.0
    # the buttock and pelvis: thick on the head's side, thinning toward the thigh
    bx, by = hx + toward_head * 70 * s, hy + 10 * s
    buttock = np.sqrt(np.clip(1.0 - ((xs - bx) / (150 * s)) ** 2 - ((ys - by) / (115 * s)) ** 2, 0.0, 1.0))
    np.maximum(thigh, buttock * np.float32(1.1), out=thigh)
    layer += thigh * np.float32(anatomy.soft)
    # pelvic bone behind the joint: ischium (posterior, below in the image), pubic ramus (anterior), ilium
    geometry.plateau(layer, hx + toward_head * 45 * s, hy + 8 * s, 55 * s, 60 * s, 0.45, soft=12 * s)
    geometry.plateau(
        layer, hx + toward_head * 22 * s, hy + 48 * s, 17 * s, 30 * s, 0.6, angle=toward_head * 0.5, soft=4 * s
    )
    ax, ay = hx + toward_head * 15 * s, hy - 30 * s
    geometry.band(layer, ax, ay, ax + toward_head * 80 * s, ay - 12 * s, 9 * s, 0.4, soft=3 * s)


def _imaged_femur(camera: Camera, anatomy: Anatomy) -> Femur:
    """The femur nearest the image centre (a lateral view shows one hip)."""

    def offset(femur: Femur) -> float:
        x, y = camera.project(femur.head)
        return (x - camera.width / 2) ** 2 + (y - camera.height / 2) ** 2

    return min(anatomy.femurs.values(), key=offset)


def draw_joint_lines(camera: Camera, layer: np.ndarray, anatomy: Anatomy, view: View, sides: tuple[Side, ...]) -> None:
    """The acetabulum's cortical outlines at full resolution: roof (sourcil), medial wall, teardrop; on a
    cross-table lateral its anterior and posterior walls."""
    s = camera.px_per_mm
    for side in sides:
        femur = anatomy.femurs[side]
        r = femur.head_radius
        hx, hy = camera.project(femur.head)
        if view is View.CROSS_TABLE_LATERAL:
            toward_head = -1.0 if camera.project(femur.shaft(100.0))[0] > hx else 1.0
            centre = math.pi if toward_head < 0 else 0.0
            geometry.arc(layer, hx, hy, (r + 3) * s, centre - 1.9, centre + 1.9, 2.2 * s, 0.7)
            geometry.arc(layer, hx + toward_head * 3 * s, hy, (r + 7) * s, centre - 1.5, centre + 1.5, 2.0 * s, 0.4)
            continue
        # roof from the medial-superior edge round to the lateral lip (mirrored for the right hip, which
        # lies on the image's left); angles run from the image's x axis toward its y axis (down)
        if femur.sigma > 0:
            start, stop = -math.pi / 2 - 0.7, -0.25
        else:
            start, stop = -math.pi + 0.25, -math.pi / 2 + 0.7
        geometry.arc(layer, hx, hy, (r + 2.5) * s, start, stop, 2.5 * s, 1.2)
        mx, my = camera.project(femur.head + vec(-femur.sigma * 8.0, 0.0, 0.0))
        medial = math.pi if femur.sigma > 0 else 0.0
        geometry.arc(layer, mx, my, (r + 8) * s, medial - 1.0, medial + 0.9, 2.0 * s, 0.5)
        tx, ty = camera.project(femur.head + vec(-femur.sigma * (r + 14.0), 14.0, 0.0))
        geometry.arc(layer, tx, ty, 6 * s, 0.1, math.pi - 0.1, 1.6 * s, 0.5)
