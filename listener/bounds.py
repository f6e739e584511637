"""Bounds on a DICOM Part 10 file, checked before pydicom reads it (issue 14): its size as received, its size
once a Deflated transfer syntax is inflated, and how deep its sequences nest.

pydicom inflates a whole Deflated data set into memory at once and reads sequences recursively, so a small
file can cost gigabytes (a deflate bomb) or exhaust the stack (sequences nested a thousand deep). Here the
inflated size is counted with a streaming ``zlib.decompressobj(...).decompress(..., max_length)`` whose output
is thrown away a step at a time, and nesting is found by walking element headers with a list as the stack:
no value is read, nothing recurses, memory stays at one inflate step whatever the file claims.

Nothing here raises for bad input. A file whose structure the walk cannot follow is left to the reader that
comes next (which refuses what it cannot read); only a crossed bound is reported.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from functools import lru_cache

from pydicom.datadict import dictionary_VR
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian, ImplicitVRLittleEndian

#: The ``bound`` label values of :data:`predraft.metrics.INPUTS_REFUSED` that these checks report.
DATASET_BYTES = "dataset_bytes"
INFLATED_BYTES = "inflated_bytes"
SEQUENCE_DEPTH = "sequence_depth"

PREAMBLE_LENGTH = 132  # the 128-byte preamble and "DICM", before the File Meta Information
FILE_META_GROUP = 0x0002
TRANSFER_SYNTAX_UID = 0x00020010
UNDEFINED_LENGTH = 0xFFFFFFFF
ITEM = 0xFFFEE000
ITEM_DELIMITER = 0xFFFEE00D
SEQUENCE_DELIMITER = 0xFFFEE0DD
PIXEL_DATA = 0x7FE00010
INFLATE_STEP_BYTES = 1 << 20  # inflated bytes produced (and dropped) per zlib call while counting
#: Explicit VRs whose length is a 4-byte field after 2 reserved bytes (PS3.5 7.1.2).
LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"})

_SEQUENCE, _ITEM, _FRAGMENTS = "sequence", "item", "fragments"


@dataclass(frozen=True)
class BoundCrossed:
    """Why a file is refused: ``bound`` is the INPUTS_REFUSED label, ``message`` says it without patient data."""

    bound: str
    message: str


@dataclass(frozen=True)
class Bounds:
    """The largest data set (``max_bytes``, as received and as inflated) and deepest nesting (``max_depth``)
    a file may have. Raises ValueError unless both are positive."""

    max_bytes: int
    max_depth: int

    def __post_init__(self) -> None:
        if self.max_bytes < 1:
            raise ValueError(f"max_dataset_bytes {self.max_bytes} must be positive")
        if self.max_depth < 1:
            raise ValueError(f"max_sequence_depth {self.max_depth} must be positive")

    def size_crossed(self, size: int) -> BoundCrossed | None:
        """A refusal when a file of ``size`` bytes is larger than :attr:`max_bytes`."""
        if size <= self.max_bytes:
            return None
        return BoundCrossed(DATASET_BYTES, f"the data set of {size} bytes is larger than the limit of "
                                           f"{self.max_bytes} bytes")

    def check(self, data: bytes) -> BoundCrossed | None:
        """The first bound the Part 10 file ``data`` crosses, or None. Never raises; memory: at most one
        inflate step beyond ``data``, plus the inflated data set when it is within :attr:`max_bytes`."""
        if (crossed := self.size_crossed(len(data))) is not None:
            return crossed
        layout = _data_set_start(data)
        if layout is None:
            return None  # not a Part 10 file (pydicom refuses it), or a File Meta Information it cannot walk
        start, syntax = layout
        body: bytes | memoryview = memoryview(data)[start:]
        if syntax == DeflatedExplicitVRLittleEndian:
            if inflates_beyond(body, self.max_bytes):
                return BoundCrossed(INFLATED_BYTES, f"the deflated data set inflates to more than {self.max_bytes} "
                                                    "bytes")
            body = _inflated(body)
        if nests_deeper(body, self.max_depth, little=syntax != ExplicitVRBigEndian,
                        implicit=_implicit(body, syntax)):
            return BoundCrossed(SEQUENCE_DEPTH, f"the data set has sequences nested deeper than {self.max_depth} "
                                                "levels")
        return None


def inflates_beyond(compressed: bytes | memoryview, limit: int) -> bool:
    """Whether the raw deflate stream ``compressed`` inflates to more than ``limit`` bytes. The output is
    counted and dropped a step at a time; a corrupt stream counts what inflated before the error."""
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    pending: bytes | memoryview = compressed
    total = 0
    try:
        while True:
            produced = len(inflater.decompress(pending, INFLATE_STEP_BYTES))
            total += produced
            if total > limit:
                return True
            pending = inflater.unconsumed_tail
            if inflater.eof or (not pending and not produced):
                return False
    except zlib.error:
        return False


def _inflated(compressed: bytes | memoryview) -> bytes:
    """The inflated data set (call only once :func:`inflates_beyond` said it is small enough)."""
    try:
        return zlib.decompressobj(-zlib.MAX_WBITS).decompress(compressed)
    except zlib.error:
        return b""


def _data_set_start(data: bytes) -> tuple[int, str] | None:
    """Where the data set of the Part 10 file ``data`` starts and its transfer syntax UID, or None."""
    if data[PREAMBLE_LENGTH - 4:PREAMBLE_LENGTH] != b"DICM":
        return None
    position, syntax = PREAMBLE_LENGTH, ""
    try:
        while position + 8 <= len(data):
            group, element = struct.unpack_from("<HH", data, position)
            if group != FILE_META_GROUP:
                break
            _, length, header = _explicit_header(data, position, "<")
            if (group << 16 | element) == TRANSFER_SYNTAX_UID:
                syntax = bytes(data[position + header:position + header + length]).decode("ascii", "replace")
            position += header + length
    except struct.error:
        return None
    return position, syntax.strip("\0 ")


def _implicit(body: bytes | memoryview, syntax: str) -> bool:
    """Like pydicom, let the first element decide implicit or explicit VR, whatever the syntax says."""
    vr = bytes(body[4:6])
    if len(vr) == 2:
        return not all(0x40 < char < 0x5B for char in vr)
    return syntax == ImplicitVRLittleEndian


def _explicit_header(data: bytes | memoryview, position: int, endian: str) -> tuple[bytes, int, int]:
    """The VR, value length and header size of the explicit VR element at ``position``."""
    vr = bytes(data[position + 4:position + 6])
    if vr in LONG_VRS:
        return vr, struct.unpack_from(endian + "L", data, position + 8)[0], 12
    return vr, struct.unpack_from(endian + "H", data, position + 6)[0], 8


@lru_cache(maxsize=4096)
def _dictionary_sequence(tag: int) -> bool:
    try:
        return dictionary_VR(tag) == "SQ"
    except KeyError:
        return False


@dataclass
class _Frame:
    kind: str  # _SEQUENCE, _ITEM or _FRAGMENTS (encapsulated pixel data)
    end: int | None  # where a value of defined length ends; None for an undefined length
    implicit: bool  # how the elements inside are encoded


def nests_deeper(data: bytes | memoryview, limit: int, *, little: bool, implicit: bool) -> bool:
    """Whether sequences in the data set ``data`` nest deeper than ``limit`` (a top-level sequence is 1).

    Sequences of defined and undefined length, Items, their delimiters, encapsulated pixel data and UN
    elements that pydicom reads as sequences are followed with an explicit stack. A structure the walk
    cannot follow ends it (False): pydicom refuses what it cannot read either."""
    endian = "<" if little else ">"
    stack: list[_Frame] = []
    depth, position = 0, 0
    try:
        while position + 8 <= len(data):
            while stack and stack[-1].end is not None and position >= stack[-1].end:
                depth -= stack.pop().kind == _SEQUENCE
            group, element, length = struct.unpack_from(endian + "HHL", data, position)
            tag = group << 16 | element
            frame = stack[-1] if stack else None
            if group == 0xFFFE:
                position += 8
                if tag == ITEM and frame is not None and frame.kind == _FRAGMENTS and length != UNDEFINED_LENGTH:
                    position += length
                elif tag == ITEM and frame is not None and frame.kind == _SEQUENCE:
                    stack.append(_Frame(_ITEM, None if length == UNDEFINED_LENGTH else position + length,
                                        frame.implicit))
                elif tag in (ITEM_DELIMITER, SEQUENCE_DELIMITER):
                    depth -= _close(stack, _ITEM if tag == ITEM_DELIMITER else _SEQUENCE)
                else:
                    return False
                continue
            if frame is not None and frame.kind != _ITEM:
                return False  # a sequence holds Items only
            position, child = _opened(data, position, endian, frame.implicit if frame else implicit, tag)
            if child is None:
                continue
            stack.append(child)
            depth += child.kind == _SEQUENCE
            if depth > limit:
                return True
    except struct.error:
        return False
    return False


def _opened(data: bytes | memoryview, position: int, endian: str, implicit: bool,
            tag: int) -> tuple[int, _Frame | None]:
    """Read the element at ``position``: where the walk goes on, and the sequence or fragments it opens."""
    if implicit:
        vr, length, header = None, struct.unpack_from(endian + "L", data, position + 4)[0], 8
    else:
        vr, length, header = _explicit_header(data, position, endian)
    start = position + header
    end = None if length == UNDEFINED_LENGTH else start + length
    if vr == b"SQ" or (vr is None and (_dictionary_sequence(tag) or (end is None and tag != PIXEL_DATA))):
        return start, _Frame(_SEQUENCE, end, implicit)
    if vr == b"UN" and (end is None or _dictionary_sequence(tag)):
        return start, _Frame(_SEQUENCE, end, True)  # pydicom reads it as a sequence in implicit VR
    if end is None:
        return start, _Frame(_FRAGMENTS, None, implicit)  # encapsulated pixel data: Items of fragments
    return end, None


def _close(stack: list[_Frame], kind: str) -> int:
    """Pop frames up to and including the innermost of undefined length that a delimiter of ``kind`` ends
    (fragments end like a sequence); return how many sequences were popped."""
    closed = 0
    while stack:
        frame = stack.pop()
        closed += frame.kind == _SEQUENCE
        if frame.end is None and (frame.kind == kind or (kind == _SEQUENCE and frame.kind == _FRAGMENTS)):
            break
    return closed
