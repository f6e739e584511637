"""reporting.aggregate: per-side averaging, indeterminate findings and ordering."""

from __future__ import annotations

import pytest

from models.taxonomy import HardwareClass as H
from models.taxonomy import Side, View
from reporting.aggregate import HipObservation, aggregate


def _obs(uid: str, side: Side, view: View, **probabilities: float) -> HipObservation:
    return HipObservation(uid, side, view, {H(key): value for key, value in probabilities.items()})


def test_mean_over_views_of_one_side():
    findings = aggregate([
        _obs("1.1", Side.RIGHT, View.AP_PELVIS, tha=0.8, none=0.2),
        _obs("1.2", Side.RIGHT, View.FROG_LEG, tha=0.6, none=0.4),
    ], threshold=0.5)

    assert len(findings) == 1
    finding = findings[0]
    assert finding.side is Side.RIGHT
    assert finding.hardware is H.THA and not finding.indeterminate
    assert finding.probability == pytest.approx(0.7)
    assert finding.probabilities == pytest.approx({H.THA: 0.7, H.NONE: 0.3})
    assert finding.views == (View.AP_PELVIS, View.FROG_LEG)
    assert finding.sop_instance_uids == ("1.1", "1.2")
    assert "2 image(s)" in finding.reason


def test_views_and_uids_are_listed_once_each():
    findings = aggregate([
        _obs("1.1", Side.LEFT, View.AP_PELVIS, none=0.9, tha=0.1),
        _obs("1.1", Side.LEFT, View.AP_PELVIS, none=0.7, tha=0.3),
        _obs("1.2", Side.LEFT, View.AP_PELVIS, none=0.8, tha=0.2),
    ], threshold=0.5)
    assert findings[0].views == (View.AP_PELVIS,)
    assert findings[0].sop_instance_uids == ("1.1", "1.2")
    assert findings[0].probability == pytest.approx(0.8)


def test_below_threshold_is_indeterminate():
    finding, = aggregate([_obs("1.1", Side.LEFT, View.AP_HIP, tha=0.45, hemi=0.30, none=0.25)], threshold=0.5)
    assert finding.indeterminate and finding.hardware is None
    assert finding.top_class is H.THA
    assert finding.probability == pytest.approx(0.45)
    assert "threshold" in finding.reason and "0.45" in finding.reason


def test_threshold_is_the_cards_not_a_fixed_one():
    observations = [_obs("1.1", Side.RIGHT, View.AP_HIP, tha=0.65, none=0.35)]
    assert aggregate(observations, threshold=0.6)[0].hardware is H.THA
    assert aggregate(observations, threshold=0.7)[0].hardware is None


def test_exactly_at_threshold_is_determinate():
    finding, = aggregate([_obs("1.1", Side.RIGHT, View.AP_HIP, tha=0.5, none=0.3, hemi=0.2)], threshold=0.5)
    assert finding.hardware is H.THA


def test_views_that_disagree_make_the_side_indeterminate():
    finding, = aggregate([
        _obs("1.1", Side.RIGHT, View.AP_PELVIS, tha=0.9, hemi=0.1),
        _obs("1.2", Side.RIGHT, View.FROG_LEG, tha=0.4, hemi=0.6),
    ], threshold=0.5)
    assert finding.indeterminate
    assert "disagree" in finding.reason
    assert "tha" in finding.reason and "hemi" in finding.reason
    assert finding.top_class is H.THA and finding.probability == pytest.approx(0.65)


def test_sides_are_ordered_right_left_unknown():
    findings = aggregate([
        _obs("1.3", Side.UNKNOWN, View.UNKNOWN, none=0.9, tha=0.1),
        _obs("1.2", Side.LEFT, View.AP_PELVIS, none=0.9, tha=0.1),
        _obs("1.1", Side.RIGHT, View.AP_PELVIS, tha=0.9, none=0.1),
    ], threshold=0.5)
    assert [f.side for f in findings] == [Side.RIGHT, Side.LEFT, Side.UNKNOWN]
    assert [f.hardware for f in findings] == [H.THA, H.NONE, H.NONE]


def test_unknown_side_is_never_merged_into_a_named_side():
    findings = aggregate([
        _obs("1.1", Side.RIGHT, View.AP_HIP, tha=0.9, none=0.1),
        _obs("1.2", Side.UNKNOWN, View.AP_HIP, none=0.9, tha=0.1),
    ], threshold=0.5)
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
    assert observation.top_class is H.THA


def test_observation_refuses_empty_or_unknown_values():
    with pytest.raises(ValueError, match="no probabilities"):
        HipObservation("1.1", Side.LEFT, View.AP_HIP, {})
    with pytest.raises(ValueError, match="sideways"):
        HipObservation("1.1", "sideways", View.AP_HIP, {"tha": 1.0})
    with pytest.raises(ValueError, match="screws"):
        HipObservation("1.1", Side.LEFT, View.AP_HIP, {"screws": 1.0})


def test_a_class_threshold_overrides_the_global_one():
    observations = [HipObservation("1.1", "right", "ap_pelvis", {"tha": 0.7, "none": 0.3})]
    assert aggregate(observations, threshold=0.5)[0].hardware is H.THA
    strict = aggregate(observations, threshold=0.5, class_thresholds={"tha": 0.8})[0]
    assert strict.hardware is None and "0.80" in strict.reason
    assert aggregate(observations, threshold=0.9, class_thresholds={"tha": 0.6})[0].hardware is H.THA
    with pytest.raises(ValueError, match=r"class_thresholds\[tha\] 1.5"):
        aggregate(observations, threshold=0.5, class_thresholds={"tha": 1.5})
