"""Framings: how a prepared radiograph becomes the input of a pack's model (``framing`` in ``pack.toml``).

- ``hip_halves`` (the hip's): an AP pelvis is split at its midline into its two hips, any other image is one side,
  the whole image (predraft.models.prepare);
- ``implant_crop``: the square around the densest large structure of the image (an implant, where there is one),
  so that a whole film reads like the implant-centred crops a model is trained on. The same crop is taken in
  training and in service, of films with and without an implant alike, so that the framing itself tells the
  model nothing about the class.

:func:`implant_box` works on the image as the pipeline holds it before letterboxing: 2-D float in [0, 1], bright =
dense, collimation cropped. It shrinks the image so its longer side is ``WORK_SIZE`` px, takes the pixels at or
above ``LEVEL`` of the way from the ``BACKGROUND_PERCENTILE``-th percentile to the ``TOP_PERCENTILE``-th (metal, or
the densest bone of a film without metal), keeps the largest connected region at least ``MIN_AREA_FRACTION`` of
the image whose centre is not within ``EDGE_MARGIN`` of the border (markers), and returns its bounding box
grown by ``MARGIN`` of its larger side on every side and made square (clipped to the image). Without such a
region it returns the whole image.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from PIL import Image
from scipy import ndimage

#: A framing's name, as a pack's ``framing`` says it.
Framing = Literal["hip_halves", "implant_crop"]
HIP_HALVES: Framing = "hip_halves"
IMPLANT_CROP: Framing = "implant_crop"
WORK_SIZE = 256
BACKGROUND_PERCENTILE = 5.0
TOP_PERCENTILE = 99.7
LEVEL = 0.8
MIN_AREA_FRACTION = 0.004
#: Regions whose centre lies this close to the border (a share of each side) are left out: lead R/L markers and
#: burned-in labels sit there, as dense as metal.
EDGE_MARGIN = 0.08
MARGIN = 0.45


def implant_box(image: np.ndarray) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) of the implant crop of ``image``, in its pixels (see the module docstring)."""
    if image.ndim != 2 or min(image.shape) < 8:
        raise ValueError(f"implant_box needs a 2-D image of at least 8 x 8 pixels, got shape {image.shape}")
    height, width = image.shape
    scale = WORK_SIZE / max(height, width)
    small_size = (max(1, round(width * scale)), max(1, round(height * scale)))
    small = np.asarray(Image.fromarray(image.astype(np.float32)).resize(small_size, Image.Resampling.BOX))
    small = ndimage.median_filter(small, size=3)
    low, top = np.percentile(small, [BACKGROUND_PERCENTILE, TOP_PERCENTILE])
    whole = (0, height, 0, width)
    if top - low < 1e-3:
        return whole
    regions, count = ndimage.label(small >= low + LEVEL * (top - low))
    if count == 0:
        return whole
    sizes = np.bincount(regions.ravel())[1:].astype(np.float64)
    centres = ndimage.center_of_mass(np.ones_like(small), regions, range(1, count + 1))
    for index, (cy, cx) in enumerate(centres):
        near_edge = (
            min(cy, small.shape[0] - cy) < EDGE_MARGIN * small.shape[0]
            or min(cx, small.shape[1] - cx) < EDGE_MARGIN * small.shape[1]
        )
        if near_edge:
            sizes[index] = 0
    largest = int(np.argmax(sizes)) + 1
    if sizes[largest - 1] < MIN_AREA_FRACTION * small.size:
        return whole
    rows, cols = np.nonzero(regions == largest)
    y0, y1, x0, x1 = rows.min() / scale, (rows.max() + 1) / scale, cols.min() / scale, (cols.max() + 1) / scale
    side = max(y1 - y0, x1 - x0) * (1 + 2 * MARGIN)
    side = min(side, max(height, width))
    cy, cx = (y0 + y1) / 2, (x0 + x1) / 2
    top_edge = int(np.clip(round(cy - side / 2), 0, max(0, height - side)))
    left_edge = int(np.clip(round(cx - side / 2), 0, max(0, width - side)))
    return top_edge, min(height, top_edge + round(side)), left_edge, min(width, left_edge + round(side))


def implant_crop(image: np.ndarray) -> np.ndarray:
    """The implant crop of ``image`` (:func:`implant_box`)."""
    top, bottom, left, right = implant_box(image)
    return image[top:bottom, left:right]
