"""Scope from tags and the body-part gate together (predraft.models.scope), rule by rule."""

from __future__ import annotations

import pytest
from pydicom.dataset import Dataset

from predraft.models.scope import GateReading, ScopeFlag, decide_scope
from predraft.models.taxonomy import View
from predraft.models.views import TagRegion, classify_view

#: As a fitted gate card has them: the hip at its balanced point (low), another region only when sure (high).
THRESHOLDS = {"hip": 0.15, "shoulder": 0.8, "hand": 0.8, "leg": 0.85}


def reading(**probabilities: float) -> GateReading:
    full = {"hip": 0.0, "shoulder": 0.0, "hand": 0.0, "leg": 0.0, **probabilities}
    return GateReading(full, THRESHOLDS)


def tags(body_part: str | None = None, **extra: str) -> Dataset:
    ds = Dataset()
    if body_part is not None:
        ds.BodyPartExamined = body_part
    for keyword, value in extra.items():
        setattr(ds, keyword, value)
    return ds


@pytest.mark.parametrize(
    ("body_part", "region"),
    [
        ("PELVIS", TagRegion.HIP),
        ("HIP", TagRegion.HIP),
        ("FEMUR", TagRegion.HIP),
        ("KNEE", TagRegion.LIMB),
        ("SHOULDER", TagRegion.LIMB),
        ("HAND", TagRegion.LIMB),
        ("ANKLE", TagRegion.LIMB),
        ("CHEST", TagRegion.OUTSIDE),
        ("LSPINE", TagRegion.OUTSIDE),
        ("SKULL", TagRegion.OUTSIDE),
        ("ABDOMEN", TagRegion.OUTSIDE),
    ],
)
def test_tag_region_of_body_parts(body_part: str, region: TagRegion) -> None:
    labels = classify_view(tags(body_part))
    assert labels.tag_region is region
    assert labels.body_part == body_part
    assert labels.in_scope is (region is TagRegion.HIP)


def test_no_body_part_tag_and_descriptions() -> None:
    assert classify_view(tags()).tag_region is TagRegion.NONE
    assert classify_view(tags(StudyDescription="XR PELVIS AP")).tag_region is TagRegion.HIP
    assert classify_view(tags(StudyDescription="XR KNEE 2 VIEWS")).tag_region is TagRegion.NONE


def test_hip_tags_kept_unless_the_gate_rules_the_hip_out() -> None:
    labels = classify_view(tags("PELVIS"))
    assert decide_scope(labels, reading(hip=0.6, leg=0.4)).in_scope
    assert decide_scope(labels, reading(hip=0.2, leg=0.8)).in_scope  # hip at or above its 0.15: kept
    decision = decide_scope(labels, reading(hip=0.03, leg=0.97))
    assert not decision.in_scope
    assert decision.reason == "tags say PELVIS, the image reads as leg, knee or ankle, 0.97"
    assert decision.flag is None
    # hip below its threshold: ruled out, naming the most probable other region even where that one is unsure
    unsure = decide_scope(labels, reading(hip=0.1, leg=0.5, hand=0.4))
    assert not unsure.in_scope
    assert unsure.reason == "tags say PELVIS, the image reads as leg, knee or ankle, 0.50"


def test_hip_tags_ruled_out_go_to_another_pack_only_when_it_is_sure() -> None:
    labels = classify_view(tags("PELVIS"))
    readable = {"hip", "shoulder"}
    routed = decide_scope(labels, reading(hip=0.05, shoulder=0.95), readable)
    assert routed.in_scope and routed.region == "shoulder" and routed.flag is ScopeFlag.TAGS_DISAGREE
    assert routed.reason == "tags say PELVIS, the image reads as shoulder, 0.95"
    unsure = decide_scope(labels, reading(hip=0.1, shoulder=0.7, leg=0.2), readable)  # shoulder below its 0.8
    assert not unsure.in_scope and unsure.reason == "tags say PELVIS, the image reads as shoulder, 0.70"


def test_untagged_image_is_decided_by_the_gate() -> None:
    labels = classify_view(tags())
    accepted = decide_scope(labels, reading(hip=0.95, leg=0.05))
    assert accepted.in_scope and accepted.flag is ScopeFlag.UNTAGGED
    assert "reads as hip or pelvis, 0.95" in accepted.reason
    # the hip at or above its threshold is drafted though another region is more probable, as a tagged hip is kept
    assert decide_scope(labels, reading(hip=0.3, hand=0.7)).region == "hip"
    refused = decide_scope(labels, reading(hip=0.1, hand=0.9))  # hip below its 0.15
    assert not refused.in_scope
    assert refused.reason == (
        "no body-part tags, and the image does not read as a hip or pelvis (reads as hand or wrist, 0.90)"
    )


def test_other_limb_tags_overturned_only_when_the_hip_is_the_gates_top_reading() -> None:
    labels = classify_view(tags("KNEE", ViewPosition="AP"))
    assert labels.view is View.UNKNOWN
    drafted = decide_scope(labels, reading(hip=0.99, leg=0.01))
    assert drafted.in_scope and drafted.flag is ScopeFlag.TAGS_DISAGREE
    assert drafted.reason == "tags say KNEE, the image reads as hip or pelvis, 0.99"
    assert decide_scope(labels, reading(hip=0.55, leg=0.45)).in_scope  # top, and at or above its threshold
    kept_out = decide_scope(labels, reading(hip=0.4, leg=0.6))  # above the hip's threshold, but not the top
    assert not kept_out.in_scope
    assert kept_out.reason.startswith("body part KNEE is not a hip or pelvis (BodyPartExamined)")


def test_a_region_named_by_tags_is_read_unless_another_is_the_gates_top_reading() -> None:
    labels = classify_view(tags("SHOULDER"))
    readable = {"hip", "shoulder"}
    assert decide_scope(labels, reading(shoulder=0.6, hip=0.4), readable).region == "shoulder"
    assert decide_scope(labels, reading(shoulder=0.3, hand=0.7), readable).region == "shoulder"  # hand unsure
    refused = decide_scope(labels, reading(shoulder=0.05, hand=0.95), readable)
    assert not refused.in_scope and refused.reason.endswith("the image reads as hand or wrist, 0.95")


def test_regions_outside_the_gates_skeleton_are_never_overridden() -> None:
    labels = classify_view(tags("CHEST"))
    decision = decide_scope(labels, None)
    assert not decision.in_scope
    assert "does not overrule" in decision.reason
    assert not decide_scope(labels, reading(hip=1.0)).in_scope


def test_a_reading_without_a_needed_threshold_is_refused() -> None:
    with pytest.raises(ValueError, match="no threshold"):
        GateReading({"hip": 0.5, "knee": 0.5}, {"hip": 0.9})
    with pytest.raises(ValueError, match="needs the class 'hip'"):
        GateReading({"knee": 1.0}, {"knee": 0.9})
    with pytest.raises(ValueError, match="needs the gate's reading"):
        decide_scope(classify_view(tags("PELVIS")), None)


def test_a_pack_that_forbids_the_gate_alone_reads_only_images_tagged_with_its_region():
    from predraft.models.scope import GateReading, decide_scope
    from predraft.models.taxonomy import Side, View
    from predraft.models.views import TagRegion, ViewResult

    reading = GateReading(
        {"hip": 0.01, "shoulder": 0.97, "hand": 0.01, "leg": 0.01},
        {"hip": 0.54, "shoulder": 0.89, "hand": 0.5, "leg": 0.76},
    )  # an untagged chest film: the gate, which knows no chest, reads it as a shoulder
    untagged = ViewResult(View.UNKNOWN, "none", (Side.UNKNOWN,), "none", False, "none", TagRegion.NONE, "")
    readable = {"hip", "shoulder"}
    assert decide_scope(untagged, reading, readable).region == "shoulder"
    refused = decide_scope(untagged, reading, readable, gate_alone={"hip"})
    assert not refused.in_scope and refused.reason.startswith("no body-part tags, and the image does not read as")
    tagged = ViewResult(View.UNKNOWN, "none", (Side.RIGHT,), "ImageLaterality", False, "BodyPartExamined",
                        TagRegion.LIMB, "SHOULDER")  # fmt: skip
    assert decide_scope(tagged, reading, readable, gate_alone={"hip"}).region == "shoulder"
