"""The admins' statistics: drafts per day, how drafts fare in review per class and per model version, and
time to draft (a service: the caller owns the session).

The rates are the measure of the system's value the reference paper asks for: of the reviewed drafts, the
share accepted as drafted, accepted with edits, and rejected. A draft counts once for each class it names
on any side (``indeterminate`` for a side it left to the radiologist). Time to draft is the seconds from a
study's last instance to its latest draft, as ``predraft studies show`` reports it
(:func:`predraft.core.studies.study_timings`).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from datetime import date, timedelta
from typing import Any

from sqlalchemy import and_, select
from sqlalchemy.orm import Session

from predraft.core.schema import Draft, Review, Study, utcnow
from predraft.core.states import ReportKind, ReviewAction
from predraft.models.pack import DEFAULT_PACK
from predraft.worklist import present

DAYS = 30
PERCENTILES = (50, 90, 95, 99)


def _rates(counter: Counter[str], drafts: int) -> dict[str, Any]:
    reviewed = sum(counter[action] for action in ReviewAction)
    share = {action.value: (counter[action] / reviewed if reviewed else None) for action in ReviewAction}
    return {
        "drafts": drafts,
        "reviewed": reviewed,
        "accepted": counter[ReviewAction.ACCEPTED],
        "edited": counter[ReviewAction.EDITED],
        "rejected": counter[ReviewAction.REJECTED],
        "acceptance_rate": share["accepted"],
        "edit_rate": share["edited"],
        "rejection_rate": share["rejected"],
    }


def percentile(values: list[float], q: float) -> float | None:
    """Linear-interpolation percentile (numpy's default), None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100.0
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def statistics(session: Session, *, today: date | None = None) -> dict[str, Any]:
    today = today or utcnow().date()
    first_day = today - timedelta(days=DAYS - 1)
    per_day: Counter[date] = Counter()
    per_class: dict[tuple[str, str], Counter[str]] = defaultdict(Counter)
    per_class_drafts: Counter[tuple[str, str]] = Counter()
    class_label: dict[tuple[str, str], str] = {}
    per_pack: dict[str, Counter[str]] = defaultdict(Counter)
    per_pack_drafts: Counter[str] = Counter()
    per_model: dict[str, Counter[str]] = defaultdict(Counter)
    per_model_drafts: Counter[str] = Counter()
    overall: Counter[str] = Counter()
    total = 0
    rows = session.execute(
        select(Draft.created_at, Draft.findings, Draft.model_name, Draft.model_version, Draft.pack, Review.action)
        .outerjoin(Review, Review.draft_id == Draft.id)
        .where(Draft.kind == ReportKind.DRAFT)
    )
    for created_at, findings, model_name, model_version, packs, action in rows:
        total += 1
        day = present.utc(created_at).date()
        if day >= first_day:
            per_day[day] += 1
        model = f"{model_name} {model_version}"
        per_model_drafts[model] += 1
        per_pack_drafts[packs] += 1
        classes: set[tuple[str, str]] = set()
        for finding in findings or []:
            key = (finding.get("pack") or DEFAULT_PACK, finding.get("hardware") or "indeterminate")
            classes.add(key)
            class_label.setdefault(key, present.hardware_label(finding.get("hardware"), finding))
        for key in classes:
            per_class_drafts[key] += 1
        if action is not None:
            overall[action] += 1
            per_model[model][action] += 1
            per_pack[packs][action] += 1
            for key in classes:
                per_class[key][action] += 1

    seconds = [
        (present.utc(drafted) - present.utc(last)).total_seconds()
        for last, drafted in session.execute(
            select(Study.last_instance_at, Draft.created_at).join(
                Draft,
                and_(Draft.study_id == Study.id, Draft.generation == Study.generation, Draft.kind == ReportKind.DRAFT),
            )
        )
    ]
    days = [first_day + timedelta(days=offset) for offset in range(DAYS)]
    busiest = max(per_day.values(), default=0)
    return {
        "drafts_per_day": [
            {
                "day": day.isoformat(),
                "drafts": per_day[day],
                "percent": round(100 * per_day[day] / busiest) if busiest else 0,
            }
            for day in days
        ],
        "overall": _rates(overall, total),
        "per_class": [
            {
                "pack": key[0],
                "class": key[1],
                "label": class_label[key],
                **_rates(per_class[key], per_class_drafts[key]),
            }
            for key in sorted(per_class_drafts, key=lambda k: (-per_class_drafts[k], k))
        ],
        "per_pack": [
            {"pack": packs, **_rates(per_pack[packs], per_pack_drafts[packs])} for packs in sorted(per_pack_drafts)
        ],
        "per_model": [
            {"model": model, **_rates(per_model[model], per_model_drafts[model])} for model in sorted(per_model_drafts)
        ],
        "time_to_draft": {
            "studies": len(seconds),
            "percentiles": {f"p{q}": percentile(seconds, q) for q in PERCENTILES},
        },
    }
