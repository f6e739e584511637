"""Expected views (issue 14, item 8): the default rules read the usual spellings of a view count.

An exact count ("3V", "THREE VIEWS") makes a study complete at that many images; a minimum ("2+ VIEWS",
"AT LEAST 2 VIEWS") gives no count, so the study waits for its quiet time.
"""

from __future__ import annotations

import json

import pytest

from predraft.core.settings import ExpectedViewsRule, expected_view_count, get_settings
from predraft.workers.dispatch import claim_ready_studies

EXACT = [
    ("XR PELVIS 3 VIEWS", 3),
    ("XR HIP RIGHT WITH PELVIS 3V", 3),
    ("XR HIP LEFT 2V", 2),
    ("XR HIP 3 V", 3),
    ("XR HIP 3 VW", 3),
    ("XR HIP 3 VWS", 3),
    ("XR HIP 3VIEWS", 3),
    ("XR HIP THREE VIEWS", 3),
    ("XR HIP TWO VIEW", 2),
    ("XR HIP 3 VIEW(S)", 3),
    ("XR HIP 2-VIEW", 2),
    ("xr hip one view", 1),
    ("HIP RIGHT TEN VIEWS", 10),
    ("XR PELVIS 1 VIEW", 1),
]
MINIMUM = [
    "XR HIP 2+ VIEWS",
    "XR HIP 2 + VIEWS",
    "XR HIP MIN 3 VIEWS",
    "XR HIP MIN. 3 VIEWS",
    "XR HIP MINIMUM OF 3 VIEWS",
    "XR HIP MINIMUM 2 VIEWS",
    "XR HIP 3 OR MORE VIEWS",
    "XR HIP AT LEAST 2 VIEWS",
    "XR HIP AT LEAST TWO VIEWS",
    "XR HIPS BILATERAL 2 VIEWS EACH",
]
NO_COUNT = ["XR PELVIS AP", "XR HIP RIGHT", "CT L5 VERTEBRA", "XR HIP 0 VIEWS", "VIEWS OF THE HIP", ""]


@pytest.mark.parametrize(("description", "count"), EXACT)
def test_default_rules_read_exact_counts(clean_settings_env, description, count):
    assert expected_view_count(get_settings().workers.expected_views, description) == count


@pytest.mark.parametrize("description", MINIMUM + NO_COUNT)
def test_default_rules_give_no_count_for_minimums_or_no_count(clean_settings_env, description):
    assert expected_view_count(get_settings().workers.expected_views, description) is None


def test_the_first_matching_rule_wins_and_a_minimum_rule_means_no_count():
    rules = [ExpectedViewsRule(pattern=r"\bSCREENING\b", minimum=True), ExpectedViewsRule(pattern=r"\bHIP\b", views=2)]
    assert expected_view_count(rules, "HIP SCREENING") is None
    assert expected_view_count(rules, "XR HIP") == 2
    assert expected_view_count(rules, "XR KNEE") is None
    assert expected_view_count(rules, "XR KNEE", "HIP SERIES") == 2  # the requested procedure's description


def test_a_group_that_is_no_number_gives_no_count_instead_of_failing():
    rule = ExpectedViewsRule(pattern=r"(\w+) VIEWS")
    assert rule.expected("SEVERAL VIEWS") is None
    assert rule.expected("FOUR VIEWS") == 4


def test_rules_validate_the_minimum_flag():
    with pytest.raises(ValueError, match="minimum"):
        ExpectedViewsRule(pattern="HIP", views=2, minimum=True)
    assert ExpectedViewsRule(pattern="HIP", minimum=True).minimum  # no group needed: it gives no count


def test_a_site_rule_list_from_the_environment_replaces_the_defaults(clean_settings_env, monkeypatch):
    monkeypatch.setenv(
        "PREDRAFT_EXPECTED_VIEWS",
        json.dumps(
            [
                {"pattern": r"\bPORTABLE\b", "minimum": True},
                {"pattern": r"\b(\d+)\s*VIEWS?\b"},
                {"pattern": "^HIP SERIES$", "views": 2},
            ]
        ),
    )
    rules = get_settings().workers.expected_views
    assert expected_view_count(rules, "PORTABLE PELVIS 3 VIEWS") is None
    assert expected_view_count(rules, "XR PELVIS 3 VIEWS") == 3
    assert expected_view_count(rules, "HIP SERIES") == 2
    assert expected_view_count(rules, "XR HIP 3V") is None  # the site's list has no "3V" spelling


def test_a_3v_study_is_claimed_at_its_third_image(clean_settings_env, sqlite_url, demo_study, tmp_path):
    """ "XR HIP RIGHT WITH PELVIS 3V" is complete at its third image, long before its quiet time."""
    import pydicom

    from tests.unit.test_workflow import _ingest

    copies = []
    for image in demo_study:
        ds = pydicom.dcmread(image.path)
        ds.StudyDescription = "XR HIP RIGHT WITH PELVIS 3V"
        copies.append(tmp_path / image.path.name)
        ds.save_as(copies[-1])
    rules = get_settings().workers.expected_views
    study_id = _ingest(sqlite_url, copies[:2])
    assert claim_ready_studies(sqlite_url, quiet_seconds=3600, expected_views=rules) == []
    _ingest(sqlite_url, copies[2:])
    assert claim_ready_studies(sqlite_url, quiet_seconds=3600, expected_views=rules) == [study_id]
