"""WADO-RS: the stored files of a study, series or instance, byte for byte as they were received (no
transcoding: each part's Content-Type names its transfer syntax), and ``.../metadata``: their headers
as DICOM JSON.

``.../metadata`` holds each stored file to the bounds a received one is held to (:mod:`predraft.listener.bounds`)
before pydicom reads it (its size first, then a walk of the file mapped read-only, never read whole; pydicom
then reads its header only, and what it read is measured again), and never fails for one file: an instance
that crosses a bound (stored before the bounds existed) or cannot be read is left out and named in a
``Warning: 299`` header; when every instance asked for is left out the answer is 422 with the reason.
Each bound crossed counts in ``predraft_inputs_refused{transport="wado"}``."""

from __future__ import annotations

import logging
import mmap
import os
import uuid
from email.message import Message
from http import HTTPStatus
from pathlib import Path
from typing import Any, BinaryIO

import pydicom
from fastapi import APIRouter, HTTPException, Request, Response
from fastapi.responses import StreamingResponse
from pydicom.dataset import Dataset

from predraft.core import metrics
from predraft.core.db import session_scope
from predraft.listener.bounds import BoundCrossed, Bounds
from predraft.listener.dicomweb.common import (
    APPLICATION_DICOM,
    MULTIPART_RELATED,
    bounds_of,
    dicom_json,
    path_uid,
    settings_of,
)
from predraft.listener.dicomweb.holdings import InstanceEntry, find_study, study_series
from predraft.listener.dicomweb.multipart import stream_parts

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


def held_instances(request: Request, study: str, series: str | None, sop: str | None) -> list[InstanceEntry]:
    """The held instances under a WADO-RS path whose files exist; 400 for a malformed UID in the path, 404
    when none is held (a recorded instance whose file is gone is logged and left out)."""
    study_uid = path_uid(study, "StudyInstanceUID")
    series_uid = None if series is None else path_uid(series, "SeriesInstanceUID")
    sop_uid = None if sop is None else path_uid(sop, "SOPInstanceUID")
    with session_scope(settings_of(request).database_url) as session:
        row = find_study(session, study_uid)
        entries = study_series(session, row) if row is not None else []
    selected = [
        i
        for s in entries
        if series_uid in (None, s.series_uid)
        for i in s.instances
        if sop_uid in (None, i.sop_instance_uid)
    ]
    present = [i for i in selected if Path(i.path).is_file()]
    for missing in (i for i in selected if i not in present):
        log.error("instance %s is recorded but its file is missing from the spool", missing.sop_instance_uid)
    if not present:
        raise HTTPException(HTTPStatus.NOT_FOUND, detail="no such instances are held")
    return present


def _retrieve(request: Request, study: str, series: str | None = None, sop: str | None = None) -> Response:
    if not accepts_multipart_dicom(request.headers.get("accept")):
        raise HTTPException(
            HTTPStatus.NOT_ACCEPTABLE, detail='only multipart/related; type="application/dicom" is offered'
        )
    instances = held_instances(request, study, series, sop)
    boundary = uuid.uuid4().hex
    parts = ((f"{APPLICATION_DICOM}; transfer-syntax={i.transfer_syntax_uid}", i.path) for i in instances)
    return StreamingResponse(
        stream_parts(parts, boundary),
        media_type=f'{MULTIPART_RELATED}; type="{APPLICATION_DICOM}"; boundary={boundary}',
    )


class LeftOut(Exception):
    """An instance whose metadata cannot be given: ``reason`` says why (UIDs and bounds, no patient data)."""

    def __init__(self, sop_instance_uid: str, reason: str) -> None:
        super().__init__(f"instance {sop_instance_uid}: {reason}")
        self.sop_instance_uid = sop_instance_uid
        self.reason = reason


def metadata_of(instance: InstanceEntry, bounds: Bounds) -> dict[str, Any]:
    """The DICOM JSON of ``instance``'s header; LeftOut as :func:`read_header` says, or when it cannot be
    rendered as DICOM JSON."""
    ds = read_header(instance, bounds)
    try:
        return ds.to_json_dict()
    except Exception as exc:  # pydicom's own errors, whatever their kind: the instance is left out, never a 500
        raise LeftOut(instance.sop_instance_uid, f"the file cannot be read ({type(exc).__name__})") from None


def read_header(
    instance: InstanceEntry, bounds: Bounds, *, transport: str = "wado", specific_tags: list[str] | None = None
) -> Dataset:
    """The header of ``instance``'s file (read up to its pixel data; only ``specific_tags`` when given).

    The file is held to ``bounds`` before pydicom reads it (its size, then a walk of the file mapped read-only,
    never read whole) and what pydicom read is measured again. LeftOut when the file cannot be opened or read
    (pydicom's own errors, a RecursionError included) or crosses a bound (counted in
    ``predraft_inputs_refused{transport}``)."""
    path = Path(instance.path)
    try:
        with path.open("rb") as stream:
            crossed = bounds.size_crossed(os.fstat(stream.fileno()).st_size) or _mapped_crossed(stream, bounds)
            if crossed is None:
                ds, crossed = _bounded_header(stream, instance.sop_instance_uid, bounds, specific_tags)
                if crossed is None:
                    return ds
    except OSError as exc:
        raise LeftOut(instance.sop_instance_uid, f"the file cannot be read ({exc.strerror})") from None
    metrics.INPUTS_REFUSED.labels(transport=transport, bound=crossed.bound).inc()
    raise LeftOut(instance.sop_instance_uid, crossed.message)


def _mapped_crossed(stream: BinaryIO, bounds: Bounds) -> BoundCrossed | None:
    """The bound the open file ``stream`` crosses: walked through a read-only mapping, so its pixel data is
    never read into memory (only the element headers the walk touches are paged in)."""
    if os.fstat(stream.fileno()).st_size == 0:
        return bounds.check(b"")
    with mmap.mmap(stream.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
        return bounds.check(mapped)


def _bounded_header(
    stream: BinaryIO, sop_instance_uid: str, bounds: Bounds, specific_tags: list[str] | None
) -> tuple[Dataset, BoundCrossed | None]:
    """The header of ``stream`` (read up to its pixel data) and the nesting or element-count bound it crosses;
    LeftOut when pydicom cannot read it."""
    try:
        stream.seek(0)
        ds = pydicom.dcmread(stream, stop_before_pixels=True, specific_tags=specific_tags)
        return ds, bounds.parsed_crossed(ds)
    except Exception as exc:  # pydicom's own errors, whatever their kind: the instance is left out, never a 500
        raise LeftOut(sop_instance_uid, f"the file cannot be read ({type(exc).__name__})") from None


def _left_out_warning(left_out: list[LeftOut]) -> dict[str, str]:
    uids = ", ".join(item.sop_instance_uid for item in left_out)[:400]
    return {"Warning": f'299 predraft "{len(left_out)} instance(s) left out, their metadata cannot be given: {uids}"'}


def _metadata(request: Request, study: str, series: str | None = None, sop: str | None = None) -> Response:
    bounds = bounds_of(request)
    datasets: list[dict[str, Any]] = []
    left_out: list[LeftOut] = []
    for instance in held_instances(request, study, series, sop):
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


@router.get("/studies/{study}/series/{series}/instances/{sop}/metadata", summary="WADO-RS: the metadata of an instance")
def instance_metadata(study: str, series: str, sop: str, request: Request) -> Response:
    return _metadata(request, study, series, sop)
