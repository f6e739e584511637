"""predraft.models.views.classify_view: the documented rules for view, sides and scope."""

from __future__ import annotations

import copy

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from predraft.models.taxonomy import Side, View
from predraft.models.views import TagRegion, classify_view


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
    ds = _ds(
        ViewPosition="AP",
        BodyPartExamined="HIP",
        ImageLaterality="R",
        ViewModifierCodeSequence=Sequence([_code("111069", "DCM", "Crosstable")]),
    )
    result = classify_view(ds)
    assert (result.view, result.view_rule) == (View.CROSS_TABLE_LATERAL, "ViewModifierCodeSequence")
    assert (result.sides, result.side_rule) == ((Side.RIGHT,), "ImageLaterality")


def test_other_view_modifier_codes_are_ignored():
    ds = _ds(
        ViewPosition="AP",
        BodyPartExamined="HIP",
        ViewModifierCodeSequence=Sequence([_code("111069", "SCT"), _code("999999", "DCM")]),
    )
    assert classify_view(ds).view is View.AP_HIP


def test_lauenstein_eponym_gives_frog_leg():
    ds = _ds(
        ViewPosition="AP",
        BodyPartExamined="HIP",
        ProjectionEponymousNameCodeSequence=Sequence([_code("399169008", "SCT", "Lauenstein")]),
    )
    result = classify_view(ds)
    assert (result.view, result.view_rule) == (View.FROG_LEG, "ProjectionEponymousNameCodeSequence")


def test_retired_srt_designator_counts_as_sct():
    ds = _ds(
        BodyPartExamined="HIP", ProjectionEponymousNameCodeSequence=Sequence([_code("399169008", "SRT", "Lauenstein")])
    )
    assert classify_view(ds).view is View.FROG_LEG
    ds = _ds(
        BodyPartExamined="HIP",
        ProjectionEponymousNameCodeSequence=Sequence([_code("424811006", "srt", "Danelius-Miller")]),
    )
    result = classify_view(ds)
    assert (result.view, result.view_rule) == (View.CROSS_TABLE_LATERAL, "ProjectionEponymousNameCodeSequence")


def test_crosstable_modifier_wins_over_lauenstein_eponym():
    ds = _ds(
        ViewModifierCodeSequence=Sequence([_code("111069", "DCM")]),
        ProjectionEponymousNameCodeSequence=Sequence([_code("399169008", "SCT")]),
    )
    assert classify_view(ds).view is View.CROSS_TABLE_LATERAL


@pytest.mark.parametrize(
    "keyword, text, view",
    [
        ("SeriesDescription", "R HIP FROG LATERAL", View.FROG_LEG),
        ("ProtocolName", "Hip Lauenstein", View.FROG_LEG),
        ("SeriesDescription", "HIP CROSS-TABLE LAT", View.CROSS_TABLE_LATERAL),
        ("SeriesDescription", "Danelius Miller", View.CROSS_TABLE_LATERAL),
    ],
)
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
    result = classify_view(
        _ds(ViewPosition="AP", BodyPartExamined="HIP", ImageLaterality="L", SeriesDescription="RIGHT HIP")
    )
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


@pytest.mark.parametrize(
    "body_part, in_scope",
    [
        ("HIP", True),
        ("PELVIS", True),
        ("FEMUR", True),
        ("CHEST", False),
        ("KNEE", False),
        ("HAND", False),
        ("EXTREMITY", False),
    ],
)
def test_scope_by_body_part(body_part, in_scope):
    result = classify_view(_ds(BodyPartExamined=body_part, StudyDescription="XR HIP"))
    assert (result.in_scope, result.scope_rule) == (in_scope, "BodyPartExamined")


@pytest.mark.parametrize(
    ("body_part", "tag_region", "region", "term"),
    [
        ("HIPS", TagRegion.HIP, "hip", "HIP"),
        ("L HIP", TagRegion.HIP, "hip", "HIP"),
        ("hip left", TagRegion.HIP, "hip", "HIP"),
        ("PELVIS AND HIPS", TagRegion.HIP, "hip", "PELVIS"),
        ("PELVIS_HIP", TagRegion.HIP, "hip", "PELVIS"),
        ("PELVIC", TagRegion.HIP, "hip", "PELVIS"),
        ("THIGH", TagRegion.HIP, "hip", "FEMUR"),
        ("KNEES", TagRegion.LIMB, "leg", "KNEE"),
        ("KNEE RIGHT", TagRegion.LIMB, "leg", "KNEE"),
        ("SHOULDER L", TagRegion.LIMB, "shoulder", "SHOULDER"),
        ("UPPER ARM", TagRegion.LIMB, None, "ARM"),  # a limb the gate has no class for
        ("FEMORAL NECK", TagRegion.HIP, "hip", "FEMUR"),  # NECK beside a hip word is the hip's
        ("NECK OF FEMUR", TagRegion.HIP, "hip", "FEMUR"),
        ("ACETABULAR", TagRegion.HIP, "hip", "HIP"),
        ("HIP KNEE ANKLE", TagRegion.LIMB, "leg", "KNEE"),  # a long-leg film names the leg
        ("ABDOMENPELVIS", TagRegion.OUTSIDE, None, "ABDOMENPELVIS"),  # one term, outside: never read as the hip
        ("PELVIS LSPINE", TagRegion.OUTSIDE, None, "PELVIS LSPINE"),  # names a region outside: never overruled
        ("ABD PELVIS", TagRegion.OUTSIDE, None, "ABD PELVIS"),  # any word not known: never guessed
        ("KUB PELVIS", TagRegion.OUTSIDE, None, "KUB PELVIS"),
        ("SI JOINTS PELVIS", TagRegion.OUTSIDE, None, "SI JOINTS PELVIS"),
        ("NECK", TagRegion.OUTSIDE, None, "NECK"),
        ("RIBS", TagRegion.OUTSIDE, None, "RIBS"),
        ("BASSIN", TagRegion.OUTSIDE, None, "BASSIN"),  # names nothing predraft knows: outside, as before
    ],
)
def test_a_free_text_body_part_is_read_word_by_word(body_part, tag_region, region, term):
    """Sites type BodyPartExamined as they like ("HIPS", "L HIP"): a value naming a known part counts as it, so
    that an AP of "PELVIS AND HIPS" is split as an AP pelvis, where every such value was once outside and never
    read. A value with any word that is no known term, side, joint, view or connector stays outside."""
    result = classify_view(_ds(BodyPartExamined=body_part, ViewPosition="AP"))
    assert (result.tag_region, result.region, result.body_part) == (tag_region, region, term)
    assert result.scope_rule == "BodyPartExamined"
    expected_view = {"PELVIS": View.AP_PELVIS, "HIP": View.AP_HIP, "FEMUR": View.AP_HIP}.get(term, View.UNKNOWN)
    assert result.view == expected_view


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
    ds = _ds(
        ViewPosition="AP",
        BodyPartExamined="HIP",
        ImageLaterality="R",
        SeriesDescription="AP RIGHT HIP",
        StudyDescription="XR PELVIS AND RIGHT HIP 2 VIEWS",
    )
    result = classify_view(ds)
    assert (result.view, result.sides) == (View.AP_HIP, (Side.RIGHT,))


def test_study_description_naming_a_frog_leg_does_not_relabel_the_ap_pelvis():
    ds = _ds(
        ViewPosition="AP",
        BodyPartExamined="PELVIS",
        SeriesDescription="AP PELVIS",
        StudyDescription="XR PELVIS AP AND FROG LEG LATERAL",
    )
    result = classify_view(ds)
    assert (result.view, result.sides) == (View.AP_PELVIS, (Side.RIGHT, Side.LEFT))


# --- the rule order, table-driven -------------------------------------------------------------------
# One row per rule and tag: tags -> (view, view_rule, sides, side_rule). Every tag of the documented
# order appears, alone and against the rules it must beat or yield to.

_AP = _code("399348003", "SCT", "antero-posterior")
_PA = _code("272479007", "SCT", "postero-anterior")
_LATERAL = _code("399067008", "SCT", "lateral")
_RIGHT_LATERAL = _code("399198007", "SCT", "right lateral")
_LATERO_MEDIAL = _code("399352003", "SCT", "lateral-medial")
_OBLIQUE = _code("399182000", "SCT", "oblique")
_CROSSTABLE = _code("111069", "DCM", "Crosstable")
_LAUENSTEIN = _code("399169008", "SCT", "Lauenstein")
_DANELIUS = _code("424811006", "SCT", "Danelius-Miller")


def _view_code(*codes: Dataset, modifiers: tuple[Dataset, ...] = ()) -> Sequence:
    items = []
    for code in codes:
        item = copy.deepcopy(code)
        if modifiers:
            item.ViewModifierCodeSequence = Sequence([copy.deepcopy(m) for m in modifiers])
        items.append(item)
    return Sequence(items)


R, L, RL, U = (Side.RIGHT,), (Side.LEFT,), (Side.RIGHT, Side.LEFT), (Side.UNKNOWN,)

RULE_TABLE = [
    # 1. ViewModifierCodeSequence: top level, and nested in a ViewCodeSequence item (the DX IOD's place)
    (
        "modifier crosstable",
        dict(BodyPartExamined="HIP", ViewPosition="AP", ViewModifierCodeSequence=Sequence([_CROSSTABLE])),
        View.CROSS_TABLE_LATERAL,
        "ViewModifierCodeSequence",
        U,
        "none",
    ),
    (
        "nested modifier crosstable",
        dict(
            BodyPartExamined="HIP", ImageLaterality="L", ViewCodeSequence=_view_code(_LATERAL, modifiers=(_CROSSTABLE,))
        ),
        View.CROSS_TABLE_LATERAL,
        "ViewModifierCodeSequence",
        L,
        "ImageLaterality",
    ),
    (
        "modifier beats eponym",
        dict(
            ViewModifierCodeSequence=Sequence([_CROSSTABLE]),
            ProjectionEponymousNameCodeSequence=Sequence([_LAUENSTEIN]),
        ),
        View.CROSS_TABLE_LATERAL,
        "ViewModifierCodeSequence",
        U,
        "none",
    ),
    # 2. ProjectionEponymousNameCodeSequence
    (
        "Lauenstein",
        dict(
            BodyPartExamined="HIP",
            ViewPosition="AP",
            ViewCodeSequence=_view_code(_AP),
            ProjectionEponymousNameCodeSequence=Sequence([_LAUENSTEIN]),
        ),
        View.FROG_LEG,
        "ProjectionEponymousNameCodeSequence",
        U,
        "none",
    ),
    (
        "Danelius-Miller",
        dict(BodyPartExamined="HIP", Laterality="R", ProjectionEponymousNameCodeSequence=Sequence([_DANELIUS])),
        View.CROSS_TABLE_LATERAL,
        "ProjectionEponymousNameCodeSequence",
        R,
        "Laterality",
    ),
    # 3. the image's own descriptions, before the generic AP of ViewCodeSequence and ViewPosition
    (
        "series description frog",
        dict(
            BodyPartExamined="HIP", ViewPosition="AP", ViewCodeSequence=_view_code(_AP), SeriesDescription="LT HIP FROG"
        ),
        View.FROG_LEG,
        "description",
        L,
        "description",
    ),
    (
        "protocol name cross-table",
        dict(BodyPartExamined="HIP", ProtocolName="Hip cross table RIGHT"),
        View.CROSS_TABLE_LATERAL,
        "description",
        R,
        "description",
    ),
    # 4. ViewCodeSequence (CID 4010)
    (
        "view code AP + pelvis",
        dict(BodyPartExamined="PELVIS", ViewPosition="LL", ViewCodeSequence=_view_code(_AP)),
        View.AP_PELVIS,
        "ViewCodeSequence+pelvis",
        RL,
        "bilateral view",
    ),
    (
        "view code PA + hip",
        dict(BodyPartExamined="HIP", ImageLaterality="R", ViewCodeSequence=_view_code(_PA)),
        View.AP_HIP,
        "ViewCodeSequence+hip",
        R,
        "ImageLaterality",
    ),
    (
        "view code AP, SRT designator",
        dict(BodyPartExamined="FEMUR", ViewCodeSequence=_view_code(_code("399348003", "SRT"))),
        View.AP_HIP,
        "ViewCodeSequence+hip",
        U,
        "none",
    ),
    (
        "view code lateral",
        dict(BodyPartExamined="HIP", ViewPosition="AP", ViewCodeSequence=_view_code(_LATERAL)),
        View.CROSS_TABLE_LATERAL,
        "ViewCodeSequence",
        U,
        "none",
    ),
    (
        "view code right lateral",
        dict(BodyPartExamined="HIP", ViewCodeSequence=_view_code(_RIGHT_LATERAL)),
        View.CROSS_TABLE_LATERAL,
        "ViewCodeSequence",
        U,
        "none",
    ),
    (
        "view code lateral-medial",
        dict(BodyPartExamined="HIP", ViewCodeSequence=_view_code(_LATERO_MEDIAL)),
        View.CROSS_TABLE_LATERAL,
        "ViewCodeSequence",
        U,
        "none",
    ),
    (
        "view code oblique is no view of ours",
        dict(BodyPartExamined="PELVIS", ViewPosition="AP", ViewCodeSequence=_view_code(_OBLIQUE)),
        View.UNKNOWN,
        "ViewCodeSequence (other view)",
        U,
        "none",
    ),
    (
        "non-SNOMED view code is ignored",
        dict(BodyPartExamined="HIP", ViewPosition="AP", ViewCodeSequence=_view_code(_code("AP", "99LOCAL"))),
        View.AP_HIP,
        "ViewPosition+hip",
        U,
        "none",
    ),
    (
        "view code AP without body part",
        dict(ViewCodeSequence=_view_code(_AP), ViewPosition="LL"),
        View.CROSS_TABLE_LATERAL,
        "ViewPosition",
        U,
        "none",
    ),
    # 5./6. ViewPosition
    (
        "ViewPosition AP + pelvis",
        dict(BodyPartExamined="PELVIS", ViewPosition="AP", ImageLaterality="R"),
        View.AP_PELVIS,
        "ViewPosition+pelvis",
        RL,
        "bilateral view",
    ),
    (
        "ViewPosition PA + hip",
        dict(BodyPartExamined="HIP", ViewPosition="PA", Laterality="L"),
        View.AP_HIP,
        "ViewPosition+hip",
        L,
        "Laterality",
    ),
    (
        "ViewPosition AP + pelvis from description",
        dict(ViewPosition="AP", SeriesDescription="AP PELVIS"),
        View.AP_PELVIS,
        "ViewPosition+pelvis",
        RL,
        "bilateral view",
    ),
    (
        "ViewPosition RL",
        dict(BodyPartExamined="HIP", ViewPosition="RL"),
        View.CROSS_TABLE_LATERAL,
        "ViewPosition",
        U,
        "none",
    ),
    (
        "ViewPosition wins over PatientOrientation",
        dict(BodyPartExamined="HIP", ViewPosition="LL", PatientOrientation=["L", "F"]),
        View.CROSS_TABLE_LATERAL,
        "ViewPosition",
        U,
        "none",
    ),
    # 7. PatientOrientation, the last hint
    (
        "orientation frontal + pelvis",
        dict(BodyPartExamined="PELVIS", PatientOrientation=["L", "F"]),
        View.AP_PELVIS,
        "PatientOrientation+pelvis",
        RL,
        "bilateral view",
    ),
    (
        "orientation frontal, rotated + hip",
        dict(BodyPartExamined="HIP", PatientOrientation=["F", "R"], ImageLaterality="L"),
        View.AP_HIP,
        "PatientOrientation+hip",
        L,
        "ImageLaterality",
    ),
    (
        "orientation lateral",
        dict(BodyPartExamined="HIP", PatientOrientation=["A", "F"]),
        View.CROSS_TABLE_LATERAL,
        "PatientOrientation",
        U,
        "none",
    ),
    ("orientation frontal, no body part", dict(PatientOrientation=["L", "F"]), View.UNKNOWN, "none", U, "none"),
    # AnatomicRegionSequence stands in for a missing BodyPartExamined
    (
        "anatomic region pelvis",
        dict(ViewPosition="AP", AnatomicRegionSequence=Sequence([_code("816092008", "SCT", "Pelvis")])),
        View.AP_PELVIS,
        "ViewPosition+pelvis",
        RL,
        "bilateral view",
    ),
    (
        "anatomic region hip joint",
        dict(
            ViewPosition="AP",
            ImageLaterality="R",
            AnatomicRegionSequence=Sequence([_code("24136001", "SCT", "Hip joint")]),
        ),
        View.AP_HIP,
        "ViewPosition+hip",
        R,
        "ImageLaterality",
    ),
    # Sides: ImageLaterality > Laterality > description; StudyDescription never decides
    (
        "ImageLaterality beats Laterality",
        dict(
            BodyPartExamined="HIP", ViewPosition="AP", ImageLaterality="R", Laterality="L", SeriesDescription="LEFT HIP"
        ),
        View.AP_HIP,
        "ViewPosition+hip",
        R,
        "ImageLaterality",
    ),
    (
        "Laterality beats description",
        dict(BodyPartExamined="HIP", ViewPosition="AP", Laterality="L", SeriesDescription="RIGHT HIP"),
        View.AP_HIP,
        "ViewPosition+hip",
        L,
        "Laterality",
    ),
    (
        "study description decides neither view nor side",
        dict(BodyPartExamined="HIP", StudyDescription="XR RIGHT HIP FROG AND CROSS-TABLE"),
        View.UNKNOWN,
        "none",
        U,
        "none",
    ),
    ("nothing at all", dict(), View.UNKNOWN, "none", U, "none"),
]


@pytest.mark.parametrize(
    "tags, view, view_rule, sides, side_rule", [row[1:] for row in RULE_TABLE], ids=[row[0] for row in RULE_TABLE]
)
def test_rule_table(tags, view, view_rule, sides, side_rule):
    result = classify_view(_ds(**copy.deepcopy(tags)))
    assert (result.view, result.view_rule) == (view, view_rule)
    assert (result.sides, result.side_rule) == (sides, side_rule)


def test_rule_table_names_every_tag_of_the_rule_order():
    used = {keyword for row in RULE_TABLE for keyword in row[1]}
    assert used >= {
        "ViewPosition",
        "ViewCodeSequence",
        "ViewModifierCodeSequence",
        "ProjectionEponymousNameCodeSequence",
        "ImageLaterality",
        "Laterality",
        "BodyPartExamined",
        "SeriesDescription",
        "ProtocolName",
        "StudyDescription",
        "PatientOrientation",
        "AnatomicRegionSequence",
    }


@pytest.mark.parametrize(
    "tags, in_scope, scope_rule",
    [
        (dict(BodyPartExamined="HIP"), True, "BodyPartExamined"),
        (dict(BodyPartExamined="CHEST", SeriesDescription="HIP"), False, "BodyPartExamined"),
        (dict(AnatomicRegionSequence=Sequence([_code("29836001", "SCT", "Hip")])), True, "AnatomicRegionSequence"),
        (dict(AnatomicRegionSequence=Sequence([_code("71341001", "SRT", "Femur")])), True, "AnatomicRegionSequence"),
        (
            dict(AnatomicRegionSequence=Sequence([_code("72696002", "SCT", "Knee")]), StudyDescription="XR HIP"),
            False,
            "AnatomicRegionSequence",
        ),
        (dict(AnatomicRegionSequence=Sequence([_code("85562004", "SCT", "Hand")])), False, "AnatomicRegionSequence"),
        (dict(SeriesDescription="L FEMUR AP"), True, "description"),
        (dict(ProtocolName="KNEE AP"), False, "none"),
    ],
)
def test_scope_rules(tags, in_scope, scope_rule):
    result = classify_view(_ds(**tags))
    assert (result.in_scope, result.scope_rule) == (in_scope, scope_rule)


@pytest.mark.parametrize("name", ["RG1_UNCR.dcm", "NM_Kakadu44_SOTmarkerincons.dcm", "966_fixed.dcm", "dx_image.dcm"])
def test_real_chest_and_hand_images_are_out_of_scope(real_path, name):
    result = classify_view(pydicom.dcmread(real_path(name), stop_before_pixels=True))
    assert (result.in_scope, result.scope_rule) == (False, "BodyPartExamined")
