"""Orthanc in front of predraft, configured by deploy/orthanc/ (the very files a site installs).

A real Orthanc (Debian's ``orthanc`` and ``orthanc-dicomweb``) runs on free ports with its own storage, from
deploy/orthanc/orthanc.json with only ports, paths and StableAge changed, and deploy/orthanc/route-hips.lua
as its Lua script. Studies go in over Orthanc's REST API, as a PACS or an engineer would put them there.
They reach predraft over DIMSE (the template's "Via": "dimse"), or over DICOMweb STOW-RS with a bearer token
("Via": "dicomweb", Orthanc's DICOMweb server "predraft" pointed at a predraft with PREDRAFT_DICOMWEB_TOKENS).
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import sqlite3
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid

from predraft.models.phantoms import write_demo_study
from tests.conftest import REPO_ROOT, free_port
from tests.e2e.conftest import Deployment, _start

pytestmark = pytest.mark.slow

DEPLOY = REPO_ROOT / "deploy" / "orthanc"
STABLE_AGE = 2  # seconds; the site default (60) would make this test slow
ORTHANC = shutil.which("Orthanc") or shutil.which("Orthanc", path="/usr/sbin:/usr/local/sbin")


@dataclass
class Orthanc:
    url: str
    dicom_port: int
    auth: str
    log_path: Path
    process: subprocess.Popen[bytes]

    def request(self, method: str, path: str, body: bytes | dict | None = None) -> dict | list | str:
        data = json.dumps(body).encode() if isinstance(body, dict) else body
        request = urllib.request.Request(
            self.url + path, data=data, method=method, headers={"Authorization": self.auth}
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            text = response.read().decode()
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            return text

    def upload(self, *files: Path) -> str:
        """POST each file to /instances; the Orthanc ID of their (one) study."""
        studies = {self.request("POST", "/instances", path.read_bytes())["ParentStudy"] for path in files}
        assert len(studies) == 1, studies
        return studies.pop()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def routing_lines(self, study_id: str) -> list[str]:
        return [
            line.split("predraft routing: ", 1)[1]
            for line in self.log().splitlines()
            if f"predraft routing: study {study_id}:" in line
        ]

    def wait_for_routing(self, study_id: str, count: int, timeout: float = 30.0) -> list[str]:
        """The route-hips.lua log lines of a study, once there are ``count`` of them (one per stable event)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            lines = self.routing_lines(study_id)
            if len(lines) >= count:
                return lines
            assert self.process.poll() is None, f"Orthanc died:\n{self.log()[-4000:]}"
            time.sleep(0.2)
        raise AssertionError(
            f"route-hips.lua said {self.routing_lines(study_id)} of study {study_id} after "
            f"{timeout} s (wanted {count} lines):\n{self.log()[-4000:]}"
        )

    def wait_for_jobs(self, timeout: float = 30.0) -> list[dict]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            jobs = self.request("GET", "/jobs?expand")
            if all(job["State"] not in {"Pending", "Running", "Retry"} for job in jobs):
                return jobs
            time.sleep(0.2)
        raise AssertionError(f"Orthanc jobs still running after {timeout} s: {jobs}")


def _site_config() -> dict:
    return json.loads((DEPLOY / "orthanc.json").read_text())


def _test_config(
    tmp_path: Path, predraft: Deployment, http_port: int | None = None, dicom_port: int | None = None
) -> tuple[dict, int, int]:
    """deploy/orthanc/orthanc.json with this test's ports (free ones unless given), storage and predraft;
    nothing else changed."""
    config = _site_config()
    http_port, dicom_port = http_port or free_port(), dicom_port or free_port()
    storage = tmp_path / "orthanc-storage"
    config.update(
        StorageDirectory=str(storage),
        IndexDirectory=str(storage),
        HttpPort=http_port,
        DicomPort=dicom_port,
        StableAge=STABLE_AGE,
        RemoteAccessAllowed=False,
        LuaScripts=[str(DEPLOY / "route-hips.lua")],
    )
    config["DicomModalities"]["predraft"].update(Host="127.0.0.1", Port=predraft.dimse_port)
    config["DicomWeb"]["Servers"]["predraft"]["Url"] = f"http://127.0.0.1:{predraft.http_port}/dicomweb/"
    return config, http_port, dicom_port


def _run_orthanc(tmp_path: Path, config: dict, http_port: int, dicom_port: int) -> Iterator[Orthanc]:
    """Orthanc on ``config`` (written beside its log in ``tmp_path``) until the test ends; its stop is checked."""
    config_path = tmp_path / "orthanc.json"
    config_path.write_text(json.dumps(config, indent=2))
    user, password = next(iter(config["RegisteredUsers"].items()))
    auth = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
    log_path = tmp_path / "orthanc.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen([ORTHANC, str(config_path)], stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)
    server = Orthanc(f"http://127.0.0.1:{http_port}", dicom_port, auth, log_path, process)
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, f"Orthanc exited {process.returncode}:\n{server.log()[-4000:]}"
            try:
                system = server.request("GET", "/system")
                break
            except (urllib.error.URLError, ConnectionError):
                assert time.monotonic() < deadline, f"Orthanc not up after 30 s:\n{server.log()[-4000:]}"
                time.sleep(0.2)
        assert system["DicomPort"] == dicom_port and system["PluginsEnabled"]
        yield server
    finally:
        process.terminate()
        try:
            code = process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            raise AssertionError("Orthanc did not stop within 30 s of SIGTERM") from None
        assert code == 0, f"Orthanc exited {code}:\n{server.log()[-3000:]}"


def _skip_without_orthanc() -> None:
    if ORTHANC is None:
        pytest.skip("Orthanc is not installed (apt-get install orthanc orthanc-dicomweb)")
    for plugin in _site_config()["Plugins"]:
        if not Path(plugin).exists():
            pytest.skip(f"Orthanc plugin {plugin} is absent (apt-get install orthanc-dicomweb)")


@pytest.fixture
def orthanc(embedded: Deployment, tmp_path: Path) -> Iterator[Orthanc]:
    _skip_without_orthanc()
    yield from _run_orthanc(tmp_path, *_test_config(tmp_path, embedded))


def _referenced(sr_path: str) -> set[str]:
    sr = pydicom.dcmread(sr_path)
    return {
        ref.ReferencedSOPInstanceUID
        for study in sr.CurrentRequestedProcedureEvidenceSequence
        for series in study.ReferencedSeriesSequence
        for ref in series.ReferencedSOPSequence
    }


def _sr_in_new_study(sr_path: str, target: Path) -> tuple[str, str]:
    """predraft's SR moved to a study of its own that says hip and pelvis everywhere it can."""
    ds = pydicom.dcmread(sr_path)
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.StudyDescription, ds.BodyPartExamined = "XR PELVIS AND HIPS", "PELVIS"
    ds.save_as(target)
    return str(ds.StudyInstanceUID), str(ds.SOPInstanceUID)


def _storescu(orthanc: Orthanc, path: Path, calling_ae: str) -> subprocess.CompletedProcess[str]:
    if shutil.which("storescu") is None:
        pytest.skip("dcmtk's storescu is not installed (apt-get install dcmtk)")
    return subprocess.run(
        ["storescu", "-aet", calling_ae, "-aec", "ORTHANC", "127.0.0.1", str(orthanc.dicom_port), str(path)],
        env={**os.environ, "TCP_NODELAY": "1"},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_orthanc_routes_hip_studies_to_predraft_and_never_srs(
    embedded: Deployment, orthanc: Orthanc, tmp_path: Path
) -> None:
    site = _site_config()
    servers = orthanc.request("GET", "/dicom-web/servers")
    assert "predraft" in servers  # the DICOMweb (STOW-RS) route is configured, ready for "Via": "dicomweb"
    assert orthanc.request("GET", "/modalities/predraft/configuration")["AET"] == "PREDRAFT"

    # (a) an explicit push over REST, as an engineer would re-send a study.
    pushed = write_demo_study(tmp_path / "pushed", seed=1)
    pushed_uid = str(pydicom.dcmread(pushed[0].path, stop_before_pixels=True).StudyInstanceUID)
    pushed_id = orthanc.upload(*(image.path for image in pushed))
    job = orthanc.request("POST", "/modalities/predraft/store", {"Resources": [pushed_id], "Synchronous": True})
    assert (job["RemoteAet"], job["InstancesCount"], job["FailedInstancesCount"]) == ("PREDRAFT", 3, 0), job

    # (b) a study that only arrives in Orthanc: route-hips.lua sends it once it is stable.
    routed = write_demo_study(tmp_path / "routed", seed=2)
    routed_uid = str(pydicom.dcmread(routed[0].path, stop_before_pixels=True).StudyInstanceUID)
    routed_id = orthanc.upload(*(image.path for image in routed))

    detail = embedded.wait_for_study(pushed_uid)
    assert detail["state"] == "drafted", detail
    assert _referenced(detail["draft"]["sr_path"]) == {image.sop_instance_uid for image in pushed}

    detail = embedded.wait_for_study(routed_uid)
    assert detail["state"] == "drafted", detail
    assert {i["sop_instance_uid"] for i in detail["instances"]} == {image.sop_instance_uid for image in routed}
    assert _referenced(detail["draft"]["sr_path"]) == {image.sop_instance_uid for image in routed}
    assert "Right hip" in detail["draft"]["text"]
    [line] = orthanc.wait_for_routing(routed_id, 1)
    assert re.fullmatch(
        rf"study {routed_id}: sending 3 instance\(s\) via dimse in job \S+ "
        r"\(0 already sent, 0 not routable\)",
        line,
    ), line
    for instance_id in orthanc.request("GET", f"/studies/{routed_id}/instances"):
        assert orthanc.request("GET", f"/instances/{instance_id['ID']}/metadata/PredraftRouted")

    # Orthanc takes predraft's SR back over DIMSE from AE PREDRAFT, and from no undeclared AE.
    pushed_detail = embedded.wait_for_study(pushed_uid)
    sr_path = Path(pushed_detail["draft"]["sr_path"])
    sr_uid = pushed_detail["draft"]["sr_sop_instance_uid"]
    stranger = _storescu(orthanc, sr_path, "STRANGER")
    assert stranger.returncode != 0 or "Store Failed" in stranger.stderr, stranger.stderr
    back = _storescu(orthanc, sr_path, site["DicomModalities"]["predraft"]["AET"])
    assert back.returncode == 0 and "Store Failed" not in back.stderr, back.stderr
    assert len(orthanc.request("GET", f"/studies/{pushed_id}")["Series"]) == 4  # 3 views + the SR

    # (c) SRs are never routed: predraft's own draft back in its study, and an SR alone in a "hip" study.
    sr_study_uid, lone_sr_uid = _sr_in_new_study(str(sr_path), tmp_path / "lone-sr.dcm")
    sr_study_id = orthanc.upload(tmp_path / "lone-sr.dcm")
    assert orthanc.wait_for_routing(sr_study_id, 1) == [
        f"study {sr_study_id}: nothing to send (0 already sent, 1 not routable)"
    ]
    # The pushed study was stable once before the SR came (3 images: not marked, as a REST push is not the
    # rule's); it becomes stable again with the SR, and the rule sends nothing new.
    lines = orthanc.wait_for_routing(pushed_id, 2)
    assert lines[-1] == f"study {pushed_id}: nothing to send (3 already sent, 1 not routable)", lines

    jobs = orthanc.wait_for_jobs()
    assert all(job["State"] == "Success" for job in jobs), jobs
    embedded.wait_until_no_association_is_open()  # Orthanc's jobs are done: nothing is still being answered
    assert embedded.study(sr_study_uid) is None
    after = embedded.study(pushed_uid)
    assert after is not None and after["state"] == "drafted" and after["generation"] == 1, after
    assert {i["sop_instance_uid"] for i in after["instances"]} == {image.sop_instance_uid for image in pushed}
    assert sr_uid not in {i["sop_instance_uid"] for i in after["instances"]}
    assert lone_sr_uid not in embedded.log_path.read_text()
    assert "ERROR" not in "\n".join(orthanc.routing_lines(pushed_id) + orthanc.routing_lines(routed_id))


# ---------------------------------------------------------------------------------------------------
# The DICOMweb route: STOW-RS from Orthanc's DICOMweb plugin to predraft's /dicomweb/studies, bearer token


STOW_TOKENS = ["some-other-sender-token", "orthanc-stow-token"]  # Orthanc has the second: predraft's "token#2"
STOW_SOURCE = "STOW:token#2"  # what predraft records as the sender of an instance that token stored


class BoundaryRefused(AssertionError):
    """predraft refused a STOW-RS request of Orthanc for its multipart boundary."""


@pytest.fixture
def stow_predraft(tmp_path: Path) -> Iterator[Deployment]:
    """predraft serve with DICOMweb open to the bearer tokens STOW_TOKENS."""
    yield from _start(tmp_path, {"PREDRAFT_DICOMWEB_TOKENS": json.dumps(STOW_TOKENS)})


@pytest.fixture(params=[pytest.param(True, id="chunked"), pytest.param(False, id="content-length")])
def stow_orthanc(request: pytest.FixtureRequest, stow_predraft: Deployment, tmp_path: Path) -> Iterator[Orthanc]:
    """Orthanc whose DICOMweb server "predraft" is stow_predraft with its token, and whose rule routes with
    "Via": "dicomweb"; with the plugin's default chunked transfers, or with "ChunkedTransfers": false (a
    Content-Length on each request)."""
    _skip_without_orthanc()
    config, http_port, dicom_port = _test_config(tmp_path, stow_predraft)
    server = config["DicomWeb"]["Servers"]["predraft"]
    server["HttpHeaders"]["Authorization"] = f"Bearer {STOW_TOKENS[1]}"
    if not request.param:
        server["ChunkedTransfers"] = False
    config["PredraftRouting"]["Via"] = "dicomweb"
    yield from _run_orthanc(tmp_path, config, http_port, dicom_port)


def _senders(predraft: Deployment, sop_instance_uids: set[str]) -> dict[str, str]:
    """Who sent each instance, as predraft recorded it (the DIMSE calling AE, or STOW:<user>): read from the
    embedded database, as ``predraft studies show`` does not say."""
    marks = ",".join("?" * len(sop_instance_uids))
    with closing(sqlite3.connect(predraft.var_dir / "predraft.sqlite")) as db:
        return dict(
            db.execute(
                f"SELECT sop_instance_uid, calling_ae FROM instances WHERE sop_instance_uid IN ({marks})",  # noqa: S608 - ? marks
                sorted(sop_instance_uids),
            ).fetchall()
        )


def _stow(orthanc: Orthanc, predraft: Deployment, study_id: str) -> dict:
    """POST /dicom-web/servers/predraft/stow of an Orthanc study, synchronously; the job's content. A failure
    says why, from both logs (Orthanc's answer and /jobs say only "Error encountered within the plugin engine")."""
    try:
        answer = orthanc.request("POST", "/dicom-web/servers/predraft/stow", {"Resources": [study_id]})
    except urllib.error.HTTPError as exc:
        errors = [line for line in orthanc.log().splitlines() if line.startswith("E")]
        refusals = [line for line in predraft.log_path.read_text().splitlines() if "refused" in line]
        refused = BoundaryRefused if any("no boundary parameter" in line for line in refusals) else AssertionError
        raise refused(
            f"STOW-RS from Orthanc failed with HTTP {exc.code}.\nOrthanc: {errors[-6:]}\npredraft: {refusals[-4:]}"
        ) from None
    assert isinstance(answer, dict), answer
    return answer


def test_orthanc_routes_hip_studies_to_predraft_over_stow_rs(
    stow_predraft: Deployment, stow_orthanc: Orthanc, tmp_path: Path
) -> None:
    orthanc, predraft = stow_orthanc, stow_predraft
    assert orthanc.request("GET", "/dicom-web/servers/predraft")  # the entry the site template declares

    # (a) an explicit STOW-RS push over Orthanc's REST API, as an engineer would re-send a study.
    pushed = write_demo_study(tmp_path / "pushed", seed=3)
    pushed_sops = {image.sop_instance_uid for image in pushed}
    pushed_uid = str(pydicom.dcmread(pushed[0].path, stop_before_pixels=True).StudyInstanceUID)
    pushed_id = orthanc.upload(*(image.path for image in pushed))
    job = _stow(orthanc, predraft, pushed_id)
    assert job["InstancesCount"] == "3", job
    assert _senders(predraft, pushed_sops) == dict.fromkeys(pushed_sops, STOW_SOURCE)  # stored before the answer

    # (b) a study that only arrives in Orthanc: route-hips.lua sends it over STOW-RS once it is stable.
    routed = write_demo_study(tmp_path / "routed", seed=4)
    routed_sops = {image.sop_instance_uid for image in routed}
    routed_uid = str(pydicom.dcmread(routed[0].path, stop_before_pixels=True).StudyInstanceUID)
    routed_id = orthanc.upload(*(image.path for image in routed))

    detail = predraft.wait_for_study(pushed_uid)
    assert detail["state"] == "drafted", detail
    assert _referenced(detail["draft"]["sr_path"]) == pushed_sops

    [line] = orthanc.wait_for_routing(routed_id, 1)
    assert re.fullmatch(
        rf"study {routed_id}: sending 3 instance\(s\) via dicomweb in job \S+ "
        r"\(0 already sent, 0 not routable\)",
        line,
    ), line
    detail = predraft.wait_for_study(routed_uid)
    assert detail["state"] == "drafted", detail
    assert {i["sop_instance_uid"] for i in detail["instances"]} == routed_sops
    assert _referenced(detail["draft"]["sr_path"]) == routed_sops
    assert "Right hip" in detail["draft"]["text"]
    assert _senders(predraft, routed_sops) == dict.fromkeys(routed_sops, STOW_SOURCE)

    # The pushed study became stable too, and the rule sent it again (a REST push does not mark instances):
    # predraft answers a second copy as stored, so the job succeeds, and keeps its one draft.
    [line] = orthanc.wait_for_routing(pushed_id, 1)
    assert line.startswith(f"study {pushed_id}: sending 3 instance(s) via dicomweb in job "), line
    jobs = orthanc.wait_for_jobs()
    assert [job["Type"] for job in jobs] == ["DicomWebStowClient"] * 3, jobs
    assert all(job["State"] == "Success" for job in jobs), jobs
    after = predraft.study(pushed_uid)
    assert after is not None and after["state"] == "drafted" and after["generation"] == 1, after
    assert "FAILED" not in "\n".join(orthanc.routing_lines(pushed_id) + orthanc.routing_lines(routed_id))
