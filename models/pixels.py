"""From DICOM pixel data to letterboxed uint8 hip images.

Order of operations (see docs: CLINICAL.md): decode -> modality LUT -> VOI LUT, else the first window,
else a robust percentile window -> inversion for MONOCHROME1 (or PresentationLUTShape INVERSE) ->
scale to [0, 1] -> split a bilateral AP pelvis at the midline -> letterbox to the model's input size.
Full bit depth is kept in float32 until the final scaling to uint8.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from pydicom.dataset import Dataset
from pydicom.pixels import apply_modality_lut, apply_voi_lut

from models.taxonomy import Side


class PixelDataError(ValueError):
    """Pixel data that cannot be decoded or is not a single-frame grayscale image."""


def decode(ds: Dataset) -> np.ndarray:
    """The stored pixel values of a single-frame grayscale image, as float32."""
    if "PixelData" not in ds:
        raise PixelDataError("the dataset has no Pixel Data")
    photometric = str(ds.get("PhotometricInterpretation", ""))
    if photometric not in {"MONOCHROME1", "MONOCHROME2"}:
        raise PixelDataError(f"PhotometricInterpretation {photometric!r} is not a grayscale radiograph")
    try:
        pixels = ds.pixel_array
    except Exception as exc:  # decoders raise many types; all mean the same thing here
        syntax = ds.file_meta.get("TransferSyntaxUID", "unknown") if hasattr(ds, "file_meta") else "unknown"
        raise PixelDataError(f"pixel data in transfer syntax {syntax} could not be decoded: {exc}") from exc
    if pixels.ndim == 3 and pixels.shape[0] == 1:
        pixels = pixels[0]
    if pixels.ndim != 2:
        raise PixelDataError(f"expected one grayscale frame, got an array of shape {pixels.shape}")
    return pixels.astype(np.float32)


def to_unit_range(ds: Dataset, stored: np.ndarray) -> np.ndarray:
    """Apply modality LUT, VOI LUT or window and inversion; return float32 in [0, 1], bone bright."""
    values = np.asarray(apply_modality_lut(stored, ds), dtype=np.float32)
    if "VOILUTSequence" in ds:
        values = np.asarray(apply_voi_lut(values, ds, index=0), dtype=np.float32)
        low, high = float(values.min()), float(values.max())
    elif "WindowCenter" in ds and "WindowWidth" in ds:
        center = float(_first(ds.WindowCenter))
        width = max(float(_first(ds.WindowWidth)), 1.0)
        low, high = center - width / 2.0, center + width / 2.0
    else:
        low, high = (float(v) for v in np.percentile(values, [0.5, 99.5]))
    if high <= low:
        high = low + 1.0
    unit = np.clip((values - low) / (high - low), 0.0, 1.0)
    if needs_inversion(ds):
        unit = 1.0 - unit
    return unit.astype(np.float32)


def needs_inversion(ds: Dataset) -> bool:
    """MONOCHROME1 shows low values bright; PresentationLUTShape INVERSE says the same for display.

    For MONOCHROME1 the standard pairs the two (INVERSE describes that very inversion), so either one
    means a single inversion.
    """
    return ds.get("PhotometricInterpretation") == "MONOCHROME1" or ds.get("PresentationLUTShape") == "INVERSE"


def _first(value: object) -> object:
    """The first value of a multi-valued element such as WindowCenter, or the value itself."""
    if isinstance(value, Sequence) and not isinstance(value, str | bytes):
        return value[0]
    return value


def split_bilateral(image: np.ndarray, patient_orientation: list[str] | None) -> dict[Side, np.ndarray]:
    """Split an AP pelvis at the midline of its width into the patient's right and left hips.

    On an AP image the patient's right is on the image's left, unless PatientOrientation's row
    direction says the columns run toward the patient's right (a flipped image).
    """
    half = image.shape[1] // 2
    image_left, image_right = image[:, :half], image[:, image.shape[1] - half :]
    flipped = bool(patient_orientation) and str(patient_orientation[0]).upper().startswith("R")
    if flipped:
        return {Side.LEFT: image_left, Side.RIGHT: image_right}
    return {Side.RIGHT: image_left, Side.LEFT: image_right}


def letterbox(image: np.ndarray, size: int) -> np.ndarray:
    """Resize a [0, 1] float image so its longer edge is ``size``, pad to a square; return uint8."""
    height, width = image.shape
    scale = size / max(height, width)
    new_h, new_w = max(1, round(height * scale)), max(1, round(width * scale))
    tensor = torch.from_numpy(np.ascontiguousarray(image))[None, None]
    resized = torch.nn.functional.interpolate(tensor, size=(new_h, new_w), mode="bilinear", antialias=True,
                                              align_corners=False)[0, 0].numpy()
    canvas = np.zeros((size, size), dtype=np.float32)
    top, left = (size - new_h) // 2, (size - new_w) // 2
    canvas[top : top + new_h, left : left + new_w] = resized
    return np.clip(np.rint(canvas * 255.0), 0, 255).astype(np.uint8)
