"""models.views.classify_view: the documented rules for view, sides and scope."""

from __future__ import annotations

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from models.taxonomy import Side, View
from models.views import classify_view


def _code(value: str, scheme: str, meaning: str = "") -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning or value
    return item


def _ds(**attributes) -> Dataset:
    ds = Dataset()
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    return ds


def test_view_modifier_crosstable_gives_cross_table_lateral():
    ds = _ds(ViewPosition="AP", BodyPartExamined="HIP", ImageLaterality="R",
             ViewModifierCodeSequence=Sequence([_code("111069", "DCM", "Crosstable")]))
    result = classify_view(ds)
    assert (result.view, result.view_rule) == (View.CROSS_TABLE_LATERAL, "ViewModifierCodeSequence")
    assert (result.sides, result.side_rule) == ((Side.RIGHT,), "ImageLaterality")


def test_other_view_modifier_codes_are_ignored():
    ds = _ds(ViewPosition="AP", BodyPartExamined="HIP",
             ViewModifierCodeSequence=Sequence([_code("111069", "SCT"), _code("999999", "DCM")]))
    assert classify_view(ds).view is View.AP_HIP


def test_lauenstein_eponym_gives_frog_leg():
    ds = _ds(ViewPosition="AP", BodyPartExamined="HIP",
             ProjectionEponymousNameCodeSequence=Sequence([_code("399169008", "SCT", "Lauenstein")]))
    result = classify_view(ds)
    assert (result.view, result.view_rule) == (View.FROG_LEG, "ProjectionEponymousNameCodeSequence")


def test_retired_srt_designator_counts_as_sct():
    ds = _ds(BodyPartExamined="HIP",
             ProjectionEponymousNameCodeSequence=Sequence([_code("399169008", "SRT", "Lauenstein")]))
    assert classify_view(ds).view is View.FROG_LEG
    ds = _ds(BodyPartExamined="HIP",
             ProjectionEponymousNameCodeSequence=Sequence([_code("424811006", "srt", "Danelius-Miller")]))
    result = classify_view(ds)
    assert (result.view, result.view_rule) == (View.CROSS_TABLE_LATERAL, "ProjectionEponymousNameCodeSequence")


def test_crosstable_modifier_wins_over_lauenstein_eponym():
    ds = _ds(ViewModifierCodeSequence=Sequence([_code("111069", "DCM")]),
             ProjectionEponymousNameCodeSequence=Sequence([_code("399169008", "SCT")]))
    assert classify_view(ds).view is View.CROSS_TABLE_LATERAL


@pytest.mark.parametrize("keyword, text, view", [
    ("SeriesDescription", "R HIP FROG LATERAL", View.FROG_LEG),
    ("ProtocolName", "Hip Lauenstein", View.FROG_LEG),
    ("SeriesDescription", "HIP CROSS-TABLE LAT", View.CROSS_TABLE_LATERAL),
    ("SeriesDescription", "Danelius Miller", View.CROSS_TABLE_LATERAL),
])
def test_description_rules(keyword, text, view):
    result = classify_view(_ds(ViewPosition="AP", BodyPartExamined="HIP", **{keyword: text}))
    assert (result.view, result.view_rule) == (view, "description")


def test_description_word_must_start_a_word():
    # "LEAPFROG" has no word starting with FROG: the ViewPosition rule decides.
    result = classify_view(_ds(ViewPosition="AP", BodyPartExamined="HIP", SeriesDescription="LEAPFROG"))
    assert result.view is View.AP_HIP


def test_ap_pelvis_shows_both_sides():
    result = classify_view(_ds(ViewPosition="AP", BodyPartExamined="PELVIS"))
    assert (result.view, result.view_rule) == (View.AP_PELVIS, "ViewPosition+pelvis")
    assert (result.sides, result.side_rule) == ((Side.RIGHT, Side.LEFT), "bilateral view")
    assert (result.in_scope, result.scope_rule) == (True, "BodyPartExamined")


def test_pa_with_pelvis_description_is_ap_pelvis():
    result = classify_view(_ds(ViewPosition="PA", SeriesDescription="PELVIS"))
    assert result.view is View.AP_PELVIS
    assert (result.in_scope, result.scope_rule) == (True, "description")


def test_ap_hip_with_image_laterality_left():
    result = classify_view(_ds(ViewPosition="AP", BodyPartExamined="HIP", ImageLaterality="L"))
    assert (result.view, result.view_rule) == (View.AP_HIP, "ViewPosition+hip")
    assert (result.sides, result.side_rule) == ((Side.LEFT,), "ImageLaterality")
    assert result.in_scope


def test_side_falls_back_to_laterality_then_description():
    result = classify_view(_ds(ViewPosition="AP", BodyPartExamined="FEMUR", Laterality="R"))
    assert (result.view, result.sides, result.side_rule) == (View.AP_HIP, (Side.RIGHT,), "Laterality")
    result = classify_view(_ds(ViewPosition="AP", BodyPartExamined="HIP", SeriesDescription="AP LT HIP"))
    assert (result.sides, result.side_rule) == ((Side.LEFT,), "description")
    result = classify_view(_ds(ViewPosition="AP", BodyPartExamined="HIP", SeriesDescription="RIGHT HIP AP"))
    assert (result.sides, result.side_rule) == ((Side.RIGHT,), "description")


def test_image_laterality_wins_over_description():
    result = classify_view(_ds(ViewPosition="AP", BodyPartExamined="HIP", ImageLaterality="L",
                               SeriesDescription="RIGHT HIP"))
    assert result.sides == (Side.LEFT,)


@pytest.mark.parametrize("position", ["LL", "RL", "LATERAL"])
def test_lateral_view_position_is_cross_table(position):
    result = classify_view(_ds(ViewPosition=position, BodyPartExamined="HIP"))
    assert (result.view, result.view_rule) == (View.CROSS_TABLE_LATERAL, "ViewPosition")


def test_nothing_known_gives_unknown_view_and_side():
    result = classify_view(Dataset())
    assert (result.view, result.view_rule) == (View.UNKNOWN, "none")
    assert (result.sides, result.side_rule) == ((Side.UNKNOWN,), "none")
    assert (result.in_scope, result.scope_rule) == (False, "none")


def test_ap_without_body_part_or_description_is_unknown():
    assert classify_view(_ds(ViewPosition="AP")).view is View.UNKNOWN


@pytest.mark.parametrize("body_part, in_scope", [
    ("HIP", True), ("PELVIS", True), ("FEMUR", True),
    ("CHEST", False), ("KNEE", False), ("HAND", False), ("EXTREMITY", False),
])
def test_scope_by_body_part(body_part, in_scope):
    result = classify_view(_ds(BodyPartExamined=body_part, StudyDescription="XR HIP"))
    assert (result.in_scope, result.scope_rule) == (in_scope, "BodyPartExamined")


def test_scope_by_description_when_no_body_part():
    result = classify_view(_ds(StudyDescription="XR ACETABULUM 2 VIEWS"))
    assert (result.in_scope, result.scope_rule) == (True, "description")
    result = classify_view(_ds(StudyDescription="XR CHEST PA"))
    assert (result.in_scope, result.scope_rule) == (False, "none")


def test_demo_phantoms_carry_the_tags_of_their_views(demo_study):
    for image in demo_study:
        result = classify_view(pydicom.dcmread(image.path, stop_before_pixels=True))
        assert (result.view, result.sides, result.in_scope) == (image.view, image.sides, True)


def test_real_native_ap_hip_is_in_scope_with_unknown_view(real_path):
    result = classify_view(pydicom.dcmread(real_path("RG2_UNC.dcm"), stop_before_pixels=True))
    assert (result.in_scope, result.scope_rule) == (True, "BodyPartExamined")
    assert (result.view, result.view_rule) == (View.UNKNOWN, "none")
    assert result.sides == (Side.UNKNOWN,)


def test_real_tibia_is_out_of_scope(real_path):
    result = classify_view(pydicom.dcmread(real_path("RG3_UNC.dcm"), stop_before_pixels=True))
    assert (result.in_scope, result.scope_rule) == (False, "BodyPartExamined")


def test_real_chest_is_out_of_scope(real_path):
    result = classify_view(pydicom.dcmread(real_path("RG1_UNCR.dcm"), stop_before_pixels=True))
    assert (result.in_scope, result.scope_rule) == (False, "BodyPartExamined")


# A study-level description is shared by every image of a mixed study such as the demo's own
# "XR PELVIS AND RIGHT HIP 3 VIEWS", yet rules 3 and 4 let it override the image's own tags.


def test_study_description_naming_the_pelvis_does_not_make_an_ap_hip_bilateral():
    ds = _ds(ViewPosition="AP", BodyPartExamined="HIP", ImageLaterality="R", SeriesDescription="AP RIGHT HIP",
             StudyDescription="XR PELVIS AND RIGHT HIP 2 VIEWS")
    result = classify_view(ds)
    assert (result.view, result.sides) == (View.AP_HIP, (Side.RIGHT,))


def test_study_description_naming_a_frog_leg_does_not_relabel_the_ap_pelvis():
    ds = _ds(ViewPosition="AP", BodyPartExamined="PELVIS", SeriesDescription="AP PELVIS",
             StudyDescription="XR PELVIS AP AND FROG LEG LATERAL")
    result = classify_view(ds)
    assert (result.view, result.sides) == (View.AP_PELVIS, (Side.RIGHT, Side.LEFT))
