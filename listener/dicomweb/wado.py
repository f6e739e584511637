"""WADO-RS: the stored files of a study, series or instance, byte for byte as they were received (no
transcoding: each part's Content-Type names its transfer syntax), and ``.../metadata``: their headers
as DICOM JSON."""

from __future__ import annotations

import logging
import uuid
from email.message import Message
from http import HTTPStatus
from pathlib import Path

import pydicom
from fastapi import APIRouter, HTTPException, Request, Response
from fastapi.responses import StreamingResponse

from listener.dicomweb.common import (
    APPLICATION_DICOM,
    MULTIPART_RELATED,
    dicom_json,
    path_uid,
    settings_of,
)
from listener.dicomweb.holdings import InstanceEntry, find_study, study_series
from listener.dicomweb.multipart import stream_parts
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


def _metadata(request: Request, study: str, series: str | None = None, sop: str | None = None) -> Response:
    datasets = []
    for instance in _selected(request, study, series, sop):
        ds = pydicom.dcmread(instance.path, stop_before_pixels=True)
        datasets.append(ds.to_json_dict())
    return dicom_json(datasets)


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
