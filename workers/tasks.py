"""Celery tasks: prepare -> classify -> draft. Each is idempotent; the database records what is done.

Only ids and small letterboxed images travel in messages; patient data never does, and task logs name
database ids only.
"""

from __future__ import annotations

import logging
import threading
from contextlib import AbstractContextManager
from dataclasses import replace
from functools import lru_cache
from pathlib import Path

import numpy as np
from celery import Task, shared_task
from celery.signals import worker_process_shutdown, worker_shutdown
from kombu.exceptions import OperationalError as KombuOperationalError
from pydicom.uid import UID_dictionary
from sqlalchemy import delete
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from predraft.core.clock import as_utc
from predraft.core.db import session_scope
from predraft.core.events import record_event
from predraft.core.library_text import describe_exception, traceback_without_messages
from predraft.core.metrics import DECODE_FAILURES, DRAFTS, IMAGES_ROUTED, TIME_TO_DRAFT
from predraft.core.schema import Instance, LeasedModel, Prediction, Study, utcnow
from predraft.core.settings import Settings, get_settings
from predraft.core.states import FINISHED_INSTANCE_STATES, EventKind, InstanceState, StudyState
from predraft.listener.spool import Spool
from predraft.models.factory import Classifier, load_classifier
from predraft.models.framing import IMPLANT_CROP
from predraft.models.pack import DEFAULT_PACK, InstalledPack, PackRegistry
from predraft.models.prepare import HipImage, OutOfScopeError
from predraft.models.scope import ScopeDecision, ScopeFlag
from predraft.workers.app import CLASSIFY, DRAFT, PREPARE
from predraft.workers.batcher import MicroBatcher
from predraft.workers.dead_letters import record_dead_letter
from predraft.workers.dispatch import finish_if_done, reclassify_stale_instances
from predraft.workers.drafting import apply_outcome, draft_study
from predraft.workers.export_service import queue_exports
from predraft.workers.export_task import send_exports
from predraft.workers.gate import GatedInstance, load_gate
from predraft.workers.leases import LeasedTask, holder_of, lease_seconds, stamp_dispatch, work_lease
from predraft.workers.prepare import prepare_bounded
from predraft.workers.sandbox import DecodeFailure, Sandbox, close_all, thread_sandbox

log = logging.getLogger(__name__)


class RecordedTask(LeasedTask):
    """A task whose rows carry leases and whose final failure (retries spent, or an error no retry covers)
    becomes a dead letter."""

    def database_url(self) -> str:
        return _settings().database_url

    def on_failure(self, exc: BaseException, task_id: str, args: tuple, kwargs: dict, einfo: object) -> None:
        """Record the dead letter and log it. An exception raised inside a library is kept by its type and place
        only, and the traceback without any exception's message: they may quote a received value."""
        error = describe_exception(exc)
        log.error("task %s[%s] failed for good: %s", self.name, task_id, error)
        record_dead_letter(
            _settings().database_url,
            task_name=self.name,
            task_id=task_id,
            first_arg=args[0] if args else None,
            attempts=self.request.retries + 1,
            error=error,
            traceback=traceback_without_messages(exc),
        )
        super().on_failure(exc, task_id, args, kwargs, einfo)


#: Passing trouble (the database or the broker briefly away) is retried with exponential backoff and
#: jitter, at most 5 times (about a minute in all); then the task is a dead letter.
_RETRY = {
    "base": RecordedTask,
    "autoretry_for": (OperationalError, KombuOperationalError, ConnectionError),
    "retry_backoff": 2,
    "retry_backoff_max": 30,
    "retry_jitter": True,
    "max_retries": 5,
}


@lru_cache(maxsize=1)
def _settings() -> Settings:
    return get_settings()


def _lease(task: Task, model: LeasedModel, row_id: int) -> AbstractContextManager[bool]:
    """The lease of ``task`` on row ``row_id`` (:func:`predraft.workers.leases.work_lease`): False, do nothing."""
    settings = _settings()
    return work_lease(
        settings.database_url,
        model,
        row_id,
        task_id=task.request.id,
        holder=holder_of(task),
        seconds=lease_seconds(settings.workers.sweep_stale_seconds),
    )


_model_lock = threading.Lock()
_models: dict[tuple[object, ...], tuple[Classifier, MicroBatcher]] = {}


def _classifier_and_batcher(settings: Settings, card_path: Path) -> tuple[Classifier, MicroBatcher]:
    """The process's classifier and micro-batcher for the card at ``card_path`` (one per pack's model), on the
    configured device and batching.

    Made on first use under a lock, so that the concurrent classify tasks of a threads pool load each model
    once and share its batches. A batcher that stopped (or whose thread did not survive a fork) is replaced,
    and so is one of another configuration of the same card.
    """
    key = (
        card_path,
        settings.model.device,
        settings.model.torch_compile,
        settings.model.classify_batch_size,
        settings.model.classify_batch_wait_ms,
    )
    with _model_lock:
        if key not in _models or _models[key][1].closed:
            for old_key in [k for k in _models if k[0] == card_path or _models[k][1].closed]:
                _models.pop(old_key)[1].close()
            classifier = load_classifier(card_path, settings.model.device, compile=settings.model.torch_compile)
            batcher = MicroBatcher(
                classifier,
                batch_size=settings.model.classify_batch_size,
                wait_ms=settings.model.classify_batch_wait_ms,
                name="classify-batcher",
            )
            _models[key] = (classifier, batcher)
        return _models[key]


def _finish_instance(instance_id: int, state: InstanceState, error: str, gated: GatedInstance | None = None) -> int:
    with session_scope(_settings().database_url) as session:
        instance = session.get(Instance, instance_id)
        assert instance is not None  # the task found it; instance rows are never deleted
        instance.state = state
        instance.error = error
        _record_gate(instance, gated)
        record_event(session, EventKind(state.value), error, study_id=instance.study_id, instance_id=instance_id)
        return instance.study_id


#: Modules the prepare sandbox's child imports before its first image (so that no image pays for them).
_PREPARE_PRELOAD = ("predraft.models.prepare",)

# The prepare sandboxes' children end with the worker (atexit covers a plain exit; PR_SET_PDEATHSIG a kill).
worker_shutdown.connect(close_all, weak=False)
worker_process_shutdown.connect(close_all, weak=False)


def _prepare_sandbox(settings: Settings) -> Sandbox:
    """This worker thread's decode sandbox, bounded by decode_timeout_seconds and decode_memory_bytes."""
    return thread_sandbox(
        timeout_seconds=settings.workers.decode_timeout_seconds,
        memory_bytes=settings.workers.decode_memory_bytes,
        preload=_PREPARE_PRELOAD,
    )


def _decode_failure_error(instance_id: int, transfer_syntax: str, failure: DecodeFailure) -> str:
    """Count ``failure`` and log it (reason and exception type only); the instance's error text."""
    syntax = transfer_syntax or "unknown"
    # A label value per transfer syntax pydicom knows; any other UID a sender wrote counts as "other", so that
    # senders cannot make new series without end.
    label = syntax if UID_dictionary.get(syntax, ("", ""))[1] == "Transfer Syntax" else "other"
    DECODE_FAILURES.labels(transfer_syntax=label, reason=failure.reason.value).inc()
    log.warning(
        "instance row %d could not be prepared (%s, transfer syntax %s): %s",
        instance_id,
        failure.reason.value,
        syntax,
        failure.error_type or failure.reason.value,
    )
    return f"could not be prepared ({failure.reason.value}) in transfer syntax {syntax}: {failure.cause}"[:2000]


@shared_task(name=PREPARE, bind=True, **_RETRY)
def prepare(self: Task, instance_id: int) -> None:
    """Prepare one instance in this thread's decode sandbox. Out of scope: SKIPPED. Unreadable, undecodable,
    or a decoder that raised, panicked, crashed, hung or ran out of memory: ERROR with the reason and the
    transfer syntax, counted in DECODE_FAILURES. Either way the rest of the study goes on."""
    with _lease(self, Instance, instance_id) as held:
        if held:
            _prepare(self, instance_id)


def _prepare(self: Task, instance_id: int) -> None:
    settings = _settings()
    with session_scope(settings.database_url) as session:
        instance = session.get(Instance, instance_id)
        if instance is None or instance.state in FINISHED_INSTANCE_STATES:
            return
        path, study_id, syntax = Path(instance.spool_path), instance.study_id, instance.transfer_syntax_uid
        requested = instance.study.requested_pack
    packs = settings.model.packs()
    gate = load_gate(settings.model.gate_card_path)
    gated = None
    try:
        prepared = prepare_bounded(
            path,
            input_size=max(installed.card.input_size for installed in packs.packs),
            gate_size=gate.size,
            voi_window_index=settings.model.voi_window_index,
            with_halves=gate.reads_field,
            with_implant_crop=any(p.pack.framing == IMPLANT_CROP for p in packs.packs),
            sandbox=_prepare_sandbox(settings),
        )
        gated = gate.apply(prepared, readable=set(packs.by_region), gate_alone=packs.gate_alone)
        reader = _reader(packs, gated.decision, requested)
        if reader is None:
            raise OutOfScopeError(gated.decision.reason)
        if requested is not None:
            gated = replace(gated, decision=_requested_decision(requested, gated.decision))
    except (OutOfScopeError, DecodeFailure) as exc:  # this instance only
        if isinstance(exc, OutOfScopeError):
            state, error = InstanceState.SKIPPED, str(exc)
            IMAGES_ROUTED.labels(pack="out_of_scope").inc()
        else:
            state, error = InstanceState.ERROR, _decode_failure_error(instance_id, syntax, exc)
        _finish_instance(instance_id, state, error, gated)
        finish_if_done(self.app, settings.database_url, study_id)
        return
    labels = gated.labels
    with session_scope(settings.database_url) as session:
        instance = session.get(Instance, instance_id)
        assert instance is not None  # found above; instance rows are never deleted
        instance.state = InstanceState.PREPARED
        instance.view, instance.view_rule = labels.view.value, labels.view_rule
        instance.side = "+".join(side.value for side in labels.sides)
        instance.pack = reader.name
        _record_gate(instance, gated)
        instance.study.prepared_at = utcnow()
        if gated.decision.flag is not None:
            record_event(
                session, EventKind.SCOPE_FLAG, gated.decision.reason, study_id=study_id, instance_id=instance_id
            )
        task_id = stamp_dispatch(session, Instance, [instance_id])[instance_id]
    IMAGES_ROUTED.labels(pack=reader.name).inc()
    size = reader.card.input_size
    sides = gated.hips
    if reader.pack.framing == IMPLANT_CROP and prepared.crop is not None:  # one side: the implant's crop
        sides = [replace(prepared.crop, metal=gated.hips[0].metal if gated.hips else None)]
    self.app.send_task(
        CLASSIFY, args=[instance_id, [side.resized(size).to_message() for side in sides]], task_id=task_id
    )


def _reader(packs: PackRegistry, decision: ScopeDecision, requested: str | None) -> InstalledPack | None:
    """The pack that reads an image: the one a radiologist asked for (``requested``), else the one of the region
    routing chose; None when the image is out of scope."""
    if requested is not None:
        try:
            return packs[requested]
        except KeyError:  # the pack was removed since it was asked for: routing decides again
            log.warning("requested pack %s is not installed; routing decides", requested)
    if not decision.in_scope or decision.region is None:
        return None
    return packs.for_region(decision.region)


def _requested_decision(requested: str, routed: ScopeDecision) -> ScopeDecision:
    said = f"routing said: {routed.reason}" if routed.reason else "routing agreed"
    return ScopeDecision(
        True, f"drafted with the {requested} pack at a radiologist's request ({said})", ScopeFlag.REQUESTED
    )


def _record_gate(instance: Instance, gated: GatedInstance | None) -> None:
    """The gate's reading and the scope flag on the instance's row (nothing when the gate did not run)."""
    if gated is None or gated.reading is None:
        return
    instance.region_read, probability = gated.reading.top
    instance.region_probability = round(probability, 4)
    instance.scope_flag = gated.decision.flag.value if gated.decision.flag else None
    instance.scope_note = gated.decision.reason or None


@shared_task(name=CLASSIFY, bind=True, **_RETRY)
def classify(self: Task, instance_id: int, hip_messages: list[dict[str, object]]) -> None:
    """Classify the hip images ``prepare`` cut from one instance; the instance is CLASSIFIED, and its study
    drafts once every instance is finished."""
    with _lease(self, Instance, instance_id) as held:
        if held:
            _classify(self, instance_id, hip_messages)


def _classify(self: Task, instance_id: int, hip_messages: list[dict[str, object]]) -> None:
    settings = _settings()
    with session_scope(settings.database_url) as session:
        instance = session.get(Instance, instance_id)
        if instance is None or instance.state != InstanceState.PREPARED:
            return
        study_id, pack = instance.study_id, instance.pack or DEFAULT_PACK
    classifier, batcher = _classifier_and_batcher(settings, settings.model.packs()[pack].card_path)
    card = classifier.card
    hips = [HipImage.from_message(message) for message in hip_messages]
    # One forward pass shared with the images of the other classify tasks running in this process.
    probabilities: np.ndarray | list[np.ndarray] = (
        batcher.predict(np.stack([hip.pixels for hip in hips])) if hips else []
    )
    with session_scope(settings.database_url) as session:
        # Every earlier prediction goes, another model's too: an instance holds the predictions of the model
        # that last classified it (see predraft.workers.dispatch.reclassify_stale_instances).
        session.execute(delete(Prediction).where(Prediction.instance_id == instance_id))
        for hip, row in zip(hips, probabilities, strict=True):
            scores = {name: float(p) for name, p in zip(card.classes, row, strict=True)}
            top = max(scores, key=lambda key: scores[key])
            session.add(
                Prediction(
                    instance_id=instance_id,
                    side=hip.side.value,
                    view=hip.view.value,
                    model_name=card.name,
                    model_version=card.version,
                    probabilities=scores,
                    top_class=top,
                    top_probability=scores[top],
                    metal_present=hip.metal.present if hip.metal else None,
                    metal_score=hip.metal.score if hip.metal else None,
                    region=None if hip.region is None else list(hip.region),
                )
            )
        instance = session.get(Instance, instance_id)
        assert instance is not None  # found above; instance rows are never deleted
        instance.state = InstanceState.CLASSIFIED
        instance.study.classified_at = utcnow()
        record_event(
            session, EventKind.CLASSIFIED, f"{len(hips)} hip image(s)", study_id=study_id, instance_id=instance_id
        )
    finish_if_done(self.app, settings.database_url, study_id)


def _write_draft(
    session: Session, *, study: Study, generation: int, settings: Settings, packs: PackRegistry
) -> tuple[int | None, dict[str, str], float | None, tuple[str, ...]]:
    """Draft the locked ``study`` for ``generation`` and queue its exports, in the caller's transaction.

    Returns (draft id, the task id of each destination's export to send, seconds from the last instance to
    the draft, the packs of its sections); (None, {}, None, ()) when no draft was made. A drafting error leaves
    the study in ERROR, unless it was re-opened or drafted meanwhile. Neither its error text nor the log holds
    the message of an exception raised inside a library (pydicom, highdicom, jinja2... may quote a patient's
    values): only its type and place (:func:`predraft.core.library_text.describe_exception`), and the traceback
    without messages.
    """
    try:
        outcome = draft_study(
            session,
            study=study,
            generation=generation,
            packs=packs.packs,
            spool=Spool(settings.spool_dir),
            rule_for=settings.report.aggregation_rule,
            template_dir=settings.report.template_dir,
            results_sr=settings.report.ai_results_sr,
        )
    except OperationalError:
        raise
    except Exception as exc:
        reason = f"drafting failed: {describe_exception(exc)}"[:2000]
        log.error("study row %d could not be drafted: %s\n%s", study.id, reason, traceback_without_messages(exc))
        study_id = study.id
        session.rollback()
        locked = session.get(Study, study_id, with_for_update=True)
        assert locked is not None  # the caller locked it in this transaction; study rows are never deleted
        if locked.generation == generation and locked.state == StudyState.DRAFTING:
            locked.state, locked.error = StudyState.ERROR, reason
            record_event(session, EventKind.ERROR, locked.error, study_id=study_id)
        # else re-opened or drafted meanwhile: that generation's outcome stands
        return None, {}, None, ()
    apply_outcome(session, study=study, generation=generation, outcome=outcome)
    log.info("study row %d: %s", study.id, outcome.state.value)
    if study.state != StudyState.DRAFTED or outcome.draft_id is None:
        return None, {}, None, ()
    exports = queue_exports(
        session, draft_id=outcome.draft_id, destinations=[d.name for d in settings.export.destinations]
    )
    assert study.drafted_at is not None  # apply_outcome set it with the DRAFTED state
    seconds = (as_utc(study.drafted_at) - as_utc(study.last_instance_at)).total_seconds()
    return outcome.draft_id, exports, seconds, outcome.packs


@shared_task(name=DRAFT, bind=True, **_RETRY)
def draft(self: Task, study_id: int, generation: int) -> None:
    """Draft ``generation`` of a study whose instances are all finished, and send its exports."""
    with _lease(self, Study, study_id) as held:
        if held:
            _draft(self, study_id, generation)


def _draft(self: Task, study_id: int, generation: int) -> None:
    settings = _settings()
    packs = settings.model.packs()
    draft_id: int | None = None
    exports: dict[str, str] = {}
    time_to_draft: float | None = None
    drafted_packs: tuple[str, ...] = ()
    with session_scope(settings.database_url) as session:
        # Locked until the draft commits: an instance that re-opens the study meanwhile (a new generation)
        # waits for it, then re-opens a drafted study, instead of being overwritten by this draft's outcome;
        # and a second delivery of this message waits, then finds the study drafted and does nothing.
        study = session.get(Study, study_id, with_for_update=True)
        if study is None or study.generation != generation or study.state != StudyState.DRAFTING:
            return
        stale = reclassify_stale_instances(
            session, study=study, models={p.name: (p.card.name, p.card.version) for p in packs.packs}
        )
        prepare_ids = stamp_dispatch(session, Instance, stale)
        if not stale:
            draft_id, exports, time_to_draft, drafted_packs = _write_draft(
                session, study=study, generation=generation, settings=settings, packs=packs
            )
    if stale:  # committed: the study is READY again, and drafts once these are classified by their pack's model
        log.info(
            "study row %d: %d image(s) classified again by their pack's model before drafting", study_id, len(stale)
        )
        for instance_id, task_id in prepare_ids.items():
            self.app.send_task(PREPARE, args=[instance_id], task_id=task_id)
        return
    if time_to_draft is not None:  # committed: counted once, whatever a redelivery does
        TIME_TO_DRAFT.observe(max(0.0, time_to_draft))
        for name in drafted_packs:
            DRAFTS.labels(pack=name).inc()
    if exports:  # committed: now the export tasks may run
        assert draft_id is not None  # _write_draft returns exports only with a draft
        send_exports(self.app, draft_id, exports)
