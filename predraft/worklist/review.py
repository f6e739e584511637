"""Reviewing a draft: accept it as drafted, accept it with edits, or reject it with a reason.

A service, like :mod:`predraft.workers.drafting`: :func:`review_draft` takes an open session and never commits. The
caller (the route) owns the transaction and, once it has committed, sends one export task per destination
(``predraft.workers.export_task.send_exports``), exactly as the draft task does for the draft.

A review
* writes the superseding SR (:func:`predraft.reporting.sr.build_review_sr`) into the spool beside the draft's (it
  supersedes the draft's narrative SR and its AI results SR alike: both are its Predecessor Documents), and
  records it as a drafts row of kind ``verified`` or ``rejection`` with the draft as ``supersedes_id``;
* records who did what and when, the final text and its unified diff from the draft's text (``reviews``);
* marks the study ``reviewed`` and queues the new SR's exports to every configured destination.

Only the study's newest draft can be reviewed, once, while the study is ``drafted``: a second review, a
stale page (a newer draft exists) or a study re-opened by a late image is refused with
:class:`ReviewConflict`, before any file is written.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pydicom
from pydicom.uid import generate_uid
from sqlalchemy import select
from sqlalchemy.orm import Session

from predraft.core.events import record_event
from predraft.core.schema import Draft, Instance, Review, Study, User, utcnow
from predraft.core.states import EventKind, ReportKind, ReviewAction, Role, StudyState
from predraft.core.studies import latest_draft
from predraft.listener.spool import Spool
from predraft.reporting.sr import REQUIRED_EVIDENCE_TAGS, build_review_sr
from predraft.workers.export_service import queue_exports
from predraft.worklist.present import person_name

#: Longest reason of a rejection, and longest report text.
MAX_REASON_LENGTH = 2000
MAX_TEXT_LENGTH = 20000


class ReviewError(ValueError):
    """A review that cannot be done as asked (bad input); the message says why."""


class ReviewConflict(ReviewError):
    """The draft is not (or no longer) open for review: reviewed already, superseded, or the study re-opened."""


@dataclass(frozen=True)
class ReviewOutcome:
    review_id: int
    action: ReviewAction
    report_id: int
    sr_sop_instance_uid: str
    #: The task id stamped on each destination's export row, to send once committed.
    exports: dict[str, str]


def normalise_text(text: str) -> str:
    """Line ends as ``\\n``, no trailing blanks on a line, one final newline (as the draft text is stored)."""
    lines = [line.rstrip() for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n")]
    return "\n".join(lines).strip("\n") + "\n"


def text_diff(draft_text: str, final_text: str) -> str:
    """The unified diff from the draft's text to the final text ("" when they are the same)."""
    return "".join(
        difflib.unified_diff(
            normalise_text(draft_text).splitlines(keepends=True),
            normalise_text(final_text).splitlines(keepends=True),
            fromfile="draft",
            tofile="final",
        )
    )


def review_draft(
    session: Session,
    *,
    study_uid: str,
    draft_id: int,
    user: User,
    action: str,
    text: str | None,
    reason: str,
    spool: Spool,
    destinations: Sequence[str],
    organization: str = "Unspecified",
) -> ReviewOutcome:
    """Review draft ``draft_id`` of study ``study_uid`` as ``user``.

    ``action``, a :class:`ReviewAction` value as the form posts it: ``accepted`` (as drafted; ``text``, when
    given, must be the draft's text), ``edited`` (sign ``text``: recorded as edited when it differs from the
    draft, else as accepted) or ``rejected`` (``reason`` required). Raises ReviewError for bad input,
    ReviewConflict when the draft is not open for review, PermissionError when the user may not review.
    """
    if user.role != Role.RADIOLOGIST or not user.active:
        raise PermissionError(f"user {user.username!r} (role {user.role}) may not review drafts")
    try:
        asked = ReviewAction(action)
    except ValueError:
        raise ReviewError(f"action {action!r} is not one of {', '.join(ReviewAction)}") from None
    study, draft = _open_draft(session, study_uid=study_uid, draft_id=draft_id)
    draft_text = normalise_text(draft.text)
    decision = _decide(asked, draft_text=draft_text, text=text, reason=reason)
    now = utcnow()
    sr_text, statement = _signed_words(decision, draft=draft, user=user, now=now)
    report = _issue_report(
        session,
        study=study,
        draft=draft,
        decision=decision,
        sr_text=sr_text,
        statement=statement,
        user=user,
        organization=organization,
        spool=spool,
        now=now,
    )
    review = Review(
        draft_id=draft.id,
        study_id=study.id,
        user_id=user.id,
        action=decision.action,
        final_text=decision.final_text,
        diff=text_diff(draft_text, decision.final_text) if decision.final_text else "",
        reason=decision.reason,
        report_id=report.id,
        created_at=now,
    )
    session.add(review)
    study.state = StudyState.REVIEWED
    session.flush()
    record_event(
        session,
        EventKind.REVIEWED,
        f"draft {draft.id} {decision.action.value} by user {user.id}; SR {report.sr_sop_instance_uid}",
        study_id=study.id,
    )
    exports = queue_exports(session, draft_id=report.id, destinations=list(destinations))
    return ReviewOutcome(review.id, decision.action, report.id, report.sr_sop_instance_uid, exports)


@dataclass(frozen=True)
class _Decision:
    """What a review decided: the action recorded, the text signed (empty for a rejection) and the reason."""

    action: ReviewAction
    final_text: str
    reason: str


def _open_draft(session: Session, *, study_uid: str, draft_id: int) -> tuple[Study, Draft]:
    """The study (locked until the review commits) and its draft, when that draft is open for review."""
    study = session.scalar(select(Study).where(Study.study_uid == study_uid).with_for_update())
    if study is None:
        raise ReviewError(f"no study with StudyInstanceUID {study_uid}")
    draft = session.get(Draft, draft_id)
    if draft is None or draft.study_id != study.id or draft.kind != ReportKind.DRAFT:
        raise ReviewError(f"draft {draft_id} is not a draft of this study")
    done = session.scalar(select(Review).where(Review.draft_id == draft.id))
    if done is not None:
        raise ReviewConflict(f"this draft was {done.action} already by {done.user.username}")
    newest = latest_draft(session, study.id)
    if newest is None or newest.id != draft.id:
        raise ReviewConflict("a newer draft of this study exists: reload the page")
    if study.state != StudyState.DRAFTED or study.generation != draft.generation:
        raise ReviewConflict(f"the study is {study.state} (a new image re-opened it): wait for its new draft")
    return study, draft


def _decide(asked: ReviewAction, *, draft_text: str, text: str | None, reason: str) -> _Decision:
    """The form's action, text and reason checked, and the action to record (an "edit" that changed nothing
    is an acceptance)."""
    if asked is ReviewAction.REJECTED:
        reason = (reason or "").strip()
        if not reason:
            raise ReviewError("a rejection needs a reason")
        if len(reason) > MAX_REASON_LENGTH:
            raise ReviewError(f"the reason is longer than {MAX_REASON_LENGTH} characters")
        return _Decision(ReviewAction.REJECTED, "", reason)
    given = normalise_text(text) if text is not None and text.strip() else None
    if given is not None and len(given) > MAX_TEXT_LENGTH:
        raise ReviewError(f"the report text is longer than {MAX_TEXT_LENGTH} characters")
    if asked is ReviewAction.ACCEPTED:
        if given is not None and given != draft_text:
            raise ReviewError("the text was edited: use 'Save edits and accept' to sign the edited text")
        final_text = draft_text
    else:
        if given is None:
            raise ReviewError("the report text is empty")
        final_text = given
    return _Decision(ReviewAction.ACCEPTED if final_text == draft_text else ReviewAction.EDITED, final_text, "")


def _signed_words(decision: _Decision, *, draft: Draft, user: User, now: datetime) -> tuple[str, str]:
    """The verified SR's text and its verification statement (who signed what, when, drafted by which model)."""
    when = now.strftime("%Y-%m-%d %H:%M UTC")
    who = f"{person_name(user.display_name)} ({user.username})"
    if decision.action is ReviewAction.REJECTED:
        sr_text = (
            f"The AI draft of this study (SR {draft.sr_sop_instance_uid}) was rejected by a radiologist "
            f"and must not be used. Reason: {decision.reason}"
        )
        return sr_text, f"AI draft rejected by {who} on {when}."
    how = "edited and verified" if decision.action is ReviewAction.EDITED else "verified as drafted"
    statement = (
        f"Report {how} by {who} on {when}; drafted by "
        f"{draft.model_name} {draft.model_version} (AI, SR {draft.sr_sop_instance_uid})."
    )
    return decision.final_text.strip(), statement


def _issue_report(
    session: Session,
    *,
    study: Study,
    draft: Draft,
    decision: _Decision,
    sr_text: str,
    statement: str,
    user: User,
    organization: str,
    spool: Spool,
    now: datetime,
) -> Draft:
    """Build the verified SR (the signed report, or the notice of a rejection), spool it and record it as the
    drafts row that supersedes ``draft``."""
    draft_sr = pydicom.dcmread(draft.sr_path)
    results_sr = pydicom.dcmread(draft.results_sr_path, stop_before_pixels=True) if draft.results_sr_path else None
    kind = ReportKind.REJECTION if decision.action is ReviewAction.REJECTED else ReportKind.VERIFIED
    sr = build_review_sr(
        evidence=_evidence(session, draft_sr),
        draft_sr=draft_sr,
        verified=kind is ReportKind.VERIFIED,
        text=sr_text,
        statement=statement,
        verifier_name=user.display_name,
        verifier_login=user.username,
        organization=organization,
        edited=decision.action is ReviewAction.EDITED,
        series_instance_uid=generate_uid(),
        sop_instance_uid=generate_uid(),
        results_sr=results_sr,
    )
    path = spool.write_sr(sr)
    report = Draft(
        study_id=study.id,
        generation=draft.generation,
        kind=kind,
        text=decision.final_text if kind is ReportKind.VERIFIED else sr_text + "\n",
        findings=draft.findings,
        model_name=draft.model_name,
        model_version=draft.model_version,
        synthetic_demo=draft.synthetic_demo,
        sr_sop_instance_uid=str(sr.SOPInstanceUID),
        sr_series_uid=str(sr.SeriesInstanceUID),
        sr_path=str(path),
        supersedes_id=draft.id,
        created_at=now,
    )
    session.add(report)
    session.flush()
    return report


#: The Patient and General Study attributes an SR carries, from which a purged image's header is rebuilt.
_PATIENT_AND_STUDY = ("SpecificCharacterSet", "StudyInstanceUID", *REQUIRED_EVIDENCE_TAGS)


def _header_from_draft(draft_sr: pydicom.Dataset, series_uid: str, sop: pydicom.Dataset) -> pydicom.Dataset:
    """The header of an evidence image whose file the spool's retention purged, rebuilt from the draft SR: the
    patient and study as the SR carries them (copied from that very image), the series and SOP from its evidence."""
    header = pydicom.Dataset()
    for keyword in _PATIENT_AND_STUDY:
        if keyword in draft_sr:
            setattr(header, keyword, draft_sr[keyword].value)
    header.SeriesInstanceUID = series_uid
    header.SOPClassUID = sop.ReferencedSOPClassUID
    header.SOPInstanceUID = sop.ReferencedSOPInstanceUID
    return header


def _evidence(session: Session, draft_sr: pydicom.Dataset) -> list[pydicom.Dataset]:
    """Headers of the images the draft references (its Current Requested Procedure Evidence), from the spool; an
    image whose file retention purged, from the draft SR itself (:func:`_header_from_draft`)."""
    referenced = [
        (str(series.SeriesInstanceUID), sop)
        for study in draft_sr.get("CurrentRequestedProcedureEvidenceSequence", [])
        for series in study.get("ReferencedSeriesSequence", [])
        for sop in series.get("ReferencedSOPSequence", [])
    ]
    uids = [str(sop.ReferencedSOPInstanceUID) for _, sop in referenced]
    paths = dict(
        session.execute(
            select(Instance.sop_instance_uid, Instance.spool_path).where(Instance.sop_instance_uid.in_(uids))
        ).all()
    )
    missing = [uid for uid in uids if uid not in paths]
    if missing or not uids:
        raise ReviewError(f"the draft's source images are not all recorded ({len(missing)} of {len(uids)} missing)")
    return [
        pydicom.dcmread(paths[str(sop.ReferencedSOPInstanceUID)], stop_before_pixels=True)
        if Path(paths[str(sop.ReferencedSOPInstanceUID)]).is_file()
        else _header_from_draft(draft_sr, series_uid, sop)
        for series_uid, sop in referenced
    ]
