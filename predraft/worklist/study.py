"""What the study page shows (a service: the caller owns the session)."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from predraft.core.schema import Draft, Instance, Review, Study, User
from predraft.core.states import ReportKind, StudyState
from predraft.core.studies import export_detail, latest_draft
from predraft.models.taxonomy import STRUCTURED_REPORT_SOP_CLASSES, Side
from predraft.worklist import present
from predraft.worklist.worklist import finding_summary


def study_page(session: Session, study_uid: str) -> dict[str, Any] | None:
    study = session.scalar(select(Study).where(Study.study_uid == study_uid))
    if study is None:
        return None
    draft = latest_draft(session, study.id)
    review = None
    if draft is not None:
        row = session.execute(
            select(Review, User).join(User, User.id == Review.user_id).where(Review.draft_id == draft.id)
        ).first()
        if row is not None:
            review = _review(row[0], row[1])
    instances = [i for i in study.instances if i.sop_class_uid not in STRUCTURED_REPORT_SOP_CLASSES]
    return {
        **present.study_identity(study),
        "description": study.study_description,
        "state": present.worklist_state(study.state, study.prepared_at is not None).value,
        "requested_pack": study.requested_pack,
        "error": study.error,
        "generation": study.generation,
        "hips": _hips(instances, draft),
        "problems": [
            {"view": present.view_label(i.view, i.side), "state": i.state, "error": i.error}
            for i in instances
            if i.state in {"error", "skipped"}
        ],
        "draft": None if draft is None else _draft(draft),
        "review": review,
        "reviewable": draft is not None
        and review is None
        and study.state == StudyState.DRAFTED
        and study.generation == draft.generation,
        "history": _history(session, study.id),
    }


def _draft(draft: Draft) -> dict[str, Any]:
    sides = []
    for finding in draft.findings:
        summary = finding_summary(finding)
        probabilities = finding.get("probabilities") or {finding.get("top_class"): finding.get("probability", 0.0)}
        summary["bars"] = sorted(
            (
                {
                    "label": present.hardware_label(key, finding),
                    "value": float(value),
                    "percent": round(100 * float(value)),
                }
                for key, value in probabilities.items()
            ),
            key=lambda bar: -bar["value"],
        )
        sides.append(summary)
    return {
        "id": draft.id,
        "generation": draft.generation,
        "text": draft.text,
        "model_name": draft.model_name,
        "model_version": draft.model_version,
        "pack": draft.pack,
        "synthetic_demo": bool(draft.synthetic_demo),
        "sr_sop_instance_uid": draft.sr_sop_instance_uid,
        "results_sr_sop_instance_uid": draft.results_sr_sop_instance_uid,
        "created_at": present.timestamp(draft.created_at),
        "sides": sides,
        "exports": [export_detail(export) for export in draft.exports],
    }


def _review(review: Review, user: User) -> dict[str, Any]:
    report = review.report
    return {
        "action": review.action,
        "user": user.username,
        "display_name": present.person_name(user.display_name),
        "at": present.timestamp(review.created_at),
        "final_text": review.final_text,
        "diff": review.diff,
        "reason": review.reason,
        "report": None
        if report is None
        else {
            "kind": report.kind,
            "sr_sop_instance_uid": report.sr_sop_instance_uid,
            "exports": [export_detail(export) for export in report.exports],
        },
    }


def _hips(instances: list[Instance], draft: Draft | None) -> list[dict[str, Any]]:
    """One entry per hip seen on an image: from its predictions (an AP pelvis gives right and left), else, for
    an image prepared but not classified yet, from its view and sides."""
    by_side = {} if draft is None else {f.get("side"): f for f in draft.findings}
    classes = {side: f.get("hardware") or f.get("top_class") for side, f in by_side.items()}
    hips = []
    for instance in instances:
        if instance.state in {"error", "skipped"}:
            continue
        seen: list[tuple[str, str, str | None]] = [(p.view, p.side, p.top_class) for p in instance.predictions]
        if not seen and instance.view is not None:
            seen = [(instance.view, side, None) for side in (instance.side or Side.UNKNOWN.value).split("+")]
        for view, side, top_class in dict.fromkeys(seen):
            hardware = classes.get(side) or top_class
            hips.append(
                {
                    "instance_id": instance.id,
                    "side": side,
                    "side_label": present.side_label(side),
                    "view_label": present.view_label(view, None),
                    "state": instance.state,
                    "overlay_class": hardware,
                    "scope_note": instance.scope_note if instance.scope_flag else None,
                    "overlay_label": present.hardware_label(hardware, by_side.get(side)) if hardware else None,
                }
            )
    return hips


def _history(session: Session, study_id: int) -> list[dict[str, Any]]:
    """Every SR issued for the study, oldest first: an AI draft's narrative SR, then its AI results SR (exported
    together: one export row per destination covers both)."""
    kinds = {
        ReportKind.DRAFT: "Unverified AI draft",
        ReportKind.VERIFIED: "Verified report",
        ReportKind.REJECTION: "Rejection notice",
    }
    by_generation: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for report in session.scalars(select(Draft).where(Draft.study_id == study_id).order_by(Draft.id)):
        exports = [export_detail(export) for export in report.exports]
        kind = kinds.get(ReportKind(report.kind), report.kind)
        for document in report.documents():
            by_generation[report.generation].append(
                {
                    "kind": "AI results (TID 1500)" if document.results else kind,
                    "generation": report.generation,
                    "sr_sop_instance_uid": document.sop_instance_uid,
                    "at": present.timestamp(report.created_at),
                    "exports": exports,
                }
            )
    return [entry for generation in sorted(by_generation) for entry in by_generation[generation]]
