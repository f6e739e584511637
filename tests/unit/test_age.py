"""The notice on a child's draft: the patient's age from the tags (reporting/age.py), in the draft text."""

from __future__ import annotations

import pytest
from pydicom.dataset import Dataset
from sqlalchemy import select

from predraft.core.db import session_scope
from predraft.core.schema import Draft, Study
from predraft.core.states import StudyState
from predraft.reporting.age import age_in_years, is_child
from predraft.workers import tasks
from tests.unit.conftest import drafting_study

CHILD_NOTICE = "The tags say the patient is under 18"


def _tags(**values: str) -> Dataset:
    ds = Dataset()
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    return ds


@pytest.mark.parametrize(
    ("tags", "years"),
    [
        ({"PatientAge": "010Y"}, 10.0),
        ({"PatientAge": "018Y"}, 18.0),
        ({"PatientAge": "006M"}, 0.5),
        ({"PatientAge": "052W"}, 52 * 7 / 365.25),
        ({"PatientAge": "003D"}, 3 / 365.25),
        ({"PatientBirthDate": "20100615", "StudyDate": "20261205"}, (16 * 365.25 + 173) / 365.25),
        ({"PatientAge": "45 years", "PatientBirthDate": "20200101", "StudyDate": "20261205"}, 6.93),  # AS invalid
    ],
)
def test_age_from_patient_age_else_the_dates(tags: dict[str, str], years: float) -> None:
    assert age_in_years(_tags(**tags)) == pytest.approx(years, abs=0.01)


@pytest.mark.parametrize(
    "tags",
    [
        {},
        {"PatientAge": "10Y"},
        {"PatientBirthDate": "2010-06-15", "StudyDate": "20261205"},
        {"PatientBirthDate": "20101315", "StudyDate": "20261205"},
        {"PatientBirthDate": "20100615"},
        {"PatientBirthDate": "20300101", "StudyDate": "20261205"},  # born after the study
    ],
)
def test_a_missing_or_malformed_age_is_unknown_not_a_child(tags: dict[str, str]) -> None:
    assert age_in_years(_tags(**tags)) is None
    assert not is_child(_tags(**tags))


def test_children_are_under_18() -> None:
    assert is_child(_tags(PatientAge="017Y")) and not is_child(_tags(PatientAge="018Y"))


@pytest.mark.parametrize(("age", "noticed"), [("012Y", True), ("067Y", False)])
def test_a_childs_draft_carries_the_notice(task_env, demo_study, tmp_path, age: str, noticed: bool) -> None:
    study_id = drafting_study(task_env, demo_study, tmp_path / "images", PatientAge=age)
    tasks.draft.run(study_id, 1)
    with session_scope(task_env) as session:
        assert session.get(Study, study_id).state == StudyState.DRAFTED
        text, recorded = session.execute(select(Draft.text, Draft.patient_is_child)).one()
    assert (CHILD_NOTICE in text) is noticed
    assert recorded is noticed  # the worklist's flag
    assert text.rstrip().endswith("particular care." if noticed else "for the radiologist to assess.")
