"""What is held, as QIDO-RS and WADO-RS see it: the received instances of a study and the SRs predraft issued
for it (each draft's narrative SR and AI results SR, each review's SR), series by series."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import pydicom
from pydicom.errors import InvalidDicomError
from sqlalchemy import select
from sqlalchemy.orm import Session

from predraft.core.schema import Draft, Instance, Series, SrDocument, Study
from predraft.listener.ingest import integer_string

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class InstanceEntry:
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str
    path: str
    #: InstanceNumber as received ("" when none is known).
    number: str = ""


@dataclass
class SeriesEntry:
    series_uid: str
    modality: str
    description: str
    body_part: str
    #: SeriesNumber as received ("" when none is known).
    number: str = ""
    instances: list[InstanceEntry] = field(default_factory=list)


def _document_series(document: SrDocument) -> SeriesEntry | None:
    """An SR predraft issued as a one-instance series, read from the SR file's header; None if unreadable."""
    try:
        sr = pydicom.dcmread(
            document.path,
            stop_before_pixels=True,
            specific_tags=["SOPClassUID", "SeriesDescription", "Modality", "SeriesNumber", "InstanceNumber"],
        )
    except (OSError, InvalidDicomError) as exc:
        log.warning(
            "SR %s cannot be read (%s); left out of DICOMweb answers", document.sop_instance_uid, type(exc).__name__
        )
        return None
    instance = InstanceEntry(
        str(sr.get("SOPClassUID", "")),
        document.sop_instance_uid,
        str(sr.file_meta.get("TransferSyntaxUID", "")),
        document.path,
        integer_string(sr, "InstanceNumber"),
    )
    return SeriesEntry(
        document.series_uid,
        str(sr.get("Modality", "SR")),
        str(sr.get("SeriesDescription", "")),
        "",
        integer_string(sr, "SeriesNumber"),
        [instance],
    )


def study_series(session: Session, study: Study) -> list[SeriesEntry]:
    """Every series of ``study`` with its instances: the received ones, then the SRs predraft issued (an SR the
    PACS sent back, already among the received instances, is listed once). Files the spool's retention purged
    (:mod:`predraft.workers.retention`) are no longer held, and not listed."""
    series: dict[str, SeriesEntry] = {}
    rows = session.execute(
        select(Instance, Series)
        .join(Series)
        .where(Instance.study_id == study.id, Instance.purged_at.is_(None))
        .order_by(Series.id, Instance.id)
    ).all()
    for instance, row in rows:
        entry = series.setdefault(
            row.series_uid,
            SeriesEntry(row.series_uid, row.modality, row.series_description, row.body_part, row.series_number),
        )
        entry.instances.append(
            InstanceEntry(
                instance.sop_class_uid,
                instance.sop_instance_uid,
                instance.transfer_syntax_uid,
                instance.spool_path,
                instance.instance_number,
            )
        )
    held = {i.sop_instance_uid for s in series.values() for i in s.instances}
    drafts = session.scalars(
        select(Draft).where(Draft.study_id == study.id, Draft.purged_at.is_(None)).order_by(Draft.id)
    ).all()
    for document in (document for draft in drafts for document in draft.documents()):
        if document.sop_instance_uid in held:
            continue
        drafted = _document_series(document)
        if drafted is None:
            continue
        entry = series.setdefault(
            drafted.series_uid,
            SeriesEntry(drafted.series_uid, drafted.modality, drafted.description, drafted.body_part, drafted.number),
        )
        entry.instances.extend(drafted.instances)
    return list(series.values())


def find_study(session: Session, study_uid: str) -> Study | None:
    return session.scalar(select(Study).where(Study.study_uid == study_uid))
