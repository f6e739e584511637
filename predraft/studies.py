"""Reading studies for the CLI and the web app (a service: callers own the session)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from predraft.schema import Draft, Instance, Study


def list_studies(session: Session, *, state: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
    counts = (select(Instance.study_id, func.count(Instance.id).label("instances"))
              .group_by(Instance.study_id).subquery())
    query = (select(Study, counts.c.instances).outerjoin(counts, counts.c.study_id == Study.id)
             .order_by(Study.last_instance_at.desc()).limit(limit))
    if state:
        query = query.where(Study.state == state)
    return [
        {"study_uid": study.study_uid, "state": study.state, "generation": study.generation,
         "instances": instances or 0, "accession_number": study.accession_number,
         "received_at": study.received_at.isoformat(timespec="seconds"),
         "drafted_at": study.drafted_at.isoformat(timespec="seconds") if study.drafted_at else None}
        for study, instances in session.execute(query).all()
    ]


def latest_draft(session: Session, study_id: int) -> Draft | None:
    return session.scalar(select(Draft).where(Draft.study_id == study_id).order_by(Draft.generation.desc()).limit(1))


def study_detail(session: Session, study_uid: str) -> dict[str, Any] | None:
    study = session.scalar(select(Study).where(Study.study_uid == study_uid))
    if study is None:
        return None
    draft = latest_draft(session, study.id)
    return {
        "study_uid": study.study_uid, "state": study.state, "generation": study.generation, "error": study.error,
        "patient_id": study.patient_id, "accession_number": study.accession_number,
        "study_description": study.study_description,
        "instances": [
            {"sop_instance_uid": i.sop_instance_uid, "state": i.state, "view": i.view, "side": i.side,
             "view_rule": i.view_rule, "error": i.error,
             "predictions": [{"side": p.side, "top_class": p.top_class, "probability": round(p.top_probability, 3)}
                             for p in i.predictions]}
            for i in study.instances
        ],
        "draft": None if draft is None else {
            "generation": draft.generation, "sr_sop_instance_uid": draft.sr_sop_instance_uid,
            "sr_path": draft.sr_path, "model": f"{draft.model_name} {draft.model_version}", "text": draft.text},
    }
