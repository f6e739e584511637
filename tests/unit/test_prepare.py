"""predraft.models.prepare (from a DICOM file to letterboxed hip images) and the hip images' task messages."""

from __future__ import annotations

import json

import numpy as np
import pydicom
import pytest
from pydicom.errors import InvalidDicomError

from predraft.models.pixels import PixelDataError
from predraft.models.prepare import HipImage, OutOfScopeError, prepare_file
from predraft.models.taskcard import GATE_CARD
from predraft.models.taxonomy import Side, View
from predraft.models.views import TagRegion
from predraft.workers.gate import load_gate
from tests.conftest import fracatlas_file, jpeg_as_cr, jpeg_as_dicom


def test_demo_ap_pelvis_gives_right_then_left_hip_of_the_requested_size(demo_study):
    pelvis = demo_study[0]
    assert pelvis.view is View.AP_PELVIS
    labels, hips, *_ = prepare_file(pelvis.path, input_size=96)

    assert labels.view is View.AP_PELVIS and labels.in_scope
    assert [hip.side for hip in hips] == [Side.RIGHT, Side.LEFT]
    for hip in hips:
        assert hip.view is View.AP_PELVIS
        assert hip.pixels.shape == (96, 96) and hip.pixels.dtype == np.uint8
        assert hip.pixels.max() > 200 and hip.pixels.std() > 10


def test_the_right_hip_image_holds_the_phantoms_prosthesis(demo_study):
    # The phantom has a total hip arthroplasty (drawn at full scale) on the patient's right only.
    _, hips, *_ = prepare_file(demo_study[0].path, input_size=128)
    bright = {hip.side: int((hip.pixels > 200).sum()) for hip in hips}
    assert bright[Side.RIGHT] > 3 * bright[Side.LEFT]


def test_demo_frog_leg_gives_one_right_hip(demo_study):
    frog = demo_study[1]
    labels, hips, *_ = prepare_file(frog.path, input_size=64)
    assert labels.view is View.FROG_LEG
    assert [(hip.side, hip.view, hip.pixels.shape) for hip in hips] == [(Side.RIGHT, View.FROG_LEG, (64, 64))]


def test_real_native_hip_gives_one_hip_of_unknown_side(real_path):
    labels, hips, *_ = prepare_file(real_path("RG2_UNC.dcm"), input_size=64)
    assert labels.in_scope and labels.view is View.UNKNOWN
    assert len(hips) == 1 and hips[0].side is Side.UNKNOWN
    pixels = hips[0].pixels
    assert pixels.shape == (64, 64)
    # 2140 x 1760 letterboxed: columns padded at both edges, image in the middle
    assert (pixels[:, :3] == 0).all() and (pixels[:, -3:] == 0).all()
    assert pixels[:, 8:56].std() > 10


@pytest.mark.parametrize("name, body_part", [("RG3_UNC.dcm", "EXTREMITY"), ("NM_Kakadu44_SOTmarkerincons.dcm", "HAND")])
def test_other_limb_images_are_prepared_for_the_gate_to_decide(real_path, name, body_part):
    labels, hips, gate_pixels, halves, crop = prepare_file(
        real_path(name), input_size=64, gate_size=48, with_halves=True
    )
    assert crop is None  # no implant crop unless a pack framed implant_crop asks for it
    assert labels.tag_region is TagRegion.LIMB and labels.body_part == body_part and not labels.in_scope
    assert [hip.view for hip in hips] == [View.UNKNOWN]  # one hip, the whole image, should the gate read a hip
    assert gate_pixels.shape == (48, 48) and gate_pixels.dtype == np.uint8 and gate_pixels.std() > 10
    assert labels.sides == (Side.RIGHT,) and halves == ()  # a side in the tags: one limb, never split


def test_the_implant_crop_is_one_side_of_the_tags_side_when_asked(real_path):
    prepared = prepare_file(real_path("NM_Kakadu44_SOTmarkerincons.dcm"), input_size=64, with_implant_crop=True)
    assert prepared.crop is not None and prepared.crop.pixels.shape == (64, 64)
    assert (prepared.crop.side, prepared.crop.view) == (Side.RIGHT, View.UNKNOWN)


def test_no_gate_image_unless_asked(real_path):
    assert prepare_file(real_path("RG2_UNC.dcm"), input_size=64).gate_pixels is None


def test_an_image_whose_tags_name_no_view_nor_side_also_gives_its_halves_as_an_ap_pelvis(real_path):
    prepared = prepare_file(real_path("RG2_UNC.dcm"), input_size=64, gate_size=48, with_halves=True)
    assert prepared.labels.view is View.UNKNOWN and prepared.labels.sides == (Side.UNKNOWN,)
    assert [hip.view for hip in prepared.hips] == [View.UNKNOWN]  # the tags' reading stays the default
    right, left = prepared.halves  # the gate's field head chooses between the two (predraft.workers.gate)
    assert (right.side, right.view, left.side, left.view) == (Side.RIGHT, View.AP_PELVIS, Side.LEFT, View.AP_PELVIS)
    assert right.pixels.shape == left.pixels.shape == (64, 64)
    assert right.pixels.std() > 10 and left.pixels.std() > 10 and not np.array_equal(right.pixels, left.pixels)
    assert prepare_file(real_path("RG2_UNC.dcm"), input_size=64, gate_size=48).halves == ()  # only when asked


def test_no_halves_when_the_tags_name_the_view(demo_study):
    for image in demo_study:  # AP pelvis, frog-leg, cross-table lateral, all tagged
        assert prepare_file(image.path, input_size=64, gate_size=48, with_halves=True).halves == ()


def test_real_chest_is_out_of_scope(real_path):
    with pytest.raises(OutOfScopeError, match="CHEST"):
        prepare_file(real_path("RG1_J2KR.dcm"), input_size=64)


def test_undecodable_hip_raises_pixel_data_error(real_path):
    with pytest.raises(PixelDataError, match="could not be decoded"):
        prepare_file(real_path("RG2_JPLY.dcm"), input_size=64)


def test_not_a_radiograph_sop_class_is_out_of_scope(demo_study, tmp_path):
    ds = pydicom.dcmread(demo_study[0].path)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.4"  # MR Image Storage
    path = tmp_path / "mr.dcm"
    ds.save_as(path, enforce_file_format=True)
    with pytest.raises(OutOfScopeError, match="SOP class 1.2.840.10008.5.1.4.1.1.4"):
        prepare_file(path, input_size=64)


def test_not_a_dicom_file_raises_invalid_dicom(tmp_path):
    path = tmp_path / "junk.dcm"
    path.write_bytes(b"this is not DICOM" * 20)
    with pytest.raises(InvalidDicomError, match="not a readable DICOM file"):
        prepare_file(path, input_size=64)


def test_hip_image_message_round_trip():
    pixels = np.random.default_rng(0).integers(0, 256, size=(32, 32), dtype=np.uint8)
    hip = HipImage(Side.LEFT, View.FROG_LEG, pixels)
    message = json.loads(json.dumps(hip.to_message()))  # what the broker carries

    assert (message["side"], message["view"], message["size"]) == ("left", "frog_leg", 32)
    back = HipImage.from_message(message)
    assert (back.side, back.view) == (Side.LEFT, View.FROG_LEG)
    assert back.pixels.dtype == np.uint8
    np.testing.assert_array_equal(back.pixels, pixels)


def test_prepared_hips_round_trip_through_messages(demo_study):
    gate = load_gate(GATE_CARD)
    hips = gate.apply(prepare_file(demo_study[0].path, input_size=64, gate_size=gate.size)).hips
    assert all(hip.metal is not None for hip in hips)
    for hip in hips:
        back = HipImage.from_message(json.loads(json.dumps(hip.to_message())))
        assert (back.side, back.view) == (hip.side, hip.view)
        np.testing.assert_array_equal(back.pixels, hip.pixels)
        assert back.metal == hip.metal


def test_the_gate_checks_every_prepared_hip_for_hardware(demo_study):
    """The demo study: a right THA and a native left hip on the AP pelvis, read by the bundled gate."""
    gate = load_gate(GATE_CARD)
    prepared = prepare_file(demo_study[0].path, input_size=192, gate_size=gate.size)  # the demo model's edge
    assert all(hip.metal is None for hip in prepared.hips)  # the child decodes; the gate's network checks
    gated = gate.apply(prepared)
    assert gated.decision.in_scope and gated.reading.top[0] == "hip"
    metal = {hip.side: hip.metal for hip in gated.hips}
    assert metal[Side.RIGHT].present and not metal[Side.LEFT].present
    assert metal[Side.RIGHT].reason.startswith("hardware check ")


def test_message_with_the_wrong_size_is_refused():
    message = HipImage(Side.RIGHT, View.AP_HIP, np.zeros((32, 32), dtype=np.uint8)).to_message()
    message["size"] = 31
    with pytest.raises(ValueError, match="holds 1024 bytes, expected 961"):
        HipImage.from_message(message)


def test_message_with_an_unknown_side_is_refused():
    message = HipImage(Side.RIGHT, View.AP_HIP, np.zeros((4, 4), dtype=np.uint8)).to_message()
    message["side"] = "middle"
    with pytest.raises(ValueError, match="middle"):
        HipImage.from_message(message)


# --- scope, decoding, windows, crop and sides through prepare_file --------------------------------------


@pytest.mark.parametrize(
    "name, body_part",
    [
        ("RG1_UNCR.dcm", "CHEST"),  # CR chest PA
        ("966_fixed.dcm", "CHEST"),  # DX chest
        ("dx_image.dcm", "THORAX"),  # DX thorax
    ],
)
def test_chest_images_never_get_a_hip_draft_nor_reach_the_gate(real_path, name, body_part):
    with pytest.raises(OutOfScopeError, match=f"body part {body_part} is not a hip or pelvis .*does not overrule"):
        prepare_file(real_path(name), input_size=64, gate_size=48)


def test_12_bit_jpeg_extended_hip_is_prepared(real_path):
    labels, hips, *_ = prepare_file(real_path("RG2_JPLY_fixed.dcm"), input_size=64)
    _, reference, *_ = prepare_file(real_path("RG2_UNC.dcm"), input_size=64)
    assert labels.in_scope and len(hips) == 1
    assert np.abs(hips[0].pixels.astype(int) - reference[0].pixels.astype(int)).mean() < 1.0


@pytest.mark.parametrize("name", ["RG2_JPLY.dcm", "RG3_JPLY.dcm"])
def test_bad_jpeg_streams_fail_naming_the_transfer_syntax(real_path, name, monkeypatch, tmp_path):
    ds = pydicom.dcmread(real_path(name))
    ds.BodyPartExamined = "HIP"  # RG3 is a tibia: make it in scope so the pixels are read
    path = tmp_path / name
    ds.save_as(path)
    with pytest.raises(PixelDataError, match=r"transfer syntax 1\.2\.840\.10008\.1\.2\.4\.51 \(JPEG Extended"):
        prepare_file(path, input_size=64)


def _write_pelvis(path, stored: np.ndarray, orientation, **tags) -> None:
    """A CR AP pelvis with the given 12-bit stored values and PatientOrientation."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality, ds.BodyPartExamined, ds.ViewPosition = "CR", "PELVIS", "AP"
    if orientation is not None:
        ds.PatientOrientation = orientation
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.WindowCenter, ds.WindowWidth = 2048, 4096
    for keyword, value in tags.items():
        setattr(ds, keyword, value)
    ds.PixelData = stored.astype("<u2").tobytes()
    ds.save_as(path, enforce_file_format=True)


def _pelvis_stored(height: int = 300, width: int = 400, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    return (2000 + 600 * np.sin(x / 9.0) * np.cos(y / 13.0) + rng.integers(-300, 300, (height, width))).astype(
        np.uint16
    )


def _metal_per_side(hips) -> dict[Side, int]:
    return {hip.side: int((hip.pixels >= 250).sum()) for hip in hips}


@pytest.mark.parametrize("orientation", [["L", "F"], None, ["R", "F"]])
def test_hardware_only_on_the_patients_left_is_in_the_left_hip(tmp_path, orientation):
    stored = _pelvis_stored()
    # the patient's left is on the image's right in the standard display (L\F, or no orientation) ...
    columns = slice(280, 340)
    if orientation == ["R", "F"]:  # ... and on the image's left when the rows run toward the patient's right
        columns = slice(60, 120)
    stored[100:220, columns] = 4095
    _write_pelvis(tmp_path / "pelvis.dcm", stored, orientation)
    labels, hips, *_ = prepare_file(tmp_path / "pelvis.dcm", input_size=96)
    assert labels.view is View.AP_PELVIS and [hip.side for hip in hips] == [Side.RIGHT, Side.LEFT]
    metal = _metal_per_side(hips)
    assert metal[Side.LEFT] > 300 and metal[Side.RIGHT] == 0


def test_collimation_is_cropped_before_the_midline_split(tmp_path):
    stored = _pelvis_stored()
    stored[:, :120] = 0  # a shutter over the image's left 120 columns: the exposed field is columns 120-400
    stored[100:220, 215:250] = 4095  # left of the field's midline (260), right of the image's (200)
    _write_pelvis(tmp_path / "pelvis.dcm", stored, ["L", "F"])
    _, hips, *_ = prepare_file(tmp_path / "pelvis.dcm", input_size=96)
    metal = _metal_per_side(hips)
    assert metal[Side.RIGHT] > 100 and metal[Side.LEFT] == 0
    assert all((hip.pixels[:, 30:66] > 0).all() for hip in hips)  # no black shutter left inside either hip


def test_voi_window_index_chooses_the_window(tmp_path):
    _write_pelvis(
        tmp_path / "pelvis.dcm", _pelvis_stored(), ["L", "F"], WindowCenter=[2048, 1300], WindowWidth=[4096, 200]
    )
    _, first, *_ = prepare_file(tmp_path / "pelvis.dcm", input_size=64)
    _, second, *_ = prepare_file(tmp_path / "pelvis.dcm", input_size=64, voi_window_index=1)
    _, past_the_last, *_ = prepare_file(tmp_path / "pelvis.dcm", input_size=64, voi_window_index=9)
    middle = (slice(20, 44), slice(14, 50))  # inside the 43 x 64 hip image, clear of the padding
    assert 100 < first[0].pixels[middle].mean() < 160  # values 1100-2900 in a 0-4095 window
    # The narrow window at 1200-1400 saturates nearly all of them (one that saturated every pixel would give way
    # to the percentile window: models/pixels.py).
    assert second[0].pixels[middle].mean() > 220
    np.testing.assert_array_equal(past_the_last[0].pixels, second[0].pixels)


@pytest.mark.parametrize("name", ["IMG0000453.jpg", "IMG0000026.jpg"])  # a hip with a plate; a knee
def test_a_real_jpeg_sent_as_8_bit_dicom_reaches_the_gate_as_the_gate_learned_it(name, tmp_path):
    """FracAtlas films were learned from as JPEGs (grey / 255). Wrapped in DICOM as a digitiser or a PACS export
    would (8 bits, no window), the service's gate image is the training image, not a contrast-stretched copy."""
    from predraft.models.pixels import letterbox
    from predraft.models.taskdata import crop_image, read_grey

    jpeg = fracatlas_file(name)
    gate = load_gate(GATE_CARD)
    learned = letterbox(crop_image(read_grey(jpeg), "whole"), gate.size)
    served = prepare_file(jpeg_as_cr(jpeg, tmp_path / "film.dcm"), input_size=64, gate_size=gate.size).gate_pixels
    assert served is not None
    assert int(np.abs(served.astype(np.int16) - learned).max()) <= 1  # float rounding of a few pixels, no more
    readings = gate.model.predict(np.stack([served, learned]))
    for task in ("region", "hardware"):
        np.testing.assert_allclose(readings[task][0], readings[task][1], atol=1e-3)


#: Multi-frame Grayscale Byte Secondary Capture Image Storage: what dcmtk's img2dcm --new-sc makes of a grey JPEG.
MULTIFRAME_GREY_SC = "1.2.840.10008.5.1.4.1.1.7.2"


def test_a_film_as_a_one_frame_multi_frame_secondary_capture_reads_as_the_same_film_as_cr(tmp_path):
    jpeg = fracatlas_file("IMG0000453.jpg")
    as_cr = prepare_file(jpeg_as_cr(jpeg, tmp_path / "cr.dcm", BodyPartExamined="HIP"), input_size=64)
    as_sc = prepare_file(
        jpeg_as_dicom(jpeg, tmp_path / "sc.dcm", MULTIFRAME_GREY_SC, frames=1, BodyPartExamined="HIP"), input_size=64
    )
    assert len(as_sc.hips) == len(as_cr.hips) == 1
    np.testing.assert_array_equal(as_sc.hips[0].pixels, as_cr.hips[0].pixels)


@pytest.mark.parametrize(("frames", "reason"), [("1.0", None), ("0", "NumberOfFrames is 0"), ("x", "not a number")])
def test_number_of_frames_is_read_as_pydicom_reads_it(tmp_path, frames, reason):
    from pydicom.dataelem import RawDataElement
    from pydicom.tag import Tag

    from predraft.models.pixels import decode

    jpeg = fracatlas_file("IMG0000453.jpg")
    ds = pydicom.dcmread(jpeg_as_dicom(jpeg, tmp_path / "sc.dcm", MULTIFRAME_GREY_SC, frames=1))
    raw = f"{frames:<{len(frames) + len(frames) % 2}}".encode()
    ds[0x00280008] = RawDataElement(Tag(0x00280008), "IS", len(raw), raw, 0, False, True)
    if reason is None:
        assert decode(ds).shape == (ds.Rows, ds.Columns)
    else:
        with pytest.raises(PixelDataError, match=reason):
            decode(ds)


def test_a_multi_frame_image_of_several_frames_is_refused_with_its_reason(tmp_path):
    jpeg = fracatlas_file("IMG0000453.jpg")
    path = jpeg_as_dicom(jpeg, tmp_path / "sc.dcm", MULTIFRAME_GREY_SC, frames=2, BodyPartExamined="HIP")
    with pytest.raises(PixelDataError, match="2 frames"):
        prepare_file(path, input_size=64)
