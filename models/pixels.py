"""From DICOM pixel data to letterboxed uint8 hip images.

Order of operations (docs/clinical.md, "Views and sides"):

1. ``decode``: stored values of one grayscale frame, as float32 (full bit depth); of a colour frame (an RGB
   or YBR Secondary Capture), its luminance. Every transfer syntax
   of the real test set decodes: RLE (pylibjpeg-rle), JPEG lossless (GDCM), JPEG-LS (pyjpegls, else
   GDCM), JPEG 2000 (GDCM, else pylibjpeg-openjpeg), 12-bit JPEG Extended (imagecodecs; see
   predraft.models.decoders, which also refuses non-conformant JPEG Extended streams with their reason).
2. ``to_unit_range``: modality LUT or rescale -> VOI LUT, else the chosen window (VOILUTFunction LINEAR,
   LINEAR_EXACT or SIGMOID, PS3.3 C.11.2.1.2-3), else the full range of an image of 8-bit display values (a
   JPEG or PNG export wrapped in DICOM, in 8 bits or deeper, read as the models' JPEG training images were),
   else a robust percentile window -> [0, 1] -> inversion for MONOCHROME1 or PresentationLUTShape INVERSE. float32
   throughout.
3. ``crop_collimation``: uniform borders off (rule in ``collimation_box``).
4. ``split_bilateral`` (AP pelvis) or ``standard_orientation`` (one hip): rows toward the patient's left,
   columns toward the feet, as PatientOrientation allows.
5. ``letterbox``: aspect kept, padded to a square of the model's input size; the only quantisation to
   uint8 happens here.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.encaps import get_frame
from pydicom.pixels import apply_modality_lut, apply_voi
from pydicom.uid import UID, JPEGExtended12Bit

from predraft.models import decoders
from predraft.models.taxonomy import Side

decoders.register()

log = logging.getLogger(__name__)

#: A line (row or column) at the image's edge is a collimation/shutter border when all its values lie
#: within this span (display units, [0, 1]) ...
UNIFORM_SPAN = 0.08
#: ... and the middle of its range is this close to that of the outermost border line of that edge.
BORDER_VALUE_TOLERANCE = 0.1
#: No edge loses more than this fraction of the image's extent.
MAX_CROP_FRACTION = 0.4


class PixelDataError(ValueError):
    """Pixel data that cannot be decoded or is not a single-frame grayscale image."""


#: Grayscale photometric interpretations: the stored values go through the modality and VOI transforms.
GRAYSCALE = frozenset({"MONOCHROME1", "MONOCHROME2"})
#: Colour ones (a radiograph exported as a Secondary Capture is often RGB): pydicom gives RGB, of which the
#: luminance is taken (ITU-R BT.601 weights); the values are display values already (PS3.3 C.7.6.3.1.2).
COLOUR = frozenset({"RGB", "YBR_FULL", "YBR_FULL_422", "YBR_RCT", "YBR_ICT", "YBR_PARTIAL_420"})
_LUMINANCE_WEIGHTS = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def is_colour(ds: Dataset) -> bool:
    """Whether ``ds`` holds a colour image (its pixels are display values: no modality or VOI transform)."""
    return str(ds.get("PhotometricInterpretation", "")) in COLOUR


def decode(ds: Dataset) -> np.ndarray:
    """The stored pixel values of a single-frame image as float32 (exact up to 24 bits): grayscale as they are,
    colour as the luminance of its RGB values. Raises PixelDataError for anything else."""
    if "PixelData" not in ds:
        raise PixelDataError("the dataset has no Pixel Data")
    photometric = str(ds.get("PhotometricInterpretation", ""))
    if photometric not in GRAYSCALE | COLOUR:
        raise PixelDataError(
            f"PhotometricInterpretation {photometric!r} is neither a grayscale nor an RGB/YBR colour image"
        )
    try:
        value = ds.get("NumberOfFrames")
        frames = 1 if value is None or str(value).strip() == "" else int(value)
    except Exception:  # a malformed Integer String: pydicom may raise anything converting it
        raise PixelDataError("NumberOfFrames is not a number") from None
    if frames < 1:
        raise PixelDataError(f"NumberOfFrames is {frames}: no frame to read")
    if frames > 1:
        raise PixelDataError(f"the image holds {frames} frames; predraft reads single-frame images")
    syntax = UID(str(ds.file_meta.get("TransferSyntaxUID", ""))) if hasattr(ds, "file_meta") else UID("")
    try:
        if syntax == JPEGExtended12Bit:
            # Checked here so a non-conformant stream fails with its reason, whichever plugin would run.
            decoders.check_sequential_dct(get_frame(ds.PixelData, 0, number_of_frames=1))
        pixels = _pixel_array(ds)
    except Exception as exc:  # decoders raise many types; all mean the same thing here
        name = f" ({syntax.name})" if syntax and syntax.name != syntax else ""
        raise PixelDataError(
            f"pixel data in transfer syntax {syntax or 'unknown'}{name} could not be decoded: {exc}"
        ) from exc
    if photometric in COLOUR:
        if pixels.ndim != 3 or pixels.shape[-1] != 3:
            raise PixelDataError(f"expected one RGB frame, got an array of shape {pixels.shape}")
        return np.dot(pixels.astype(np.float32), _LUMINANCE_WEIGHTS)  # pydicom converted YBR to RGB
    if pixels.ndim == 3 and pixels.shape[0] == 1:
        pixels = pixels[0]
    if pixels.ndim != 2:
        raise PixelDataError(f"expected one grayscale frame, got an array of shape {pixels.shape}")
    return pixels.astype(np.float32)


def _pixel_array(ds: Dataset) -> np.ndarray:
    """``ds.pixel_array`` through the preferred plugin (predraft.models.decoders), else through every plugin."""
    plugin = decoders.preferred_plugin(ds)
    if not plugin:
        return ds.pixel_array
    try:
        ds.pixel_array_options(decoding_plugin=plugin)
        return ds.pixel_array
    except Exception as exc:
        if plugin == decoders.PLUGIN_LABEL:  # the only plugin that reads 12-bit JPEG Extended
            raise
        log.info("decoding plugin %s failed (%s); trying every plugin", plugin, exc)
        ds.pixel_array_options(decoding_plugin="")
        return ds.pixel_array


def to_unit_range(
    ds: Dataset, stored: np.ndarray, window_index: int = 0, *, overwrite_input: bool = False
) -> np.ndarray:
    """Modality LUT, VOI LUT or window, inversion; float32 in [0, 1] with bone and metal bright.

    ``window_index`` picks the VOI LUT Sequence item or the WindowCenter/WindowWidth pair (0: the first);
    an index past the last one uses the last one. A VOI LUT wins over a window when both are present
    (as pydicom's apply_voi_lut does). Without either (or with an invalid window, or one that would show the whole
    image as one grey level): an image of display values
    (:func:`display_values_top`: unsigned, no modality transform, 8 bits or fewer, or deeper holding 8-bit values
    as they are or scaled by a shift or 257) maps 0 to its top linearly, as the JPEG or PNG it was made from reads; any
    other image gets a linear window from the 0.5th to the 99.5th percentile of its values (a regular subsample
    of them).

    ``overwrite_input=True`` lets a float32 ``stored`` be overwritten with the result (one image-sized
    allocation fewer, as ``decode``'s fresh array allows); the result is then ``stored`` itself or a
    new array.
    """
    if window_index < 0:
        raise ValueError(f"window_index must be 0 or more, got {window_index}")
    if is_colour(ds):  # display values already: their full range, no modality or VOI transform, no inversion
        top = _full_range_top(ds)
        return _linear(stored, 0.0, top, out=stored if overwrite_input and stored.dtype == np.float32 else None)
    values = _modality(ds, stored)
    scratch = values if (values is not stored or overwrite_input) and values.dtype == np.float32 else None
    unit = _voi_lut(ds, values, window_index)
    if unit is None:
        unit = _window(ds, values, window_index, out=scratch)
    if unit is None and (display_top := display_values_top(ds, values)) is not None:
        unit = _linear(values, 0.0, display_top, out=scratch)
    if unit is None:
        low, high = _percentile_window(_subsample(values))
        unit = _linear(values, low, high, out=scratch)
    if needs_inversion(ds):
        np.subtract(1.0, unit, out=unit)
    return unit


def _full_range_top(ds: Dataset) -> float:
    """The largest value an image of display values can store (BitsStored, 8 when absent, kept in 1..16)."""
    return float(2 ** min(max(int(ds.get("BitsStored", 8) or 8), 1), 16) - 1)


def display_values_top(ds: Dataset, values: np.ndarray) -> float | None:
    """The stored value shown white when a grayscale image's values (``values``, stored = modality values here)
    are 8-bit display values, as a JPEG or PNG export wrapped in DICOM (a digitised film, a Secondary Capture)
    holds, else None. They are when the image is unsigned, with no modality LUT or rescale, and either

    - of 8 bits or fewer: the top is that depth's (255 for 8);
    - deeper, with every value an 8-bit value times one scale: 1 (stored as they are, the top 255), the shift to
      the depth (times 16 in 12 bits: the top 4080), or in 16 bits also 257 (0-255 spread over 0-65535).

    A radiograph's raw values are never all such (noise fills every low bit): none of the training phantoms without
    a window is. Without a window such an image maps 0 to the top linearly (0 black, the top white), which is how
    the JPEG exports the models learned from were read (``predraft.models.datasets.read_picture``): a percentile
    window would stretch its contrast and change what the models see (on FracAtlas films wrapped so, the bundled
    gate read body region and hardware worse). An 8-bit picture rescaled by any other factor (4095 / 255, say)
    cannot be told from raw values, and keeps the percentile window."""
    bits = int(ds.get("BitsStored", 0) or 0)
    if bits <= 0 or int(ds.get("PixelRepresentation", 0) or 0) != 0 or ds.get("ModalityLUTSequence"):
        return None
    if _rescale(ds) != (1.0, 0.0):
        return None
    if bits <= 8:
        return _full_range_top(ds)
    if bits > 16:  # no 8-bit picture is stored so deep
        return None
    sample = _subsample(values)  # settles most raw images at once; the whole image decides the rest
    for scale in (1, 2 ** (bits - 8), *((257,) if bits == 16 else ())):
        top = 255.0 * scale
        if all(part.max() <= top and not np.any(np.mod(part, scale)) for part in (sample, values)):
            return top
    return None


def needs_inversion(ds: Dataset) -> bool:
    """MONOCHROME1 shows low values bright; PresentationLUTShape INVERSE says the same for display.

    For MONOCHROME1 the standard pairs the two (DX: INVERSE "shall be used if Photometric Interpretation
    is MONOCHROME1"), so either one means a single inversion. PhotometricInterpretation is what the
    stored values mean, so MONOCHROME1 is inverted even with a (non-conformant) IDENTITY shape.
    """
    shape = str(ds.get("PresentationLUTShape", "") or "").strip().upper()
    return ds.get("PhotometricInterpretation") == "MONOCHROME1" or shape == "INVERSE"


def _rescale(ds: Dataset) -> tuple[float, float]:
    """Rescale slope and intercept (1 and 0 when absent or empty)."""
    return float(ds.get("RescaleSlope", 1.0) or 1.0), float(ds.get("RescaleIntercept", 0.0) or 0.0)


def _modality(ds: Dataset, stored: np.ndarray) -> np.ndarray:
    """Modality LUT (pydicom, integer input) or rescale slope/intercept in float32."""
    if ds.get("ModalityLUTSequence"):
        return np.asarray(apply_modality_lut(stored.astype(np.int64), ds), dtype=np.float32)
    slope, intercept = _rescale(ds)
    values = np.asarray(stored, dtype=np.float32)
    if slope != 1.0 or intercept != 0.0:
        values = values * np.float32(slope) + np.float32(intercept)
    return values


def _voi_lut(ds: Dataset, values: np.ndarray, index: int) -> np.ndarray | None:
    """The chosen VOI LUT Sequence item, scaled by its own output range (min..max of its entries).

    pydicom's apply_voi reads the table (LUT Descriptor, US or OW LUT Data, either byte order); the
    look-up itself is done here in one gather, because apply_voi wants integer input and wraps inputs
    above 65535 into its uint16 index. Inputs below the first mapped value take the first entry, above
    the last the last entry (PS3.3 C.11.2.1.1). The entries' own range is used rather than 2**bits - 1
    from the descriptor, because descriptors often claim 16 bits for 12-bit tables.
    """
    items = ds.get("VOILUTSequence") or []
    usable = [i for i, item in enumerate(items) if "LUTDescriptor" in item and "LUTData" in item]
    if not usable:
        return None
    chosen = usable[min(index, len(usable) - 1)]
    descriptor = items[chosen].LUTDescriptor
    entries, first = int(descriptor[0]) or 2**16, int(descriptor[1])
    table = np.asarray(apply_voi(np.arange(first, first + entries, dtype=np.int64), ds, chosen), dtype=np.float32)
    table = _linear(table, float(table.min()), float(table.max()))
    position = np.subtract(values, np.float32(first), dtype=np.float32)
    np.rint(position, out=position)
    np.clip(position, 0, entries - 1, out=position)
    return np.take(table, position.astype(np.intp))


def _window(ds: Dataset, values: np.ndarray, index: int, out: np.ndarray | None = None) -> np.ndarray | None:
    """The chosen WindowCenter/WindowWidth pair with its VOILUTFunction, straight to [0, 1].

    PS3.3 C.11.2.1.2.1 LINEAR: y = ((x - (c - 0.5)) / (w - 1) + 0.5), clipped (w >= 1);
    C.11.2.1.3.2 LINEAR_EXACT: y = (x - c) / w + 0.5, clipped (w > 0);
    C.11.2.1.3.1 SIGMOID: y = 1 / (1 + exp(-4 (x - c) / w)) (w > 0).
    The same formulas as pydicom's apply_windowing, divided by its output range, but in float32 (and in
    ``out`` when given, which may be ``values`` itself). None (the caller's default then) for an invalid window,
    and for one that would show the whole image as one grey level (every value beyond one end of it: a window
    that belongs to other pixel values).
    """
    if "WindowCenter" not in ds or "WindowWidth" not in ds:
        return None
    centers, widths = _values(ds.WindowCenter), _values(ds.WindowWidth)
    if not centers or not widths:
        return None
    chosen = min(index, len(centers) - 1, len(widths) - 1)
    center, width = centers[chosen], widths[chosen]
    function = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR").strip().upper()
    ramp = _window_ramp(function, center, width)
    if ramp is not None and _one_grey_level(values, *ramp):
        log.info(
            "window %d (center %s, width %s, %s) leaves every pixel at one end of it (values %s to %s); "
            "using the default (full range or percentile window)",
            chosen,
            center,
            width,
            function,
            float(values.min()),
            float(values.max()),
        )
        return None
    if function == "SIGMOID" and width > 0:
        out = np.multiply(values, np.float32(-4.0 / width), out=out, dtype=np.float32)
        out += np.float32(4.0 * center / width)
        np.clip(out, -80.0, 80.0, out=out)  # exp stays finite in float32; the result is 0 or 1 there
        np.exp(out, out=out)
        out += np.float32(1.0)
        return np.reciprocal(out, out=out)
    if function == "LINEAR_EXACT" and width > 0:
        return _linear(values, center - width / 2.0, center + width / 2.0, out=out)
    if function == "LINEAR" and width > 1:
        return _linear(values, center - 0.5 - (width - 1) / 2.0, center - 0.5 + (width - 1) / 2.0, out=out)
    if function == "LINEAR" and width == 1:  # a threshold: x <= c - 0.5 -> 0, else 1
        return (values > center - 0.5).astype(np.float32)
    log.info(
        "window %d (center %s, width %s, %s) is not valid; using the default (full range or percentile window)",
        chosen,
        center,
        width,
        function,
    )
    return None


def _window_ramp(function: str, center: float, width: float) -> tuple[float, float] | None:
    """Where a valid window rises from black to white (a sigmoid's 0.03 % to 99.97 %), or None."""
    if function == "SIGMOID" and width > 0:
        return center - 2.0 * width, center + 2.0 * width
    if function == "LINEAR_EXACT" and width > 0:
        return center - width / 2.0, center + width / 2.0
    if function == "LINEAR" and width >= 1:
        return center - 0.5 - (width - 1) / 2.0, center - 0.5 + (width - 1) / 2.0
    return None


def _one_grey_level(values: np.ndarray, low: float, high: float) -> bool:
    """Whether every value (of a regular subsample) lies at or below ``low`` or every one at or above ``high``: a
    window from ``low`` to ``high`` would show the image as one flat grey level, as a window written for other
    pixel values does (a 16-bit DX whose values run 32,744-65,535 under a window of 70-5,380)."""
    sample = _subsample(values)
    return bool((sample <= low).all() or (sample >= high).all())


def _values(value: Any) -> list[float]:  # an element's value: pydicom types them as Any
    """The numbers of a single- or multi-valued element such as WindowCenter."""
    items = value if isinstance(value, Sequence) and not isinstance(value, str | bytes) else [value]
    return [float(item) for item in items if item is not None and str(item).strip() != ""]


def _subsample(image: np.ndarray) -> np.ndarray:
    """A regular subsample of at most about 250,000 pixels (every n-th row and column)."""
    step = max(1, int(np.sqrt(image.size / 250_000)))
    return image[::step, ::step] if image.ndim == 2 else image.ravel()[::step]


def _percentile_window(values: np.ndarray) -> tuple[float, float]:
    """0.5th and 99.5th percentiles of (a subsample of) the modality values."""
    low, high = np.percentile(values, [0.5, 99.5])
    return float(low), float(high)


def _linear(values: np.ndarray, low: float, high: float, out: np.ndarray | None = None) -> np.ndarray:
    """(values - low) / (high - low), clipped to [0, 1], float32: in ``out`` or one new array."""
    if not high > low:
        high = low + 1.0
    out = np.subtract(values, np.float32(low), out=out, dtype=np.float32)
    out *= np.float32(1.0 / (high - low))
    return np.clip(out, 0.0, 1.0, out=out)


def collimation_box(image: np.ndarray) -> tuple[int, int, int, int]:
    """Rows and columns to keep, ``(top, bottom, left, right)`` (ends exclusive), of a [0, 1] image.

    The rule, applied from each edge inward, one line (row or column) at a time:

    * a line is border when every value on it lies within ``UNIFORM_SPAN`` (0.08) of each other (so it
      holds no edge of anatomy or hardware: bone, soft tissue and metal all bring more contrast than
      that along a whole line) and the middle of its range is within ``BORDER_VALUE_TOLERANCE`` (0.1) of
      that of the outermost border line of that edge (one band of one value: a shutter, a collimator
      shadow, black padding);
    * the crop stops at the first line that is not border, and never removes more than
      ``MAX_CROP_FRACTION`` (40 %) of the image's extent from one edge;
    * rows are judged only over the columns that remain, and columns over the rows that remain; after
      a crop of rows the columns are examined again and vice versa, until nothing changes (a band along
      one edge crosses the others); a later pass only extends the band an edge already has;
    * an image that is all one value (within 0.08, judged on a regular subsample) is not cropped.

    Bright metal touching an edge is never cut: a line through metal also passes through bone, soft
    tissue or air, and so spans far more than 0.08. A line all of one value has nothing to lose.
    """
    height, width = image.shape
    top, bottom, left, right = 0, height, 0, width
    sample = _subsample(image)
    if image.size == 0 or float(sample.max()) - float(sample.min()) <= UNIFORM_SPAN:
        return top, bottom, left, right  # all one value (a blank, or a window that saturates it all)
    max_rows, max_cols = int(height * MAX_CROP_FRACTION), int(width * MAX_CROP_FRACTION)
    # the value of each edge's band, once one line of it is found: later passes extend that band only
    bands: dict[str, float | None] = {"top": None, "bottom": None, "left": None, "right": None}
    check_columns, check_rows = True, True
    while check_columns or check_rows:
        if check_columns:  # left and right edges, judged over the rows that remain
            region = image[top:bottom, left:right]
            depth_left, bands["left"] = _border_depth(
                region, axis=1, from_end=False, limit=max_cols - left, reference=bands["left"]
            )
            depth_right, bands["right"] = _border_depth(
                region, axis=1, from_end=True, limit=max_cols - (width - right), reference=bands["right"]
            )
            left, right = left + depth_left, right - depth_right
            check_columns = False
            check_rows = check_rows or bool(depth_left or depth_right)
        else:  # top and bottom edges, judged over the columns that remain
            region = image[top:bottom, left:right]
            depth_top, bands["top"] = _border_depth(
                region, axis=0, from_end=False, limit=max_rows - top, reference=bands["top"]
            )
            depth_bottom, bands["bottom"] = _border_depth(
                region, axis=0, from_end=True, limit=max_rows - (height - bottom), reference=bands["bottom"]
            )
            top, bottom = top + depth_top, bottom - depth_bottom
            check_rows = False
            check_columns = bool(depth_top or depth_bottom)
    return top, bottom, left, right


def _border_depth(
    region: np.ndarray, *, axis: int, from_end: bool, limit: int, reference: float | None
) -> tuple[int, float | None]:
    """How many lines at one edge of ``region`` are border (see ``collimation_box``), and the band's value.

    ``axis=0`` examines rows (top or bottom edge), ``axis=1`` columns (left or right edge). ``reference``
    is the value of the band found on this edge by an earlier pass (None: the outermost line's mid-range).
    Lines are examined in growing chunks, so an image without borders costs a few dozen lines per edge.
    """
    extent = region.shape[axis]
    limit = min(limit, extent - 1)
    if limit <= 0 or region.size == 0:
        return 0, reference
    depth, chunk = 0, 16
    while depth < limit:
        count = min(chunk, limit - depth)
        start = extent - depth - count if from_end else depth
        lines = region[start : start + count] if axis == 0 else region[:, start : start + count]
        reduce_axis = 1 - axis
        low, high = lines.min(axis=reduce_axis), lines.max(axis=reduce_axis)
        if from_end:
            low, high = low[::-1], high[::-1]
        middle = (low + high) * 0.5
        value = float(middle[0]) if reference is None else reference
        border = (high - low <= UNIFORM_SPAN) & (np.abs(middle - value) <= BORDER_VALUE_TOLERANCE)
        found = len(border) if border.all() else int(np.argmin(border))
        if found and reference is None:
            reference = value
        depth += found
        if found < count:
            break
        chunk *= 2
    return depth, reference


def crop_collimation(image: np.ndarray) -> np.ndarray:
    """The image without its uniform borders (a view; see ``collimation_box`` for the rule)."""
    top, bottom, left, right = collimation_box(image)
    return image[top:bottom, left:right]


def _directions(patient_orientation: object) -> tuple[str, str] | None:
    """The dominant direction letters (L, R, A, P, H, F) of PatientOrientation's rows and columns."""
    if not isinstance(patient_orientation, Sequence) or isinstance(patient_orientation, str | bytes):
        return None
    values = [str(value).strip().upper() for value in patient_orientation]
    if len(values) != 2 or not all(values) or not all(v[0] in "LRAPHF" for v in values):
        return None
    return values[0][0], values[1][0]


def standard_orientation(image: np.ndarray, patient_orientation: object) -> np.ndarray:
    """Rotate or mirror a frontal image so rows run toward the patient's left and columns toward the feet.

    That is the usual display of an AP radiograph (the patient's right on the image's left). Applied only
    when PatientOrientation names a left-right axis and a head-feet axis (PS3.3 C.7.6.1.1.1: row
    direction first, dominant letter first); otherwise (absent, lateral A/P, malformed) the image is
    returned as it is.
    """
    directions = _directions(patient_orientation)
    if directions is None:
        return image
    rows, columns = directions
    if rows in "HF" and columns in "LR":
        image, (rows, columns) = image.T, (columns, rows)
    if rows not in "LR" or columns not in "HF":
        return image
    if rows == "R":
        image = image[:, ::-1]
    if columns == "H":
        image = image[::-1, :]
    return image


def split_bilateral(image: np.ndarray, patient_orientation: object) -> dict[Side, np.ndarray]:
    """Split an AP pelvis at the midline of its width into the patient's right and left hips.

    The image is first brought to the standard orientation (``standard_orientation``), so on what is
    split the patient's right is on the image's left. Without a usable PatientOrientation the image is
    taken to be in that orientation already, as AP radiographs are displayed. With an odd width the
    middle column belongs to neither hip.
    """
    image = standard_orientation(image, patient_orientation)
    half = image.shape[1] // 2
    return {Side.RIGHT: image[:, :half], Side.LEFT: image[:, image.shape[1] - half :]}


def letterbox(image: np.ndarray, size: int) -> np.ndarray:
    """Resize a [0, 1] float image so its longer edge is ``size``, pad to a square; return uint8.

    Nothing is cropped: the whole image, hardware at its edges included, lies inside the square.
    Shrinking by more than 2x first averages k x k blocks (k = the integer part of half the factor;
    partial blocks at the edges are averaged over what they hold), then Pillow's antialiased bilinear
    filter on float32 does the rest: Pillow's own ``reducing_gap=2`` scheme, which it documents as
    indistinguishable from full resampling in most cases (on RG2 at 380 px: at most 0.007 and on
    average 0.0002 from the direct filter, under two grey levels). Single-threaded with the GIL released,
    so worker threads do not fight over a thread pool.
    """
    if size < 1:
        raise ValueError(f"size must be at least 1, got {size}")
    height, width = image.shape
    scale = size / max(height, width)
    new_h, new_w = max(1, round(height * scale)), max(1, round(width * scale))
    block = int(1.0 / scale / 2.0)
    source = _block_mean(image, block) if block >= 2 else np.ascontiguousarray(image, dtype=np.float32)
    resized = np.asarray(Image.fromarray(source).resize((new_w, new_h), Image.Resampling.BILINEAR))
    canvas = np.zeros((size, size), dtype=np.float32)
    top, left = (size - new_h) // 2, (size - new_w) // 2
    canvas[top : top + new_h, left : left + new_w] = resized
    canvas *= 255.0
    np.rint(canvas, out=canvas)
    return np.clip(canvas, 0, 255, out=canvas).astype(np.uint8)


def resize_square(pixels: np.ndarray, size: int) -> np.ndarray:
    """A letterboxed uint8 square at ``size`` x ``size`` (bilinear; itself when it is that size already): one
    letterboxed image for a network of another input edge."""
    if pixels.shape[0] == size:
        return pixels
    return np.asarray(Image.fromarray(pixels).resize((size, size), Image.Resampling.BILINEAR))


def _block_mean(image: np.ndarray, k: int) -> np.ndarray:
    """Means of k x k blocks (the last row and column of blocks may be partial), float32.

    Rows first: k additions of every k-th row into an array k times smaller than the image, each reading
    whole rows in memory order, so the image is read once; then k additions of every k-th column of that.
    (Adding every k-th pixel of the image k * k times, as before 2026-12-07, read it from memory about k
    times over: 1.5-2.3 ms more on each large letterbox. The sums differ only by float32 rounding, at most
    5e-7 on RG2.)
    """
    height, width = image.shape
    rows = np.array(image[0::k], dtype=np.float32)
    for row in range(1, k):
        part = image[row::k]
        rows[: part.shape[0]] += part
    blocks = np.array(rows[:, 0::k])
    for column in range(1, k):
        part = rows[:, column::k]
        blocks[:, : part.shape[1]] += part
    blocks *= np.float32(1.0 / (k * k))
    if height % k:
        blocks[-1] *= np.float32(k / (height % k))
    if width % k:
        blocks[:, -1] *= np.float32(k / (width % k))
    return blocks
