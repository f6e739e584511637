"""DICOMweb on the HTTP app (PS3.18): STOW-RS in, QIDO-RS and WADO-RS out.

Every route needs a bearer token or basic auth (:mod:`listener.dicomweb_auth`).

* STOW-RS ``POST /dicomweb/studies[/{study}]``: a ``multipart/related; type="application/dicom"``
  body whose parts are DICOM Part 10 files. The body is checked against
  ``dicomweb_max_upload_bytes`` (Content-Length first, then while it is read, chunked or not) and copied
  to an unlinked temporary file beside the spool, never held in memory whole; then each part goes to
  :class:`listener.receive.Receiver`, which spools (fsync, atomic rename) and records it before the
  response says it is stored. The response is a Store Instances Response Module (DICOM JSON) with
  ReferencedSOPSequence and FailedSOPSequence; 200 when all were stored, 202 when some failed, 409 when
  none was stored, 400/415/413 for a request that cannot be read at all.
* QIDO-RS ``GET /dicomweb/studies``, ``.../{study}/series``, ``.../{study}/series/{series}/instances``:
  answers from the database, including the drafted SRs (Modality SR) of the drafts table.
* WADO-RS ``GET /dicomweb/studies/{study}[/series/{series}[/instances/{sop}]]``: the stored files, byte
  for byte as they were received (no transcoding: each part's Content-Type names its transfer syntax);
  ``.../metadata`` at each level gives their headers as DICOM JSON.

Logs name users, UIDs and reasons, never patient data or secrets.
"""

from __future__ import annotations

import json
import logging
import mmap
import re
import tempfile
import threading
import uuid
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import Message
from http import HTTPStatus
from io import BytesIO
from pathlib import Path
from typing import IO, Annotated, Any

import pydicom
from fastapi import APIRouter, Depends, HTTPException, Request, Response
from fastapi.responses import StreamingResponse
from pydicom.datadict import dictionary_VR, keyword_for_tag
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from sqlalchemy import ColumnElement, and_, exists, or_, select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from listener.dicomweb_auth import DicomwebUser, authenticate
from listener.receive import Receiver, ReceiveStatus
from listener.spool import Spool, check_uid
from predraft.db import session_scope
from predraft.schema import Draft, Instance, Series, Study
from predraft.settings import Settings

log = logging.getLogger(__name__)

PREFIX = "/dicomweb"
router = APIRouter(prefix=PREFIX, tags=["dicomweb"], dependencies=[Depends(authenticate)])
User = Annotated[DicomwebUser, Depends(authenticate)]

DICOM_JSON = "application/dicom+json"
APPLICATION_DICOM = "application/dicom"
MULTIPART_RELATED = "multipart/related"

#: Failure Reason (0008,1197) values of a Store Instances Response (PS3.18 Table I.2-2).
FAILURE_OUT_OF_RESOURCES = 0xA700
FAILURE_SOP_CLASS_MISMATCH = 0xA900
#: A part whose Study Instance UID is not the one of ``POST /studies/{study}``. PS3.18 10.5 calls this a
#: conflict and has no code of its own for it: it is a data set that does not match the request (A9xx).
FAILURE_STUDY_UID_MISMATCH = 0xA900
FAILURE_CANNOT_UNDERSTAND = 0xC000
FAILURE_PROCESSING = 0x0110
FAILURE_SOP_CLASS_NOT_SUPPORTED = 0x0122

FAILURE_REASON_OF = {
    ReceiveStatus.CANNOT_UNDERSTAND: FAILURE_CANNOT_UNDERSTAND,
    ReceiveStatus.SOP_CLASS_MISMATCH: FAILURE_SOP_CLASS_MISMATCH,
    ReceiveStatus.SOP_CLASS_NOT_SUPPORTED: FAILURE_SOP_CLASS_NOT_SUPPORTED,
    ReceiveStatus.OUT_OF_RESOURCES: FAILURE_OUT_OF_RESOURCES,
    ReceiveStatus.PROCESSING_FAILURE: FAILURE_PROCESSING,
}

UNDEFINED_LENGTH = 0xFFFFFFFF
MAX_BOUNDARY_LENGTH = 70  # RFC 2046 section 5.1.1
WRITE_BATCH_BYTES = 1 << 20  # request body bytes gathered before one write to the temporary file
READ_CHUNK_BYTES = 1 << 20  # file bytes per chunk of a WADO-RS response
CRLF = b"\r\n"

_receiver_lock = threading.Lock()


class DicomwebError(Exception):
    """A request refused as a whole: becomes an HTTP error with ``status`` and ``message``."""

    def __init__(self, status: HTTPStatus, message: str, *, close: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.close = close  # ask the server to close the connection (the body was not read)


def _http_error(error: DicomwebError, what: str, user: DicomwebUser) -> HTTPException:
    log.warning("%s from %s refused with %d: %s", what, user.name, error.status, error.message)
    headers = {"Connection": "close"} if error.close else None
    return HTTPException(error.status, detail=error.message, headers=headers)


def _settings(request: Request) -> Settings:
    return request.app.state.settings  # type: ignore[no-any-return]


def _receiver(request: Request) -> Receiver:
    """The app's one Receiver, built on first use (so the app can be created without a spool)."""
    state = request.app.state
    with _receiver_lock:
        if getattr(state, "dicomweb_receiver", None) is None:
            settings = _settings(request)
            state.dicomweb_receiver = Receiver(
                Spool(settings.spool_dir, min_free_bytes=settings.spool_min_free_bytes), settings.database_url)
    return state.dicomweb_receiver  # type: ignore[no-any-return]


def _path_uid(value: str, what: str) -> str:
    try:
        return check_uid(value, what)
    except ValueError as exc:
        raise HTTPException(HTTPStatus.BAD_REQUEST, detail=str(exc)) from exc


def _studies_url(request: Request) -> str:
    return f"{str(request.base_url).rstrip('/')}{PREFIX}/studies"


def _dicom_json(payload: Any, status: int = HTTPStatus.OK, headers: dict[str, str] | None = None) -> Response:
    return Response(json.dumps(payload), status_code=status, media_type=DICOM_JSON, headers=headers)


# ---------------------------------------------------------------------------------------------------
# STOW-RS: the request


def stow_boundary(content_type: str | None) -> bytes:
    """The multipart boundary of a STOW-RS request's Content-Type, or DicomwebError: 415 for another
    media type (or a ``type`` other than application/dicom), 400 for a missing or malformed boundary."""
    if not content_type:
        raise DicomwebError(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, "no Content-Type: send multipart/related; "
                            'type="application/dicom"')
    header = Message()
    header["Content-Type"] = content_type
    if header.get_content_type() != MULTIPART_RELATED:
        raise DicomwebError(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, f"Content-Type {header.get_content_type()!r} is "
                            'not supported: send multipart/related; type="application/dicom"')
    part_type = str(header.get_param("type") or APPLICATION_DICOM).strip().lower()
    if part_type != APPLICATION_DICOM:
        raise DicomwebError(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, f"multipart/related of type {part_type[:64]!r} is "
                            "not supported: only application/dicom parts (DICOM Part 10 files)")
    boundary = header.get_param("boundary")
    if not isinstance(boundary, str) or not 1 <= len(boundary) <= MAX_BOUNDARY_LENGTH:
        raise DicomwebError(HTTPStatus.BAD_REQUEST, "Content-Type has no boundary parameter of 1 to "
                            f"{MAX_BOUNDARY_LENGTH} characters")
    try:
        return boundary.encode("ascii")
    except UnicodeEncodeError:
        raise DicomwebError(HTTPStatus.BAD_REQUEST, "the multipart boundary is not ASCII") from None


def declared_length(content_length: str | None, limit: int) -> int | None:
    """The Content-Length, or None without one; DicomwebError 413 above ``limit``, 400 if malformed."""
    if content_length is None:
        return None
    if not content_length.strip().isdigit():
        raise DicomwebError(HTTPStatus.BAD_REQUEST, "Content-Length is not a number")
    length = int(content_length)
    if length > limit:
        raise DicomwebError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                            f"the request body of {length} bytes exceeds the limit of {limit} bytes", close=True)
    return length


async def copy_body(request: Request, target: IO[bytes], limit: int) -> int:
    """Copy the request body to ``target`` and return its size. Stops reading, with DicomwebError 413,
    as soon as more than ``limit`` bytes came; holds at most one write batch in memory."""
    size = 0
    pending = bytearray()
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise DicomwebError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                                    f"the request body exceeds the limit of {limit} bytes", close=True)
            pending += chunk
            if len(pending) >= WRITE_BATCH_BYTES:
                await run_in_threadpool(target.write, bytes(pending))
                pending.clear()
    except ClientDisconnect:
        raise DicomwebError(HTTPStatus.BAD_REQUEST, "the client disconnected before the body ended") from None
    await run_in_threadpool(target.write, bytes(pending))
    target.flush()
    return size


# ---------------------------------------------------------------------------------------------------
# STOW-RS: the multipart body


@dataclass(frozen=True)
class Part:
    """One body part: its headers (names in lower case) and content. ``problem`` says why the part is
    unusable (the body ended inside it, or its framing is broken); the part is then the last one."""

    index: int
    headers: dict[str, str]
    content: bytes
    problem: str | None = None


def _parse_headers(block: bytes) -> dict[str, str]:
    headers: dict[str, str] = {}
    for line in block.decode("latin-1").split("\r\n"):
        name, separator, value = line.partition(":")
        if separator:
            headers[name.strip().lower()] = value.strip()
    return headers


def _first_delimiter(body: bytes | mmap.mmap, delimiter: bytes) -> int:
    """Where the first boundary line starts (at the very start or after a preamble's CRLF)."""
    if body[:len(delimiter)] == delimiter:
        return 0
    position = body.find(CRLF + delimiter)
    if position < 0:
        raise DicomwebError(HTTPStatus.BAD_REQUEST, "the body does not contain the boundary named in Content-Type")
    return position + len(CRLF)


def split_multipart(body: bytes | mmap.mmap, boundary: bytes) -> Iterator[Part]:
    """The parts of a multipart body (RFC 2046), one at a time.

    Raises DicomwebError 400 before yielding anything when the boundary does not occur in ``body``. A body
    that ends inside a part, or whose framing breaks later, ends with a Part that has a ``problem``.
    """
    delimiter = b"--" + boundary
    position = _first_delimiter(body, delimiter) + len(delimiter)
    index = 0
    while True:
        if body[position:position + 2] == b"--":
            return  # the close delimiter
        line_end = body.find(CRLF, position)
        if line_end < 0 or body[position:line_end].strip(b" \t"):
            yield Part(index, {}, b"", "the body ends without its closing boundary" if line_end < 0
                       else "a boundary line is followed by other characters")
            return
        headers_end = body.find(CRLF + CRLF, line_end)
        if headers_end < 0:
            yield Part(index, {}, b"", "the body ends inside the headers of a part")
            return
        headers = _parse_headers(body[line_end + len(CRLF):headers_end])
        start = headers_end + 2 * len(CRLF)
        end = body.find(CRLF + delimiter, start)
        if end < 0:
            yield Part(index, headers, bytes(body[start:]), "the body ends inside this part (truncated)")
            return
        yield Part(index, headers, bytes(body[start:end]))
        position = end + len(CRLF) + len(delimiter)
        index += 1


# ---------------------------------------------------------------------------------------------------
# STOW-RS: one part


@dataclass(frozen=True)
class PartHeader:
    """What a part says about itself, read before it is stored; ``problem`` when it cannot be stored."""

    sop_class_uid: str = ""
    sop_instance_uid: str = ""
    study_uid: str = ""
    problem: str | None = None


def _read_whole(data: bytes) -> Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns (and logs) when it reaches the end too soon
        return pydicom.dcmread(BytesIO(data))


def truncation(data: bytes, header: Dataset) -> str | None:
    """Why the Part 10 file ``data`` (whose header read as ``header``) looks cut short, or None.

    pydicom reads a cut file without complaint: an encapsulated pixel data element that ends early makes
    it drop the data set, a defined-length value that ends early is read short.
    """
    try:
        whole = _read_whole(data)
    except Exception as exc:
        return f"the data set cannot be read to its end ({type(exc).__name__})"
    if len(whole) < len(header):
        return "the data set ends inside an element of undefined length (truncated)"
    last = whole.get_item(list(whole.keys())[-1]) if len(whole) else None
    if isinstance(last, RawDataElement) and last.length != UNDEFINED_LENGTH and last.value is not None \
            and len(last.value) < last.length:
        return f"element {last.tag} holds {len(last.value)} of its {last.length} bytes (truncated)"
    return None


def inspect_part(data: bytes) -> PartHeader:
    """Read the identifying UIDs of a Part 10 file and check that it is whole. Never raises; a problem
    message names the exception type only (an exception's text may quote patient data)."""
    try:
        header = pydicom.dcmread(BytesIO(data), stop_before_pixels=True)
    except Exception as exc:
        return PartHeader(problem=f"not a readable DICOM Part 10 file ({type(exc).__name__})")
    uids = PartHeader(str(header.get("SOPClassUID", "")), str(header.get("SOPInstanceUID", "")),
                      str(header.get("StudyInstanceUID", "")))
    problem = truncation(data, header)
    return uids if problem is None else PartHeader(uids.sop_class_uid, uids.sop_instance_uid, uids.study_uid,
                                                   problem)


@dataclass(frozen=True)
class PartResult:
    """The outcome of one part: stored (or already held) or failed with ``failure_reason``."""

    sop_class_uid: str
    sop_instance_uid: str
    study_uid: str
    failure_reason: int | None = None
    message: str = ""


def _failed(part: Part, header: PartHeader, reason: int, message: str, source: str) -> PartResult:
    log.warning("STOW-RS part %d from %s (instance %s) refused with 0x%04X: %s", part.index + 1, source,
                header.sop_instance_uid or "unknown", reason, message)
    return PartResult(header.sop_class_uid, header.sop_instance_uid, header.study_uid, reason, message)


def store_part(part: Part, receiver: Receiver, *, source: str, study_uid: str | None) -> PartResult:
    """Check one part and hand it to ``receiver``; ``study_uid``: the study the request is addressed to."""
    media_type = part.headers.get("content-type", APPLICATION_DICOM).split(";")[0].strip().lower()
    if part.problem is not None:
        return _failed(part, inspect_part(part.content) if part.content else PartHeader(),
                       FAILURE_CANNOT_UNDERSTAND, part.problem, source)
    if media_type != APPLICATION_DICOM:
        return _failed(part, PartHeader(), FAILURE_CANNOT_UNDERSTAND,
                       f"part of type {media_type[:64]!r}, not application/dicom", source)
    header = inspect_part(part.content)
    if header.problem is not None:
        return _failed(part, header, FAILURE_CANNOT_UNDERSTAND, header.problem, source)
    if study_uid is not None and header.study_uid != study_uid:
        return _failed(part, header, FAILURE_STUDY_UID_MISMATCH,
                       f"study UID mismatch: the instance is of study {header.study_uid}, not {study_uid}", source)
    outcome = receiver.receive(part.content, source=source)
    ids = (outcome.sop_class_uid or header.sop_class_uid, outcome.sop_instance_uid or header.sop_instance_uid,
           outcome.study_uid or header.study_uid)
    if outcome.status.succeeded:
        return PartResult(*ids)
    return PartResult(*ids, failure_reason=FAILURE_REASON_OF[outcome.status], message=outcome.message)


def store_body(body: IO[bytes], boundary: bytes, receiver: Receiver, *, source: str,
               study_uid: str | None) -> list[PartResult]:
    """Store every part of the multipart ``body`` (a file) in order. Blocking: run it in a thread."""
    with mmap.mmap(body.fileno(), 0, access=mmap.ACCESS_READ) as view:
        results = [store_part(part, receiver, source=source, study_uid=study_uid)
                   for part in split_multipart(view, boundary)]
    if not results:
        raise DicomwebError(HTTPStatus.BAD_REQUEST, "the body holds no parts")
    return results


# ---------------------------------------------------------------------------------------------------
# STOW-RS: the response


def _reference(result: PartResult, studies_url: str, series_url: dict[str, str]) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = result.sop_class_uid
    item.ReferencedSOPInstanceUID = result.sop_instance_uid
    if result.failure_reason is None:
        item.RetrieveURL = f"{studies_url}/{result.study_uid}{series_url.get(result.sop_instance_uid, '')}"
    else:
        item.FailureReason = result.failure_reason
    return item


def store_response(results: list[PartResult], studies_url: str,
                   series_of: dict[str, str] | None = None) -> tuple[HTTPStatus, dict[str, Any]]:
    """The HTTP status and Store Instances Response Module (DICOM JSON) for ``results``: 200 when all
    were stored, 202 when some failed, 409 when none was stored. ``series_of`` maps stored SOP Instance
    UIDs to their Series Instance UIDs, for instance-level RetrieveURLs."""
    stored = [r for r in results if r.failure_reason is None]
    failed = [r for r in results if r.failure_reason is not None]
    suffix = {sop: f"/series/{series}/instances/{sop}" for sop, series in (series_of or {}).items()}
    response = Dataset()
    studies = {r.study_uid for r in stored}
    if len(studies) == 1:
        response.RetrieveURL = f"{studies_url}/{studies.pop()}"
    if stored:
        response.ReferencedSOPSequence = [_reference(r, studies_url, suffix) for r in stored]
    if failed:
        response.FailedSOPSequence = [_reference(r, studies_url, suffix) for r in failed]
    status = HTTPStatus.OK if not failed else HTTPStatus.ACCEPTED if stored else HTTPStatus.CONFLICT
    return status, response.to_json_dict()


def _series_of(database_url: str, sop_instance_uids: list[str]) -> dict[str, str]:
    if not sop_instance_uids:
        return {}
    with session_scope(database_url) as session:
        rows = session.execute(select(Instance.sop_instance_uid, Series.series_uid).join(Series)
                               .where(Instance.sop_instance_uid.in_(sop_instance_uids))).all()
    return {sop: series for sop, series in rows}


async def _store(request: Request, user: DicomwebUser, study_uid: str | None) -> Response:
    settings = _settings(request)
    source = f"STOW:{user.name}"
    try:
        boundary = stow_boundary(request.headers.get("content-type"))
        declared_length(request.headers.get("content-length"), settings.dicomweb_max_upload_bytes)
        receiver = _receiver(request)
        with tempfile.TemporaryFile(dir=settings.spool_dir, prefix=".stow-") as body:
            if await copy_body(request, body, settings.dicomweb_max_upload_bytes) == 0:
                raise DicomwebError(HTTPStatus.BAD_REQUEST, "the body is empty")
            results = await run_in_threadpool(store_body, body, boundary, receiver, source=source,
                                              study_uid=study_uid)
    except DicomwebError as error:
        raise _http_error(error, "STOW-RS request", user) from None
    stored = [r.sop_instance_uid for r in results if r.failure_reason is None]
    series_of = await run_in_threadpool(_series_of, settings.database_url, stored)
    status, payload = store_response(results, _studies_url(request), series_of)
    log.info("STOW-RS from %s: %d instance(s) stored, %d failed (HTTP %d)", user.name, len(stored),
             len(results) - len(stored), status)
    return _dicom_json(payload, status)


@router.post("/studies", summary="STOW-RS: store instances")
async def store_instances(request: Request, user: User) -> Response:
    return await _store(request, user, None)


@router.post("/studies/{study}", summary="STOW-RS: store instances of one study")
async def store_study_instances(study: str, request: Request, user: User) -> Response:
    return await _store(request, user, _path_uid(study, "StudyInstanceUID"))


# ---------------------------------------------------------------------------------------------------
# What is held: the received instances and the drafted SRs of a study


@dataclass(frozen=True)
class InstanceEntry:
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str
    path: str


@dataclass
class SeriesEntry:
    series_uid: str
    modality: str
    description: str
    body_part: str
    instances: list[InstanceEntry] = field(default_factory=list)


def _draft_series(draft: Draft) -> SeriesEntry | None:
    """The SR of ``draft`` as a one-instance series, read from the SR file's header; None if unreadable."""
    try:
        sr = pydicom.dcmread(draft.sr_path, stop_before_pixels=True,
                             specific_tags=["SOPClassUID", "SeriesDescription", "Modality"])
    except (OSError, InvalidDicomError) as exc:
        log.warning("drafted SR %s cannot be read (%s); left out of DICOMweb answers", draft.sr_sop_instance_uid,
                    type(exc).__name__)
        return None
    instance = InstanceEntry(str(sr.get("SOPClassUID", "")), draft.sr_sop_instance_uid,
                             str(sr.file_meta.get("TransferSyntaxUID", "")), draft.sr_path)
    return SeriesEntry(draft.sr_series_uid, str(sr.get("Modality", "SR")), str(sr.get("SeriesDescription", "")),
                       "", [instance])


def study_series(session: Session, study: Study) -> list[SeriesEntry]:
    """Every series of ``study`` with its instances: the received ones, then the drafted SRs (an SR the
    PACS sent back, already among the received instances, is listed once)."""
    series: dict[str, SeriesEntry] = {}
    rows = session.execute(select(Instance, Series).join(Series).where(Instance.study_id == study.id)
                           .order_by(Series.id, Instance.id)).all()
    for instance, row in rows:
        entry = series.setdefault(row.series_uid, SeriesEntry(row.series_uid, row.modality,
                                                              row.series_description, row.body_part))
        entry.instances.append(InstanceEntry(instance.sop_class_uid, instance.sop_instance_uid,
                                             instance.transfer_syntax_uid, instance.spool_path))
    held = {i.sop_instance_uid for s in series.values() for i in s.instances}
    drafts = session.scalars(select(Draft).where(Draft.study_id == study.id).order_by(Draft.id)).all()
    for draft in drafts:
        if draft.sr_sop_instance_uid in held:
            continue
        drafted = _draft_series(draft)
        if drafted is None:
            continue
        entry = series.setdefault(drafted.series_uid, SeriesEntry(drafted.series_uid, drafted.modality,
                                                                  drafted.description, drafted.body_part))
        entry.instances.extend(drafted.instances)
    return list(series.values())


def _find_study(session: Session, study_uid: str) -> Study | None:
    return session.scalar(select(Study).where(Study.study_uid == study_uid))


# ---------------------------------------------------------------------------------------------------
# QIDO-RS: matching


CONTROL_PARAMETERS = frozenset({"limit", "offset", "includefield", "fuzzymatching"})
_DATE_RANGE = re.compile(r"^(\d{8})?-(\d{8})?$")
_UNSAFE_IN_HEADER = re.compile(r"[^\w.-]")


@dataclass(frozen=True)
class Match:
    """One matching key's value (PS3.4 C.2.2.2): UID list, date range, wildcard or single value."""

    keyword: str
    values: tuple[str, ...]
    kind: str  # "single", "list", "range" or "wildcard"

    @classmethod
    def parse(cls, keyword: str, value: str) -> Match:
        vr = dictionary_VR(keyword)
        if vr == "UI":
            return cls(keyword, tuple(v.strip() for v in re.split(r"[,\\]", value) if v.strip()), "list")
        if vr == "DA" and (date_range := _DATE_RANGE.match(value)) and value != "-":
            return cls(keyword, (date_range.group(1) or "", date_range.group(2) or ""), "range")
        if "*" in value or "?" in value:
            return cls(keyword, (value,), "wildcard")
        return cls(keyword, (value,), "single")

    def _pattern(self) -> re.Pattern[str]:
        return re.compile("".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in self.values[0]),
                          re.DOTALL)

    def test(self, actual: str) -> bool:
        """Whether the attribute value ``actual`` matches."""
        if self.kind == "list":
            return actual in self.values
        if self.kind == "range":
            low, high = self.values
            return bool(actual) and (not low or actual >= low) and (not high or actual <= high)
        if self.kind == "wildcard":
            return self._pattern().fullmatch(actual) is not None
        return actual == self.values[0]

    def condition(self, column: Any) -> ColumnElement[bool]:
        """The same test as an SQL condition on ``column``."""
        if self.kind == "list":
            return column.in_(self.values)  # type: ignore[no-any-return]
        if self.kind == "range":
            low, high = self.values
            return and_(column != "", *([column >= low] if low else []), *([column <= high] if high else []))
        if self.kind == "wildcard":
            escaped = self.values[0].replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            return column.like(escaped.replace("*", "%").replace("?", "_"), escape="\\")  # type: ignore[no-any-return]
        return column == self.values[0]  # type: ignore[no-any-return]


def _keyword(key: str) -> str | None:
    """The DICOM keyword of a query key given as a keyword or as 8 hex digits, or None if unknown."""
    if re.fullmatch(r"[0-9A-Fa-f]{8}", key):
        return keyword_for_tag(int(key, 16)) or None
    try:
        dictionary_VR(key)
    except KeyError:
        return None
    return key


@dataclass
class Query:
    """The parsed query string of a QIDO-RS request."""

    matches: dict[str, Match]
    limit: int | None
    offset: int
    ignored: list[str]

    def warning_header(self) -> dict[str, str]:
        if not self.ignored:
            return {}
        keys = ", ".join(sorted(set(self.ignored)))[:200]
        return {"Warning": f'299 predraft "The following query parameters are not supported and were ignored: '
                           f'{keys}"'}


def _count(name: str, value: str | None, default: int | None) -> int | None:
    if value is None:
        return default
    if not value.isdigit():
        raise HTTPException(HTTPStatus.BAD_REQUEST, detail=f"{name} must be a non-negative integer")
    return int(value)


def parse_query(request: Request, supported: frozenset[str]) -> Query:
    """The matching keys, paging and ignored keys of ``request``; 400 for malformed limit/offset."""
    matches: dict[str, Match] = {}
    ignored: list[str] = []
    for key, value in request.query_params.multi_items():
        if key.lower() in CONTROL_PARAMETERS:
            continue
        keyword = _keyword(key)
        if keyword not in supported:
            ignored.append(_UNSAFE_IN_HEADER.sub("?", key[:64]))  # it is echoed in the Warning header
        elif value not in ("", "*"):  # an empty value or a lone * is universal matching
            matches[keyword] = Match.parse(keyword, value)
    params = request.query_params
    return Query(matches, _count("limit", params.get("limit"), None), _count("offset", params.get("offset"), 0) or 0,
                 ignored)


def _page(items: list[Any], query: Query) -> list[Any]:
    end = None if query.limit is None else query.offset + query.limit
    return items[query.offset:end]


# ---------------------------------------------------------------------------------------------------
# QIDO-RS: results


STUDY_KEYS = {"StudyInstanceUID": Study.study_uid, "PatientID": Study.patient_id, "PatientName": Study.patient_name,
              "AccessionNumber": Study.accession_number, "StudyDate": Study.study_date,
              "StudyDescription": Study.study_description}
SERIES_KEYS = frozenset({"SeriesInstanceUID", "Modality", "SeriesDescription", "BodyPartExamined"})
INSTANCE_KEYS = frozenset({"SOPInstanceUID", "SOPClassUID"})


def _modality_condition(match: Match) -> ColumnElement[bool]:
    received = exists(select(Series.id).where(Series.study_id == Study.id, match.condition(Series.modality)))
    if not match.test("SR"):
        return received
    return or_(received, exists(select(Draft.id).where(Draft.study_id == Study.id)))


def _study_json(study: Study, series: list[SeriesEntry], studies_url: str) -> dict[str, Any]:
    ds = Dataset()
    ds.StudyDate = study.study_date
    ds.AccessionNumber = study.accession_number
    ds.ModalitiesInStudy = sorted({s.modality for s in series if s.modality})
    ds.StudyDescription = study.study_description
    ds.PatientName = study.patient_name
    ds.PatientID = study.patient_id
    ds.StudyInstanceUID = study.study_uid
    ds.NumberOfStudyRelatedSeries = len(series)
    ds.NumberOfStudyRelatedInstances = sum(len(s.instances) for s in series)
    ds.RetrieveURL = f"{studies_url}/{study.study_uid}"
    return ds.to_json_dict()


def _series_json(study_uid: str, series: SeriesEntry, studies_url: str) -> dict[str, Any]:
    ds = Dataset()
    ds.Modality = series.modality
    ds.SeriesDescription = series.description
    ds.BodyPartExamined = series.body_part
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series.series_uid
    ds.NumberOfSeriesRelatedInstances = len(series.instances)
    ds.RetrieveURL = f"{studies_url}/{study_uid}/series/{series.series_uid}"
    return ds.to_json_dict()


def _instance_json(study_uid: str, series_uid: str, instance: InstanceEntry, studies_url: str) -> dict[str, Any]:
    ds = Dataset()
    ds.SOPClassUID = instance.sop_class_uid
    ds.SOPInstanceUID = instance.sop_instance_uid
    ds.AvailableTransferSyntaxUID = instance.transfer_syntax_uid
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.RetrieveURL = f"{studies_url}/{study_uid}/series/{series_uid}/instances/{instance.sop_instance_uid}"
    return ds.to_json_dict()


def _search_answer(results: list[dict[str, Any]], query: Query) -> Response:
    if not results:
        return Response(status_code=HTTPStatus.NO_CONTENT, headers=query.warning_header())
    return _dicom_json(results, headers=query.warning_header())


@router.get("/studies", summary="QIDO-RS: search for studies")
def search_studies(request: Request) -> Response:
    query = parse_query(request, frozenset({*STUDY_KEYS, "ModalitiesInStudy"}))
    conditions = [match.condition(STUDY_KEYS[keyword]) for keyword, match in query.matches.items()
                  if keyword in STUDY_KEYS]
    if (modality := query.matches.get("ModalitiesInStudy")) is not None:
        conditions.append(_modality_condition(modality))
    statement = select(Study).where(*conditions).order_by(Study.id).offset(query.offset)
    if query.limit is not None:
        statement = statement.limit(query.limit)
    studies_url = _studies_url(request)
    with session_scope(_settings(request).database_url) as session:
        results = [_study_json(study, study_series(session, study), studies_url)
                   for study in session.scalars(statement).all()]
    return _search_answer(results, query)


@router.get("/studies/{study}/series", summary="QIDO-RS: search for the series of a study")
def search_series(study: str, request: Request) -> Response:
    study_uid = _path_uid(study, "StudyInstanceUID")
    query = parse_query(request, SERIES_KEYS)
    with session_scope(_settings(request).database_url) as session:
        row = _find_study(session, study_uid)
        series = study_series(session, row) if row is not None else []
    attributes = {"SeriesInstanceUID": lambda s: s.series_uid, "Modality": lambda s: s.modality,
                  "SeriesDescription": lambda s: s.description, "BodyPartExamined": lambda s: s.body_part}
    matching = [s for s in series if all(m.test(attributes[k](s)) for k, m in query.matches.items())]
    studies_url = _studies_url(request)
    return _search_answer([_series_json(study_uid, s, studies_url) for s in _page(matching, query)], query)


@router.get("/studies/{study}/series/{series}/instances", summary="QIDO-RS: search for the instances of a series")
def search_instances(study: str, series: str, request: Request) -> Response:
    study_uid, series_uid = _path_uid(study, "StudyInstanceUID"), _path_uid(series, "SeriesInstanceUID")
    query = parse_query(request, INSTANCE_KEYS)
    with session_scope(_settings(request).database_url) as session:
        row = _find_study(session, study_uid)
        entries = study_series(session, row) if row is not None else []
    instances = [i for s in entries if s.series_uid == series_uid for i in s.instances]
    attributes = {"SOPInstanceUID": lambda i: i.sop_instance_uid, "SOPClassUID": lambda i: i.sop_class_uid}
    matching = [i for i in instances if all(m.test(attributes[k](i)) for k, m in query.matches.items())]
    studies_url = _studies_url(request)
    return _search_answer([_instance_json(study_uid, series_uid, i, studies_url) for i in _page(matching, query)],
                          query)


# ---------------------------------------------------------------------------------------------------
# WADO-RS


def accepts_multipart_dicom(accept: str | None) -> bool:
    """Whether an Accept header allows ``multipart/related; type="application/dicom"`` (any transfer
    syntax is served as stored)."""
    if not accept or not accept.strip():
        return True
    for media_range in accept.split(","):
        header = Message()
        header["Content-Type"] = media_range.strip()
        media_type = media_range.split(";")[0].strip().lower()
        part_type = str(header.get_param("type") or APPLICATION_DICOM).lower()
        if media_type in ("*/*", "multipart/*"):
            return True
        if media_type == MULTIPART_RELATED and part_type in (APPLICATION_DICOM, "application/*", "*/*"):
            return True
    return False


def _selected(request: Request, study: str, series: str | None, sop: str | None) -> list[InstanceEntry]:
    """The held instances under a WADO-RS path whose files exist; 404 when there are none."""
    study_uid = _path_uid(study, "StudyInstanceUID")
    series_uid = None if series is None else _path_uid(series, "SeriesInstanceUID")
    sop_uid = None if sop is None else _path_uid(sop, "SOPInstanceUID")
    with session_scope(_settings(request).database_url) as session:
        row = _find_study(session, study_uid)
        entries = study_series(session, row) if row is not None else []
    selected = [i for s in entries if series_uid in (None, s.series_uid) for i in s.instances
                if sop_uid in (None, i.sop_instance_uid)]
    present = [i for i in selected if Path(i.path).is_file()]
    for missing in (i for i in selected if i not in present):
        log.error("instance %s is recorded but its file is missing from the spool", missing.sop_instance_uid)
    if not present:
        raise HTTPException(HTTPStatus.NOT_FOUND, detail="no such instances are held")
    return present


def _multipart_stream(instances: list[InstanceEntry], boundary: str) -> Iterator[bytes]:
    for instance in instances:
        yield (f"--{boundary}\r\nContent-Type: {APPLICATION_DICOM}; transfer-syntax={instance.transfer_syntax_uid}"
               "\r\n\r\n").encode("ascii")
        with open(instance.path, "rb") as stream:
            while chunk := stream.read(READ_CHUNK_BYTES):
                yield chunk
        yield CRLF
    yield f"--{boundary}--\r\n".encode("ascii")


def _retrieve(request: Request, study: str, series: str | None = None, sop: str | None = None) -> Response:
    if not accepts_multipart_dicom(request.headers.get("accept")):
        raise HTTPException(HTTPStatus.NOT_ACCEPTABLE,
                            detail='only multipart/related; type="application/dicom" is offered')
    instances = _selected(request, study, series, sop)
    boundary = uuid.uuid4().hex
    return StreamingResponse(_multipart_stream(instances, boundary),
                             media_type=f'{MULTIPART_RELATED}; type="{APPLICATION_DICOM}"; boundary={boundary}')


def _metadata(request: Request, study: str, series: str | None = None, sop: str | None = None) -> Response:
    datasets = []
    for instance in _selected(request, study, series, sop):
        ds = pydicom.dcmread(instance.path, stop_before_pixels=True)
        datasets.append(ds.to_json_dict())
    return _dicom_json(datasets)


@router.get("/studies/{study}", summary="WADO-RS: retrieve a study")
def retrieve_study(study: str, request: Request) -> Response:
    return _retrieve(request, study)


@router.get("/studies/{study}/series/{series}", summary="WADO-RS: retrieve a series")
def retrieve_series(study: str, series: str, request: Request) -> Response:
    return _retrieve(request, study, series)


@router.get("/studies/{study}/series/{series}/instances/{sop}", summary="WADO-RS: retrieve an instance")
def retrieve_instance(study: str, series: str, sop: str, request: Request) -> Response:
    return _retrieve(request, study, series, sop)


@router.get("/studies/{study}/metadata", summary="WADO-RS: the metadata of a study")
def study_metadata(study: str, request: Request) -> Response:
    return _metadata(request, study)


@router.get("/studies/{study}/series/{series}/metadata", summary="WADO-RS: the metadata of a series")
def series_metadata(study: str, series: str, request: Request) -> Response:
    return _metadata(request, study, series)


@router.get("/studies/{study}/series/{series}/instances/{sop}/metadata",
            summary="WADO-RS: the metadata of an instance")
def instance_metadata(study: str, series: str, sop: str, request: Request) -> Response:
    return _metadata(request, study, series, sop)
