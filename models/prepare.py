"""Preparing one image: from a DICOM file to letterboxed hip images and their labels.

Pure: no database, no settings. The workers run it in a sandbox (:mod:`predraft.workers.prepare`); training data
sets (:mod:`predraft.models.datasets`) and the worklist's thumbnails call it directly."""

from __future__ import annotations

import base64
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import NamedTuple, SupportsIndex, SupportsInt

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError

from predraft.models.framing import implant_box
from predraft.models.metal import MetalFinding
from predraft.models.pixels import (
    PixelDataError,
    collimation_box,
    decode,
    letterbox,
    resize_square,
    split_bilateral,
    standard_orientation,
    to_unit_range,
)
from predraft.models.scope import decide_scope
from predraft.models.taxonomy import CLASSIFIABLE_SOP_CLASSES, Side, View
from predraft.models.views import TagRegion, ViewResult, classify_view


class OutOfScopeError(Exception):
    """The instance is not a hip or pelvis radiograph predraft classifies."""


#: A rectangle of the stored image's pixel grid: (top, bottom, left, right), rows and columns, ends exclusive.
Region = tuple[int, int, int, int]


@dataclass(frozen=True)
class HipImage:
    """One hip ready for the classifier; ``metal`` is the hardware check's finding on it (made by
    predraft.workers.gate); ``region`` the rectangle of the stored image (its first frame, as decoded, before
    any crop or turn) that ``pixels`` shows, when it is known (the AI results SR draws it)."""

    side: Side
    view: View
    pixels: np.ndarray  # uint8 (S, S)
    metal: MetalFinding | None = None
    region: Region | None = None

    def resized(self, size: int) -> HipImage:
        """This image at ``size`` x ``size`` (itself when it is that size already): for a pack whose model reads a
        smaller input than the largest installed one, which the image was prepared at."""
        return self if self.pixels.shape[0] == size else replace(self, pixels=resize_square(self.pixels, size))

    def to_message(self) -> dict[str, object]:
        message: dict[str, object] = {
            "side": self.side.value,
            "view": self.view.value,
            "size": int(self.pixels.shape[0]),
            "pixels": base64.b64encode(self.pixels.tobytes()).decode("ascii"),
        }
        if self.metal is not None:
            message["metal"] = asdict(self.metal)
        if self.region is not None:
            message["region"] = list(self.region)
        return message

    @classmethod
    def from_message(cls, message: dict[str, object]) -> HipImage:
        raw_size = message["size"]
        if not isinstance(raw_size, SupportsInt | SupportsIndex | str | bytes | bytearray):
            raise TypeError(f"hip image message size must be a number, not {type(raw_size).__name__}")
        size = int(raw_size)
        pixels = np.frombuffer(base64.b64decode(str(message["pixels"])), dtype=np.uint8)
        if pixels.size != size * size:
            raise ValueError(f"hip image message holds {pixels.size} bytes, expected {size * size}")
        metal_fields = message.get("metal")
        if not metal_fields:
            metal = None
        elif isinstance(metal_fields, Mapping):
            metal = MetalFinding(**metal_fields)
        else:
            raise TypeError(f"hip image message metal must be a mapping, not {type(metal_fields).__name__}")
        return cls(
            Side(str(message["side"])),
            View(str(message["view"])),
            pixels.reshape(size, size),
            metal,
            _region(message.get("region")),
        )


def _region(value: object) -> Region | None:
    """A message's region: None, or four non-negative integers (top, bottom, left, right) with top < bottom and
    left < right; TypeError or ValueError otherwise."""
    if value is None:
        return None
    if not isinstance(value, list | tuple) or len(value) != 4 or not all(isinstance(v, int) for v in value):
        raise TypeError(f"hip image message region must be four integers, not {value!r}"[:200])
    top, bottom, left, right = value
    if not (0 <= top < bottom and 0 <= left < right):
        raise ValueError(f"hip image message region {list(value)} is not a rectangle")
    return top, bottom, left, right


class SourceGrid(NamedTuple):
    """The stored image's row and column indices, cropped, turned and split as the image is: where each pixel
    of a prepared view came from. Both are broadcast views (no memory per pixel), so every crop and turn of
    them is a view too."""

    rows: np.ndarray
    columns: np.ndarray

    @classmethod
    def of(cls, shape: tuple[int, ...]) -> SourceGrid:
        height, width = shape[:2]
        return cls(
            np.broadcast_to(np.arange(height)[:, None], (height, width)),
            np.broadcast_to(np.arange(width)[None, :], (height, width)),
        )

    def crop(self, top: int, bottom: int, left: int, right: int) -> SourceGrid:
        return SourceGrid(self.rows[top:bottom, left:right], self.columns[top:bottom, left:right])

    def oriented(self, patient_orientation: object) -> SourceGrid:
        return SourceGrid(
            standard_orientation(self.rows, patient_orientation),
            standard_orientation(self.columns, patient_orientation),
        )

    def halves(self) -> dict[Side, SourceGrid]:
        rows, columns = split_bilateral(self.rows, None), split_bilateral(self.columns, None)
        return {side: SourceGrid(rows[side], columns[side]) for side in (Side.RIGHT, Side.LEFT)}

    def region(self) -> Region:
        """The rectangle of the stored image this grid covers (its corners' rows and columns)."""
        corners_rows = self.rows[[0, 0, -1, -1], [0, -1, 0, -1]]
        corners_columns = self.columns[[0, 0, -1, -1], [0, -1, 0, -1]]
        return (
            int(corners_rows.min()),
            int(corners_rows.max()) + 1,
            int(corners_columns.min()),
            int(corners_columns.max()) + 1,
        )


class PreparedInstance(NamedTuple):
    """What prepare_file makes of one image: its tag labels, its hips, the whole image for the gate, and the
    image's two halves as the hips of an AP pelvis, for the gate to choose when the tags name no view."""

    labels: ViewResult
    hips: list[HipImage]
    gate_pixels: np.ndarray | None  # uint8 (G, G), the whole image letterboxed; None when no gate size was asked
    halves: tuple[HipImage, ...] = ()  # (right, left) as an AP pelvis, or none
    #: The implant crop (predraft.models.framing) of the whole image as one side, when it was asked for.
    crop: HipImage | None = None

    @property
    def one_whole_hip(self) -> bool:
        """Whether the tags gave one hip that is the whole image (any view but an AP pelvis), so that the gate's
        own image shows the same film as that hip."""
        return len(self.hips) == 1 and self.labels.view is not View.AP_PELVIS


def prepare_file(
    path: Path,
    *,
    input_size: int,
    gate_size: int | None = None,
    voi_window_index: int = 0,
    with_halves: bool = False,
    with_implant_crop: bool = False,
) -> PreparedInstance:
    """Read, check the SOP class and the tags' region, decode, window, crop, orient, split and letterbox.
    (The hips' hardware check is the gate's, made by the caller: predraft.workers.gate.)

    The tags decide the hips: an AP pelvis gives both halves, any other image one hip, the whole image, with
    the tags' view and side (``unknown`` where they say none: an untagged image is one hip of unknown view
    and side). With ``with_halves``, when the tags name neither view nor side, ``halves`` also holds the image
    split at its midline as an AP pelvis would be (the patient's right on the image's left, as AP films are
    shown): the gate's field head decides which of the two readings the service uses (:mod:`predraft.workers.gate`),
    and the web app finds there the hips of an image the gate split. Whether the
    image is in scope is decided afterwards, with the body-part gate's reading of ``gate_pixels``
    (:mod:`predraft.models.scope`); only tags naming a region outside the gate's skeleton (chest, spine...) put it
    out of scope here, before anything is decoded.

    With ``with_implant_crop`` (a pack framed ``implant_crop`` is installed), ``crop`` holds the implant crop of
    the whole image as one side, with the tags' first side and view.

    ``voi_window_index`` picks the image's VOI LUT or window (settings.model.voi_window_index; 0 is the first).
    Collimation borders are cropped before an AP pelvis is split at its midline, so the split follows the
    exposed field. Raises OutOfScopeError, PixelDataError or InvalidDicomError with a message fit for
    the event log.
    """
    try:
        ds = pydicom.dcmread(path)
    except (InvalidDicomError, EOFError, ValueError) as exc:
        raise InvalidDicomError(f"not a readable DICOM file: {exc}") from exc
    if str(ds.get("SOPClassUID", "")) not in CLASSIFIABLE_SOP_CLASSES:  # CR, DX and Secondary Capture
        raise OutOfScopeError(f"SOP class {ds.get('SOPClassUID', '')} is not an image predraft classifies")
    labels = classify_view(ds)
    if labels.tag_region is TagRegion.OUTSIDE:
        raise OutOfScopeError(decide_scope(labels, None).reason)
    image = to_unit_range(ds, decode(ds), window_index=voi_window_index, overwrite_input=True)
    grid = SourceGrid.of(image.shape)
    collimated = collimation_box(image)
    image, grid = image[collimated[0] : collimated[1], collimated[2] : collimated[3]], grid.crop(*collimated)
    orientation = ds.get("PatientOrientation")
    image = standard_orientation(image, orientation)  # the patient's right on the image's left
    grid = grid.oriented(orientation)
    if labels.view is View.AP_PELVIS:
        pelvis_halves, grid_halves = split_bilateral(image, None), grid.halves()  # oriented already
        hips = [_hip(side, labels.view, pelvis_halves[side], grid_halves[side], input_size) for side in labels.sides]
    else:
        hips = [_hip(labels.sides[0], labels.view, image, grid, input_size)]
    halves: tuple[HipImage, ...] = ()
    if with_halves and labels.view is View.UNKNOWN and labels.sides == (Side.UNKNOWN,):
        split, grid_split = split_bilateral(image, None), grid.halves()  # oriented already
        halves = tuple(
            _hip(side, View.AP_PELVIS, split[side], grid_split[side], input_size) for side in (Side.RIGHT, Side.LEFT)
        )
    gate_pixels = letterbox(image, gate_size) if gate_size else None
    crop = None
    if with_implant_crop:
        box = implant_box(image)
        crop = _hip(labels.sides[0], labels.view, image[box[0] : box[1], box[2] : box[3]], grid.crop(*box), input_size)
    return PreparedInstance(labels, hips, gate_pixels, halves, crop)


def _hip(side: Side, view: View, image: np.ndarray, grid: SourceGrid, input_size: int) -> HipImage:
    return HipImage(side, view, letterbox(image, input_size), region=grid.region())


__all__ = ["HipImage", "OutOfScopeError", "PixelDataError", "PreparedInstance", "prepare_file"]
