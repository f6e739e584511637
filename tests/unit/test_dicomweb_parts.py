"""The pieces of DICOMweb that need no server: Content-Type and multipart parsing, reading a part's UIDs
and handing it to the Receiver, the store response, QIDO matching and the credential checks."""

from __future__ import annotations

import base64
from http import HTTPStatus
from io import BytesIO
from pathlib import Path
from types import SimpleNamespace

import pydicom
import pytest
from fastapi import HTTPException, Request
from pydantic import SecretStr
from sqlalchemy import column

from predraft.core.settings import Settings, get_settings
from predraft.listener.dicomweb.auth import authenticate, check_basic, check_bearer
from predraft.listener.dicomweb.common import DicomwebError
from predraft.listener.dicomweb.multipart import Part, declared_length, split_multipart, stow_boundary
from predraft.listener.dicomweb.query import Match
from predraft.listener.dicomweb.status import FAILURE_CANNOT_UNDERSTAND, FAILURE_STUDY_UID_MISMATCH
from predraft.listener.dicomweb.stow import PartResult, inspect_part, store_part, store_response
from predraft.listener.dicomweb.wado import accepts_multipart_dicom
from predraft.listener.receive import Receiver
from predraft.listener.spool import Spool
from predraft.models.phantoms import write_demo_study

STUDIES_URL = "http://pacs.example/dicomweb/studies"


@pytest.fixture(scope="module")
def part10(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return write_demo_study(tmp_path_factory.mktemp("demo"))[0].path.read_bytes()


@pytest.mark.parametrize(
    "content_type",
    [
        'multipart/related; type="application/dicom"; boundary="abc 123"',
        'Multipart/Related; boundary="abc 123"; type=application/dicom',
        'multipart/related; boundary="abc 123"',  # no type: application/dicom is assumed
    ],
)
def test_boundary_is_read_quoted_or_not(content_type: str) -> None:
    assert stow_boundary(content_type) == b"abc 123"


def test_a_boundary_longer_than_rfc_2046_generates_is_accepted() -> None:
    orthanc_style = "0f0e2c58-6b1c-4d5e-9a8b-7c6d5e4f3a2b-0f0e2c58-6b1c-4d5e-9a8b-7c6d5e4f3a2b"  # 73 characters
    assert (
        stow_boundary(f'multipart/related; type="application/dicom"; boundary={orthanc_style}')
        == orthanc_style.encode()
    )


@pytest.mark.parametrize(
    ("content_type", "status", "message"),
    [
        (None, HTTPStatus.UNSUPPORTED_MEDIA_TYPE, "no Content-Type"),
        ("application/dicom", HTTPStatus.UNSUPPORTED_MEDIA_TYPE, "'application/dicom' is not supported"),
        (
            'multipart/related; type="application/dicom+json"; boundary=x',
            HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
            "type 'application/dicom\\+json'",
        ),
        ('multipart/related; type="application/dicom"', HTTPStatus.BAD_REQUEST, "no boundary"),
        (f"multipart/related; boundary={'x' * 201}", HTTPStatus.BAD_REQUEST, "no boundary parameter of 1 to 200"),
    ],
)
def test_unusable_content_types_are_refused(content_type: str | None, status: HTTPStatus, message: str) -> None:
    with pytest.raises(DicomwebError, match=message) as caught:
        stow_boundary(content_type)
    assert caught.value.status == status


def test_declared_length_over_the_limit_is_413() -> None:
    assert declared_length(None, 10) is None
    assert declared_length("10", 10) == 10
    with pytest.raises(DicomwebError, match="of 11 bytes exceeds the limit of 10 bytes") as caught:
        declared_length("11", 10)
    assert caught.value.status == HTTPStatus.REQUEST_ENTITY_TOO_LARGE and caught.value.close
    with pytest.raises(DicomwebError, match="not a number"):
        declared_length("ten", 10)


def test_parts_are_split_with_their_headers() -> None:
    body = (
        b"preamble\r\n--b\r\nContent-Type: application/dicom\r\n\r\nfirst\r\n--b\r\n\r\n"
        b"second\r\n--x\r\n--b--\r\nepilogue"
    )
    parts = list(split_multipart(body, b"b"))
    assert [(p.index, p.content, p.problem) for p in parts] == [(0, b"first", None), (1, b"second\r\n--x", None)]
    assert parts[0].headers == {"content-type": "application/dicom"}


def test_a_body_without_the_boundary_is_400() -> None:
    with pytest.raises(DicomwebError, match="does not contain the boundary") as caught:
        list(split_multipart(b"--other\r\n\r\ndata\r\n--other--", b"b"))
    assert caught.value.status == HTTPStatus.BAD_REQUEST


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (b"--b\r\n\r\nfirst\r\n--b\r\n\r\nsecond and no end", "ends inside this part"),
        (b"--b\r\n\r\nfirst\r\n--b\r\nContent-Type: appl", "ends inside the headers"),
        (b"--b\r\n\r\nfirst\r\n--b", "ends without its closing boundary"),
        (b"--b\r\n\r\nfirst\r\n--bogus\r\n\r\nsecond\r\n--b--", "followed by other characters"),
    ],
)
def test_a_body_that_breaks_off_ends_with_a_part_that_says_why(body: bytes, problem: str) -> None:
    first, last = split_multipart(body, b"b")
    assert (first.content, first.problem) == (b"first", None)
    assert last.problem is not None and problem in last.problem


def test_a_part10_file_gives_its_uids(part10: bytes) -> None:
    header = inspect_part(part10)
    assert header.sop_class_uid == "1.2.840.10008.5.1.4.1.1.1"
    assert header.sop_instance_uid == str(pydicom.dcmread(BytesIO(part10)).SOPInstanceUID)


def test_non_dicom_data_gives_no_uids() -> None:
    assert inspect_part(b"this is not a DICOM file") == inspect_part(b"")
    assert inspect_part(b"this is not a DICOM file").sop_instance_uid == ""


@pytest.fixture
def receiver(sqlite_url: str, tmp_path: Path) -> Receiver:
    return Receiver(Spool(tmp_path / "spool"), sqlite_url)


def _spooled(receiver: Receiver) -> list[Path]:
    return [path for path in receiver.spool.root.rglob("*.dcm") if path.is_file()]


@pytest.mark.parametrize("keep", [-1, 0.5])
def test_a_cut_part_is_refused_by_the_receiver_with_its_uids(part10: bytes, receiver: Receiver, keep: float) -> None:
    data = part10[:-1] if keep == -1 else part10[: int(len(part10) * keep)]
    result = store_part(Part(0, {}, data), receiver, source="STOW:test", study_uid=None)
    assert result.failure_reason == FAILURE_CANNOT_UNDERSTAND
    assert "(7FE0,0010)" in result.message and "truncated" in result.message
    assert result.sop_instance_uid  # the UIDs are still reported, for the FailedSOPSequence
    assert _spooled(receiver) == []


def test_a_whole_part_is_stored(part10: bytes, receiver: Receiver) -> None:
    study = str(pydicom.dcmread(BytesIO(part10)).StudyInstanceUID)
    result = store_part(Part(0, {}, part10), receiver, source="STOW:test", study_uid=study)
    assert result.failure_reason is None and result.study_uid == study
    assert len(_spooled(receiver)) == 1


def test_a_part_of_another_study_is_refused_before_the_receiver(part10: bytes, receiver: Receiver) -> None:
    result = store_part(Part(0, {}, part10), receiver, source="STOW:test", study_uid="1.2.3")
    assert result.failure_reason == FAILURE_STUDY_UID_MISMATCH
    assert "not 1.2.3" in result.message
    assert _spooled(receiver) == []


def test_non_dicom_data_is_not_understood(receiver: Receiver) -> None:
    result = store_part(Part(0, {}, b"this is not a DICOM file"), receiver, source="STOW:test", study_uid="1.2.3")
    assert result.failure_reason == FAILURE_CANNOT_UNDERSTAND
    assert result.message.startswith("cannot understand the data set")
    assert result.sop_instance_uid == ""


def _stored(sop: str, study: str = "1.2.3") -> PartResult:
    return PartResult("1.2.840.10008.5.1.4.1.1.1", sop, study)


def _failed(sop: str) -> PartResult:
    return PartResult("", sop, "", FAILURE_CANNOT_UNDERSTAND, "not DICOM")


@pytest.mark.parametrize(
    ("results", "status"),
    [
        ([_stored("1.1"), _stored("1.2")], HTTPStatus.OK),
        ([_stored("1.1"), _failed("1.2")], HTTPStatus.ACCEPTED),
        ([_failed("1.1"), _failed("1.2")], HTTPStatus.CONFLICT),
    ],
)
def test_store_response_status_follows_ps3_18(results: list[PartResult], status: HTTPStatus) -> None:
    assert store_response(results, STUDIES_URL)[0] == status


def test_store_response_references_and_failures() -> None:
    status, payload = store_response([_stored("1.1"), _failed("")], STUDIES_URL, {"1.1": "1.2.3.4"})
    response = pydicom.Dataset.from_json(payload)
    assert response.RetrieveURL == f"{STUDIES_URL}/1.2.3"
    (stored,) = response.ReferencedSOPSequence
    assert stored.RetrieveURL == f"{STUDIES_URL}/1.2.3/series/1.2.3.4/instances/1.1"
    (failed,) = response.FailedSOPSequence
    assert failed.FailureReason == FAILURE_CANNOT_UNDERSTAND
    assert "RetrieveURL" not in failed


def test_store_response_of_two_studies_has_no_study_url() -> None:
    _, payload = store_response([_stored("1.1", "1.2.3"), _stored("1.2", "1.2.4")], STUDIES_URL)
    assert "RetrieveURL" not in pydicom.Dataset.from_json(payload)


@pytest.mark.parametrize(
    ("keyword", "value", "matching", "other"),
    [
        ("StudyInstanceUID", "1.2.3,1.2.4", "1.2.4", "1.2.5"),
        ("StudyInstanceUID", "1.2.3\\1.2.4", "1.2.3", "1.2.34"),
        ("StudyDate", "20240101-20240131", "20240115", "20240201"),
        ("StudyDate", "-20240131", "20231231", ""),
        ("StudyDate", "20240101", "20240101", "20240102"),
        ("PatientName", "DOE^J*", "DOE^JANE", "DOE"),
        ("PatientID", "A?C", "ABC", "ABBC"),
        ("AccessionNumber", "A1", "A1", "A10"),
    ],
)
def test_qido_matching(keyword: str, value: str, matching: str, other: str) -> None:
    match = Match.parse(keyword, value)
    assert match.test(matching)
    assert not match.test(other)


def test_qido_wildcards_quote_sql_like_characters() -> None:
    match = Match.parse("PatientID", "100%_*")
    assert match.test("100%_7") and not match.test("1000_7")
    compiled = str(match.condition(column("patient_id")).compile(compile_kwargs={"literal_binds": True}))
    assert "LIKE '100\\%\\_%'" in compiled


@pytest.mark.parametrize(
    ("accept", "accepted"),
    [
        (None, True),
        ("*/*", True),
        ('multipart/related; type="application/dicom"', True),
        ('multipart/related; type="application/dicom"; transfer-syntax=*', True),
        ("application/dicom+json", False),
        ('multipart/related; type="image/jpeg"', False),
    ],
)
def test_wado_accept_header(accept: str | None, accepted: bool) -> None:
    assert accepts_multipart_dicom(accept) is accepted


def test_bearer_tokens_are_matched_by_position() -> None:
    tokens = [SecretStr("first"), SecretStr("second")]
    assert check_bearer("second", tokens) == 1
    assert check_bearer("third", tokens) is None
    assert check_bearer("", tokens) is None


@pytest.mark.parametrize(
    ("credentials", "user"),
    [
        (base64.b64encode(b"pacs:pw:with:colons").decode(), "pacs"),
        (base64.b64encode(b"pacs:wrong").decode(), None),
        (base64.b64encode(b"nobody:pw:with:colons").decode(), None),
        (base64.b64encode(b"no colon").decode(), None),
        ("not base64!", None),
    ],
)
def test_basic_credentials(credentials: str, user: str | None) -> None:
    assert check_basic(credentials, {"pacs": SecretStr("pw:with:colons")}) == user


def _request(settings: Settings, authorization: str | None) -> Request:
    headers = [] if authorization is None else [(b"authorization", authorization.encode())]
    app = SimpleNamespace(state=SimpleNamespace(settings=settings))
    return Request(
        {
            "type": "http",
            "method": "GET",
            "path": "/dicomweb/studies",
            "query_string": b"",
            "headers": headers,
            "client": ("127.0.0.1", 50000),
            "server": ("127.0.0.1", 8080),
            "scheme": "http",
            "app": app,
        }
    )


def test_dicomweb_without_tokens_or_users_refuses_everyone(clean_settings_env: Path) -> None:
    settings = get_settings(var_dir=clean_settings_env)
    with pytest.raises(HTTPException, match="401") as caught:
        authenticate(_request(settings, "Bearer anything"))
    assert "DICOMweb is not configured" in caught.value.detail
    assert "Bearer" in caught.value.headers["WWW-Authenticate"]


def test_authenticate_names_the_user_never_the_secret(
    clean_settings_env: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = get_settings(
        var_dir=clean_settings_env, dicomweb_tokens=["tok-1", "tok-2"], dicomweb_users={"pacs": "pw-9"}
    )
    assert authenticate(_request(settings, "Bearer tok-2")).name == "token#2"
    basic = base64.b64encode(b"pacs:pw-9").decode()
    assert authenticate(_request(settings, f"Basic {basic}")).name == "pacs"
    for wrong in (None, "Bearer tok-3", "tok-1", f"Digest {basic}"):
        with pytest.raises(HTTPException, match="401"):
            authenticate(_request(settings, wrong))
    assert "refused" in caplog.text
    assert not any(secret in caplog.text for secret in ("tok-1", "tok-3", "pw-9", basic))


@pytest.mark.parametrize("tokens, users", [(["tok-1", ""], {}), (["  "], {}), ([], {"pacs": ""}), ([], {"": "pw"})])
def test_empty_dicomweb_credentials_are_refused_in_the_settings(
    clean_settings_env: Path, tokens: list[str], users: dict[str, str]
) -> None:
    with pytest.raises(ValueError, match="empty"):
        get_settings(var_dir=clean_settings_env, dicomweb_tokens=tokens, dicomweb_users=users)


def test_an_empty_credential_never_matches(clean_settings_env: Path) -> None:
    # Even a secret that reached the checks empty (built without the settings' validation) opens nothing.
    assert check_bearer("", [SecretStr(""), SecretStr("tok-1")]) is None
    empty_password = base64.b64encode(b"pacs:").decode()
    assert check_basic(empty_password, {"pacs": SecretStr("")}) is None
    settings = get_settings(var_dir=clean_settings_env, dicomweb_tokens=["tok-1"])
    for header in ("Bearer", "Bearer ", "Basic "):
        with pytest.raises(HTTPException, match="401"):
            authenticate(_request(settings, header))
