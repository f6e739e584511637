"""View, side and scope of a radiograph from its DICOM tags, by a documented order of rules.

Rules for the view, first match wins (the deciding rule is recorded):

1. ``ViewModifierCodeSequence`` holds DCM 111069 (Crosstable) -> cross-table lateral.
2. ``ProjectionEponymousNameCodeSequence`` holds SCT 399169008 (Lauenstein) -> frog-leg, or
   SCT 424811006 (Danelius-Miller) -> cross-table lateral.
3. An image's own description (SeriesDescription, ProtocolName) says FROG or LAUENSTEIN -> frog-leg;
   CROSS or DANELIUS -> cross-table lateral.
4. ``ViewPosition`` AP or PA with BodyPartExamined PELVIS -> AP pelvis, HIP or FEMUR -> AP hip; without a
   body part, the image's own description decides between PELVIS and HIP.
5. ``ViewPosition`` LL, RL or LATERAL -> cross-table lateral (a horizontal-beam lateral).
6. Otherwise ``unknown``.

Sides: an AP pelvis shows both hips. Otherwise ImageLaterality, then Laterality, then the image's own
description saying RIGHT/RT or LEFT/LT; else ``unknown``.

StudyDescription is shared by every image of a study ("XR PELVIS AND RIGHT HIP 3 VIEWS"), so it never
decides an image's view or side; it only helps decide scope when BodyPartExamined is absent.

Scope: BodyPartExamined HIP, PELVIS or FEMUR, or (without a body part) any description naming the hip
or pelvis, is in scope;
an image with another body part (chest, knee, hand...) is out of scope and never gets a hip draft.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pydicom.dataset import Dataset

from models.taxonomy import Side, View

CROSSTABLE = ("DCM", "111069")
LAUENSTEIN = ("SCT", "399169008")
DANELIUS_MILLER = ("SCT", "424811006")
_IN_SCOPE_BODY_PARTS = {"HIP", "PELVIS", "FEMUR"}
_IMAGE_DESCRIPTION_TAGS = ("SeriesDescription", "ProtocolName")
_ALL_DESCRIPTION_TAGS = (*_IMAGE_DESCRIPTION_TAGS, "StudyDescription")


@dataclass(frozen=True)
class ViewResult:
    view: View
    view_rule: str
    sides: tuple[Side, ...]
    side_rule: str
    in_scope: bool
    scope_rule: str


def _codes(ds: Dataset, keyword: str) -> set[tuple[str, str]]:
    codes = set()
    for item in ds.get(keyword, []) or []:
        scheme = str(item.get("CodingSchemeDesignator", "")).upper()
        if scheme == "SRT":  # the retired designator of SNOMED CT
            scheme = "SCT"
        codes.add((scheme, str(item.get("CodeValue", ""))))
    return codes


def _descriptions(ds: Dataset, tags: tuple[str, ...] = _IMAGE_DESCRIPTION_TAGS) -> str:
    return " ".join(str(ds.get(tag, "") or "") for tag in tags).upper()


def _has_word(text: str, *words: str) -> bool:
    return any(re.search(rf"\b{word}", text) for word in words)


def classify_view(ds: Dataset) -> ViewResult:
    """Decide view, sides and scope of one image. Reads tags only, never pixels."""
    view, view_rule = _view(ds)
    sides, side_rule = _sides(ds, view)
    in_scope, scope_rule = _scope(ds)
    return ViewResult(view, view_rule, sides, side_rule, in_scope, scope_rule)


def _view(ds: Dataset) -> tuple[View, str]:
    if CROSSTABLE in _codes(ds, "ViewModifierCodeSequence"):
        return View.CROSS_TABLE_LATERAL, "ViewModifierCodeSequence"
    eponyms = _codes(ds, "ProjectionEponymousNameCodeSequence")
    if LAUENSTEIN in eponyms:
        return View.FROG_LEG, "ProjectionEponymousNameCodeSequence"
    if DANELIUS_MILLER in eponyms:
        return View.CROSS_TABLE_LATERAL, "ProjectionEponymousNameCodeSequence"
    text = _descriptions(ds)
    if _has_word(text, "FROG", "LAUENSTEIN"):
        return View.FROG_LEG, "description"
    if _has_word(text, "CROSS", "DANELIUS"):
        return View.CROSS_TABLE_LATERAL, "description"
    position = str(ds.get("ViewPosition", "") or "").upper()
    body_part = str(ds.get("BodyPartExamined", "") or "").upper()
    if position in {"AP", "PA"}:
        if body_part == "PELVIS" or (not body_part and _has_word(text, "PELVIS")):
            return View.AP_PELVIS, "ViewPosition+pelvis"
        if body_part in {"HIP", "FEMUR"} or (not body_part and _has_word(text, "HIP")):
            return View.AP_HIP, "ViewPosition+hip"
    if position in {"LL", "RL", "LATERAL", "LAT"}:
        return View.CROSS_TABLE_LATERAL, "ViewPosition"
    return View.UNKNOWN, "none"


def _sides(ds: Dataset, view: View) -> tuple[tuple[Side, ...], str]:
    if view is View.AP_PELVIS:
        return (Side.RIGHT, Side.LEFT), "bilateral view"
    for tag in ("ImageLaterality", "Laterality"):
        value = str(ds.get(tag, "") or "").upper()
        if value == "R":
            return (Side.RIGHT,), tag
        if value == "L":
            return (Side.LEFT,), tag
    text = _descriptions(ds)
    if _has_word(text, "RIGHT", "RT"):
        return (Side.RIGHT,), "description"
    if _has_word(text, "LEFT", "LT"):
        return (Side.LEFT,), "description"
    return (Side.UNKNOWN,), "none"


def _scope(ds: Dataset) -> tuple[bool, str]:
    body_part = str(ds.get("BodyPartExamined", "") or "").upper()
    if body_part in _IN_SCOPE_BODY_PARTS:
        return True, "BodyPartExamined"
    if body_part:
        return False, "BodyPartExamined"
    if _has_word(_descriptions(ds, _ALL_DESCRIPTION_TAGS), "HIP", "PELVIS", "FEMUR", "ACETAB"):
        return True, "description"
    return False, "none"
