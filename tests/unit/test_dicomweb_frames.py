"""WADO-RS Retrieve Frames and the QIDO-RS attributes OHIF Viewer asks for (docs: ../shared/docs/OHIF.md), against
the real HTTP app over a real socket, on a PostgreSQL database, with the NEMA hip (RG2) stored in several transfer
syntaxes and small synthetic images for what the real files lack (several frames, big endian, 1-bit data).

What is checked is the bytes: a native frame is its slice of PixelData, a compressed frame is its fragments and
decodes to the pixels of the uncompressed file; each part's Content-Type names its transfer syntax.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from io import BytesIO
from typing import Any, TypeVar

import numpy as np
import pydicom
import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.uid import (
    JPEG2000,
    UID,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGExtended12Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
    generate_uid,
)

from predraft.core import metrics
from predraft.core.db import session_scope
from predraft.core.settings import Settings
from predraft.listener.dicomweb.common import DicomwebError
from predraft.listener.dicomweb.frames import (
    OCTET_STREAM,
    NativeLayout,
    Offer,
    choose_offer,
    native_frame,
    offers_for,
    parse_frame_list,
)
from predraft.listener.dicomweb.multipart import split_multipart
from predraft.listener.ingest import InstanceHeader, record_instance
from predraft.listener.receive import Receiver, ReceiveStatus
from predraft.listener.spool import Spool
from tests.conftest import fresh_postgres_database, real_file
from tests.unit.webapp import dicomweb_settings, serving

TOKEN = "frames-token"
BEARER = {"Authorization": f"Bearer {TOKEN}"}
#: What OHIF Viewer 3.13 sends for a frame (omitQuotationForMultipartRequest: true).
OHIF_ACCEPT = "multipart/related; type=application/octet-stream; transfer-syntax=*"
OCTETS_ACCEPT = 'multipart/related; type="application/octet-stream"'
CR = "1.2.840.10008.5.1.4.1.1.1"
BASIC_TEXT_SR = "1.2.840.10008.5.1.4.1.1.88.11"
TIMEOUT = 60
#: The real files stored, by their transfer syntax (RG2 = NEMA WG04 CR hip, 2140 x 1760, 16 bits allocated).
COMPRESSED = {
    "RG2_J2KR.dcm": JPEG2000Lossless,
    "RG2_J2KI.dcm": JPEG2000,
    "RG2_JPLL.dcm": JPEGLosslessSV1,
    "RG2_JPLY_fixed.dcm": JPEGExtended12Bit,
    "RG2_JLSL.dcm": JPEGLSLossless,
    "RG2_RLE.dcm": RLELossless,
}
LOSSLESS = ("RG2_J2KR.dcm", "RG2_JPLL.dcm", "RG2_JLSL.dcm", "RG2_RLE.dcm")

F = TypeVar("F", bound=Callable[..., Any])


def served(test: F) -> F:
    """Marks a test that starts the HTTP app on a PostgreSQL database."""
    return pytest.mark.slow(pytest.mark.postgres(test))


# --- what needs no server -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "numbers"), [("1", [1]), ("3,1", [3, 1]), ("2,10,7", [2, 10, 7])])
def test_a_frame_list_keeps_its_order(text: str, numbers: list[int]) -> None:
    assert parse_frame_list(text) == numbers


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("0", "malformed frame list '0'"),
        ("1,,2", "malformed frame list"),
        ("1;2", "malformed frame list"),
        ("a", "malformed frame list 'a'"),
        ("-1", "malformed frame list"),
        ("1,2,1", r"names frame\(s\) \[1\] more than once"),
    ],
)
def test_a_malformed_frame_list_is_400(text: str, message: str) -> None:
    with pytest.raises(DicomwebError, match=message) as caught:
        parse_frame_list(text)
    assert caught.value.status == 400


@pytest.mark.parametrize(
    ("accept", "syntax", "chosen"),
    [
        (OHIF_ACCEPT, ExplicitVRLittleEndian, Offer(OCTET_STREAM, ExplicitVRLittleEndian)),
        (OHIF_ACCEPT, JPEG2000Lossless, Offer(OCTET_STREAM, JPEG2000Lossless)),
        (OCTETS_ACCEPT, ExplicitVRLittleEndian, Offer(OCTET_STREAM, ExplicitVRLittleEndian)),
        (OCTETS_ACCEPT, JPEG2000Lossless, None),  # octets without a syntax mean Explicit VR Little Endian
        (None, JPEG2000Lossless, Offer("image/jp2", JPEG2000Lossless)),
        ("*/*", RLELossless, Offer("image/dicom-rle", RLELossless)),
        ('multipart/related; type="image/x-dicom-rle"', RLELossless, Offer("image/x-dicom-rle", RLELossless)),
        ('multipart/related; type="image/jpeg"', JPEGExtended12Bit, None),  # image/jpeg alone means baseline
        (
            f'multipart/related; type="image/jpeg"; transfer-syntax={JPEGExtended12Bit}',
            JPEGExtended12Bit,
            Offer("image/jpeg", JPEGExtended12Bit),
        ),
        ('multipart/related; type="image/jls", multipart/related; type="image/jpeg"', JPEG2000Lossless, None),
        (
            f'{OHIF_ACCEPT}; q=0.5, multipart/related; type="image/jp2"',  # the higher quality first
            JPEG2000Lossless,
            Offer("image/jp2", JPEG2000Lossless),
        ),
        ('multipart/related; type="application/dicom"', ExplicitVRLittleEndian, None),
        ("image/jpeg", JPEG2000Lossless, None),  # a single-part answer is never sent
        (f"{OHIF_ACCEPT}; q=0", ExplicitVRLittleEndian, None),
    ],
)
def test_the_accept_header_picks_an_offer(accept: str | None, syntax: str, chosen: Offer | None) -> None:
    assert choose_offer(accept, offers_for(syntax)) == chosen


def _packed_bits(bits: np.ndarray) -> bytes:
    return np.packbits(bits.astype(np.uint8), bitorder="little").tobytes()


def test_a_1_bit_frame_that_starts_inside_a_byte_is_shifted_and_padded() -> None:
    frames = np.random.default_rng(7).integers(0, 2, size=(3, 3, 3))  # 9 bits a frame: frames 2 and 3 straddle bytes
    layout = NativeLayout(rows=3, columns=3, bits_allocated=1, frame_bits=9)
    stream = BytesIO(b"head" + _packed_bits(frames.reshape(-1)))
    for number in (1, 2, 3):
        assert native_frame(stream, 4, layout, number) == _packed_bits(frames[number - 1].reshape(-1))


def test_big_endian_words_are_swapped_even_for_a_frame_starting_inside_one() -> None:
    pixels = np.arange(6, dtype=np.uint8)  # 8-bit data of VR OW: three 1 x 1 frames in two big-endian words...
    layout = NativeLayout(rows=1, columns=1, bits_allocated=8, frame_bits=8)
    stream = BytesIO(pixels.view(">u2").astype("<u2").view(np.uint8).tobytes())  # ...stored byte-swapped
    assert [native_frame(stream, 0, layout, n, swap=2) for n in (1, 2, 3)] == [b"\x00", b"\x01", b"\x02"]


# --- the stored instances -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Held:
    """An instance stored through the Receiver (or filed as it is)."""

    study: str
    series: str
    sop: str

    def frames_url(self, frames: str) -> str:
        return f"/dicomweb/studies/{self.study}/series/{self.series}/instances/{self.sop}/frames/{frames}"


@dataclass
class App:
    url: str
    settings: Settings
    held: dict[str, Held]
    files: dict[str, bytes]

    def get(self, path: str, accept: str | None = OHIF_ACCEPT) -> requests.Response:
        headers = {**BEARER, **({"Accept": accept} if accept is not None else {})}
        return requests.get(self.url + path, headers=headers, timeout=TIMEOUT)


@pytest.fixture(scope="module")
def postgres_database() -> Iterator[str]:
    """A fresh, migrated PostgreSQL database for the module (SQLAlchemy URL), dropped afterwards."""
    with fresh_postgres_database("predraft_test_frames") as url:
        yield url


def _part10(ds: Dataset, syntax: str) -> bytes:
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = UID(syntax)
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _image(*, frames: int, rows: int, columns: int, bits: int, pixels: bytes, **extra: object) -> Dataset:
    """A synthetic CR image of a study of its own."""
    ds = Dataset()
    ds.SOPClassUID = CR
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "CR"
    ds.PatientID = "FRAMES-TEST"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns, ds.NumberOfFrames = rows, columns, frames
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits, bits - 1, 0
    ds.PixelData = pixels
    for keyword, value in extra.items():
        setattr(ds, keyword, value)
    return ds


#: Three 4 x 5 frames of 16 bits, as little-endian bytes.
WORDS = np.arange(3 * 4 * 5, dtype=np.uint16).reshape(3, 4, 5) * 1009
#: Three 3 x 3 frames of 1 bit (9 bits each: the second and third start inside a byte).
BITS = np.random.default_rng(14).integers(0, 2, size=(3, 3, 3)).astype(np.uint8)
#: Three compressed frames for two fragments each (not decoded by the server, only moved): lengths that split into
#: even fragments, so that no padding is added.
FAKE_FRAMES = [b"\xff\xd8" + bytes([n]) * (12 + 8 * n) + b"\xff\xd9" for n in range(3)]


def _synthetic() -> dict[str, bytes]:
    """Part 10 files of what the real files lack: several frames, big endian, 1-bit data, an SR, a frame count
    its pixel data cannot hold."""
    little = _image(frames=3, rows=4, columns=5, bits=16, pixels=WORDS.astype("<u2").tobytes())
    big = _image(frames=3, rows=4, columns=5, bits=16, pixels=WORDS.astype(">u2").tobytes())
    bitmap = _image(frames=3, rows=3, columns=3, bits=1, pixels=_packed_bits(BITS.reshape(-1)))
    fragments = _image(frames=3, rows=4, columns=5, bits=8, pixels=b"")
    fragments.PixelData = encapsulate(FAKE_FRAMES, fragments_per_frame=2, has_bot=True)
    fragments["PixelData"].VR = "OB"
    short = _image(frames=3, rows=4, columns=5, bits=16, pixels=WORDS[:2].astype("<u2").tobytes())
    sr = Dataset()
    sr.SOPClassUID, sr.SOPInstanceUID = BASIC_TEXT_SR, generate_uid()
    sr.StudyInstanceUID, sr.SeriesInstanceUID, sr.Modality = generate_uid(), generate_uid(), "SR"
    return {
        "little": _part10(little, ExplicitVRLittleEndian),
        "big": _part10(big, ExplicitVRBigEndian),
        "bitmap": _part10(bitmap, ExplicitVRLittleEndian),
        "fragments": _part10(fragments, JPEGLSLossless),
        "short": _part10(short, ExplicitVRLittleEndian),
        "sr": _part10(sr, ExplicitVRLittleEndian),
    }


#: (0040,A730) Content Sequence, explicit VR SQ of undefined length; an Item and the two delimiters.
SEQUENCE_START = struct.pack("<HH2sHL", 0x0040, 0xA730, b"SQ", 0, 0xFFFFFFFF)
ITEM_START = struct.pack("<HHL", 0xFFFE, 0xE000, 0xFFFFFFFF)
ITEM_END = struct.pack("<HHL", 0xFFFE, 0xE00D, 0)
SEQUENCE_END = struct.pack("<HH", 0xFFFE, 0xE0DD) + bytes(4)


def _file_as_is(settings: Settings, data: bytes) -> Held:
    """File ``data`` without the Receiver's checks (as an instance stored before the bounds existed)."""
    ds = pydicom.dcmread(BytesIO(data), stop_before_pixels=True)
    header = InstanceHeader(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID, CR, ExplicitVRLittleEndian)
    spool = Spool(settings.spool_dir)
    path = spool.write(spool.instance_path(header.study_uid, header.sop_instance_uid), data)
    with session_scope(settings.database_url) as session:
        record_instance(session, header=header, spool_path=str(path), size_bytes=len(data), calling_ae="OLD")
    return Held(header.study_uid, header.series_uid, header.sop_instance_uid)


def _nested(depth: int) -> bytes:
    """A 1 x 1 image whose Content Sequence nests ``depth`` levels deep, before its pixel data."""
    ds = _image(frames=1, rows=1, columns=1, bits=16, pixels=b"\x01\x00")
    pixel_data = ds.PixelData
    del ds.PixelData
    data = _part10(ds, ExplicitVRLittleEndian)
    pixel_element = struct.pack("<HH2sHL", 0x7FE0, 0x0010, b"OW", 0, len(pixel_data)) + pixel_data
    return data + (SEQUENCE_START + ITEM_START) * depth + (ITEM_END + SEQUENCE_END) * depth + pixel_element


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory, postgres_database: str) -> Iterator[App]:
    folder = tmp_path_factory.mktemp("frames-app")
    settings = dicomweb_settings(folder, postgres_database, TOKEN)
    receiver = Receiver.from_settings(settings)
    files = {name: real_file(name).read_bytes() for name in ("RG2_UNC.dcm", *COMPRESSED)} | _synthetic()
    held: dict[str, Held] = {}
    for name, data in files.items():
        outcome = receiver.receive(data, source="frames-test")
        assert outcome.status is ReceiveStatus.STORED, (name, outcome.message)
        ds = pydicom.dcmread(BytesIO(data), stop_before_pixels=True)
        held[name] = Held(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    held["nested"] = _file_as_is(settings, _nested(depth=40))
    with serving(settings) as (url, _app):
        yield App(url, settings, held, files)


def _parts(response: requests.Response) -> list[tuple[str, bytes]]:
    """(Content-Type, content) of each part of a multipart answer, split by the project's own parser."""
    assert response.status_code == 200, response.text[:300]
    media_type = response.headers["Content-Type"]
    assert media_type.startswith("multipart/related; type=")
    boundary = media_type.rsplit("boundary=", 1)[1].encode()
    parts = list(split_multipart(response.content, boundary))
    assert all(part.problem is None for part in parts)
    return [(part.headers["content-type"], part.content) for part in parts]


def _source(name: str) -> Dataset:
    """The real file ``name`` as pydicom reads it (the stored instance is byte for byte the same)."""
    return pydicom.dcmread(real_file(name))


# --- native frames ------------------------------------------------------------------------------------------------


@served
@pytest.mark.parametrize("accept", [OHIF_ACCEPT, OCTETS_ACCEPT, None, "*/*"])
def test_a_native_frame_is_its_slice_of_pixel_data(app: App, accept: str | None) -> None:
    held = app.held["RG2_UNC.dcm"]
    response = app.get(held.frames_url("1"), accept=accept)
    assert response.headers["Content-Type"].startswith('multipart/related; type="application/octet-stream"')
    ds = _source("RG2_UNC.dcm")
    assert _parts(response) == [
        (f"application/octet-stream; transfer-syntax={ExplicitVRLittleEndian}", ds.PixelData[: 2140 * 1760 * 2])
    ]


@served
def test_dicomweb_client_reads_the_frame_as_ohif_asks_for_it(app: App) -> None:
    held = app.held["RG2_UNC.dcm"]
    client = DICOMwebClient(url=f"{app.url}/dicomweb", headers=BEARER)
    (frame,) = client.retrieve_instance_frames(
        held.study, held.series, held.sop, frame_numbers=[1], media_types=(("application/octet-stream", "*"),)
    )
    pixels = np.frombuffer(frame, dtype="<u2").reshape(2140, 1760)
    assert np.array_equal(pixels, _source("RG2_UNC.dcm").pixel_array)


@served
def test_several_native_frames_come_in_the_order_asked(app: App) -> None:
    parts = _parts(app.get(app.held["little"].frames_url("3,1,2")))
    assert [content for _, content in parts] == [WORDS[n].astype("<u2").tobytes() for n in (2, 0, 1)]
    assert {content_type for content_type, _ in parts} == {f"{OCTET_STREAM}; transfer-syntax={ExplicitVRLittleEndian}"}


@served
def test_big_endian_frames_are_sent_little_endian(app: App) -> None:
    assert np.array_equal(pydicom.dcmread(BytesIO(app.files["big"])).pixel_array, WORDS)  # pydicom reads the file so
    parts = _parts(app.get(app.held["big"].frames_url("2,3"), accept=OCTETS_ACCEPT))
    assert parts == [
        (f"{OCTET_STREAM}; transfer-syntax={ExplicitVRLittleEndian}", WORDS[n].astype("<u2").tobytes()) for n in (1, 2)
    ]


@served
def test_1_bit_frames_each_start_on_a_byte(app: App) -> None:
    parts = _parts(app.get(app.held["bitmap"].frames_url("2,3,1")))
    assert [content for _, content in parts] == [_packed_bits(BITS[n].reshape(-1)) for n in (1, 2, 0)]


# --- compressed frames --------------------------------------------------------------------------------------------


def _decoded(frame: bytes, name: str, syntax: str) -> np.ndarray:
    """The pixels of ``frame`` decoded by pydicom's decoders, with the header of the file it came from."""
    ds = pydicom.dcmread(real_file(name), stop_before_pixels=True)
    ds.file_meta.TransferSyntaxUID = UID(syntax)
    ds.PixelData = encapsulate([frame])
    return ds.pixel_array


@served
@pytest.mark.parametrize("name", COMPRESSED)
def test_a_compressed_frame_is_its_fragments_labelled_with_its_syntax(app: App, name: str) -> None:
    parts = _parts(app.get(app.held[name].frames_url("1")))
    stored = next(generate_frames(_source(name).PixelData, number_of_frames=1))
    assert parts == [(f"{OCTET_STREAM}; transfer-syntax={COMPRESSED[name]}", stored)]


@served
@pytest.mark.parametrize("name", LOSSLESS)
def test_a_lossless_frame_decodes_to_the_uncompressed_pixels(app: App, name: str) -> None:
    ((_, frame),) = _parts(app.get(app.held[name].frames_url("1")))
    assert np.array_equal(_decoded(frame, name, COMPRESSED[name]), _source("RG2_UNC.dcm").pixel_array)


@served
@pytest.mark.parametrize(
    ("name", "accept", "content_type"),
    [
        ("RG2_J2KR.dcm", 'multipart/related; type="image/jp2"', f"image/jp2; transfer-syntax={JPEG2000Lossless}"),
        (
            "RG2_J2KI.dcm",
            f"multipart/related; type=image/jp2; transfer-syntax={JPEG2000}",
            f"image/jp2; transfer-syntax={JPEG2000}",
        ),
        ("RG2_JLSL.dcm", "*/*", f"image/jls; transfer-syntax={JPEGLSLossless}"),
        (
            "RG2_RLE.dcm",
            'multipart/related; type="image/x-dicom-rle"',
            f"image/x-dicom-rle; transfer-syntax={RLELossless}",
        ),
        (
            "RG2_JPLY_fixed.dcm",
            f'multipart/related; type="image/jpeg"; transfer-syntax={JPEGExtended12Bit}',
            f"image/jpeg; transfer-syntax={JPEGExtended12Bit}",
        ),
    ],
)
def test_a_compressed_frame_comes_as_its_media_type_when_asked(
    app: App, name: str, accept: str, content_type: str
) -> None:
    response = app.get(app.held[name].frames_url("1"), accept=accept)
    ((part_type, frame),) = _parts(response)
    assert part_type == content_type
    assert response.headers["Content-Type"].startswith(f'multipart/related; type="{content_type.split(";")[0]}"')
    assert frame == next(generate_frames(_source(name).PixelData, number_of_frames=1))


@served
def test_frames_of_several_fragments_each_are_joined_in_the_order_asked(app: App) -> None:
    parts = _parts(app.get(app.held["fragments"].frames_url("3,1")))
    assert parts == [(f"{OCTET_STREAM}; transfer-syntax={JPEGLSLossless}", FAKE_FRAMES[n]) for n in (2, 0)]


# --- refusals -----------------------------------------------------------------------------------------------------


def _refusal(response: requests.Response, status: int, message: str) -> None:
    assert response.status_code == status, response.text[:300]
    assert message in response.json()["detail"]


@served
@pytest.mark.parametrize(("name", "frames"), [("RG2_UNC.dcm", "2"), ("RG2_J2KR.dcm", "1,2"), ("little", "4")])
def test_a_frame_beyond_the_last_is_404(app: App, name: str, frames: str) -> None:
    last = frames.rsplit(",", 1)[-1]
    _refusal(app.get(app.held[name].frames_url(frames)), 404, f"frame {last} is out of range")


@served
def test_an_sr_has_no_frames(app: App) -> None:
    _refusal(app.get(app.held["sr"].frames_url("1")), 404, "has no pixel data")


@served
@pytest.mark.parametrize("frames", ["0", "1,,2", "x", "1,1"])
def test_a_malformed_frame_list_is_400_over_http(app: App, frames: str) -> None:
    assert app.get(app.held["RG2_UNC.dcm"].frames_url(frames)).status_code == 400


@served
def test_an_instance_not_held_is_404(app: App) -> None:
    held = app.held["RG2_UNC.dcm"]
    response = app.get(f"/dicomweb/studies/{held.study}/series/{held.series}/instances/1.2.3.4/frames/1")
    _refusal(response, 404, "no such instances are held")


@served
@pytest.mark.parametrize(
    ("name", "accept"),
    [
        ("RG2_UNC.dcm", 'multipart/related; type="application/dicom"'),
        ("RG2_UNC.dcm", "image/jpeg"),
        ("RG2_J2KR.dcm", OCTETS_ACCEPT),  # would need decoding
        ("RG2_J2KR.dcm", 'multipart/related; type="image/jls"'),
    ],
)
def test_an_accept_header_nothing_offered_fits_is_406(app: App, name: str, accept: str) -> None:
    _refusal(app.get(app.held[name].frames_url("1"), accept=accept), 406, "offered as multipart/related")


@served
def test_pixel_data_shorter_than_its_frames_is_422(app: App) -> None:
    _refusal(app.get(app.held["short"].frames_url("1")), 422, "PixelData holds 80 bytes, fewer than the 120")


@served
def test_a_stored_file_beyond_the_bounds_is_422_and_counted(app: App) -> None:
    counter = metrics.INPUTS_REFUSED.labels(transport="wado", bound="sequence_depth")
    before = counter._value.get()
    _refusal(app.get(app.held["nested"].frames_url("1")), 422, "nested deeper than 16")
    assert counter._value.get() == before + 1
    assert app.get("/healthz").status_code == 200


# --- what OHIF asks before the frames -----------------------------------------------------------------------------


def _values(item: dict[str, Any], tag: str) -> list[Any]:
    assert tag in item, f"{tag} missing from {sorted(item)}"
    return list(item[tag].get("Value", []))


@served
def test_the_study_search_ohif_sends_answers_what_it_asks_for(app: App) -> None:
    held = app.held["RG2_UNC.dcm"]
    response = app.get(
        f"/dicomweb/studies?limit=101&offset=0&fuzzymatching=false&StudyInstanceUID={held.study}"
        "&includefield=00081030%2C00080060%2C00080090%2C00100030",
        accept="application/dicom+json",
    )
    assert response.status_code == 200, response.text[:300]
    (study,) = response.json()
    ds = _source("RG2_UNC.dcm")
    assert _values(study, "00080061") == ["CR"]  # ModalitiesInStudy
    assert _values(study, "00081030") == [ds.StudyDescription]
    assert _values(study, "00080090") == []  # ReferringPhysicianName: held, and empty in RG2
    assert _values(study, "00100030") == []  # PatientBirthDate: the same
    assert _values(study, "00080030") == [ds.StudyTime]
    assert _values(study, "00100040") == [ds.PatientSex]
    by_patient = app.get(f"/dicomweb/studies?00100020={ds.PatientID}", accept="application/dicom+json")
    assert held.study in [item["0020000D"]["Value"][0] for item in by_patient.json()]


@served
def test_the_series_search_ohif_sends_answers_number_date_time_and_description(app: App) -> None:
    held = app.held["RG2_UNC.dcm"]
    response = app.get(
        f"/dicomweb/studies/{held.study}/series?includefield=00080021%2C00080031%2C0008103E%2C00200011",
        accept="application/dicom+json",
    )
    assert response.status_code == 200, response.text[:300]
    series = {item["0020000E"]["Value"][0]: item for item in response.json()}[held.series]
    ds = _source("RG2_UNC.dcm")
    assert _values(series, "00200011") == [int(ds.SeriesNumber)]
    assert _values(series, "00080021") == [ds.SeriesDate]
    assert _values(series, "00080031") == [ds.SeriesTime]
    assert _values(series, "0008103E") == []  # SeriesDescription: RG2 has none


@served
def test_series_metadata_gives_what_the_viewer_renders_from(app: App) -> None:
    held = app.held["RG2_UNC.dcm"]
    response = app.get(f"/dicomweb/studies/{held.study}/series/{held.series}/metadata", accept="application/dicom+json")
    assert response.status_code == 200, response.text[:300]
    item = {entry["00080018"]["Value"][0]: entry for entry in response.json()}[held.sop]
    assert _values(item, "00280010") == [2140]  # Rows
    assert _values(item, "00280011") == [1760]  # Columns
    assert _values(item, "00280100") == [16]  # BitsAllocated
