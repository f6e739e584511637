"""Recording a received instance in the database (a service: the caller owns the transaction)."""

from __future__ import annotations

from dataclasses import dataclass

from pydicom.dataset import Dataset
from sqlalchemy import insert, select, update
from sqlalchemy.orm import Session

from predraft.core.db import insert_ignoring_conflict
from predraft.core.events import record_event
from predraft.core.schema import Instance, Series, Study, utcnow
from predraft.core.states import EventKind, InstanceState, StudyState
from predraft.listener.spool import check_uid
from predraft.models.taxonomy import CLASSIFIABLE_SOP_CLASSES


class InvalidUidError(ValueError):
    """A Study, Series or SOP Instance UID or the SOP Class UID of a data set is missing, not of VR UI, or
    not a UID (PS3.5 6.2): the message names the attribute and why, never its value."""


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
        )


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


def record_instance(
    session: Session, *, header: InstanceHeader, spool_path: str, size_bytes: int, calling_ae: str
) -> IngestResult:
    """Record a durably spooled instance. A SOP Instance UID seen before is a duplicate and changes
    nothing. A new image in a study that is past receiving re-opens it under a new generation; a
    structured report is filed as skipped and leaves the study's state alone.

    This runs once per received instance, inside the sender's wait for its status: it uses a handful
    of Core statements, and the instance row itself (received_at, calling_ae) is the receipt record.
    """
    existing = session.execute(
        select(Instance.id, Instance.study_id).where(Instance.sop_instance_uid == header.sop_instance_uid)
    ).first()
    if existing is not None:
        record_event(
            session,
            EventKind.DUPLICATE,
            f"instance {header.sop_instance_uid} received again",
            study_id=existing.study_id,
            instance_id=existing.id,
        )
        return IngestResult(existing.study_id, existing.id, duplicate=True)

    now = utcnow()
    classifiable = header.sop_class_uid in CLASSIFIABLE_SOP_CLASSES
    opened = insert_ignoring_conflict(
        session,
        Study,
        dict(
            study_uid=header.study_uid,
            patient_id=header.patient_id,
            patient_name=header.patient_name,
            accession_number=header.accession_number,
            study_date=header.study_date,
            study_description=header.study_description,
            requested_procedure=header.requested_procedure,
            state=StudyState.RECEIVING,
            generation=1,
            received_at=now,
            last_instance_at=now,
        ),
        key="study_uid",
    )
    study = session.execute(
        select(Study.id, Study.state, Study.generation).where(Study.study_uid == header.study_uid)
    ).one()
    if opened:
        record_event(session, EventKind.STUDY_OPENED, f"study {header.study_uid}", study_id=study.id)
    elif classifiable:
        # Only images are new work. A structured report (predraft's own draft echoed back by the PACS,
        # say) is filed with its study without re-opening it.
        changes: dict[str, object] = {"last_instance_at": now}
        if study.state != StudyState.RECEIVING:
            changes.update(state=StudyState.RECEIVING, generation=study.generation + 1, error=None)
            record_event(
                session,
                EventKind.STUDY_REOPENED,
                f"new instance while {study.state}; generation {study.generation + 1}",
                study_id=study.id,
            )
        session.execute(update(Study).where(Study.id == study.id).values(**changes))
        if header.study_description or header.requested_procedure:
            _fill_blank_descriptions(session, study.id, header)

    insert_ignoring_conflict(
        session,
        Series,
        dict(
            study_id=study.id,
            series_uid=header.series_uid,
            modality=header.modality,
            series_description=header.series_description,
            body_part=header.body_part,
        ),
        key="series_uid",
    )
    series_id = session.scalar(select(Series.id).where(Series.series_uid == header.series_uid))

    instance_id = session.scalar(
        insert(Instance)
        .values(
            study_id=study.id,
            series_id=series_id,
            sop_instance_uid=header.sop_instance_uid,
            sop_class_uid=header.sop_class_uid,
            transfer_syntax_uid=header.transfer_syntax_uid,
            spool_path=spool_path,
            size_bytes=size_bytes,
            calling_ae=calling_ae[:64],
            state=InstanceState.RECEIVED if classifiable else InstanceState.SKIPPED,
            error=None if classifiable else "structured report: stored with its study, not classified",
            received_at=now,
        )
        .returning(Instance.id)
    )
    assert instance_id is not None  # a plain INSERT ... RETURNING gives back the new row's id
    return IngestResult(study.id, instance_id, duplicate=False)


def _fill_blank_descriptions(session: Session, study_id: int, header: InstanceHeader) -> None:
    """A study opened by an instance without descriptions takes them from a later one."""
    for column, value in (
        (Study.study_description, header.study_description),
        (Study.requested_procedure, header.requested_procedure),
    ):
        if value:
            session.execute(update(Study).where(Study.id == study_id, column == "").values({column: value}))
