"""Reading studies for the CLI and the web app (a service: callers own the session)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from predraft.core.clock import as_utc
from predraft.core.schema import Draft, Export, Instance, Review, Study
from predraft.core.states import ReportKind


def list_studies(
    session: Session, *, state: str | None = None, since: datetime | None = None, limit: int = 100
) -> list[dict[str, Any]]:
    """Studies newest first (by their last image): only those in ``state``, only those whose last image
    arrived at or after ``since`` (an aware datetime), at most ``limit``."""
    counts = (
        select(Instance.study_id, func.count(Instance.id).label("instances")).group_by(Instance.study_id).subquery()
    )
    query = (
        select(Study, counts.c.instances)
        .outerjoin(counts, counts.c.study_id == Study.id)
        .order_by(Study.last_instance_at.desc())
        .limit(limit)
    )
    if state:
        query = query.where(Study.state == state)
    if since is not None:
        if since.tzinfo is None:
            raise ValueError(f"since must be an aware datetime, not {since!r}")
        query = query.where(Study.last_instance_at >= since.astimezone(UTC))
    return [
        {
            "study_uid": study.study_uid,
            "state": study.state,
            "generation": study.generation,
            "instances": instances or 0,
            "accession_number": study.accession_number,
            "received_at": study.received_at.isoformat(timespec="seconds"),
            "last_instance_at": study.last_instance_at.isoformat(timespec="seconds"),
            "drafted_at": study.drafted_at.isoformat(timespec="seconds") if study.drafted_at else None,
        }
        for study, instances in session.execute(query).all()
    ]


def newest_report_first(draft: Any = Draft) -> tuple[Any, ...]:
    """The order that puts a study's newest SR row first: its newest draft, or the verified report or rejection
    notice a review issued for that draft (issued later, so a higher id in the same generation). ``draft`` is
    :class:`Draft` or an alias of it (for a correlated subquery)."""
    return (draft.generation.desc(), draft.id.desc())


def newest_report(session: Session, study_id: int) -> Draft | None:
    """The study's newest SR row (see :func:`newest_report_first`): what ``predraft studies resend`` sends."""
    return session.scalar(select(Draft).where(Draft.study_id == study_id).order_by(*newest_report_first()).limit(1))


def latest_draft(session: Session, study_id: int) -> Draft | None:
    """The study's newest AI draft (not the verified report or rejection notice a review issued for it)."""
    return session.scalar(
        select(Draft)
        .where(Draft.study_id == study_id, Draft.kind == ReportKind.DRAFT)
        .order_by(Draft.generation.desc())
        .limit(1)
    )


def study_detail(session: Session, study_uid: str) -> dict[str, Any] | None:
    study = session.scalar(select(Study).where(Study.study_uid == study_uid))
    if study is None:
        return None
    draft = latest_draft(session, study.id)
    return {
        "study_uid": study.study_uid,
        "state": study.state,
        "generation": study.generation,
        "error": study.error,
        "patient_id": study.patient_id,
        "accession_number": study.accession_number,
        "study_description": study.study_description,
        "timings": study_timings(study, draft),
        "instances": [
            {
                "sop_instance_uid": i.sop_instance_uid,
                "state": i.state,
                "view": i.view,
                "side": i.side,
                "view_rule": i.view_rule,
                "error": i.error,
                "region_read": i.region_read,
                "region_probability": i.region_probability,
                "scope_flag": i.scope_flag,
                "pack": i.pack,
                "scope_note": i.scope_note,
                "predictions": [
                    {
                        "side": p.side,
                        "top_class": p.top_class,
                        "probability": round(p.top_probability, 3),
                        "metal": p.metal_present,
                    }
                    for p in i.predictions
                ],
            }
            for i in study.instances
        ],
        "draft": None
        if draft is None
        else {
            "generation": draft.generation,
            "sr_sop_instance_uid": draft.sr_sop_instance_uid,
            "sr_path": draft.sr_path,
            "results_sr_sop_instance_uid": draft.results_sr_sop_instance_uid,
            "results_sr_path": draft.results_sr_path,
            "model": f"{draft.model_name} {draft.model_version}",
            "pack": draft.pack,
            "text": draft.text,
            "exports": [export_detail(export) for export in draft.exports],
        },
        "review": None if draft is None else review_detail(session, draft.id),
    }


def review_detail(session: Session, draft_id: int) -> dict[str, Any] | None:
    """How a radiologist reviewed the draft (the worklist), with the SR the review issued; None if not yet."""
    review = session.scalar(select(Review).where(Review.draft_id == draft_id))
    if review is None:
        return None
    report = review.report
    return {
        "action": review.action,
        "user": review.user.username,
        "at": as_utc(review.created_at).isoformat(timespec="seconds"),
        "reason": review.reason,
        "sr_sop_instance_uid": report.sr_sop_instance_uid if report else None,
        "exports": [export_detail(export) for export in report.exports] if report else [],
    }


def study_timings(study: Study, draft: Draft | None) -> dict[str, Any]:
    """Each step's time (UTC, ISO) and the seconds from the last instance received to each later step.

    Steps: received (first instance), last_instance, ready, prepared (last instance prepared), classified
    (last instance classified), drafted (the latest draft's SR stored), exported (the latest draft's last
    destination stored it). ``seconds_from_last_instance["drafted"]`` is the time to draft.
    """
    exported = [e.exported_at for e in draft.exports if e.exported_at] if draft is not None else []
    moments = {
        "received": study.received_at,
        "last_instance": study.last_instance_at,
        "ready": study.ready_at,
        "prepared": study.prepared_at,
        "classified": study.classified_at,
        "drafted": draft.created_at if draft is not None else None,
        "exported": max(exported) if exported else None,
    }
    start = as_utc(study.last_instance_at)
    return {
        "at": {
            step: as_utc(moment).isoformat(timespec="milliseconds") if moment else None
            for step, moment in moments.items()
        },
        "seconds_from_last_instance": {
            step: round((as_utc(moment) - start).total_seconds(), 3)
            for step, moment in moments.items()
            if moment is not None and step not in {"received", "last_instance"}
        },
    }


def export_detail(export: Export) -> dict[str, Any]:
    """Where the export of a draft to one destination stands (no secrets: the row holds none)."""
    return {
        "destination": export.destination,
        "state": export.state,
        "attempts": export.attempts,
        "last_error": export.last_error,
        "exported_at": export.exported_at.isoformat(timespec="seconds") if export.exported_at else None,
    }
