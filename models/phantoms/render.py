"""Rendering one radiograph: view geometry, anatomy, implants, acquisition variation -> display values.

Contract: ``render(...)`` returns a float32 image in [0, 1], bone and metal bright, in the standard
display orientation (the patient's right on the image's left on frontal views; anterior up on a
cross-table lateral), with its ``Camera`` (pixel spacing = 1 / px_per_mm). All randomness comes from
the generators passed in, so the same inputs give the same pixels. The image's long side is ``size``
pixels (rounded to a multiple of 4, the coarse background grid's factor).

Acquisition variation (``Acquisition``): in-plane rotation, magnification, exposure (contrast and
brightness), noise, collimation borders (uniform shutters the pipeline crops, or noisy ones it keeps),
burned-in lead R/L markers in a top corner away from the hips, and (AP pelvis) lumbar pedicle screws
and rods, which are outside the nine classes and must not count.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image

from predraft.models.phantoms import camera as cameras
from predraft.models.phantoms import geometry
from predraft.models.phantoms.anatomy import INTACT, Anatomy, draw_background, draw_joint_lines, femur_parts, femur_pose
from predraft.models.phantoms.camera import Camera, Layers, Pose
from predraft.models.phantoms.hardware import Implant
from predraft.models.phantoms.parts import MU_STEEL, MU_TITANIUM, PELVIS, Part, Rod, Thread, vec
from predraft.models.taxonomy import Side, View

#: Display value = 1 - exp(-attenuation / DISPLAY_SCALE) (before exposure variation).
DISPLAY_SCALE = 2.2
#: The coarse background (soft tissue, flat bones) is drawn on a grid this many times coarser.
COARSE = 4
#: Field of view (mm, width x height) per view at magnification 1.
FIELDS = {
    View.AP_PELVIS: (430.0, 350.0),
    View.AP_HIP: (240.0, 300.0),
    View.FROG_LEG: (280.0, 260.0),
    View.CROSS_TABLE_LATERAL: (260.0, 200.0),
}


@dataclass(frozen=True)
class Acquisition:
    """How one image was taken and processed (see the module docstring)."""

    rotation: float = 0.0  # radians, in the image plane
    magnification: float = 1.0
    contrast: float = 1.0  # scales attenuation before the display curve
    low: float = 0.0  # display value of no attenuation
    high: float = 1.0  # display value of infinite attenuation
    noise: float = 0.01
    borders: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)  # top, bottom, left, right (fractions)
    border_value: float = 0.0
    border_noisy: bool = False
    markers: tuple[str, ...] = ()  # letters R / L, each in its side's top corner
    spine_hardware: bool = False
    offset: tuple[float, float] = (0.0, 0.0)  # mm, the field's centre shift

    @classmethod
    def plain(cls) -> Acquisition:
        """No variation at all: the reference rendering (tests, pictures)."""
        return cls()


def sample_acquisition(view: View, side: Side | None, rng: np.random.Generator) -> Acquisition:
    """Random but plausible acquisition variation for one image of ``view`` (``side`` for one-hip views)."""
    borders = (0.0, 0.0, 0.0, 0.0)
    border_value, noisy = 0.0, False
    if rng.random() < 0.45:
        top, bottom = rng.uniform(0.0, 0.07, 2) * (rng.random(2) < 0.7)
        left, right = rng.uniform(0.0, 0.07, 2) * (rng.random(2) < 0.7)
        noisy = rng.random() < 0.2
        if view is View.AP_PELVIS and noisy:  # a shutter the pipeline keeps must not move the midline
            right = left
        borders = (float(top), float(bottom), float(left), float(right))
        border_value = float(rng.choice([0.0, 0.0, 1.0, 0.85]))
    markers: tuple[str, ...] = ()
    if rng.random() < 0.7:
        if view is View.AP_PELVIS:
            markers = tuple(str(rng.choice(["R", "L", "RL"])))  # "RL": both letters
        elif side in (Side.RIGHT, Side.LEFT):
            markers = ("R" if side is Side.RIGHT else "L",)
    max_shift = 4.0 if view is View.AP_PELVIS else 12.0
    return Acquisition(
        rotation=math.radians(rng.uniform(-3.0, 3.0) if view is View.AP_PELVIS else rng.uniform(-6.0, 6.0)),
        magnification=float(rng.uniform(0.9, 1.1)),
        contrast=float(rng.uniform(0.8, 1.15)),
        low=float(rng.uniform(0.0, 0.08)),
        high=float(rng.uniform(0.92, 1.0)),
        noise=float(rng.uniform(0.004, 0.025)),
        borders=borders,
        border_value=border_value,
        border_noisy=bool(noisy),
        markers=markers,
        spine_hardware=view is View.AP_PELVIS and rng.random() < 0.2,
        offset=(float(rng.uniform(-max_shift, max_shift)), float(rng.uniform(-12.0, 12.0))),
    )


def view_camera(
    view: View, anatomy: Anatomy, side: Side | None, size: int, acquisition: Acquisition, rng: np.random.Generator
) -> Camera:
    """The camera of ``view`` (``side``: the hip of a one-hip view), ``size`` pixels on the long side."""
    if view is View.UNKNOWN:
        raise ValueError("cannot render the unknown view")
    if view is not View.AP_PELVIS and (side is None or side is Side.UNKNOWN):
        raise ValueError(f"a {view.label} shows one hip: side must be right or left, got {side!r}")
    field_w, field_h = FIELDS[view]
    long_side = max(field_w, field_h)
    width = _multiple(size * field_w / long_side)
    height = _multiple(size * field_h / long_side)
    px_per_mm = size / long_side * acquisition.magnification
    dx, dy = acquisition.offset
    if view is View.AP_PELVIS:
        centre, u, v = vec(dx, -18.0 + dy, 0.0), vec(1.0, 0.0, 0.0), vec(0.0, 1.0, 0.0)
    else:
        assert side is not None  # checked above
        femur = anatomy.femurs[side]
        sigma = femur.sigma
        if view is View.CROSS_TABLE_LATERAL:
            beta = math.radians(rng.uniform(40.0, 55.0))
            toward_shaft = vec(sigma * math.sin(beta), math.cos(beta), 0.0)
            u = toward_shaft if side is Side.RIGHT else -toward_shaft
            v = vec(0.0, 0.0, -1.0)  # anterior up
            centre = femur.head + toward_shaft * (62.0 + dx) + vec(0.0, 0.0, -dy * 0.5)
        else:
            reach = (18.0, 60.0) if view is View.AP_HIP else (35.0, 50.0)
            centre = femur.head + vec(sigma * (reach[0] + dx), reach[1] + dy, 0.0)
            u, v = vec(1.0, 0.0, 0.0), vec(0.0, 1.0, 0.0)
    return Camera(u, v, centre, px_per_mm, width, height).rotated(acquisition.rotation)


def _multiple(value: float) -> int:
    return max(COARSE * 8, int(round(value / COARSE)) * COARSE)


def render(
    anatomy: Anatomy,
    implants: dict[Side, Implant],
    view: View,
    side: Side | None,
    *,
    size: int,
    acquisition: Acquisition,
    rng: np.random.Generator,
) -> tuple[np.ndarray, Camera]:
    """Display values in [0, 1] (float32, standard orientation) of one radiograph and its camera."""
    camera = view_camera(view, anatomy, side, size, acquisition, rng)
    sides = (Side.RIGHT, Side.LEFT) if view is View.AP_PELVIS or side is None else (side,)
    poses = {s: femur_pose(anatomy.femurs[s], view, rng) for s in (Side.RIGHT, Side.LEFT)}
    layers = Layers(camera.height, camera.width)
    _background(camera, layers, anatomy, view, poses, rng)
    draw_joint_lines(camera, layers.tissue, anatomy, view, sides)
    for s in sides:
        implant = implants.get(s)
        resection = implant.resection if implant is not None else INTACT
        cameras.draw(camera, layers, femur_parts(anatomy.femurs[s], resection), poses[s])
        if implant is not None:
            cameras.draw(camera, layers, implant.parts, poses[s])
    if acquisition.spine_hardware:
        cameras.draw(camera, layers, spine_hardware(anatomy))
    _markers(camera, layers.metal, acquisition, view, side)
    _trabecular(layers.bone, rng)
    image = _display(layers.total(), acquisition)
    _noise(image, acquisition.noise, rng)
    _collimate(image, acquisition, rng)
    np.clip(image, 0.0, 1.0, out=image)
    return image, camera


def _background(
    camera: Camera, layers: Layers, anatomy: Anatomy, view: View, poses: dict[Side, Pose], rng: np.random.Generator
) -> None:
    coarse = camera.scaled(COARSE)
    field = np.zeros((coarse.height, coarse.width), dtype=np.float32)
    draw_background(coarse, field, anatomy, view, poses, rng)
    texture = rng.standard_normal(field.shape, dtype=np.float32)
    texture *= np.float32(0.05)
    texture += np.float32(1.0)
    field *= texture  # mottle of bone and bowel gas
    field = _smooth(field)
    layers.tissue = np.asarray(
        Image.fromarray(field).resize((camera.width, camera.height), Image.Resampling.BILINEAR), dtype=np.float32
    ).copy()


def _trabecular(bone: np.ndarray, rng: np.random.Generator) -> None:
    """Modulate bone by a grain of a few millimetres (trabecular pattern): bone is never a flat plateau."""
    height, width = bone.shape
    coarse = rng.standard_normal((height // COARSE + 1, width // COARSE + 1), dtype=np.float32)
    grain = np.asarray(
        Image.fromarray(coarse).resize((width + COARSE, height + COARSE), Image.Resampling.BILINEAR), dtype=np.float32
    )[:height, :width].copy()
    grain *= np.float32(0.12)
    grain += np.float32(1.0)
    bone *= grain


def _smooth(field: np.ndarray) -> np.ndarray:
    """A 3 x 3 binomial blur (edges replicated): softens the coarse grid's stair steps."""
    padded = np.pad(field, 1, mode="edge")
    rows = padded[:-2] * 0.25 + padded[1:-1] * 0.5 + padded[2:] * 0.25
    return np.ascontiguousarray(rows[:, :-2] * 0.25 + rows[:, 1:-1] * 0.5 + rows[:, 2:] * 0.25, dtype=np.float32)


def spine_hardware(anatomy: Anatomy) -> list[Part]:
    """Pedicle screws at L4, L5 and S1 and two rods (pelvis-attached): outside the nine classes."""
    top = -0.92 * anatomy.iliac_height
    levels = (top - 58.0, top - 20.0, top + 16.0)
    parts: list[Part] = []
    for sigma in (-1.0, 1.0):
        for y in levels:
            tulip, tip = vec(sigma * 33.0, y, 28.0), vec(sigma * 13.0, y + 3.0, -22.0)
            parts += [
                Rod(tulip, tip, 3.2, 2.4, MU_TITANIUM * 1.6, attached=PELVIS, thread=Thread(8.0, 60.0, 2.5, 0.7)),
                Rod(
                    tulip - vec(0.0, 5.5, 0.0), tulip + vec(0.0, 5.5, 0.0), 5.5, 5.5, MU_TITANIUM * 1.6, attached=PELVIS
                ),
            ]
        parts.append(
            Rod(
                vec(sigma * 33.0, levels[0] - 14.0, 28.0),
                vec(sigma * 33.0, levels[-1] + 10.0, 28.0),
                2.75,
                2.75,
                MU_STEEL,
                attached=PELVIS,
            )
        )
    return parts


def _markers(camera: Camera, metal: np.ndarray, acquisition: Acquisition, view: View, side: Side | None) -> None:
    """Lead letters in the top corner of their side (the cross-table's: the corner over the thigh)."""
    top_border, _, left_border, right_border = acquisition.borders
    cell = 2.2 * camera.px_per_mm
    letter_w, margin = 5 * cell, 0.04 * camera.width
    for letter in acquisition.markers:
        on_left = letter == "R"
        if view is View.CROSS_TABLE_LATERAL:
            on_left = side is not Side.RIGHT  # the right hip's thigh runs to the image's right
        x = left_border * camera.width + margin if on_left else camera.width * (1.0 - right_border) - margin - letter_w
        y = top_border * camera.height + margin
        geometry.glyph(metal, letter, x, y, cell, 6.0)


def _display(attenuation: np.ndarray, acquisition: Acquisition) -> np.ndarray:
    """1 - exp(-contrast x A / DISPLAY_SCALE), mapped linearly onto [low, high]; in place."""
    image = attenuation
    image *= np.float32(-acquisition.contrast / DISPLAY_SCALE)
    np.exp(image, out=image)
    span = acquisition.high - acquisition.low
    image *= np.float32(-span)
    image += np.float32(acquisition.low + span)
    return image


@lru_cache(maxsize=1)
def _noise_tile() -> np.ndarray:
    """A fixed tile of unit Gaussian noise (2 x 2 copies of 1031 x 1031), cut at random offsets per image."""
    tile = np.random.default_rng(20240611).standard_normal((1031, 1031), dtype=np.float32)
    return np.tile(tile, (2, 2))


def _noise(image: np.ndarray, sigma: float, rng: np.random.Generator) -> None:
    """Add Gaussian noise of ``sigma`` (display units), stronger where the image is dark (fewer quanta)."""
    if sigma <= 0:
        return
    height, width = image.shape
    tile = _noise_tile()
    period = tile.shape[0] // 2
    oy, ox = (int(v) for v in rng.integers(0, period, 2))
    if height <= period and width <= period:
        noise = tile[oy : oy + height, ox : ox + width]
    else:
        noise = tile[np.ix_((np.arange(height) + oy) % period, (np.arange(width) + ox) % period)]
    if rng.random() < 0.5:
        noise = noise[::-1]
    weight = np.float32(1.5) - image
    weight *= noise
    weight *= np.float32(sigma)
    image += weight


def _collimate(image: np.ndarray, acquisition: Acquisition, rng: np.random.Generator) -> None:
    top, bottom, left, right = acquisition.borders
    height, width = image.shape
    value = np.float32(acquisition.border_value)
    regions = [
        (slice(0, int(top * height)), slice(None)),
        (slice(height - int(bottom * height), height), slice(None)),
        (slice(None), slice(0, int(left * width))),
        (slice(None), slice(width - int(right * width), width)),
    ]
    for region in regions:
        block = image[region]
        if block.size == 0:
            continue
        block[...] = value
        if acquisition.border_noisy:  # a collimator shadow, not an electronic shutter: it keeps some grain
            block += rng.uniform(-0.06, 0.06, block.shape).astype(np.float32)
