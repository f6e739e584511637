"""Bounds on a DICOM Part 10 file, checked before pydicom reads it (issue 14): its size as received, its size
once a Deflated transfer syntax is inflated, how deep its sequences nest and how many elements it holds.

pydicom inflates a whole Deflated data set into memory at once and reads sequences recursively, so a small
file can cost gigabytes (a deflate bomb) or exhaust the stack (sequences nested a thousand deep). Here the
inflated size is counted with a streaming ``zlib.decompressobj(...).decompress(..., max_length)`` whose output
is thrown away a step at a time, and nesting is found by walking element headers with a list as the stack:
no value is read, nothing recurses, memory stays at one inflate step whatever the file claims. The data set's
start and transfer syntax are found by pydicom's own readers (preamble, File Meta Information in explicit or
implicit VR, then any group 0000 elements), so the check inflates exactly what pydicom would.

Nothing here raises for bad input. A file whose structure the walk cannot follow is left to the reader that
comes next (which refuses what it cannot read), so :meth:`Bounds.parsed_crossed` measures the data set pydicom
has read as well; only a crossed bound, or a Deflated data set that cannot be inflated, is reported.
"""

from __future__ import annotations

import mmap
import struct
import zlib
from dataclasses import dataclass
from functools import lru_cache

from pydicom.datadict import dictionary_VR
from pydicom.dataset import Dataset
from pydicom.filereader import _read_command_set_elements, _read_file_meta_info, read_preamble
from pydicom.sequence import Sequence
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian, ImplicitVRLittleEndian
from pydicom.valuerep import EXPLICIT_VR_LENGTH_32, VR

#: The ``bound`` label values of :data:`predraft.core.metrics.INPUTS_REFUSED` that these checks report.
DATASET_BYTES = "dataset_bytes"
INFLATED_BYTES = "inflated_bytes"
SEQUENCE_DEPTH = "sequence_depth"
ELEMENT_COUNT = "element_count"

#: The most data elements (top-level and nested, Items and delimiters not counted) a data set may hold. The
#: real test files hold at most 99, a drafted SR 275; a file of a million empty elements (8 MB) cost pydicom
#: 4.3 s of CPU and ~142 MB of memory to read, and is refused by the walk in about 0.1 s.
MAX_ELEMENTS = 100_000
NOT_INFLATABLE = "the deflated data set cannot be inflated"

UNDEFINED_LENGTH = 0xFFFFFFFF
ITEM = 0xFFFEE000
ITEM_DELIMITER = 0xFFFEE00D
SEQUENCE_DELIMITER = 0xFFFEE0DD
PIXEL_DATA = 0x7FE00010
INFLATE_STEP_BYTES = 1 << 20  # inflated bytes produced (and dropped) per zlib call while counting
#: Explicit VRs whose length is a 4-byte field after 2 reserved bytes (PS3.5 7.1.2), and every VR pydicom knows.
LONG_VRS = frozenset(vr.encode() for vr in EXPLICIT_VR_LENGTH_32)
KNOWN_VRS = frozenset(vr.encode() for vr in VR)

_SEQUENCE, _ITEM, _FRAGMENTS = "sequence", "item", "fragments"


@dataclass(frozen=True)
class BoundCrossed:
    """Why a file is refused: ``bound`` is the INPUTS_REFUSED label, ``message`` says it without patient data."""

    bound: str
    message: str


@dataclass(frozen=True)
class Bounds:
    """The largest data set (``max_bytes``, as received and as inflated), deepest nesting (``max_depth``) and
    most elements (``max_elements``) a file may have. Raises ValueError unless all are positive."""

    max_bytes: int
    max_depth: int
    max_elements: int = MAX_ELEMENTS

    def __post_init__(self) -> None:
        if self.max_bytes < 1:
            raise ValueError(f"max_dataset_bytes {self.max_bytes} must be positive")
        if self.max_depth < 1:
            raise ValueError(f"max_sequence_depth {self.max_depth} must be positive")
        if self.max_elements < 1:
            raise ValueError(f"max_elements {self.max_elements} must be positive")

    def size_crossed(self, size: int) -> BoundCrossed | None:
        """A refusal when a file of ``size`` bytes is larger than :attr:`max_bytes`."""
        if size <= self.max_bytes:
            return None
        return BoundCrossed(
            DATASET_BYTES, f"the data set of {size} bytes is larger than the limit of {self.max_bytes} bytes"
        )

    def check(self, data: bytes | bytearray | memoryview | mmap.mmap) -> BoundCrossed | None:
        """The first bound the Part 10 file ``data`` (any buffer: bytes, an mmap) crosses, or None; a Deflated
        data set that cannot be inflated is refused too (:data:`NOT_INFLATABLE`, bound ``inflated_bytes``).
        Never raises; memory: at most one inflate step beyond ``data``, plus the inflated data set when it is
        within :attr:`max_bytes`."""
        if (crossed := self.size_crossed(len(data))) is not None:
            return crossed
        layout = data_set_start(data)
        if layout is None:
            return None  # not a Part 10 file, or a File Meta Information pydicom cannot read (it refuses both)
        start, syntax = layout
        body: bytes | memoryview = memoryview(data)[start:]
        if syntax == DeflatedExplicitVRLittleEndian:
            try:
                too_large = inflates_beyond(body, self.max_bytes)
            except zlib.error:
                return BoundCrossed(INFLATED_BYTES, NOT_INFLATABLE)
            if too_large:
                return BoundCrossed(
                    INFLATED_BYTES, f"the deflated data set inflates to more than {self.max_bytes} bytes"
                )
            body = _inflated(body)
        bound = structure_crossed(
            body,
            self.max_depth,
            self.max_elements,
            little=syntax != ExplicitVRBigEndian,
            implicit=_implicit(body, syntax),
        )
        return None if bound is None else self._crossed(bound)

    def parsed_crossed(self, ds: Dataset) -> BoundCrossed | None:
        """The nesting or element-count bound the data set ``ds`` as pydicom read it crosses, or None.

        Catches what the header walk of :meth:`check` could not follow (pydicom switches an item to implicit
        VR when its first element looks implicit, reads a non-Item tag as an Item...). Walks with a list as
        the stack, no recursion; a sequence pydicom has not parsed yet (of defined length) is parsed one level
        at a time, so pydicom's own errors (a RecursionError included) propagate to the caller."""
        stack: list[tuple[Dataset, int]] = [(ds, 0)]
        elements = 0
        while stack:
            dataset, depth = stack.pop()
            elements += len(dataset)
            if elements > self.max_elements:
                return self._crossed(ELEMENT_COUNT)
            for tag in list(dataset.keys()):
                items = _parsed_sequence(dataset, tag)
                if items is None:
                    continue
                if depth + 1 > self.max_depth:
                    return self._crossed(SEQUENCE_DEPTH)
                stack.extend((item, depth + 1) for item in items)
        return None

    def _crossed(self, bound: str) -> BoundCrossed:
        if bound == SEQUENCE_DEPTH:
            return BoundCrossed(
                SEQUENCE_DEPTH, f"the data set has sequences nested deeper than {self.max_depth} levels"
            )
        return BoundCrossed(ELEMENT_COUNT, f"the data set holds more than {self.max_elements} elements")


def _parsed_sequence(dataset: Dataset, tag: int) -> Sequence | None:
    """The items of element ``tag`` of ``dataset`` when pydicom reads it as a sequence (converting a raw one
    of VR SQ, or of VR UN or unknown that the dictionary calls SQ), else None; other values are not converted."""
    vr = dataset.get_item(tag).VR
    if vr != VR.SQ and not (vr in (None, VR.UN) and _dictionary_sequence(tag)):
        return None
    value = dataset[tag].value
    return value if isinstance(value, Sequence) else None


def inflates_beyond(compressed: bytes | memoryview, limit: int) -> bool:
    """Whether the raw deflate stream ``compressed`` inflates to more than ``limit`` bytes. The output is
    counted and dropped a step at a time. Raises zlib.error for a corrupt stream that has not crossed
    ``limit`` before its error (pydicom's ``zlib.decompress`` raises there too); a stream cut short is False."""
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    pending: bytes | memoryview = compressed
    total = 0
    while True:
        produced = len(inflater.decompress(pending, INFLATE_STEP_BYTES))
        total += produced
        if total > limit:
            return True
        pending = inflater.unconsumed_tail
        if inflater.eof or (not pending and not produced):
            return False


def _inflated(compressed: bytes | memoryview) -> bytes:
    """The inflated data set (call only once :func:`inflates_beyond` said it is small enough)."""
    try:
        return zlib.decompressobj(-zlib.MAX_WBITS).decompress(compressed)
    except zlib.error:
        return b""


class BufferReader:
    """A read-only file over a buffer (bytes, an mmap) for pydicom's readers: copies only what is read. Call
    :meth:`release` when done (an mmap cannot be closed while a reader holds a view of it)."""

    def __init__(self, buffer: bytes | bytearray | memoryview | mmap.mmap) -> None:
        self._view = memoryview(buffer)
        self._position = 0

    def read(self, size: int | None = -1) -> bytes:
        end = len(self._view) if size is None or size < 0 else self._position + size
        chunk = bytes(self._view[self._position : end])
        self._position += len(chunk)
        return chunk

    def seek(self, offset: int, whence: int = 0) -> int:
        base = (0, self._position, len(self._view))[whence]
        self._position = max(0, base + offset)
        return self._position

    def tell(self) -> int:
        return self._position

    def release(self) -> None:
        self._view.release()


def data_set_start(data: bytes | bytearray | memoryview | mmap.mmap) -> tuple[int, str] | None:
    """Where the data set of the Part 10 file ``data`` starts and its transfer syntax UID ("" when it names
    none), found as pydicom's ``read_partial`` finds them: the preamble, the File Meta Information (re-read in
    implicit VR when pydicom finds it so), then any group 0000 (command) elements skipped. None when pydicom
    cannot read that far: no "DICM", or a File Meta Information it fails on (pydicom refuses such a file)."""
    reader = BufferReader(data)
    try:
        read_preamble(reader, False)  # type: ignore[arg-type]  # duck-typed BinaryIO: pydicom only reads
        meta = _read_file_meta_info(reader)  # type: ignore[arg-type]  # duck-typed BinaryIO: pydicom only reads
        _read_command_set_elements(reader)  # type: ignore[arg-type]  # duck-typed BinaryIO: pydicom only reads
        return reader.tell(), str(meta.get("TransferSyntaxUID", "") or "")
    except Exception:
        return None
    finally:
        reader.release()


def _implicit(body: bytes | memoryview, syntax: str) -> bool:
    """Like pydicom, let the first element decide implicit or explicit VR, whatever the syntax says."""
    return _looks_implicit(body, 0, syntax == ImplicitVRLittleEndian)


def _looks_implicit(data: bytes | memoryview, position: int, otherwise: bool) -> bool:
    """pydicom's test of a data set's first element at ``position``: implicit VR unless its bytes 4-5 are
    two capital letters; ``otherwise`` when there are no such bytes."""
    vr = bytes(data[position + 4 : position + 6])
    if len(vr) == 2:
        return not all(0x40 < char < 0x5B for char in vr)
    return otherwise


def _switched_to_implicit(vr: bytes) -> bool:
    """pydicom reads an explicit VR element whose VR is unknown and not two capital letters as implicit."""
    return vr not in KNOWN_VRS and not b"AA" <= vr <= b"ZZ"


def _explicit_header(data: bytes | memoryview, position: int, endian: str) -> tuple[bytes, int, int]:
    """The VR, value length and header size of the explicit VR element at ``position``."""
    vr = bytes(data[position + 4 : position + 6])
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


def structure_crossed(
    data: bytes | memoryview, max_depth: int, max_elements: int, *, little: bool, implicit: bool
) -> str | None:
    """:data:`SEQUENCE_DEPTH` when sequences in the data set ``data`` nest deeper than ``max_depth`` (a
    top-level sequence is 1), :data:`ELEMENT_COUNT` when it holds more than ``max_elements`` data elements
    (top-level and nested; Items, delimiters and fragments not counted), else None.

    Sequences of defined and undefined length, Items, their delimiters, encapsulated pixel data and UN
    elements that pydicom reads as sequences are followed with an explicit stack; like pydicom, an item whose
    first element looks implicit is read in implicit VR, and so is an explicit element whose VR is not two
    capital letters. A structure the walk cannot follow ends it (None): pydicom refuses what it cannot read,
    and :meth:`Bounds.parsed_crossed` measures what it can."""
    endian = "<" if little else ">"
    stack: list[_Frame] = []
    depth, position, elements = 0, 0, 0
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
                    stack.append(
                        _Frame(
                            _ITEM,
                            None if length == UNDEFINED_LENGTH else position + length,
                            frame.implicit or _looks_implicit(data, position, frame.implicit),
                        )
                    )
                elif tag in (ITEM_DELIMITER, SEQUENCE_DELIMITER):
                    depth -= _close(stack, _ITEM if tag == ITEM_DELIMITER else _SEQUENCE)
                else:
                    return None
                continue
            if frame is not None and frame.kind != _ITEM:
                return None  # a sequence holds Items only
            elements += 1
            if elements > max_elements:
                return ELEMENT_COUNT
            position, child = _opened(data, position, endian, frame.implicit if frame else implicit, tag)
            if child is None:
                continue
            stack.append(child)
            depth += child.kind == _SEQUENCE
            if depth > max_depth:
                return SEQUENCE_DEPTH
    except struct.error:
        return None
    return None


def _opened(
    data: bytes | memoryview, position: int, endian: str, implicit: bool, tag: int
) -> tuple[int, _Frame | None]:
    """Read the element at ``position``: where the walk goes on, and the sequence or fragments it opens."""
    if implicit or _switched_to_implicit(bytes(data[position + 4 : position + 6])):
        vr, length, header = None, struct.unpack_from(endian + "L", data, position + 4)[0], 8
    else:
        vr, length, header = _explicit_header(data, position, endian)
    start = position + header
    end = None if length == UNDEFINED_LENGTH else start + length
    if vr == b"SQ" or (vr is None and (_dictionary_sequence(tag) or (end is None and tag != PIXEL_DATA))):
        return start, _Frame(_SEQUENCE, end, implicit)
    if vr == b"UN" and (end is None or _dictionary_sequence(tag)):
        # pydicom reads it as a sequence: one of undefined length in the parent's encoding (its items then
        # switch to implicit VR as they look), one the dictionary calls SQ in implicit VR
        return start, _Frame(_SEQUENCE, end, implicit if end is None else True)
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
