"""Sending one drafted SR to one destination: C-STORE (pynetdicom SCU) or STOW-RS (HTTP POST).

:func:`send` either returns a :class:`Delivery` (the destination stored the SR; a warning status is a
delivery with a note) or raises :class:`ExportError`, whose ``retryable`` says whether trying again
later can help: network trouble (no connection, association rejected or aborted, no answer in time),
a C-STORE "out of resources" refusal, and HTTP 408, 429 and 5xx are retryable; any other refusal
(an unsupported SOP class, a data set the destination cannot understand, HTTP 4xx such as a wrong
password) is not. The database is not touched here (see :mod:`predraft.workers.export_service`).

Messages name the destination, the status and the reason, never patient data or secrets.
"""

from __future__ import annotations

import ssl
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path

import pydicom
import requests
from pydicom.errors import InvalidDicomError
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, _config, evt
from pynetdicom.status import code_to_category

from predraft.core.settings import DimseDestination, StowDestination
from predraft.listener.dicomweb.multipart import stream_parts

# pynetdicom logs the identifiers of requests and responses (patient data) unless told not to.
_config.LOG_REQUEST_IDENTIFIERS = False
_config.LOG_RESPONSE_IDENTIFIERS = False

#: C-STORE response status categories (PS3.4 Annex B.2.3, as pynetdicom.status.code_to_category names them).
CATEGORY_SUCCESS = "Success"
CATEGORY_WARNING = "Warning"
#: C-STORE "Refused: Out of Resources" (A7xx): the only failure worth trying again.
OUT_OF_RESOURCES = range(0xA700, 0xA800)
#: A-ASSOCIATE-RJ results (PS3.8 9.3.4).
REJECTED_PERMANENT = 0x01
REJECTED_TRANSIENT = 0x02

#: HTTP answers to a STOW-RS request (PS3.18 10.5.3) and what they mean for one instance.
STOW_STORED = HTTPStatus.OK  # every instance stored
STOW_PARTIAL = HTTPStatus.ACCEPTED  # some stored, some failed or stored with warnings: read the response
STOW_NONE_STORED = HTTPStatus.CONFLICT  # none stored: the FailedSOPSequence says why
#: HTTP statuses after which a retry can succeed (besides every 5xx).
RETRYABLE_HTTP = frozenset({HTTPStatus.REQUEST_TIMEOUT, HTTPStatus.TOO_MANY_REQUESTS})
APPLICATION_DICOM = "application/dicom"
APPLICATION_DICOM_JSON = "application/dicom+json"


class ExportError(Exception):
    """A try that did not deliver; ``retryable``: whether a later try can succeed."""

    def __init__(self, message: str, *, retryable: bool) -> None:
        super().__init__(message)
        self.retryable = retryable


@dataclass(frozen=True)
class Delivery:
    """The destination stored the SR; ``note`` says what it warned about, if anything."""

    note: str | None = None


def send_documents(destination: DimseDestination | StowDestination, sr_paths: Sequence[Path]) -> Delivery:
    """Send a draft's SR files to ``destination``, the narrative SR first (:meth:`Draft.documents`).

    The narrative SR must be stored: any failure of it is raised. A later one (the AI results SR) that the
    destination refuses for a reason no retry mends (it takes no Comprehensive 3D SR, say) does not undo the
    delivery: it is named in the Delivery's note. A failure a retry may mend is raised, and the retry sends
    every file again (a destination stores the same SOP instance once).
    """
    if not sr_paths:
        raise ValueError("send_documents needs at least one SR file")
    first, *others = sr_paths
    notes = [send(destination, first).note]
    for path in others:
        try:
            notes.append(send(destination, path).note)
        except ExportError as exc:
            if exc.retryable:
                raise
            notes.append(f"the AI results SR was not stored: {exc}")
    return Delivery(note="; ".join(note for note in notes if note) or None)


def send(destination: DimseDestination | StowDestination, sr_path: Path) -> Delivery:
    """Send the Part 10 file ``sr_path`` to ``destination``; raise ExportError if it was not stored."""
    if isinstance(destination, DimseDestination):
        return send_dimse(destination, sr_path)
    if isinstance(destination, StowDestination):
        return send_stow(destination, sr_path)
    raise TypeError(f"destination must be a DimseDestination or StowDestination, not {type(destination).__name__}")


def _read(sr_path: Path) -> pydicom.Dataset:
    try:
        return pydicom.dcmread(sr_path)
    except (OSError, InvalidDicomError) as exc:
        raise ExportError(f"the SR file cannot be read: {type(exc).__name__}: {exc}", retryable=False) from exc


# --- C-STORE -------------------------------------------------------------------------------------------------


def client_ssl_context(destination: DimseDestination) -> ssl.SSLContext:
    """A TLS 1.2+ client context that checks the SCP's certificate (``tls_ca`` or the system's CAs) and host
    name, and presents ``tls_certificate`` when one is set. Raises ExportError (not retryable) when a file of
    the settings cannot be loaded."""
    try:
        context = ssl.create_default_context(
            ssl.Purpose.SERVER_AUTH, cafile=str(destination.tls_ca) if destination.tls_ca else None
        )
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        if destination.tls_certificate is not None:
            context.load_cert_chain(str(destination.tls_certificate), str(destination.tls_private_key))
    except (OSError, ssl.SSLError) as exc:
        raise ExportError(
            f"TLS files of destination {destination.name!r} cannot be loaded: {exc}", retryable=False
        ) from exc
    return context


def _where(destination: DimseDestination) -> str:
    return f"{destination.ae_title}@{destination.host}:{destination.port}"


def send_dimse(destination: DimseDestination, sr_path: Path) -> Delivery:
    """C-STORE the SR over one association, proposing its SOP class in its own transfer syntax and both
    uncompressed little-endian ones."""
    ds = _read(sr_path)
    sop_class = str(ds.SOPClassUID)
    syntaxes = list(
        dict.fromkeys([str(ds.file_meta.TransferSyntaxUID), ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    )
    ae = AE(ae_title=destination.calling_ae or "PREDRAFT")
    ae.add_requested_context(sop_class, syntaxes)
    ae.connection_timeout = ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = destination.timeout
    tls_args = (client_ssl_context(destination), destination.host) if destination.tls else None
    seen: dict[str, object] = {}

    def _connected(_event: evt.Event) -> None:
        seen["connected"] = True

    def _received(event: evt.Event) -> None:
        seen["primitive"] = event.primitive  # type: ignore[attr-defined]  # pynetdicom sets it at run time

    def _accepted(_event: evt.Event) -> None:
        seen["accepted"] = True

    assoc = ae.associate(
        destination.host,
        destination.port,
        ae_title=destination.ae_title,
        tls_args=tls_args,
        evt_handlers=[(evt.EVT_CONN_OPEN, _connected), (evt.EVT_ACSE_RECV, _received), (evt.EVT_ACCEPTED, _accepted)],
    )
    no_context = ExportError(
        f"{_where(destination)} accepted no presentation context for SOP class {sop_class}", retryable=False
    )
    if not assoc.is_established:
        # pynetdicom aborts an association in which the SCP accepted none of the proposed contexts.
        if seen.get("accepted") and not assoc.accepted_contexts:
            raise no_context
        raise ExportError(_association_failure(destination, assoc.is_rejected, seen), retryable=True)
    try:
        if not any(cx.abstract_syntax == sop_class for cx in assoc.accepted_contexts):
            raise no_context
        response = assoc.send_c_store(ds)
    finally:
        if assoc.is_established:
            assoc.release()
    if "Status" not in response:
        raise ExportError(
            f"no C-STORE response from {_where(destination)} (timed out or the association was aborted)", retryable=True
        )
    return _store_outcome(destination, int(response.Status), str(response.get("ErrorComment", "")))


def _association_failure(destination: DimseDestination, rejected: bool, seen: dict[str, object]) -> str:
    where = _where(destination)
    primitive = seen.get("primitive")
    if rejected and primitive is not None:
        kinds: dict[object, str] = {REJECTED_PERMANENT: "permanent", REJECTED_TRANSIENT: "transient"}
        kind = kinds.get(getattr(primitive, "result", None), "unknown")
        return (
            f"association rejected by {where} ({kind}): {getattr(primitive, 'source_str', '?')}, "
            f"{getattr(primitive, 'reason_str', '?')}"
        )
    if rejected:
        return f"association rejected by {where}"
    if not seen.get("connected"):
        return f"cannot connect to {where} (refused, unreachable, timed out or TLS handshake failed)"
    return (
        f"association with {where} aborted before it was established (the peer closed the connection: "
        "a TLS mismatch, such as a missing client certificate, or a protocol error)"
    )


def _store_outcome(destination: DimseDestination, code: int, comment: str) -> Delivery:
    category = code_to_category(code)
    detail = f"status 0x{code:04X}" + (f" ({comment})" if comment else "")
    if category == CATEGORY_SUCCESS:
        return Delivery()
    if category == CATEGORY_WARNING:
        return Delivery(note=f"{_where(destination)} stored it with warning {detail}")
    if code in OUT_OF_RESOURCES:
        raise ExportError(f"{_where(destination)} refused it, out of resources: {detail}", retryable=True)
    raise ExportError(f"{_where(destination)} refused it: {category.lower()} {detail}", retryable=False)


# --- STOW-RS -------------------------------------------------------------------------------------------------


def multipart_body(sr_path: Path) -> tuple[bytes, str]:
    """One Part 10 file as a ``multipart/related; type="application/dicom"`` body, written by the same code as
    WADO-RS answers (:func:`predraft.listener.dicomweb.multipart.stream_parts`); returns (body, content type)."""
    boundary = uuid.uuid4().hex
    body = b"".join(stream_parts([(APPLICATION_DICOM, str(sr_path))], boundary))
    return body, f'multipart/related; type="{APPLICATION_DICOM}"; boundary={boundary}'


def send_stow(destination: StowDestination, sr_path: Path) -> Delivery:
    """POST the SR to ``<url>/studies`` and read the Store Instances Response for it."""
    try:
        sop_instance_uid = str(pydicom.dcmread(sr_path, stop_before_pixels=True).SOPInstanceUID)
        body, content_type = multipart_body(sr_path)
    except (OSError, InvalidDicomError, AttributeError) as exc:
        raise ExportError(f"the SR file cannot be read: {type(exc).__name__}: {exc}", retryable=False) from exc
    headers = {"Content-Type": content_type, "Accept": APPLICATION_DICOM_JSON}
    auth = None
    if destination.auth == "bearer" and destination.token is not None:
        headers["Authorization"] = f"Bearer {destination.token.get_secret_value()}"
    elif destination.auth == "basic" and destination.username is not None and destination.password is not None:
        auth = (destination.username, destination.password.get_secret_value())
    url = f"{destination.url}/studies"
    try:
        response = requests.post(
            url,
            data=body,
            headers=headers,
            auth=auth,
            timeout=destination.timeout,
            verify=str(destination.ca_bundle) if destination.ca_bundle else True,
        )
    except requests.Timeout as exc:
        raise ExportError(f"STOW-RS to {url}: no answer within {destination.timeout:g} s", retryable=True) from exc
    except requests.ConnectionError as exc:
        raise ExportError(f"STOW-RS to {url}: cannot connect: {_first_line(exc)}", retryable=True) from exc
    except requests.RequestException as exc:
        raise ExportError(f"STOW-RS to {url} failed: {_first_line(exc)}", retryable=False) from exc
    return _stow_outcome(url, response.status_code, response.reason, _store_response(response), sop_instance_uid)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


def _store_response(response: requests.Response) -> pydicom.Dataset:
    """The Store Instances Response (DICOM JSON, PS3.18 10.5.3) as a data set; empty when the body is none."""
    try:
        payload = response.json()
        return pydicom.Dataset.from_json(payload) if isinstance(payload, dict) else pydicom.Dataset()
    except (ValueError, TypeError, KeyError, AttributeError):  # not JSON, or not DICOM JSON
        return pydicom.Dataset()


def _about(items: Sequence[pydicom.Dataset], sop_instance_uid: str) -> list[pydicom.Dataset]:
    return [item for item in items if item.get("ReferencedSOPInstanceUID") == sop_instance_uid]


def _stow_outcome(url: str, code: int, reason: str, answer: pydicom.Dataset, sop_instance_uid: str) -> Delivery:
    status = f"HTTP {code} {reason}".strip()
    failed = _about(answer.get("FailedSOPSequence", []), sop_instance_uid)
    stored = _about(answer.get("ReferencedSOPSequence", []), sop_instance_uid)
    warnings = [item.get("WarningReason") for item in stored] + [answer.get("WarningReason")]
    warnings = [w for w in warnings if isinstance(w, int)]
    if code in (STOW_STORED, STOW_PARTIAL) and not failed:
        if code == STOW_PARTIAL and not stored:
            raise ExportError(f"STOW-RS to {url}: {status} without the SR in its response", retryable=True)
        note = ", ".join(f"warning reason 0x{w:04X}" for w in warnings) or (None if code == STOW_STORED else status)
        return Delivery(note=f"STOW-RS to {url}: {note}" if note else None)
    if failed or code == STOW_NONE_STORED:
        reason_code = failed[0].get("FailureReason") if failed else None
        shown = f"failure reason 0x{reason_code:04X}" if isinstance(reason_code, int) else "no failure reason"
        retry = isinstance(reason_code, int) and reason_code in OUT_OF_RESOURCES
        raise ExportError(f"STOW-RS to {url}: {status}, {shown}", retryable=retry)
    retry = code >= HTTPStatus.INTERNAL_SERVER_ERROR or code in RETRYABLE_HTTP
    raise ExportError(f"STOW-RS to {url}: {status}", retryable=retry)
