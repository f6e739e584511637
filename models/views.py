"""View, side and scope of a radiograph from its DICOM tags, by a documented order of rules.

Codes are those of PS3.16 (checked against pydicom's copy of the CID tables, ``pydicom.sr._cid_dict``):
CID 4010 "DX View" for ViewCodeSequence, CID 4011 "DX View Modifier" for ViewModifierCodeSequence,
CID 4012 "Projection Eponymous Name" for ProjectionEponymousNameCodeSequence, CID 4009 "DX Anatomy
Imaged" (the same hip/pelvis codes as CID 4031) for AnatomicRegionSequence. The retired designator SRT
counts as SCT.

View: the first rule that decides wins, and its name is recorded (``view_rule``):

1. ``ViewModifierCodeSequence`` (top level, or inside a ViewCodeSequence item, where the DX IOD puts
   it) holds DCM 111069 Crosstable -> cross-table lateral.
2. ``ProjectionEponymousNameCodeSequence`` holds SCT 399169008 Lauenstein -> frog-leg, or SCT 424811006
   Danelius-Miller -> cross-table lateral.
3. The image's own description (SeriesDescription, ProtocolName) says FROG or LAUENSTEIN -> frog-leg;
   CROSS or DANELIUS -> cross-table lateral. (A frog-leg is an AP projection of an abducted hip, so its
   ViewPosition and view code often say AP: these three rules come before them.)
4. ``ViewCodeSequence``: SCT 399348003 antero-posterior or 272479007 postero-anterior -> AP pelvis or
   AP hip by the body part (as rule 5); SCT 399067008 lateral, 399198007 right lateral, 399173006 left
   lateral, 399260004 medial-lateral or 399352003 lateral-medial -> cross-table lateral; any other SCT
   view (oblique, axial, tangential...) -> ``unknown`` (an oblique is none of the four views, whatever
   ViewPosition says).
5. ``ViewPosition`` AP or PA with body part PELVIS -> AP pelvis, HIP or FEMUR -> AP hip.
6. ``ViewPosition`` LL, RL, LAT or LATERAL -> cross-table lateral (a horizontal-beam lateral).
7. ``PatientOrientation`` (a hint, PS3.3 C.7.6.1.1.1; dominant letter of each axis): one axis
   anterior-posterior and the other head-feet -> a lateral projection -> cross-table lateral; one axis
   left-right and the other head-feet -> a frontal projection -> AP pelvis or AP hip by the body part
   (as rule 5). A frog-leg is frontal too: only rules 1-3 tell it apart.
8. Otherwise ``unknown``.

The body part for rules 4, 5 and 7 is BodyPartExamined, else the AnatomicRegionSequence code (hip,
hip joint, femur, thigh -> HIP; pelvis -> PELVIS), else the image's own description naming PELVIS or
HIP.

Sides (``side_rule``): an AP pelvis shows both hips ("bilateral view"; which half is which is decided by
predraft.models.pixels.split_bilateral from PatientOrientation). Otherwise ImageLaterality, then Laterality, then
the image's own description saying RIGHT/RT or LEFT/LT; else ``unknown``. PatientOrientation does not
say which hip a one-hip image shows (both hips' APs read L\\F), so it is no side rule.

A limb body part also names the gate's region class (``region``: shoulder, hand or leg; an arm or elbow names
none), so that the region's pack reads it (predraft.models.scope).

StudyDescription is shared by every image of a study ("XR PELVIS AND RIGHT HIP 3 VIEWS"), so it never
decides an image's view or side; it only helps decide scope when no body part is coded.

What the tags say about the body region (``tag_region``, ``scope_rule`` names the tag that said it):
BodyPartExamined HIP, PELVIS or FEMUR -> ``hip``; another limb region (shoulder, arm, hand, knee, leg,
foot...) -> ``limb``; any other body part (chest, abdomen, skull, spine...) -> ``outside``. A value that is no such
term is read word by word (``known_body_part``: "HIPS", "L HIP", "FEMORAL NECK", "PELVIS AND HIPS" name the hip,
PELVIS first, so an AP of the last is an AP pelvis; "KNEES" a knee; "HIP KNEE ANKLE" the leg) when every word is a
term, a side, joint, view or connector; a value with any other word ("ABD PELVIS", "PELVIS LSPINE") is
``outside``, as a tag predraft cannot read is never overruled. Without it, the
AnatomicRegionSequence code decides the same way (a code predraft does not know counts as ``outside``);
without either, any description (StudyDescription included) naming the hip, pelvis, femur or acetabulum
-> ``hip``; otherwise ``none``. The tags alone never decide scope: predraft.models.scope combines them with the
body-part gate's reading of the pixels (``in_scope`` is only "the tags say hip").
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

from pydicom.dataset import Dataset

from predraft.models.taxonomy import Side, View

# CID 4011 DX View Modifier
CROSSTABLE = ("DCM", "111069")
# CID 4012 Projection Eponymous Name
LAUENSTEIN = ("SCT", "399169008")
DANELIUS_MILLER = ("SCT", "424811006")
# CID 4010 DX View
ANTERO_POSTERIOR = ("SCT", "399348003")
POSTERO_ANTERIOR = ("SCT", "272479007")
_FRONTAL_VIEWS = {ANTERO_POSTERIOR, POSTERO_ANTERIOR}
_LATERAL_VIEWS = {
    ("SCT", "399067008"),  # lateral
    ("SCT", "399198007"),  # right lateral
    ("SCT", "399173006"),  # left lateral
    ("SCT", "399260004"),  # medial-lateral
    ("SCT", "399352003"),  # lateral-medial
}
# CID 4009 DX Anatomy Imaged (as CID 4031 Common Anatomic Regions): the codes that are in scope
_ANATOMY = {
    ("SCT", "29836001"): "HIP",  # hip
    ("SCT", "24136001"): "HIP",  # hip joint
    ("SCT", "71341001"): "FEMUR",  # femur
    ("SCT", "68367000"): "FEMUR",  # thigh
    ("SCT", "816092008"): "PELVIS",  # pelvis
}
_IN_SCOPE_BODY_PARTS = {"HIP", "PELVIS", "FEMUR"}
#: Body parts (PS3.16 Annex L defined terms and common variants) of the limbs the gate knows.
_LIMB_BODY_PARTS = {
    "SHOULDER",
    "CLAVICLE",
    "SCAPULA",
    "ACJOINT",
    "HUMERUS",
    "ARM",
    "UPPER LIMB",
    "UPPERLIMB",
    "UPPER_LIMB",
    "ELBOW",
    "FOREARM",
    "RADIUS",
    "ULNA",
    "WRIST",
    "HAND",
    "FINGER",
    "THUMB",
    "EXTREMITY",
    "KNEE",
    "PATELLA",
    "LEG",
    "LOWER LIMB",
    "LOWERLIMB",
    "LOWER_LIMB",
    "TIBIA",
    "FIBULA",
    "ANKLE",
    "FOOT",
    "HEEL",
    "CALCANEUS",
    "TOE",
}


#: The body-part gate's region (its ``region`` classes) a limb body part names; a limb part not here (an arm, an
#: elbow: regions the gate has no class for) names none.
_LIMB_REGIONS = {
    **dict.fromkeys(("SHOULDER", "CLAVICLE", "SCAPULA", "ACJOINT", "HUMERUS"), "shoulder"),
    **dict.fromkeys(("WRIST", "HAND", "FINGER", "THUMB"), "hand"),
    **dict.fromkeys(
        ("KNEE", "PATELLA", "LEG", "LOWER LIMB", "LOWERLIMB", "LOWER_LIMB", "TIBIA", "FIBULA", "ANKLE", "FOOT",
         "HEEL", "CALCANEUS", "TOE"),
        "leg",
    ),
}  # fmt: skip
#: The gate's region class of the hip, pelvis and femur.
HIP_REGION = "hip"
#: Words of a free-text BodyPartExamined that stand for a term above ("PELVIC", "NOF", "ACETABULAR"...).
_SYNONYMS = {
    "PELVIC": "PELVIS", "FEMORAL": "FEMUR", "THIGH": "FEMUR", "TROCHANTER": "FEMUR", "TROCHANTERIC": "FEMUR",
    "INTERTROCHANTERIC": "FEMUR", "SUBTROCHANTERIC": "FEMUR", "HIPJOINT": "HIP", "ACETABULUM": "HIP",
    "ACETABULAR": "HIP", "NOF": "HIP",
}  # fmt: skip
#: Words of a free-text BodyPartExamined that name no region: sides, joints, views and connectors.
_QUALIFIERS = {
    "L", "R", "LT", "RT", "LEFT", "RIGHT", "BILAT", "BILATERAL", "BOTH", "AND", "W", "WITH", "OF", "THE", "JOINT",
    "JOINTS", "LOWER", "UPPER", "PROXIMAL", "PROX", "DISTAL", "AP", "PA", "LAT", "LATERAL", "VIEW", "VIEWS", "XR",
}  # fmt: skip
#: Words that are part of the hip beside a hip word ("FEMORAL NECK", "HEAD OF FEMUR"), and of a region outside
#: alone.
_HIP_PARTS = {"NECK", "HEAD"}


class TagRegion(StrEnum):
    """What an image's tags say about its body region."""

    HIP = "hip"  # hip, pelvis or femur
    LIMB = "limb"  # another limb region, one the body-part gate knows
    OUTSIDE = "outside"  # a region outside the gate's skeleton (chest, abdomen, skull, spine...): never overridden
    NONE = "none"  # no body-part tag and no description naming the hip


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
    tag_region: TagRegion = TagRegion.NONE
    #: What the tags named, for reasons: BodyPartExamined as the term it names (``known_body_part``: "L HIP" is HIP),
    #: or as it is when it names none, else the anatomic region code.
    body_part: str = ""

    @property
    def region(self) -> str | None:
        """The body-part gate's region class the tags name (``hip``, ``shoulder``, ``hand``, ``leg``), or None."""
        if self.tag_region is TagRegion.HIP:
            return HIP_REGION
        if self.tag_region is TagRegion.LIMB:
            return _LIMB_REGIONS.get(self.body_part)
        return None


def _code(item: Dataset) -> tuple[str, str]:
    scheme = str(item.get("CodingSchemeDesignator", "") or "").strip().upper()
    if scheme == "SRT":  # the retired designator of SNOMED CT
        scheme = "SCT"
    return scheme, str(item.get("CodeValue", "") or "").strip()


def _codes(ds: Dataset, keyword: str) -> set[tuple[str, str]]:
    return {_code(item) for item in ds.get(keyword, []) or []}


def _view_modifiers(ds: Dataset) -> set[tuple[str, str]]:
    """View modifiers at the top level and inside ViewCodeSequence items (the DX IOD's place)."""
    modifiers = _codes(ds, "ViewModifierCodeSequence")
    for item in ds.get("ViewCodeSequence", []) or []:
        modifiers |= _codes(item, "ViewModifierCodeSequence")
    return modifiers


def _descriptions(ds: Dataset, tags: tuple[str, ...] = _IMAGE_DESCRIPTION_TAGS) -> str:
    return " ".join(str(ds.get(tag, "") or "") for tag in tags).upper()


def _has_word(text: str, *words: str) -> bool:
    return any(re.search(rf"\b{word}", text) for word in words)


def known_body_part(value: str) -> str:
    """The term predraft knows that a BodyPartExamined value (upper case) names: the value itself when it is one
    (HIP, PELVIS, FEMUR or a limb's, :data:`_LIMB_BODY_PARTS`), else read word by word ("HIPS", "L HIP", "PELVIS
    AND HIPS", "FEMORAL NECK", "KNEE_RIGHT"). Every word must be a known term (a plural's, a synonym's), a
    qualifier (:data:`_QUALIFIERS`: side, joint, view, connector) or, beside a hip word, NECK or HEAD; then the
    term is the first limb word when one is named (a long-leg "HIP KNEE ANKLE" names the leg), else PELVIS, HIP
    or FEMUR, in that order. Empty when a word is anything else ("ABD PELVIS", "PELVIS LSPINE", a word of another
    language): such a value says ``outside``, since a tag predraft cannot read is never overruled."""
    if value in _IN_SCOPE_BODY_PARTS or value in _LIMB_BODY_PARTS:
        return value
    words = [_word_term(word) for word in re.findall(r"[A-Z]+", value)]
    hip = [word for word in words if word in _IN_SCOPE_BODY_PARTS]
    limb = [word for word in words if word in _LIMB_BODY_PARTS]
    unknown = [
        word
        for word in words
        if word not in _IN_SCOPE_BODY_PARTS
        and word not in _LIMB_BODY_PARTS
        and word not in _QUALIFIERS
        and not (hip and word in _HIP_PARTS)
    ]
    if unknown or not (hip or limb):
        return ""
    if limb:
        return limb[0]
    return next(term for term in ("PELVIS", "HIP", "FEMUR") if term in hip)


def _word_term(word: str) -> str:
    """The term or qualifier one word stands for: itself, its synonym's, or its singular's (HIPS, KNEES)."""
    for candidate in (word, word[:-1] if word.endswith("S") else word):
        term = _SYNONYMS.get(candidate, candidate)
        if term in _IN_SCOPE_BODY_PARTS or term in _LIMB_BODY_PARTS or term in _QUALIFIERS:
            return term
    return word


def _body_part(ds: Dataset) -> tuple[str, str]:
    """(body part, the tag that said it): BodyPartExamined, else the AnatomicRegionSequence code. A free-text
    BodyPartExamined is read as the term it names (:func:`known_body_part`); one that names none is given as it
    is."""
    body_part = str(ds.get("BodyPartExamined", "") or "").strip().upper()
    if body_part:
        return known_body_part(body_part) or body_part, "BodyPartExamined"
    codes = _codes(ds, "AnatomicRegionSequence")
    for code in codes:
        if code in _ANATOMY:
            return _ANATOMY[code], "AnatomicRegionSequence"
    if codes:
        scheme, value = sorted(codes)[0]
        return f"{scheme} {value}", "AnatomicRegionSequence"
    return "", ""


def _orientation(ds: Dataset) -> tuple[str, str] | None:
    """The dominant letters of PatientOrientation's row and column directions, e.g. ("L", "F")."""
    value = ds.get("PatientOrientation")
    if value is None or isinstance(value, str | bytes):
        return None
    letters = [str(part).strip().upper()[:1] for part in value]
    if len(letters) != 2 or not all(letter and letter in "LRAPHF" for letter in letters):
        return None
    return letters[0], letters[1]


def classify_view(ds: Dataset) -> ViewResult:
    """Decide view, sides and scope of one image. Reads tags only, never pixels."""
    view, view_rule = _view(ds)
    sides, side_rule = _sides(ds, view)
    tag_region, scope_rule = _scope(ds)
    return ViewResult(
        view, view_rule, sides, side_rule, tag_region is TagRegion.HIP, scope_rule, tag_region, _body_part(ds)[0]
    )


def _frontal(ds: Dataset, text: str, rule: str) -> tuple[View, str] | None:
    """AP pelvis or AP hip of a frontal projection, by the body part; None when no body part says."""
    body_part, _ = _body_part(ds)
    if body_part == "PELVIS" or (not body_part and _has_word(text, "PELVIS")):
        return View.AP_PELVIS, f"{rule}+pelvis"
    if body_part in {"HIP", "FEMUR"} or (not body_part and _has_word(text, "HIP")):
        return View.AP_HIP, f"{rule}+hip"
    return None


def _view(ds: Dataset) -> tuple[View, str]:
    if CROSSTABLE in _view_modifiers(ds):
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
    view_codes = {code for code in _codes(ds, "ViewCodeSequence") if code[0] == "SCT"}
    if view_codes:
        if view_codes & _FRONTAL_VIEWS:
            if decided := _frontal(ds, text, "ViewCodeSequence"):
                return decided
        elif view_codes & _LATERAL_VIEWS:
            return View.CROSS_TABLE_LATERAL, "ViewCodeSequence"
        else:
            return View.UNKNOWN, "ViewCodeSequence (other view)"
    position = str(ds.get("ViewPosition", "") or "").strip().upper()
    if position in {"AP", "PA"} and (decided := _frontal(ds, text, "ViewPosition")):
        return decided
    if position in {"LL", "RL", "LATERAL", "LAT"}:
        return View.CROSS_TABLE_LATERAL, "ViewPosition"
    orientation = _orientation(ds)
    if orientation is not None:
        axes = set(orientation)
        if axes & {"A", "P"} and axes & {"H", "F"}:
            return View.CROSS_TABLE_LATERAL, "PatientOrientation"
        if axes & {"L", "R"} and axes & {"H", "F"} and (decided := _frontal(ds, text, "PatientOrientation")):
            return decided
    return View.UNKNOWN, "none"


def _sides(ds: Dataset, view: View) -> tuple[tuple[Side, ...], str]:
    if view is View.AP_PELVIS:
        return (Side.RIGHT, Side.LEFT), "bilateral view"
    for tag in ("ImageLaterality", "Laterality"):
        value = str(ds.get(tag, "") or "").strip().upper()
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


def _scope(ds: Dataset) -> tuple[TagRegion, str]:
    body_part, rule = _body_part(ds)
    if body_part:
        if body_part in _IN_SCOPE_BODY_PARTS:
            return TagRegion.HIP, rule
        return (TagRegion.LIMB if body_part in _LIMB_BODY_PARTS else TagRegion.OUTSIDE), rule
    if _has_word(_descriptions(ds, _ALL_DESCRIPTION_TAGS), "HIP", "PELVIS", "FEMUR", "ACETAB"):
        return TagRegion.HIP, "description"
    return TagRegion.NONE, "none"
