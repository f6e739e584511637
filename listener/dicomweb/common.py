"""What the DICOMweb routes share: the URL prefix, media types, the request's settings and the bounds a
stored file is read within, UIDs taken from the path, errors that refuse a whole request, and DICOM JSON answers."""

from __future__ import annotations

import json
import logging
from http import HTTPStatus
from typing import Any

from fastapi import HTTPException, Request, Response

from predraft.core.settings import Settings
from predraft.listener.bounds import Bounds
from predraft.listener.dicomweb.auth import DicomwebUser
from predraft.listener.spool import check_uid

log = logging.getLogger(__name__)

PREFIX = "/dicomweb"

DICOM_JSON = "application/dicom+json"
APPLICATION_DICOM = "application/dicom"
MULTIPART_RELATED = "multipart/related"


class DicomwebError(Exception):
    """A request refused as a whole: becomes an HTTP error with ``status`` and ``message``."""

    def __init__(self, status: HTTPStatus, message: str, *, close: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.close = close  # ask the server to close the connection (the body was not read)


def http_error(error: DicomwebError, what: str, user: DicomwebUser) -> HTTPException:
    log.warning("%s from %s refused with %d: %s", what, user.name, error.status, error.message)
    headers = {"Connection": "close"} if error.close else None
    return HTTPException(error.status, detail=error.message, headers=headers)


def settings_of(request: Request) -> Settings:
    return request.app.state.settings


def bounds_of(request: Request) -> Bounds:
    """The bounds a stored file is held to before it is read for an answer: those of a received one
    (``max_dataset_bytes``, ``max_sequence_depth``)."""
    listener = settings_of(request).listener
    return Bounds(listener.max_dataset_bytes, listener.max_sequence_depth)


def path_uid(value: str, what: str) -> str:
    try:
        return check_uid(value, what)
    except ValueError as exc:
        raise HTTPException(HTTPStatus.BAD_REQUEST, detail=str(exc)) from exc


def studies_url_of(request: Request) -> str:
    return f"{str(request.base_url).rstrip('/')}{PREFIX}/studies"


def dicom_json(payload: Any, status: int = HTTPStatus.OK, headers: dict[str, str] | None = None) -> Response:
    return Response(json.dumps(payload), status_code=status, media_type=DICOM_JSON, headers=headers)
