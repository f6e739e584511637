"""The worklist query: one row per study, filtered, searched, sorted and paged (a service: the caller owns the
session).

Three queries per page whatever the table's size: the page of studies (with the total count), then the
latest AI draft with its review, and the instances, of those studies only. Filters work on indexed study
columns: the worklist state maps to ``studies.state`` and ``prepared_at``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from sqlalchemy import ColumnElement, Select, and_, func, or_, select
from sqlalchemy.orm import Session

from predraft.core.schema import Draft, Instance, Review, Study, User
from predraft.core.states import ReportKind, StudyState
from predraft.models.pack import DEFAULT_PACK
from predraft.models.scope import ScopeFlag
from predraft.models.taxonomy import STRUCTURED_REPORT_SOP_CLASSES
from predraft.worklist import present
from predraft.worklist.present import WorklistState

PAGE_SIZE = 50
SORTS = {
    "received": Study.received_at,
    "study_date": Study.study_date,
    "patient": Study.patient_name,
    "accession": Study.accession_number,
    "state": Study.state,
}


class QueryError(ValueError):
    """A worklist query parameter that makes no sense; the message names it."""


@dataclass(frozen=True)
class WorklistQuery:
    """What the worklist shows: ``state`` (a :class:`WorklistState`), study dates from/to (inclusive),
    ``search`` (accession number or patient ID, exact or leading part, any case), ``sort`` (a key of
    :data:`SORTS`), ``descending``, ``page`` (from 1)."""

    state: WorklistState | None = None
    date_from: date | None = None
    date_to: date | None = None
    search: str = ""
    sort: str = "received"
    descending: bool = True
    page: int = 1
    page_size: int = PAGE_SIZE

    @classmethod
    def from_params(cls, params: dict[str, str]) -> WorklistQuery:
        """From query parameters ``state``, ``from``, ``to``, ``q``, ``sort``, ``order`` (asc/desc), ``page``."""
        state = params.get("state") or None
        try:
            state_value = WorklistState(state) if state else None
        except ValueError as exc:
            raise QueryError(f"state {state!r} is not one of {', '.join(s.value for s in WorklistState)}") from exc
        sort = params.get("sort") or "received"
        if sort not in SORTS:
            raise QueryError(f"sort {sort!r} is not one of {', '.join(SORTS)}")
        order = params.get("order") or "desc"
        if order not in {"asc", "desc"}:
            raise QueryError(f"order {order!r} is not asc or desc")
        try:
            page = int(params.get("page") or 1)
        except ValueError as exc:
            raise QueryError(f"page {params.get('page')!r} is not a number") from exc
        if page < 1:
            raise QueryError(f"page {page} is not 1 or more")
        return cls(
            state=state_value,
            date_from=_date(params, "from"),
            date_to=_date(params, "to"),
            search=(params.get("q") or "").strip()[:64],
            sort=sort,
            descending=order == "desc",
            page=page,
        )

    def params(self, **changes: Any) -> dict[str, str]:
        """Query parameters giving this query (with ``changes``), defaults left out."""
        values = {
            "state": self.state.value if self.state else "",
            "from": self.date_from.isoformat() if self.date_from else "",
            "to": self.date_to.isoformat() if self.date_to else "",
            "q": self.search,
            "sort": self.sort,
            "order": "desc" if self.descending else "asc",
            "page": str(self.page),
        }
        values.update({key: str(value) for key, value in changes.items()})
        defaults = {"sort": "received", "order": "desc", "page": "1"}
        return {key: value for key, value in values.items() if value and defaults.get(key) != value}


def _date(params: dict[str, str], key: str) -> date | None:
    value = params.get(key) or ""
    if not value:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError as exc:
        raise QueryError(f"{key} {value!r} is not a date (YYYY-MM-DD)") from exc


@dataclass
class WorklistPage:
    query: WorklistQuery
    rows: list[dict[str, Any]]
    total: int
    pages: int
    counts: dict[str, int] = field(default_factory=dict)


def _state_condition(state: WorklistState) -> ColumnElement[bool]:
    if state is WorklistState.WAITING:
        return and_(Study.state == StudyState.READY, Study.prepared_at.is_(None))
    if state is WorklistState.CLASSIFYING:
        return or_(
            and_(Study.state == StudyState.READY, Study.prepared_at.is_not(None)), Study.state == StudyState.DRAFTING
        )
    return Study.state == StudyState(state.value)  # the other worklist states are study states


def _escape_like(text: str) -> str:
    return re.sub(r"([\\%_])", r"\\\1", text)


def _filtered(query: WorklistQuery, statement: Select) -> Select:
    if query.state is not None:
        statement = statement.where(_state_condition(query.state))
    if query.date_from is not None:
        statement = statement.where(Study.study_date >= query.date_from.strftime("%Y%m%d"))
    if query.date_to is not None:
        statement = statement.where(Study.study_date <= query.date_to.strftime("%Y%m%d"))
    if query.search:
        pattern = _escape_like(query.search.lower()) + "%"
        statement = statement.where(
            or_(
                func.lower(Study.accession_number).like(pattern, escape="\\"),
                func.lower(Study.patient_id).like(pattern, escape="\\"),
            )
        )
    return statement


def worklist_page(session: Session, query: WorklistQuery) -> WorklistPage:
    total = session.scalar(_filtered(query, select(func.count(Study.id)))) or 0
    pages = max(1, -(-total // query.page_size))
    column = SORTS[query.sort]
    order = [column.desc() if query.descending else column.asc(), Study.id.desc() if query.descending else Study.id]
    studies = session.scalars(
        _filtered(query, select(Study))
        .order_by(*order)
        .limit(query.page_size)
        .offset((query.page - 1) * query.page_size)
    ).all()
    ids = [study.id for study in studies]
    drafts = _latest_drafts(session, ids)
    reviews = _reviews(session, [draft.id for draft in drafts.values()])
    instances = _instances(session, ids)
    rows = [_row(study, drafts.get(study.id), reviews, instances.get(study.id, [])) for study in studies]
    return WorklistPage(query, rows, total, pages)


def _latest_drafts(session: Session, study_ids: list[int]) -> dict[int, Draft]:
    if not study_ids:
        return {}
    latest: dict[int, Draft] = {}
    for draft in session.scalars(
        select(Draft)
        .where(Draft.study_id.in_(study_ids), Draft.kind == ReportKind.DRAFT)
        .order_by(Draft.study_id, Draft.generation)
    ):
        latest[draft.study_id] = draft
    return latest


def _reviews(session: Session, draft_ids: list[int]) -> dict[int, tuple[Review, str]]:
    if not draft_ids:
        return {}
    rows = session.execute(
        select(Review, User.username).join(User, User.id == Review.user_id).where(Review.draft_id.in_(draft_ids))
    ).all()
    return {review.draft_id: (review, username) for review, username in rows}


#: How each scope flag of an instance shows on its study's worklist row (CSS key, label), in this order.
_SCOPE_FLAGS = {
    ScopeFlag.TAGS_DISAGREE: ("tags", "Tags disagree"),
    ScopeFlag.UNTAGGED: ("untagged", "No body-part tags"),
    ScopeFlag.VIEW_FROM_IMAGE: ("view", "View read from image"),
    ScopeFlag.REQUESTED: ("requested", "Drafted on request"),
}
_InstanceRow = tuple[str | None, str | None, str, str | None, str | None]  # view, side, state, scope flag, error


def _instances(session: Session, study_ids: list[int]) -> dict[int, list[_InstanceRow]]:
    found: dict[int, list[_InstanceRow]] = {}
    if not study_ids:
        return found
    for study_id, view, side, state, flag, error in session.execute(
        select(Instance.study_id, Instance.view, Instance.side, Instance.state, Instance.scope_flag, Instance.error)
        .where(Instance.study_id.in_(study_ids), Instance.sop_class_uid.not_in(STRUCTURED_REPORT_SOP_CLASSES))
        .order_by(Instance.id)
    ):
        found.setdefault(study_id, []).append((view, side, state, flag, error))
    return found


def finding_summary(finding: dict[str, Any]) -> dict[str, Any]:
    """One side of a draft as the worklist and the study page show it."""
    reason = str(finding.get("reason") or "")
    return {
        "side": present.side_label(finding.get("side")),
        # how the pack named the side ("Right hip"); drafts from before packs were all hips
        "side_name": finding.get("side_label") or f"{present.side_label(finding.get('side'))} hip",
        "pack": finding.get("pack") or DEFAULT_PACK,
        "label": present.hardware_label(finding.get("hardware"), finding),
        "probability": float(finding.get("probability") or 0.0),
        "top_label": present.hardware_label(finding.get("top_class"), finding),
        "indeterminate": finding.get("hardware") is None,
        "metal_disagreement": "metal check" in reason,
        "reason": reason,
    }


def _row(
    study: Study, draft: Draft | None, reviews: dict[int, tuple[Review, str]], instances: list[_InstanceRow]
) -> dict[str, Any]:
    findings = [finding_summary(f) for f in draft.findings] if draft is not None else []
    review = reviews.get(draft.id) if draft is not None else None
    state = present.worklist_state(study.state, study.prepared_at is not None)
    flags = []
    if any(f["indeterminate"] for f in findings):
        flags.append(("indeterminate", "Indeterminate"))
    if any(f["metal_disagreement"] for f in findings):
        flags.append(("metal", "Metal check disagrees"))
    if draft is not None and draft.synthetic_demo:
        flags.append(("demo", "Demo model"))
    if draft is not None and draft.patient_is_child:
        flags.append(("child", "Under 18"))
    if any(instance_state == "error" for _, _, instance_state, _, _ in instances):
        flags.append(("error", "Instance error"))
    scope_flags = {flag for *_, flag, _ in instances}
    flags.extend(shown for flag, shown in _SCOPE_FLAGS.items() if flag in scope_flags)
    if any(state == "skipped" and error and error.startswith("tags say") for _, _, state, _, error in instances):
        flags.append(("gate", "Image reads as another body part"))
    return {
        **present.study_identity(study),
        "views": [present.view_label(view, side) if view else f"({state})" for view, side, state, _, _ in instances],
        "state": state.value,
        "findings": findings,
        "flags": flags,
        "review": None if review is None else {"action": review[0].action, "user": review[1]},
        "model": f"{draft.model_name} {draft.model_version}" if draft is not None else None,
        "pack": draft.pack if draft is not None else None,
        "synthetic_demo": bool(draft is not None and draft.synthetic_demo),
    }
