"""workers.prepare: from a spooled DICOM file to letterboxed hip images, and their task messages."""

from __future__ import annotations

import json

import numpy as np
import pydicom
import pytest
from pydicom.errors import InvalidDicomError

from models.pixels import PixelDataError
from models.taxonomy import Side, View
from workers.prepare import HipImage, OutOfScopeError, prepare_file


def test_demo_ap_pelvis_gives_right_then_left_hip_of_the_requested_size(demo_study):
    pelvis = demo_study[0]
    assert pelvis.view is View.AP_PELVIS
    labels, hips = prepare_file(pelvis.path, input_size=96)

    assert labels.view is View.AP_PELVIS and labels.in_scope
    assert [hip.side for hip in hips] == [Side.RIGHT, Side.LEFT]
    for hip in hips:
        assert hip.view is View.AP_PELVIS
        assert hip.pixels.shape == (96, 96) and hip.pixels.dtype == np.uint8
        assert hip.pixels.max() > 200 and hip.pixels.std() > 10


def test_the_right_hip_image_holds_the_phantoms_prosthesis(demo_study):
    # The phantom has a total hip arthroplasty (drawn at full scale) on the patient's right only.
    _, hips = prepare_file(demo_study[0].path, input_size=128)
    bright = {hip.side: int((hip.pixels > 200).sum()) for hip in hips}
    assert bright[Side.RIGHT] > 3 * bright[Side.LEFT]


def test_demo_frog_leg_gives_one_right_hip(demo_study):
    frog = demo_study[1]
    labels, hips = prepare_file(frog.path, input_size=64)
    assert labels.view is View.FROG_LEG
    assert [(hip.side, hip.view, hip.pixels.shape) for hip in hips] == [(Side.RIGHT, View.FROG_LEG, (64, 64))]


def test_real_native_hip_gives_one_hip_of_unknown_side(real_path):
    labels, hips = prepare_file(real_path("RG2_UNC.dcm"), input_size=64)
    assert labels.in_scope and labels.view is View.UNKNOWN
    assert len(hips) == 1 and hips[0].side is Side.UNKNOWN
    pixels = hips[0].pixels
    assert pixels.shape == (64, 64)
    # 2140 x 1760 letterboxed: columns padded at both edges, image in the middle
    assert (pixels[:, :3] == 0).all() and (pixels[:, -3:] == 0).all()
    assert pixels[:, 8:56].std() > 10


def test_real_tibia_is_out_of_scope(real_path):
    with pytest.raises(OutOfScopeError, match="body part EXTREMITY is not a hip or pelvis"):
        prepare_file(real_path("RG3_UNC.dcm"), input_size=64)


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
    _, hips = prepare_file(demo_study[0].path, input_size=64)
    for hip in hips:
        back = HipImage.from_message(hip.to_message())
        assert (back.side, back.view) == (hip.side, hip.view)
        np.testing.assert_array_equal(back.pixels, hip.pixels)


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
