"""Recording a received instance in the database (a service: the caller owns the transaction)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from pydicom.dataset import Dataset
from sqlalchemy import Connection, bindparam, case, insert, select, update
from sqlalchemy.orm import Session

from predraft.core.db import insert_or_nothing
from predraft.core.schema import Event, Instance, Series, Study, utcnow
from predraft.core.states import EventKind, InstanceState, StudyState
from predraft.listener.spool import check_uid
from predraft.models.taxonomy import CLASSIFIABLE_SOP_CLASSES


class InvalidUidError(ValueError):
    """A Study, Series or SOP Instance UID or the SOP Class UID of a data set is missing, not of VR UI, or
    not a UID (PS3.5 6.2): the message names the attribute and why, never its value."""


#: An Integer String's value (PS3.5 6.2): an optional sign and at most 12 characters in all, spaces around.
_INTEGER = re.compile(r" *([+-]?[0-9]{1,11}|[0-9]{12}) *")

#: The UIDs that identify an instance, read as the data set holds them (never as pydicom tidied them).
IDENTIFYING_UIDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID")


def received_uid(ds: Dataset, keyword: str) -> str:
    """The UID ``keyword`` of ``ds`` as it was received, checked by :func:`predraft.listener.spool.check_uid`.

    pydicom strips trailing spaces and NULs from UI values and whitespace from UIDs when it converts
    them, so ``1.2.3\n`` would read as ``1.2.3``: the raw bytes of an element not yet converted are
    checked instead. Raises InvalidUidError when the UID is missing, of a VR other than UI (or UN, "VR
    unknown", whose bytes are checked all the same; a SOP Class UID sent as UM, say) or malformed."""
    element = ds.get_item(keyword)
    if element is not None and element.VR not in (None, "UI", "UN"):
        raise InvalidUidError(f"{keyword} has VR {element.VR}, not UI")
    value = None if element is None else element.value
    text = value.decode("ascii", "replace") if isinstance(value, bytes) else str(value or "")
    try:
        return check_uid(text, keyword)
    except ValueError as exc:
        raise InvalidUidError(str(exc)) from None


@dataclass(frozen=True)
class InstanceHeader:
    """The identifying attributes of a received instance, validated."""

    study_uid: str
    series_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    modality: str = ""
    patient_id: str = ""
    patient_name: str = ""
    accession_number: str = ""
    study_date: str = ""
    study_description: str = ""
    requested_procedure: str = ""
    series_description: str = ""
    body_part: str = ""
    study_time: str = ""
    referring_physician_name: str = ""
    study_identifier: str = ""
    series_number: str = ""
    instance_number: str = ""

    @classmethod
    def from_dataset(cls, ds: Dataset, transfer_syntax_uid: str) -> InstanceHeader:
        """Raises InvalidUidError (a ValueError) naming the attribute when one of :data:`IDENTIFYING_UIDS` is
        missing, not of VR UI or malformed (see :func:`received_uid`), ValueError for a malformed
        ``transfer_syntax_uid``."""

        def text(keyword: str, limit: int) -> str:
            return str(ds.get(keyword, "") or "")[:limit]

        study_uid, series_uid, sop_instance_uid, sop_class_uid = (received_uid(ds, k) for k in IDENTIFYING_UIDS)
        return cls(
            study_uid=study_uid,
            series_uid=series_uid,
            sop_instance_uid=sop_instance_uid,
            sop_class_uid=sop_class_uid,
            transfer_syntax_uid=check_uid(transfer_syntax_uid, "TransferSyntaxUID"),
            modality=text("Modality", 16),
            patient_id=text("PatientID", 64),
            patient_name=text("PatientName", 324),
            accession_number=text("AccessionNumber", 16),
            study_date=text("StudyDate", 8),
            study_description=text("StudyDescription", 64),
            requested_procedure=_requested_procedure(ds)[:64],
            series_description=text("SeriesDescription", 64),
            body_part=text("BodyPartExamined", 16),
            study_time=text("StudyTime", 16).replace(":", ""),  # the ACR-NEMA form 10:30:15 as 103015
            referring_physician_name=text("ReferringPhysicianName", 324),
            study_identifier=text("StudyID", 16),
            series_number=integer_string(ds, "SeriesNumber"),
            instance_number=integer_string(ds, "InstanceNumber"),
        )


def integer_string(ds: Dataset, keyword: str) -> str:
    """The IS value ``keyword`` of ``ds`` as its integer's digits ("007 " is "7"); empty when it is missing,
    multi-valued or no integer (a malformed number loses the instance nothing but this value)."""
    element = ds.get_item(keyword)
    value = None if element is None else element.value
    text = value.decode("ascii", "replace") if isinstance(value, bytes) else str(value if value is not None else "")
    return normal_integer(text.rstrip("\x00"))


def normal_integer(text: str) -> str:
    """An Integer String's number as its digits ("007 " is "7", "+12" is "12"); empty when ``text`` is no IS
    value. QIDO-RS reads a query's value the same way, so both sides of a match agree."""
    found = _INTEGER.fullmatch(text)
    return str(int(found.group(1))) if found else ""


def _requested_procedure(ds: Dataset) -> str:
    """RequestedProcedureDescription, top level or in the first Request Attributes item."""
    value = ds.get("RequestedProcedureDescription", "")
    if not value:
        for item in ds.get("RequestAttributesSequence", []) or []:
            value = item.get("RequestedProcedureDescription", "")
            if value:
                break
    return str(value or "")


@dataclass(frozen=True)
class IngestResult:
    study_id: int
    instance_id: int
    duplicate: bool
    #: Whether the file at the ``spool_path`` recorded is the instance's copy in the spool: False for a duplicate
    #: held elsewhere, or whose file retention purged (a file written there for it is then not wanted).
    file_held: bool = True


class _Statements:
    """The statements :func:`record_instance` runs, built once per SQL dialect (PostgreSQL or SQLite): Core
    statements whose values are bound at execution, so that SQLAlchemy compiles each once per process and the
    per-instance cost is the database's own work, not the building of statements."""

    def __init__(self, dialect: str) -> None:
        """Raises NotImplementedError for a dialect other than PostgreSQL's or SQLite's."""
        self.instance = select(Instance.id, Instance.study_id, Instance.spool_path, Instance.purged_at).where(
            Instance.sop_instance_uid == bindparam("sop_instance_uid")
        )
        self.open_study = insert_or_nothing(Study, "study_uid", dialect).returning(Study.id)
        self.study = select(Study.id, Study.state, Study.generation).where(Study.study_uid == bindparam("uid"))
        # A study opened by an instance without descriptions takes them from a later one.
        self.touch_study = (
            update(Study)
            .where(Study.id == bindparam("row"))
            .values(
                last_instance_at=bindparam("now"),
                study_description=case(
                    (Study.study_description == "", bindparam("description")), else_=Study.study_description
                ),
                requested_procedure=case(
                    (Study.requested_procedure == "", bindparam("procedure")), else_=Study.requested_procedure
                ),
            )
        )
        self.reopen_study = (
            update(Study)
            .where(Study.id == bindparam("row"))
            .values(state=StudyState.RECEIVING, generation=bindparam("next_generation"), error=None)
        )
        self.open_series = insert_or_nothing(Series, "series_uid", dialect).returning(Series.id)
        self.series = select(Series.id).where(Series.series_uid == bindparam("uid"))
        self.new_instance = insert(Instance).returning(Instance.id)
        self.event = insert(Event)


@lru_cache(maxsize=2)
def _statements(dialect: str) -> _Statements:
    return _Statements(dialect)


def record_instance(
    session: Session, *, header: InstanceHeader, spool_path: str, size_bytes: int, calling_ae: str
) -> IngestResult:
    """Record a durably spooled instance. A SOP Instance UID seen before is a duplicate and changes
    nothing. A new image in a study that is past receiving re-opens it under a new generation; a
    structured report is filed as skipped and leaves the study's state alone.

    This runs once per received instance, inside the sender's wait for its status: prepared Core statements on
    the session's connection, five for the next image of a series already known (look for the instance, the
    study and the series, touch the study, insert the instance), and the instance row itself (received_at,
    calling_ae) is the receipt record. A duplicate's result says whether the file at ``spool_path`` is its
    held copy (:attr:`IngestResult.file_held`).
    """
    connection = session.connection()
    run = _statements(connection.dialect.name)
    existing = connection.execute(run.instance, {"sop_instance_uid": header.sop_instance_uid}).first()
    if existing is not None:
        _event(
            connection,
            EventKind.DUPLICATE,
            f"instance {header.sop_instance_uid} received again",
            study_id=existing.study_id,
            instance_id=existing.id,
        )
        held_here = existing.spool_path == spool_path and existing.purged_at is None
        return IngestResult(existing.study_id, existing.id, duplicate=True, file_held=held_here)

    now = utcnow()
    classifiable = header.sop_class_uid in CLASSIFIABLE_SOP_CLASSES
    study = connection.execute(run.study, {"uid": header.study_uid}).first()
    if study is None:
        opened = connection.execute(
            run.open_study,
            dict(
                study_uid=header.study_uid,
                patient_id=header.patient_id,
                patient_name=header.patient_name,
                accession_number=header.accession_number,
                study_date=header.study_date,
                study_description=header.study_description,
                requested_procedure=header.requested_procedure,
                study_time=header.study_time,
                referring_physician_name=header.referring_physician_name,
                study_identifier=header.study_identifier,
                state=StudyState.RECEIVING,
                generation=1,
                received_at=now,
                last_instance_at=now,
            ),
        ).scalar()
        if opened is not None:
            study_id: int = opened
            _event(connection, EventKind.STUDY_OPENED, f"study {header.study_uid}", study_id=study_id)
        else:  # opened meanwhile by another transaction (PostgreSQL; SQLite's BEGIN IMMEDIATE serialises them)
            study = connection.execute(run.study, {"uid": header.study_uid}).one()
    if study is not None:
        study_id = study.id
        if classifiable:
            # Only images are new work. A structured report (predraft's own draft echoed back by the PACS,
            # say) is filed with its study without re-opening it.
            connection.execute(
                run.touch_study,
                {
                    "row": study_id,
                    "now": now,
                    "description": header.study_description,
                    "procedure": header.requested_procedure,
                },
            )
            if study.state != StudyState.RECEIVING:
                connection.execute(run.reopen_study, {"row": study_id, "next_generation": study.generation + 1})
                _event(
                    connection,
                    EventKind.STUDY_REOPENED,
                    f"new instance while {study.state}; generation {study.generation + 1}",
                    study_id=study_id,
                )

    series_id = connection.execute(run.series, {"uid": header.series_uid}).scalar()
    if series_id is None:
        series_id = connection.execute(
            run.open_series,
            dict(
                study_id=study_id,
                series_uid=header.series_uid,
                modality=header.modality,
                series_description=header.series_description,
                body_part=header.body_part,
                series_number=header.series_number,
            ),
        ).scalar()
    if series_id is None:  # opened meanwhile by another transaction, as above
        series_id = connection.execute(run.series, {"uid": header.series_uid}).scalar_one()

    instance_id = connection.execute(
        run.new_instance,
        dict(
            study_id=study_id,
            series_id=series_id,
            sop_instance_uid=header.sop_instance_uid,
            sop_class_uid=header.sop_class_uid,
            transfer_syntax_uid=header.transfer_syntax_uid,
            spool_path=spool_path,
            size_bytes=size_bytes,
            calling_ae=calling_ae[:64],
            instance_number=header.instance_number,
            state=InstanceState.RECEIVED if classifiable else InstanceState.SKIPPED,
            error=None if classifiable else "structured report: stored with its study, not classified",
            received_at=now,
        ),
    ).scalar_one()
    return IngestResult(study_id, instance_id, duplicate=False)


def _event(
    connection: Connection, kind: EventKind, message: str, *, study_id: int, instance_id: int | None = None
) -> None:
    """The event row :func:`predraft.core.events.record_event` writes, inserted at once on ``connection``."""
    connection.execute(
        _statements(connection.dialect.name).event,
        {"kind": kind, "message": message, "study_id": study_id, "instance_id": instance_id},
    )
