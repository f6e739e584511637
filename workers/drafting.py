"""Drafting one study: aggregate its predictions, render the text, write and record the SR.

A service: :func:`draft_study` takes an open session and never commits; the task owns the transaction.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.uid import generate_uid
from sqlalchemy import select
from sqlalchemy.orm import Session

from predraft.core.events import record_event
from predraft.core.schema import Draft, Instance, Prediction, Study, utcnow
from predraft.core.states import EventKind, InstanceState, ReportKind, StudyState
from predraft.listener.spool import Spool
from predraft.models.pack import InstalledPack
from predraft.models.taxonomy import Side, View
from predraft.reporting.age import is_child
from predraft.reporting.aggregate import AggregationRule, HipObservation, aggregate
from predraft.reporting.sr import build_draft_sr
from predraft.reporting.text import Section, render_draft, template_environment


@dataclass(frozen=True)
class DraftOutcome:
    state: StudyState
    draft_id: int | None
    message: str


def draft_study(
    session: Session,
    *,
    study: Study,
    generation: int,
    pack: InstalledPack,
    spool: Spool,
    rule: AggregationRule | None = None,
    template_dir: Path | None = None,
) -> DraftOutcome:
    """Draft ``study`` for ``generation`` with the predictions of ``pack``'s model, combined by ``rule`` (default:
    the pack's own), worded by the pack's classes and templates (the site's ``template_dir`` first, then the
    pack's, then the base ones).

    Idempotent: a draft already recorded for this generation is returned as it is. A study with no
    classified image ends OUT_OF_SCOPE (nothing was a hip or pelvis radiograph) or ERROR. A draft of a
    later generation supersedes the previous one: its SR lists it in the Predecessor Documents Sequence.
    """
    model = pack.card
    existing = session.scalar(
        select(Draft).where(Draft.study_id == study.id, Draft.generation == generation, Draft.kind == ReportKind.DRAFT)
    )
    if existing is not None:
        return DraftOutcome(StudyState.DRAFTED, existing.id, "already drafted")

    rows = session.execute(
        select(Prediction, Instance)
        .join(Instance, Prediction.instance_id == Instance.id)
        .where(
            Instance.study_id == study.id,
            Instance.state == InstanceState.CLASSIFIED,
            Prediction.model_version == model.version,
            Prediction.model_name == model.name,
        )
        .order_by(Instance.id, Prediction.id)
    ).all()
    if not rows:
        states = [
            state for (state,) in session.execute(select(Instance.state).where(Instance.study_id == study.id)).all()
        ]
        errors = states.count(InstanceState.ERROR)
        if errors:
            return DraftOutcome(
                StudyState.ERROR, None, f"no image could be classified: {errors} of {len(states)} instance(s) failed"
            )
        return DraftOutcome(StudyState.OUT_OF_SCOPE, None, "no hip or pelvis radiograph in this study")

    observations = [
        HipObservation(
            instance.sop_instance_uid,
            Side(prediction.side),
            View(prediction.view),
            dict(prediction.probabilities),
            prediction.metal_present,
        )
        for prediction, instance in rows
    ]
    rule = rule or AggregationRule.from_pack(pack.pack.aggregation, pack.pack.no_finding)
    findings = aggregate(observations, threshold=model.threshold, class_thresholds=model.class_thresholds, rule=rule)
    sections = [Section(pack.pack, model, findings)]
    instances = list(dict.fromkeys(instance for _, instance in rows))
    evidence = [pydicom.dcmread(instance.spool_path, stop_before_pixels=True) for instance in instances]
    patient_is_child = any(is_child(ds) for ds in evidence)
    text = render_draft(
        sections,
        study_description=study.study_description,
        patient_is_child=patient_is_child,
        environment=template_environment(template_dir, pack.templates),
    )

    previous = session.scalar(
        select(Draft)
        .where(Draft.study_id == study.id, Draft.generation < generation, Draft.kind == ReportKind.DRAFT)
        .order_by(Draft.generation.desc())
        .limit(1)
    )
    predecessors = [] if previous is None else [pydicom.dcmread(previous.sr_path, stop_before_pixels=True)]

    entropy = [study.study_uid, str(generation), model.weights_sha256]
    sr_uid = generate_uid(entropy_srcs=[*entropy, "sr"])
    series_uid = generate_uid(entropy_srcs=[*entropy, "series"])
    sr = build_draft_sr(
        evidence=evidence,
        sections=sections,
        text=text,
        series_instance_uid=series_uid,
        sop_instance_uid=sr_uid,
        previous_versions=predecessors,
    )
    path = spool.write_sr(sr)

    draft = Draft(
        study_id=study.id,
        generation=generation,
        text=text.full,
        findings=[
            {
                "pack": pack.name,
                "label": pack.pack.label(f.hardware),
                "class_labels": {c.name: c.label for c in pack.pack.classes},
                "side": f.side.value,
                "side_label": pack.pack.sides[f.side],
                "hardware": f.hardware,
                "top_class": f.top_class,
                "probability": round(f.probability, 4),
                "views": [v.value for v in f.views],
                "reason": f.reason,
                "metal": f.metal,
                "probabilities": {c: round(float(p), 4) for c, p in f.probabilities.items()},
            }
            for f in findings
        ],
        model_name=model.name,
        model_version=model.version,
        pack=pack.name,
        sr_sop_instance_uid=sr_uid,
        kind=ReportKind.DRAFT,
        synthetic_demo=model.synthetic_demo,
        patient_is_child=patient_is_child,
        sr_series_uid=series_uid,
        sr_path=str(path),
        supersedes_id=None if previous is None else previous.id,
    )
    session.add(draft)
    session.flush()
    record_event(session, EventKind.DRAFTED, f"generation {generation}, SR {sr_uid}", study_id=study.id)
    return DraftOutcome(StudyState.DRAFTED, draft.id, f"SR {sr_uid}")


def apply_outcome(session: Session, *, study: Study, generation: int, outcome: DraftOutcome) -> None:
    """Record the study's new state, unless a newer instance re-opened it meanwhile."""
    if study.generation != generation or study.state != StudyState.DRAFTING:
        return
    study.state = outcome.state
    if outcome.state is StudyState.DRAFTED:
        study.drafted_at = utcnow()
        study.error = None
    else:
        study.error = outcome.message
        record_event(session, EventKind(outcome.state.value), outcome.message, study_id=study.id)
