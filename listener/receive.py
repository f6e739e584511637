"""Receiving one instance, whatever carried it (DIMSE C-STORE or DICOMweb STOW-RS).

:class:`Receiver` checks the data set, writes it to the spool (fsync, atomic rename), records it in the
database and only then reports ``STORED``. Every way it can go wrong has a named outcome that the
transport turns into its own status code; nothing here raises for bad input.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from enum import Enum
from io import BytesIO

import pydicom
from sqlalchemy.exc import IntegrityError, OperationalError

from listener.ingest import InstanceHeader, record_instance
from listener.spool import Spool, SpoolFullError
from models.taxonomy import DX_FOR_PROCESSING, STORABLE_SOP_CLASSES
from predraft.db import session_scope

log = logging.getLogger(__name__)


class ReceiveStatus(Enum):
    STORED = "stored"
    DUPLICATE = "duplicate"  # already held: nothing written, success for the sender
    CANNOT_UNDERSTAND = "cannot_understand"  # not a DICOM data set, or its UIDs are missing/malformed
    SOP_CLASS_MISMATCH = "sop_class_mismatch"  # the data set's SOP class differs from the request's
    SOP_CLASS_NOT_SUPPORTED = "sop_class_not_supported"  # e.g. DX For Processing
    OUT_OF_RESOURCES = "out_of_resources"  # spool below its free-space floor, or a write failed
    PROCESSING_FAILURE = "processing_failure"  # anything unexpected (database down...)

    @property
    def succeeded(self) -> bool:
        return self in (ReceiveStatus.STORED, ReceiveStatus.DUPLICATE)


@dataclass(frozen=True)
class ReceiveOutcome:
    status: ReceiveStatus
    message: str
    sop_class_uid: str = ""
    sop_instance_uid: str = ""
    study_uid: str = ""


class Receiver:
    """Spool and record instances. One per process; safe to call from many threads."""

    def __init__(self, spool: Spool, database_url: str) -> None:
        if not isinstance(spool, Spool):
            raise TypeError(f"spool must be a Spool, not {type(spool).__name__}")
        if not database_url:
            raise ValueError("database_url must not be empty")
        self.spool = spool
        self.database_url = database_url

    def receive(self, data: bytes, *, source: str, expected_sop_class: str | None = None) -> ReceiveOutcome:
        """Receive one DICOM Part 10 file (preamble, file meta and data set) sent by ``source``
        (a calling AE title or a DICOMweb user; stored, never logged with patient data)."""
        try:
            ds = pydicom.dcmread(BytesIO(data), stop_before_pixels=True)
            header = InstanceHeader.from_dataset(ds, str(ds.file_meta.get("TransferSyntaxUID", "")))
        except Exception as exc:  # any parse failure means the same: not an instance we can file
            return self._refuse(ReceiveStatus.CANNOT_UNDERSTAND, f"cannot understand the data set: {exc}", source)
        ids = {"sop_class_uid": header.sop_class_uid, "sop_instance_uid": header.sop_instance_uid,
               "study_uid": header.study_uid}
        if expected_sop_class is not None and header.sop_class_uid != expected_sop_class:
            return self._refuse(ReceiveStatus.SOP_CLASS_MISMATCH, f"data set of SOP class {header.sop_class_uid} "
                                f"sent as {expected_sop_class}", source, **ids)
        if header.sop_class_uid not in STORABLE_SOP_CLASSES:
            reason = ("DX For Processing is raw detector data; send the For Presentation image"
                      if header.sop_class_uid == DX_FOR_PROCESSING else "predraft does not store this SOP class")
            return self._refuse(ReceiveStatus.SOP_CLASS_NOT_SUPPORTED,
                                f"SOP class {header.sop_class_uid}: {reason}", source, **ids)
        try:
            path = self.spool.write(self.spool.instance_path(header.study_uid, header.sop_instance_uid), data)
            result = self._record(header, str(path), len(data), source)
        except SpoolFullError as exc:
            return self._refuse(ReceiveStatus.OUT_OF_RESOURCES, str(exc), source, **ids)
        except OSError as exc:
            return self._refuse(ReceiveStatus.OUT_OF_RESOURCES, f"writing the spool failed: {exc.strerror}",
                                source, **ids)
        except Exception as exc:
            log.exception("instance %s from %s could not be recorded", header.sop_instance_uid, source)
            return ReceiveOutcome(ReceiveStatus.PROCESSING_FAILURE, f"{type(exc).__name__}", **ids)
        status = ReceiveStatus.DUPLICATE if result.duplicate else ReceiveStatus.STORED
        log.info("%s instance %s from %s (study row %d)", status.value, header.sop_instance_uid, source,
                 result.study_id)
        return ReceiveOutcome(status, status.value, **ids)

    def _record(self, header: InstanceHeader, path: str, size: int, source: str):  # type: ignore[no-untyped-def]
        for attempt in range(3):
            try:
                with session_scope(self.database_url) as session:
                    return record_instance(session, header=header, spool_path=path, size_bytes=size,
                                           calling_ae=source)
            except (IntegrityError, OperationalError):
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    @staticmethod
    def _refuse(status: ReceiveStatus, message: str, source: str, **ids: str) -> ReceiveOutcome:
        log.warning("refused an instance from %s: %s", source, message)
        return ReceiveOutcome(status, message, **ids)
