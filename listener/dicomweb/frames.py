"""WADO-RS Retrieve Frames (PS3.18 10.4.1.1.3, 8.7.3): ``GET /dicomweb/studies/{study}/series/{series}/instances/
{sop}/frames/{frame_list}`` answers ``multipart/related``, one part per frame, in the order of the frame list
(``1`` or ``1,3``: frame numbers from 1, in any order, none twice). No pixel is decoded or encoded here:

* Native (uncompressed) pixel data: each frame's bytes sliced from PixelData (Rows x Columns x SamplesPerPixel x
  BitsAllocated bits a frame; two samples a pixel for YBR_FULL_422), sent as ``application/octet-stream;
  transfer-syntax=1.2.840.10008.1.2.1`` whatever the stored syntax: Implicit VR Little Endian and Deflated data
  sets hold the same pixel bytes, and Explicit VR Big Endian (retired) is byte-swapped to little endian, word by
  word of BitsAllocated (of 16 bits for 8-bit data of VR OW); 1-bit big-endian data is refused (422). 1-bit
  frames need not start on a byte: each is shifted to start on one and padded with zero bits to a whole byte
  (PS3.5 8.1.1: pixels packed from the least significant bit).
* Encapsulated (compressed) pixel data: the frame's fragments joined (:func:`pydicom.encaps.get_frame`), sent as
  the stored syntax's media type (:data:`MEDIA_TYPES`) with ``transfer-syntax=<stored UID>``, or as
  ``application/octet-stream; transfer-syntax=<stored UID>`` when the Accept header asks for octets in that
  syntax or in any (``transfer-syntax=*``, as OHIF does).

The Accept header picks among those offers (:func:`choose_offer`): ``*/*``, ``multipart/*`` and
``multipart/related`` without a type take the first offer. Compressed frames are offered in their stored syntax
only: a client asking for octets without a transfer-syntax (meaning Explicit VR Little Endian) gets 406, since
decoding would run a codec on untrusted data inside the HTTP process (the workers decode in a sandbox).

Answers: 400 for a malformed frame list; 404 for an instance not held, one without PixelData (an SR) or a frame
beyond NumberOfFrames; 406 when no offer fits the Accept header; 422 for a file that crosses the bounds of a
received one (counted in ``predraft_inputs_refused{transport="wado"}``), cannot be read, or whose pixel data
does not hold the frames its header describes.

Memory: the header is read as ``.../metadata`` reads it (:func:`predraft.listener.dicomweb.wado.read_header`,
never the whole file), then pydicom finds the pixel data without loading it (values over :data:`DEFER_BYTES`
stay in the file; a Deflated data set is inflated in memory, within the bounds). Native frames are read from the
file one at a time while the answer is sent; compressed frames are taken before it starts, so that a broken
fragment is a 422 and not a body cut short: they are in memory together (the requested ones, at most the file).
"""

from __future__ import annotations

import logging
import re
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from email.message import Message
from http import HTTPStatus
from io import BytesIO
from pathlib import Path
from typing import Annotated, BinaryIO

import numpy as np
import pydicom
from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import StreamingResponse
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.encaps import get_frame
from pydicom.uid import (
    HTJ2K,
    JPEG2000,
    JPEG2000MC,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    HTJ2KLossless,
    HTJ2KLosslessRPCL,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEG2000MCLossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)

from predraft.listener.bounds import Bounds
from predraft.listener.dicomweb.auth import DicomwebUser, authenticate
from predraft.listener.dicomweb.common import MULTIPART_RELATED, DicomwebError, bounds_of, http_error
from predraft.listener.dicomweb.holdings import InstanceEntry
from predraft.listener.dicomweb.multipart import stream_byte_parts
from predraft.listener.dicomweb.wado import LeftOut, held_instances, read_header

log = logging.getLogger(__name__)
router = APIRouter()
User = Annotated[DicomwebUser, Depends(authenticate)]

OCTET_STREAM = "application/octet-stream"
ANY_TYPE = "*/*"
ANY_SYNTAX = "*"
#: A frame list: frame numbers from 1, comma-separated (a ``%2C`` in the URL arrives as a comma).
FRAME_LIST = re.compile(r"[1-9][0-9]{0,9}(?:,[1-9][0-9]{0,9})*")
MAX_FRAME_LIST_CHARS = 8192
#: Values larger than this stay in the file when pydicom reads the data set to find its pixel data.
DEFER_BYTES = 64 * 1024
PIXEL_DATA = 0x7FE00010
UNDEFINED_LENGTH = 0xFFFFFFFF
BITS_PER_BYTE = 8
#: The largest BitsAllocated a native frame is sliced for (64: double-precision pixels).
MAX_BITS_ALLOCATED = 64
YBR_FULL_422 = "YBR_FULL_422"

#: Stored syntaxes whose pixel data is native: all are sent as Explicit VR Little Endian.
NATIVE_SYNTAXES = frozenset(
    {ImplicitVRLittleEndian, ExplicitVRLittleEndian, DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian}
)
#: The media types of the frames of each compressed syntax (PS3.18 Table 8.7.3-5), the standard's current name
#: first; a client naming the older one (image/x-jls, image/x-dicom-rle) gets parts labelled so.
MEDIA_TYPES: dict[str, tuple[str, ...]] = {
    JPEGBaseline8Bit: ("image/jpeg",),
    JPEGExtended12Bit: ("image/jpeg",),
    JPEGLossless: ("image/jpeg",),
    JPEGLosslessSV1: ("image/jpeg",),
    JPEGLSLossless: ("image/jls", "image/x-jls"),
    JPEGLSNearLossless: ("image/jls", "image/x-jls"),
    JPEG2000Lossless: ("image/jp2",),
    JPEG2000: ("image/jp2",),
    JPEG2000MCLossless: ("image/jpx",),
    JPEG2000MC: ("image/jpx",),
    HTJ2KLossless: ("image/jphc",),
    HTJ2KLosslessRPCL: ("image/jphc",),
    HTJ2K: ("image/jphc",),
    RLELossless: ("image/dicom-rle", "image/x-dicom-rle"),
}
#: The syntax a media type stands for when the Accept header names none (the defaults of PS3.18 Table 8.7.3-5).
DEFAULT_SYNTAX: dict[str, str] = {
    OCTET_STREAM: ExplicitVRLittleEndian,
    "image/jpeg": JPEGBaseline8Bit,
    "image/jls": JPEGLSLossless,
    "image/x-jls": JPEGLSLossless,
    "image/jp2": JPEG2000Lossless,
    "image/jpx": JPEG2000MCLossless,
    "image/jphc": HTJ2KLossless,
    "image/dicom-rle": RLELossless,
    "image/x-dicom-rle": RLELossless,
}


# --- the request: frame list and Accept header -----------------------------------------------------------------


def parse_frame_list(text: str) -> list[int]:
    """The frame numbers of a frame list (``1``, ``3,1``), in its order; DicomwebError 400 unless it is frame
    numbers from 1, comma-separated, none twice."""
    if len(text) > MAX_FRAME_LIST_CHARS or not FRAME_LIST.fullmatch(text):
        raise DicomwebError(
            HTTPStatus.BAD_REQUEST,
            f"malformed frame list {text[:64]!r}: give frame numbers from 1, separated by commas (1 or 1,3)",
        )
    numbers = [int(number) for number in text.split(",")]
    twice = sorted(number for number, count in Counter(numbers).items() if count > 1)
    if twice:
        raise DicomwebError(HTTPStatus.BAD_REQUEST, f"the frame list names frame(s) {twice[:8]} more than once")
    return numbers


@dataclass(frozen=True)
class Offer:
    """One way to send an instance's frames: parts of ``media_type`` holding ``transfer_syntax``."""

    media_type: str
    transfer_syntax: str

    @property
    def content_type(self) -> str:
        return f"{self.media_type}; transfer-syntax={self.transfer_syntax}"


def offers_for(stored_syntax: str) -> tuple[Offer, ...]:
    """The ways frames stored in ``stored_syntax`` are sent, preferred first: native data as Explicit VR Little
    Endian octets; compressed data as its media types, then as octets labelled with the stored syntax."""
    if stored_syntax in NATIVE_SYNTAXES:
        return (Offer(OCTET_STREAM, ExplicitVRLittleEndian),)
    named = tuple(Offer(media_type, stored_syntax) for media_type in MEDIA_TYPES.get(stored_syntax, ()))
    return (*named, Offer(OCTET_STREAM, stored_syntax))


def _parameter(header: Message, name: str) -> str | None:
    value = header.get_param(name)
    return value.strip() if isinstance(value, str) else None


def _quality(text: str | None) -> float:
    """The q parameter of a media range: 1 when absent, 0 (not acceptable) when it is no number from 0 to 1."""
    if text is None:
        return 1.0
    try:
        quality = float(text)
    except ValueError:
        return 0.0
    return quality if 0.0 <= quality <= 1.0 else 0.0


@dataclass(frozen=True)
class MediaRange:
    """A media range of an Accept header as it bears on frames: the part type it asks for (``*/*``: any), its
    transfer-syntax parameter (None when not given) and its quality."""

    part_type: str
    transfer_syntax: str | None
    quality: float

    @classmethod
    def parse(cls, text: str) -> MediaRange | None:
        """The range ``text``; None for one that cannot name a multipart answer (a single-part type such as
        ``image/jpeg``, which predraft does not send)."""
        header = Message()
        header["Content-Type"] = text
        media_type = text.split(";")[0].strip().lower()
        if media_type in (ANY_TYPE, "multipart/*"):
            part_type = ANY_TYPE
        elif media_type == MULTIPART_RELATED:
            part_type = (_parameter(header, "type") or ANY_TYPE).lower()
        else:
            return None
        return cls(part_type, _parameter(header, "transfer-syntax"), _quality(_parameter(header, "q")))

    def accepts(self, offer: Offer) -> bool:
        """Whether ``offer`` answers this range: its part type matches, and its syntax is the one asked for
        (any for ``*``; without a transfer-syntax, the media type's default, or any for a wildcard type)."""
        wildcard = self.part_type.endswith("/*")
        if not (
            self.part_type == offer.media_type
            or self.part_type == ANY_TYPE
            or (wildcard and offer.media_type.startswith(self.part_type[:-1]))
        ):
            return False
        if self.transfer_syntax is None:
            return wildcard or DEFAULT_SYNTAX.get(offer.media_type) == offer.transfer_syntax
        return self.transfer_syntax in (ANY_SYNTAX, offer.transfer_syntax)


def choose_offer(accept: str | None, offers: tuple[Offer, ...]) -> Offer | None:
    """The first of ``offers`` the most preferred range of ``accept`` (highest q first, then in order) takes; the
    first offer for no Accept header; None when no range takes any."""
    if not accept or not accept.strip():
        return offers[0]
    ranges = [parsed for text in accept.split(",") if (parsed := MediaRange.parse(text.strip())) is not None]
    for media_range in sorted(ranges, key=lambda r: -r.quality):
        if media_range.quality <= 0.0:
            break
        for offer in offers:
            if media_range.accepts(offer):
                return offer
    return None


def _not_acceptable(offers: tuple[Offer, ...]) -> DicomwebError:
    offered = " or ".join(f'type="{o.media_type}"; transfer-syntax={o.transfer_syntax}' for o in offers)
    return DicomwebError(
        HTTPStatus.NOT_ACCEPTABLE, f"the frames of this instance are offered as multipart/related; {offered} only"
    )


# --- the stored pixel data -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PixelValue:
    """Where the value of an instance's PixelData lies: ``data`` when pydicom read it (a small value, or one of a
    Deflated data set, inflated), else at ``offset`` of the file ``path``. ``length`` is its byte count
    (:data:`UNDEFINED_LENGTH` when encapsulated), ``vr`` its VR ("OB", "OW"; "" for implicit VR)."""

    path: Path
    offset: int
    length: int
    vr: str
    data: bytes | None = None

    @contextmanager
    def opened(self) -> Iterator[tuple[BinaryIO, int]]:
        """A readable stream of the value and where in it the value starts."""
        if self.data is not None:
            yield BytesIO(self.data), 0
            return
        with self.path.open("rb") as stream:
            yield stream, self.offset


def _pixel_value(path: Path, syntax: str) -> PixelValue | None:
    """The PixelData of the file ``path`` as pydicom finds it, its value left in the file unless the data set is
    Deflated; None when there is none. Raises what pydicom raises for a file it cannot read."""
    defer = None if syntax == DeflatedExplicitVRLittleEndian else DEFER_BYTES
    with path.open("rb") as stream:
        ds = pydicom.dcmread(stream, defer_size=defer)
        element = ds.get_item(PIXEL_DATA, keep_deferred=True)
    if isinstance(element, RawDataElement):
        vr = str(element.VR or "")
        if element.value is None:
            return PixelValue(path, element.value_tell, element.length, vr)
        data = bytes(element.value)
        return PixelValue(path, 0, UNDEFINED_LENGTH if element.length == UNDEFINED_LENGTH else len(data), vr, data)
    if isinstance(element, DataElement) and isinstance(element.value, bytes):
        length = UNDEFINED_LENGTH if element.is_undefined_length else len(element.value)
        return PixelValue(path, 0, length, str(element.VR), element.value)
    return None


@dataclass(frozen=True)
class NativeLayout:
    """How native frames lie in PixelData: ``frame_bits`` bits each, one after the other, packed for 1-bit data."""

    rows: int
    columns: int
    bits_allocated: int
    frame_bits: int

    @classmethod
    def of(cls, header: Dataset) -> NativeLayout:
        """The layout the header describes; DicomwebError 422 for a missing or unusable Rows, Columns,
        BitsAllocated or SamplesPerPixel."""
        rows, columns = _positive(header, "Rows"), _positive(header, "Columns")
        bits, samples = _positive(header, "BitsAllocated"), _positive(header, "SamplesPerPixel", 1)
        if bits > MAX_BITS_ALLOCATED or (bits != 1 and bits % BITS_PER_BYTE):
            raise DicomwebError(
                HTTPStatus.UNPROCESSABLE_ENTITY, f"BitsAllocated {bits} is not 1 or a multiple of 8 up to 64"
            )
        frame_bits = rows * columns * samples * bits
        if str(header.get("PhotometricInterpretation", "")) == YBR_FULL_422:
            frame_bits = frame_bits // 3 * 2  # two samples a pixel: the chroma is shared by two pixels
        return cls(rows, columns, bits, frame_bits)

    def needed_bytes(self, frames: int) -> int:
        return -(-frames * self.frame_bits // BITS_PER_BYTE)


def _positive(header: Dataset, keyword: str, default: int | None = None) -> int:
    """The header's ``keyword`` as a positive integer (``default`` when absent); DicomwebError 422 otherwise."""
    try:
        value = header.get(keyword)
        number = default if value is None or value == "" else int(value)
    except Exception as exc:  # pydicom's conversion of a hostile value may raise anything: a 422, never a 500
        raise DicomwebError(
            HTTPStatus.UNPROCESSABLE_ENTITY, f"{keyword} cannot be read ({type(exc).__name__})"
        ) from None
    if number is None or number < 1:
        raise DicomwebError(HTTPStatus.UNPROCESSABLE_ENTITY, f"{keyword} is {value!r}, not a positive integer")
    return number


def _swap_bytes(syntax: str, layout: NativeLayout, vr: str) -> int:
    """The word size to byte-swap native data by to make it little endian: 1 (no swap) unless big endian."""
    if syntax != ExplicitVRBigEndian:
        return 1
    if layout.bits_allocated == 1:
        raise DicomwebError(
            HTTPStatus.UNPROCESSABLE_ENTITY,
            "1-bit pixel data in Explicit VR Big Endian (retired) is not served as frames: retrieve the instance",
        )
    if layout.bits_allocated == BITS_PER_BYTE:
        return 2 if vr == "OW" else 1
    return layout.bits_allocated // BITS_PER_BYTE


def _read_exactly(stream: BinaryIO, position: int, size: int) -> bytes:
    stream.seek(position)
    data = stream.read(size)
    if len(data) != size:
        raise OSError(f"the pixel data ended after {len(data)} of {size} bytes (the file changed?)")
    return data


def native_frame(stream: BinaryIO, start: int, layout: NativeLayout, number: int, swap: int = 1) -> bytes:
    """Frame ``number`` (from 1) of the native pixel data at ``start`` of ``stream``, little endian: its bytes
    as stored, swapped by words of ``swap`` bytes for big-endian data; a 1-bit frame shifted to start on a
    byte, its last byte padded with zero bits."""
    first_bit = (number - 1) * layout.frame_bits
    if layout.bits_allocated == 1:
        first, shift = divmod(first_bit, BITS_PER_BYTE)
        raw = _read_exactly(stream, start + first, -(-(shift + layout.frame_bits) // BITS_PER_BYTE))
        bits = np.unpackbits(np.frombuffer(raw, dtype=np.uint8), bitorder="little")[shift : shift + layout.frame_bits]
        return np.packbits(bits, bitorder="little").tobytes()
    first, size = first_bit // BITS_PER_BYTE, layout.frame_bits // BITS_PER_BYTE
    if swap == 1:
        return _read_exactly(stream, start + first, size)
    low = first - first % swap  # whole words only: an 8-bit frame of VR OW may start inside one
    high = -(-(first + size) // swap) * swap
    words = np.frombuffer(_read_exactly(stream, start + low, high - low), dtype=f">u{swap}")
    return words.astype(f"<u{swap}").tobytes()[first - low : first - low + size]


@dataclass(frozen=True)
class StoredFrames:
    """The frames of one held instance, as its file holds them: ``layout`` for native pixel data, None for
    encapsulated."""

    sop_instance_uid: str
    syntax: str
    count: int
    pixels: PixelValue
    layout: NativeLayout | None
    extended_offsets: tuple[bytes, bytes] | None

    @classmethod
    def read(cls, instance: InstanceEntry, bounds: Bounds) -> StoredFrames:
        """The frames of ``instance``'s file: DicomwebError 404 when it holds no PixelData, 422 when it crosses
        ``bounds``, cannot be read, or its pixel data cannot hold the frames its header describes."""
        try:
            header = read_header(instance, bounds)
            syntax = str(header.file_meta.get("TransferSyntaxUID", ""))
            pixels = _pixel_value(Path(instance.path), syntax)
        except LeftOut as left_out:
            raise DicomwebError(HTTPStatus.UNPROCESSABLE_ENTITY, str(left_out)) from None
        except Exception as exc:  # pydicom's own errors, whatever their kind: a 422, never a 500
            raise DicomwebError(
                HTTPStatus.UNPROCESSABLE_ENTITY,
                f"instance {instance.sop_instance_uid}: the file cannot be read ({type(exc).__name__})",
            ) from None
        if pixels is None:
            raise DicomwebError(
                HTTPStatus.NOT_FOUND,
                f"instance {instance.sop_instance_uid} has no pixel data (SOP class {instance.sop_class_uid}), "
                "so no frames",
            )
        count = _positive(header, "NumberOfFrames", 1)
        if syntax not in NATIVE_SYNTAXES:
            _expect_encapsulated(pixels, syntax, encapsulated=True)
            return cls(instance.sop_instance_uid, syntax, count, pixels, None, _extended_offsets(header))
        _expect_encapsulated(pixels, syntax, encapsulated=False)
        layout = NativeLayout.of(header)
        if pixels.length < (needed := layout.needed_bytes(count)):
            raise DicomwebError(
                HTTPStatus.UNPROCESSABLE_ENTITY,
                f"PixelData holds {pixels.length} bytes, fewer than the {needed} of {count} frame(s) "
                f"of {layout.rows} x {layout.columns} at {layout.bits_allocated} bits",
            )
        return cls(instance.sop_instance_uid, syntax, count, pixels, layout, None)

    def check(self, numbers: list[int]) -> None:
        """DicomwebError 404 naming the first of ``numbers`` beyond the instance's frames."""
        beyond = [number for number in numbers if number > self.count]
        if beyond:
            raise DicomwebError(
                HTTPStatus.NOT_FOUND,
                f"frame {beyond[0]} is out of range: instance {self.sop_instance_uid} has {self.count} frame(s)",
            )

    def frames(self, numbers: list[int]) -> Iterator[bytes]:
        """Frames ``numbers`` (checked by :meth:`check`), in their order: compressed ones taken now (DicomwebError
        422 when the fragments do not give them), native ones read from the file as the iterator is consumed
        (DicomwebError 422 now for 1-bit big-endian data)."""
        if self.layout is None:
            return iter(self._compressed(numbers))
        return self._native(numbers, self.layout, _swap_bytes(self.syntax, self.layout, self.pixels.vr))

    def _native(self, numbers: list[int], layout: NativeLayout, swap: int) -> Iterator[bytes]:
        with self.pixels.opened() as (stream, start):
            for number in numbers:
                yield native_frame(stream, start, layout, number, swap)

    def _compressed(self, numbers: list[int]) -> list[bytes]:
        frames: list[bytes] = []
        with self.pixels.opened() as (stream, start):
            for number in numbers:
                stream.seek(start)
                try:
                    frames.append(
                        get_frame(
                            stream, number - 1, number_of_frames=self.count, extended_offsets=self.extended_offsets
                        )
                    )
                except Exception as exc:  # pydicom's parsing of hostile fragments may raise anything: a 422
                    raise DicomwebError(
                        HTTPStatus.UNPROCESSABLE_ENTITY,
                        f"frame {number} cannot be taken from the encapsulated pixel data ({type(exc).__name__})",
                    ) from None
        return frames


def _expect_encapsulated(pixels: PixelValue, syntax: str, *, encapsulated: bool) -> None:
    """DicomwebError 422 unless the pixel data is encapsulated (of undefined length) exactly when ``syntax`` is
    a compressed one."""
    if (pixels.length == UNDEFINED_LENGTH) != encapsulated:
        state = "native" if encapsulated else "encapsulated"
        raise DicomwebError(
            HTTPStatus.UNPROCESSABLE_ENTITY, f"the pixel data is {state}, unlike its transfer syntax {syntax!r}"
        )


def _extended_offsets(header: Dataset) -> tuple[bytes, bytes] | None:
    """The Extended Offset Table and its lengths (PS3.5 A.4), when the header holds both."""
    offsets, lengths = header.get("ExtendedOffsetTable"), header.get("ExtendedOffsetTableLengths")
    if isinstance(offsets, bytes) and isinstance(lengths, bytes):
        return offsets, lengths
    return None


# --- the route -------------------------------------------------------------------------------------------------


def _answer(request: Request, study: str, series: str, sop: str, frame_list: str) -> Response:
    numbers = parse_frame_list(frame_list)
    (instance,) = held_instances(request, study, series, sop)
    stored = StoredFrames.read(instance, bounds_of(request))
    offers = offers_for(stored.syntax)
    offer = choose_offer(request.headers.get("accept"), offers)
    if offer is None:
        raise _not_acceptable(offers)
    stored.check(numbers)
    frames = stored.frames(numbers)
    boundary = uuid.uuid4().hex
    return StreamingResponse(
        stream_byte_parts(((offer.content_type, frame) for frame in frames), boundary),
        media_type=f'{MULTIPART_RELATED}; type="{offer.media_type}"; boundary={boundary}',
    )


@router.get(
    "/studies/{study}/series/{series}/instances/{sop}/frames/{frame_list}",
    summary="WADO-RS: retrieve frames of an instance",
)
def retrieve_frames(study: str, series: str, sop: str, frame_list: str, request: Request, user: User) -> Response:
    try:
        return _answer(request, study, series, sop, frame_list)
    except DicomwebError as error:
        raise http_error(error, "WADO-RS frames request", user) from None
