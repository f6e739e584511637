"""The AI results SR (TID 1500) beside each draft: written by the real pipeline for a phantom study and the real
NEMA hip, valid for dciodvfy, read back by highdicom into the same findings as the narrative draft, with the region
each side's model read; turned off by its setting; superseded with the draft by a review.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.uid import generate_uid
from sqlalchemy import select

from predraft.core.db import session_scope
from predraft.core.schema import Draft, Instance, Prediction, Study
from predraft.models.phantoms import write_demo_study
from predraft.models.taxonomy import Side, View
from predraft.reporting.results_sr import RESULTS_SERIES_DESCRIPTION, read_results_sr
from predraft.reporting.sr import build_review_sr
from tests.conftest import real_file
from tests.inprocess import draft_in_process

COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"


def _real_hip(folder: Path) -> Path:
    """The NEMA hip (RG2) as a study of its own, tagged as a PACS sends it."""
    ds = pydicom.dcmread(real_file("RG2_UNC.dcm"))
    ds.StudyInstanceUID = generate_uid(entropy_srcs=["results-sr", "rg2"])
    ds.SOPInstanceUID = generate_uid(entropy_srcs=["results-sr", "rg2", "image"])
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "rg2.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture(scope="module")
def drafted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The demo phantom study and the real hip, drafted by the real tasks in this process."""
    folder = tmp_path_factory.mktemp("results-sr")
    paths = [image.path for image in write_demo_study(folder / "phantom")] + [_real_hip(folder / "real")]
    url = draft_in_process(folder, paths)
    with session_scope(url) as session:
        drafts = {}
        for study in session.scalars(select(Study).order_by(Study.id)):
            (draft,) = study.drafts
            rows = session.execute(
                select(Prediction, Instance).join(Instance).where(Instance.study_id == study.id)
            ).all()
            drafts[study.study_uid] = {
                "draft": {
                    "findings": draft.findings,
                    "sr_path": draft.sr_path,
                    "results_sr_path": draft.results_sr_path,
                    "results_sr_uid": draft.results_sr_sop_instance_uid,
                    "results_series_uid": draft.results_sr_series_uid,
                },
                "regions": {(i.sop_instance_uid, p.side): p.region for p, i in rows},
                "images": {i.sop_instance_uid: i.spool_path for _, i in rows},
            }
    return {"url": url, "studies": drafts}


def _studies(drafted: dict[str, Any]) -> list[dict[str, Any]]:
    return list(drafted["studies"].values())


def test_each_draft_has_a_results_sr_in_a_series_of_its_own(drafted):
    for study in _studies(drafted):
        draft = study["draft"]
        assert draft["results_sr_path"] and Path(draft["results_sr_path"]).is_file()
        results = pydicom.dcmread(draft["results_sr_path"])
        narrative = pydicom.dcmread(draft["sr_path"])
        assert str(results.SOPClassUID) == COMPREHENSIVE_3D_SR
        assert results.SOPInstanceUID == draft["results_sr_uid"] != narrative.SOPInstanceUID
        assert results.SeriesInstanceUID == draft["results_series_uid"] != narrative.SeriesInstanceUID
        assert results.StudyInstanceUID == narrative.StudyInstanceUID
        assert results.SeriesDescription == RESULTS_SERIES_DESCRIPTION
        assert (results.CompletionFlag, results.VerificationFlag) == ("PARTIAL", "UNVERIFIED")
        assert results.ContentTemplateSequence[0].TemplateIdentifier == "1500"
        equipment = results.ContributingEquipmentSequence[0]
        assert equipment.PurposeOfReferenceCodeSequence[0].CodeMeaning == "Processing Algorithm"
        assert equipment.DeviceUID == narrative.ContributingEquipmentSequence[0].DeviceUID


def test_highdicom_reads_back_each_sides_finding_probability_images_and_region(drafted):
    for study in _studies(drafted):
        findings = {f["side"]: f for f in study["draft"]["findings"]}
        read = read_results_sr(pydicom.dcmread(study["draft"]["results_sr_path"]))
        assert sorted(r.side.value for r in read) == sorted(findings)
        for result in read:
            expected = findings[result.side.value]
            assert result.probability == pytest.approx(expected["probability"], abs=1e-4)
            assert result.finding.meaning  # the pack's code of the class, or indeterminate
            if expected["hardware"] is None:
                assert result.finding.value == "INDET"
            assert result.comment and result.comment in _narrative_findings(study["draft"]["sr_path"])
            assert set(result.source_images) <= set(study["images"]) and result.source_images
            assert result.region_image in result.source_images
            top, bottom, left, right = study["regions"][(result.region_image, result.side.value)]
            # A closed rectangle, (column, row) pairs, around exactly the pixels the model read for this side.
            assert result.region == (
                (left, top),
                (right, top),
                (right, bottom),
                (left, bottom),
                (left, top),
            )
            assert result.algorithm and result.algorithm_version


def _narrative_findings(sr_path: str) -> str:
    ds = pydicom.dcmread(sr_path)
    texts = []
    for item in ds.ContentSequence:
        for child in item.get("ContentSequence", []):
            if child.ValueType == "TEXT":
                texts.append(child.TextValue)
    return "\n".join(texts)


def test_an_ap_pelvis_gives_each_hip_its_own_half_of_the_image(drafted):
    phantom = next(s for s in _studies(drafted) if len(s["images"]) == 3)  # the three-view demo study
    pelvis = [(uid, side, region) for (uid, side), region in phantom["regions"].items() if side in ("right", "left")]
    by_image: dict[str, dict[str, list[int]]] = {}
    for uid, side, region in pelvis:
        by_image.setdefault(uid, {})[side] = region
    uid, halves = next((uid, regions) for uid, regions in by_image.items() if set(regions) == {"right", "left"})
    ds = pydicom.dcmread(phantom["images"][uid], stop_before_pixels=True)
    right, left = halves["right"], halves["left"]
    assert right[3] <= left[2], "the patient's right is on the image's left of an AP pelvis"
    assert all(value >= 0 for value in (*right, *left))
    assert max(right[1], left[1]) <= int(ds.Rows) and left[3] <= int(ds.Columns)


def test_both_srs_pass_dciodvfy_without_errors(drafted):
    dciodvfy = shutil.which("dciodvfy")
    if dciodvfy is None:
        pytest.skip("dciodvfy (dicom3tools) is not on PATH")
    for study in _studies(drafted):
        for path in (study["draft"]["sr_path"], study["draft"]["results_sr_path"]):
            result = subprocess.run([dciodvfy, path], capture_output=True, text=True, timeout=60)
            errors = [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("Error")]
            assert errors == [], f"{path}: {errors}"


def test_the_narrative_srs_containers_are_separate_items(drafted):
    for study in _studies(drafted):
        ds = pydicom.dcmread(study["draft"]["sr_path"])
        containers = [ds, *(item for item in ds.ContentSequence if item.ValueType == "CONTAINER")]
        assert [c.ContinuityOfContent for c in containers] == ["SEPARATE"] * len(containers)


def test_a_review_supersedes_the_draft_and_its_results_sr(drafted):
    study = _studies(drafted)[0]
    draft_sr = pydicom.dcmread(study["draft"]["sr_path"])
    results_sr = pydicom.dcmread(study["draft"]["results_sr_path"], stop_before_pixels=True)
    evidence = [pydicom.dcmread(path, stop_before_pixels=True) for path in study["images"].values()]
    report = build_review_sr(
        evidence=evidence,
        draft_sr=draft_sr,
        verified=True,
        text="as drafted",
        statement="verified",
        verifier_name="Doe^Jane",
        verifier_login="jdoe",
        organization="Hospital",
        edited=False,
        series_instance_uid=generate_uid(),
        sop_instance_uid=generate_uid(),
        results_sr=results_sr,
    )
    superseded = {
        sop.ReferencedSOPInstanceUID
        for predecessor in report.PredecessorDocumentsSequence
        for series in predecessor.ReferencedSeriesSequence
        for sop in series.ReferencedSOPSequence
    }
    assert superseded == {draft_sr.SOPInstanceUID, results_sr.SOPInstanceUID}


def test_the_setting_turns_the_results_sr_off(tmp_path):
    paths = [image.path for image in write_demo_study(tmp_path / "phantom")]
    url = draft_in_process(tmp_path, paths, env={"PREDRAFT_AI_RESULTS_SR": "false"})
    with session_scope(url) as session:
        (draft,) = session.scalars(select(Draft)).all()
        assert draft.results_sr_path is None and draft.results_sr_sop_instance_uid is None
        assert [document.results for document in draft.documents()] == [False]
        spooled = sorted(Path(draft.sr_path).parent.glob("*.dcm"))
    assert spooled == [Path(draft.sr_path)]


def test_the_side_is_read_back_from_the_finding_sites_laterality(drafted):
    sides = {
        r.side
        for study in _studies(drafted)
        for r in read_results_sr(pydicom.dcmread(study["draft"]["results_sr_path"]))
    }
    assert Side.RIGHT in sides  # the demo study's right hip is named; a side not stated reads back as unknown


def test_a_narrative_sr_is_no_results_sr(drafted):
    narrative = pydicom.dcmread(_studies(drafted)[0]["draft"]["sr_path"])
    with pytest.raises(ValueError, match="not a Comprehensive 3D SR"):
        read_results_sr(narrative)


@pytest.mark.parametrize(
    "region, error",
    [([0, 10, 0], TypeError), ([0, 10, 5, "x"], TypeError), ([10, 10, 0, 5], ValueError), ([-1, 5, 0, 5], ValueError)],
)
def test_a_hip_image_message_with_a_malformed_region_is_refused(region, error):
    import numpy as np

    from predraft.models.prepare import HipImage

    message = HipImage(Side.RIGHT, View.AP_HIP, np.zeros((4, 4), dtype=np.uint8), region=(0, 4, 0, 4)).to_message()
    assert HipImage.from_message(message).region == (0, 4, 0, 4)
    with pytest.raises(error):
        HipImage.from_message({**message, "region": region})
