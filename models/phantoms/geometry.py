"""Raster primitives: each adds (or max-composites) one shape's projected attenuation into a float32 layer.

Contract: coordinates and lengths are in pixels of the layer (x = column, y = row, pixel centres at
integer coordinates); every function touches only the bounding box of its shape, clipped to the layer,
so its cost is proportional to the shape's area, never to the image's. Values are attenuation in the
renderer's units (``mu`` is attenuation per pixel of path length; ``value`` is a path-integrated
attenuation). ``mode="add"`` superposes (soft tissue and bone); ``mode="max"`` keeps the larger value
(the parts of one metal or cement layer, so that overlapping parts of one implant show no seams).
Nothing here knows about anatomy, hardware or DICOM.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

#: Radii below this (pixels) are drawn at this radius with the attenuation scaled down, so thin wires
#: stay continuous lines instead of dotted aliasing.
MIN_RADIUS = 0.8

_F32 = np.float32


def _box(
    layer: np.ndarray, x0: float, x1: float, y0: float, y1: float
) -> tuple[tuple[slice, slice], np.ndarray, np.ndarray] | None:
    """The layer region covering [x0, x1] x [y0, y1] and its coordinate vectors (row, column), or None."""
    height, width = layer.shape
    ix0, ix1 = max(int(math.floor(x0)), 0), min(int(math.ceil(x1)) + 1, width)
    iy0, iy1 = max(int(math.floor(y0)), 0), min(int(math.ceil(y1)) + 1, height)
    if ix0 >= ix1 or iy0 >= iy1:
        return None
    ys = np.arange(iy0, iy1, dtype=_F32)[:, None]
    xs = np.arange(ix0, ix1, dtype=_F32)[None, :]
    return (slice(iy0, iy1), slice(ix0, ix1)), ys, xs


def _put(layer: np.ndarray, region: tuple[slice, slice], values: np.ndarray, mode: str) -> None:
    target = layer[region]
    if mode == "add":
        target += values
    elif mode == "max":
        np.maximum(target, values, out=target)
    else:
        raise ValueError(f"mode must be 'add' or 'max', got {mode!r}")


def _chord(radius_sq: np.ndarray | np.floating | float, dist_sq: np.ndarray) -> np.ndarray:
    """Length of the chord of a circle of squared radius ``radius_sq`` at squared distance ``dist_sq``."""
    chord = np.subtract(radius_sq, dist_sq, dtype=_F32)
    np.maximum(chord, 0.0, out=chord)
    np.sqrt(chord, out=chord)
    chord *= 2.0
    return chord


def rod(
    layer: np.ndarray,
    x0: float,
    y0: float,
    x1: float,
    y1: float,
    r0: float,
    r1: float,
    mu: float,
    *,
    depth: float = 1.0,
    inner: float = 0.0,
    wall: float = 0.0,
    core: float = 0.0,
    thread: tuple[float, float, float, float] | None = None,
    caps: bool | tuple[bool, bool] = True,
    mode: str = "add",
) -> None:
    """A (tapered) cylinder from (x0, y0) to (x1, y1), radius r0 to r1, projected: chord x ``depth`` x ``mu``.

    ``depth`` (>= 1) lengthens every chord for a cylinder tilted out of the image plane. ``inner``
    (pixels) hollows it (a cannulated screw), or ``wall`` (pixels) makes it a tube whose wall follows the
    taper (bone cortex); the hollow then attenuates ``core`` times ``mu`` (marrow, trabecular bone).
    ``thread`` = (start, end, pitch,
    height) in pixels along the axis from (x0, y0): the radius there is modulated by a saw tooth of that
    pitch, ``height`` deep, inward. ``caps`` rounds the ends (a capsule), or (start, end) says it for each
    end; an end without a cap is flat.
    """
    scale = 1.0
    if max(r0, r1) < MIN_RADIUS:
        scale = (max(r0, r1) / MIN_RADIUS) ** 2
        r0 = r1 = MIN_RADIUS
    pad = max(r0, r1) + 1.0
    found = _box(layer, min(x0, x1) - pad, max(x0, x1) + pad, min(y0, y1) - pad, max(y0, y1) + pad)
    if found is None:
        return
    region, ys, xs = found
    vx, vy = x1 - x0, y1 - y0
    length_sq = vx * vx + vy * vy
    dx, dy = xs - _F32(x0), ys - _F32(y0)
    if length_sq < 1e-6:
        t_raw = np.zeros((1, 1), dtype=_F32)
        t = t_raw
    else:
        t_raw = (dx * _F32(vx / length_sq)) + (dy * _F32(vy / length_sq))
        t = np.clip(t_raw, 0.0, 1.0)
    px, py = dx - t * _F32(vx), dy - t * _F32(vy)
    dist_sq = px * px + py * py
    radius = t * _F32(r1 - r0) + _F32(r0) if r1 != r0 else _F32(r0)
    if thread is not None:
        start, end, pitch, height = thread
        along = t_raw * _F32(math.sqrt(length_sq))
        phase = np.mod(along, _F32(max(pitch, 1e-3))) * _F32(1.0 / max(pitch, 1e-3))
        tooth = np.abs(phase - 0.5) * _F32(2.0 * height)  # 0 at mid-pitch (crest) .. height (root)
        inside = (along >= start) & (along <= end)
        radius = radius - np.where(inside, tooth, _F32(0.0))
    values = _chord(radius * radius, dist_sq)
    if wall > 0.0:
        hollow = np.maximum(radius - _F32(wall), _F32(0.0))
        values -= _chord(hollow * hollow, dist_sq) * _F32(1.0 - core)
    elif inner > 0.0:
        values -= _chord(_F32(inner * inner), dist_sq) * _F32(1.0 - core)
    cap_start, cap_end = (caps, caps) if isinstance(caps, bool) else caps
    if length_sq >= 1e-6 and not cap_start:
        values *= t_raw >= 0.0
    if length_sq >= 1e-6 and not cap_end:
        values *= t_raw <= 1.0
    values *= _F32(mu * depth * scale)
    _put(layer, region, values, mode)


def _ellipse_frame(
    layer: np.ndarray, cx: float, cy: float, rx: float, ry: float, angle: float, *, reach: float
) -> tuple[tuple[slice, slice], np.ndarray, np.ndarray] | None:
    """The box ``reach`` pixels round an ellipse's centre and, on it, each pixel's coordinates in the ellipse's
    own frame, scaled so that u^2 + v^2 = 1 on its edge; None if the box is off the layer."""
    found = _box(layer, cx - reach, cx + reach, cy - reach, cy + reach)
    if found is None:
        return None
    region, ys, xs = found
    cos, sin = math.cos(angle), math.sin(angle)
    dx, dy = xs - _F32(cx), ys - _F32(cy)
    u = (dx * _F32(cos / rx)) + (dy * _F32(sin / rx))
    v = (dy * _F32(cos / ry)) - (dx * _F32(sin / ry))
    return region, u, v


def ellipsoid(
    layer: np.ndarray,
    cx: float,
    cy: float,
    rx: float,
    ry: float,
    mu_depth: float,
    *,
    angle: float = 0.0,
    mode: str = "add",
) -> None:
    """An ellipsoid's projection: ``mu_depth`` x 2 sqrt(1 - q), q the normalised squared radius.

    For a sphere of radius r (pixels) pass rx = ry = r and ``mu_depth`` = mu x r. ``angle`` (radians)
    turns the rx axis from the image's x axis toward its y axis.
    """
    rx, ry = max(rx, MIN_RADIUS), max(ry, MIN_RADIUS)
    found = _ellipse_frame(layer, cx, cy, rx, ry, angle, reach=max(rx, ry) + 1.0)
    if found is None:
        return
    region, u, v = found
    values = _chord(_F32(1.0), u * u + v * v)
    values *= _F32(mu_depth)
    _put(layer, region, values, mode)


def plateau(
    layer: np.ndarray,
    cx: float,
    cy: float,
    rx: float,
    ry: float,
    value: float,
    *,
    angle: float = 0.0,
    soft: float = 1.5,
    mode: str = "add",
) -> None:
    """A flat-topped ellipse of ``value`` with a linear edge ``soft`` pixels wide (negative values carve)."""
    found = _ellipse_frame(layer, cx, cy, rx, ry, angle, reach=max(rx, ry) + soft + 1.0)
    if found is None:
        return
    region, u, v = found
    radial = np.sqrt(u * u + v * v)  # 1 on the edge
    values = np.clip((_F32(1.0) - radial) * _F32(min(rx, ry) / max(soft, 1e-3)) + _F32(0.5), 0.0, 1.0)
    values *= _F32(value)
    _put(layer, region, values, mode)


def shell(
    layer: np.ndarray,
    cx: float,
    cy: float,
    r_out: float,
    r_in: float,
    axis: Sequence[float],
    mu: float,
    *,
    coverage: float = 0.0,
    core: float = 0.0,
    mode: str = "add",
) -> None:
    """A spherical shell (radii in pixels) cut by a plane, integrated exactly along the view direction.

    ``axis`` = (a_x, a_y, a_w): the unit vector from the centre toward the pole of the part that is kept,
    in image x, image y and the view direction. The kept part is where (p - centre) . axis >
    -``coverage`` x r_out: 0 is a hemisphere (an acetabular cup), 0.4 a bipolar shell that wraps past
    the equator, 1 or more the whole sphere (a head with its cortex, ``r_in`` < ``r_out``; ``r_in`` = 0
    gives a solid ball). For the whole sphere, ``core`` is the attenuation inside ``r_in`` relative to ``mu``.
    """
    reach = r_out + 1.0
    found = _box(layer, cx - reach, cx + reach, cy - reach, cy + reach)
    if found is None:
        return
    region, ys, xs = found
    dx, dy = xs - _F32(cx), ys - _F32(cy)
    dist_sq = dx * dx + dy * dy
    s_out = _chord(_F32(r_out * r_out), dist_sq) * _F32(0.5)
    s_in = _chord(_F32(r_in * r_in), dist_sq) * _F32(0.5)
    if coverage >= 1.0:
        values = (s_out - s_in * _F32(1.0 - core)) * _F32(2.0)
    else:
        ax, ay, aw = (float(c) for c in axis)
        offset = dx * _F32(ax) + dy * _F32(ay) + _F32(coverage * r_out)  # > -s * aw along the ray
        values = _interval_part(-s_out, -s_in, offset, aw) + _interval_part(s_in, s_out, offset, aw)
    values *= _F32(mu)
    _put(layer, region, values, mode)


def _interval_part(lo: np.ndarray, hi: np.ndarray, offset: np.ndarray, aw: float) -> np.ndarray:
    """Length of [lo, hi] where offset + s x aw > 0."""
    if abs(aw) < 1e-6:
        return np.where(offset > 0, hi - lo, _F32(0.0))
    bound = -offset * _F32(1.0 / aw)
    if aw > 0:
        lo = np.maximum(lo, bound)
    else:
        hi = np.minimum(hi, bound)
    return np.maximum(hi - lo, _F32(0.0))


def band(
    layer: np.ndarray,
    x0: float,
    y0: float,
    x1: float,
    y1: float,
    half_width: float,
    value: float,
    *,
    soft: float = 0.8,
    mode: str = "add",
) -> None:
    """A straight band (a plate seen from any side) from (x0, y0) to (x1, y1), flat ends, of uniform ``value``."""
    half_width = max(half_width, 0.5)
    pad = half_width + soft + 1.0
    found = _box(layer, min(x0, x1) - pad, max(x0, x1) + pad, min(y0, y1) - pad, max(y0, y1) + pad)
    if found is None:
        return
    region, ys, xs = found
    length = math.hypot(x1 - x0, y1 - y0) or 1e-3
    ux, uy = (x1 - x0) / length, (y1 - y0) / length
    dx, dy = xs - _F32(x0), ys - _F32(y0)
    along = dx * _F32(ux) + dy * _F32(uy)
    across = np.abs(dy * _F32(ux) - dx * _F32(uy))
    edge = np.minimum(np.minimum(along, _F32(length) - along), _F32(half_width) - across)
    values = np.clip(edge * _F32(1.0 / soft) + _F32(0.5), 0.0, 1.0)
    values *= _F32(value)
    _put(layer, region, values, mode)


def arc(
    layer: np.ndarray,
    cx: float,
    cy: float,
    radius: float,
    start: float,
    stop: float,
    half_width: float,
    value: float,
    *,
    mode: str = "add",
) -> None:
    """A curved line (a cortical outline) of peak ``value`` along a circle, from angle ``start`` to ``stop``.

    Angles are radians from the image's x axis toward its y axis (down), going the short way up if
    ``stop`` > ``start``; the profile across the line is a triangle ``half_width`` pixels to each side,
    tapering over the last tenth of the arc at each end.
    """
    reach = radius + half_width + 1.0
    found = _box(layer, cx - reach, cx + reach, cy - reach, cy + reach)
    if found is None:
        return
    region, ys, xs = found
    dx, dy = xs - _F32(cx), ys - _F32(cy)
    radial = np.sqrt(dx * dx + dy * dy)
    profile = np.clip(_F32(1.0) - np.abs(radial - _F32(radius)) * _F32(1.0 / max(half_width, 0.5)), 0.0, 1.0)
    span = stop - start
    angle = np.mod(np.arctan2(dy, dx) - _F32(start), _F32(2 * math.pi))
    taper = np.clip(np.minimum(angle, _F32(span) - angle) * _F32(10.0 / max(span, 1e-3)), 0.0, 1.0)
    taper[angle > span] = 0.0
    profile *= taper
    profile *= _F32(value)
    _put(layer, region, profile, mode)


def polygon(layer: np.ndarray, points: Sequence[tuple[float, float]], value: float, *, mode: str = "add") -> None:
    """A filled polygon (even-odd rule) of uniform ``value``; its edges are as sharp as the grid."""
    xs_p = [p[0] for p in points]
    ys_p = [p[1] for p in points]
    found = _box(layer, min(xs_p), max(xs_p), min(ys_p), max(ys_p))
    if found is None:
        return
    region, ys, xs = found
    inside = np.zeros((ys.shape[0], xs.shape[1]), dtype=bool)
    count = len(points)
    for index in range(count):
        (xa, ya), (xb, yb) = points[index], points[(index + 1) % count]
        if ya == yb:
            continue
        crosses = (ys > min(ya, yb)) & (ys <= max(ya, yb))  # (rows, 1)
        x_cross = _F32(xa) + (ys - _F32(ya)) * _F32((xb - xa) / (yb - ya))
        inside ^= crosses & (xs < x_cross)
    _put(layer, region, inside.astype(_F32) * _F32(value), mode)


# 5 x 7 bitmaps of the letters lead markers carry.
_GLYPHS = {
    "R": ("11110", "10001", "10001", "11110", "10100", "10010", "10001"),
    "L": ("10000", "10000", "10000", "10000", "10000", "10000", "11111"),
}


def glyph(
    layer: np.ndarray, letter: str, x: float, y: float, cell: float, value: float, *, mirror: bool = False
) -> None:
    """A marker letter (R or L) with its top-left corner at (x, y), each bitmap cell ``cell`` pixels."""
    if letter not in _GLYPHS:
        raise ValueError(f"no glyph for {letter!r}; known: {sorted(_GLYPHS)}")
    bitmap = np.array([[bit == "1" for bit in row] for row in _GLYPHS[letter]], dtype=np.float32)
    if mirror:
        bitmap = bitmap[:, ::-1]
    found = _box(layer, x, x + 5 * cell - 1, y, y + 7 * cell - 1)
    if found is None:
        return
    region, ys, xs = found
    rows = np.clip(((ys - _F32(y)) / _F32(cell)).astype(np.intp), 0, 6)
    cols = np.clip(((xs - _F32(x)) / _F32(cell)).astype(np.intp), 0, 4)
    _put(layer, region, bitmap[rows, cols] * _F32(value), "max")
