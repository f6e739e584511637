"""DICOMweb against a real ``predraft serve``: STOW-RS in, the draft out over QIDO-RS and WADO-RS, and bad
requests that get their status while the server goes on serving.

One deployment serves the whole module (starting one takes seconds); every test uses studies of its own.
"""

from __future__ import annotations

import base64
import email
import email.policy
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from pydicom.uid import generate_uid

from predraft.listener.dicomweb.status import FAILURE_CANNOT_UNDERSTAND, FAILURE_STUDY_UID_MISMATCH
from predraft.models.phantoms import PhantomImage, write_demo_study
from tests.e2e.conftest import Deployment, _start

pytestmark = pytest.mark.slow

TOKEN = "test-token"
USER, PASSWORD = "pacs", "s3cret-7Q"
MAX_UPLOAD_BYTES = 4_000_000  # the demo study (three images of about 0.6 MB) fits; the oversized bodies do not
BEARER = {"Authorization": f"Bearer {TOKEN}"}
BOUNDARY = "predraft-test-boundary"
MULTIPART = f'multipart/related; type="application/dicom"; boundary="{BOUNDARY}"'
CR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.1"
TIMEOUT = 60


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    yield from _start(
        tmp_path_factory.mktemp("dicomweb"),
        {
            "PREDRAFT_DICOMWEB_TOKENS": f'["{TOKEN}"]',
            "PREDRAFT_DICOMWEB_USERS": f'{{"{USER}": "{PASSWORD}"}}',
            "PREDRAFT_DICOMWEB_MAX_UPLOAD_BYTES": str(MAX_UPLOAD_BYTES),
        },
    )


def _url(server: Deployment, path: str = "") -> str:
    return f"http://127.0.0.1:{server.http_port}/dicomweb{path}"


def _client(server: Deployment, authorization: str = f"Bearer {TOKEN}") -> DICOMwebClient:
    return DICOMwebClient(url=_url(server), headers={"Authorization": authorization})


def _multipart(*parts: bytes, boundary: str = BOUNDARY) -> bytes:
    body = b"".join(
        b"--%s\r\nContent-Type: application/dicom\r\n\r\n%s\r\n" % (boundary.encode(), part) for part in parts
    )
    return body + b"--%s--\r\n" % boundary.encode()


def _post(
    server: Deployment,
    body: bytes | Iterator[bytes],
    content_type: str = MULTIPART,
    path: str = "/studies",
    headers: dict[str, str] | None = None,
) -> requests.Response:
    return requests.post(
        _url(server, path),
        data=body,
        timeout=TIMEOUT,
        headers={**BEARER, "Content-Type": content_type, **(headers or {})},
    )


def _retrieved_parts(response: requests.Response) -> list[bytes]:
    """The parts of a multipart WADO-RS response, split by the standard library's MIME parser."""
    head = f"Content-Type: {response.headers['Content-Type']}\r\n\r\n".encode()
    message = email.message_from_bytes(head + response.content, policy=email.policy.HTTP)
    return [part.get_payload(decode=True) for part in message.iter_parts()]


def _fresh_image(tmp_path: Path, seed: int) -> PhantomImage:
    return write_demo_study(tmp_path / f"study-{seed}", seed=seed)[0]


def _assert_serving(server: Deployment) -> None:
    response = requests.get(f"http://127.0.0.1:{server.http_port}/healthz", timeout=TIMEOUT)
    assert response.status_code == 200, response.text


def test_stored_study_is_drafted_and_the_draft_can_be_fetched(server: Deployment, tmp_path: Path) -> None:
    demo = write_demo_study(tmp_path / "demo", seed=1)
    sent = {image.sop_instance_uid: pydicom.dcmread(image.path) for image in demo}
    study_uid = str(next(iter(sent.values())).StudyInstanceUID)
    client = _client(server)

    stored = client.store_instances(list(sent.values()))
    assert {item.ReferencedSOPInstanceUID for item in stored.ReferencedSOPSequence} == set(sent)
    assert "FailedSOPSequence" not in stored
    assert stored.RetrieveURL == _url(server, f"/studies/{study_uid}")

    detail = server.wait_for_study(study_uid)
    assert detail["state"] == "drafted", detail
    sr_uid = detail["draft"]["sr_sop_instance_uid"]
    sr_series_uid = str(pydicom.dcmread(detail["draft"]["sr_path"], stop_before_pixels=True).SeriesInstanceUID)
    results_uid = detail["draft"]["results_sr_sop_instance_uid"]
    results_path = detail["draft"]["results_sr_path"]
    results_series_uid = str(pydicom.dcmread(results_path, stop_before_pixels=True).SeriesInstanceUID)

    studies = client.search_for_studies(search_filters={"StudyInstanceUID": study_uid, "PatientID": "PHANTOM-0001"})
    assert len(studies) == 1
    study = pydicom.Dataset.from_json(studies[0])
    assert study.StudyInstanceUID == study_uid
    assert set(study.ModalitiesInStudy) == {"CR", "SR"}
    assert study.NumberOfStudyRelatedInstances == len(sent) + 2  # the images, the draft and its AI results SR
    accession = str(next(iter(sent.values())).AccessionNumber)
    assert client.search_for_studies(search_filters={"AccessionNumber": accession, "StudyInstanceUID": study_uid})
    assert client.search_for_studies(search_filters={"StudyInstanceUID": study_uid, "PatientID": "NOBODY"}) == []

    series = [pydicom.Dataset.from_json(s) for s in client.search_for_series(study_uid)]
    sr_series = [s for s in series if s.Modality == "SR"]
    assert [s.SeriesInstanceUID for s in sr_series] == [sr_series_uid, results_series_uid]
    instances = client.search_for_instances(study_uid, sr_series_uid)
    assert [pydicom.Dataset.from_json(i).SOPInstanceUID for i in instances] == [sr_uid]
    results = client.retrieve_instance(study_uid, results_series_uid, results_uid)
    assert results.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34" and results.VerificationFlag == "UNVERIFIED"

    sr = client.retrieve_instance(study_uid, sr_series_uid, sr_uid)
    assert (sr.VerificationFlag, sr.PreliminaryFlag) == ("UNVERIFIED", "PRELIMINARY")
    metadata = client.retrieve_instance_metadata(study_uid, sr_series_uid, sr_uid)
    assert pydicom.Dataset.from_json(metadata).VerificationFlag == "UNVERIFIED"

    for retrieved in client.retrieve_study(study_uid):
        if retrieved.SOPInstanceUID in sent:
            assert retrieved.PixelData == sent.pop(retrieved.SOPInstanceUID).PixelData
    assert sent == {}, "every sent instance comes back from WADO-RS"


def test_retrieved_files_are_byte_identical_to_the_received_ones(server: Deployment, tmp_path: Path) -> None:
    image = _fresh_image(tmp_path, seed=2)
    original = image.path.read_bytes()
    header = pydicom.dcmread(image.path, stop_before_pixels=True)
    assert _post(server, _multipart(original)).status_code == 200

    path = f"/studies/{header.StudyInstanceUID}/series/{header.SeriesInstanceUID}/instances/{image.sop_instance_uid}"
    response = requests.get(_url(server, path), headers=BEARER, timeout=TIMEOUT)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith('multipart/related; type="application/dicom"')
    assert _retrieved_parts(response) == [original]
    spooled = server.var_dir / "spool" / "incoming" / str(header.StudyInstanceUID) / f"{image.sop_instance_uid}.dcm"
    assert spooled.read_bytes() == original

    unknown = requests.get(_url(server, f"/studies/{generate_uid()}"), headers=BEARER, timeout=TIMEOUT)
    assert unknown.status_code == 404


def test_basic_auth_is_accepted(server: Deployment) -> None:
    credentials = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    response = requests.get(
        _url(server, "/studies"), headers={"Authorization": f"Basic {credentials}"}, timeout=TIMEOUT
    )
    assert response.status_code in (200, 204)
    assert isinstance(_client(server, f"Basic {credentials}").search_for_studies(limit=1), list)


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "Bearer wrong-token",
        "Basic " + base64.b64encode(f"{USER}:wrong".encode()).decode(),
        "Basic " + base64.b64encode(f"nobody:{PASSWORD}".encode()).decode(),
        "Basic not-base64!",
        TOKEN,  # a bare token, with no scheme
    ],
)
def test_missing_or_wrong_credentials_get_401(server: Deployment, authorization: str | None) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    for method, path in (("GET", "/studies"), ("POST", "/studies"), ("GET", f"/studies/{generate_uid()}")):
        response = requests.request(method, _url(server, path), headers=headers, timeout=TIMEOUT)
        assert response.status_code == 401, (method, path, response.text)
        assert "Bearer" in response.headers["WWW-Authenticate"]
        assert "Basic" in response.headers["WWW-Authenticate"]


def test_oversized_upload_gets_413_declared_or_chunked(server: Deployment) -> None:
    oversized = _multipart(b"\0" * (MAX_UPLOAD_BYTES + 1))
    declared = _post(server, oversized)
    assert declared.status_code == 413, declared.text

    def chunks() -> Iterator[bytes]:  # no Content-Length: requests sends it chunked
        for start in range(0, len(oversized), 256 * 1024):
            yield oversized[start : start + 256 * 1024]

    chunked = _post(server, chunks())
    assert chunked.status_code == 413, chunked.text
    _assert_serving(server)


def test_unreadable_requests_get_400_or_415(server: Deployment, tmp_path: Path) -> None:
    body = _multipart(_fresh_image(tmp_path, seed=3).path.read_bytes())
    assert _post(server, body, content_type=MULTIPART.replace(BOUNDARY, "another-boundary")).status_code == 400
    assert _post(server, body, content_type='multipart/related; type="application/dicom"').status_code == 400
    assert _post(server, body, content_type="application/dicom").status_code == 415
    assert (
        _post(server, body, content_type=MULTIPART.replace("application/dicom", "application/dicom+json")).status_code
        == 415
    )
    assert _post(server, b"", content_type=MULTIPART).status_code == 400
    _assert_serving(server)


def test_one_good_and_one_non_dicom_part_get_202(server: Deployment, tmp_path: Path) -> None:
    image = _fresh_image(tmp_path, seed=4)
    response = _post(server, _multipart(image.path.read_bytes(), b"this is not a DICOM file"))
    assert response.status_code == 202, response.text
    assert response.headers["Content-Type"] == "application/dicom+json"
    result = pydicom.Dataset.from_json(response.json())
    assert [item.ReferencedSOPInstanceUID for item in result.ReferencedSOPSequence] == [image.sop_instance_uid]
    assert result.ReferencedSOPSequence[0].ReferencedSOPClassUID == CR_IMAGE_STORAGE
    assert result.ReferencedSOPSequence[0].RetrieveURL.endswith(f"/instances/{image.sop_instance_uid}")
    assert [item.FailureReason for item in result.FailedSOPSequence] == [FAILURE_CANNOT_UNDERSTAND]
    _assert_serving(server)


def test_truncated_parts_fail_and_nothing_is_stored(server: Deployment, tmp_path: Path) -> None:
    image = _fresh_image(tmp_path, seed=5)
    data = image.path.read_bytes()
    cut_inside_the_part = _multipart(data[: len(data) // 2])
    body_cut_short = _multipart(data)[: len(data) // 2]
    for body in (cut_inside_the_part, body_cut_short):
        response = _post(server, body)
        assert response.status_code == 409, response.text
        failed = pydicom.Dataset.from_json(response.json()).FailedSOPSequence
        assert [(item.ReferencedSOPInstanceUID, item.FailureReason) for item in failed] == [
            (image.sop_instance_uid, FAILURE_CANNOT_UNDERSTAND)
        ]
    assert list((server.var_dir / "spool").rglob(f"{image.sop_instance_uid}.dcm")) == []
    _assert_serving(server)


def test_instance_of_another_study_fails_with_study_uid_mismatch(server: Deployment, tmp_path: Path) -> None:
    image = _fresh_image(tmp_path, seed=6)
    response = _post(server, _multipart(image.path.read_bytes()), path=f"/studies/{generate_uid()}")
    assert response.status_code == 409, response.text
    failed = pydicom.Dataset.from_json(response.json()).FailedSOPSequence
    assert [item.FailureReason for item in failed] == [FAILURE_STUDY_UID_MISMATCH]


def test_log_holds_no_patient_data_and_no_secrets(server: Deployment) -> None:
    _assert_serving(server)
    log = server.log_path.read_text()
    assert "STOW-RS from token#1" in log  # the DICOMweb requests were logged...
    assert "refused" in log
    for secret in ("PHANTOM", TOKEN, PASSWORD):  # ...but neither patient names and IDs nor credentials
        assert secret not in log
