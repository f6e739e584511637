"""models.pixels: decoding every lossless transfer syntax, LUTs and inversion, splitting, letterboxing."""

from __future__ import annotations

import copy
from functools import lru_cache
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian

from models.pixels import PixelDataError, decode, letterbox, needs_inversion, split_bilateral, to_unit_range
from models.taxonomy import Side


@lru_cache(maxsize=4)
def _decoded(path: Path) -> np.ndarray:
    return decode(pydicom.dcmread(path))


@pytest.mark.parametrize("compressed, uncompressed", [
    ("RG2_RLE.dcm", "RG2_UNC.dcm"),
    ("RG2_JPLL.dcm", "RG2_UNC.dcm"),
    ("RG2_JLSL.dcm", "RG2_UNC.dcm"),
    ("RG2_J2KR.dcm", "RG2_UNC.dcm"),
    ("RG3_RLE.dcm", "RG3_UNC.dcm"),
    ("RG3_JPLL.dcm", "RG3_UNC.dcm"),
    ("RG3_JLSL.dcm", "RG3_UNC.dcm"),
    ("RG3_J2KR.dcm", "RG3_UNC.dcm"),
    ("RG1_J2KR.dcm", "RG1_UNCR.dcm"),
])
def test_lossless_syntaxes_decode_identical_to_uncompressed(real_path, compressed, uncompressed):
    reference = _decoded(real_path(uncompressed))
    ds = pydicom.dcmread(real_path(compressed))
    assert ds.file_meta.TransferSyntaxUID != ExplicitVRLittleEndian
    pixels = decode(ds)
    assert pixels.dtype == np.float32
    assert pixels.shape == reference.shape == (ds.Rows, ds.Columns)
    assert pixels.max() > pixels.min()
    np.testing.assert_array_equal(pixels, reference)


def test_uncompressed_shapes_and_bit_depth(real_path):
    assert _decoded(real_path("RG2_UNC.dcm")).shape == (2140, 1760)
    rg3 = _decoded(real_path("RG3_UNC.dcm"))
    assert rg3.shape == (1760, 1760)
    assert 0 <= rg3.min() and rg3.max() <= 2**10 - 1  # 10-bit kept in full, not scaled to 8 bits
    assert rg3.max() > 255


def test_bad_jpeg_stream_raises_pixel_data_error(real_path):
    ds = pydicom.dcmread(real_path("RG2_JPLY.dcm"))
    with pytest.raises(PixelDataError, match="could not be decoded") as info:
        decode(ds)
    assert "1.2.840.10008.1.2.4.51" in str(info.value)


def test_monochrome1_is_inverted(real_path):
    ds = pydicom.dcmread(real_path("RG3_UNC.dcm"))
    assert ds.PhotometricInterpretation == "MONOCHROME1"
    stored = decode(ds)
    as_stored = to_unit_range(ds, stored)

    as_monochrome2 = copy.deepcopy(ds)
    as_monochrome2.PhotometricInterpretation = "MONOCHROME2"
    plain = to_unit_range(as_monochrome2, stored)

    assert as_stored.dtype == np.float32 and as_stored.shape == stored.shape
    assert 0.0 <= as_stored.min() and as_stored.max() <= 1.0
    assert as_stored.std() > 0.05
    np.testing.assert_allclose(as_stored, 1.0 - plain, atol=1e-6)


@pytest.mark.parametrize("photometric, shape, expected", [
    ("MONOCHROME2", None, False),
    ("MONOCHROME1", None, True),
    ("MONOCHROME2", "IDENTITY", False),
    ("MONOCHROME2", "INVERSE", True),
    ("MONOCHROME1", "INVERSE", True),  # the same inversion, described twice: applied once
])
def test_needs_inversion(photometric, shape, expected):
    ds = Dataset()
    ds.PhotometricInterpretation = photometric
    if shape is not None:
        ds.PresentationLUTShape = shape
    assert needs_inversion(ds) is expected


def _synthetic(**attributes) -> Dataset:
    ds = Dataset()
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsStored, ds.BitsAllocated, ds.PixelRepresentation = 12, 16, 0
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    return ds


def test_window_maps_center_and_edges():
    stored = np.array([[0, 100, 150], [200, 300, 400]], dtype=np.float32)
    unit = to_unit_range(_synthetic(WindowCenter=200, WindowWidth=200), stored)
    np.testing.assert_allclose(unit, [[0.0, 0.0, 0.25], [0.5, 1.0, 1.0]], atol=1e-6)


def test_first_of_several_windows_is_used():
    stored = np.array([[0, 100, 200]], dtype=np.float32)
    unit = to_unit_range(_synthetic(WindowCenter=[100, 1000], WindowWidth=[200, 10]), stored)
    np.testing.assert_allclose(unit, [[0.0, 0.5, 1.0]], atol=1e-6)


def test_modality_lut_is_applied_before_the_window():
    stored = np.array([[0, 50, 100]], dtype=np.float32)
    ds = _synthetic(RescaleSlope=2, RescaleIntercept=-100, WindowCenter=0, WindowWidth=200)
    np.testing.assert_allclose(to_unit_range(ds, stored), [[0.0, 0.5, 1.0]], atol=1e-6)


def test_presentation_lut_inverse_inverts_monochrome2():
    stored = np.array([[0, 100, 200]], dtype=np.float32)
    unit = to_unit_range(_synthetic(WindowCenter=100, WindowWidth=200, PresentationLUTShape="INVERSE"), stored)
    np.testing.assert_allclose(unit, [[1.0, 0.5, 0.0]], atol=1e-6)


def test_percentile_window_without_window_tags():
    rng = np.random.default_rng(0)
    stored = rng.integers(0, 4096, size=(64, 64)).astype(np.float32)
    stored[0, 0], stored[0, 1] = -10_000, 100_000  # outliers are clipped, not stretched to
    unit = to_unit_range(_synthetic(), stored)
    assert unit.dtype == np.float32
    assert unit.min() == 0.0 and unit.max() == 1.0
    assert 0.4 < float(np.median(unit)) < 0.6


def test_flat_image_does_not_divide_by_zero():
    unit = to_unit_range(_synthetic(), np.full((8, 8), 7.0, dtype=np.float32))
    assert np.isfinite(unit).all()


def test_decode_refuses_missing_pixels_and_colour():
    with pytest.raises(PixelDataError, match="no Pixel Data"):
        decode(_synthetic())
    colour = _synthetic(PixelData=b"\x00" * 12, Rows=2, Columns=2, PhotometricInterpretation="RGB")
    with pytest.raises(PixelDataError, match="not a grayscale radiograph"):
        decode(colour)


def test_letterbox_keeps_aspect_ratio_of_a_wide_image():
    boxed = letterbox(np.ones((50, 100), dtype=np.float32), 64)
    assert boxed.shape == (64, 64) and boxed.dtype == np.uint8
    assert (boxed[16:48] == 255).all()
    assert (boxed[:16] == 0).all() and (boxed[48:] == 0).all()


def test_letterbox_keeps_aspect_ratio_of_a_tall_image():
    boxed = letterbox(np.ones((100, 50), dtype=np.float32), 64)
    assert (boxed[:, 16:48] == 255).all()
    assert (boxed[:, :16] == 0).all() and (boxed[:, 48:] == 0).all()


def test_letterbox_scales_values_and_upsamples():
    image = np.zeros((10, 10), dtype=np.float32)
    image[:, 5:] = 1.0
    boxed = letterbox(image, 40)
    assert boxed.shape == (40, 40)
    assert (boxed[:, :15] == 0).all() and (boxed[:, 25:] == 255).all()


def test_split_bilateral_puts_the_patients_right_on_the_images_left():
    image = np.tile(np.arange(10, dtype=np.float32), (4, 1))
    for orientation in (None, [], ["L", "F"], ""):
        halves = split_bilateral(image, orientation)
        np.testing.assert_array_equal(halves[Side.RIGHT], image[:, :5])
        np.testing.assert_array_equal(halves[Side.LEFT], image[:, 5:])


def test_split_bilateral_flipped_when_rows_run_toward_the_patients_right():
    image = np.tile(np.arange(10, dtype=np.float32), (4, 1))
    halves = split_bilateral(image, ["R", "F"])
    np.testing.assert_array_equal(halves[Side.RIGHT], image[:, 5:])
    np.testing.assert_array_equal(halves[Side.LEFT], image[:, :5])


def test_split_bilateral_odd_width_gives_equal_halves_without_the_midline():
    image = np.tile(np.arange(7, dtype=np.float32), (3, 1))
    halves = split_bilateral(image, ["L", "F"])
    np.testing.assert_array_equal(halves[Side.RIGHT][0], [0, 1, 2])
    np.testing.assert_array_equal(halves[Side.LEFT][0], [4, 5, 6])
