"""QIDO-RS matching on the keys PS3.18 Table 10.6.1-5 requires that predraft once only answered: StudyTime (a
time or a time range), ReferringPhysicianName and StudyID (studies), SeriesNumber (series) and InstanceNumber
(instances); the parsing of the query values and of received Integer Strings, then the real HTTP app over a
socket on PostgreSQL, with small images received through the same Receiver as C-STORE and STOW-RS."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from io import BytesIO
from typing import Any

import pytest
import requests
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.tag import Tag
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from predraft.listener.dicomweb.query import Match
from predraft.listener.ingest import integer_string
from predraft.listener.receive import Receiver, ReceiveStatus
from tests.conftest import fresh_postgres_database
from tests.unit.webapp import dicomweb_settings, serving

TOKEN = "qido-token"
BEARER = {"Authorization": f"Bearer {TOKEN}", "Accept": "application/dicom+json"}
CR = "1.2.840.10008.5.1.4.1.1.1"


# --- what needs no server -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "values", "kind"),
    [
        ("1030-1100", ("1030", "110059.999999"), "range"),  # the upper end runs to the end of the minute named
        ("-11", ("", "115959.999999"), "range"),
        ("103000-", ("103000", ""), "range"),
        ("110000.5-110001", ("110000.5", "110001.999999"), "range"),
        ("1030", ("1030", "103059.999999"), "range"),  # one time: the times it names
        ("10:30-11", ("10:30-11",), "single"),  # not a TM range (the ACR-NEMA form): matches the text alone
        ("1?30", ("1?30",), "wildcard"),
    ],
)
def test_a_study_time_value_is_a_range_of_times(value: str, values: tuple[str, ...], kind: str) -> None:
    assert Match.parse("StudyTime", value) == Match("StudyTime", values, kind)


@pytest.mark.parametrize(
    ("query", "stored", "matches"),
    [
        ("1030-1100", "103015", True),
        ("1030-1100", "110059.5", True),
        ("1030-1100", "110100", False),
        ("1030-1100", "102959.999", False),
        ("1030", "103059", True),
        ("1030", "1031", False),
        ("-0900", "", False),  # no StudyTime held: no range holds it
    ],
)
def test_a_time_range_holds_the_times_it_names(query: str, stored: str, matches: bool) -> None:
    assert Match.parse("StudyTime", query).test(stored) is matches


@pytest.mark.parametrize(("value", "normal"), [("7", "7"), (" 07", "7"), ("+7 ", "7"), ("-3", "-3")])
def test_an_integer_string_matches_by_its_number(value: str, normal: str) -> None:
    assert Match.parse("SeriesNumber", value) == Match("SeriesNumber", (normal,), "single")


@pytest.mark.parametrize(
    ("raw", "number"),
    [(b"007 ", "7"), (b"+12", "12"), (b" 3\x00", "3"), (b"x1", ""), (b"1\\2", ""), (b"1.5", ""), (b"", "")],
)
def test_a_received_integer_string_is_kept_as_its_number_or_not_at_all(raw: bytes, number: str) -> None:
    ds = Dataset()
    ds[0x00200013] = RawDataElement(Tag(0x00200013), "IS", len(raw), raw, 0, False, True)
    assert integer_string(ds, "InstanceNumber") == number


def test_a_missing_integer_string_is_empty() -> None:
    assert integer_string(Dataset(), "SeriesNumber") == ""


# --- the served app -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sent:
    study: str
    series: str
    instances: list[str]


@dataclass
class Server:
    url: str
    sent: dict[str, Sent]

    def search(self, path: str, **query: str) -> requests.Response:
        return requests.get(f"{self.url}/dicomweb{path}", params=query, headers=BEARER, timeout=60)

    def studies(self, **query: str) -> set[str]:
        """The names of the sent studies a study search finds (among them alone: the module's database)."""
        response = self.search("/studies", **query)
        assert response.status_code in (200, 204), response.text[:300]
        assert "Warning" not in response.headers, response.headers["Warning"]
        found = {item["0020000D"]["Value"][0] for item in response.json()} if response.status_code == 200 else set()
        return {name for name, sent in self.sent.items() if sent.study in found}


def _image(study: str, series: str, **attributes: Any) -> bytes:
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = CR, generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.Modality = study, series, "CR"
    ds.PatientID, ds.PatientName, ds.BodyPartExamined = "QIDO-1", "QIDO^TEST", "PELVIS"
    ds.Rows = ds.Columns = 4
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = bytes(range(16))
    for keyword, value in attributes.items():
        if isinstance(value, bytes):  # as sent, whatever pydicom would make of it
            tag = Tag(keyword)
            ds[tag] = RawDataElement(tag, dictionary_VR(tag), len(value), value, 0, False, True)
        else:
            setattr(ds, keyword, value)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = CR, ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    buffer = BytesIO()
    with warnings.catch_warnings():  # pydicom warns of the malformed value it is told to write as it is
        warnings.simplefilter("ignore", UserWarning)
        ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


#: The studies sent: their study-level values, and the (SeriesNumber, [InstanceNumber...]) of their one series.
STUDIES: dict[str, tuple[dict[str, Any], str, list[str]]] = {
    "morning": (
        {"StudyTime": "103015", "ReferringPhysicianName": "WHO^JOHN", "StudyID": "S1"},
        "2",
        ["1", "3"],
    ),
    "afternoon": (
        {"StudyTime": "143000.25", "ReferringPhysicianName": "HOUSE^GREGORY", "StudyID": "S22"},
        "02",
        ["x1"],  # a malformed InstanceNumber: stored all the same, without it
    ),
    "untimed": ({"ReferringPhysicianName": "", "StudyID": ""}, "", [""]),
    "old_form": ({"StudyTime": b"10:45:00"}, "", [""]),  # the ACR-NEMA form, held as 104500
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    folder = tmp_path_factory.mktemp("qido-app")
    with fresh_postgres_database("predraft_test_qido") as database_url:
        settings = dicomweb_settings(folder, database_url, TOKEN)
        receiver = Receiver.from_settings(settings)
        sent = {}
        for name, (study_values, series_number, instance_numbers) in STUDIES.items():
            study, series = generate_uid(), generate_uid()
            uids = []
            for number in instance_numbers:
                extra: dict[str, Any] = {"InstanceNumber": f"{number:<2}".encode()} if number else {}
                if series_number:
                    extra["SeriesNumber"] = series_number
                data = _image(study, series, **{k: v for k, v in study_values.items() if v}, **extra)
                outcome = receiver.receive(data, source="qido-test")
                assert outcome.status is ReceiveStatus.STORED, (name, outcome.message)
                uids.append(outcome.sop_instance_uid)
            sent[name] = Sent(study, series, uids)
        with serving(settings) as (url, _app):
            yield Server(url, sent)


@pytest.mark.parametrize(
    ("query", "found"),
    [
        ({"StudyTime": "1030-1100"}, {"morning", "old_form"}),
        ({"StudyTime": "1030-1044"}, {"morning"}),
        ({"StudyTime": "1430"}, {"afternoon"}),
        ({"StudyTime": "-1200"}, {"morning", "old_form"}),
        ({"StudyTime": "1200-"}, {"afternoon"}),
        ({"StudyTime": "-"}, set()),  # no time range and no time: single-value matching of "-"
        ({"ReferringPhysicianName": "HOUSE*"}, {"afternoon"}),
        ({"ReferringPhysicianName": "WHO^JOHN"}, {"morning"}),
        ({"ReferringPhysicianName": "house*"}, set()),  # case-sensitive on PostgreSQL (SQLite's LIKE is not)
        ({"StudyID": "S1"}, {"morning"}),
        ({"StudyID": "S?2"}, {"afternoon"}),
        ({"00200010": "S22", "00080030": "14*"}, {"afternoon"}),  # by tag, and two keys at once
        ({"StudyID": ""}, {"morning", "afternoon", "untimed", "old_form"}),  # universal matching
    ],
)
@pytest.mark.slow
@pytest.mark.postgres
def test_studies_match_on_time_referring_physician_and_study_id(
    server: Server, query: dict[str, str], found: set[str]
) -> None:
    assert server.studies(**query, PatientID="QIDO-1") == found


@pytest.mark.slow
@pytest.mark.postgres
def test_a_study_is_answered_with_the_values_it_is_matched_on(server: Server) -> None:
    (morning,) = server.search("/studies", StudyTime="1030-1100", StudyID="S1").json()
    assert morning["00080030"]["Value"] == ["103015"]
    assert morning["00080090"]["Value"] == [{"Alphabetic": "WHO^JOHN"}]
    assert morning["00200010"]["Value"] == ["S1"]
    (old_form,) = server.search("/studies", StudyInstanceUID=server.sent["old_form"].study).json()
    assert old_form["00080030"]["Value"] == ["104500"]  # as matched, not the header's 10:45:00


@pytest.mark.slow
@pytest.mark.postgres
def test_series_match_on_their_number(server: Server) -> None:
    morning, afternoon = server.sent["morning"], server.sent["afternoon"]
    by_number = server.search(f"/studies/{morning.study}/series", SeriesNumber="02")
    assert by_number.status_code == 200, by_number.text[:300]
    assert "Warning" not in by_number.headers
    assert [item["0020000E"]["Value"][0] for item in by_number.json()] == [morning.series]
    assert server.search(f"/studies/{morning.study}/series", SeriesNumber="3").status_code == 204
    (answer,) = server.search(f"/studies/{afternoon.study}/series", SeriesNumber="2").json()
    assert answer["00200011"]["Value"] == [2]
    untimed = server.sent["untimed"]
    assert server.search(f"/studies/{untimed.study}/series", SeriesNumber="1").status_code == 204


@pytest.mark.slow
@pytest.mark.postgres
def test_instances_match_on_their_number_and_answer_it(server: Server) -> None:
    morning = server.sent["morning"]
    path = f"/studies/{morning.study}/series/{morning.series}/instances"
    (third,) = server.search(path, InstanceNumber="3").json()
    assert third["00080018"]["Value"] == [morning.instances[1]]
    assert third["00200013"]["Value"] == [3]
    listed = server.search(path).json()
    assert sorted(item["00200013"]["Value"][0] for item in listed) == [1, 3]
    assert server.search(path, InstanceNumber="2").status_code == 204

    afternoon = server.sent["afternoon"]  # its InstanceNumber "x1" was no number: stored, answered without one
    (stored,) = server.search(f"/studies/{afternoon.study}/series/{afternoon.series}/instances").json()
    assert stored["00080018"]["Value"] == afternoon.instances
    assert "00200013" not in stored
