"""Recording a received instance in the database (a service: the caller owns the transaction)."""

from __future__ import annotations

from dataclasses import dataclass

from pydicom.dataset import Dataset
from sqlalchemy import select
from sqlalchemy.orm import Session

from listener.spool import check_uid
from models.taxonomy import CLASSIFIABLE_SOP_CLASSES
from predraft.db import insert_ignoring_conflict
from predraft.events import record_event
from predraft.schema import Instance, Series, Study, utcnow
from predraft.states import InstanceState, StudyState


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
        """Raises ValueError naming the attribute when a UID is missing or malformed."""
        def text(keyword: str, limit: int) -> str:
            return str(ds.get(keyword, "") or "")[:limit]

        return cls(
            study_uid=check_uid(ds.get("StudyInstanceUID", ""), "StudyInstanceUID"),
            series_uid=check_uid(ds.get("SeriesInstanceUID", ""), "SeriesInstanceUID"),
            sop_instance_uid=check_uid(ds.get("SOPInstanceUID", ""), "SOPInstanceUID"),
            sop_class_uid=check_uid(ds.get("SOPClassUID", ""), "SOPClassUID"),
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


def record_instance(session: Session, *, header: InstanceHeader, spool_path: str, size_bytes: int,
                    calling_ae: str) -> IngestResult:
    """Record a durably spooled instance. A SOP Instance UID seen before is a duplicate and changes
    nothing. A new image in a study that is past receiving re-opens it under a new generation; a
    structured report is filed as skipped and leaves the study's state alone."""
    existing = session.scalar(select(Instance).where(Instance.sop_instance_uid == header.sop_instance_uid))
    if existing is not None:
        record_event(session, "duplicate", f"instance {header.sop_instance_uid} received again",
                     study_id=existing.study_id, instance_id=existing.id)
        return IngestResult(existing.study_id, existing.id, duplicate=True)

    now = utcnow()
    opened = insert_ignoring_conflict(session, Study, dict(
        study_uid=header.study_uid, patient_id=header.patient_id, patient_name=header.patient_name,
        accession_number=header.accession_number, study_date=header.study_date,
        study_description=header.study_description, requested_procedure=header.requested_procedure,
        state=StudyState.RECEIVING, generation=1,
        received_at=now, last_instance_at=now), key="study_uid")
    study = session.scalars(
        select(Study).where(Study.study_uid == header.study_uid).execution_options(populate_existing=True)
    ).one()
    classifiable = header.sop_class_uid in CLASSIFIABLE_SOP_CLASSES
    if opened:
        record_event(session, "study_opened", f"study {header.study_uid}", study_id=study.id)
    elif classifiable:
        # Only images are new work. A structured report (predraft's own draft echoed back by the PACS,
        # say) is filed with its study without re-opening it.
        if study.state != StudyState.RECEIVING:
            study.generation += 1
            record_event(session, "study_reopened",
                         f"new instance while {study.state}; generation {study.generation}", study_id=study.id)
            study.state = StudyState.RECEIVING
            study.error = None
        study.last_instance_at = now
        study.study_description = study.study_description or header.study_description
        study.requested_procedure = study.requested_procedure or header.requested_procedure

    insert_ignoring_conflict(session, Series, dict(
        study_id=study.id, series_uid=header.series_uid, modality=header.modality,
        series_description=header.series_description, body_part=header.body_part), key="series_uid")
    series = session.scalars(select(Series).where(Series.series_uid == header.series_uid)).one()

    instance = Instance(study_id=study.id, series_id=series.id, sop_instance_uid=header.sop_instance_uid,
                        sop_class_uid=header.sop_class_uid, transfer_syntax_uid=header.transfer_syntax_uid,
                        spool_path=spool_path, size_bytes=size_bytes, calling_ae=calling_ae[:16],
                        state=InstanceState.RECEIVED if classifiable else InstanceState.SKIPPED,
                        error=None if classifiable else "structured report: stored with its study, not classified",
                        received_at=now)
    session.add(instance)
    session.flush()
    record_event(session, "received", f"instance {header.sop_instance_uid}", study_id=study.id,
                 instance_id=instance.id)
    return IngestResult(study.id, instance.id, duplicate=False)
