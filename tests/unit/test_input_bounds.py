"""Issue 14, hostile and broken input: every data set and HTTP request is bounded and a bad one gets a
clean refusal (a DIMSE failure status, a STOW failure reason or an HTTP 4xx), never a 500 or a Success.

Covered: deflate bombs (as received and as inflated), sequences nested too deep, a SOP Class UID of the
wrong VR, UIDs padded with anything but one NUL, unknown QIDO keys and huge paging numbers, bearer tokens
compared exactly, and slash redirects that must not lead to a host taken from the request.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import struct
import tracemalloc
import zlib
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
import requests
from fastapi import HTTPException
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.sop_class import Verification
from sqlalchemy import select

from predraft.core import metrics
from predraft.core.db import session_scope, upgrade
from predraft.core.library_text import OWN_PACKAGES
from predraft.core.schema import Instance
from predraft.core.settings import Settings, get_settings
from predraft.listener import bounds, status
from predraft.listener.dicomweb.auth import authenticate
from predraft.listener.dicomweb.status import FAILURE_CANNOT_UNDERSTAND
from predraft.listener.ingest import InstanceHeader, record_instance
from predraft.listener.receive import Receiver, ReceiveStatus
from predraft.listener.spool import Spool, check_uid
from tests.conftest import real_file, running_listener
from tests.unit.test_dicomweb_parts import _request
from tests.unit.webapp import dicomweb_settings, serving

CR = "1.2.840.10008.5.1.4.1.1.1"
STUDY = "1.2.826.0.1.3680043.8.498.14"
MIB = 1024 * 1024
BOMB_INFLATED_BYTES = 256 * MIB  # as the attacker's: about 260 KB deflated
TOKEN = "tok-14"
BEARER = {"Authorization": f"Bearer {TOKEN}"}
BOUNDARY = "bounds-boundary"
MULTIPART = f'multipart/related; type="application/dicom"; boundary="{BOUNDARY}"'
TIMEOUT = 60
#: (0040,A730) Content Sequence, explicit VR SQ of undefined length; an Item and the two delimiters.
SEQUENCE_START = struct.pack("<HH2sHL", 0x0040, 0xA730, b"SQ", 0, 0xFFFFFFFF)
ITEM_START = struct.pack("<HHL", 0xFFFE, 0xE000, 0xFFFFFFFF)
ITEM_END = struct.pack("<HHL", 0xFFFE, 0xE00D, 0)
SEQUENCE_END = struct.pack("<HHL", 0xFFFE, 0xE0DD, 0)


def _refused(transport: str, bound: str) -> float:
    return metrics.INPUTS_REFUSED.labels(transport=transport, bound=bound)._value.get()


def _dataset(sop: str = STUDY + ".3.1", **extra: object) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = CR
    ds.SOPInstanceUID = sop
    ds.StudyInstanceUID = STUDY
    ds.SeriesInstanceUID = STUDY + ".2"
    ds.Modality = "CR"
    for keyword, value in extra.items():
        setattr(ds, keyword, value)
    return ds


def _part10(ds: Dataset, syntax: str = ExplicitVRLittleEndian) -> bytes:
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = syntax
    with DicomBytesIO() as buffer:
        pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
        return buffer.getvalue()


def deflate_bomb(inflated_bytes: int = BOMB_INFLATED_BYTES, sop: str = STUDY + ".3.66") -> bytes:
    """A Deflated Explicit VR Little Endian file whose data set inflates to ``inflated_bytes``: a handful of
    UIDs, then an OB element (Encapsulated Document) of zeros. Built a MiB at a time, never held inflated."""
    plain = _part10(_dataset(sop), ExplicitVRLittleEndian)
    head = plain[_meta_end(plain) :]
    zeros = inflated_bytes - len(head) - 12
    deflated = _part10(_dataset(sop), DeflatedExplicitVRLittleEndian)
    meta = deflated[: _meta_end(deflated)]
    packer = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    chunks = [packer.compress(head + struct.pack("<HH2sHL", 0x0042, 0x0011, b"OB", 0, zeros))]
    block = bytes(MIB)
    for _ in range(zeros // MIB):
        chunks.append(packer.compress(block))
    chunks.append(packer.compress(bytes(zeros % MIB)))
    return meta + b"".join(chunks) + packer.flush()


def _meta_end(part10: bytes) -> int:
    """Where the data set of ``part10`` starts: after the File Meta Information, by its group length."""
    (group_length,) = struct.unpack_from("<L", part10, 140)  # (0002,0000) UL, after the preamble and DICM
    return 144 + group_length


def nested(depth: int, sop: str = STUDY + ".3.77") -> bytes:
    """A Part 10 file whose Content Sequence nests ``depth`` levels deep, assembled by hand (undefined lengths)."""
    return _part10(_dataset(sop)) + (SEQUENCE_START + ITEM_START) * depth + (ITEM_END + SEQUENCE_END) * depth


@pytest.fixture(scope="module")
def bomb() -> bytes:
    return deflate_bomb()


@pytest.fixture
def receiver(sqlite_url: str, tmp_path: Path) -> Receiver:
    return Receiver.from_settings(
        get_settings(
            var_dir=tmp_path / "var", database_url=sqlite_url, spool_dir=tmp_path / "spool", spool_min_free_bytes=0
        )
    )


def _spooled(receiver: Receiver) -> list[Path]:
    return [path for path in receiver.spool.root.rglob("*.dcm") if path.is_file()]


# --- A: deflate bombs ------------------------------------------------------------------------------------------


def test_a_deflate_bomb_is_refused_before_it_is_inflated(receiver: Receiver, bomb: bytes) -> None:
    assert len(bomb) < 400_000
    assert receiver.max_dataset_bytes == 128 * MIB  # the default of the settings
    _assert_refused_as_bomb(receiver, bomb, peak_below=16 * MIB)  # it inflates to 256 MiB


def test_a_data_set_larger_than_the_bound_is_refused_as_received(sqlite_url: str, tmp_path: Path) -> None:
    receiver = Receiver(Spool(tmp_path / "spool"), sqlite_url, max_dataset_bytes=MIB)
    received = tmp_path / "received.dcm"
    received.write_bytes(_part10(_dataset(EncapsulatedDocument=bytes(MIB))))
    before = _refused("dimse", "dataset_bytes")

    outcome = receiver.receive_file(received, source="PACS_AE")

    assert outcome.status is ReceiveStatus.CANNOT_UNDERSTAND
    assert "larger than the limit of 1048576 bytes" in outcome.message
    assert not received.exists() and _spooled(receiver) == []
    assert _refused("dimse", "dataset_bytes") == before + 1


def test_a_deflated_file_within_the_bound_is_stored(receiver: Receiver) -> None:
    small = deflate_bomb(2 * MIB, sop=STUDY + ".3.67")
    outcome = receiver.receive(small, source="PACS_AE")
    assert outcome.status is ReceiveStatus.STORED, outcome.message


def test_the_receiver_checks_its_bounds(sqlite_url: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="max_dataset_bytes 0 must be positive"):
        Receiver(Spool(tmp_path / "spool"), sqlite_url, max_dataset_bytes=0)
    with pytest.raises(ValueError, match="max_sequence_depth 0 must be positive"):
        Receiver(Spool(tmp_path / "spool"), sqlite_url, max_sequence_depth=0)


@pytest.mark.slow
def test_a_deflate_bomb_over_dimse_gets_cannot_understand(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bomb = tmp_path / "bomb.dcm"
    bomb.write_bytes(deflate_bomb(8 * MIB, sop=STUDY + ".3.68"))
    with running_listener(tmp_path, monkeypatch, max_dataset_bytes=MIB) as settings:
        sender = AE(ae_title="ATTACKER")
        sender.add_requested_context(CR, DeflatedExplicitVRLittleEndian)
        sender.add_requested_context(Verification)
        association = sender.associate("127.0.0.1", settings.listener.port, ae_title=settings.listener.ae_title)
        assert association.is_established
        try:
            answer = association.send_c_store(bomb)
            echo = association.send_c_echo()
        finally:
            association.release()
        assert answer.Status == status.CANNOT_UNDERSTAND == 0xC000
        assert echo.Status == status.SUCCESS  # the association goes on
        with session_scope(settings.database_url) as session:
            assert session.scalars(select(Instance)).all() == []


# --- B: sequences nested too deep ------------------------------------------------------------------------------


def test_a_data_set_nested_too_deep_is_refused(receiver: Receiver) -> None:
    before = _refused("stow", "sequence_depth")
    outcome = receiver.receive(nested(1000), source="PACS_AE")
    assert outcome.status is ReceiveStatus.CANNOT_UNDERSTAND, outcome.message
    assert "sequences nested deeper than 16" in outcome.message
    assert _spooled(receiver) == []
    assert _refused("stow", "sequence_depth") == before + 1


def test_nesting_up_to_the_bound_is_stored(receiver: Receiver) -> None:
    outcome = receiver.receive(nested(16), source="PACS_AE")
    assert outcome.status is ReceiveStatus.STORED, outcome.message


def test_nesting_of_defined_length_counts_too(receiver: Receiver) -> None:
    item = Dataset()
    for _ in range(20):
        outer = Dataset()
        outer.ContentSequence = [item]
        item = outer
    ds = _dataset(STUDY + ".3.78", ContentSequence=[item])
    outcome = receiver.receive(_part10(ds), source="PACS_AE")
    assert outcome.status is ReceiveStatus.CANNOT_UNDERSTAND and "nested deeper than 16" in outcome.message


# --- D: UIDs ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    ["1.2.3\n", "1.2.34 ", "1.2.3  ", " 1.2.3", "1.2.3\x00\x00", "1.2.3\t", "1.2.3\r\n", "1..2", "1.2.3\\1.2.4"],
)
def test_a_uid_padded_with_anything_but_one_pad_character_is_refused(value: str) -> None:
    with pytest.raises(ValueError, match="SOPInstanceUID .* is not a valid DICOM UID"):
        check_uid(value, "SOPInstanceUID")


def test_a_uid_may_end_with_one_pad_character() -> None:
    assert check_uid("1.2.3\x00", "SOPInstanceUID") == "1.2.3"
    assert check_uid("1.2.3 ", "SOPInstanceUID") == "1.2.3"  # space padding to an even length, as some modalities write
    assert check_uid("1.2.34", "SOPInstanceUID") == "1.2.34"


def with_newline(data: bytes, tag: tuple[int, int]) -> bytes:
    """``data`` (explicit VR little endian) with a newline after the UID of data set element ``tag``."""
    at = data.index(struct.pack("<HH", *tag) + b"UI", _meta_end(data))
    (length,) = struct.unpack_from("<H", data, at + 6)
    value = data[at + 8 : at + 8 + length].rstrip(b"\x00") + b"\n"
    value += b"\x00" * (len(value) % 2)
    return data[: at + 6] + struct.pack("<H", len(value)) + value + data[at + 8 + length :]


UID_TAGS = {
    "StudyInstanceUID": (0x0020, 0x000D),
    "SeriesInstanceUID": (0x0020, 0x000E),
    "SOPInstanceUID": (0x0008, 0x0018),
    "SOPClassUID": (0x0008, 0x0016),
}


@pytest.mark.parametrize("keyword", list(UID_TAGS))
def test_instances_whose_uids_differ_by_a_control_character_are_refused(receiver: Receiver, keyword: str) -> None:
    good = _part10(_dataset(STUDY + ".3.80"))
    hostile = with_newline(good, UID_TAGS[keyword])
    assert pydicom.dcmread(DicomBytesIO(hostile)).get_item(keyword).value.endswith((b"\n", b"\n\x00"))
    before = _refused("dimse", "invalid_uid")

    outcome = receiver.receive(hostile, source="PACS_AE", transport="dimse")

    assert outcome.status is ReceiveStatus.CANNOT_UNDERSTAND, outcome.message
    assert f"{keyword}" in outcome.message and "not a valid DICOM UID" in outcome.message
    assert _spooled(receiver) == []
    assert _refused("dimse", "invalid_uid") == before + 1


def test_a_sop_class_uid_of_vr_um_is_not_understood(receiver: Receiver) -> None:
    raw = bytearray(real_file("RG2_UNC.dcm").read_bytes())
    at = raw.index(b"\x08\x00\x16\x00UI")
    raw[at + 5 : at + 6] = b"M"
    outcome = receiver.receive(bytes(raw), source="PACS_AE")
    assert outcome.status is ReceiveStatus.CANNOT_UNDERSTAND
    assert "SOPClassUID has VR UM, not UI" in outcome.message


# --- E: bearer tokens ------------------------------------------------------------------------------------------


def test_a_bearer_token_is_compared_exactly_its_scheme_in_any_case(clean_settings_env: Path) -> None:
    settings = get_settings(var_dir=clean_settings_env, dicomweb_tokens=[TOKEN])
    for header in (f"Bearer {TOKEN}", f"bearer {TOKEN}", f"BEARER {TOKEN}", f"  Bearer  {TOKEN}"):
        assert authenticate(_request(settings, header)).name == "token#1", header
    for header in (f"Bearer {TOKEN} ", f"Bearer {TOKEN}\t", f"Bearer {TOKEN[:-1]}", f"Bearer {TOKEN}x"):
        with pytest.raises(HTTPException, match="401"):
            authenticate(_request(settings, header))


def test_a_configured_token_with_a_space_needs_that_space(clean_settings_env: Path) -> None:
    settings = get_settings(var_dir=clean_settings_env, dicomweb_tokens=[TOKEN + " "])
    with pytest.raises(HTTPException, match="401"):
        authenticate(_request(settings, f"Bearer {TOKEN}"))
    assert authenticate(_request(settings, f"Bearer {TOKEN} ")).name == "token#1"


# --- HTTP: STOW, QIDO, WADO and redirects through the app ---------------------------------------------------


class App:
    def __init__(self, url: str, settings: Settings) -> None:
        self.url = url
        self.settings = settings

    def get(self, path: str, **kwargs: object) -> requests.Response:
        return requests.get(self.url + path, timeout=TIMEOUT, allow_redirects=False, **kwargs)  # type: ignore[arg-type]

    def stow(self, *parts: bytes) -> requests.Response:
        body = (
            b"".join(
                b"--%s\r\nContent-Type: application/dicom\r\n\r\n%s\r\n" % (BOUNDARY.encode(), part) for part in parts
            )
            + b"--%s--\r\n" % BOUNDARY.encode()
        )
        return requests.post(
            self.url + "/dicomweb/studies", data=body, timeout=TIMEOUT, headers={**BEARER, "Content-Type": MULTIPART}
        )


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[App]:
    folder = tmp_path_factory.mktemp("bounds-app")
    url = f"sqlite:///{folder}/db.sqlite"
    upgrade(url)
    settings = dicomweb_settings(folder, url, TOKEN, dicomweb_max_upload_bytes=3 * MIB, max_dataset_bytes=MIB)
    with serving(settings) as (base, _app):
        yield App(base, settings)


def _failure_of(response: requests.Response) -> int:
    failed = response.json()["00081198"]["Value"]
    assert len(failed) == 1
    return int(failed[0]["00081197"]["Value"][0])


@pytest.mark.slow
def test_stow_refuses_a_deflate_bomb_with_cannot_understand(app: App) -> None:
    before = _refused("stow", "inflated_bytes")
    response = app.stow(deflate_bomb(16 * MIB, sop=STUDY + ".4.1"))
    assert response.status_code == 409, response.text[:300]
    assert _failure_of(response) == FAILURE_CANNOT_UNDERSTAND
    assert _refused("stow", "inflated_bytes") == before + 1


@pytest.mark.slow
def test_stow_refuses_a_sop_class_uid_of_vr_um_without_a_500(app: App) -> None:
    raw = bytearray(_part10(_dataset(STUDY + ".4.2")))
    at = raw.index(b"\x08\x00\x16\x00UI")
    raw[at + 5 : at + 6] = b"M"
    response = app.stow(bytes(raw))
    assert response.status_code == 409, response.text[:300]
    assert _failure_of(response) == FAILURE_CANNOT_UNDERSTAND


@pytest.mark.slow
def test_stow_refuses_a_uid_with_a_newline(app: App) -> None:
    response = app.stow(with_newline(_part10(_dataset(STUDY + ".4.3")), UID_TAGS["SOPInstanceUID"]))
    assert response.status_code == 409, response.text[:300]
    assert _failure_of(response) == FAILURE_CANNOT_UNDERSTAND


@pytest.mark.slow
def test_an_oversized_upload_is_counted(app: App) -> None:
    before = _refused("stow", "upload_bytes")
    response = app.stow(bytes(4 * MIB))
    assert response.status_code == 413
    assert _refused("stow", "upload_bytes") == before + 1


@pytest.mark.slow
@pytest.mark.parametrize(
    "query",
    [
        "foo=1",
        "%ZZ=1",
        "%ZZ",
        "limit=18446744073709551616",
        "offset=18446744073709551616",
        "limit=%C2%B2",
        "limit=-1",
        "PatientID=a%00b",
    ],
)
def test_qido_refuses_unknown_keys_and_huge_numbers_with_400(app: App, query: str) -> None:
    before = _refused("qido", "query")
    response = app.get(f"/dicomweb/studies?{query}", headers=BEARER)
    assert response.status_code == 400, response.text[:300]
    assert response.json()["detail"]
    assert _refused("qido", "query") == before + 1


@pytest.mark.slow
def test_qido_still_ignores_a_known_but_unsupported_key(app: App) -> None:
    response = app.get("/dicomweb/studies?PatientBirthDate=19700101", headers=BEARER)
    assert response.status_code in (200, 204)
    assert "PatientBirthDate" in response.headers["Warning"]


@pytest.mark.slow
@pytest.mark.parametrize(
    "query", ["accept=application/dicom%2Bjson", "charset=utf-8", "includefield=all", "fuzzymatching=false"]
)
def test_qido_takes_the_query_parameters_of_ps3_18(app: App, query: str) -> None:
    response = app.get(f"/dicomweb/studies?{query}", headers=BEARER)
    assert response.status_code in (200, 204), response.text[:300]


def _store_as_is(settings: Settings, data: bytes, ds: Dataset) -> tuple[str, str, str]:
    """File ``data``, an instance with the UIDs of ``ds``, without the Receiver's checks (as predraft before
    the fix did)."""
    header = InstanceHeader(
        str(ds.StudyInstanceUID),
        str(ds.SeriesInstanceUID),
        str(ds.SOPInstanceUID),
        str(ds.SOPClassUID),
        ExplicitVRLittleEndian,
        modality="CR",
    )
    spool = Spool(settings.spool_dir)
    path = spool.write(spool.instance_path(header.study_uid, header.sop_instance_uid), data)
    with session_scope(settings.database_url) as session:
        record_instance(session, header=header, spool_path=str(path), size_bytes=len(data), calling_ae="OLD")
    return header.study_uid, header.series_uid, header.sop_instance_uid


@pytest.mark.slow
def test_metadata_of_a_stored_nested_instance_is_4xx_and_the_study_still_answers(app: App) -> None:
    study = "1.2.826.0.1.3680043.8.498.1414"
    ds = _dataset(study + ".1")
    ds.StudyInstanceUID = study
    ds.SeriesInstanceUID = study + ".2"
    _store_as_is(app.settings, _part10(ds), ds)
    ds = _dataset(study + ".9", StudyInstanceUID=study, SeriesInstanceUID=study + ".2")
    hostile = _part10(ds) + (SEQUENCE_START + ITEM_START) * 1000 + (ITEM_END + SEQUENCE_END) * 1000
    _, series, sop = _store_as_is(app.settings, hostile, ds)
    before = _refused("wado", "sequence_depth")

    single = app.get(f"/dicomweb/studies/{study}/series/{series}/instances/{sop}/metadata", headers=BEARER)
    whole = app.get(f"/dicomweb/studies/{study}/metadata", headers=BEARER)

    assert single.status_code == 422, single.text[:300]
    assert "nested deeper than 16" in single.json()["detail"]
    assert whole.status_code == 200, whole.text[:300]
    assert [item["00080018"]["Value"][0] for item in whole.json()] == [study + ".1"]
    assert sop in whole.headers["Warning"]
    assert _refused("wado", "sequence_depth") == before + 2


@pytest.mark.slow
def test_metadata_of_a_stored_deflate_bomb_is_not_inflated(app: App) -> None:
    sop = STUDY + ".5.1"
    study, series, _ = _store_as_is(app.settings, deflate_bomb(8 * MIB, sop=sop), _dataset(sop))
    response = app.get(f"/dicomweb/studies/{study}/series/{series}/instances/{sop}/metadata", headers=BEARER)
    assert response.status_code == 422, response.text[:300]
    assert "inflates to more than 1048576 bytes" in response.json()["detail"]


@pytest.mark.slow
@pytest.mark.parametrize("path", ["/stats/", "/login/", "/dicomweb/studies/", "/healthz/"])
def test_no_redirect_goes_to_a_host_taken_from_the_request(app: App, path: str) -> None:
    response = app.get(path, headers={"Host": "evil.example", **BEARER})
    location = response.headers.get("location", "")
    assert "evil.example" not in location, (response.status_code, location)
    assert not location.startswith(("http:", "https:", "//")), location


# --- Review of issue 14's bounds: bypasses of the deflate and nesting checks, element count, UID text ----------

#: (0000,0000) Command Group Length, implicit VR UL: pydicom skips group 0000 elements before it inflates.
COMMAND_GROUP_LENGTH = struct.pack("<HHLL", 0x0000, 0x0000, 4, 0)
CANARY = "CANARYPATIENTNAME"


def _raw_deflate_bomb(inflated_bytes: int, sop: str) -> bytes:
    """A raw deflate stream of a data set (UIDs, then an OB of zeros) that inflates to ``inflated_bytes``."""
    head = _part10(_dataset(sop))
    head = head[_meta_end(head) :]
    zeros = inflated_bytes - len(head) - 12
    packer = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    chunks = [packer.compress(head + struct.pack("<HH2sHL", 0x0042, 0x0011, b"OB", 0, zeros))]
    chunks += [packer.compress(bytes(MIB)) for _ in range(zeros // MIB)]
    return b"".join(chunks) + packer.compress(bytes(zeros % MIB)) + packer.flush()


def _deflated_meta(sop: str) -> bytes:
    deflated = _part10(_dataset(sop), DeflatedExplicitVRLittleEndian)
    return deflated[: _meta_end(deflated)]


def _implicit_meta(sop: str) -> bytes:
    """A preamble and File Meta Information written in implicit VR (as some old writers did), Deflated."""

    def element(element: int, value: bytes) -> bytes:
        value += b"\0" * (len(value) % 2)
        return struct.pack("<HHL", 0x0002, element, len(value)) + value

    body = (
        element(0x0001, b"\0\1")
        + element(0x0002, CR.encode())
        + element(0x0003, sop.encode())
        + element(0x0010, DeflatedExplicitVRLittleEndian.encode())
    )
    return bytes(128) + b"DICM" + element(0x0000, struct.pack("<L", len(body))) + body


@pytest.fixture
def small_receiver(sqlite_url: str, tmp_path: Path) -> Receiver:
    """A Receiver whose max_dataset_bytes is the settings' minimum, 1 MiB."""
    return Receiver(Spool(tmp_path / "spool"), sqlite_url, max_dataset_bytes=MIB)


def _assert_refused_as_bomb(receiver: Receiver, data: bytes, *, peak_below: int = 8 * MIB) -> None:
    """``data`` is refused as inflating past the receiver's bound, counted, nothing spooled, and receiving it
    traced less than ``peak_below`` bytes of memory."""
    before = _refused("stow", "inflated_bytes")
    tracemalloc.start()
    try:
        outcome = receiver.receive(data, source="STOW:attacker")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert outcome.status is ReceiveStatus.CANNOT_UNDERSTAND, outcome.message
    assert f"inflates to more than {receiver.max_dataset_bytes} bytes" in outcome.message
    assert peak < peak_below, f"receiving the bomb took {peak} bytes"
    assert _spooled(receiver) == []
    assert _refused("stow", "inflated_bytes") == before + 1


def test_a_deflate_bomb_behind_a_command_group_element_is_refused(small_receiver: Receiver) -> None:
    bomb = _deflated_meta(STUDY + ".6.1") + COMMAND_GROUP_LENGTH + _raw_deflate_bomb(20 * MIB, STUDY + ".6.1")
    assert len(bomb) < 40_000
    _assert_refused_as_bomb(small_receiver, bomb)


def test_a_deflate_bomb_behind_an_implicit_vr_file_meta_is_refused(small_receiver: Receiver) -> None:
    bomb = _implicit_meta(STUDY + ".6.2") + _raw_deflate_bomb(20 * MIB, STUDY + ".6.2")
    assert len(bomb) < 40_000
    fp = DicomBytesIO(bomb)
    pydicom.filereader.read_preamble(fp, False)
    assert pydicom.filereader._read_file_meta_info(fp).TransferSyntaxUID == DeflatedExplicitVRLittleEndian
    _assert_refused_as_bomb(small_receiver, bomb)


def test_a_deflated_data_set_that_cannot_be_inflated_is_refused(small_receiver: Receiver) -> None:
    broken = _deflated_meta(STUDY + ".6.3") + b"\xff" * 64
    outcome = small_receiver.receive(broken, source="PACS_AE")
    assert outcome.status is ReceiveStatus.CANNOT_UNDERSTAND
    assert outcome.message == "the deflated data set cannot be inflated"


def test_normal_deflated_files_pass_the_bounds(small_receiver: Receiver) -> None:
    deflated = _part10(
        _dataset(STUDY + ".6.4", ContentSequence=[_dataset(STUDY + ".6.5")]), DeflatedExplicitVRLittleEndian
    )
    with_command = _deflated_meta(STUDY + ".6.6") + COMMAND_GROUP_LENGTH + _raw_deflate_bomb(MIB // 2, STUDY + ".6.6")
    assert small_receiver.bounds.check(deflated) is None
    assert small_receiver.bounds.check(with_command) is None
    assert small_receiver.receive(deflated, source="PACS_AE").status is ReceiveStatus.STORED
    assert small_receiver.receive(with_command, source="PACS_AE").status is ReceiveStatus.STORED


def implicit_items(depth: int, sop: str = STUDY + ".3.79") -> bytes:
    """An explicit VR file whose top-level Content Sequence holds items encoded in implicit VR, nested
    ``depth`` levels in all (pydicom switches an item to implicit VR when its first element looks implicit)."""
    implicit_sequence = struct.pack("<HHL", 0x0040, 0xA730, 0xFFFFFFFF)
    return (
        _part10(_dataset(sop))
        + SEQUENCE_START
        + ITEM_START
        + (implicit_sequence + ITEM_START) * (depth - 1)
        + (ITEM_END + SEQUENCE_END) * depth
    )


def test_items_in_implicit_vr_nested_too_deep_are_refused(receiver: Receiver) -> None:
    hostile = implicit_items(60)
    ds = pydicom.dcmread(DicomBytesIO(hostile))
    for _ in range(60):  # pydicom reads all 60 levels
        ds = ds.ContentSequence[0]
    before = _refused("stow", "sequence_depth")
    outcome = receiver.receive(hostile, source="PACS_AE")
    assert outcome.status is ReceiveStatus.CANNOT_UNDERSTAND, outcome.message
    assert "sequences nested deeper than 16" in outcome.message
    assert _spooled(receiver) == []
    assert _refused("stow", "sequence_depth") == before + 1


def test_the_depth_of_a_parsed_data_set_is_measured_without_recursion() -> None:
    item = Dataset()
    for _ in range(40):
        outer = Dataset()
        outer.ContentSequence = [Dataset(), item]
        item = outer
    crossed = bounds.Bounds(MIB, 16).parsed_crossed(item)
    assert crossed is not None and crossed.bound == "sequence_depth"
    assert "nested deeper than 16" in crossed.message
    assert bounds.Bounds(MIB, 40).parsed_crossed(item) is None


def many_elements(count: int, sop: str = STUDY + ".3.90") -> bytes:
    """A file of ``count`` zero-length private elements (8 bytes each) after a valid data set."""
    empty = b"".join(struct.pack("<HH2sH", 0x0029 + 2 * (i >> 16), i & 0xFFFF, b"LO", 0) for i in range(count))
    return _part10(_dataset(sop)) + empty


def test_a_data_set_of_too_many_elements_is_refused(receiver: Receiver) -> None:
    before = _refused("stow", "element_count")
    outcome = receiver.receive(many_elements(bounds.MAX_ELEMENTS + 1), source="PACS_AE")
    assert outcome.status is ReceiveStatus.CANNOT_UNDERSTAND, outcome.message
    assert f"more than {bounds.MAX_ELEMENTS} elements" in outcome.message
    assert _spooled(receiver) == []
    assert _refused("stow", "element_count") == before + 1


def test_elements_in_sequences_count_too() -> None:
    items = [_dataset(STUDY + f".7.{i}") for i in range(30)]
    data = _part10(_dataset(STUDY + ".3.91", ContentSequence=items))
    crossed = bounds.Bounds(MIB, 16, max_elements=100).check(data)
    assert crossed is not None and crossed.bound == "element_count"
    assert bounds.Bounds(MIB, 16, max_elements=200).check(data) is None


def test_real_files_stay_far_below_the_element_cap() -> None:
    paths = sorted(real_file("RG2_UNC.dcm").parent.glob("*.dcm"))
    assert len(paths) > 20
    for path in paths:
        data = path.read_bytes()
        assert bounds.Bounds(256 * MIB, 16, max_elements=bounds.MAX_ELEMENTS // 100).check(data) is None, path.name


def test_a_malformed_uid_is_refused_without_quoting_it(receiver: Receiver, caplog: pytest.LogCaptureFixture) -> None:
    data = _part10(_dataset(STUDY + ".3.92", StudyInstanceUID="1.2." + CANARY))
    with caplog.at_level("DEBUG"):
        outcome = receiver.receive(data, source="PACS_AE")
    assert outcome.status is ReceiveStatus.CANNOT_UNDERSTAND
    assert re.search("StudyInstanceUID .* is not a valid DICOM UID", outcome.message), outcome.message
    assert "letter" in outcome.message
    assert CANARY not in outcome.message
    assert _own_records(caplog) and not [r for r in _own_records(caplog) if CANARY in r.getMessage()]


def _own_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    """The log records of predraft's own loggers (pydicom's, which quote values, log errors only: bootstrap)."""
    return [record for record in caplog.records if record.name.split(".")[0] in OWN_PACKAGES]


def test_a_library_error_reading_the_data_set_is_not_quoted(
    receiver: Receiver, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    def read_failing(*args: object, **kwargs: object) -> None:
        ipaddress.ip_address(CANARY)  # a library's message that quotes the value it was given

    monkeypatch.setattr(pydicom, "dcmread", read_failing)
    with caplog.at_level("DEBUG"):
        outcome = receiver.receive(_part10(_dataset(STUDY + ".3.93")), source="PACS_AE")
    assert outcome.status is ReceiveStatus.CANNOT_UNDERSTAND
    assert "ValueError" in outcome.message and CANARY not in outcome.message
    assert _own_records(caplog) and not [r for r in _own_records(caplog) if CANARY in r.getMessage()]
