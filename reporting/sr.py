"""The draft as a DICOM Comprehensive SR (highdicom), as docs/clinical.md ("The SR") describes it.

Content tree (TID 2000 style)::

    CONTAINER  LN 18748-4 Diagnostic Imaging Report
      HAS OBS CONTEXT   observer type Device, its UID, name, manufacturer, model
      CONTAINS CONTAINER DCM 121070 Findings
        CONTAINS TEXT   DCM 121071 Finding: one sentence per side (a hip, a shoulder)
          HAS CONCEPT MOD CODE SCT 272741003 Laterality (when the side is known)
        CONTAINS CODE   DCM 121071 Finding: the hardware class code, or 99PREDRAFT INDET
          HAS CONCEPT MOD CODE Laterality
          HAS PROPERTIES  NUM 99PREDRAFT PROB: the aggregated probability
          INFERRED FROM   IMAGE: each source image of that side
      CONTAINS CONTAINER DCM 121072 Impressions
        CONTAINS TEXT   DCM 121073 Impression
      CONTAINS TEXT     DCM 121106 Comment: the unverified-AI-draft line

Every container is ContinuityOfContent SEPARATE: its items are separate statements, not one running text, so a
viewer shows one line per item.

Flags: CompletionFlag PARTIAL, VerificationFlag UNVERIFIED, PreliminaryFlag PRELIMINARY. The
algorithm is named per IHE AI Results in the Contributing Equipment Sequence, with a Device UID
derived from the weights' sha256, so it changes whenever the weights do.

A radiologist's review supersedes the draft with a verified SR (:func:`build_review_sr`): the report as
signed, or a notice that the draft was rejected, with the reason.
"""

from __future__ import annotations

import copy
import datetime
import logging
from collections.abc import Iterable, Sequence
from typing import cast

import highdicom as hd
from pydicom import config as pydicom_config
from pydicom.charset import python_encoding
from pydicom.datadict import dictionary_VM
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.valuerep import DT, TM, validate_value

import predraft
from predraft.models.card import ModelCard
from predraft.models.pack import Pack
from predraft.models.taxonomy import Side
from predraft.reporting.aggregate import SideFinding
from predraft.reporting.text import DraftText, Section
from predraft.reporting.wording import PRIVATE_SCHEME, PROBABILITY_CODE, as_code, finding_code

log = logging.getLogger(__name__)

MANUFACTURER = "predraft"
SERIES_DESCRIPTION = "UNVERIFIED AI DRAFT (predraft)"
PROCESSING_ALGORITHM = Code("Newcode1", "99IHE", "Processing Algorithm")
#: The laterality code of each named side (an unknown side has none).
LATERALITY = {Side.RIGHT: codes.SCT.Right, Side.LEFT: codes.SCT.Left}
COMMENT = Code("121106", "DCM", "Comment")
#: Attributes highdicom needs on each evidence dataset; an empty value is allowed.
REQUIRED_EVIDENCE_TAGS = (
    "PatientID",
    "PatientName",
    "PatientBirthDate",
    "PatientSex",
    "AccessionNumber",
    "StudyID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
)


def device_uid(model: ModelCard) -> str:
    """A UID that is a function of the weights: ``2.25.<first 128 bits of their sha256>``."""
    return f"2.25.{int(model.weights_sha256[:32], 16)}"


def _with_required_tags(ds: Dataset) -> Dataset:
    for keyword in REQUIRED_EVIDENCE_TAGS:
        if keyword not in ds:
            setattr(ds, keyword, "")
    return ds


# --- Demographics highdicom copies from the first evidence dataset: valid ones as they are, others emptied ---

#: Value representations of text, checked before highdicom copies them (UIDs are the study's identity: never).
_TEXT_VRS = frozenset({"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UR", "UT"})
#: Free-text VRs, which may hold TAB, LF, FF and CR; no other control character is valid in any text VR.
_FREE_TEXT_VRS = frozenset({"LT", "ST", "UT"})
_FREE_TEXT_CONTROLS = frozenset("\t\n\f\r")
_PATIENT_SEX_VALUES = frozenset({"M", "F", "O"})  # highdicom.PatientSexValues
_PN_MAX_COMPONENTS = 5


def _has_invalid_control(vr: str, text: str) -> bool:
    allowed = _FREE_TEXT_CONTROLS if vr in _FREE_TEXT_VRS else frozenset()
    return any((ord(char) < 0x20 or ord(char) == 0x7F) and char not in allowed for char in text)


def _parses(vr: str, text: str) -> bool:
    """Whether highdicom's constructors (and a PACS) can read ``text`` as a DA, TM or DT value."""
    try:
        if vr == "DA":
            return len(text) == 8 and text.isdigit() and bool(datetime.datetime.strptime(text, "%Y%m%d"))
        if vr == "TM":
            return TM(text) is not None
        if vr == "DT":
            return DT(text) is not None
    except ValueError:
        return False
    return True


def _valid_text(keyword: str, vr: str, value: object) -> bool:
    """Whether one value of a text attribute is valid for its VR and for highdicom's checks.

    No exception or warning of this check ever leaves it: their messages quote the value.
    """
    text = str(value)
    if text == "":
        return True
    if _has_invalid_control(vr, text) or not _parses(vr, text):
        return False
    if keyword == "PatientSex" and text not in _PATIENT_SEX_VALUES:
        return False
    if vr == "PN" and any(group.count("^") >= _PN_MAX_COMPONENTS for group in text.split("=")):
        return False
    try:
        validate_value(vr, text, pydicom_config.RAISE)
    except (ValueError, TypeError):
        return False
    return True


def _allows_one_value_only(element: DataElement) -> bool:
    """Whether the standard allows ``element`` one value only (False for a tag pydicom's dictionary lacks)."""
    try:
        return dictionary_VM(element.tag) == "1"
    except KeyError:  # an attribute newer than pydicom's dictionary: its VM is not known here
        return False


def _valid_element(element: DataElement) -> bool:
    if element.VM > 1 and _allows_one_value_only(element):
        return False  # several values where the standard allows one ("ID1\\ID2" as PatientID)
    values = element.value if element.VM > 1 else [element.value]
    return all(value is None or _valid_text(element.keyword, element.VR, value) for value in values)


def _checked_demographics(ds: Dataset) -> Dataset:
    """A copy of ``ds`` in which every top-level text attribute that is not valid for its VR and VM (or for
    highdicom's checks: PatientSex M, F or O) is emptied; valid ones are left untouched, byte for byte.
    Sequences are copied as they are.

    highdicom copies the Patient and Study modules (and the acquisition equipment) of the first evidence
    dataset into the SR. A malformed value ("1975-03-02" as PatientBirthDate) would make it refuse the SR,
    or the SR would carry it to the PACS; a rewritten value would no longer match the images. Emptied, the
    type 2 attribute stays, and the draft is made. Only the keywords emptied are logged, never a value.
    """
    checked = copy.deepcopy(ds)
    emptied = []
    for element in checked:  # every value decoded here, under the data set's own character set
        if element.VR in _TEXT_VRS and not element.tag.is_private and not _valid_element(element):
            element.value = ""
            emptied.append(element.keyword or str(element.tag))
    emptied.extend(_checked_character_set(checked))
    if emptied:
        log.info(
            "evidence %s: %s emptied in the SR (not valid for the VR)",
            ds.get("SOPInstanceUID", "?"),
            ", ".join(emptied),
        )
    return checked


#: Character sets that extend the default repertoire by ISO 2022 escapes; the multi-byte ones may not come first.
_CODE_EXTENSION_PREFIX = "ISO 2022 "
_MULTI_BYTE_EXTENSIONS = frozenset({"ISO 2022 IR 87", "ISO 2022 IR 159", "ISO 2022 IR 149", "ISO 2022 IR 58"})
_HIGHDICOM_CHARACTER_SETS = frozenset(value.value for value in hd.SpecificCharacterSetValues)
UTF8_CHARACTER_SET = "ISO_IR 192"


def _character_set_terms(value: str | Iterable[str]) -> list[str]:
    """The terms of a Specific Character Set value: one string, or pydicom's MultiValue of several."""
    return [str(value)] if isinstance(value, str) else [str(term) for term in value]


def _highdicom_takes(terms: list[str]) -> bool:
    """Whether highdicom's SR constructor accepts ``terms`` as the SR's Specific Character Set (one term
    without code extensions, or several, each a code extension, the first not multi-byte)."""
    if not terms or any(term not in _HIGHDICOM_CHARACTER_SETS for term in terms):
        return False
    if len(terms) == 1:
        return not terms[0].startswith(_CODE_EXTENSION_PREFIX)
    return all(term.startswith(_CODE_EXTENSION_PREFIX) for term in terms) and terms[0] not in _MULTI_BYTE_EXTENSIONS


def _checked_character_set(checked: Dataset) -> list[str]:
    """Make the Specific Character Set of ``checked`` (whose values are already decoded) one the SR can carry.

    A set highdicom takes stays. A set pydicom knows but highdicom refuses (the usual Japanese
    ``\\ISO 2022 IR 87``, whose first value is empty) becomes UTF-8: the very characters, encoded so
    that any of them fits. An unknown set (``ISO_IR 999``) is removed, and every text value with a character
    outside the default repertoire is emptied, since what it says cannot be known. Returns what was emptied.
    """
    if "SpecificCharacterSet" not in checked:
        return []
    terms = _character_set_terms(checked.SpecificCharacterSet)
    if _highdicom_takes(terms):
        return []
    if all(term in python_encoding for term in terms):
        checked.SpecificCharacterSet = UTF8_CHARACTER_SET
        return []
    del checked.SpecificCharacterSet
    emptied = ["SpecificCharacterSet"]
    for element in checked:
        if element.VR in _TEXT_VRS and not element.tag.is_private and not str(element.value or "").isascii():
            element.value = ""
            emptied.append(element.keyword or str(element.tag))
    return emptied


def prepared_evidence(evidence: Sequence[Dataset]) -> list[Dataset]:
    """The evidence as highdicom is given it: the first dataset (the one it copies demographics from) checked
    by :func:`_checked_demographics`; every dataset with the attributes highdicom needs."""
    first, *others = evidence
    return [_with_required_tags(_checked_demographics(first)), *(_with_required_tags(ds) for ds in others)]


def _laterality(side: Side) -> hd.sr.CodeContentItem | None:
    if side not in LATERALITY:
        return None
    return hd.sr.CodeContentItem(
        name=codes.SCT.Laterality,
        value=LATERALITY[side],
        relationship_type=hd.sr.RelationshipTypeValues.HAS_CONCEPT_MOD,
    )


def _finding_items(
    pack: Pack, finding: SideFinding, sentence: str, sop_classes: dict[str, str]
) -> list[hd.sr.ContentItem]:
    laterality = _laterality(finding.side)
    text = hd.sr.TextContentItem(
        name=codes.DCM.Finding, value=sentence, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS
    )
    if laterality is not None:
        text.ContentSequence = hd.sr.ContentSequence([laterality])
    coded = hd.sr.CodeContentItem(
        name=codes.DCM.Finding,
        value=finding_code(pack, finding.hardware),
        relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
    )
    # A second laterality item (the first is the text's): not None, since the side is the same.
    children: list[hd.sr.ContentItem] = (
        [] if laterality is None else [cast(hd.sr.CodeContentItem, _laterality(finding.side))]
    )
    children.append(
        hd.sr.NumContentItem(
            name=PROBABILITY_CODE,
            value=round(finding.probability, 4),
            unit=codes.UCUM.NoUnits,
            relationship_type=hd.sr.RelationshipTypeValues.HAS_PROPERTIES,
        )
    )
    children.extend(
        hd.sr.ImageContentItem(
            name=codes.DCM.SourceImage,
            referenced_sop_class_uid=sop_classes[uid],
            referenced_sop_instance_uid=uid,
            relationship_type=hd.sr.RelationshipTypeValues.INFERRED_FROM,
        )
        for uid in finding.sop_instance_uids
    )
    coded.ContentSequence = hd.sr.ContentSequence(children)
    return [text, coded]


def build_draft_sr(
    *,
    evidence: Sequence[Dataset],
    sections: Sequence[Section],
    text: DraftText,
    series_instance_uid: str,
    sop_instance_uid: str,
    series_number: int = 9901,
    previous_versions: Sequence[Dataset] = (),
) -> hd.sr.ComprehensiveSR:
    """Build the unverified draft SR in the evidence's study, referencing every evidence image.

    ``evidence`` are the source images' headers (pixel data not needed); ``sections`` (one per pack, each with
    its model and side findings) and ``text`` say the same thing, once coded and once as prose. The title is the
    first section's pack's; each section's model is a device observer and a contributing equipment item.
    ``previous_versions`` are earlier drafts of the same study that this one supersedes (Predecessor Documents
    Sequence).
    """
    if not evidence:
        raise ValueError("build_draft_sr needs at least one evidence dataset")
    findings = [finding for section in sections for finding in section.findings]
    if not findings:
        raise ValueError("build_draft_sr needs at least one finding")
    study_uids = {str(ds.StudyInstanceUID) for ds in evidence}
    if len(study_uids) != 1:
        raise ValueError(f"evidence spans {len(study_uids)} studies; a draft belongs to exactly one")
    evidence = prepared_evidence(evidence)
    sop_classes = {str(ds.SOPInstanceUID): str(ds.SOPClassUID) for ds in evidence}
    missing = {uid for f in findings for uid in f.sop_instance_uids} - set(sop_classes)
    if missing:
        raise ValueError(f"findings reference images not in the evidence: {sorted(missing)}")

    models = distinct_models(sections)
    observers: list[hd.sr.ContentItem] = []
    for model in models:
        context = hd.sr.ObserverContext(
            observer_type=codes.DCM.Device,
            observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
                uid=device_uid(model),
                name=model.name,
                manufacturer_name=MANUFACTURER,
                model_name=model.display_name,
            ),
        )
        observers.extend([*context])
    finding_items: list[hd.sr.ContentItem] = []
    for section in sections:
        for finding in section.findings:
            sentence = text.side_sentences[(section.pack.name, finding.side)]
            finding_items.extend(_finding_items(section.pack, finding, sentence, sop_classes))
    findings_container = hd.sr.ContainerContentItem(
        name=codes.DCM.Findings,
        is_content_continuous=False,
        relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
    )
    findings_container.ContentSequence = hd.sr.ContentSequence(finding_items)
    impressions = hd.sr.ContainerContentItem(
        name=codes.DCM.Impressions,
        is_content_continuous=False,
        relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
    )
    impressions.ContentSequence = hd.sr.ContentSequence(
        [
            hd.sr.TextContentItem(
                name=codes.DCM.Impression,
                value=text.impression,
                relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
            )
        ]
    )
    comment = hd.sr.TextContentItem(
        name=COMMENT,
        value=text.disclaimer,
        relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
    )
    root = hd.sr.ContainerContentItem(
        name=as_code(sections[0].pack.sr_title), is_content_continuous=False, template_id="2000"
    )
    root.ContentSequence = hd.sr.ContentSequence([*observers, findings_container, impressions, comment])

    sr = hd.sr.ComprehensiveSR(
        evidence=evidence,
        content=root,
        series_instance_uid=series_instance_uid,
        series_number=series_number,
        sop_instance_uid=sop_instance_uid,
        instance_number=1,
        manufacturer=MANUFACTURER,
        is_complete=False,
        is_final=False,
        is_verified=False,
        previous_versions=list(previous_versions) or None,
        series_description=SERIES_DESCRIPTION,
    )
    name_the_algorithms(sr, models)
    return sr


def distinct_models(sections: Sequence[Section]) -> list[ModelCard]:
    """The models of ``sections``, each once (by its weights), in their order."""
    return list({device_uid(section.model): section.model for section in sections}.values())


def name_the_algorithms(sr: Dataset, models: Sequence[ModelCard]) -> None:
    """Name ``models`` in ``sr`` as IHE AI Results asks (a Contributing Equipment item each) and declare the private
    coding scheme its codes use. Set as plain DICOM attributes: highdicom types them as lists of its own classes."""
    sr.ContributingEquipmentSequence = DicomSequence([algorithm_equipment(model) for model in models])
    sr.CodingSchemeIdentificationSequence = DicomSequence([private_scheme()])


def private_scheme() -> Dataset:
    item = Dataset()
    item.CodingSchemeDesignator = PRIVATE_SCHEME
    item.CodingSchemeName = "predraft finding codes"
    item.CodingSchemeResponsibleOrganization = "predraft project"
    return item


def algorithm_equipment(model: ModelCard) -> Dataset:
    item = Dataset()
    purpose = Dataset()
    purpose.CodeValue = PROCESSING_ALGORITHM.value
    purpose.CodingSchemeDesignator = PROCESSING_ALGORITHM.scheme_designator
    purpose.CodeMeaning = PROCESSING_ALGORITHM.meaning
    item.PurposeOfReferenceCodeSequence = DicomSequence([purpose])
    item.Manufacturer = MANUFACTURER
    item.ManufacturerModelName = model.name[:64]
    item.SoftwareVersions = [predraft.__version__, model.version[:64]]
    item.DeviceUID = device_uid(model)
    return item


# --- The SR a radiologist's review issues: a verified report, or a notice that the draft was rejected ---------

VERIFIED_SERIES_DESCRIPTION = "REPORT VERIFIED BY RADIOLOGIST (predraft)"
REJECTION_SERIES_DESCRIPTION = "AI DRAFT REJECTED (predraft)"
VERIFIED_SERIES_NUMBER = 9902
REJECTION_SERIES_NUMBER = 9903
_CONTAINERS_KEPT = {"121070", "121072"}  # Findings, Impressions (DCM)


def _person_observer(name: str, login_name: str, organization: str) -> list[hd.sr.ContentItem]:
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Person,
        observer_identifying_attributes=hd.sr.PersonObserverIdentifyingAttributes(
            name=name, login_name=login_name, organization_name=organization or None
        ),
    )
    return [*observer]  # unpacked, since iterating it types its items as ContentItem (list() sees Datasets)


def _draft_containers(draft_sr: Dataset) -> list[hd.sr.ContentItem]:
    """The draft's Findings and Impressions containers, as highdicom content items (copies)."""
    kept: list[hd.sr.ContentItem] = []
    for item in draft_sr.get("ContentSequence", []):
        concept = item.get("ConceptNameCodeSequence", [None])[0]
        if item.get("ValueType") == "CONTAINER" and concept is not None and concept.CodeValue in _CONTAINERS_KEPT:
            kept.append(hd.sr.ContainerContentItem.from_dataset(item, copy=True))
    return kept


def build_review_sr(
    *,
    evidence: Sequence[Dataset],
    draft_sr: Dataset,
    verified: bool,
    text: str,
    statement: str,
    verifier_name: str,
    verifier_login: str,
    organization: str,
    edited: bool,
    series_instance_uid: str,
    sop_instance_uid: str,
    results_sr: Dataset | None = None,
) -> hd.sr.ComprehensiveSR:
    """The SR that supersedes the AI draft ``draft_sr`` (and its AI results SR ``results_sr``, where it has one)
    once a radiologist reviewed it.

    ``verified`` True: the report as signed. Accepted as drafted (``edited`` False), it keeps the draft's
    Findings and Impressions containers (the coded findings, their probabilities and source images); edited,
    its Findings container holds the radiologist's ``text`` as one Finding, and the draft's coded findings are
    left out (they may no longer say what the text says). ``verified`` False: a notice that the draft was
    rejected; ``text`` (with the reason) is its only content.

    Both: CompletionFlag COMPLETE, VerificationFlag VERIFIED with the Verifying Observer Sequence naming the
    radiologist (``verifier_name`` as a DICOM person name, ``verifier_login`` as its identification code),
    PreliminaryFlag FINAL; the person as observer; ``statement`` (who verified or rejected what, and when) as a
    Comment; the draft and its AI results SR in the Predecessor Documents Sequence; the draft's Contributing
    Equipment (the algorithm) kept, since the content still derives from it.
    """
    if not evidence:
        raise ValueError("build_review_sr needs at least one evidence dataset")
    if not isinstance(text, str) or not text.strip():
        raise ValueError("build_review_sr needs a non-empty text")
    if not organization.strip():
        raise ValueError("organization must not be empty: Verifying Organization is DICOM type 1")
    if str(draft_sr.get("VerificationFlag", "")) != "UNVERIFIED":
        raise ValueError(
            f"draft_sr {draft_sr.get('SOPInstanceUID', '?')} is not an unverified draft "
            f"(VerificationFlag {draft_sr.get('VerificationFlag', 'absent')!r})"
        )
    study_uids = {str(ds.StudyInstanceUID) for ds in evidence} | {str(draft_sr.StudyInstanceUID)}
    if len(study_uids) != 1:
        raise ValueError(f"evidence and draft span {len(study_uids)} studies; a report belongs to exactly one")
    evidence = prepared_evidence(evidence)

    content: list[hd.sr.ContentItem] = _person_observer(verifier_name, verifier_login, organization)
    if verified and not edited:
        content.extend(_draft_containers(draft_sr))
    elif verified:
        findings = hd.sr.ContainerContentItem(
            name=codes.DCM.Findings,
            is_content_continuous=False,
            relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
        )
        findings.ContentSequence = hd.sr.ContentSequence(
            [
                hd.sr.TextContentItem(
                    name=codes.DCM.Finding, value=text, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS
                )
            ]
        )
        content.append(findings)
    else:
        content.append(
            hd.sr.TextContentItem(
                name=COMMENT,
                value=text,
                relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
            )
        )
    content.append(
        hd.sr.TextContentItem(
            name=COMMENT,
            value=statement,
            relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
        )
    )
    title = draft_sr.ConceptNameCodeSequence[0]  # the draft's title (its pack's) is the report's
    root = hd.sr.ContainerContentItem(
        name=Code(title.CodeValue, title.CodingSchemeDesignator, title.CodeMeaning),
        is_content_continuous=False,
        template_id="2000",
    )
    root.ContentSequence = hd.sr.ContentSequence(content)

    sr = hd.sr.ComprehensiveSR(
        evidence=evidence,
        content=root,
        series_instance_uid=series_instance_uid,
        series_number=VERIFIED_SERIES_NUMBER if verified else REJECTION_SERIES_NUMBER,
        sop_instance_uid=sop_instance_uid,
        instance_number=1,
        manufacturer=MANUFACTURER,
        is_complete=True,
        is_final=True,
        is_verified=True,
        verifying_observer_name=verifier_name,
        verifying_organization=organization,
        previous_versions=[draft_sr, *([] if results_sr is None else [results_sr])],
        series_description=VERIFIED_SERIES_DESCRIPTION if verified else REJECTION_SERIES_DESCRIPTION,
    )
    observer = sr.VerifyingObserverSequence[0]
    code = Dataset()
    if len(verifier_login) <= 16:
        code.CodeValue = verifier_login
    else:
        code.LongCodeValue = verifier_login
    code.CodingSchemeDesignator = PRIVATE_SCHEME
    code.CodeMeaning = f"predraft user {verifier_login}"[:64]
    observer.VerifyingObserverIdentificationCodeSequence = DicomSequence([code])
    if "ContributingEquipmentSequence" in draft_sr:
        sr.ContributingEquipmentSequence = copy.deepcopy(draft_sr.ContributingEquipmentSequence)
    if "CodingSchemeIdentificationSequence" in draft_sr:
        sr.CodingSchemeIdentificationSequence = copy.deepcopy(draft_sr.CodingSchemeIdentificationSequence)
    return sr
