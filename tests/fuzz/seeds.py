"""The fuzz seeds: every DICOM file of ../shared/data/real, re-encoded at MAX_SIDE pixels or less.

Each seed keeps its transfer syntax where an encoder here can write it: native ones directly, RLE, JPEG-LS and
JPEG 2000 through pydicom's ``compress`` (pylibjpeg-rle, pyjpegls, pylibjpeg-openjpeg), JPEG lossless and 12-bit
JPEG Extended through imagecodecs. A file whose pixels cannot be decoded (the known-bad ``*_JPLY.dcm``) stays as it
is: a bad seed. Re-encoding is deterministic, so one seed folder serves every test of a session
(:func:`cached_seeds`).
"""

from __future__ import annotations

import io
from pathlib import Path

import imagecodecs
import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    JPEG2000,
    UID,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGExtended12Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)

from predraft.models import decoders
from tests.conftest import REAL_DATA, real_file

#: Largest row or column count of a re-encoded seed.
MAX_SIDE = 512
#: The one fixture a run cannot do without (its absence skips with real_file's reason).
CLEAN_SEED = "RG2_UNC.dcm"
#: JPEG-LS near-lossless error bound, as the NEMA JLSN files have it.
JLS_NEAR_ERROR = 4
#: Compression ratio of the lossy JPEG 2000 seeds.
J2K_LOSSY_RATIO = 10
#: Quality of the lossy 12-bit JPEG Extended seeds.
JPEG_LOSSY_QUALITY = 90
#: Bits per sample of JPEG Extended (Process 2 and 4) at 12 bits.
JPEG_EXTENDED_BITS = 12

NATIVE_SYNTAXES = frozenset({ExplicitVRLittleEndian, ImplicitVRLittleEndian})
#: Transfer syntaxes that pydicom's ``Dataset.compress`` writes with the packages installed here.
PYDICOM_COMPRESS_OPTIONS: dict[str, dict[str, object]] = {
    RLELossless: {},
    JPEGLSLossless: {},
    JPEGLSNearLossless: {"jls_error": JLS_NEAR_ERROR},
    JPEG2000Lossless: {},
    JPEG2000: {"j2k_cr": [J2K_LOSSY_RATIO]},
}


def seed_names() -> list[str]:
    """Every DICOM file of the real fixture folder, sorted; skips (real_file) when the folder is absent."""
    real_file(CLEAN_SEED)
    return sorted(path.name for path in REAL_DATA.glob("*.dcm"))


def downsample(pixels: np.ndarray, max_side: int = MAX_SIDE) -> np.ndarray:
    """``pixels`` (rows x columns) taken every n-th row and column, the smallest n that fits ``max_side``."""
    step = -(-max(pixels.shape[:2]) // max_side)
    return np.ascontiguousarray(pixels[::step, ::step])


def _imagecodecs_frame(syntax: UID, pixels: np.ndarray, bits_stored: int) -> bytes:
    """One JPEG frame in ``syntax`` (JPEG lossless SV1 or 12-bit JPEG Extended), written by imagecodecs."""
    if syntax == JPEGLosslessSV1:
        return bytes(imagecodecs.jpeg8_encode(pixels, lossless=True, predictor=1, bitspersample=bits_stored))
    return bytes(imagecodecs.jpeg8_encode(pixels, level=JPEG_LOSSY_QUALITY, bitspersample=JPEG_EXTENDED_BITS))


def _set_pixels(ds: Dataset, syntax: UID, pixels: np.ndarray) -> None:
    """Write ``pixels`` into ``ds`` in ``syntax``; raises NotImplementedError for a syntax without an encoder."""
    ds.Rows, ds.Columns = (int(side) for side in pixels.shape[:2])
    for keyword in (
        "NumberOfFrames",
        "LossyImageCompression",
        "LossyImageCompressionRatio",
        "LossyImageCompressionMethod",
    ):
        if keyword in ds:
            delattr(ds, keyword)
    if syntax in NATIVE_SYNTAXES:
        ds.PixelData = pixels.tobytes()
        ds["PixelData"].VR = "OB" if ds.BitsAllocated == 8 else "OW"
    elif syntax in PYDICOM_COMPRESS_OPTIONS:
        ds.compress(syntax, pixels, generate_instance_uid=False, **PYDICOM_COMPRESS_OPTIONS[syntax])
        return
    elif syntax in (JPEGLosslessSV1, JPEGExtended12Bit):
        ds.PixelData = encapsulate([_imagecodecs_frame(syntax, pixels, int(ds.BitsStored))])
        ds["PixelData"].VR = "OB"
        ds["PixelData"].is_undefined_length = True
    else:
        raise NotImplementedError(f"no encoder here for {syntax.name}")
    ds.file_meta.TransferSyntaxUID = syntax


def _encode(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def reencode(path: Path, max_side: int = MAX_SIDE) -> bytes:
    """The file at ``path`` re-encoded at ``max_side`` pixels or less in its own transfer syntax; the original
    bytes when its pixels do not decode (a bad seed) or no encoder here writes its syntax."""
    decoders.register()  # 12-bit JPEG Extended decodes only through this plugin
    original = path.read_bytes()
    ds = pydicom.dcmread(io.BytesIO(original))
    syntax = UID(ds.file_meta.TransferSyntaxUID)
    try:
        pixels = ds.pixel_array
    except Exception:  # a known-bad stream: every decoder raises its own type
        return original
    if max(pixels.shape[:2]) <= max_side:
        return original
    try:
        _set_pixels(ds, syntax, downsample(pixels, max_side))
    except NotImplementedError:
        return original
    return _encode(ds)


def build_seeds(folder: Path) -> dict[str, bytes]:
    """Every seed by file name, re-encoded once into ``folder`` and read back from there afterwards."""
    folder.mkdir(parents=True, exist_ok=True)
    seeds = {}
    for name in seed_names():
        cached = folder / name
        if not cached.is_file():
            partial = folder / f".{name}.part"
            partial.write_bytes(reencode(real_file(name)))
            partial.rename(cached)
        seeds[name] = cached.read_bytes()
    return seeds


def cached_seeds(base_temp: Path) -> dict[str, bytes]:
    """The seeds under the session's pytest base temporary folder: built by the first test that asks."""
    return build_seeds(base_temp / "fuzz-seeds")
