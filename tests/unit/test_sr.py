"""predraft.reporting.sr.build_draft_sr: the unverified draft as a Comprehensive SR in the evidence's study."""

from __future__ import annotations

import copy
import shutil
import subprocess

import pydicom
import pytest
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_data_element
from pydicom.uid import generate_uid

from predraft.models.card import ModelCard
from predraft.models.pack import bundled_pack
from predraft.models.taxonomy import HardwareClass as H
from predraft.models.taxonomy import Side, View
from predraft.reporting.aggregate import SideFinding
from predraft.reporting.sr import build_draft_sr, device_uid
from predraft.reporting.text import Section, render_draft

HIP = bundled_pack().pack

COMPREHENSIVE_SR = "1.2.840.10008.5.1.4.1.1.88.33"


def _card(sha: str = "ab" * 32) -> ModelCard:
    return ModelCard(
        name="hiphw",
        version="2.1.0",
        architecture="test_efficientnet",
        input_size=64,
        classes=HIP.class_names,
        trained=False,
        weights="weights.safetensors",
        weights_sha256=sha,
    )


@pytest.fixture
def evidence(demo_study):
    return [pydicom.dcmread(image.path, stop_before_pixels=True) for image in demo_study]


@pytest.fixture
def findings(demo_study):
    pelvis, frog, cross = (image.sop_instance_uid for image in demo_study)
    return [
        SideFinding(
            Side.RIGHT,
            H.THA,
            0.91,
            {H.THA: 0.91, H.NONE: 0.09},
            (View.AP_PELVIS, View.FROG_LEG, View.CROSS_TABLE_LATERAL),
            (pelvis, frog, cross),
            "ok",
        ),
        SideFinding(
            Side.LEFT,
            None,
            0.41,
            {H.NONE: 0.41, H.HEMI: 0.39},
            (View.AP_PELVIS,),
            (pelvis,),
            "confidence 0.41 below the model's threshold 0.50",
        ),
    ]


def _sections(findings, card=None):
    return [Section(HIP, card or _card(), findings)]


def _build(evidence, findings, card=None, **kwargs):
    sections = _sections(findings, card)
    text = render_draft(sections, study_description="XR PELVIS AND RIGHT HIP 3 VIEWS")
    arguments = dict(
        evidence=evidence,
        sections=sections,
        text=text,
        series_instance_uid=generate_uid(),
        sop_instance_uid=generate_uid(),
    )
    arguments.update(kwargs)
    return build_draft_sr(**arguments)


def _walk(items):
    for item in items:
        yield item
        yield from _walk(item.get("ContentSequence", []))


def test_flags_say_partial_unverified_preliminary(evidence, findings):
    sr = _build(evidence, findings)
    assert sr.SOPClassUID == COMPREHENSIVE_SR
    assert (sr.CompletionFlag, sr.VerificationFlag, sr.PreliminaryFlag) == ("PARTIAL", "UNVERIFIED", "PRELIMINARY")
    assert sr.Modality == "SR"
    assert "UNVERIFIED AI DRAFT" in sr.SeriesDescription


def test_sr_joins_the_evidence_study_in_a_new_series(evidence, findings):
    series_uid, sop_uid = generate_uid(), generate_uid()
    sr = _build(evidence, findings, series_instance_uid=series_uid, sop_instance_uid=sop_uid)
    assert sr.StudyInstanceUID == evidence[0].StudyInstanceUID
    assert sr.SeriesInstanceUID == series_uid
    assert sr.SeriesInstanceUID not in {ds.SeriesInstanceUID for ds in evidence}
    assert sr.SOPInstanceUID == sop_uid
    assert (sr.PatientID, sr.PatientName) == (evidence[0].PatientID, evidence[0].PatientName)
    assert sr.AccessionNumber == evidence[0].AccessionNumber


def test_evidence_sequence_references_every_image(evidence, findings):
    sr = _build(evidence, findings)
    referenced = {
        (sop.ReferencedSOPClassUID, sop.ReferencedSOPInstanceUID)
        for study in sr.CurrentRequestedProcedureEvidenceSequence
        for series in study.ReferencedSeriesSequence
        for sop in series.ReferencedSOPSequence
    }
    assert referenced == {(ds.SOPClassUID, ds.SOPInstanceUID) for ds in evidence}
    assert {study.StudyInstanceUID for study in sr.CurrentRequestedProcedureEvidenceSequence} == {
        evidence[0].StudyInstanceUID
    }


def test_device_uid_is_derived_from_the_weights(evidence, findings):
    sr = _build(evidence, findings, card=_card("ab" * 32))
    equipment = sr.ContributingEquipmentSequence[0]
    assert equipment.DeviceUID.startswith("2.25.")
    assert len(equipment.DeviceUID) <= 64
    assert equipment.DeviceUID == device_uid(_card("ab" * 32))
    assert equipment.PurposeOfReferenceCodeSequence[0].CodeMeaning == "Processing Algorithm"
    assert list(equipment.SoftwareVersions)[-1] == "2.1.0"

    again = _build(copy.deepcopy(evidence), findings, card=_card("ab" * 32))
    other = _build(copy.deepcopy(evidence), findings, card=_card("cd" * 32))
    assert again.ContributingEquipmentSequence[0].DeviceUID == equipment.DeviceUID
    assert other.ContributingEquipmentSequence[0].DeviceUID != equipment.DeviceUID
    assert other.ContributingEquipmentSequence[0].DeviceUID.startswith("2.25.")


def test_content_holds_the_text_and_the_coded_findings(evidence, findings, demo_study):
    sr = _build(evidence, findings)
    items = list(_walk(sr.ContentSequence))
    text = "\n".join(item.TextValue for item in items if item.ValueType == "TEXT")
    assert "Right hip: Total hip arthroplasty." in text
    assert "Left hip: Indeterminate, review." in text
    assert "UNTRAINED" in text

    codes = {
        (c.CodeValue, c.CodingSchemeDesignator)
        for item in items
        if item.ValueType == "CODE"
        for c in item.ConceptCodeSequence
    }
    assert ("304120007", "SCT") in codes  # the hip pack's code of a total hip arthroplasty
    assert ("INDET", "99PREDRAFT") in codes

    images = {item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID for item in items if item.ValueType == "IMAGE"}
    assert images == {image.sop_instance_uid for image in demo_study}
    numbers = [item.MeasuredValueSequence[0].NumericValue for item in items if item.ValueType == "NUM"]
    assert sorted(float(n) for n in numbers) == [0.41, 0.91]


def test_sr_survives_a_file_round_trip(evidence, findings, tmp_path):
    sr = _build(evidence, findings)
    path = tmp_path / "draft.dcm"
    sr.save_as(path, enforce_file_format=True)
    loaded = pydicom.dcmread(path)
    assert loaded.SOPClassUID == COMPREHENSIVE_SR
    assert loaded.SOPInstanceUID == sr.SOPInstanceUID
    assert loaded.ContributingEquipmentSequence[0].DeviceUID == sr.ContributingEquipmentSequence[0].DeviceUID


def test_evidence_from_two_studies_is_refused(evidence, findings):
    stranger = copy.deepcopy(evidence[1])
    stranger.StudyInstanceUID = generate_uid()
    with pytest.raises(ValueError, match="evidence spans 2 studies"):
        _build([evidence[0], stranger, evidence[2]], findings)


def test_findings_must_reference_evidence_images(evidence, findings):
    with pytest.raises(ValueError, match="not in the evidence"):
        _build(evidence[:1], findings)


def test_empty_evidence_or_findings_is_refused(evidence, findings):
    text = render_draft(_sections(findings))
    with pytest.raises(ValueError, match="at least one evidence"):
        build_draft_sr(
            evidence=[],
            sections=_sections(findings),
            text=text,
            series_instance_uid=generate_uid(),
            sop_instance_uid=generate_uid(),
        )
    with pytest.raises(ValueError, match="at least one finding"):
        build_draft_sr(
            evidence=evidence,
            sections=[],
            text=text,
            series_instance_uid=generate_uid(),
            sop_instance_uid=generate_uid(),
        )


def test_dciodvfy_finds_no_error(evidence, findings, tmp_path):
    dciodvfy = shutil.which("dciodvfy")
    if dciodvfy is None:
        pytest.skip("dciodvfy (dicom3tools) is not on PATH")
    path = tmp_path / "draft.dcm"
    _build(evidence, findings).save_as(path, enforce_file_format=True)
    result = subprocess.run([dciodvfy, str(path)], capture_output=True, text=True, timeout=60)
    output = result.stdout + result.stderr
    errors = [line for line in output.splitlines() if line.startswith("Error")]
    assert errors == [], output
    assert "ComprehensiveSR" in output  # it recognised the IOD


def test_finding_sentences_keep_their_side_with_a_site_findings_template(evidence, findings, tmp_path):
    from predraft.reporting.text import make_environment

    (tmp_path / "findings.txt.j2").write_text(
        "Hardware by hip:\n{% for finding in findings %}{{ finding.hip_label }}: {{ finding.sentence }}\n{% endfor %}"
    )
    sections = _sections(findings)
    text = render_draft(sections, environment=make_environment(tmp_path))
    sr = build_draft_sr(
        evidence=evidence,
        sections=sections,
        text=text,
        series_instance_uid=generate_uid(),
        sop_instance_uid=generate_uid(),
    )
    right_texts = [
        item.TextValue
        for item in _walk(sr.ContentSequence)
        if item.ValueType == "TEXT"
        and any(
            child.ValueType == "CODE" and child.ConceptCodeSequence[0].CodeMeaning == "Right"
            for child in item.get("ContentSequence", [])
        )
    ]
    assert right_texts and all(value.startswith("Right hip") for value in right_texts)


# --- Malformed demographics (issue 14, item 5b): emptied, never rewritten; valid ones kept byte for byte ------

MALFORMED = [
    ("PatientBirthDate", "1975-03-02"),
    ("PatientBirthDate", "19751302"),  # month 13
    ("StudyDate", "2024/01/02"),
    ("StudyTime", "25:61"),
    ("PatientSex", "MALE"),
    ("PatientName", "DOE^JOHN\x07"),  # a control character
    ("PatientName", "X" * 70 + "^JOHN"),  # a component over 64 characters
    ("AccessionNumber", "A" * 17),  # SH: 16 at most
    ("StudyID", "S" * 17),
    ("PatientID", "ID\x01\x02"),
    ("PatientID", "ID1\\ID2"),  # two values where one is allowed (VM 1)
    ("ReferringPhysicianName", "DR\x1bWHO\x00"),
    ("PatientAge", "45 years"),  # copied with the Patient Study module
]


def _demographics(ds) -> dict[str, bytes]:
    """The raw value bytes of the patient and study attributes of ``ds`` (after a file round trip)."""
    keywords = (
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "PatientSex",
        "AccessionNumber",
        "StudyID",
        "StudyDate",
        "StudyTime",
        "ReferringPhysicianName",
        "PatientAge",
    )
    return {keyword: _raw_value(ds, keyword) for keyword in keywords if keyword in ds}


def _raw_value(ds, keyword: str) -> bytes:
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, False
    write_data_element(buffer, ds[keyword], encodings=["iso_ir_100"])
    return buffer.getvalue()


@pytest.mark.parametrize(("keyword", "value"), MALFORMED, ids=[f"{k}-{i}" for i, (k, _) in enumerate(MALFORMED)])
def test_a_malformed_demographic_is_emptied_and_the_others_kept(evidence, findings, tmp_path, keyword, value):
    broken = copy.deepcopy(evidence)
    for ds in broken:
        setattr(ds, keyword, value)
    untouched = copy.deepcopy(broken[0])
    sr = _build(broken, findings)  # no exception: the study still gets its draft
    path = tmp_path / "draft.dcm"
    sr.save_as(path, enforce_file_format=True)
    loaded = pydicom.dcmread(path)

    assert keyword in loaded and loaded[keyword].value in ("", None)  # emptied (type 2 kept), never rewritten
    expected = {k: v for k, v in _demographics(evidence[0]).items() if k != keyword}
    kept = {k: v for k, v in _demographics(loaded).items() if k != keyword}
    assert kept == expected
    assert _raw_value(broken[0], keyword) == _raw_value(untouched, keyword)  # the caller's evidence is left alone


def test_valid_but_unusual_demographics_are_kept_byte_for_byte(evidence, findings, tmp_path):
    """A name without "^" ("JOHN SMITH", common in real exports) is valid DICOM: it is kept, not rewritten."""
    unusual = copy.deepcopy(evidence)
    for ds in unusual:
        ds.PatientName, ds.PatientBirthDate, ds.PatientSex = "JOHN SMITH", "19750302", "M"
        ds.AccessionNumber, ds.StudyTime = "A" * 16, "101112.123456"
    sr = _build(unusual, findings)
    path = tmp_path / "draft.dcm"
    sr.save_as(path, enforce_file_format=True)
    assert _demographics(pydicom.dcmread(path)) == _demographics(unusual[0])


@pytest.mark.parametrize(
    ("charset", "name", "sr_charset", "sr_name"),
    [
        ("ISO_IR 100", "MÜLLER^HANS", "ISO_IR 100", "MÜLLER^HANS"),  # highdicom takes it: kept
        (
            ["", "ISO 2022 IR 87"],
            "YAMADA^TARO",
            "ISO_IR 192",
            "YAMADA^TARO",
        ),  # pydicom reads it: UTF-8, same characters
        ("ISO_IR 999", "SMITH^JOHN", None, "SMITH^JOHN"),  # unknown set: removed, ASCII values kept
        ("ISO_IR 999", "MÜLLER^HANS", None, ""),  # unknown set: what a non-ASCII value says cannot be known
    ],
)
def test_a_character_set_the_sr_cannot_carry_still_gives_a_draft(
    evidence, findings, tmp_path, charset, name, sr_charset, sr_name
):
    """A bogus SpecificCharacterSet in one image made highdicom refuse the SR, and the study lost its draft."""
    odd = copy.deepcopy(evidence)
    for ds in odd:
        ds.SpecificCharacterSet, ds.PatientName = charset, name
    sr = _build(odd, findings)
    path = tmp_path / "draft.dcm"
    sr.save_as(path, enforce_file_format=True)
    loaded = pydicom.dcmread(path)
    assert loaded.get("SpecificCharacterSet") == sr_charset
    assert str(loaded.PatientName) == sr_name
    assert str(loaded.PatientID) == str(evidence[0].PatientID)


def test_an_attribute_pydicom_does_not_know_does_not_cost_the_draft(evidence, findings):
    """A public attribute newer than pydicom's dictionary, with several values, is copied as it is."""
    from pydicom.tag import Tag

    unknown = Tag(0x0018, 0x9FF1)
    newer = copy.deepcopy(evidence)
    for ds in newer:
        ds.add_new(unknown, "CS", ["ONE", "TWO"])
    sr = _build(newer, findings)
    assert str(sr.PatientID) == str(evidence[0].PatientID)
