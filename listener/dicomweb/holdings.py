"""What is held, as QIDO-RS and WADO-RS see it: the received instances of a study and its drafted SRs,
series by series."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import pydicom
from pydicom.errors import InvalidDicomError
from sqlalchemy import select
from sqlalchemy.orm import Session

from predraft.core.schema import Draft, Instance, Series, Study

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class InstanceEntry:
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str
    path: str


@dataclass
class SeriesEntry:
    series_uid: str
    modality: str
    description: str
    body_part: str
    instances: list[InstanceEntry] = field(default_factory=list)


def _draft_series(draft: Draft) -> SeriesEntry | None:
    """The SR of ``draft`` as a one-instance series, read from the SR file's header; None if unreadable."""
    try:
        sr = pydicom.dcmread(
            draft.sr_path, stop_before_pixels=True, specific_tags=["SOPClassUID", "SeriesDescription", "Modality"]
        )
    except (OSError, InvalidDicomError) as exc:
        log.warning(
            "drafted SR %s cannot be read (%s); left out of DICOMweb answers",
            draft.sr_sop_instance_uid,
            type(exc).__name__,
        )
        return None
    instance = InstanceEntry(
        str(sr.get("SOPClassUID", "")),
        draft.sr_sop_instance_uid,
        str(sr.file_meta.get("TransferSyntaxUID", "")),
        draft.sr_path,
    )
    return SeriesEntry(
        draft.sr_series_uid, str(sr.get("Modality", "SR")), str(sr.get("SeriesDescription", "")), "", [instance]
    )


def study_series(session: Session, study: Study) -> list[SeriesEntry]:
    """Every series of ``study`` with its instances: the received ones, then the drafted SRs (an SR the
    PACS sent back, already among the received instances, is listed once)."""
    series: dict[str, SeriesEntry] = {}
    rows = session.execute(
        select(Instance, Series).join(Series).where(Instance.study_id == study.id).order_by(Series.id, Instance.id)
    ).all()
    for instance, row in rows:
        entry = series.setdefault(
            row.series_uid, SeriesEntry(row.series_uid, row.modality, row.series_description, row.body_part)
        )
        entry.instances.append(
            InstanceEntry(
                instance.sop_class_uid, instance.sop_instance_uid, instance.transfer_syntax_uid, instance.spool_path
            )
        )
    held = {i.sop_instance_uid for s in series.values() for i in s.instances}
    drafts = session.scalars(select(Draft).where(Draft.study_id == study.id).order_by(Draft.id)).all()
    for draft in drafts:
        if draft.sr_sop_instance_uid in held:
            continue
        drafted = _draft_series(draft)
        if drafted is None:
            continue
        entry = series.setdefault(
            drafted.series_uid,
            SeriesEntry(drafted.series_uid, drafted.modality, drafted.description, drafted.body_part),
        )
        entry.instances.extend(drafted.instances)
    return list(series.values())


def find_study(session: Session, study_uid: str) -> Study | None:
    return session.scalar(select(Study).where(Study.study_uid == study_uid))
