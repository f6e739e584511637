"""Real radiographs through a real ``predraft serve``: the body-part gate decides with the tags.

- a real knee (a FracAtlas AP knee, and one with a tibial nail) and a real tibia (NEMA RG3, never trained
  on) sent with BodyPartExamined PELVIS: out of scope, the reason naming the tags and the gate's reading;
- a real native hip (NEMA RG2, never trained on) sent without any body-part tag or description: drafted,
  its instance flagged "no body-part tags".
"""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid

from tests.conftest import fracatlas_file, jpeg_as_cr, jpeg_as_dicom, real_file
from tests.e2e.conftest import Deployment

pytestmark = pytest.mark.slow

#: Tags that say what an image shows: gone from the "untagged" copy.
BODY_PART_TAGS = (
    "BodyPartExamined",
    "AnatomicRegionSequence",
    "StudyDescription",
    "SeriesDescription",
    "ProtocolName",
    "ViewPosition",
    "ViewCodeSequence",
    "ImageLaterality",
    "Laterality",
)


def retagged(source: Path, target: Path, *, body_part: str | None) -> Path:
    """``source`` as a new study, with BodyPartExamined ``body_part`` (None: every body-part tag removed)."""
    ds = pydicom.dcmread(source)
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    for keyword in BODY_PART_TAGS:
        if keyword in ds:
            delattr(ds, keyword)
    if body_part is not None:
        ds.BodyPartExamined = body_part
    ds.save_as(target)
    return target


def test_real_knees_and_tibia_tagged_pelvis_are_out_of_scope_with_the_reason(
    embedded: Deployment, tmp_path: Path
) -> None:
    files = [
        jpeg_as_cr(fracatlas_file("IMG0000026.jpg"), tmp_path / "knee.dcm", BodyPartExamined="PELVIS"),
        jpeg_as_cr(fracatlas_file("IMG0000092.jpg"), tmp_path / "knee-nail.dcm", BodyPartExamined="PELVIS"),
        retagged(real_file("RG3_UNC.dcm"), tmp_path / "tibia.dcm", body_part="PELVIS"),
    ]
    embedded.storescu(*files)
    for path in files:
        study_uid = str(pydicom.dcmread(path, stop_before_pixels=True).StudyInstanceUID)
        detail = embedded.wait_for_study(study_uid)
        assert detail["state"] == "out_of_scope", (path.name, detail)
        (instance,) = detail["instances"]
        assert instance["state"] == "skipped"
        assert instance["error"].startswith("tags say PELVIS, the image reads as "), instance
        assert instance["region_read"] != "hip" and instance["region_probability"] >= 0.5
        assert detail["draft"] is None
        if path.name.startswith("knee"):
            # read as the JPEG the gate learned from (8 bits, no window: full range), the knees are sure legs
            assert instance["error"].startswith("tags say PELVIS, the image reads as leg, knee or ankle, "), instance
            assert instance["region_read"] == "leg" and instance["region_probability"] >= 0.9, instance
    # (The NEMA tibia, a CR of another era, reads as leg at only 0.54 with gate 1.3.0; 1.2.0 read it as hand at
    # 0.51, the region wrong, the decision right. The figures in the README say how often each happens.)


def test_real_hip_without_tags_is_drafted_and_flagged(embedded: Deployment, tmp_path: Path) -> None:
    path = retagged(real_file("RG2_UNC.dcm"), tmp_path / "hip.dcm", body_part=None)
    embedded.storescu(path)
    detail = embedded.wait_for_study(str(pydicom.dcmread(path, stop_before_pixels=True).StudyInstanceUID))
    assert detail["state"] == "drafted", detail
    (instance,) = detail["instances"]
    assert instance["region_read"] == "hip"
    assert instance["scope_flag"] == "no body-part tags"
    assert instance["scope_note"].startswith("no body-part tags; the image reads as hip or pelvis, ")
    # RG2 shows one hip beside the lumbar spine and sacrum. Gate 1.3.0's field head reads it as an AP pelvis
    # (0.93 against its threshold 0.63; 1.2.0 read 0.36 and left it one hip of unknown view), so it is drafted
    # as two hips by the AP convention, with the note to check the sides: a known misreading (README, "Not yet").
    assert (instance["view"], instance["view_rule"], instance["side"]) == (
        "ap_pelvis",
        "image (field head)",
        "right+left",
    )
    assert "the image reads as an AP pelvis (0.9" in instance["scope_note"]
    assert [prediction["top_class"] for prediction in instance["predictions"]] == ["none", "none"]  # by the hip model
    assert "Right hip: " in detail["draft"]["text"] and "Left hip: " in detail["draft"]["text"]


def test_real_ap_pelvis_without_tags_is_drafted_as_two_hips_with_sides_by_convention(
    embedded: Deployment, tmp_path: Path
) -> None:
    # A FracAtlas AP pelvis without hardware (in the gate's training data: this checks the plumbing, the
    # README gives the field head's cross-validated figures), sent as a CR with no tag that names a view or side.
    path = jpeg_as_cr(fracatlas_file("IMG0000463.jpg"), tmp_path / "pelvis.dcm")
    embedded.storescu(path)
    detail = embedded.wait_for_study(str(pydicom.dcmread(path, stop_before_pixels=True).StudyInstanceUID))
    assert detail["state"] == "drafted", detail
    (instance,) = detail["instances"]
    assert instance["region_read"] == "hip" and instance["scope_flag"] == "no body-part tags"
    assert (instance["view"], instance["view_rule"], instance["side"]) == (
        "ap_pelvis",
        "image (field head)",
        "right+left",
    )
    assert "the image reads as an AP pelvis (" in instance["scope_note"]
    assert "no R/L marker was read, check the sides" in instance["scope_note"]
    assert sorted(prediction["side"] for prediction in instance["predictions"]) == ["left", "right"]
    assert "Right hip: " in detail["draft"]["text"] and "Left hip: " in detail["draft"]["text"]


def test_a_pelvis_as_a_one_frame_multi_frame_secondary_capture_with_free_text_tags_is_drafted_by_its_tags(
    embedded: Deployment, tmp_path: Path
) -> None:
    # The same film as dcmtk's img2dcm --new-sc would make it (Multi-frame Grayscale Byte Secondary Capture, one
    # frame), its body part typed by hand: "PELVIS AND HIPS" with ViewPosition AP names an AP pelvis.
    path = jpeg_as_dicom(
        fracatlas_file("IMG0000463.jpg"),
        tmp_path / "pelvis-sc.dcm",
        "1.2.840.10008.5.1.4.1.1.7.2",
        frames=1,
        BodyPartExamined="PELVIS AND HIPS",
        ViewPosition="AP",
    )
    embedded.storescu(path)
    detail = embedded.wait_for_study(str(pydicom.dcmread(path, stop_before_pixels=True).StudyInstanceUID))
    assert detail["state"] == "drafted", detail
    (instance,) = detail["instances"]
    assert (instance["view"], instance["view_rule"], instance["side"]) == (
        "ap_pelvis",
        "ViewPosition+pelvis",
        "right+left",
    )
    assert instance["scope_flag"] is None and instance["region_read"] == "hip"
    assert "Right hip: " in detail["draft"]["text"] and "Left hip: " in detail["draft"]["text"]
