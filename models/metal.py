"""An independent, model-free detector of metallic hardware on one hip image.

Contract
--------
``detect_metal(image)`` takes ONE hip as the pipeline holds it before letterboxing: a 2-D float array in
[0, 1] with bright = dense (MONOCHROME1 already inverted), collimation cropped, in the standard
orientation (``predraft.models.pixels``: ``to_unit_range`` -> ``crop_collimation`` -> ``split_bilateral(...)[side]``
for an AP pelvis, ``standard_orientation`` for one hip). It returns a :class:`MetalFinding`: whether
hardware is present near the hip, a score in [0, 1] (0.5 is the decision boundary), the fraction of the
hip field the metal covers and a short sentence saying why. It uses no model and no DICOM tags, so it can
check the classifier: when the classifier says ``none`` and metal is present, the side is indeterminate
in the draft. The reverse (hardware named, no metal found) is weaker evidence: a post-infectious hip may
hold no metal at all (cement spacer, antibiotic beads), and a window that saturates bone around an
implant hides the implant's edge (see Limits).

Method
------
Metal is the densest thing near the hip: it stops the beam, so it sits at or near the top of any window
that shows bone, and its edge is a step down to the bone or soft tissue around it. Cortical bone and
overlapping bones rise and fall gradually, stay within reach of the other bone's density, or both. The
detector looks for that, measuring everything in units of the image's own contrast (background to top),
so contrast and brightness of the window do not matter (an affine change of the display leaves the
finding unchanged):

1. Shrink the image so its longer side is ``WORK_SIZE`` px (area averaging), then a 3 x 3 median:
   structures narrower than about 2 px there (wires, grain, bright specks) go.
2. The *hip field*: the image without an outer margin (``EDGE_MARGIN``, where burned-in and lead R/L
   markers sit), without the two top corners (``SPINE_BOX``: on one half of an AP pelvis the lumbar spine
   and sacrum sit at the top of the medial edge, the iliac wing at the top of the lateral one; which edge
   is medial is not known here, so both go; docs/clinical.md: lumbar and sacroiliac hardware does not count),
   and without *shutter bands*: bright bands along an edge (unexposed detector beside a collimator blade,
   as bright as metal) that ``crop_collimation`` left because they do not span a whole line.
3. The background is the ``BACKGROUND_PERCENTILE``-th percentile of the image, the top the maximum of the
   hip field. At each of ``LEVELS`` (fractions of the way from background to top) the pixels above it
   form connected regions. A region that reaches into the hip field is judged on:

   * ``size``: its part inside the hip field covers at least ``MIN_AREA_FRACTION`` of the field and it is
     at least ``2 * MIN_HALF_WIDTH`` px wide somewhere (marker letters, specks and wires are not);
   * its edge, read on the ring 1.5-2.5 px outside it: the *step* is how far the ring lies below the
     region's edge layer, the *fall beyond* how much further the image drops over the next 4 px (both as
     fractions of the region's height above the background). A step is sharp where it is at least
     ``MIN_STEP`` and at least ``MIN_SHARPNESS`` times the fall beyond (the flank of a hill keeps falling);
   * its *density*: how far its level (median inside) clears the densest rest of the hip field (the
     ``BONE_PERCENTILE``-th percentile without the stepping regions of that level and their edges), as a
     fraction of its height.

   A region is metal by either of two routes. *Whole edge*: the median step around the whole edge is
   sharp (``step``, ``sharpness``) and the region clears the bone by ``MIN_GAP`` (``density``; or its step
   alone reaches ``STRONG_STEP``, for windows that saturate other structures as well). *Part of the edge*:
   at least ``MIN_EDGE_FRACTION`` of the ring pixels are sharp steps one by one (``part``: a stem in its
   cement mantle, merged through the neck with its head, steps sharply only around the head) and the
   region clears the bone by the stricter ``MIN_GAP_PART`` (``part_density``). Each criterion is a ratio
   to its threshold; a route's strength is its weakest ratio r, a region's score r / (1 + r) of its
   stronger route, so 0.5 is the decision boundary.
4. The finding's score is the best region's (regions too small to judge count only when nothing else
   does), ``present`` is score >= 0.5, the area that of the union of metal regions over all levels, as a
   fraction of the hip field, and the reason names the weakest criterion of the best region.

Limits: metal inside bone that the window saturates to the same value has no visible edge and is missed
(phantom laterals render the femoral shaft that dense); hardware only in the excluded top corners or
margins is not seen (by design for lumbar hardware and markers); hardware under the size floor alone
(K-wires, cerclage wire, a small broken screw) and radiopaque material that is not metal (cement spacers,
antibiotic beads) are usually not found; small sharply bounded bone overlaps denser than all other bone
(carpal bones of a hand) can pass.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from scipy import ndimage

#: Longer side of the working image. At 384 px an AP pelvis half (35 cm tall) is about 0.9 mm/px: a
#: cannulated screw (6.5-7.3 mm) is 7 px wide, a marker letter's stroke (2-3 mm) 2-3 px. Shrinking a
#: 2140 x 880 half costs ~2 ms, the analysis at this size ~10-15 ms on one loaded core.
WORK_SIZE = 384
#: Side of the median filter applied to the working image: removes specks and lines under ~2 px wide.
MEDIAN_SIZE = 3
#: Percentile of the working image taken as the background level (air or soft tissue): contrasts are
#: measured from it, so the window's offset does not matter.
BACKGROUND_PERCENTILE = 25.0
#: Thresholds tried, as fractions of the way from the background to the top of the hip field. Metal
#: sits at the top; 0.8 still finds metal when something denser (a larger implant, an annotation in the
#: field) sets the top, and higher levels split metal from bone that touches it.
LEVELS = (0.95, 0.9, 0.85, 0.8)
#: Outer margin (fraction of each side) outside the hip field: R/L markers and burned-in text live there.
EDGE_MARGIN = 0.08
#: The two top corners outside the hip field, as (fraction of the height, fraction of the width): the
#: lumbar spine and sacrum (top medial) and iliac wing (top lateral) of an AP pelvis half. The femoral
#: head sits at about 40-60 % of the height, so hip hardware is below this box or in the middle columns.
SPINE_BOX = (0.40, 0.25)
#: A band along an edge is a shutter where pixels at or above the lowest level run in from the edge over
#: this fraction of the edge's length (a running median of the run lengths, so a stem or plate reaching
#: the edge, a few percent of its length wide, is not taken for one).
SHUTTER_RUN_WINDOW = 0.3
#: Pixels added inward to a shutter band (its blurred edge).
SHUTTER_PAD = 2
#: A run deeper than this fraction of the image's extent across the edge is not a shutter (a band that
#: deep is bright anatomy in a window that saturates it, or a frame filled with dense structures).
SHUTTER_MAX_DEPTH = 0.4
#: Smallest part of a metal region inside the hip field, as a fraction of the field's area. A single
#: cannulated screw covers about 0.5-1 % of a pelvis half; specks and small marker letters cover less.
MIN_AREA_FRACTION = 0.002
#: Smallest half-width (largest distance from the region's inside to its edge, working pixels): 2 px
#: means at least ~4 px (~3.5 mm) wide somewhere. Letters' strokes and wires are thinner.
MIN_HALF_WIDTH = 2.0
#: A region's level is the median of its pixels at least this far (working px) inside its edge.
INTERIOR_DEPTH = 1.5
#: The layer just inside the edge (distance to the outside, working px; the outermost pixel is blurred) ...
EDGE_LAYER = (1.0, 2.0)
#: ... the ring just outside it (distance to the region) ...
NEAR_RING = (1.5, 2.5)
#: ... and a ring further out. The step is read from the first to the second, the fall beyond it from
#: the second to the third.
FAR_RING = (5.5, 6.5)
#: Pixel by pixel, a ring pixel takes the edge layer's brightest value within ``EDGE_REACH`` px and the
#: far ring's mean within ``FAR_REACH`` px (square neighbourhoods).
EDGE_REACH = 3
FAR_REACH = 4
#: The part-of-the-edge route: at least this share of the ring must be sharp steps pixel by pixel (the
#: head of a stem merged with its cemented stem and a cortex makes up about a third of the ring) ...
MIN_EDGE_FRACTION = 0.35
#: ... and the region must clear the bone by this fraction of its height, stricter than ``MIN_GAP``:
#: a bone shaft or carpal bone whose two long sides are sharp passes the share, not this (RG2's femoral
#: shaft clears the rest of its half by 0.13).
MIN_GAP_PART = 0.2
#: Smallest step across the edge, as a fraction of the region's height above the background (the median
#: around the whole edge for that route, each ring pixel's own for the other). Metal steps down to bone or
#: soft tissue by 25-90 % of its height in the windows tried (real images with pasted metal, phantoms); a
#: level cut through the flank of dense bone leaves a few percent, a sharp phantom bone edge up to ~25 %.
MIN_STEP = 0.25
#: Smallest ratio of that step to the further fall over the next 4 px. The flank of a smooth bright hill
#: (cortical or overlapping bone, a gaussian blob) keeps falling at least as much; a step stops.
MIN_SHARPNESS = 1.0
#: Floor of that further fall, as a fraction of the region's height, so a flat surround gives a large
#: but finite ratio.
SHARPNESS_FLOOR = 0.02
#: Denser than the bone: the region's level must exceed the densest rest of the hip field (its
#: ``BONE_PERCENTILE``-th percentile, without every region of the same level that steps at least
#: ``GAP_EXCLUDED_STEP`` and without ``GAP_EXCLUSION_RADIUS`` px around them) by this fraction of the
#: region's height. Metal clears the bone by 15-60 %; bone that ends in a sharp step (the overlap of the
#: femoral head and acetabulum on a phantom, a cortex seen end-on) sits within ~15 % of the next bone.
MIN_GAP = 0.1
BONE_PERCENTILE = 99.5
GAP_EXCLUDED_STEP = 0.15
GAP_EXCLUSION_RADIUS = 4
#: ... unless its median step alone is this large: a region that drops by half its height all around is
#: metal even when the window saturates other structures too (then nothing is "denser" than the
#: saturated rest; only the step tells).
STRONG_STEP = 0.5


@dataclass(frozen=True)
class MetalFinding:
    """Whether metallic hardware lies near the hip, and why.

    ``score`` is in [0, 1], 0.5 the decision boundary (``present`` is ``score >= 0.5``);
    ``area_fraction`` is the share of the hip field the metal covers (0 when absent); ``reason`` is a
    short sentence for the event log and the draft's audit trail.
    """

    present: bool
    score: float
    area_fraction: float
    reason: str


@dataclass(frozen=True)
class _Region:
    """One candidate region at one level, with its criteria as ratios to their thresholds."""

    score: float
    weakest: str
    ratios: dict[str, float]
    mask: np.ndarray | None  # the region's pixels when it is metal
    judged: bool  # all criteria computed (False: too small to be worth it, judged on its size alone)


def detect_metal(image: np.ndarray) -> MetalFinding:
    """Is there metal near the hip on this one-hip image? (See the module docstring for the method.)"""
    work = _working_image(image)
    background = _percentile(work, BACKGROUND_PERCENTILE)
    brightest = float(work.max())
    if brightest - background <= 1e-6:
        return MetalFinding(False, 0.0, 0.0, "no region denser than the background (the image is flat)")
    field = _hip_field(work.shape)
    shutter = _shutter(work >= background + LEVELS[-1] * (brightest - background))
    field &= ~shutter
    if not field.any():
        return MetalFinding(False, 0.0, 0.0, "no hip field left after the margins and shutter bands")
    top = float(work[field].max())
    if top - background <= 1e-6:
        return MetalFinding(False, 0.0, 0.0, "no region denser than the background in the hip field")
    # bands at the lowest level of the hip field's own top as well (the first pass used the whole image's)
    shutter |= _shutter(work >= background + LEVELS[-1] * (top - background))
    field &= ~shutter
    field_pixels = max(1, int(field.sum()))
    metal = np.zeros(work.shape, dtype=bool)
    best: _Region | None = None
    for level in LEVELS:
        mask = (work >= background + level * (top - background)) & ~shutter
        for region in _regions(work, mask, field, field_pixels, background):
            if best is None or (region.judged, region.score) > (best.judged, best.score):
                best = region  # a fully judged region speaks for the image before a speck does
            if region.mask is not None:
                metal |= region.mask
    if best is None:
        return MetalFinding(False, 0.0, 0.0, "no region near the hip stands out from the bone")
    if best.score < 0.5:
        return MetalFinding(False, round(best.score, 3), 0.0, _REASONS[best.weakest])
    area = float((metal & field).sum()) / field_pixels
    return MetalFinding(
        True,
        round(best.score, 3),
        round(area, 4),
        f"dense sharply bounded region of {100 * area:.1f} % of the hip field",
    )


_REASONS = {
    "size": "the densest regions near the hip are too small or thin for hardware (specks, markers)",
    "step": "no region near the hip stands out from its surroundings by a step",
    "sharpness": "the densest regions near the hip rise gradually, as bone does, not in a step",
    "part": "too little of the densest regions' edges is a sharp step",
    "density": "the sharply bounded regions near the hip are no denser than the rest of the bone",
    "part_density": "the sharply bounded regions near the hip are no denser than the rest of the bone",
}
#: The two routes to metal (see the module docstring) and the criteria each needs.
_ROUTES = (("size", "step", "sharpness", "density"), ("size", "part", "part_density"))


def _working_image(image: np.ndarray) -> np.ndarray:
    """The image at ``WORK_SIZE`` px on its longer side, median-filtered, float32; checks the input.

    Shrinking is area averaging: first by the largest whole factor (OpenCV's fast path for it, on the
    array as it is, a view of a bilateral split included), then the small rest.
    """
    if not isinstance(image, np.ndarray):
        raise TypeError(f"image must be a numpy array, got {type(image).__name__}")
    if image.ndim != 2 or min(image.shape) < 2:
        raise ValueError(f"image must be a 2-D array of at least 2 x 2 pixels, got shape {image.shape}")
    if not (np.issubdtype(image.dtype, np.floating) or np.issubdtype(image.dtype, np.integer)):
        raise TypeError(f"image must hold real numbers, got dtype {image.dtype}")
    work: np.ndarray = np.asarray(image, dtype=np.float32)  # cv2.resize below types its result loosely
    if work.strides[1] != work.itemsize or work.strides[0] < 0:  # OpenCV takes rows of contiguous pixels
        work = np.ascontiguousarray(work)
    height, width = work.shape
    factor = max(height, width) // WORK_SIZE
    if factor >= 2:
        height, width = height // factor, width // factor
        work = cv2.resize(work[: height * factor, : width * factor], (width, height), interpolation=cv2.INTER_AREA)
    scale = WORK_SIZE / max(height, width)
    size = (max(2, round(width * scale)), max(2, round(height * scale)))
    work = cv2.resize(work, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    low, high = float(work.min()), float(work.max())
    if not (np.isfinite(low) and np.isfinite(high)):
        raise ValueError("image holds NaN or infinite values")
    if low < -1e-3 or high > 1 + 1e-3:
        raise ValueError(f"image values must lie in [0, 1] (display units), got {low:.4g} .. {high:.4g}")
    return cv2.medianBlur(work, MEDIAN_SIZE)


def _hip_field(shape: tuple[int, ...]) -> np.ndarray:
    """True where a region counts: inside the margins and outside the two top corners."""
    height, width = shape
    field = np.zeros((height, width), dtype=bool)
    margin_y, margin_x = round(EDGE_MARGIN * height), round(EDGE_MARGIN * width)
    field[margin_y : height - margin_y, margin_x : width - margin_x] = True
    box_y, box_x = round(SPINE_BOX[0] * height), round(SPINE_BOX[1] * width)
    field[:box_y, :box_x] = False
    field[:box_y, width - box_x :] = False
    return field


def _shutter(bright: np.ndarray) -> np.ndarray:
    """Bands of ``bright`` pixels running in from an edge along a good part of that edge."""
    band = np.zeros_like(bright)
    for along_rows in (True, False):  # runs from the left and right edges, then from the top and bottom
        view, target = (bright, band) if along_rows else (bright.T, band.T)
        length, extent = view.shape
        window = max(3, int(SHUTTER_RUN_WINDOW * length) | 1)
        positions = np.arange(extent)[None, :]
        for from_end in (False, True):
            dark = ~(view[:, ::-1] if from_end else view)
            runs = np.where(dark.any(axis=1), dark.argmax(axis=1), extent)
            runs[runs > SHUTTER_MAX_DEPTH * extent] = 0
            depth = ndimage.median_filter(runs, size=window, mode="nearest")
            if not depth.any():
                continue
            inside = positions < np.where(depth > 0, depth + SHUTTER_PAD, 0)[:, None]
            target |= inside[:, ::-1] if from_end else inside
    return band


def _percentile(values: np.ndarray, q: float) -> float:
    """The q-th percentile (nearest rank below) by partial sort: several times faster than np.percentile."""
    flat = values.ravel()
    if flat.size == 0:
        raise ValueError("percentile of an empty array")
    rank = int(q / 100.0 * (flat.size - 1))
    return float(np.partition(flat, rank)[rank])


def _edge_steps(
    values: np.ndarray,
    inside: np.ndarray,
    free: np.ndarray,
    depth: np.ndarray,
    outside: np.ndarray,
    height_above: float,
) -> tuple[np.ndarray, np.ndarray] | None:
    """Per pixel of the ring just outside a region: the step down from the region, and whether it is sharp.

    The step at a ring pixel is the brightest value of the region's inner layers within
    ``EDGE_REACH`` px, minus the pixel's own value; the fall beyond it is the pixel's value minus the mean
    of the far ring within ``FAR_REACH`` px. Both are fractions of the region's height above the
    background. A pixel is a sharp step where the step is at least ``MIN_STEP`` and at least
    ``MIN_SHARPNESS`` times the fall beyond (floored at ``SHARPNESS_FLOOR``). None: no ring (the region
    fills its surroundings).
    """
    ring = free & (outside > NEAR_RING[0]) & (outside <= NEAR_RING[1])
    if not ring.any():
        return None
    inner = np.where(inside & (depth > EDGE_LAYER[0]), values, np.float32(0))
    reach = 2 * EDGE_REACH + 1
    edge_level = cv2.dilate(inner, np.ones((reach, reach), np.uint8))
    far = (free & (outside > FAR_RING[0]) & (outside <= FAR_RING[1])).astype(np.float32)
    window = (2 * FAR_REACH + 1, 2 * FAR_REACH + 1)
    far_sum = cv2.boxFilter(values * far, -1, window, normalize=False, borderType=cv2.BORDER_CONSTANT)
    far_count = cv2.boxFilter(far, -1, window, normalize=False, borderType=cv2.BORDER_CONSTANT)
    here = values[ring]
    count = far_count[ring]
    far_level = np.where(count > 0, far_sum[ring] / np.maximum(count, 1.0), here)
    step = (edge_level[ring] - here) / np.float32(height_above)
    further = np.maximum((here - far_level) / np.float32(height_above), np.float32(SHARPNESS_FLOOR))
    sharp = (step >= MIN_STEP) & (step >= MIN_SHARPNESS * further)
    return step, sharp


def _regions(
    work: np.ndarray, mask: np.ndarray, field: np.ndarray, field_pixels: int, background: float
) -> list[_Region]:
    """The connected regions of ``mask`` that reach into the hip field, each judged as metal or not."""
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    if count <= 1:
        return []
    in_field = np.bincount(labels[field], minlength=count)
    height, width = work.shape
    pad = int(np.ceil(FAR_RING[1])) + 1
    judged: list[tuple[dict[str, float], float, bool, np.ndarray, tuple[slice, slice]]] = []
    regions: list[_Region] = []
    for k in np.flatnonzero(in_field[1:]) + 1:
        area_ratio = float(in_field[k]) / (MIN_AREA_FRACTION * field_pixels)
        if area_ratio < 0.5:  # far too small: judged on its size alone (nothing else can rescue it)
            regions.append(_Region(area_ratio / (1.0 + area_ratio), "size", {"size": area_ratio}, None, False))
            continue
        x, y, w, h = (int(v) for v in stats[k, :4])
        box = (slice(max(0, y - pad), min(height, y + h + pad)), slice(max(0, x - pad), min(width, x + w + pad)))
        box_labels, values = labels[box], work[box]
        own = (box_labels == k).astype(np.uint8)
        depth = cv2.distanceTransform(own, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
        outside = cv2.distanceTransform(1 - own, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
        inside, free = own.astype(bool), box_labels == 0
        interior = depth >= INTERIOR_DEPTH
        level = float(np.median(values[interior] if interior.any() else values[inside]))
        height_above = max(level - background, 1e-6)
        ratios = {"size": min(area_ratio, float(depth.max()) / MIN_HALF_WIDTH)}
        edge = values[(depth > EDGE_LAYER[0]) & (depth <= EDGE_LAYER[1])]
        near = values[free & (outside > NEAR_RING[0]) & (outside <= NEAR_RING[1])]
        beyond = values[free & (outside > FAR_RING[0]) & (outside <= FAR_RING[1])]
        steps = _edge_steps(values, inside, free, depth, outside, height_above)
        if steps is None or near.size == 0:  # nothing around it (it fills the image): no edge to judge
            step = 0.0
            ratios.update(step=0.0, sharpness=0.0, part=0.0)
        else:
            edge_level = float(np.median(edge)) if edge.size else level
            near_level = float(np.median(near))
            step = (edge_level - near_level) / height_above
            further = (near_level - float(np.median(beyond))) / height_above if beyond.size else 0.0
            ratios["step"] = step / MIN_STEP
            ratios["sharpness"] = max(step, 0.0) / max(further, SHARPNESS_FLOOR) / MIN_SHARPNESS
            ratios["part"] = float(steps[1].mean()) / MIN_EDGE_FRACTION
        # regions that step around their edge are left out of the bone's level
        stepping = step >= GAP_EXCLUDED_STEP
        judged.append((ratios, level, stepping, inside, box))
    if not judged:
        return regions
    # the densest rest of the field: without the regions that step (and their edges), the bone's top
    excluded = np.zeros(work.shape, dtype=np.uint8)
    for _, _, stepping, inside, box in judged:
        if stepping:
            excluded[box] |= inside.astype(np.uint8)
    size = 2 * GAP_EXCLUSION_RADIUS + 1
    near_stepping = cv2.dilate(excluded, np.ones((size, size), np.uint8)).astype(bool)
    rest = work[field & ~near_stepping]
    bone = _percentile(rest, BONE_PERCENTILE) if rest.size else background
    for ratios, level, _, inside, box in judged:
        gap = (level - bone) / max(level - background, 1e-6)
        ratios["density"] = max(gap / MIN_GAP, ratios["step"] * MIN_STEP / STRONG_STEP)
        ratios["part_density"] = gap / MIN_GAP_PART
        route = max(_ROUTES, key=lambda names: min(ratios[name] for name in names))
        weakest = min(route, key=lambda name: ratios[name])
        ratio = max(0.0, ratios[weakest])
        score = ratio / (1.0 + ratio)
        region_mask = None
        if score >= 0.5:
            region_mask = np.zeros(work.shape, dtype=bool)
            region_mask[box] = inside
        regions.append(_Region(score, weakest, ratios, region_mask, True))
    return regions


__all__ = ["MetalFinding", "detect_metal"]
