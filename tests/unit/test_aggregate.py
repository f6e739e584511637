"""predraft.reporting.aggregate: per-side averaging, indeterminate findings and ordering."""

from __future__ import annotations

import pytest

from predraft.models.pack import bundled_pack
from predraft.models.taxonomy import HardwareClass as H
from predraft.models.taxonomy import Side, View
from predraft.reporting.aggregate import AggregationRule, HipObservation
from predraft.reporting.aggregate import aggregate as _aggregate

_HIP = bundled_pack().pack
#: The hip pack's rule: these tests describe the hip's aggregation (its hard pairs, view weights, metal check).
HIP_RULE = AggregationRule.from_pack(_HIP)


def aggregate(observations, **options):
    return _aggregate(observations, **{"rule": HIP_RULE, **options})


def _obs(uid: str, side: Side, view: View, **probabilities: float) -> HipObservation:
    return HipObservation(uid, side, view, {H(key): value for key, value in probabilities.items()})


def test_mean_over_views_of_one_side():
    findings = aggregate(
        [
            _obs("1.1", Side.RIGHT, View.AP_PELVIS, tha=0.8, none=0.2),
            _obs("1.2", Side.RIGHT, View.FROG_LEG, tha=0.6, none=0.4),
        ],
        threshold=0.5,
    )

    assert len(findings) == 1
    finding = findings[0]
    assert finding.side is Side.RIGHT
    assert finding.hardware == H.THA and not finding.indeterminate
    assert finding.probability == pytest.approx(0.7)
    assert finding.probabilities == pytest.approx({H.THA: 0.7, H.NONE: 0.3})
    assert finding.views == (View.AP_PELVIS, View.FROG_LEG)
    assert finding.sop_instance_uids == ("1.1", "1.2")
    assert "2 image(s)" in finding.reason


def test_views_and_uids_are_listed_once_each():
    findings = aggregate(
        [
            _obs("1.1", Side.LEFT, View.AP_PELVIS, none=0.9, tha=0.1),
            _obs("1.1", Side.LEFT, View.AP_PELVIS, none=0.7, tha=0.3),
            _obs("1.2", Side.LEFT, View.AP_PELVIS, none=0.8, tha=0.2),
        ],
        threshold=0.5,
    )
    assert findings[0].views == (View.AP_PELVIS,)
    assert findings[0].sop_instance_uids == ("1.1", "1.2")
    assert findings[0].probability == pytest.approx(0.8)


def test_below_threshold_is_indeterminate():
    (finding,) = aggregate([_obs("1.1", Side.LEFT, View.AP_HIP, tha=0.45, hemi=0.30, none=0.25)], threshold=0.5)
    assert finding.indeterminate and finding.hardware is None
    assert finding.top_class == H.THA
    assert finding.probability == pytest.approx(0.45)
    assert "threshold" in finding.reason and "0.45" in finding.reason


def test_threshold_is_the_cards_not_a_fixed_one():
    observations = [_obs("1.1", Side.RIGHT, View.AP_HIP, tha=0.65, none=0.35)]
    assert aggregate(observations, threshold=0.6)[0].hardware == H.THA
    assert aggregate(observations, threshold=0.7)[0].hardware is None


def test_exactly_at_threshold_is_determinate():
    (finding,) = aggregate([_obs("1.1", Side.RIGHT, View.AP_HIP, tha=0.5, none=0.3, hemi=0.2)], threshold=0.5)
    assert finding.hardware == H.THA


def test_views_that_disagree_make_the_side_indeterminate():
    (finding,) = aggregate(
        [
            _obs("1.1", Side.RIGHT, View.AP_PELVIS, tha=0.9, hemi=0.1),
            _obs("1.2", Side.RIGHT, View.FROG_LEG, tha=0.4, hemi=0.6),
        ],
        threshold=0.5,
    )
    assert finding.indeterminate
    assert "disagree" in finding.reason
    assert "tha" in finding.reason and "hemi" in finding.reason
    assert finding.top_class == H.THA and finding.probability == pytest.approx(0.65)


def test_sides_are_ordered_right_left_unknown():
    findings = aggregate(
        [
            _obs("1.3", Side.UNKNOWN, View.UNKNOWN, none=0.9, tha=0.1),
            _obs("1.2", Side.LEFT, View.AP_PELVIS, none=0.9, tha=0.1),
            _obs("1.1", Side.RIGHT, View.AP_PELVIS, tha=0.9, none=0.1),
        ],
        threshold=0.5,
    )
    assert [f.side for f in findings] == [Side.RIGHT, Side.LEFT, Side.UNKNOWN]
    assert [f.hardware for f in findings] == [H.THA, H.NONE, H.NONE]


def test_unknown_side_is_never_merged_into_a_named_side():
    findings = aggregate(
        [
            _obs("1.1", Side.RIGHT, View.AP_HIP, tha=0.9, none=0.1),
            _obs("1.2", Side.UNKNOWN, View.AP_HIP, none=0.9, tha=0.1),
        ],
        threshold=0.5,
    )
    assert [(f.side, f.sop_instance_uids) for f in findings] == [(Side.RIGHT, ("1.1",)), (Side.UNKNOWN, ("1.2",))]


def test_a_side_without_an_image_is_not_reported():
    findings = aggregate([_obs("1.1", Side.LEFT, View.AP_HIP, dhs=0.9, none=0.1)], threshold=0.5)
    assert [f.side for f in findings] == [Side.LEFT]
    assert aggregate([], threshold=0.5) == []


@pytest.mark.parametrize("threshold", [0, 1, -0.1, 1.5])
def test_threshold_outside_the_open_unit_interval_is_refused(threshold):
    with pytest.raises(ValueError, match="threshold .* strictly between 0 and 1"):
        aggregate([_obs("1.1", Side.LEFT, View.AP_HIP, tha=1.0)], threshold=threshold)


def test_observation_accepts_strings_from_the_database():
    observation = HipObservation("1.1", "left", "frog_leg", {"tha": 0.75, "none": "0.25"})
    assert observation.side is Side.LEFT and observation.view is View.FROG_LEG
    assert observation.probabilities == {H.THA: 0.75, H.NONE: 0.25}
    assert observation.top_class == H.THA


def test_observation_refuses_empty_or_unknown_values():
    with pytest.raises(ValueError, match="no probabilities"):
        HipObservation("1.1", Side.LEFT, View.AP_HIP, {})
    with pytest.raises(ValueError, match="sideways"):
        HipObservation("1.1", "sideways", View.AP_HIP, {"tha": 1.0})
    # class names are a pack's: a name no pack has is refused where a section of the draft is made (test_text)


def test_a_class_threshold_overrides_the_global_one():
    observations = [HipObservation("1.1", "right", "ap_pelvis", {"tha": 0.7, "none": 0.3})]
    assert aggregate(observations, threshold=0.5)[0].hardware == H.THA
    strict = aggregate(observations, threshold=0.5, class_thresholds={"tha": 0.8})[0]
    assert strict.hardware is None and "0.80" in strict.reason
    assert aggregate(observations, threshold=0.9, class_thresholds={"tha": 0.6})[0].hardware == H.THA
    with pytest.raises(ValueError, match=r"class_thresholds\[tha\] 1.5"):
        aggregate(observations, threshold=0.5, class_thresholds={"tha": 1.5})


def _metal_obs(uid: str, view: View, metal: bool | None, **probabilities: float) -> HipObservation:
    return HipObservation(uid, Side.RIGHT, view, {H(key): value for key, value in probabilities.items()}, metal)


@pytest.mark.parametrize(
    ("metal", "probabilities", "hardware", "reason"),
    [
        ((True, False), {"none": 0.9, "tha": 0.1}, None, "metal check sees metal where the model sees no hardware"),
        ((False, False), {"tha": 0.9, "none": 0.1}, None, "model sees tha but the metal check sees no metal"),
        ((True, True), {"tha": 0.9, "none": 0.1}, H.THA, "mean probability"),
        ((False, None), {"none": 0.9, "tha": 0.1}, H.NONE, "mean probability"),
        ((None, None), {"none": 0.9, "tha": 0.1}, H.NONE, "mean probability"),
        ((None, None), {"dhs": 0.9, "none": 0.1}, H.DHS, "mean probability"),
        ((False, False), {"post_infectious": 0.9, "none": 0.1}, H.POST_INFECTIOUS, "mean probability"),
    ],
)
def test_metal_check_disagreement_makes_the_side_indeterminate(metal, probabilities, hardware, reason):
    (finding,) = aggregate(
        [
            _metal_obs("1.1", View.AP_PELVIS, metal[0], **probabilities),
            _metal_obs("1.2", View.FROG_LEG, metal[1], **probabilities),
        ],
        threshold=0.5,
    )
    assert finding.hardware == hardware
    assert reason in finding.reason
    checked = [m for m in metal if m is not None]
    assert finding.metal is (any(checked) if checked else None)


# --- the rule as a table: per-view probabilities -> per-side outcome ----------------------------------
AP, HIP, FROG, XTL = View.AP_PELVIS, View.AP_HIP, View.FROG_LEG, View.CROSS_TABLE_LATERAL
R, L = Side.RIGHT, Side.LEFT

RULE_TABLE = [
    # (case, [(side, view, probabilities)], {side: expected hardware or None}, reason fragment per side)
    (
        "three views agree",
        [(R, AP, {"tha": 0.9, "hemi": 0.1}), (R, FROG, {"tha": 0.8, "hemi": 0.2}), (R, XTL, {"tha": 0.7, "hemi": 0.3})],
        {R: H.THA},
        {R: "3 image(s)"},
    ),
    (
        "a dissenting view within the margin",
        [(R, AP, {"dhs": 0.9, "imn": 0.1}), (R, XTL, {"imn": 0.55, "dhs": 0.45})],
        {R: H.DHS},
        {R: "weighted mean"},
    ),
    (
        "a dissenting view beyond the margin",
        [(R, AP, {"dhs": 0.9, "imn": 0.1}), (R, XTL, {"imn": 0.8, "dhs": 0.2})],
        {R: None},
        {R: "views disagree (dhs, imn)"},
    ),
    (
        "a hard pair dissents sooner",
        [(R, AP, {"tha": 0.9, "hemi": 0.1}), (R, XTL, {"hemi": 0.6, "tha": 0.4})],
        {R: None},
        {R: "views disagree (hemi, tha)"},
    ),
    (
        "abstention below threshold",
        [(L, HIP, {"plate": 0.45, "dhs": 0.35, "none": 0.2})],
        {L: None},
        {L: "below the model's threshold"},
    ),
    (
        "a hard pair too close",
        [(R, AP, {"post_infectious": 0.55, "tha_plus_fixation": 0.45})],
        {R: None},
        {R: "too close to tell apart"},
    ),
    (
        "a missing view is no finding",
        [(R, AP, {"cannulated_screws": 0.95, "none": 0.05}), (R, FROG, {"cannulated_screws": 0.9, "none": 0.1})],
        {R: H.CANNULATED_SCREWS},
        {R: "2 image(s)"},
    ),
    (
        "bilateral with different classes",
        [
            (R, AP, {"tha": 0.9, "none": 0.1}),
            (L, AP, {"none": 0.95, "tha": 0.05}),
            (R, FROG, {"tha": 0.85, "none": 0.15}),
        ],
        {R: H.THA, L: H.NONE},
        {R: "2 image(s)", L: "1 image(s)"},
    ),
]


@pytest.mark.parametrize(("case", "images", "expected", "reasons"), RULE_TABLE, ids=[row[0] for row in RULE_TABLE])
def test_rule_table(case, images, expected, reasons):
    observations = [
        HipObservation(f"1.{i}", side, view, probabilities) for i, (side, view, probabilities) in enumerate(images)
    ]
    findings = {finding.side: finding for finding in aggregate(observations, threshold=0.5)}
    assert {side: finding.hardware for side, finding in findings.items()} == expected
    for side, fragment in reasons.items():
        assert fragment in findings[side].reason


def test_view_weights_change_the_combined_probability():
    observations = [
        _obs("1.1", Side.RIGHT, View.AP_PELVIS, tha=0.9, hemi=0.1),
        _obs("1.2", Side.RIGHT, View.CROSS_TABLE_LATERAL, tha=0.6, hemi=0.4),
    ]
    (default,) = aggregate(observations, threshold=0.5)
    assert default.probability == pytest.approx((0.9 + 0.75 * 0.6) / 1.75)
    (equal,) = aggregate(
        observations,
        threshold=0.5,
        rule=AggregationRule.from_pack(_HIP, view_weights={View.CROSS_TABLE_LATERAL: 1}),
    )
    assert equal.probability == pytest.approx(0.75)


def test_rule_validates():
    with pytest.raises(ValueError, match="weights must be positive"):
        AggregationRule(view_weights={View.FROG_LEG: 0})
    with pytest.raises(ValueError, match="frog"):
        AggregationRule(view_weights={"frog": 1.0})
    with pytest.raises(ValueError, match="hard_pair_margin"):
        AggregationRule(hard_pair_margin=1.2)
    assert HIP_RULE.margin(H.THA, H.HEMI) == 0.15 and HIP_RULE.margin(H.THA, H.DHS) == 0.25
    assert AggregationRule().margin(H.THA, H.HEMI) == 0.25  # without a pack's hard pairs, every pair is alike
