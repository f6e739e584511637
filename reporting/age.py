"""The patient's age at the study, from the tags, for the draft's notice that no model here has seen children.

PatientAge (AS, PS3.5 6.2: ``nnnD``, ``nnnW``, ``nnnM`` or ``nnnY``) is taken first; without a valid one, the
years from PatientBirthDate to StudyDate (both valid DA). A value that is missing or malformed gives no age,
never a guess: the draft then carries no notice. Nothing here logs or raises for a value.
"""

from __future__ import annotations

import re
from datetime import date

from pydicom.dataset import Dataset

#: Below this age a patient is a child: no model bundled with predraft was trained on children's radiographs.
ADULT_AGE_YEARS = 18
_AGE_STRING = re.compile(r"^(\d{3})([DWMY])$")
_DAYS_PER_UNIT = {"D": 1.0, "W": 7.0, "M": 365.25 / 12, "Y": 365.25}


def age_in_years(ds: Dataset) -> float | None:
    """The patient's age at the study in years, from PatientAge or else birth and study dates; None if unknown."""
    match = _AGE_STRING.match(str(ds.get("PatientAge", "") or "").strip())
    if match:
        return int(match.group(1)) * _DAYS_PER_UNIT[match.group(2)] / 365.25
    born, studied = _date(ds.get("PatientBirthDate")), _date(ds.get("StudyDate"))
    if born is None or studied is None or studied < born:
        return None
    return (studied - born).days / 365.25


def is_child(ds: Dataset) -> bool:
    """Whether the tags say the patient was under :data:`ADULT_AGE_YEARS` at the study (False when unknown)."""
    age = age_in_years(ds)
    return age is not None and age < ADULT_AGE_YEARS


def _date(value: object) -> date | None:
    text = str(value or "").strip()
    if not re.fullmatch(r"\d{8}", text):
        return None
    try:
        return date(int(text[:4]), int(text[4:6]), int(text[6:]))
    except ValueError:
        return None
