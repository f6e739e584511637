"""Drafting one study: aggregate its predictions, render the text, write and record the SRs (the narrative one
and, unless the site turned it off, the AI results SR beside it).

A service: :func:`draft_study` takes an open session and never commits; the task owns the transaction.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from predraft.core.events import record_event
from predraft.core.schema import Draft, Instance, Prediction, Study, utcnow
from predraft.core.states import EventKind, InstanceState, ReportKind, StudyState
from predraft.listener.spool import Spool
from predraft.models.pack import DEFAULT_PACK, InstalledPack, Pack
from predraft.models.prepare import Region
from predraft.models.scope import REGION_WORDS
from predraft.models.taxonomy import Side, View
from predraft.reporting.age import is_child
from predraft.reporting.aggregate import AggregationRule, HipObservation, SideFinding, aggregate
from predraft.reporting.results_sr import build_results_sr
from predraft.reporting.sr import REQUIRED_EVIDENCE_TAGS, build_draft_sr
from predraft.reporting.text import Section, render_draft, template_environment


@dataclass(frozen=True)
class DraftOutcome:
    state: StudyState
    draft_id: int | None
    message: str
    #: The packs whose sections a draft written now holds, in order (none for "already drafted").
    packs: tuple[str, ...] = ()


def draft_study(
    session: Session,
    *,
    study: Study,
    generation: int,
    packs: Sequence[InstalledPack],
    spool: Spool,
    rule_for: Callable[[Pack], AggregationRule] | None = None,
    template_dir: Path | None = None,
    results_sr: bool = True,
) -> DraftOutcome:
    """Draft ``study`` for ``generation``: one section per pack of ``packs`` (in their order) that read images of
    it, from the predictions of that pack's model, combined by ``rule_for(pack)`` (default: the pack's own rule),
    worded by the pack's classes and templates (the site's ``template_dir`` first, then the packs', then the base
    ones).

    Idempotent: a draft already recorded for this generation is returned as it is. A study with no
    classified image ends OUT_OF_SCOPE (no image of a region an installed pack reads) or ERROR. A draft of a
    later generation supersedes the previous one: its SR lists it in the Predecessor Documents Sequence.

    With ``results_sr`` the draft also gets the AI results SR (:mod:`predraft.reporting.results_sr`), in a series
    of its own, superseding the previous draft's results SR where it had one.

    Images whose files spool retention purged are drafted from their predictions and referenced by their UIDs
    (:func:`_evidence`); with none of them held the outcome is ERROR. A previous draft whose SRs were purged is
    not named as their predecessor.
    """
    existing = session.scalar(
        select(Draft).where(Draft.study_id == study.id, Draft.generation == generation, Draft.kind == ReportKind.DRAFT)
    )
    if existing is not None:
        return DraftOutcome(StudyState.DRAFTED, existing.id, "already drafted")

    read: list[tuple[InstalledPack, Section, list[Instance]]] = []
    read_regions: dict[tuple[str, Side], Region] = {}
    for installed in packs:
        rows = _predictions(session, study, installed)
        if not rows:
            continue
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
        read_regions.update(
            ((instance.sop_instance_uid, Side(prediction.side)), _region(prediction.region))
            for prediction, instance in rows
            if prediction.region is not None
        )
        pack, model = installed.pack, installed.card
        rule = rule_for(pack) if rule_for else AggregationRule.from_pack(pack)
        findings = aggregate(
            observations, threshold=model.threshold, class_thresholds=model.class_thresholds, rule=rule
        )
        read.append((installed, Section(pack, model, findings), list(dict.fromkeys(i for _, i in rows))))
    if not read:
        states = [
            state for (state,) in session.execute(select(Instance.state).where(Instance.study_id == study.id)).all()
        ]
        errors = states.count(InstanceState.ERROR)
        if errors:
            return DraftOutcome(
                StudyState.ERROR, None, f"no image could be classified: {errors} of {len(states)} instance(s) failed"
            )
        regions = dict.fromkeys(region for installed in packs for region in installed.pack.regions)
        words = " or ".join(REGION_WORDS.get(region, region) for region in regions)
        return DraftOutcome(StudyState.OUT_OF_SCOPE, None, f"no {words} radiograph in this study")

    sections = [section for _, section, _ in read]
    instances = list(dict.fromkeys(instance for _, _, images in read for instance in images))
    evidence = _evidence(instances)
    if evidence is None:
        return DraftOutcome(
            StudyState.ERROR,
            None,
            f"the files of all {len(instances)} image(s) it would draft from were purged by spool retention: "
            "no header to draft the SR from (send one of them again)",
        )
    patient_is_child = any(is_child(ds) for ds in evidence)
    text = render_draft(
        sections,
        study_description=study.study_description,
        patient_is_child=patient_is_child,
        environment=template_environment(template_dir, *(installed.templates for installed, _, _ in read)),
    )

    previous = session.scalar(
        select(Draft)
        .where(Draft.study_id == study.id, Draft.generation < generation, Draft.kind == ReportKind.DRAFT)
        .order_by(Draft.generation.desc())
        .limit(1)
    )
    # A previous SR that spool retention purged is no longer listed as a predecessor: there is no file to name.
    kept = previous if previous is not None and previous.purged_at is None else None
    predecessors = [] if kept is None else [pydicom.dcmread(kept.sr_path, stop_before_pixels=True)]
    previous_results = (
        [pydicom.dcmread(kept.results_sr_path, stop_before_pixels=True)]
        if kept is not None and kept.results_sr_path
        else []
    )

    entropy = [study.study_uid, str(generation), *(section.model.weights_sha256 for section in sections)]
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
    results_uid = results_series_uid = results_path = None
    if results_sr:
        results_uid = generate_uid(entropy_srcs=[*entropy, "results sr"])
        results_series_uid = generate_uid(entropy_srcs=[*entropy, "results series"])
        results = build_results_sr(
            evidence=evidence,
            sections=sections,
            text=text,
            regions=read_regions,
            series_instance_uid=results_series_uid,
            sop_instance_uid=results_uid,
            previous_versions=previous_results,
        )
        results_path = str(spool.write_sr(results))

    models = [section.model for section in sections]
    draft = Draft(
        study_id=study.id,
        generation=generation,
        text=text.full,
        findings=[_finding_record(section.pack, finding) for section in sections for finding in section.findings],
        model_name=" + ".join(model.name for model in models)[:128],
        model_version=" + ".join(model.version for model in models)[:64],
        pack=", ".join(section.pack.name for section in sections)[:128],
        sr_sop_instance_uid=sr_uid,
        kind=ReportKind.DRAFT,
        synthetic_demo=any(model.synthetic_demo for model in models),
        patient_is_child=patient_is_child,
        sr_series_uid=series_uid,
        sr_path=str(path),
        results_sr_sop_instance_uid=results_uid,
        results_sr_series_uid=results_series_uid,
        results_sr_path=results_path,
        supersedes_id=None if previous is None else previous.id,
    )
    session.add(draft)
    session.flush()
    written = f"SR {sr_uid}" + (f", AI results SR {results_uid}" if results_uid else "")
    record_event(session, EventKind.DRAFTED, f"generation {generation}, {written}", study_id=study.id)
    return DraftOutcome(StudyState.DRAFTED, draft.id, f"SR {sr_uid}", tuple(section.pack.name for section in sections))


#: What a stand-in for a purged image copies from an image still held: the Patient and General Study modules'
#: attributes that the SRs and the child check read.
_SHARED_HEADER = (*REQUIRED_EVIDENCE_TAGS, "PatientAge", "StudyDescription", "StudyInstanceUID")


def _evidence(instances: Sequence[Instance]) -> list[Dataset] | None:
    """The SRs' evidence for ``instances``: each held image's header, read from the spool, the first of them
    first (the SRs copy the patient and study from it). An image whose file is not held (spool retention purged
    it, after a late image re-opened its study or for a redraft; or it went missing from the spool without being
    purged) is stood in for by its UIDs from the database and the patient and study attributes of a held image of
    the same study. None when no image's file is held."""
    held = [instance for instance in instances if instance.purged_at is None and Path(instance.spool_path).is_file()]
    if not held:
        return None
    headers: dict[int, Dataset] = {
        instance.id: pydicom.dcmread(instance.spool_path, stop_before_pixels=True) for instance in held
    }
    template = headers[held[0].id]
    evidence = [headers[instance.id] for instance in held]
    for instance in instances:
        if instance.id in headers:
            continue
        stand_in = Dataset()
        for keyword in _SHARED_HEADER:
            if keyword in template:
                setattr(stand_in, keyword, template[keyword].value)
        stand_in.SeriesInstanceUID = instance.series.series_uid
        stand_in.SOPInstanceUID = instance.sop_instance_uid
        stand_in.SOPClassUID = instance.sop_class_uid
        evidence.append(stand_in)
    return evidence


def _region(value: list[int]) -> Region:
    top, bottom, left, right = (int(v) for v in value)
    return top, bottom, left, right


def _predictions(session: Session, study: Study, installed: InstalledPack) -> list[tuple[Prediction, Instance]]:
    """The predictions of ``installed``'s model on the classified images of ``study`` routed to it (images
    prepared before routing was recorded are the hip's)."""
    return [
        (prediction, instance)
        for prediction, instance in session.execute(
            select(Prediction, Instance)
            .join(Instance, Prediction.instance_id == Instance.id)
            .where(
                Instance.study_id == study.id,
                Instance.state == InstanceState.CLASSIFIED,
                func.coalesce(Instance.pack, DEFAULT_PACK) == installed.name,
                Prediction.model_version == installed.card.version,
                Prediction.model_name == installed.card.name,
            )
            .order_by(Instance.id, Prediction.id)
        ).all()
    ]


def _finding_record(pack: Pack, finding: SideFinding) -> dict[str, object]:
    """One side of a draft as the database keeps it, with the words its pack gave it (the worklist shows those)."""
    return {
        "pack": pack.name,
        "label": pack.label(finding.hardware),
        "class_labels": {c.name: c.label for c in pack.classes},
        "side": finding.side.value,
        "side_label": pack.sides[finding.side],
        "hardware": finding.hardware,
        "top_class": finding.top_class,
        "probability": round(finding.probability, 4),
        "views": [v.value for v in finding.views],
        "reason": finding.reason,
        "metal": finding.metal,
        "probabilities": {c: round(float(p), 4) for c, p in finding.probabilities.items()},
    }


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
