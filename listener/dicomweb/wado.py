"""WADO-RS: the stored files of a study, series or instance, byte for byte as they were received (no
transcoding: each part's Content-Type names its transfer syntax), and ``.../metadata``: their headers
as DICOM JSON.

``.../metadata`` holds each stored file to the bounds a received one is held to (:mod:`listener.bounds`)
before pydicom reads it, and never fails for one file: an instance that crosses a bound (stored before
the bounds existed) or cannot be read is left out and named in a ``Warning: 299`` header; when every
instance asked for is left out the answer is 422 with the reason. Each bound crossed counts in
``predraft_inputs_refused{transport="wado"}``."""

from __future__ import annotations

import logging
import uuid
from email.message import Message
from http import HTTPStatus
from io import BytesIO
from pathlib import Path
from typing import Any

import pydicom
from fastapi import APIRouter, HTTPException, Request, Response
from fastapi.responses import StreamingResponse

from listener.bounds import Bounds
from listener.dicomweb.common import (
    APPLICATION_DICOM,
    MULTIPART_RELATED,
    dicom_json,
    path_uid,
    settings_of,
)
from listener.dicomweb.holdings import InstanceEntry, find_study, study_series
from listener.dicomweb.multipart import stream_parts
from predraft import metrics
from predraft.db import session_scope

log = logging.getLogger(__name__)
router = APIRouter()


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
    study_uid = path_uid(study, "StudyInstanceUID")
    series_uid = None if series is None else path_uid(series, "SeriesInstanceUID")
    sop_uid = None if sop is None else path_uid(sop, "SOPInstanceUID")
    with session_scope(settings_of(request).database_url) as session:
        row = find_study(session, study_uid)
        entries = study_series(session, row) if row is not None else []
    selected = [i for s in entries if series_uid in (None, s.series_uid) for i in s.instances
                if sop_uid in (None, i.sop_instance_uid)]
    present = [i for i in selected if Path(i.path).is_file()]
    for missing in (i for i in selected if i not in present):
        log.error("instance %s is recorded but its file is missing from the spool", missing.sop_instance_uid)
    if not present:
        raise HTTPException(HTTPStatus.NOT_FOUND, detail="no such instances are held")
    return present


def _retrieve(request: Request, study: str, series: str | None = None, sop: str | None = None) -> Response:
    if not accepts_multipart_dicom(request.headers.get("accept")):
        raise HTTPException(HTTPStatus.NOT_ACCEPTABLE,
                            detail='only multipart/related; type="application/dicom" is offered')
    instances = _selected(request, study, series, sop)
    boundary = uuid.uuid4().hex
    parts = ((f"{APPLICATION_DICOM}; transfer-syntax={i.transfer_syntax_uid}", i.path) for i in instances)
    return StreamingResponse(stream_parts(parts, boundary),
                             media_type=f'{MULTIPART_RELATED}; type="{APPLICATION_DICOM}"; boundary={boundary}')


class LeftOut(Exception):
    """An instance whose metadata cannot be given: ``reason`` says why (UIDs and bounds, no patient data)."""

    def __init__(self, sop_instance_uid: str, reason: str) -> None:
        super().__init__(f"instance {sop_instance_uid}: {reason}")
        self.sop_instance_uid = sop_instance_uid
        self.reason = reason


def metadata_of(instance: InstanceEntry, bounds: Bounds) -> dict[str, Any]:
    """The DICOM JSON of ``instance``'s header; LeftOut when its file crosses ``bounds`` (counted) or cannot
    be read or rendered (pydicom's own errors, a RecursionError included)."""
    path = Path(instance.path)
    try:
        crossed = bounds.size_crossed(path.stat().st_size)
        data = path.read_bytes() if crossed is None else b""
    except OSError as exc:
        raise LeftOut(instance.sop_instance_uid, f"the file cannot be read ({exc.strerror})") from None
    crossed = crossed or bounds.check(data)
    if crossed is not None:
        metrics.INPUTS_REFUSED.labels(transport="wado", bound=crossed.bound).inc()
        raise LeftOut(instance.sop_instance_uid, crossed.message)
    try:
        return pydicom.dcmread(BytesIO(data), stop_before_pixels=True).to_json_dict()  # type: ignore[no-any-return]
    except Exception as exc:
        raise LeftOut(instance.sop_instance_uid, f"the file cannot be read ({type(exc).__name__})") from None


def _left_out_warning(left_out: list[LeftOut]) -> dict[str, str]:
    uids = ", ".join(item.sop_instance_uid for item in left_out)[:400]
    return {"Warning": f'299 predraft "{len(left_out)} instance(s) left out, their metadata cannot be given: '
                       f'{uids}"'}


def _metadata(request: Request, study: str, series: str | None = None, sop: str | None = None) -> Response:
    settings = settings_of(request)
    bounds = Bounds(settings.max_dataset_bytes, settings.max_sequence_depth)
    datasets: list[dict[str, Any]] = []
    left_out: list[LeftOut] = []
    for instance in _selected(request, study, series, sop):
        try:
            datasets.append(metadata_of(instance, bounds))
        except LeftOut as unreadable:
            log.error("metadata of instance %s left out: %s", unreadable.sop_instance_uid, unreadable.reason)
            left_out.append(unreadable)
    if left_out and not datasets:
        reasons = "; ".join(str(item) for item in left_out)
        raise HTTPException(HTTPStatus.UNPROCESSABLE_ENTITY, detail=f"no metadata can be given: {reasons}"[:1000])
    return dicom_json(datasets, headers=_left_out_warning(left_out) if left_out else None)


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
