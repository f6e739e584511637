"""Synthetic metal drawn on real radiographs without hardware: training examples for a hardware-present head.

FracAtlas has 99 real images with hardware, and the gate's hardware head trained on them misses plain nails,
plates and external fixators on films unlike the few it saw (README, "The body-part gate and hardware check").
:func:`draw_metal` draws one implant-like metal object on a letterboxed grey image, so that a real film
without hardware becomes one with: a nail with locking screws, a plate with screw holes and screws, loose
screws, wires (straight or a cerclage loop) or an external fixator's rods and pins. The shapes are flat 2-D
drawings, as bright as metal on a radiograph (a nearly saturated grey), placed over the body (a pixel at least
half as bright as the image's brightest twentieth), at sizes relative to the image. They are not meant to look
like any device in detail: they teach that a dense straight-edged object on a real film is hardware, whatever
the film.

Contract: ``draw_metal(image, rng)`` takes uint8 (S, S) and returns a new uint8 (S, S); the result depends on
``rng`` alone, and metal never darkens a pixel.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

#: Drawn at this many times the image's size, then reduced: smooth edges, as a detector blurs them.
_SUPERSAMPLE = 2

Point = tuple[float, float]


def _band(draw: ImageDraw.ImageDraw, centre: Point, angle: float, length: float, width: float, fill: int) -> None:
    """A filled rectangle ``length`` x ``width`` centred on ``centre``, its long side at ``angle`` (radians)."""
    dx, dy = math.cos(angle), math.sin(angle)
    half_l, half_w = length / 2, width / 2
    x, y = centre
    corners = [
        (x + dx * sl * half_l - dy * sw * half_w, y + dy * sl * half_l + dx * sw * half_w)
        for sl, sw in ((1, 1), (1, -1), (-1, -1), (-1, 1))
    ]
    draw.polygon(corners, fill=fill)


def _along(centre: Point, angle: float, distance: float) -> Point:
    return centre[0] + math.cos(angle) * distance, centre[1] + math.sin(angle) * distance


def _screw(draw: ImageDraw.ImageDraw, centre: Point, angle: float, length: float, width: float) -> None:
    """A screw: a shaft with a wider head at one end and a thread of lighter notches along it."""
    _band(draw, centre, angle, length, width, 255)
    _band(draw, _along(centre, angle, -length / 2), angle, width * 0.8, width * 1.8, 255)
    for step in np.arange(-0.3, 0.5, 0.12):
        _band(draw, _along(centre, angle, step * length), angle + math.pi / 2, width * 1.25, width * 0.25, 200)


def _nail(draw: ImageDraw.ImageDraw, centre: Point, size: float, rng: np.random.Generator) -> None:
    angle = rng.uniform(0, math.pi)
    length, width = rng.uniform(0.35, 0.8) * size, rng.uniform(0.025, 0.05) * size
    _band(draw, centre, angle, length, width, 255)
    for end in rng.choice([-1, 1], size=int(rng.integers(1, 4))):
        at = _along(centre, angle, end * length * rng.uniform(0.3, 0.45))
        _screw(draw, at, angle + math.pi / 2 + rng.uniform(-0.5, 0.5), width * rng.uniform(2.5, 4), width * 0.45)


def _plate(draw: ImageDraw.ImageDraw, centre: Point, size: float, rng: np.random.Generator) -> None:
    angle = rng.uniform(0, math.pi)
    length, width = rng.uniform(0.15, 0.45) * size, rng.uniform(0.03, 0.055) * size
    _band(draw, centre, angle, length, width, 255)
    holes = max(2, int(length / (2.2 * width)))
    for index in range(holes):
        at = _along(centre, angle, (index + 0.5) / holes * length - length / 2)
        if rng.random() < 0.6:
            _screw(draw, at, angle + math.pi / 2 + rng.uniform(-0.3, 0.3), rng.uniform(0.06, 0.14) * size, width * 0.4)
        else:
            radius = width * 0.25
            draw.ellipse((at[0] - radius, at[1] - radius, at[0] + radius, at[1] + radius), fill=0)


def _screws(draw: ImageDraw.ImageDraw, centre: Point, size: float, rng: np.random.Generator) -> None:
    angle = rng.uniform(0, math.pi)
    width = rng.uniform(0.012, 0.025) * size
    for index in range(int(rng.integers(1, 5))):
        at = _along(centre, angle + math.pi / 2, (index - 1.5) * width * rng.uniform(2.5, 4))
        _screw(draw, at, angle + rng.uniform(-0.15, 0.15), rng.uniform(0.05, 0.15) * size, width)


def _wires(draw: ImageDraw.ImageDraw, centre: Point, size: float, rng: np.random.Generator) -> None:
    width = max(1.0, rng.uniform(0.006, 0.012) * size)
    if rng.random() < 0.5:  # a cerclage loop round a bone
        rx, ry = max(rng.uniform(0.03, 0.08) * size, 4 * width), max(rng.uniform(0.01, 0.03) * size, 3 * width)
        box = (centre[0] - rx, centre[1] - ry, centre[0] + rx, centre[1] + ry)
        draw.ellipse(box, outline=255, width=max(1, round(width)))
        return
    angle = rng.uniform(0, math.pi)
    for index in range(int(rng.integers(1, 4))):
        at = _along(centre, angle + math.pi / 2, index * rng.uniform(0.02, 0.05) * size)
        _band(draw, at, angle + rng.uniform(-0.2, 0.2), rng.uniform(0.1, 0.4) * size, width, 255)


def _fixator(draw: ImageDraw.ImageDraw, centre: Point, size: float, rng: np.random.Generator) -> None:
    angle = rng.uniform(0, math.pi)
    length, width = rng.uniform(0.5, 0.9) * size, rng.uniform(0.02, 0.03) * size
    gap = rng.uniform(0.06, 0.15) * size
    rods = [_along(centre, angle + math.pi / 2, offset) for offset in (-gap / 2, gap / 2)]
    for rod in rods:
        _band(draw, rod, angle, length, width, 255)
    for _ in range(int(rng.integers(3, 7))):
        at = _along(centre, angle, (rng.uniform(-0.45, 0.45)) * length)
        _band(draw, at, angle + math.pi / 2 + rng.uniform(-0.2, 0.2), rng.uniform(0.3, 0.5) * size, width * 0.6, 255)
        for rod_offset in (-gap / 2, gap / 2):
            clamp = _along(at, angle + math.pi / 2, rod_offset)
            _band(draw, clamp, angle, width * 2.5, width * 2.5, 255)


_SHAPES: tuple[Callable[[ImageDraw.ImageDraw, Point, float, np.random.Generator], None], ...] = (
    _nail,
    _plate,
    _screws,
    _wires,
    _fixator,
)


def draw_metal(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``image`` (uint8, (S, S)) with one synthetic metal object drawn over its body; a new array."""
    if image.dtype != np.uint8 or image.ndim != 2 or image.shape[0] != image.shape[1]:
        raise ValueError(f"draw_metal takes a square uint8 grey image, got {image.dtype} {image.shape}")
    size = image.shape[0]
    body = np.argwhere(image >= 0.5 * np.percentile(image, 95))  # not the air or the letterbox's black
    y, x = body[rng.integers(len(body))] if len(body) else (size // 2, size // 2)
    big = size * _SUPERSAMPLE
    mask = Image.new("L", (big, big), 0)
    shape = _SHAPES[int(rng.integers(len(_SHAPES)))]
    centre = ((x + 0.5) * _SUPERSAMPLE, (y + 0.5) * _SUPERSAMPLE)
    shape(ImageDraw.Draw(mask), centre, big, rng)
    if mask.getbbox() is None:  # too thin to leave a pixel: a screw instead
        _screw(ImageDraw.Draw(mask), centre, rng.uniform(0, math.pi), 0.1 * big, 0.02 * big)
    reduced = mask.resize((size, size), Image.Resampling.BOX).filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 0.8)))
    alpha = np.asarray(reduced, dtype=np.float64) / 255.0 * rng.uniform(0.85, 1.0)
    level = rng.uniform(225.0, 255.0)
    blended = image.astype(np.float64) * (1 - alpha) + level * alpha
    return np.clip(np.round(np.maximum(blended, image)), 0, 255).astype(np.uint8)
