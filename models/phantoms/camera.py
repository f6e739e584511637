"""Orthographic projection of parts (predraft.models.phantoms.parts) onto the layers of one image.

Contract: a ``Camera`` maps patient millimetres to pixels: image x along ``u``, image y along ``v``
(both unit vectors in the patient's frame), the beam along ``w`` = u x v, ``centre`` landing on the
image's centre, ``px_per_mm`` pixels per millimetre. A ``Pose`` turns the femur about the centre of
its head (a frog-leg's abduction and rotation). ``Layers`` holds the four float32 layers an image is
built from: tissue (superposed), bone, cement and metal (each max-composited, so one bone or implant
shows no seams where its parts meet). Drawing is delegated to predraft.models.phantoms.geometry and stays
inside each part's bounding box.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import cached_property

import numpy as np

from predraft.models.phantoms import geometry
from predraft.models.phantoms.parts import BONE, CEMENT, FEMUR, METAL, TISSUE, Part, Ring, Rod, Slab, Sphere, Vec, unit

_LETTERS = (("R", "L"), ("H", "F"), ("P", "A"))  # negative and positive direction of X, Y, Z


@dataclass(frozen=True, eq=False)
class Pose:
    """A rotation of the femur about ``pivot`` (its head centre)."""

    pivot: Vec
    rotation: np.ndarray

    def point(self, p: Vec) -> Vec:
        return self.pivot + self.rotation @ (np.asarray(p) - self.pivot)

    def direction(self, d: Vec) -> Vec:
        return self.rotation @ np.asarray(d)


@dataclass(frozen=True, eq=False)
class Camera:
    u: Vec
    v: Vec
    centre: Vec
    px_per_mm: float
    width: int
    height: int

    @cached_property
    def w(self) -> Vec:
        return np.cross(self.u, self.v)

    def project(self, p: Vec) -> tuple[float, float]:
        d = np.asarray(p, dtype=np.float64) - self.centre
        return (
            float(d @ self.u) * self.px_per_mm + (self.width - 1) / 2.0,
            float(d @ self.v) * self.px_per_mm + (self.height - 1) / 2.0,
        )

    def point(self, a: float, b: float, origin: Vec) -> Vec:
        """The patient point ``a`` mm along u and ``b`` mm along v from ``origin`` (a 2-D shape's vertex)."""
        return np.asarray(origin, dtype=np.float64) + a * self.u + b * self.v

    def scaled(self, factor: int) -> Camera:
        """The same view on a grid ``factor`` times coarser (width and height must divide by it)."""
        if self.width % factor or self.height % factor:
            raise ValueError(f"image {self.width} x {self.height} does not divide by {factor}")
        return replace(
            self, px_per_mm=self.px_per_mm / factor, width=self.width // factor, height=self.height // factor
        )

    def rotated(self, angle: float) -> Camera:
        """The view turned in its own plane by ``angle`` radians."""
        cos, sin = math.cos(angle), math.sin(angle)
        return replace(self, u=cos * self.u + sin * self.v, v=-sin * self.u + cos * self.v)

    def patient_orientation(self) -> list[str]:
        """PatientOrientation (PS3.3 C.7.6.1.1.1): the row and column directions, dominant letter first."""
        return [_letters(self.u), _letters(self.v)]


def _letters(direction: Vec) -> str:
    order = np.argsort(-np.abs(direction))
    letters = [_LETTERS[axis][int(direction[axis] > 0)] for axis in order if abs(direction[axis]) > 0.25]
    return "".join(letters[:2])


class Layers:
    """The tissue, bone, cement and metal layers of one image (float32, same shape)."""

    def __init__(self, height: int, width: int) -> None:
        self.tissue = np.zeros((height, width), dtype=np.float32)
        self.bone = np.zeros((height, width), dtype=np.float32)
        self.cement = np.zeros((height, width), dtype=np.float32)
        self.metal = np.zeros((height, width), dtype=np.float32)

    def get(self, name: str) -> tuple[np.ndarray, str]:
        if name == TISSUE:
            return self.tissue, "add"
        if name == BONE:
            return self.bone, "max"
        if name == CEMENT:
            return self.cement, "max"
        if name == METAL:
            return self.metal, "max"
        raise ValueError(f"unknown layer {name!r}")

    def total(self) -> np.ndarray:
        """Tissue + bone + cement + metal (in the tissue array, which is consumed)."""
        self.tissue += self.bone
        self.tissue += self.cement
        self.tissue += self.metal
        return self.tissue


def draw(camera: Camera, layers: Layers, parts: list[Part] | tuple[Part, ...], pose: Pose | None = None) -> None:
    """Project ``parts`` (femur-attached ones moved by ``pose``) onto ``layers``."""
    for part in parts:
        moved = pose if pose is not None and part.attached == FEMUR else None
        layer, mode = layers.get(part.layer)
        if isinstance(part, Rod):
            _rod(camera, layer, mode, part, moved)
        elif isinstance(part, Sphere):
            _sphere(camera, layer, mode, part, moved)
        elif isinstance(part, Slab):
            _slab(camera, layer, mode, part, moved)
        elif isinstance(part, Ring):
            _ring(camera, layer, mode, part, moved)
        else:
            raise TypeError(f"cannot draw {type(part).__name__}")


def _at(pose: Pose | None, p: Vec) -> Vec:
    return pose.point(p) if pose is not None else np.asarray(p)


def _along(pose: Pose | None, d: Vec) -> Vec:
    return pose.direction(d) if pose is not None else np.asarray(d)


def _rod(camera: Camera, layer: np.ndarray, mode: str, rod: Rod, pose: Pose | None) -> None:
    start, end = _at(pose, rod.start), _at(pose, rod.end)
    delta = end - start
    length = math.sqrt(float(delta @ delta))
    s = camera.px_per_mm
    aw = float(delta @ camera.w) / length if length > 0 else 1.0
    sin = math.sqrt(max(1.0 - aw * aw, 0.0))
    radius = max(rod.r_start, rod.r_end)
    depth = min(1.0 / max(sin, 1e-3), max(1.0, length / (2.0 * radius)))
    thread = None
    if rod.thread is not None:
        t = rod.thread
        foreshortening = s * max(sin, 1e-3)
        thread = (t.start * foreshortening, t.end * foreshortening, t.pitch * foreshortening, t.height * s)
    (x0, y0), (x1, y1) = camera.project(start), camera.project(end)
    geometry.rod(
        layer,
        x0,
        y0,
        x1,
        y1,
        rod.r_start * s,
        rod.r_end * s,
        rod.mu / s,
        depth=depth,
        inner=rod.inner * s,
        wall=rod.wall * s,
        core=rod.core,
        thread=thread,
        caps=rod.caps,
        mode=mode,
    )


def _sphere(camera: Camera, layer: np.ndarray, mode: str, sphere: Sphere, pose: Pose | None) -> None:
    s = camera.px_per_mm
    cx, cy = camera.project(_at(pose, sphere.centre))
    axis = _along(pose, sphere.axis)
    components = (float(axis @ camera.u), float(axis @ camera.v), float(axis @ camera.w))
    geometry.shell(
        layer,
        cx,
        cy,
        sphere.radius * s,
        sphere.r_in * s,
        components,
        sphere.mu / s,
        coverage=sphere.coverage,
        core=sphere.core,
        mode=mode,
    )


def _slab(camera: Camera, layer: np.ndarray, mode: str, slab: Slab, pose: Pose | None) -> None:
    start, end = _at(pose, slab.start), _at(pose, slab.end)
    axis = unit(end - start)
    across = _along(pose, slab.width_dir)
    across = unit(across - (across @ axis) * axis)
    normal = np.cross(axis, across)
    s = camera.px_per_mm
    (x0, y0), (x1, y1) = camera.project(start), camera.project(end)
    length = math.hypot(x1 - x0, y1 - y0) or 1e-3
    perp = np.array([-(y1 - y0) / length, (x1 - x0) / length])  # image-plane normal of the centre line
    across_2d = np.array([across @ camera.u, across @ camera.v])
    normal_2d = np.array([normal @ camera.u, normal @ camera.v])
    half_width = 0.5 * s * (slab.width * abs(across_2d @ perp) + slab.thickness * abs(normal_2d @ perp))
    path = min(
        slab.thickness / max(abs(float(normal @ camera.w)), 1e-3), slab.width / max(abs(float(across @ camera.w)), 1e-3)
    )
    geometry.band(layer, x0, y0, x1, y1, half_width, slab.mu * path, mode=mode)


def _ring(camera: Camera, layer: np.ndarray, mode: str, ring: Ring, pose: Pose | None) -> None:
    centre, normal = _at(pose, ring.centre), unit(_along(pose, ring.normal))
    helper = np.array([1.0, 0.0, 0.0]) if abs(normal[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
    e1 = unit(np.cross(normal, helper))
    e2 = np.cross(normal, e1)
    first, last = ring.arc
    steps = max(4, int(16 * (last - first)))
    angles = 2 * math.pi * np.linspace(first, last, steps + 1)
    points = [centre + ring.radius * (math.cos(a) * e1 + math.sin(a) * e2) for a in angles]
    for a, b in zip(points[:-1], points[1:], strict=True):
        _rod(camera, layer, mode, Rod(a, b, ring.wire, ring.wire, ring.mu, ring.layer), None)
