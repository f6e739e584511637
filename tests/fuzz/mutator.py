"""A seeded mutator of DICOM files: hostile and broken input for predraft, reproducible from one integer.

:func:`mutants` yields :class:`Mutant` files (preamble, file meta, data set) built from the seeds of
:mod:`tests.fuzz.seeds`. Every mutant first gets a unique canary PatientName and PatientID (so a test can
look for them in logs without a chance match), a fresh SOP Instance UID and a Study Instance UID from a
small pool (consecutive mutants share a study, so the workers draft a few dozen studies, not a thousand);
then 0 to 3 mutations of :data:`MUTATIONS`. The same arguments always give the same bytes.

The file meta stays well formed (``delete_element`` removes its transfer syntax or SOP class for STOW only): a
DIMSE client sends the data set after it as it is, in the presentation context that the meta names (which
``syntax_lie`` and ``wrong_sop_request`` make differ from the data set).
"""

from __future__ import annotations

import io
import random
import string
import sys
import warnings
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.sequence import Sequence
from pydicom.uid import (
    JPEG2000,
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGExtended12Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)

CR_IMAGE = UID("1.2.840.10008.5.1.4.1.1.1")
DX_PRESENTATION = UID("1.2.840.10008.5.1.4.1.1.1.1")
DX_PROCESSING = UID("1.2.840.10008.5.1.4.1.1.1.1.1")
SECONDARY_CAPTURE = UID("1.2.840.10008.5.1.4.1.1.7")
MULTIFRAME_GREY_SECONDARY_CAPTURE = UID("1.2.840.10008.5.1.4.1.1.7.2")
BASIC_TEXT_SR = UID("1.2.840.10008.5.1.4.1.1.88.11")
ENHANCED_SR = UID("1.2.840.10008.5.1.4.1.1.88.22")
COMPREHENSIVE_SR = UID("1.2.840.10008.5.1.4.1.1.88.33")
CT_IMAGE = UID("1.2.840.10008.5.1.4.1.1.2")
#: SOP classes a DIMSE fuzz client proposes (the listener accepts them at association; DX For Processing is
#: then refused per instance).
PROPOSED_SOP_CLASSES = (
    CR_IMAGE,
    DX_PRESENTATION,
    DX_PROCESSING,
    SECONDARY_CAPTURE,
    MULTIFRAME_GREY_SECONDARY_CAPTURE,
    BASIC_TEXT_SR,
    ENHANCED_SR,
    COMPREHENSIVE_SR,
)
IMAGE_SOP_CLASSES = (CR_IMAGE, DX_PRESENTATION, SECONDARY_CAPTURE, MULTIFRAME_GREY_SECONDARY_CAPTURE)
SR_SOP_CLASSES = (BASIC_TEXT_SR, ENHANCED_SR, COMPREHENSIVE_SR)
#: Transfer syntaxes a mutant's file meta may name (the seeds' own, and those the mutations switch to).
SYNTAXES = (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    RLELossless,
    JPEGLosslessSV1,
    JPEGExtended12Bit,
    JPEGLSLossless,
    JPEGLSNearLossless,
    JPEG2000Lossless,
    JPEG2000,
)
NATIVE = frozenset({ExplicitVRLittleEndian, ImplicitVRLittleEndian})

#: Mutations per mutant: 0 to 3, this likely each.
MUTATION_COUNT_WEIGHTS = (0.1, 0.45, 0.3, 0.15)
#: Characters of the canaries (upper case: a log that upper-cases a name still shows it).
CANARY_LETTERS = string.ascii_uppercase
CANARY_ID_CHARACTERS = string.ascii_uppercase + string.digits
CANARY_PART_LENGTH = 8
CANARY_ID_LENGTH = 10
#: Nesting of the deep-sequence mutation: a few hundred levels.
DEEP_SEQUENCE_LEVELS = (200, 400)
#: Bytes a deflate bomb inflates to by default: past a 32 MiB max_dataset_bytes.
DEFAULT_BOMB_BYTES = 64 * 1024 * 1024
_BOMB_CHUNK = 1024 * 1024
_DEFLATE_WBITS = -15  # raw deflate, as PS3.5 A.5 has it
_PIXEL_DATA_TAG = b"\xe0\x7f\x10\x00"
_LONG_LENGTH_VRS = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
)
_UNDEFINED_LENGTH = 0xFFFFFFFF
_NUMBER_STRING_VRS = frozenset({"DS", "IS"})


@dataclass(frozen=True)
class Mutant:
    """One fuzz input: ``data`` is a whole DICOM file as it goes on the wire (for DIMSE: its data set)."""

    name: str
    data: bytes
    seed: str
    kinds: tuple[str, ...]
    patient_name: str
    patient_id: str
    study_uid: str
    sop_instance_uid: str  # as first set; a mutation may change or remove it

    def __iter__(self) -> Iterator[object]:
        """Unpacks as ``(name, data)``."""
        return iter((self.name, self.data))


@dataclass
class Work:
    """A mutant under construction: the data set, its file meta, the syntax its data set is written in, and
    (after encoding) its data set bytes, not yet deflated."""

    rng: random.Random
    ds: Dataset
    meta: FileMetaDataset
    syntax: UID
    transport: str
    bomb_bytes: int
    encoded: bytes = b""
    replaced: bytes | None = None  # a whole data set (already deflated where the syntax says so)
    standard_meta: bool = True
    deep_levels: int = 0
    prefix: bytes = b""  # raw elements written before the data set (values pydicom would not write)
    kinds: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------- data set phase


def _set(ds: Dataset, keyword: str, vr: str, value: object) -> None:
    """Set an element whatever its value: validation is off while mutating, and a number string that is no
    number (DS "abc") bypasses pydicom's conversion."""
    tag = pydicom.datadict.tag_for_keyword(keyword)
    if vr not in _NUMBER_STRING_VRS:
        ds[tag] = pydicom.DataElement(tag, vr, value)
        return
    element = pydicom.DataElement(tag, vr, None)
    element._value = value
    ds[tag] = element


def bad_date(work: Work) -> None:
    for keyword in work.rng.sample(("StudyDate", "SeriesDate", "ContentDate", "PatientBirthDate", "StudyTime"), 2):
        vr = "TM" if keyword.endswith("Time") else "DA"
        _set(
            work.ds,
            keyword,
            vr,
            work.rng.choice(
                (
                    "1975-03-02",
                    "19751302",
                    "2025",
                    "yesterday",
                    "00000000",
                    "99999999999",
                    "19750302-",
                    "25:61:61.9999999",
                )
            ),
        )


def overlong(work: Work) -> None:
    keyword, vr = work.rng.choice(
        (
            ("StudyDescription", "LO"),
            ("AccessionNumber", "SH"),
            ("InstitutionName", "LO"),
            ("BodyPartExamined", "CS"),
            ("ViewPosition", "CS"),
            ("SeriesDescription", "LO"),
        )
    )
    _set(work.ds, keyword, vr, "HIP 3 VIEWS " * work.rng.randint(6, 6000))
    if work.rng.random() < 0.5:  # the canary stays, with more after it
        _set(work.ds, "PatientName", "PN", f"{work.ds.PatientName}^{'Y' * work.rng.randint(65, 5000)}")


def uid_control(work: Work) -> None:
    keyword = work.rng.choice(("SeriesInstanceUID", "SOPInstanceUID", "StudyInstanceUID", "FrameOfReferenceUID"))
    junk = work.rng.choice(("\x00", "\n", "\x1b[2J", "\r\nINFO fake log line", "\x7f", "..", "1.2.abc", " " * 70))
    _set(work.ds, keyword, "UI", f"{work.ds.get(keyword, '1.2')}{junk}")


def delete_element(work: Work) -> None:
    choices = [
        "Rows",
        "Columns",
        "BitsAllocated",
        "BitsStored",
        "HighBit",
        "PhotometricInterpretation",
        "SamplesPerPixel",
        "PixelRepresentation",
        "PixelData",
        "StudyInstanceUID",
        "SeriesInstanceUID",
        "SOPInstanceUID",
        "SOPClassUID",
        "Modality",
        "PatientID",
        "PatientName",
    ]
    if work.transport == "stow":
        choices += ["meta:TransferSyntaxUID", "meta:MediaStorageSOPClassUID"]
    for choice in work.rng.sample(choices, work.rng.randint(1, 2)):
        if choice.startswith("meta:"):
            work.standard_meta = False
            target, keyword = work.meta, choice.removeprefix("meta:")
        else:
            target, keyword = work.ds, choice
        if keyword in target:
            delattr(target, keyword)


def rgb_claim(work: Work) -> None:
    work.ds.SamplesPerPixel = work.rng.choice((3, 3, 4, 0))
    _set(
        work.ds,
        "PhotometricInterpretation",
        "CS",
        work.rng.choice(("RGB", "YBR_FULL", "YBR_FULL_422", "PALETTE COLOR", "MONOCHROME3", "")),
    )
    work.ds.PlanarConfiguration = work.rng.choice((0, 1, 7))


def multiframe_claim(work: Work) -> None:
    _set(work.ds, "NumberOfFrames", "IS", work.rng.choice(("2", "3", "1000", "0", "-1", "2147483647", "x")))


def huge_dims(work: Work) -> None:
    rows, columns = work.rng.choice(((65535, 65535), (65535, 1), (30000, 30000), (1, 65535), (0, 0)))
    _set(work.ds, "Rows", "US", rows)
    _set(work.ds, "Columns", "US", columns)
    if work.rng.random() < 0.3:
        _set(work.ds, "NumberOfFrames", "IS", str(work.rng.choice((100, 65535))))


def bits_chaos(work: Work) -> None:
    allocated = work.rng.choice((0, 1, 8, 12, 16, 32, 64))
    _set(work.ds, "BitsAllocated", "US", allocated)
    _set(work.ds, "BitsStored", "US", work.rng.choice((0, allocated, allocated + 5, 16, 40)))
    _set(work.ds, "HighBit", "US", work.rng.choice((0, 7, 15, 63, 65535)))
    _set(work.ds, "PixelRepresentation", "US", work.rng.choice((0, 1, 2)))


def lut_chaos(work: Work) -> None:
    kind = work.rng.randrange(3)
    if kind == 0:
        _set(work.ds, "RescaleSlope", "DS", work.rng.choice(("0", "1e308", "NaN", "-inf", "abc")))
        _set(work.ds, "RescaleIntercept", "DS", work.rng.choice(("0", "-1e308", "inf")))
    elif kind == 1:
        _set(work.ds, "WindowCenter", "DS", work.rng.choice(("abc", "1e308", "-5", "NaN")))
        _set(work.ds, "WindowWidth", "DS", work.rng.choice(("0", "-5", "1e-300", "inf")))
        _set(work.ds, "VOILUTFunction", "CS", work.rng.choice(("SIGMOID", "WEIRD", "")))
    else:
        item = Dataset()
        item.LUTDescriptor = [
            work.rng.choice((0, 1, 65535)),
            work.rng.choice((0, 70000 % 65536)),
            work.rng.choice((8, 16, 0)),
        ]
        item.add_new(0x00283006, "US", [work.rng.randrange(65536) for _ in range(work.rng.randint(0, 5))])
        work.ds.VOILUTSequence = Sequence([item])
        _set(work.ds, "PresentationLUTShape", "CS", work.rng.choice(("INVERSE", "XX", "")))


def view_chaos(work: Work) -> None:
    junk = ("HIP\\PELVIS", "", "L\\R\\X", "\x00", "AP\\LAT\\LL", "R" * 17, "LEFT HIP", "\x1b[31mHIP")
    for keyword in work.rng.sample(
        (
            "ViewPosition",
            "ImageLaterality",
            "Laterality",
            "BodyPartExamined",
            "PatientOrientation",
            "SeriesDescription",
        ),
        3,
    ):
        _set(work.ds, keyword, "LO" if keyword == "SeriesDescription" else "CS", work.rng.choice(junk))


def charset(work: Work) -> None:
    """A Specific Character Set that pydicom cannot write: its element goes in front of the encoded data set."""
    value = work.rng.choice(
        ("ISO_IR 192", "ISO 2022 IR 87", "ISO_IR 999", "GB18030", "\x00", "ISO_IR 100\\ISO 2022 IR 149")
    ).encode("latin-1")
    value += b" " * (len(value) % 2)
    if "SpecificCharacterSet" in work.ds:
        del work.ds.SpecificCharacterSet
    length = len(value).to_bytes(4 if work.syntax == ImplicitVRLittleEndian else 2, "little")
    work.prefix = b"\x08\x00\x05\x00" + (length if work.syntax == ImplicitVRLittleEndian else b"CS" + length) + value


def expected_views(work: Work) -> None:
    _set(
        work.ds,
        "StudyDescription",
        "LO",
        work.rng.choice(
            ("HIP 3 VIEWS", "HIP 0 VIEWS", "HIP 99999999999999999999 VIEWS", "1 VIEW", "-1 VIEWS", "HIP 1 VIEW")
        ),
    )


def pixel_length(work: Work) -> None:
    if "PixelData" not in work.ds:
        return
    data = bytes(work.ds.PixelData)
    cut = work.rng.choice((0, 1, work.rng.randrange(max(len(data), 1)), len(data) + 1))
    work.ds.PixelData = data[:cut] if cut <= len(data) else data + data[:cut]
    if not work.ds.PixelData.startswith(b"\xfe\xff\x00\xe0"):  # no longer items: a defined length, as a sender
        work.ds["PixelData"].is_undefined_length = False  # that cut encapsulated data short would write it


def deep_sequence(work: Work) -> None:
    work.deep_levels = work.rng.randint(*DEEP_SEQUENCE_LEVELS)
    innermost = Dataset()
    innermost.ReferencedSOPInstanceUID = "1.2.3"
    for _ in range(work.deep_levels):
        outer = Dataset()
        outer.ReferencedImageSequence = Sequence([innermost])
        innermost = outer
    work.ds.ReferencedImageSequence = innermost.ReferencedImageSequence


def wrong_sop_request(work: Work) -> None:
    actual = UID(str(work.ds.get("SOPClassUID", CR_IMAGE)))
    work.meta.MediaStorageSOPClassUID = work.rng.choice([uid for uid in PROPOSED_SOP_CLASSES if uid != actual])


def sr_class(work: Work) -> None:
    work.ds.SOPClassUID = work.meta.MediaStorageSOPClassUID = work.rng.choice(SR_SOP_CLASSES)
    work.ds.Modality = "SR"
    for keyword in (
        "PixelData",
        "Rows",
        "Columns",
        "BitsAllocated",
        "BitsStored",
        "HighBit",
        "SamplesPerPixel",
        "PhotometricInterpretation",
        "PixelRepresentation",
    ):
        if keyword in work.ds:
            delattr(work.ds, keyword)
    if work.syntax not in NATIVE:
        work.syntax = work.meta.TransferSyntaxUID = ExplicitVRLittleEndian
    title = Dataset()
    title.CodeValue, title.CodingSchemeDesignator, title.CodeMeaning = "18748-4", "LN", "Diagnostic imaging report"
    text = Dataset()
    text.RelationshipType, text.ValueType, text.TextValue = "CONTAINS", "TEXT", "fuzz " * work.rng.randint(1, 400)
    text.ConceptNameCodeSequence = Sequence([title])
    work.ds.ValueType, work.ds.ContinuityOfContent = "CONTAINER", "SEPARATE"
    work.ds.ConceptNameCodeSequence = Sequence([title])
    work.ds.ContentSequence = Sequence([text] * work.rng.randint(0, 3))
    work.ds.CompletionFlag, work.ds.VerificationFlag = "PARTIAL", work.rng.choice(("UNVERIFIED", "VERIFIED", "??"))


def other_class(work: Work) -> None:
    """Another SOP class: DX For Processing, CT, PDF or none known. Over DIMSE only DX For Processing is also the
    request's (the listener accepts no context for the others); the rest differ from the request's."""
    uid = work.rng.choice((DX_PROCESSING, CT_IMAGE, UID("1.2.3.4.5"), UID("1.2.840.10008.5.1.4.1.1.104.1")))
    work.ds.SOPClassUID = uid
    if work.transport == "stow" or uid == DX_PROCESSING:
        work.meta.MediaStorageSOPClassUID = uid


def implicit_vr(work: Work) -> None:
    if work.syntax in NATIVE:
        work.syntax = work.meta.TransferSyntaxUID = ImplicitVRLittleEndian


def deflate(work: Work) -> None:
    work.syntax = work.meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian


def syntax_lie(work: Work) -> None:
    """The file meta (and so the DIMSE presentation context) names another syntax than the data set's."""
    work.meta.TransferSyntaxUID = work.rng.choice([uid for uid in SYNTAXES if uid != work.syntax])


# ------------------------------------------------------------------------------------------------- byte phase


def _top_level_headers(data: bytes, implicit: bool) -> list[tuple[int, bytes, int, int]]:
    """(offset, VR, offset of the length field, its size) of the top-level elements of ``data`` (little endian),
    up to the first one of undefined length."""
    headers, offset = [], 0
    while offset + 8 <= len(data):
        if implicit:
            vr, length_at, size = b"", offset + 4, 4
        else:
            vr = data[offset + 4 : offset + 6]
            length_at, size = (offset + 8, 4) if vr in _LONG_LENGTH_VRS else (offset + 6, 2)
        if length_at + size > len(data):
            break
        length = int.from_bytes(data[length_at : length_at + size], "little")
        headers.append((offset, vr, length_at, size))
        if length == _UNDEFINED_LENGTH:
            break
        offset = length_at + size + length
    return headers


def length_corrupt(work: Work) -> None:
    headers = _top_level_headers(work.encoded, work.syntax == ImplicitVRLittleEndian)
    if not headers:
        return
    _, _, length_at, size = work.rng.choice(headers)
    old = int.from_bytes(work.encoded[length_at : length_at + size], "little")
    new = work.rng.choice(
        (0xFFFFFFFF, 0xFFFFFFFE, 0x7FFFFFFF, old + 1, old + work.rng.randint(2, 5000), max(old - 1, 0), 0)
    ) % (1 << (8 * size))
    work.encoded = work.encoded[:length_at] + new.to_bytes(size, "little") + work.encoded[length_at + size :]


def wrong_vr(work: Work) -> None:
    """A VR that does not belong (UM, UN, SQ, nothing) on the SOP Class UID or another element."""
    if work.syntax == ImplicitVRLittleEndian:
        return
    targets = [b"\x08\x00\x16\x00UI", b"\x28\x00\x10\x00US", b"\x10\x00\x20\x00LO", b"\x20\x00\x0d\x00UI"]
    target = work.rng.choice(targets)
    at = work.encoded.find(target)
    if at >= 0:
        vr = work.rng.choice((b"UM", b"UN", b"SQ", b"\x00\x00", b"zz", b"OB"))
        work.encoded = work.encoded[: at + 4] + vr + work.encoded[at + 6 :]


def _pixel_value_start(work: Work) -> int:
    at = work.encoded.rfind(_PIXEL_DATA_TAG)
    return -1 if at < 0 else at + 12


def flip_pixels(work: Work) -> None:
    start = _pixel_value_start(work)
    if start < 0 or start >= len(work.encoded):
        return
    data = bytearray(work.encoded)
    for _ in range(work.rng.randint(1, 64)):
        data[work.rng.randrange(start, len(data))] ^= 1 << work.rng.randrange(8)
    work.encoded = bytes(data)


def flip_fragment(work: Work) -> None:
    """Flip bytes near the start of the pixel data: item tags and lengths, then a codestream's header (image
    size, bit depth, tiling), where a decoder decides how much memory it needs."""
    start = _pixel_value_start(work)
    if start < 0 or start >= len(work.encoded):
        return
    data = bytearray(work.encoded)
    end = min(len(data), start + 400)
    for _ in range(work.rng.randint(1, 8)):
        data[work.rng.randrange(start, end)] = work.rng.randrange(256)
    work.encoded = bytes(data)


def truncate(work: Work) -> None:
    work.encoded = work.encoded[: work.rng.randrange(max(len(work.encoded), 1))]


def random_bytes(work: Work) -> None:
    work.encoded = work.rng.randbytes(work.rng.randint(0, 4096))


def deflate_bomb(work: Work) -> None:
    """Deflated Explicit VR: the header, then Pixel Data of ``bomb_bytes`` zeros, compressed about 1000:1."""
    work.syntax = work.meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    if "PixelData" in work.ds:
        del work.ds.PixelData
    header = work.prefix + _encode_dataset(work.ds, explicit=True)
    compressor = zlib.compressobj(9, zlib.DEFLATED, _DEFLATE_WBITS)
    parts = [compressor.compress(header + _PIXEL_DATA_TAG + b"OB\x00\x00" + work.bomb_bytes.to_bytes(4, "little"))]
    zeros = bytes(_BOMB_CHUNK)
    for _ in range(work.bomb_bytes // _BOMB_CHUNK):
        parts.append(compressor.compress(zeros))
    parts.append(compressor.flush())
    work.replaced = b"".join(parts)


Mutation = Callable[[Work], None]
#: Mutations applied to the data set before it is written, by name.
DATASET_MUTATIONS: dict[str, Mutation] = {
    "bad_date": bad_date,
    "overlong": overlong,
    "uid_control": uid_control,
    "delete_element": delete_element,
    "rgb_claim": rgb_claim,
    "multiframe_claim": multiframe_claim,
    "huge_dims": huge_dims,
    "bits_chaos": bits_chaos,
    "lut_chaos": lut_chaos,
    "view_chaos": view_chaos,
    "charset": charset,
    "expected_views": expected_views,
    "pixel_length": pixel_length,
    "deep_sequence": deep_sequence,
    "wrong_sop_request": wrong_sop_request,
    "sr_class": sr_class,
    "other_class": other_class,
    "implicit_vr": implicit_vr,
    "deflate": deflate,
    "syntax_lie": syntax_lie,
}
#: Mutations of the written data set's bytes (before deflating), by name.
BYTE_MUTATIONS: dict[str, Mutation] = {
    "length_corrupt": length_corrupt,
    "wrong_vr": wrong_vr,
    "flip_pixels": flip_pixels,
    "flip_fragment": flip_fragment,
    "truncate": truncate,
    "random_bytes": random_bytes,
}
#: Mutations that replace the whole data set, by name.
REPLACING_MUTATIONS: dict[str, Mutation] = {"deflate_bomb": deflate_bomb}
MUTATIONS: dict[str, Mutation] = {**DATASET_MUTATIONS, **BYTE_MUTATIONS, **REPLACING_MUTATIONS}
#: Relative weights (the rest weigh 1): the cheap pixel and header damage often, the costly bomb rarely.
WEIGHTS = {
    "flip_pixels": 3,
    "flip_fragment": 3,
    "truncate": 2,
    "length_corrupt": 2,
    "delete_element": 2,
    "deflate_bomb": 0.25,
    "random_bytes": 0.5,
    "deep_sequence": 0.5,
}
#: Mutations after which the canaries need not be in the bytes (cut off, replaced or deflated).
HIDING_CANARIES = frozenset(
    {"truncate", "random_bytes", "deflate", "deflate_bomb", "delete_element", "length_corrupt", "charset"}
)


# ---------------------------------------------------------------------------------------------- the generator


@contextmanager
def _lenient_pydicom(levels: int) -> Iterator[None]:
    """No value validation, no warnings, and recursion enough to write ``levels`` nested sequences."""
    config = pydicom.config.settings
    saved = (config.reading_validation_mode, config.writing_validation_mode, sys.getrecursionlimit())
    config.reading_validation_mode = config.writing_validation_mode = pydicom.config.IGNORE
    sys.setrecursionlimit(max(saved[2], 1000 + 10 * levels))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        config.reading_validation_mode, config.writing_validation_mode = saved[:2]
        sys.setrecursionlimit(saved[2])


def _encode_dataset(ds: Dataset, *, explicit: bool) -> bytes:
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, not explicit
    write_dataset(fp, ds)
    return fp.getvalue()


def _encode_work(work: Work) -> bytes:
    return work.prefix + _encode_dataset(work.ds, explicit=work.syntax != ImplicitVRLittleEndian)


def _deflated(data: bytes) -> bytes:
    compressor = zlib.compressobj(9, zlib.DEFLATED, _DEFLATE_WBITS)
    return compressor.compress(data) + compressor.flush()


def _file_bytes(work: Work, dataset_bytes: bytes) -> bytes:
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, False
    fp.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(fp, work.meta, enforce_standard=work.standard_meta)
    return fp.getvalue() + dataset_bytes


def _uid(rng: random.Random) -> str:
    return f"2.25.{rng.getrandbits(120)}"


class Canaries:
    """Unique patient names and IDs that no log can hold by chance: 18 or 19 characters, each name part of
    10 or 8, half with a ``^`` between family and given name, half without."""

    def __init__(self, rng: random.Random) -> None:
        self.rng, self.seen = rng, set[str]()

    def _fresh(self, make: Callable[[], str]) -> str:
        value = make()
        while value in self.seen:
            value = make()
        self.seen.add(value)
        return value

    def _letters(self, count: int) -> str:
        return "".join(self.rng.choices(CANARY_LETTERS, k=count))

    def name(self) -> str:
        joiner = "^" if self.rng.random() < 0.5 else ""
        return self._fresh(lambda: f"FZ{self._letters(CANARY_PART_LENGTH)}{joiner}{self._letters(CANARY_PART_LENGTH)}")

    def patient_id(self) -> str:
        return self._fresh(lambda: "ZQ" + "".join(self.rng.choices(CANARY_ID_CHARACTERS, k=CANARY_ID_LENGTH)))


def _choose_kinds(rng: random.Random) -> list[str]:
    names = sorted(MUTATIONS)
    weights = [WEIGHTS.get(name, 1) for name in names]
    count = rng.choices(range(len(MUTATION_COUNT_WEIGHTS)), weights=MUTATION_COUNT_WEIGHTS)[0]
    kinds: list[str] = []
    while len(kinds) < count:
        kind = rng.choices(names, weights=weights)[0]
        if kind not in kinds:
            kinds.append(kind)
    return kinds


def _mutant(
    rng: random.Random, seed: bytes, series_uid: str, identity: tuple[str, str, str], transport: str, bomb_bytes: int
) -> tuple[bytes, list[str], str]:
    """One mutant's bytes, the mutations applied (in order) and the SOP Instance UID it was given."""
    patient_name, patient_id, study_uid = identity
    ds = pydicom.dcmread(io.BytesIO(seed))
    meta = FileMetaDataset(ds.file_meta)
    del ds.file_meta
    ds.PatientName, ds.PatientID, ds.StudyInstanceUID = patient_name, patient_id, study_uid
    ds.SeriesInstanceUID, ds.SOPInstanceUID = series_uid, _uid(rng)
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    work = Work(rng, ds, meta, UID(meta.TransferSyntaxUID), transport, bomb_bytes)
    kinds = _choose_kinds(rng)
    ordered = (
        [kind for kind in kinds if kind in DATASET_MUTATIONS]
        + [kind for kind in kinds if kind in REPLACING_MUTATIONS]
        + [kind for kind in kinds if kind in BYTE_MUTATIONS]
    )
    for kind in ordered:
        if kind in DATASET_MUTATIONS:
            DATASET_MUTATIONS[kind](work)
        elif kind in REPLACING_MUTATIONS:
            REPLACING_MUTATIONS[kind](work)
        elif work.replaced is not None:  # damage to the bomb's deflated stream
            work.encoded = work.replaced
            BYTE_MUTATIONS[kind](work)
            work.replaced = work.encoded
        else:
            if not work.encoded:
                work.encoded = _encode_work(work)
            BYTE_MUTATIONS[kind](work)
    if work.replaced is not None:
        body = work.replaced
    else:
        body = work.encoded or _encode_work(work)
        if work.syntax == DeflatedExplicitVRLittleEndian:
            body = _deflated(body)
    return _file_bytes(work, body), ordered, str(meta.MediaStorageSOPInstanceUID)


def mutants(
    seeds: dict[str, bytes],
    seed: int,
    count: int,
    *,
    transport: str = "dimse",
    studies: int = 40,
    bomb_bytes: int = DEFAULT_BOMB_BYTES,
) -> Iterator[Mutant]:
    """``count`` mutants of ``seeds`` (name -> file bytes), reproducible from ``seed``.

    Seeds are taken in turn (sorted by name), so every seed is used once ``count`` reaches their number.
    Consecutive mutants share one of ``studies`` Study Instance UIDs, in blocks. ``transport`` "stow" allows
    mutations of the file meta, which a DIMSE client cannot send.
    """
    rng = random.Random(seed)
    names = sorted(seeds)
    canaries = Canaries(rng)
    study_uids = [_uid(rng) for _ in range(studies)]
    for index in range(count):
        seed_name = names[index % len(names)]
        study_uid = study_uids[index * studies // count]
        identity = (canaries.name(), canaries.patient_id(), study_uid)
        series_uid = f"{study_uid}.{index % len(names) + 1}"
        with _lenient_pydicom(DEEP_SEQUENCE_LEVELS[1]):
            data, kinds, instance_uid = _mutant(rng, seeds[seed_name], series_uid, identity, transport, bomb_bytes)
        label = "+".join(kinds) or "clean"
        yield Mutant(
            f"{transport[0]}{index:05d}-{seed_name.removesuffix('.dcm')}-{label}",
            data,
            seed_name,
            tuple(kinds),
            *identity,
            instance_uid,
        )
