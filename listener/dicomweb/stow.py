"""STOW-RS: ``POST /dicomweb/studies[/{study}]``, each part handed to :class:`predraft.listener.receive.Receiver`
(which checks the data set, truncation included, then spools and records it), and the Store Instances
Response Module (DICOM JSON) that answers: 200 when all were stored, 202 when some failed, 409 when
none was."""

from __future__ import annotations

import logging
import mmap
import tempfile
import threading
from dataclasses import dataclass
from http import HTTPStatus
from io import BytesIO
from typing import IO, Annotated, Any

import pydicom
from fastapi import APIRouter, Depends, Request, Response
from pydicom.dataset import Dataset
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from predraft.core import metrics
from predraft.core.db import session_scope
from predraft.core.schema import Instance, Series
from predraft.listener.dicomweb.auth import DicomwebUser, authenticate
from predraft.listener.dicomweb.common import (
    APPLICATION_DICOM,
    DicomwebError,
    dicom_json,
    http_error,
    path_uid,
    settings_of,
    studies_url_of,
)
from predraft.listener.dicomweb.multipart import Part, copy_body, declared_length, split_multipart, stow_boundary
from predraft.listener.dicomweb.status import FAILURE_CANNOT_UNDERSTAND, FAILURE_REASON_OF, FAILURE_STUDY_UID_MISMATCH
from predraft.listener.ingest import received_uid
from predraft.listener.receive import STOW, Receiver

log = logging.getLogger(__name__)
router = APIRouter()
User = Annotated[DicomwebUser, Depends(authenticate)]

_receiver_lock = threading.Lock()
UPLOAD_BYTES = "upload_bytes"  # the INPUTS_REFUSED bound of a body over dicomweb_max_upload_bytes


def _receiver(request: Request) -> Receiver:
    """The app's one Receiver, built on first use (so the app can be created without a spool)."""
    state = request.app.state
    with _receiver_lock:
        if getattr(state, "dicomweb_receiver", None) is None:
            state.dicomweb_receiver = Receiver.from_settings(settings_of(request))
    return state.dicomweb_receiver


@dataclass(frozen=True)
class PartHeader:
    """The UIDs a part's header gives, read before it is stored (empty where it cannot be read)."""

    sop_class_uid: str = ""
    sop_instance_uid: str = ""
    study_uid: str = ""


def inspect_part(data: bytes) -> PartHeader:
    """The identifying UIDs of a Part 10 file, read from its header (each "" where it is missing or not a
    valid UID); whether the file is whole and can be stored is for the Receiver to say. Never raises.
    Call it only on data within the Receiver's bounds (:meth:`Receiver.bounds_refusal`): pydicom inflates
    a Deflated data set whole."""
    try:
        header = pydicom.dcmread(BytesIO(data), stop_before_pixels=True)
        return PartHeader(
            *(_valid_uid(header, keyword) for keyword in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID"))
        )
    except Exception:  # whatever pydicom trips on, the part's UIDs are unknown
        return PartHeader()


def _valid_uid(header: Dataset, keyword: str) -> str:
    try:
        return received_uid(header, keyword)
    except ValueError:
        return ""


@dataclass(frozen=True)
class PartResult:
    """The outcome of one part: stored (or already held) or failed with ``failure_reason``."""

    sop_class_uid: str
    sop_instance_uid: str
    study_uid: str
    failure_reason: int | None = None
    message: str = ""


def _failed(part: Part, header: PartHeader, reason: int, message: str, source: str) -> PartResult:
    log.warning(
        "STOW-RS part %d from %s (instance %s) refused with 0x%04X: %s",
        part.index + 1,
        source,
        header.sop_instance_uid or "unknown",
        reason,
        message,
    )
    outcome = "study_uid_mismatch" if reason == FAILURE_STUDY_UID_MISMATCH else "cannot_understand"
    metrics.record_received("stow", outcome, 0)
    return PartResult(header.sop_class_uid, header.sop_instance_uid, header.study_uid, reason, message)


def store_part(part: Part, receiver: Receiver, *, source: str, study_uid: str | None) -> PartResult:
    """Check one part's framing, media type and study, then hand it to ``receiver``; ``study_uid``: the
    study the request is addressed to."""
    media_type = part.headers.get("content-type", APPLICATION_DICOM).split(";")[0].strip().lower()
    if (refused := receiver.bounds_refusal(part.content, source=source, transport=STOW)) is not None:
        return _failed(part, PartHeader(), FAILURE_CANNOT_UNDERSTAND, refused.message, source)
    if part.problem is not None:
        return _failed(part, inspect_part(part.content), FAILURE_CANNOT_UNDERSTAND, part.problem, source)
    if media_type != APPLICATION_DICOM:
        return _failed(
            part,
            PartHeader(),
            FAILURE_CANNOT_UNDERSTAND,
            f"part of type {media_type[:64]!r}, not application/dicom",
            source,
        )
    header = inspect_part(part.content)
    if study_uid is not None and header.study_uid and header.study_uid != study_uid:
        return _failed(
            part,
            header,
            FAILURE_STUDY_UID_MISMATCH,
            f"study UID mismatch: the instance is of study {header.study_uid}, not {study_uid}",
            source,
        )
    outcome = receiver.receive(part.content, source=source, transport=STOW)  # refuses what it cannot read
    metrics.record_received("stow", outcome.status.value, outcome.size)
    ids = (
        outcome.sop_class_uid or header.sop_class_uid,
        outcome.sop_instance_uid or header.sop_instance_uid,
        outcome.study_uid or header.study_uid,
    )
    if outcome.status.succeeded:
        return PartResult(*ids)
    return PartResult(*ids, failure_reason=FAILURE_REASON_OF[outcome.status], message=outcome.message)


def store_body(
    body: IO[bytes], boundary: bytes, receiver: Receiver, *, source: str, study_uid: str | None
) -> list[PartResult]:
    """Store every part of the multipart ``body`` (a file) in order. Blocking: run it in a thread."""
    with mmap.mmap(body.fileno(), 0, access=mmap.ACCESS_READ) as view:
        results = [
            store_part(part, receiver, source=source, study_uid=study_uid) for part in split_multipart(view, boundary)
        ]
    if not results:
        raise DicomwebError(HTTPStatus.BAD_REQUEST, "the body holds no parts")
    return results


def _reference(result: PartResult, studies_url: str, series_url: dict[str, str]) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = result.sop_class_uid
    item.ReferencedSOPInstanceUID = result.sop_instance_uid
    if result.failure_reason is None:
        item.RetrieveURL = f"{studies_url}/{result.study_uid}{series_url.get(result.sop_instance_uid, '')}"
    else:
        item.FailureReason = result.failure_reason
    return item


def store_response(
    results: list[PartResult], studies_url: str, series_of: dict[str, str] | None = None
) -> tuple[HTTPStatus, dict[str, Any]]:
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
        rows = session.execute(
            select(Instance.sop_instance_uid, Series.series_uid)
            .join(Series)
            .where(Instance.sop_instance_uid.in_(sop_instance_uids))
        ).all()
    return {sop: series for sop, series in rows}


async def _store(request: Request, user: DicomwebUser, study_uid: str | None) -> Response:
    settings = settings_of(request)
    source = f"STOW:{user.name}"
    try:
        boundary = stow_boundary(request.headers.get("content-type"))
        declared_length(request.headers.get("content-length"), settings.dicomweb.max_upload_bytes)
        receiver = _receiver(request)
        with tempfile.TemporaryFile(dir=settings.spool_dir, prefix=".stow-") as body:
            if await copy_body(request, body, settings.dicomweb.max_upload_bytes) == 0:
                raise DicomwebError(HTTPStatus.BAD_REQUEST, "the body is empty")
            results = await run_in_threadpool(store_body, body, boundary, receiver, source=source, study_uid=study_uid)
    except DicomwebError as error:
        if error.status == HTTPStatus.REQUEST_ENTITY_TOO_LARGE:
            metrics.INPUTS_REFUSED.labels(transport=STOW, bound=UPLOAD_BYTES).inc()
        raise http_error(error, "STOW-RS request", user) from None
    stored = [r.sop_instance_uid for r in results if r.failure_reason is None]
    series_of = await run_in_threadpool(_series_of, settings.database_url, stored)
    status, payload = store_response(results, studies_url_of(request), series_of)
    log.info(
        "STOW-RS from %s: %d instance(s) stored, %d failed (HTTP %d)",
        user.name,
        len(stored),
        len(results) - len(stored),
        status,
    )
    return dicom_json(payload, status)


@router.post("/studies", summary="STOW-RS: store instances")
async def store_instances(request: Request, user: User) -> Response:
    return await _store(request, user, None)


@router.post("/studies/{study}", summary="STOW-RS: store instances of one study")
async def store_study_instances(study: str, request: Request, user: User) -> Response:
    return await _store(request, user, path_uid(study, "StudyInstanceUID"))
