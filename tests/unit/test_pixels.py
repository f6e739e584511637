"""predraft.models.pixels: decoding every transfer syntax, LUTs, windows and inversion, collimation crop,
orientation and splitting, letterboxing."""

from __future__ import annotations

import copy
import logging
from functools import lru_cache
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.pixels import apply_windowing
from pydicom.pixels.decoders import JPEGExtended12BitDecoder
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian

from predraft.models import decoders, pixels
from predraft.models.pixels import (
    PixelDataError,
    collimation_box,
    crop_collimation,
    decode,
    letterbox,
    needs_inversion,
    split_bilateral,
    standard_orientation,
    to_unit_range,
)
from predraft.models.prepare import prepare_file
from predraft.models.taxonomy import Side

JPEG_EXTENDED = "1.2.840.10008.1.2.4.51"


@lru_cache(maxsize=4)
def _decoded(path: Path) -> np.ndarray:
    return decode(pydicom.dcmread(path))


# --- decoding ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "compressed, uncompressed",
    [
        ("RG2_RLE.dcm", "RG2_UNC.dcm"),
        ("RG2_JPLL.dcm", "RG2_UNC.dcm"),
        ("RG2_JLSL.dcm", "RG2_UNC.dcm"),
        ("RG2_J2KR.dcm", "RG2_UNC.dcm"),
        ("RG3_RLE.dcm", "RG3_UNC.dcm"),
        ("RG3_JPLL.dcm", "RG3_UNC.dcm"),
        ("RG3_JLSL.dcm", "RG3_UNC.dcm"),
        ("RG3_J2KR.dcm", "RG3_UNC.dcm"),
        ("RG1_J2KR.dcm", "RG1_UNCR.dcm"),
    ],
)
def test_lossless_syntaxes_decode_identical_to_uncompressed(real_path, compressed, uncompressed):
    reference = _decoded(real_path(uncompressed))
    ds = pydicom.dcmread(real_path(compressed))
    assert ds.file_meta.TransferSyntaxUID != ExplicitVRLittleEndian
    pixels = decode(ds)
    assert pixels.dtype == np.float32
    assert pixels.shape == reference.shape == (ds.Rows, ds.Columns)
    assert pixels.max() > pixels.min()
    np.testing.assert_array_equal(pixels, reference)


@pytest.mark.parametrize(
    "lossy, uncompressed, bound",
    [
        # JPEG-LS near-lossless promises at most 4 (its NEAR parameter) on every pixel.
        ("RG2_JLSN.dcm", "RG2_UNC.dcm", 4.0),
        ("RG3_JLSN.dcm", "RG3_UNC.dcm", 4.0),
    ],
)
def test_near_lossless_stays_within_its_error_bound(real_path, lossy, uncompressed, bound):
    difference = np.abs(decode(pydicom.dcmread(real_path(lossy))) - _decoded(real_path(uncompressed)))
    assert 0 < difference.max() <= bound


def test_12_bit_jpeg_extended_decodes_close_to_the_uncompressed_image(real_path):
    ds = pydicom.dcmread(real_path("RG2_JPLY_fixed.dcm"))
    assert ds.file_meta.TransferSyntaxUID == JPEG_EXTENDED and ds.BitsStored == 10
    pixels = decode(ds)
    reference = _decoded(real_path("RG2_UNC.dcm"))
    assert pixels.dtype == np.float32 and pixels.shape == reference.shape
    # Lossy: measured mean absolute difference 3.8 stored values (0.4 % of the 10-bit range). The bound
    # is 0.5 % of the range; a decoder that got the bit depth or byte order wrong is off by hundreds.
    difference = np.abs(pixels - reference)
    assert difference.mean() < 0.005 * 1023
    assert np.corrcoef(pixels.ravel()[::97], reference.ravel()[::97])[0, 1] > 0.999
    assert pixels.max() <= 1023


def test_imagecodecs_plugin_is_registered_for_jpeg_extended():
    assert decoders.PLUGIN_LABEL in JPEGExtended12BitDecoder.available_plugins
    decoders.register()  # idempotent
    assert JPEGExtended12BitDecoder.available_plugins.count(decoders.PLUGIN_LABEL) == 1


@pytest.mark.parametrize("name", ["RG2_JPLY.dcm", "RG3_JPLY.dcm"])
def test_bad_jpeg_stream_raises_pixel_data_error_naming_the_syntax(real_path, name):
    ds = pydicom.dcmread(real_path(name))
    with pytest.raises(PixelDataError, match="could not be decoded") as info:
        decode(ds)
    message = str(info.value)
    assert JPEG_EXTENDED in message and "JPEG Extended (Process 2 and 4)" in message
    assert "Se=0" in message and "Se=63" in message  # says what is wrong with the stream


def _jpeg(sof: int = 0xC1, precision: int = 12, scan: tuple[int, int, int] = (0, 63, 0)) -> bytes:
    """Marker segments of a one-component JPEG (no tables, a token of entropy-coded data)."""
    frame = bytes([precision, 0, 8, 0, 8, 1, 1, 0x11, 0])
    sos = bytes([1, 1, 0x00, *scan])
    return (
        b"\xff\xd8"
        + bytes([0xFF, sof])
        + (len(frame) + 2).to_bytes(2, "big")
        + frame
        + b"\xff\xda"
        + (len(sos) + 2).to_bytes(2, "big")
        + sos
        + b"\x12\xff\x00\x34\xff\xd0\x56"
        + b"\xff\xd9"
    )


def test_sequential_dct_check_accepts_a_conformant_header():
    assert decoders.check_sequential_dct(_jpeg()) == (12, 1)
    assert decoders.check_sequential_dct(_jpeg(sof=0xC0, precision=8)) == (8, 1)


@pytest.mark.parametrize(
    "stream, message",
    [
        (b"\x00\x00" + _jpeg()[2:], "does not start with an SOI marker"),
        (_jpeg(sof=0xC3), r"SOF3 \(lossless\) frame"),
        (_jpeg(sof=0xC2), r"SOF2 \(progressive\) frame"),
        (_jpeg(precision=16), "sample precision 16 bits"),
        (_jpeg(scan=(0, 0, 0)), "Ss=0, Se=0, Ah=0, Al=0"),
        (_jpeg(scan=(1, 63, 0)), "Ss=1, Se=63"),
        (_jpeg(scan=(0, 63, 0x01)), "Ah=0, Al=1"),
        (b"\xff\xd8\xff\xd9", "no SOF0/SOF1 frame header"),
    ],
)
def test_sequential_dct_check_refuses_non_conformant_streams(stream, message):
    with pytest.raises(decoders.JpegStreamError, match=message):
        decoders.check_sequential_dct(stream)


def test_uncompressed_shapes_and_bit_depth(real_path):
    assert _decoded(real_path("RG2_UNC.dcm")).shape == (2140, 1760)
    rg3 = _decoded(real_path("RG3_UNC.dcm"))
    assert rg3.shape == (1760, 1760)
    assert rg3.min() >= 0 and rg3.max() <= 2**10 - 1  # 10-bit kept in full, not scaled to 8 bits
    assert rg3.max() > 255


def test_decode_refuses_missing_pixels_and_palette_colour():
    with pytest.raises(PixelDataError, match="no Pixel Data"):
        decode(_synthetic())
    palette = _synthetic(PixelData=b"\x00" * 4, Rows=2, Columns=2, PhotometricInterpretation="PALETTE COLOR")
    with pytest.raises(PixelDataError, match="neither a grayscale nor an RGB/YBR colour image"):
        decode(palette)


def _rgb(ds: Dataset, rgb: np.ndarray) -> Dataset:
    """``ds`` holding the 8-bit ``rgb`` frame (rows, columns, 3) uncompressed, as a Secondary Capture exports it."""
    ds.PhotometricInterpretation, ds.SamplesPerPixel, ds.PlanarConfiguration = "RGB", 3, 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.Rows, ds.Columns = rgb.shape[:2]
    for keyword in ("WindowCenter", "WindowWidth", "RescaleSlope", "RescaleIntercept", "PresentationLUTShape"):
        ds.pop(keyword, None)
    ds.PixelData = np.ascontiguousarray(rgb, dtype=np.uint8).tobytes()
    if not hasattr(ds, "file_meta"):
        ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    return ds


def test_an_rgb_image_is_read_as_its_luminance():
    rgb = np.array([[[255, 0, 0], [0, 255, 0]], [[0, 0, 255], [200, 200, 200]]], dtype=np.uint8)
    ds = _rgb(_synthetic(), rgb)
    stored = decode(ds)
    np.testing.assert_allclose(stored, [[0.299 * 255, 0.587 * 255], [0.114 * 255, 200]], rtol=1e-5)
    np.testing.assert_allclose(to_unit_range(ds, stored), stored / 255, rtol=1e-5)  # display values: no window


def test_a_radiograph_exported_as_rgb_prepares_like_its_grayscale_original(real_path, tmp_path):
    """A real hip, exported as an 8-bit RGB Secondary Capture of what its window shows, gives the same hips."""
    original = real_path("RG2_UNC.dcm")
    _, gray_hips, *_ = prepare_file(original, input_size=128)
    ds = pydicom.dcmread(original)
    shown = np.rint(to_unit_range(ds, decode(ds)) * 255).astype(np.uint8)[::4, ::4]  # as a viewer exports it
    exported = _rgb(ds, np.repeat(shown[..., None], 3, axis=2))
    exported.SOPClassUID = exported.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    exported.save_as(tmp_path / "rgb.dcm", enforce_file_format=True)
    _, rgb_hips, *_ = prepare_file(tmp_path / "rgb.dcm", input_size=128)
    assert [(h.side, h.view) for h in rgb_hips] == [(h.side, h.view) for h in gray_hips]
    for rgb_hip, gray_hip in zip(rgb_hips, gray_hips, strict=True):
        difference = np.abs(rgb_hip.pixels.astype(np.int16) - gray_hip.pixels.astype(np.int16))
        assert float(difference.mean()) < 4.0  # 8-bit quantisation and a 4x smaller source only


# --- bone bright: MONOCHROME1 and PresentationLUTShape ----------------------------------------------

#: (file, a region of bone or mediastinum, a region of air or lung), as fractions (x0, x1, y0, y1),
#: picked on the images: RG3 tibia shaft vs the air beside the leg; chest spine and mediastinum vs lung.
_BRIGHT_DARK = [
    ("RG3_UNC.dcm", (0.47, 0.53, 0.2, 0.3), (0.29, 0.36, 0.2, 0.5)),
    ("RG3_J2KR.dcm", (0.47, 0.53, 0.2, 0.3), (0.29, 0.36, 0.2, 0.5)),
    ("RG1_UNCR.dcm", (0.45, 0.53, 0.3, 0.5), (0.65, 0.75, 0.25, 0.4)),
    ("RG1_J2KR.dcm", (0.45, 0.53, 0.3, 0.5), (0.65, 0.75, 0.25, 0.4)),
    ("966_fixed.dcm", (0.45, 0.6, 0.4, 0.6), (0.15, 0.3, 0.3, 0.45)),
]


def _region(image: np.ndarray, box: tuple[float, float, float, float]) -> float:
    x0, x1, y0, y1 = box
    height, width = image.shape
    return float(image[int(y0 * height) : int(y1 * height), int(x0 * width) : int(x1 * width)].mean())


@pytest.mark.parametrize("name, bright, dark", _BRIGHT_DARK)
def test_monochrome1_comes_out_with_bone_bright(real_path, name, bright, dark):
    ds = pydicom.dcmread(real_path(name))
    assert ds.PhotometricInterpretation == "MONOCHROME1"
    unit = to_unit_range(ds, decode(ds))
    assert _region(unit, bright) > _region(unit, dark) + 0.25
    assert _region(unit, dark) < float(np.median(unit))


def test_monochrome1_is_inverted_exactly_once(real_path):
    ds = pydicom.dcmread(real_path("RG3_UNC.dcm"))
    stored = decode(ds)
    as_stored = to_unit_range(ds, stored)

    as_monochrome2 = copy.deepcopy(ds)
    as_monochrome2.PhotometricInterpretation = "MONOCHROME2"
    plain = to_unit_range(as_monochrome2, stored)

    assert as_stored.dtype == np.float32 and as_stored.shape == stored.shape
    assert as_stored.min() >= 0.0 and as_stored.max() <= 1.0
    assert as_stored.std() > 0.05
    np.testing.assert_allclose(as_stored, 1.0 - plain, atol=1e-6)


@pytest.mark.parametrize(
    "photometric, shape, expected",
    [
        ("MONOCHROME2", None, False),
        ("MONOCHROME1", None, True),
        ("MONOCHROME2", "IDENTITY", False),
        ("MONOCHROME2", "INVERSE", True),
        ("MONOCHROME1", "INVERSE", True),  # the same inversion, described twice: applied once
        ("MONOCHROME1", "IDENTITY", True),  # what the stored values mean wins
    ],
)
def test_needs_inversion(photometric, shape, expected):
    ds = Dataset()
    ds.PhotometricInterpretation = photometric
    if shape is not None:
        ds.PresentationLUTShape = shape
    assert needs_inversion(ds) is expected


# --- windows and LUTs -------------------------------------------------------------------------------


def _synthetic(**attributes) -> Dataset:
    ds = Dataset()
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsStored, ds.BitsAllocated, ds.PixelRepresentation = 12, 16, 0
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    return ds


def test_linear_window_follows_the_standard_formula():
    # PS3.3 C.11.2.1.2.1: c=200, w=201 -> 0 at or below 99.5 + 0.5 ... the ramp spans (c-0.5) +- (w-1)/2
    stored = np.array([[0, 99.5, 149.5, 199.5, 249.5, 299.5, 400]], dtype=np.float32)
    unit = to_unit_range(_synthetic(WindowCenter=200, WindowWidth=201), stored)
    np.testing.assert_allclose(unit, [[0.0, 0.0, 0.25, 0.5, 0.75, 1.0, 1.0]], atol=1e-6)


def test_linear_exact_window():
    stored = np.array([[0, 100, 150, 200, 300, 400]], dtype=np.float32)
    unit = to_unit_range(_synthetic(WindowCenter=200, WindowWidth=200, VOILUTFunction="LINEAR_EXACT"), stored)
    np.testing.assert_allclose(unit, [[0.0, 0.0, 0.25, 0.5, 1.0, 1.0]], atol=1e-6)


def test_sigmoid_window():
    stored = np.array([[-1e6, 100, 200, 300, 1e6]], dtype=np.float32)
    unit = to_unit_range(_synthetic(WindowCenter=200, WindowWidth=100, VOILUTFunction="SIGMOID"), stored)
    expected = 1.0 / (1.0 + np.exp(-4.0 * (np.array([100, 200, 300]) - 200) / 100))
    np.testing.assert_allclose(unit[0, 1:4], expected, atol=1e-6)
    assert unit[0, 0] < 1e-6 and unit[0, 4] == 1.0 and np.isfinite(unit).all()


@pytest.mark.parametrize("function", ["LINEAR", "LINEAR_EXACT", "SIGMOID"])
@pytest.mark.parametrize("center, width", [(2048, 4096), (700, 301), (1500.5, 2.0)])
def test_window_agrees_with_pydicom_apply_windowing(function, center, width):
    stored = np.random.default_rng(1).integers(0, 4096, size=(32, 32)).astype(np.float32)
    ds = _synthetic(WindowCenter=center, WindowWidth=width, VOILUTFunction=function)
    ours = to_unit_range(ds, stored)
    with np.errstate(over="ignore"):  # pydicom's sigmoid overflows exp() far from the center
        theirs = apply_windowing(stored.astype(np.float64), copy.deepcopy(ds)) / (2**12 - 1)  # 12-bit range
    np.testing.assert_allclose(ours, theirs, atol=1e-5)


def test_window_index_picks_the_pair_and_is_clamped():
    stored = np.array([[0, 100, 200]], dtype=np.float32)
    ds = _synthetic(WindowCenter=[100, 150], WindowWidth=[200, 100], VOILUTFunction="LINEAR_EXACT")
    np.testing.assert_allclose(to_unit_range(ds, stored), [[0.0, 0.5, 1.0]], atol=1e-6)
    np.testing.assert_allclose(to_unit_range(ds, stored, window_index=1), [[0.0, 0.0, 1.0]], atol=1e-6)
    np.testing.assert_allclose(to_unit_range(ds, stored, window_index=7), [[0.0, 0.0, 1.0]], atol=1e-6)
    with pytest.raises(ValueError, match="window_index must be 0 or more, got -1"):
        to_unit_range(ds, stored, window_index=-1)


def test_invalid_linear_window_falls_back_to_the_percentile_window():
    stored = np.linspace(0, 4095, 64 * 64, dtype=np.float32).reshape(64, 64)
    unit = to_unit_range(_synthetic(WindowCenter=100, WindowWidth=0.5), stored)
    assert unit.min() == 0.0 and unit.max() == 1.0 and 0.45 < float(np.median(unit)) < 0.55


@pytest.mark.parametrize("function", ["LINEAR", "LINEAR_EXACT", "SIGMOID"])
@pytest.mark.parametrize("center", [2725, 100_000])  # every value above the window, every value below it
def test_a_window_that_shows_every_pixel_at_one_end_falls_back_to_the_percentile_window(function, center, caplog):
    # As a 16-bit DX of the pylibjpeg test set holds: values 32,744-65,535, a window of 70-5,380.
    stored = np.linspace(32744, 65535, 64 * 64, dtype=np.float32).reshape(64, 64)
    ds = _synthetic(WindowCenter=center, WindowWidth=5310, VOILUTFunction=function, BitsStored=16)
    with caplog.at_level(logging.INFO, logger="predraft.models.pixels"):
        unit = to_unit_range(ds, stored)
    assert unit.min() == 0.0 and unit.max() == 1.0 and 0.45 < float(np.median(unit)) < 0.55
    assert "leaves every pixel at one end of it (values 32744.0 to 65535.0)" in caplog.text


def test_a_window_that_cuts_through_the_values_is_kept_however_narrow():
    stored = np.array([[0, 1000, 1499, 1502, 4000]], dtype=np.float32)  # none inside 1499.5-1501.5: two levels
    unit = to_unit_range(_synthetic(WindowCenter=1500.5, WindowWidth=2.0, VOILUTFunction="LINEAR_EXACT"), stored)
    np.testing.assert_allclose(unit, [[0.0, 0.0, 0.0, 1.0, 1.0]], atol=1e-6)


def test_modality_rescale_is_applied_before_the_window():
    stored = np.array([[0, 50, 100]], dtype=np.float32)
    ds = _synthetic(
        RescaleSlope=2, RescaleIntercept=-100, WindowCenter=0, WindowWidth=200, VOILUTFunction="LINEAR_EXACT"
    )
    np.testing.assert_allclose(to_unit_range(ds, stored), [[0.0, 0.5, 1.0]], atol=1e-6)


def _lut_item(first: int, data: list[int], bits: int = 16) -> Dataset:
    item = Dataset()
    item.LUTDescriptor = [len(data), first, bits]
    item.LUTData = data
    return item


def test_modality_lut_sequence_is_applied():
    stored = np.array([[0, 1, 2, 3]], dtype=np.float32)
    ds = _synthetic(
        ModalityLUTSequence=Sequence([_lut_item(0, [10, 20, 30, 40])]),
        WindowCenter=25,
        WindowWidth=20,
        VOILUTFunction="LINEAR_EXACT",
    )
    np.testing.assert_allclose(to_unit_range(ds, stored), [[0.0, 0.25, 0.75, 1.0]], atol=1e-6)


def test_voi_lut_item_is_chosen_by_index_and_wins_over_the_window():
    stored = np.array([[-5, 10, 11, 12, 13, 99]], dtype=np.float32)
    ds = _synthetic(
        VOILUTSequence=Sequence([_lut_item(10, [100, 200, 300, 500]), _lut_item(10, [9, 7, 5, 1])]),
        WindowCenter=0,
        WindowWidth=2,
    )
    # Item 0 scaled by its entries' range 100..500; below the first mapped value -> first entry, above -> last.
    np.testing.assert_allclose(to_unit_range(ds, stored), [[0.0, 0.0, 0.25, 0.5, 1.0, 1.0]], atol=1e-6)
    np.testing.assert_allclose(to_unit_range(ds, stored, window_index=1), [[1.0, 1.0, 0.75, 0.5, 0.0, 0.0]], atol=1e-6)
    np.testing.assert_allclose(to_unit_range(ds, stored, window_index=5), [[1.0, 1.0, 0.75, 0.5, 0.0, 0.0]], atol=1e-6)


def test_presentation_lut_inverse_inverts_monochrome2():
    stored = np.array([[0, 100, 200]], dtype=np.float32)
    ds = _synthetic(WindowCenter=100, WindowWidth=200, VOILUTFunction="LINEAR_EXACT", PresentationLUTShape="INVERSE")
    np.testing.assert_allclose(to_unit_range(ds, stored), [[1.0, 0.5, 0.0]], atol=1e-6)


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


def test_real_window_keeps_full_bit_depth(real_path):
    ds = pydicom.dcmread(real_path("RG2_UNC.dcm"))
    unit = to_unit_range(ds, decode(ds))
    assert unit.dtype == np.float32
    assert len(np.unique(unit)) > 256  # more levels than uint8 could hold: nothing quantised yet


# --- collimation crop -------------------------------------------------------------------------------


def _anatomy(height: int = 200, width: int = 160, seed: int = 0) -> np.ndarray:
    """Textured 'anatomy': values 0.2-0.8 varying along every row and column."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    return (0.5 + 0.2 * np.sin(x / 7.0) * np.cos(y / 11.0) + rng.uniform(-0.1, 0.1, (height, width))).astype(np.float32)


def test_uniform_borders_are_cropped():
    image = _anatomy()
    image[:, :20] = 0.0  # a black shutter on the left
    image[:12, :] = 1.0  # a bright collimator band at the top (it crosses the shutter)
    image[:, -7:] = 0.97 + np.random.default_rng(1).uniform(-0.02, 0.02, (200, 7))  # a noisy bright band
    assert collimation_box(image) == (12, 200, 20, 153)
    assert crop_collimation(image).shape == (188, 133)


def test_image_without_borders_is_not_cropped():
    image = _anatomy()
    assert collimation_box(image) == (0, 200, 0, 160)
    assert crop_collimation(image) is not image and crop_collimation(image).shape == image.shape


def test_bright_metal_at_the_edge_is_never_cut():
    image = _anatomy()
    image[:, :20] = 0.0  # shutter
    image[60:140, 20:30] = 1.0  # metal touching the shutter's inner edge
    assert collimation_box(image)[2] == 20
    image = _anatomy()
    image[50:150, :8] = 1.0  # metal at the very edge of the image, no shutter
    assert collimation_box(image) == (0, 200, 0, 160)
    image = _anatomy()
    image[:, :16] = 1.0  # a bright collimator band ...
    image[0:200:40, 3] = 0.6  # ... that a wire of other value crosses: the crop stops at the wire
    assert collimation_box(image)[2] == 3


def test_crop_stops_at_a_change_of_border_value_and_at_forty_percent():
    image = _anatomy()
    image[:, :10] = 1.0
    image[:, 10:30] = 0.05  # uniform, but of another value: air beside a bright collimator band, kept
    assert collimation_box(image)[2] == 10
    image = _anatomy()
    image[:, :80] = 0.0  # a shutter over half the width: only 40 % of the width (64 columns) goes
    assert collimation_box(image)[2] == 64
    flat = np.full((100, 50), 0.3, dtype=np.float32)  # nothing but one value: nothing to crop
    assert collimation_box(flat) == (0, 100, 0, 50)


def test_real_collimation_is_cropped_and_anatomy_kept(real_path):
    ds = pydicom.dcmread(real_path("RG3_UNC.dcm"))
    unit = to_unit_range(ds, decode(ds))
    top, bottom, left, right = collimation_box(unit)
    assert left > 300 and 1760 - right > 300  # the white collimator bands on both sides
    assert (top, bottom) == (0, 1760)  # the leg runs off the top and bottom: nothing to crop there
    cropped = unit[top:bottom, left:right]
    # the leg (air, skin, tibia, fibula) is all still there: columns from x=0.29 to 0.70 of the image
    assert left < 0.29 * 1760 and right > 0.70 * 1760
    assert cropped.min() < 0.1 and cropped.max() > 0.9


# --- orientation, split, letterbox ------------------------------------------------------------------


def _pelvis_with_metal_on_the_patients_left(patient_orientation: list[str] | None) -> np.ndarray:
    """A synthetic AP pelvis (200 x 300) with a bright metal implant in the patient's left hip only.

    In the standard display (rows toward the patient's left, PatientOrientation L\\F) the patient's
    left is on the image's right; with R\\F the image is mirrored and it is on the image's left.
    """
    image = _anatomy(200, 300)
    left_hip_columns = slice(200, 240)  # image right half, in the standard display
    image[80:160, left_hip_columns] = 1.0
    if patient_orientation and patient_orientation[0] == "R":
        image = image[:, ::-1].copy()
    return image


@pytest.mark.parametrize("orientation", [["L", "F"], ["R", "F"], None, ["LH", "FL"]])
def test_hardware_on_the_patients_left_lands_in_the_left_hip(orientation):
    image = _pelvis_with_metal_on_the_patients_left(orientation)
    halves = split_bilateral(image, orientation)
    metal = {side: int((half >= 0.99).sum()) for side, half in halves.items()}
    assert metal[Side.LEFT] >= 80 * 40 and metal[Side.RIGHT] == 0
    assert halves[Side.LEFT].shape == halves[Side.RIGHT].shape == (200, 150)


def test_split_bilateral_puts_the_patients_right_on_the_images_left():
    image = np.tile(np.arange(10, dtype=np.float32), (4, 1))
    for orientation in (None, [], ["L", "F"], "", ["A", "F"], ["X", "Y"]):
        halves = split_bilateral(image, orientation)
        np.testing.assert_array_equal(halves[Side.RIGHT], image[:, :5])
        np.testing.assert_array_equal(halves[Side.LEFT], image[:, 5:])


def test_split_bilateral_mirrors_an_image_whose_rows_run_toward_the_patients_right():
    image = np.tile(np.arange(10, dtype=np.float32), (4, 1))
    halves = split_bilateral(image, ["R", "F"])
    np.testing.assert_array_equal(halves[Side.RIGHT], image[:, 5:][:, ::-1])
    np.testing.assert_array_equal(halves[Side.LEFT], image[:, :5][:, ::-1])


def test_split_bilateral_odd_width_gives_equal_halves_without_the_midline():
    image = np.tile(np.arange(7, dtype=np.float32), (3, 1))
    halves = split_bilateral(image, ["L", "F"])
    np.testing.assert_array_equal(halves[Side.RIGHT][0], [0, 1, 2])
    np.testing.assert_array_equal(halves[Side.LEFT][0], [4, 5, 6])


# A 2 x 3 image whose corners are marked; PatientOrientation of the stored image -> the standard one
# (rows toward the patient's left, columns toward the feet).
_MARKED = np.array([[1, 2, 3], [4, 5, 6]], dtype=np.float32)


@pytest.mark.parametrize(
    "orientation, expected",
    [
        (["L", "F"], _MARKED),
        (["R", "F"], _MARKED[:, ::-1]),
        (["L", "H"], _MARKED[::-1, :]),
        (["R", "H"], _MARKED[::-1, ::-1]),
        (["F", "L"], _MARKED.T),
        (["H", "R"], _MARKED.T[::-1, ::-1]),
        (["F", "R"], _MARKED.T[:, ::-1]),
        (["A", "F"], _MARKED),  # a lateral: no left-right axis, left as it is
        (None, _MARKED),
    ],
)
def test_standard_orientation(orientation, expected):
    np.testing.assert_array_equal(standard_orientation(_MARKED, orientation), expected)


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


def test_letterbox_of_a_large_image_keeps_hardware_at_its_edges():
    image = np.full((2141, 1763), 0.25, dtype=np.float32)  # odd sizes: partial blocks at the edges
    image[:, -12:] = 1.0  # metal along the right edge
    image[:9, :] = 0.75  # a band along the top edge
    boxed = letterbox(image, 380)
    new_w = round(1763 * 380 / 2141)
    left = (380 - new_w) // 2
    assert boxed.shape == (380, 380)
    assert (boxed[:, :left] == 0).all() and (boxed[:, left + new_w :] == 0).all()
    assert boxed[190, left + new_w - 1] >= 250  # the metal reaches the last image column
    assert 180 <= boxed[0, 190] <= 200  # the top band reaches the first row
    assert boxed[190, 190] == 64  # 0.25 * 255, rounded


@pytest.mark.parametrize(("height", "width", "k"), [(12, 18, 3), (13, 17, 3), (2141, 1763, 6), (1070, 1628, 4)])
def test_block_means_are_the_means_of_their_blocks_partial_ones_included(height: int, width: int, k: int) -> None:
    image = np.random.default_rng(height).random((height, width), dtype=np.float32)
    expected = np.array(
        [
            [image[top : top + k, left : left + k].mean(dtype=np.float64) for left in range(0, width, k)]
            for top in range(0, height, k)
        ]
    )
    means = pixels._block_mean(image, k)
    assert means.dtype == np.float32 and means.shape == expected.shape
    np.testing.assert_allclose(means, expected, atol=1e-6)


def test_letterbox_refuses_a_size_below_one():
    with pytest.raises(ValueError, match="size must be at least 1, got 0"):
        letterbox(np.ones((4, 4), dtype=np.float32), 0)


@pytest.mark.parametrize(
    "attributes",
    [
        dict(WindowCenter=2048, WindowWidth=1000),
        dict(WindowCenter=2048, WindowWidth=1000, VOILUTFunction="SIGMOID"),
        dict(RescaleSlope=2, RescaleIntercept=-10, WindowCenter=4000, WindowWidth=3000),
        dict(),
        dict(BitsStored=8, BitsAllocated=8),  # display values: full range
    ],
)
def test_the_input_is_kept_unless_overwriting_is_allowed(attributes):
    top = 256 if attributes.get("BitsStored") == 8 else 4096
    stored = np.random.default_rng(2).integers(0, top, size=(40, 30)).astype(np.float32)
    original = stored.copy()
    ds = _synthetic(**attributes)
    kept = to_unit_range(ds, stored)
    np.testing.assert_array_equal(stored, original)
    overwritten = to_unit_range(ds, stored, overwrite_input=True)
    np.testing.assert_array_equal(overwritten, kept)
    assert (overwritten is stored) == ("RescaleSlope" not in attributes)  # a rescale makes its own array


def test_an_8_bit_image_without_window_is_read_full_range_as_its_jpeg_was():
    """A JPEG export wrapped in DICOM (8 bits, no window, no rescale) reads as the JPEG reads (value / 255), the way
    the gate's and the demo model's FracAtlas training images were read; a percentile window would stretch it."""

    rng = np.random.default_rng(3)
    grey = np.clip(rng.normal(90, 30, size=(64, 64)), 20, 200).astype(np.uint8)  # a film that never reaches 0 or 255
    ds = _synthetic(BitsStored=8, BitsAllocated=8)
    unit = to_unit_range(ds, grey.astype(np.float32))
    np.testing.assert_allclose(unit, grey / 255.0, atol=1e-6)
    assert unit.max() < 0.8  # not stretched to white, as a percentile window would
    ds.PhotometricInterpretation = "MONOCHROME1"
    np.testing.assert_allclose(to_unit_range(ds, grey.astype(np.float32)), 1 - grey / 255.0, atol=1e-6)


@pytest.mark.parametrize("bits", [12, 16])
def test_8_bit_values_stored_deeper_without_window_are_read_full_range_too(bits):
    """The same JPEG stored in 12 or 16 bits, its values unchanged (all from 0 to 255), reads as the JPEG reads: a
    radiograph's raw values never all fit in 8 bits. One value above 255 and it is raw values again."""
    rng = np.random.default_rng(4)
    grey = np.clip(rng.normal(90, 30, size=(64, 64)), 20, 200).astype(np.uint8).astype(np.float32)
    ds = _synthetic(BitsStored=bits, BitsAllocated=16)
    np.testing.assert_allclose(to_unit_range(ds, grey.copy()), grey / 255.0, atol=1e-6)
    ds.PhotometricInterpretation = "MONOCHROME1"
    np.testing.assert_allclose(to_unit_range(ds, grey.copy()), 1 - grey / 255.0, atol=1e-6)
    ds.PhotometricInterpretation = "MONOCHROME2"
    grey[40, 17] = 256.0  # one pixel past 8 bits
    unit = to_unit_range(ds, grey)
    assert unit.min() == 0.0 and unit.max() == 1.0  # the percentile window: stretched


def test_one_value_off_the_grid_where_the_subsample_does_not_look_still_counts():
    """The subsample settles most images at once; an image it passes is checked whole, so a raw image with one
    value past 8 bits (or off the shift's grid) on a row the subsample skips keeps the percentile window."""
    rng = np.random.default_rng(6)
    grey = np.clip(rng.normal(90, 30, size=(1200, 1000)), 20, 200).astype(np.uint8).astype(np.float32)
    ds = _synthetic(BitsStored=12, BitsAllocated=16)
    assert pixels._subsample(grey).shape == (600, 500)  # every second row and column
    np.testing.assert_allclose(to_unit_range(ds, grey.copy()), grey / 255.0, atol=1e-6)
    past = grey.copy()
    past[401, 301] = 256.0  # an odd row and column: not in the subsample
    assert to_unit_range(ds, past).min() == 0.0  # stretched by the percentile window (as display values: 20 / 255)
    shifted = grey * 16
    shifted[401, 301] += 1
    assert to_unit_range(ds, shifted).min() == 0.0


@pytest.mark.parametrize(("bits", "scale"), [(12, 16), (16, 256), (16, 257), (10, 4)])
def test_8_bit_values_scaled_deeper_without_window_are_read_full_range(bits, scale):
    """An 8-bit picture shifted to the depth (or spread over 16 bits by 257) reads as the picture reads; the same
    values off by one anywhere are raw values again, and get the percentile window."""
    rng = np.random.default_rng(5)
    grey = np.clip(rng.normal(90, 30, size=(64, 64)), 20, 200).astype(np.uint8).astype(np.float32)
    ds = _synthetic(BitsStored=bits, BitsAllocated=16)
    np.testing.assert_allclose(to_unit_range(ds, grey * scale), grey / 255.0, atol=1e-6)
    raw = grey * scale
    raw[33, 21] += 1
    unit = to_unit_range(ds, raw)
    assert unit.min() == 0.0 and unit.max() == 1.0  # the percentile window: stretched


@pytest.mark.parametrize(
    "attributes",
    [
        {"BitsStored": 12, "BitsAllocated": 16, "offset": 256},  # deeper, with values past 8 bits: raw values
        {"BitsStored": 8, "BitsAllocated": 8, "RescaleSlope": 2, "RescaleIntercept": 0},  # a modality transform
        {"BitsStored": 8, "BitsAllocated": 8, "PixelRepresentation": 1},  # signed
    ],
)
def test_other_images_without_window_keep_the_percentile_window(attributes):
    attributes = dict(attributes)
    offset = attributes.pop("offset", 0)
    grey = np.linspace(20, 200, 64 * 64, dtype=np.float32).reshape(64, 64) + offset
    unit = to_unit_range(_synthetic(**attributes), grey)
    assert unit.min() == 0.0 and unit.max() == 1.0  # stretched: the 0.5th and 99.5th percentiles
