"""The round trip with Orthanc as the PACS: Orthanc routes a three-view phantom study to predraft, and
predraft's drafted SR comes back into the same study in Orthanc, by C-STORE and by STOW-RS.

Orthanc runs from deploy/orthanc/orthanc.json and route-hips.lua (ports, storage and StableAge changed
only, as in test_orthanc.py); ``predraft serve`` runs with Orthanc as its two export destinations (its
DICOM port, AE ORTHANC; its DICOMweb plugin, basic auth) and lets only Orthanc's AE title call it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest

from predraft.models.phantoms import write_demo_study
from tests.conftest import free_port, sr_text
from tests.e2e.conftest import Deployment, _start
from tests.e2e.test_orthanc import Orthanc, _run_orthanc, _site_config, _skip_without_orthanc, _test_config

pytestmark = pytest.mark.slow

DISCLAIMER = "Unverified AI draft by predraft"


@pytest.fixture
def orthanc_ports() -> tuple[int, int]:
    """Orthanc's HTTP and DICOM ports, chosen before either server starts: each names the other."""
    return free_port(), free_port()


@pytest.fixture
def exporting_predraft(tmp_path: Path, orthanc_ports: tuple[int, int]) -> Iterator[Deployment]:
    _skip_without_orthanc()
    site = _site_config()
    http_port, dicom_port = orthanc_ports
    password = site["RegisteredUsers"]["predraft"]  # the site template's user for predraft's STOW-RS
    destinations = [
        {"kind": "dimse", "name": "orthanc", "ae_title": site["DicomAet"], "host": "127.0.0.1", "port": dicom_port},
        {
            "kind": "stow",
            "name": "orthanc-dicomweb",
            "url": f"http://127.0.0.1:{http_port}{site['DicomWeb']['Root']}",
            "auth": "basic",
            "username": "predraft",
            "password": password,
        },
    ]
    yield from _start(
        tmp_path,
        {
            "PREDRAFT_EXPORT_DESTINATIONS": json.dumps(destinations),
            "PREDRAFT_ALLOWED_CALLING_AES": json.dumps([site["DicomAet"]]),
            "PREDRAFT_EXPORT_RETRY_DELAY_SECONDS": "1",
        },
    )


@pytest.fixture
def orthanc(exporting_predraft: Deployment, tmp_path: Path, orthanc_ports: tuple[int, int]) -> Iterator[Orthanc]:
    yield from _run_orthanc(tmp_path, *_test_config(tmp_path, exporting_predraft, *orthanc_ports))


def _wait_for_exports(predraft: Deployment, study_uid: str, timeout: float = 90.0) -> dict:
    """``predraft studies show --json`` once every export of the study's draft is sent; fails on a dead one."""
    deadline = time.monotonic() + timeout
    detail = None
    while time.monotonic() < deadline:
        detail = predraft.study(study_uid)
        exports = (detail or {}).get("draft", {}) and detail["draft"]["exports"]
        if exports and any(export["state"] == "dead" for export in exports):
            raise AssertionError(f"an export is dead: {exports}\n{predraft.log_path.read_text()[-3000:]}")
        if exports and all(export["state"] == "sent" for export in exports):
            return detail
        time.sleep(0.5)
    raise AssertionError(
        f"exports of {study_uid} not sent after {timeout} s: {detail}\n{predraft.log_path.read_text()[-4000:]}"
    )


def _download(orthanc: Orthanc, path: str) -> bytes:
    request = urllib.request.Request(orthanc.url + path, headers={"Authorization": orthanc.auth})
    with urllib.request.urlopen(request, timeout=60) as response:
        return response.read()


def test_orthanc_routes_a_study_to_predraft_and_gets_the_draft_sr_back(
    exporting_predraft: Deployment, orthanc: Orthanc, tmp_path: Path
) -> None:
    predraft = exporting_predraft
    study = write_demo_study(tmp_path / "study", seed=5)  # AP pelvis, right frog-leg, right cross-table lateral
    study_uid = str(pydicom.dcmread(study[0].path, stop_before_pixels=True).StudyInstanceUID)
    orthanc_study = orthanc.upload(*(image.path for image in study))

    detail = predraft.wait_for_study(study_uid)  # route-hips.lua sends it once it is stable
    assert detail["state"] == "drafted", detail
    detail = _wait_for_exports(predraft, study_uid)
    exports = {export["destination"]: export for export in detail["draft"]["exports"]}
    assert set(exports) == {"orthanc", "orthanc-dicomweb"}
    assert all(export["attempts"] == 1 and export["exported_at"] for export in exports.values()), exports
    sr_uid = detail["draft"]["sr_sop_instance_uid"]
    results_uid = detail["draft"]["results_sr_sop_instance_uid"]

    # Both SRs are in the very study in Orthanc, each as its own series, found through the REST API.
    instances = orthanc.request("GET", f"/studies/{orthanc_study}/instances")
    by_uid = {instance["MainDicomTags"]["SOPInstanceUID"]: instance["ID"] for instance in instances}
    assert set(by_uid) == {image.sop_instance_uid for image in study} | {sr_uid, results_uid}
    results_tags = orthanc.request("GET", f"/instances/{by_uid[results_uid]}/simplified-tags")
    assert (results_tags["SOPClassUID"], results_tags["VerificationFlag"]) == (
        "1.2.840.10008.5.1.4.1.1.88.34",
        "UNVERIFIED",
    )
    tags = orthanc.request("GET", f"/instances/{by_uid[sr_uid]}/simplified-tags")
    assert (tags["Modality"], tags["StudyInstanceUID"]) == ("SR", study_uid)
    assert (tags["CompletionFlag"], tags["VerificationFlag"]) == ("PARTIAL", "UNVERIFIED")

    sr_file = tmp_path / "sr-from-orthanc.dcm"
    sr_file.write_bytes(_download(orthanc, f"/instances/{by_uid[sr_uid]}/file"))
    sr = pydicom.dcmread(sr_file)
    text = sr_text(sr)
    for phrase in ("Right hip", "Left hip", DISCLAIMER):
        assert phrase in text, text
    assert sr.PreliminaryFlag == "PRELIMINARY"

    if shutil.which("dciodvfy") is None:
        pytest.skip("dciodvfy (Debian dicom3tools) is not installed")
    results_file = tmp_path / "results-sr-from-orthanc.dcm"
    results_file.write_bytes(_download(orthanc, f"/instances/{by_uid[results_uid]}/file"))
    for path in (sr_file, results_file):
        check = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
        errors = [line for line in (check.stdout + check.stderr).splitlines() if "Error" in line]
        assert errors == [], "\n".join(errors)

    # The SRs coming back make the study stable again; the rule does not send them (nor the images) on.
    lines = orthanc.wait_for_routing(orthanc_study, 2)
    assert lines[-1] == f"study {orthanc_study}: nothing to send (3 already sent, 2 not routable)", lines
    after = predraft.study(study_uid)
    assert after is not None and after["generation"] == 1 and len(after["instances"]) == 3, after
