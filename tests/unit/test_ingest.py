"""predraft.listener.ingest (recording instances) and predraft.listener.receive.Receiver (spool + record + outcome)."""

from __future__ import annotations

import contextlib
import struct
import threading
from io import BytesIO

import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from sqlalchemy import event, func, select

from predraft.core.db import get_engine, session_scope
from predraft.core.schema import Event, Instance, Series, Study, utcnow
from predraft.core.states import InstanceState, StudyState
from predraft.listener import receive as receive_module
from predraft.listener import status
from predraft.listener.dimse import STATUS_OF
from predraft.listener.ingest import InstanceHeader, record_instance
from predraft.listener.receive import Receiver, ReceiveStatus
from predraft.listener.spool import Spool
from tests.conftest import real_file
from tests.unit.conftest import REAL_DIR

CR = "1.2.840.10008.5.1.4.1.1.1"
DX = "1.2.840.10008.5.1.4.1.1.1.1"
STUDY = "1.2.826.0.1.3680043.8.498.10"


def _header(sop: str, *, study: str = STUDY, series: str = STUDY + ".1") -> InstanceHeader:
    return InstanceHeader(
        study_uid=study,
        series_uid=series,
        sop_instance_uid=sop,
        sop_class_uid=CR,
        transfer_syntax_uid=ExplicitVRLittleEndian,
        modality="CR",
        patient_id="P1",
        study_description="XR PELVIS",
        body_part="PELVIS",
    )


def _record(url: str, header: InstanceHeader, calling_ae: str = "PACS"):
    with session_scope(url) as session:
        return record_instance(
            session,
            header=header,
            spool_path=f"/spool/{header.sop_instance_uid}.dcm",
            size_bytes=1234,
            calling_ae=calling_ae,
        )


def _count(url: str, model) -> int:
    with session_scope(url) as session:
        return session.scalar(select(func.count()).select_from(model))


def _event_kinds(url: str) -> list[str]:
    with session_scope(url) as session:
        return list(session.scalars(select(Event.kind).order_by(Event.id)))


def test_first_instance_opens_a_receiving_study(any_url):
    result = _record(any_url, _header(STUDY + ".1.1"))

    assert not result.duplicate
    with session_scope(any_url) as session:
        study = session.get(Study, result.study_id)
        assert (study.study_uid, study.state, study.generation) == (STUDY, StudyState.RECEIVING, 1)
        assert (study.patient_id, study.study_description) == ("P1", "XR PELVIS")
        instance = session.get(Instance, result.instance_id)
        assert instance.sop_instance_uid == STUDY + ".1.1"
        assert instance.state == "received"
        assert (instance.size_bytes, instance.calling_ae) == (1234, "PACS")
        series = session.get(Series, instance.series_id)
        assert (series.series_uid, series.body_part, series.study_id) == (STUDY + ".1", "PELVIS", study.id)
    assert _event_kinds(any_url) == ["study_opened"]  # the instance row is the receipt record


def test_second_instance_joins_the_same_study_and_series(any_url):
    first = _record(any_url, _header(STUDY + ".1.1"))
    second = _record(any_url, _header(STUDY + ".1.2"))
    assert second.study_id == first.study_id and second.instance_id != first.instance_id
    assert (_count(any_url, Study), _count(any_url, Series), _count(any_url, Instance)) == (1, 1, 2)
    assert _event_kinds(any_url) == ["study_opened"]  # opened once, not once per instance


def test_same_sop_instance_uid_is_a_duplicate_and_adds_no_row(sqlite_url):
    first = _record(sqlite_url, _header(STUDY + ".1.1"))
    again = _record(sqlite_url, _header(STUDY + ".1.1"), calling_ae="OTHER")

    assert again.duplicate
    assert (again.study_id, again.instance_id) == (first.study_id, first.instance_id)
    assert _count(sqlite_url, Instance) == 1
    assert _event_kinds(sqlite_url)[-1] == "duplicate"
    with session_scope(sqlite_url) as session:
        assert session.get(Instance, first.instance_id).calling_ae == "PACS"


def test_new_instance_reopens_a_drafted_study_under_a_new_generation(any_url):
    first = _record(any_url, _header(STUDY + ".1.1"))
    with session_scope(any_url) as session:
        study = session.get(Study, first.study_id)
        study.state = StudyState.DRAFTED
        study.error = "stale"

    result = _record(any_url, _header(STUDY + ".1.2"))

    assert not result.duplicate and result.study_id == first.study_id
    with session_scope(any_url) as session:
        study = session.get(Study, first.study_id)
        assert (study.state, study.generation, study.error) == (StudyState.RECEIVING, 2, None)
    assert "study_reopened" in _event_kinds(any_url)
    assert _count(any_url, Instance) == 2


def test_duplicate_does_not_reopen_a_drafted_study(any_url):
    first = _record(any_url, _header(STUDY + ".1.1"))
    with session_scope(any_url) as session:
        session.get(Study, first.study_id).state = StudyState.DRAFTED

    assert _record(any_url, _header(STUDY + ".1.1")).duplicate
    with session_scope(any_url) as session:
        study = session.get(Study, first.study_id)
        assert (study.state, study.generation) == (StudyState.DRAFTED, 1)


def test_rolled_back_transaction_records_nothing(sqlite_url):
    with pytest.raises(RuntimeError, match="boom"), session_scope(sqlite_url) as session:
        record_instance(session, header=_header(STUDY + ".1.1"), spool_path="/x", size_bytes=1, calling_ae="A")
        raise RuntimeError("boom")
    assert (_count(sqlite_url, Study), _count(sqlite_url, Instance), _count(sqlite_url, Event)) == (0, 0, 0)


@pytest.mark.parametrize("database", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_concurrent_first_instances_of_a_new_study_are_both_recorded(database, request, monkeypatch):
    """Two associations store the first instances of one new study at the same moment: both are
    recorded under one study row. The barrier holds both just before the study insert, so on
    PostgreSQL both really race for it (on SQLite, BEGIN IMMEDIATE serialises them instead)."""
    url = request.getfixturevalue("sqlite_url" if database == "sqlite" else "postgres_url")
    barrier = threading.Barrier(2)

    def insert_after_both_looked(connection, cursor, statement, parameters, context, executemany):
        if statement.lstrip().upper().startswith("INSERT INTO STUDIES"):
            with contextlib.suppress(threading.BrokenBarrierError):
                barrier.wait(timeout=3)

    engine = get_engine(url)
    event.listen(engine, "before_cursor_execute", insert_after_both_looked)
    request.addfinalizer(lambda: event.remove(engine, "before_cursor_execute", insert_after_both_looked))
    errors: list[BaseException] = []

    def store(sop: str) -> None:
        try:
            _record(url, _header(sop))
        except BaseException as exc:  # collected for the assertion
            errors.append(exc)

    threads = [threading.Thread(target=store, args=(STUDY + f".1.{n}",)) for n in (1, 2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert errors == []
    assert (_count(url, Study), _count(url, Instance)) == (1, 2)


def _dataset(**overrides) -> Dataset:
    ds = Dataset()
    ds.StudyInstanceUID = STUDY
    ds.SeriesInstanceUID = STUDY + ".1"
    ds.SOPInstanceUID = STUDY + ".1.1"
    ds.SOPClassUID = CR
    ds.Modality = "CR"
    ds.PatientID = "P1"
    ds.PatientName = "DOE^JANE"
    ds.BodyPartExamined = "HIP"
    for keyword, value in overrides.items():
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    return ds


def test_header_from_dataset_reads_uids_and_text():
    header = InstanceHeader.from_dataset(_dataset(), ExplicitVRLittleEndian)
    assert (header.study_uid, header.series_uid, header.sop_instance_uid) == (STUDY, STUDY + ".1", STUDY + ".1.1")
    assert (header.sop_class_uid, header.transfer_syntax_uid) == (CR, ExplicitVRLittleEndian)
    assert (header.modality, header.patient_name, header.body_part) == ("CR", "DOE^JANE", "HIP")
    assert header.accession_number == ""


@pytest.mark.parametrize("keyword", ["StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID"])
def test_header_from_dataset_names_a_missing_uid(keyword):
    with pytest.raises(ValueError, match=keyword):
        InstanceHeader.from_dataset(_dataset(**{keyword: None}), ExplicitVRLittleEndian)


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")
def test_header_from_dataset_refuses_a_malformed_uid():
    with pytest.raises(ValueError, match="SOPInstanceUID .* is not a valid DICOM UID"):
        InstanceHeader.from_dataset(_dataset(SOPInstanceUID="../../etc/passwd"), ExplicitVRLittleEndian)
    with pytest.raises(ValueError, match="TransferSyntaxUID"):
        InstanceHeader.from_dataset(_dataset(), "not-a-uid")


def test_header_from_real_radiograph(real_path):
    path = real_path("RG2_UNC.dcm")
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    header = InstanceHeader.from_dataset(ds, ds.file_meta.TransferSyntaxUID)
    assert header.study_uid == ds.StudyInstanceUID
    assert header.sop_instance_uid == ds.SOPInstanceUID
    assert (header.sop_class_uid, header.modality, header.body_part) == (CR, "CR", "HIP")


# -- Receiver (what the C-STORE handler and STOW-RS call) ----------------------------------------------


def _file_bytes(ds: Dataset) -> bytes:
    copy = Dataset(ds)
    copy.file_meta = FileMetaDataset()
    copy.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    copy.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    copy.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    with DicomBytesIO() as buffer:
        copy.save_as(buffer, enforce_file_format=True)
        return buffer.getvalue()


def _receive(receiver: Receiver, ds: Dataset, **kwargs) -> int:
    """The DIMSE status the C-STORE handler answers for this outcome."""
    return STATUS_OF[receiver.receive(_file_bytes(ds), source="PACS_AE", **kwargs).status]


def test_receiver_spools_records_and_answers_success(sqlite_url, tmp_path):
    spool = Spool(tmp_path / "spool")
    receiver = Receiver(spool, sqlite_url)

    assert _receive(receiver, _dataset(), expected_sop_class=CR) == status.SUCCESS

    path = spool.instance_path(STUDY, STUDY + ".1.1")
    stored = pydicom.dcmread(path)
    assert stored.SOPInstanceUID == STUDY + ".1.1"
    with session_scope(sqlite_url) as session:
        instance = session.scalar(select(Instance))
        assert (instance.spool_path, instance.size_bytes) == (str(path), path.stat().st_size)
        assert instance.calling_ae == "PACS_AE"
    outcome = receiver.receive(_file_bytes(_dataset()), source="PACS_AE")
    assert outcome.status is ReceiveStatus.DUPLICATE and STATUS_OF[outcome.status] == status.SUCCESS
    assert _count(sqlite_url, Instance) == 1


def test_receiver_refuses_a_dataset_without_uids(sqlite_url, tmp_path):
    receiver = Receiver(Spool(tmp_path / "spool"), sqlite_url)
    outcome = receiver.receive(_file_bytes(_dataset(StudyInstanceUID=None)), source="PACS_AE")
    assert outcome.status is ReceiveStatus.CANNOT_UNDERSTAND
    assert "StudyInstanceUID" in outcome.message
    assert _count(sqlite_url, Instance) == 0


def test_receiver_refuses_bytes_that_are_not_dicom(sqlite_url, tmp_path):
    receiver = Receiver(Spool(tmp_path / "spool"), sqlite_url)
    assert receiver.receive(b"%PDF-1.4 not dicom", source="PACS_AE").status is ReceiveStatus.CANNOT_UNDERSTAND
    truncated = _file_bytes(_dataset())[:200]
    assert receiver.receive(truncated, source="PACS_AE").status is ReceiveStatus.CANNOT_UNDERSTAND
    assert _count(sqlite_url, Instance) == 0


def test_receiver_refuses_a_sop_class_mismatch(sqlite_url, tmp_path):
    receiver = Receiver(Spool(tmp_path / "spool"), sqlite_url)
    assert _receive(receiver, _dataset(), expected_sop_class=DX) == status.DATASET_DOES_NOT_MATCH_SOP_CLASS
    assert list((tmp_path / "spool" / "incoming").iterdir()) == []


def test_receiver_refuses_dx_for_processing_with_sop_class_not_supported(sqlite_url, tmp_path):
    receiver = Receiver(Spool(tmp_path / "spool"), sqlite_url)
    outcome = receiver.receive(_file_bytes(_dataset(SOPClassUID="1.2.840.10008.5.1.4.1.1.1.1.1")), source="PACS_AE")
    assert outcome.status is ReceiveStatus.SOP_CLASS_NOT_SUPPORTED
    assert STATUS_OF[outcome.status] == status.SOP_CLASS_NOT_SUPPORTED == 0x0122
    assert "For Processing" in outcome.message
    assert _count(sqlite_url, Instance) == 0


@pytest.mark.parametrize("sop_class", ["1.2.840.10008.5.1.4.1.1.7.2", "1.2.840.10008.5.1.4.1.1.7.4"])
def test_a_multi_frame_secondary_capture_is_stored_as_an_image_to_classify(sqlite_url, tmp_path, sop_class):
    """What dcmtk's img2dcm --new-sc makes of a picture (grey or colour) is an image predraft reads, not a file it
    only stores."""
    receiver = Receiver(Spool(tmp_path / "spool"), sqlite_url)
    assert _receive(receiver, _dataset(SOPClassUID=sop_class), expected_sop_class=sop_class) == status.SUCCESS
    with session_scope(sqlite_url) as session:
        instance = session.scalar(select(Instance))
        assert (instance.sop_class_uid, instance.state, instance.error) == (sop_class, InstanceState.RECEIVED, None)


def test_a_structured_report_is_filed_without_reopening_its_drafted_study(sqlite_url, tmp_path):
    receiver = Receiver(Spool(tmp_path / "spool"), sqlite_url)
    assert _receive(receiver, _dataset()) == status.SUCCESS
    with session_scope(sqlite_url) as session:
        session.scalar(select(Study)).state = StudyState.DRAFTED
    sr = _dataset(
        SOPClassUID="1.2.840.10008.5.1.4.1.1.88.33",
        SOPInstanceUID=STUDY + ".9.1",
        SeriesInstanceUID=STUDY + ".9",
        Modality="SR",
    )
    assert _receive(receiver, sr) == status.SUCCESS
    with session_scope(sqlite_url) as session:
        study = session.scalar(select(Study))
        assert (study.state, study.generation) == (StudyState.DRAFTED, 1)
        report = session.scalar(select(Instance).where(Instance.sop_instance_uid == STUDY + ".9.1"))
        assert report.state == InstanceState.SKIPPED and "structured report" in report.error


def test_receiver_answers_out_of_resources_when_the_spool_is_full(sqlite_url, tmp_path):
    receiver = Receiver(Spool(tmp_path / "spool", min_free_bytes=2**62), sqlite_url)
    assert _receive(receiver, _dataset()) == status.OUT_OF_RESOURCES
    assert _count(sqlite_url, Instance) == 0


def test_receiver_answers_processing_failure_when_the_database_fails(tmp_path):
    spool = Spool(tmp_path / "spool")
    receiver = Receiver(spool, f"sqlite:///{tmp_path}/unmigrated.sqlite")
    assert _receive(receiver, _dataset()) == status.PROCESSING_FAILURE
    assert not spool.instance_path(STUDY, STUDY + ".1.1").exists()  # nothing left behind: the sender sends it again


def test_a_held_instance_sent_again_leaves_the_held_file_as_it_is(sqlite_url, tmp_path):
    spool = Spool(tmp_path / "spool")
    receiver = Receiver(spool, sqlite_url)
    assert _receive(receiver, _dataset()) == status.SUCCESS
    path = spool.instance_path(STUDY, STUDY + ".1.1")
    held = path.stat()

    outcome = receiver.receive(_file_bytes(_dataset(PatientID="CHANGED")), source="PACS_AE")

    assert outcome.status is ReceiveStatus.DUPLICATE
    assert (path.stat().st_ino, path.stat().st_mtime_ns) == (held.st_ino, held.st_mtime_ns)
    assert pydicom.dcmread(path).PatientID == "P1"


def test_an_instance_sent_again_after_retention_purged_its_file_leaves_no_file(sqlite_url, tmp_path):
    spool = Spool(tmp_path / "spool")
    receiver = Receiver(spool, sqlite_url)
    assert _receive(receiver, _dataset()) == status.SUCCESS
    path = spool.instance_path(STUDY, STUDY + ".1.1")
    path.unlink()
    with session_scope(sqlite_url) as session:
        session.scalar(select(Instance)).purged_at = utcnow()

    outcome = receiver.receive(_file_bytes(_dataset()), source="PACS_AE")

    assert outcome.status is ReceiveStatus.DUPLICATE
    assert not path.exists()
    with session_scope(sqlite_url) as session:
        assert session.scalar(select(Instance.purged_at)) is not None
    assert _count(sqlite_url, Instance) == 1


def test_a_file_left_in_the_spool_without_its_row_is_replaced_and_recorded(sqlite_url, tmp_path):
    """What a crash between the spool's rename and the database's commit leaves: the file, unrecorded."""
    spool = Spool(tmp_path / "spool")
    path = spool.instance_path(STUDY, STUDY + ".1.1")
    path.parent.mkdir(parents=True)
    path.write_bytes(b"left by a crash")
    receiver = Receiver(spool, sqlite_url)

    assert _receive(receiver, _dataset()) == status.SUCCESS

    assert pydicom.dcmread(path).SOPInstanceUID == STUDY + ".1.1"
    with session_scope(sqlite_url) as session:
        assert session.scalar(select(Instance.spool_path)) == str(path)


def test_receiving_a_file_reads_it_through_a_map_and_removes_it(sqlite_url, tmp_path):
    spool = Spool(tmp_path / "spool")
    receiver = Receiver(spool, sqlite_url)
    received, empty = tmp_path / "received.dcm", tmp_path / "empty.dcm"
    received.write_bytes(_file_bytes(_dataset()))
    empty.write_bytes(b"")

    assert receiver.receive_file(received, source="PACS_AE").status is ReceiveStatus.STORED
    assert receiver.receive_file(empty, source="PACS_AE").status is ReceiveStatus.CANNOT_UNDERSTAND

    assert not received.exists() and not empty.exists()
    assert pydicom.dcmread(spool.instance_path(STUDY, STUDY + ".1.1")).PatientID == "P1"


def test_receiver_validates_its_arguments(sqlite_url, tmp_path):
    with pytest.raises(TypeError, match="spool must be a Spool"):
        Receiver(tmp_path, sqlite_url)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="database_url"):
        Receiver(Spool(tmp_path / "spool"), "")


# -- Receiver: a file cut short is refused before anything is spooled --------------------------------------


def _pixel_data_cut(name: str) -> tuple[bytes, bytes]:
    """A real file whole, and cut in the middle of its Pixel Data's value (native or encapsulated)."""
    data = real_file(name).read_bytes()
    ds = pydicom.dcmread(BytesIO(data), defer_size=1024)
    start = ds.get_item(0x7FE00010, keep_deferred=True).value_tell
    return data, data[: start + (len(data) - start) // 2]


def _spooled(spool: Spool) -> list[str]:
    return [path.name for path in spool.root.rglob("*") if path.is_file()]


@pytest.mark.parametrize(
    ("name", "where"),
    [
        ("RG2_UNC.dcm", "element (7FE0,0010) holds"),  # native: a defined length beyond the end
        ("RG2_J2KR.dcm", "undefined length, before its delimiter"),  # JPEG 2000 fragments: no Sequence Delimiter
    ],
)
def test_receiver_refuses_a_file_cut_inside_its_pixel_data(sqlite_url, tmp_path, name, where):
    spool = Spool(tmp_path / "spool")
    whole, cut = _pixel_data_cut(name)
    assert pydicom.dcmread(BytesIO(cut), stop_before_pixels=True).SOPInstanceUID  # its header reads as whole

    outcome = Receiver(spool, sqlite_url).receive(cut, source="PACS_AE")

    assert outcome.status is ReceiveStatus.CANNOT_UNDERSTAND
    assert STATUS_OF[outcome.status] == status.CANNOT_UNDERSTAND
    assert "truncated" in outcome.message and where in outcome.message
    assert outcome.sop_instance_uid == pydicom.dcmread(BytesIO(whole), stop_before_pixels=True).SOPInstanceUID
    assert _spooled(spool) == []
    assert _count(sqlite_url, Instance) == 0


@pytest.mark.parametrize("name", ["RG2_UNC.dcm", "RG2_J2KR.dcm"])
def test_receiver_stores_the_whole_file(sqlite_url, tmp_path, name):
    spool = Spool(tmp_path / "spool")
    whole, _ = _pixel_data_cut(name)
    outcome = Receiver(spool, sqlite_url).receive(whole, source="PACS_AE")
    assert outcome.status is ReceiveStatus.STORED, outcome.message
    assert _spooled(spool) == [f"{outcome.sop_instance_uid}.dcm"]
    assert spool.instance_path(outcome.study_uid, outcome.sop_instance_uid).read_bytes() == whole


def _encoded(ds: Dataset, syntax: str) -> bytes:
    """``ds`` as a Part 10 file in the transfer syntax ``syntax`` (uncompressed)."""
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = syntax
    with DicomBytesIO() as buffer:
        pydicom.dcmwrite(
            buffer,
            ds,
            enforce_file_format=True,
            implicit_vr=syntax == ImplicitVRLittleEndian,
            little_endian=syntax != ExplicitVRBigEndian,
        )
        return buffer.getvalue()


@pytest.mark.parametrize("syntax", [ImplicitVRLittleEndian, ExplicitVRBigEndian, DeflatedExplicitVRLittleEndian])
def test_receiver_finds_a_cut_in_every_uncompressed_transfer_syntax(sqlite_url, tmp_path, syntax):
    ds = _dataset(
        Rows=64,
        Columns=64,
        SamplesPerPixel=1,
        PhotometricInterpretation="MONOCHROME2",
        BitsAllocated=16,
        BitsStored=12,
        HighBit=11,
        PixelRepresentation=0,
    )
    ds.PixelData = bytes(range(256)) * 32
    whole = _encoded(ds, syntax)
    receiver = Receiver(Spool(tmp_path / "spool"), sqlite_url)

    outcome = receiver.receive(whole[: len(whole) * 3 // 4], source="PACS_AE")

    assert outcome.status is ReceiveStatus.CANNOT_UNDERSTAND and "truncated" in outcome.message
    assert _spooled(receiver.spool) == []
    assert receiver.receive(whole, source="PACS_AE").status is ReceiveStatus.STORED


def test_receiver_finds_a_cut_inside_a_sequence_of_undefined_length(sqlite_url, tmp_path):
    item = Dataset()
    item.ReferencedSOPClassUID = CR
    item.ReferencedSOPInstanceUID = STUDY + ".1.2"
    ds = _dataset(ReferencedImageSequence=[item, item])
    ds["ReferencedImageSequence"].is_undefined_length = True
    whole = _encoded(ds, ExplicitVRLittleEndian)
    receiver = Receiver(Spool(tmp_path / "spool"), sqlite_url)

    start = whole.index(b"\x08\x00\x40\x11")  # (0008,1140), before the UIDs: pydicom cannot read the cut file
    end = whole.index(b"\xfe\xff\xdd\xe0", start)  # its Sequence Delimitation Item
    outcome = receiver.receive(whole[: (start + end) // 2], source="PACS_AE")

    assert outcome.status is ReceiveStatus.CANNOT_UNDERSTAND
    assert "undefined length, before its delimiter (truncated)" in outcome.message
    assert _spooled(receiver.spool) == []
    assert receiver.receive(whole, source="PACS_AE").status is ReceiveStatus.STORED


def _verdicts(data: bytes) -> tuple[str | None, str | None, bool]:
    """The truncation verdict of the whole walk, that of the walk resumed where pydicom's header read stopped
    (the receiver's), and whether the resumed walk was taken."""
    try:
        _, resume = receive_module._read_header(data)
    except Exception:  # the receiver walks the whole file when pydicom cannot read its header
        resume = None
    return receive_module.truncation(data), receive_module.truncation(data, resume=resume), resume is not None


def _cuts(data: bytes) -> list[bytes]:
    """``data`` whole, cut at a dozen places from the File Meta Information to the last byte, and with bytes after
    its end."""
    return (
        [data, data + b"\x00" * 6, data + b"\xfc\xff\xfc\xff" + b"OB\x00\x00\x04\x00\x00\x00abcd"]
        + [data[: len(data) * step // 13] for step in range(1, 13)]
        + [data[:-1], data[:-7]]
    )


@pytest.mark.parametrize("name", sorted(path.name for path in REAL_DIR.glob("*.dcm")) if REAL_DIR.is_dir() else [])
def test_the_walk_resumed_at_pixel_data_gives_the_whole_walks_verdict_on_real_files(name):
    """The receiver walks a file from its Pixel Data on when pydicom's header read stopped there (every element
    before it whole): on every real test file, whole and cut a dozen ways, the verdict is the whole walk's."""
    data = real_file(name).read_bytes()
    for variant in _cuts(data):
        whole_walk, resumed, _ = _verdicts(variant)
        assert resumed == whole_walk, (len(variant), len(data))
    assert _verdicts(data)[2], "the walk did not resume at the Pixel Data of a whole file"


@pytest.mark.parametrize("syntax", [ImplicitVRLittleEndian, ExplicitVRBigEndian, DeflatedExplicitVRLittleEndian])
def test_the_resumed_walk_agrees_in_every_uncompressed_transfer_syntax(syntax):
    ds = _dataset(Rows=64, Columns=64, SamplesPerPixel=1, BitsAllocated=16, BitsStored=16, PixelRepresentation=0)
    ds.PixelData = bytes(range(256)) * 32
    data = _encoded(ds, syntax)
    for variant in _cuts(data):
        whole_walk, resumed, taken = _verdicts(variant)
        assert resumed == whole_walk
    assert _verdicts(data)[2] is (syntax != DeflatedExplicitVRLittleEndian)  # pydicom reads a deflated copy


@pytest.mark.filterwarnings("ignore:Expected explicit VR, but found implicit VR")
def test_the_resumed_walk_reads_pixel_data_as_pydicom_read_the_data_set_not_as_the_syntax_says():
    """A data set written in implicit VR under an explicit transfer syntax: pydicom reads it as implicit, and so
    does the resumed walk, where a walk that went by the transfer syntax would misread the Pixel Data element
    (its length's low bytes spell a VR)."""
    ds = _dataset(Rows=1, Columns=1, BitsAllocated=8, SamplesPerPixel=1, PixelRepresentation=0)
    ds.PixelData = b"\x00" * 0x4144  # its length's first bytes, little endian, spell "DA" (a VR)
    explicit = _encoded(ds, ExplicitVRLittleEndian)
    meta_end = 144 + struct.unpack("<I", explicit[140:144])[0]  # (0002,0000) gives the File Meta Information's length
    body = DicomBytesIO()
    body.is_little_endian, body.is_implicit_VR = True, True
    write_dataset(body, ds)
    mislabelled = explicit[:meta_end] + body.getvalue()
    assert pydicom.dcmread(BytesIO(mislabelled)).PixelData == ds.PixelData  # pydicom reads it as implicit VR
    assert b"\xe0\x7f\x10\x00DA" in mislabelled  # (7FE0,0010) followed by "DA": explicit VR, at a glance
    for variant in _cuts(mislabelled):
        whole_walk, resumed, _ = _verdicts(variant)
        assert resumed == whole_walk
    assert _verdicts(mislabelled) == (None, None, True)
