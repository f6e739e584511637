"""Receiving one instance, whatever carried it (DIMSE C-STORE or DICOMweb STOW-RS).

:class:`Receiver` checks the data set, writes it to the spool (fsync, atomic rename), records it in the
database and only then reports ``STORED``. Every way it can go wrong has a named outcome that the
transport turns into its own status code; nothing here raises for bad input.

pydicom reads a cut-short file without complaint, so before anything is written :func:`truncation`
walks the data set's elements (their headers only: no value is read, no pixel decoded) and a file
whose data set ends inside an element is refused as ``CANNOT_UNDERSTAND``, whatever carried it.

Before pydicom reads anything, the file is held to its bounds (:mod:`predraft.listener.bounds`): a data set larger
than ``max_dataset_bytes`` as received or once inflated (a deflate bomb), or with sequences nested deeper
than ``max_sequence_depth`` (measured again on what pydicom read), or holding more than
:data:`predraft.listener.bounds.MAX_ELEMENTS` elements, is refused as ``CANNOT_UNDERSTAND`` too, as is one whose
Study, Series or SOP Instance UID or SOP Class UID is not a UID as PS3.5 defines it. ``CANNOT_UNDERSTAND``
(DIMSE 0xC000, STOW Failure Reason C000) rather than "out of resources" (A700): A7xx tells a sender to try
again later, and such a file will never be stored. Each such refusal counts in
``predraft_inputs_refused{transport, bound}``.
"""

from __future__ import annotations

import logging
import mmap
import os
import struct
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import Enum
from io import BytesIO
from pathlib import Path
from typing import TypedDict, Unpack

import pydicom
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.filereader import _read_command_set_elements, data_element_generator
from pydicom.tag import BaseTag
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian
from sqlalchemy import bindparam, select

from predraft.core import metrics
from predraft.core.db import read_connection
from predraft.core.library_text import describe_exception
from predraft.core.schema import Instance
from predraft.core.settings import ListenerSettings, Settings
from predraft.listener.bounds import BoundCrossed, Bounds, BufferReader
from predraft.listener.ingest import InstanceHeader, InvalidUidError
from predraft.listener.recorder import GroupRecorder
from predraft.listener.spool import Spool, SpoolFullError
from predraft.models.taxonomy import DX_FOR_PROCESSING, STORABLE_SOP_CLASSES

log = logging.getLogger(__name__)

PREAMBLE_LENGTH = 132  # the 128-byte preamble and "DICM" of a Part 10 file, before its File Meta Information
TRANSFER_SYNTAX_UID = 0x00020010
UNDEFINED_LENGTH = 0xFFFFFFFF
#: The Sequence Delimitation Item (FFFE,E0DD) and its zero length, which end an element of undefined length.
SEQUENCE_DELIMITER = {little: struct.pack("<HHL" if little else ">HHL", 0xFFFE, 0xE0DD, 0) for little in (True, False)}
#: The (group, element) of the top-level elements pydicom stops before when it reads a header: Pixel Data, Float
#: and Double Float Pixel Data.
PIXEL_DATA_TAGS = frozenset({(0x7FE0, 0x0010), (0x7FE0, 0x0008), (0x7FE0, 0x0009)})
#: The transports of ``predraft_inputs_refused``: DIMSE C-STORE hands the Receiver a file, STOW-RS bytes.
DIMSE, STOW = "dimse", "stow"
INVALID_UID = "invalid_uid"  # the INPUTS_REFUSED bound of a malformed UID
#: Whether a SOP Instance UID is recorded: built once, so that SQLAlchemy compiles it once.
_HELD = select(Instance.id).where(Instance.sop_instance_uid == bindparam("uid"))
#: What a received file is read from: bytes (STOW-RS) or a read-only memory map of the file (DIMSE).
Buffer = bytes | mmap.mmap
DEFAULT_MAX_DATASET_BYTES: int = ListenerSettings.model_fields["max_dataset_bytes"].default
DEFAULT_MAX_SEQUENCE_DEPTH: int = ListenerSettings.model_fields["max_sequence_depth"].default


class ReceiveStatus(Enum):
    STORED = "stored"
    DUPLICATE = "duplicate"  # already held: nothing written, success for the sender
    CANNOT_UNDERSTAND = "cannot_understand"  # not a DICOM data set, cut short, or its UIDs missing/malformed
    SOP_CLASS_MISMATCH = "sop_class_mismatch"  # the data set's SOP class differs from the request's
    SOP_CLASS_NOT_SUPPORTED = "sop_class_not_supported"  # e.g. DX For Processing
    OUT_OF_RESOURCES = "out_of_resources"  # spool below its free-space floor, or a write failed
    PROCESSING_FAILURE = "processing_failure"  # anything unexpected (database down...)

    @property
    def succeeded(self) -> bool:
        return self in (ReceiveStatus.STORED, ReceiveStatus.DUPLICATE)


class _InstanceIds(TypedDict, total=False):
    """The UIDs a :class:`ReceiveOutcome` names, as keyword arguments."""

    sop_class_uid: str
    sop_instance_uid: str
    study_uid: str


@dataclass(frozen=True)
class ReceiveOutcome:
    status: ReceiveStatus
    message: str
    sop_class_uid: str = ""
    sop_instance_uid: str = ""
    study_uid: str = ""
    #: Bytes written to the spool: the file's size when STORED, else 0.
    size: int = 0
    #: The bound the data set crossed when refused for one (an INPUTS_REFUSED label), else "".
    bound: str = ""


class Receiver:
    """Spool and record instances. One per process; safe to call from many threads."""

    def __init__(
        self,
        spool: Spool,
        database_url: str,
        *,
        max_dataset_bytes: int = DEFAULT_MAX_DATASET_BYTES,
        max_sequence_depth: int = DEFAULT_MAX_SEQUENCE_DEPTH,
    ) -> None:
        """Raises TypeError for a spool that is not a :class:`Spool`, ValueError for an empty database URL
        or a bound that is not positive."""
        if not isinstance(spool, Spool):
            raise TypeError(f"spool must be a Spool, not {type(spool).__name__}")
        if not database_url:
            raise ValueError("database_url must not be empty")
        self.bounds = Bounds(max_dataset_bytes, max_sequence_depth)
        self.spool = spool
        self.database_url = database_url
        self.recorder = GroupRecorder(database_url)

    @property
    def max_dataset_bytes(self) -> int:
        return self.bounds.max_bytes

    @property
    def max_sequence_depth(self) -> int:
        return self.bounds.max_depth

    @classmethod
    def from_settings(cls, settings: Settings) -> Receiver:
        """The Receiver every transport uses: the configured spool, its free-space floor, database and the
        bounds of a data set (max_dataset_bytes, max_sequence_depth)."""
        return cls(
            Spool(settings.spool_dir, min_free_bytes=settings.listener.spool_min_free_bytes),
            settings.database_url,
            max_dataset_bytes=settings.listener.max_dataset_bytes,
            max_sequence_depth=settings.listener.max_sequence_depth,
        )

    def receive(
        self, data: bytes, *, source: str, expected_sop_class: str | None = None, transport: str = STOW
    ) -> ReceiveOutcome:
        """Receive one DICOM Part 10 file (preamble, file meta and data set) sent by ``source``
        (a calling AE title or a DICOMweb user; stored, never logged with patient data) over ``transport``
        (the label a refusal for a bound is counted under)."""
        return self._receive(
            data,
            lambda path: self.spool.write(path, data),
            source=source,
            expected_sop_class=expected_sop_class,
            transport=transport,
        )

    def receive_file(
        self, received: Path, *, source: str, expected_sop_class: str | None = None, transport: str = DIMSE
    ) -> ReceiveOutcome:
        """Receive a Part 10 file already written to disk (pynetdicom's chunked C-STORE): checked like
        :meth:`receive`, then moved into the spool instead of written again. A file larger than
        ``max_dataset_bytes`` is refused before it is read. The file is read through a memory map, so only
        the parts the checks look at are read (a radiograph's pixel data is not copied). ``received`` is gone
        afterwards, whatever the outcome."""
        try:
            if (crossed := self.bounds.size_crossed(received.stat().st_size)) is not None:
                return self._refuse_crossed(crossed, source, transport)
            with _mapped(received) as data:
                return self._receive(
                    data,
                    lambda path: self.spool.adopt(received, path),
                    source=source,
                    expected_sop_class=expected_sop_class,
                    transport=transport,
                )
        finally:
            received.unlink(missing_ok=True)

    def bounds_refusal(self, data: Buffer, *, source: str, transport: str) -> ReceiveOutcome | None:
        """The refusal of ``data`` for a bound it crosses (counted and logged), or None: what a transport
        asks before it reads a file's header itself. Holds at most one inflate step in memory beyond ``data``."""
        crossed = self.bounds.check(data)
        return None if crossed is None else self._refuse_crossed(crossed, source, transport)

    def _receive(
        self,
        data: Buffer,
        store: Callable[[Path], Path],
        *,
        source: str,
        expected_sop_class: str | None,
        transport: str,
    ) -> ReceiveOutcome:
        if (refused := self.bounds_refusal(data, source=source, transport=transport)) is not None:
            return refused
        try:
            ds, resume = _read_header(data)
            if (crossed := self.bounds.parsed_crossed(ds)) is not None:  # what the header walk could not follow
                return self._refuse_crossed(crossed, source, transport)
            header = InstanceHeader.from_dataset(ds, str(ds.file_meta.get("TransferSyntaxUID", "")))
        except InvalidUidError as exc:
            return self._refuse(
                ReceiveStatus.CANNOT_UNDERSTAND,
                truncation(data) or str(exc),
                source,
                transport=transport,
                bound=INVALID_UID,
            )
        except Exception as exc:  # any parse failure means the same: not an instance we can file
            return self._refuse(
                ReceiveStatus.CANNOT_UNDERSTAND,
                truncation(data) or f"cannot understand the data set: {describe_exception(exc)}",
                source,
            )
        ids: _InstanceIds = {
            "sop_class_uid": header.sop_class_uid,
            "sop_instance_uid": header.sop_instance_uid,
            "study_uid": header.study_uid,
        }
        if (cut := truncation(data, resume=resume)) is not None:
            return self._refuse(ReceiveStatus.CANNOT_UNDERSTAND, cut, source, **ids)
        if expected_sop_class is not None and header.sop_class_uid != expected_sop_class:
            return self._refuse(
                ReceiveStatus.SOP_CLASS_MISMATCH,
                f"data set of SOP class {header.sop_class_uid} sent as {expected_sop_class}",
                source,
                **ids,
            )
        if header.sop_class_uid not in STORABLE_SOP_CLASSES:
            reason = (
                "DX For Processing is raw detector data; send the For Presentation image"
                if header.sop_class_uid == DX_FOR_PROCESSING
                else "predraft does not store this SOP class"
            )
            return self._refuse(
                ReceiveStatus.SOP_CLASS_NOT_SUPPORTED, f"SOP class {header.sop_class_uid}: {reason}", source, **ids
            )
        target = self.spool.instance_path(header.study_uid, header.sop_instance_uid)
        try:
            # An instance held is in the spool at its path: only a file there needs the database to tell a held
            # copy (kept as it is) from a crash's leftover (replaced). A file absent is written; if the database
            # holds the instance all the same (retention purged its file), the new copy is dropped again below.
            file_there = target.exists()
            if file_there and self._held(header.sop_instance_uid):
                log.info(
                    "duplicate instance %s from %s: already held, nothing written", header.sop_instance_uid, source
                )
                return ReceiveOutcome(ReceiveStatus.DUPLICATE, ReceiveStatus.DUPLICATE.value, **ids)
            path = store(target)
            try:
                result = self.recorder.record(header, spool_path=str(path), size_bytes=len(data), calling_ae=source)
            except BaseException:
                if not file_there:  # not recorded: the sender sends it again, and nothing is left behind meanwhile
                    path.unlink(missing_ok=True)
                raise
            if result.duplicate and not result.file_held:
                path.unlink(missing_ok=True)
        except SpoolFullError as exc:
            return self._refuse(ReceiveStatus.OUT_OF_RESOURCES, str(exc), source, **ids)
        except OSError as exc:
            return self._refuse(
                ReceiveStatus.OUT_OF_RESOURCES,
                f"writing the spool failed: {exc.strerror or type(exc).__name__}",
                source,
                **ids,
            )
        except Exception as exc:
            log.exception("instance %s from %s could not be recorded", header.sop_instance_uid, source)
            return ReceiveOutcome(ReceiveStatus.PROCESSING_FAILURE, f"{type(exc).__name__}", **ids)
        status = ReceiveStatus.DUPLICATE if result.duplicate else ReceiveStatus.STORED
        log.info(
            "%s instance %s from %s (study row %d)", status.value, header.sop_instance_uid, source, result.study_id
        )
        return ReceiveOutcome(status, status.value, **ids, size=len(data) if status is ReceiveStatus.STORED else 0)

    def _held(self, sop_instance_uid: str) -> bool:
        """Whether this instance is already recorded (then the spool keeps the copy it has): a read that takes no
        write lock. An instance recorded meanwhile by another association is found again by
        :func:`predraft.listener.ingest.record_instance`."""
        with read_connection(self.database_url) as connection:
            return connection.execute(_HELD, {"uid": sop_instance_uid}).first() is not None

    def _refuse_crossed(self, crossed: BoundCrossed, source: str, transport: str) -> ReceiveOutcome:
        return self._refuse(
            ReceiveStatus.CANNOT_UNDERSTAND, crossed.message, source, transport=transport, bound=crossed.bound
        )

    @staticmethod
    def _refuse(
        status: ReceiveStatus,
        message: str,
        source: str,
        *,
        transport: str = "",
        bound: str = "",
        **ids: Unpack[_InstanceIds],
    ) -> ReceiveOutcome:
        """Log the refusal (``message`` holds no patient data) and, for a crossed ``bound``, count it."""
        log.warning("refused an instance from %s: %s", source, message)
        if bound:
            metrics.INPUTS_REFUSED.labels(transport=transport, bound=bound).inc()
        return ReceiveOutcome(status, message, **ids, bound=bound)


@contextmanager
def _mapped(path: Path) -> Iterator[Buffer]:
    """The file at ``path`` as a read-only memory map (b"" when empty), closed when the block ends."""
    with path.open("rb") as stream:
        if os.fstat(stream.fileno()).st_size == 0:
            yield b""
            return
        with mmap.mmap(stream.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
            yield mapped


def _read_header(data: Buffer) -> tuple[Dataset, _Resume | None]:
    """The data set of the Part 10 file ``data`` up to its pixel data, as pydicom reads it, and where
    :func:`truncation` may resume: at the top-level Pixel Data element, when pydicom's read stopped there (None
    otherwise: no pixel data, a cut file that ended first, a Deflated data set, which pydicom reads from an
    inflated copy, or no element left to tell how it was read).

    pydicom reads the elements in turn, each header at the end of the element before, and stops before a
    top-level Pixel Data, Float or Double Float Pixel Data element (never one nested in a sequence); at the end
    of the bytes it stops without complaint. So when it stopped at Pixel Data, every element before lies whole
    within ``data``. The VR encoding to walk on in is the one pydicom read the top-level elements in, as each
    raw element records it (which may differ from what the transfer syntax says)."""
    reader = BufferReader(data)
    try:
        ds = pydicom.dcmread(reader, stop_before_pixels=True)
        position = reader.tell()
    finally:
        reader.release()
    if str(ds.file_meta.get("TransferSyntaxUID", "")) == DeflatedExplicitVRLittleEndian:
        return ds, None
    read = _first_raw_element(ds)
    if read is None:
        return ds, None
    tag = data[position : position + 4]
    little = read.is_little_endian
    if len(tag) == 4 and struct.unpack("<HH" if little else ">HH", tag) in PIXEL_DATA_TAGS:
        return ds, _Resume(position, read.is_implicit_VR, little)
    return ds, None


def _first_raw_element(ds: Dataset) -> RawDataElement | None:
    """The first top-level element of ``ds`` past the File Meta Information still as pydicom read it (not yet
    converted), which records the VR encoding it was read in; None if there is none."""
    for tag in ds.keys():  # noqa: SIM118  # iterating a Dataset converts each element; its keys are only tags
        item = ds.get_item(tag) if tag.group > 0x0002 else None
        if isinstance(item, RawDataElement):
            return item
    return None


@dataclass(frozen=True)
class _Resume:
    """Where :func:`truncation` may start its walk instead of the file's start: a top-level element that pydicom
    reached by reading every element before it (see :func:`_read_header`), and the VR encoding it read them in."""

    offset: int
    implicit: bool
    little: bool


def truncation(data: Buffer, *, resume: _Resume | None = None) -> str | None:
    """Why the Part 10 file ``data`` is cut short, or None when it is whole (or not a Part 10 file at all).

    The data set is whole when every element of defined length fits in the bytes there are, every
    element of undefined length (a sequence, encapsulated Pixel Data) ends with its Sequence Delimitation
    Item, and the last element ends where the file does. Values are skipped, not read: the cost is one
    seek per element and per fragment of encapsulated pixel data. With ``resume``, the walk starts there
    (the elements before it known whole) instead of at the File Meta Information. Never raises.
    """
    if data[PREAMBLE_LENGTH - 4 : PREAMBLE_LENGTH] != b"DICM":
        return None
    reader = BufferReader(data)  # copies only what the walk reads
    try:
        if resume is not None:
            reader.seek(resume.offset)
            return _walk_checked(lambda: _cut_element(reader, data, resume.little, implicit=resume.implicit))
        return _walk_checked(lambda: _truncation(reader, data))
    finally:
        reader.release()


def _walk_checked(walk: Callable[[], str | None]) -> str | None:
    """``walk()``'s verdict, or what the exception it raised says of the file."""
    try:
        return walk()
    except (EOFError, OSError):  # pydicom found no delimiter (EOFError) or no next item (OSError) in a value
        return "the data set ends inside an element of undefined length, before its delimiter (truncated)"
    except struct.error:  # an element header with no room for its 4-byte length
        return "the file ends inside the header of an element (truncated)"
    except Exception as exc:  # anything else is a file that cannot be read to its end either
        return f"the data set cannot be read to its end ({type(exc).__name__})"


def _truncation(fp: BufferReader, data: Buffer) -> str | None:
    fp.seek(PREAMBLE_LENGTH)
    meta = list(data_element_generator(fp, False, True, _past_file_meta))  # type: ignore[arg-type]  # duck-typed
    last = meta[-1] if meta else None
    if last is not None and not isinstance(last, RawDataElement):
        # pydicom read it as a sequence of undefined length, which has no value_tell: unreadable (below)
        raise AttributeError(f"File Meta Information element {last.tag} of undefined length")
    if (last.value_tell + last.length if last is not None else PREAMBLE_LENGTH) != fp.tell():
        return "the file ends inside its File Meta Information (truncated)"
    _read_command_set_elements(fp)  # type: ignore[arg-type]  # skipped, as pydicom does before the data set
    syntax = _transfer_syntax(next((e for e in meta if e.tag == TRANSFER_SYNTAX_UID), None))
    if syntax == DeflatedExplicitVRLittleEndian:
        inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        inflated = inflater.decompress(data[fp.tell() :])
        if not inflater.eof:
            return "the deflated data set ends inside its compressed stream (truncated)"
        return _cut_element(BytesIO(inflated), inflated, syntax != ExplicitVRBigEndian)
    return _cut_element(fp, data, syntax != ExplicitVRBigEndian)


def _past_file_meta(tag: BaseTag, vr: str | None, length: int) -> bool:
    return tag.group != 0x0002


def _transfer_syntax(element: RawDataElement | DataElement | None) -> str:
    value = element.value if element is not None else None
    return value.decode("ascii", "replace").strip("\0 ") if isinstance(value, bytes) else ""


def _undefined_length(element: DataElement | RawDataElement) -> bool:
    if isinstance(element, DataElement):
        return element.is_undefined_length  # a sequence, read by pydicom item by item
    return element.length == UNDEFINED_LENGTH


def _cut_element(fp: BufferReader | BytesIO, data: Buffer, little: bool, *, implicit: bool | None = None) -> str | None:
    """The first element from ``fp`` on (in ``data``) that the end of ``data`` cuts, if any. ``implicit`` None: the
    first element decides implicit or explicit VR, as pydicom lets it for a data set, whatever the transfer syntax
    says."""
    end = fp.tell()
    if implicit is None:
        vr = data[end + 4 : end + 6]
        implicit = len(vr) == 2 and not all(0x40 < char < 0x5B for char in vr)
    for element in data_element_generator(fp, implicit, little, defer_size=0):  # type: ignore[arg-type]  # duck-typed
        if _undefined_length(element):
            end = fp.tell()
            if end > len(data) or data[end - 8 : end] != SEQUENCE_DELIMITER[little]:
                return f"element {element.tag} of undefined length ends without its delimiter (truncated)"
        else:
            assert isinstance(element, RawDataElement)  # pydicom parses only a sequence of undefined length
            end = element.value_tell + element.length
            if end > len(data):
                return (
                    f"element {element.tag} holds {len(data) - element.value_tell} of its {element.length} "
                    "bytes (truncated)"
                )
    if end != len(data):
        return f"the data set ends inside the header of an element, {len(data) - end} bytes after the last (truncated)"
    return None
