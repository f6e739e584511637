"""Reviewing a draft: accept it as drafted, accept it with edits, or reject it with a reason.

A service, like :mod:`predraft.workers.drafting`: :func:`review_draft` takes an open session and never commits. The
caller (the route) owns the transaction and, once it has committed, sends one export task per destination
(``predraft.workers.export_task.send_exports``), exactly as the draft task does for the draft.

A review
* writes the superseding SR (:func:`predraft.reporting.sr.build_review_sr`) into the spool beside the draft's, and
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

import pydicom
from pydicom.uid import generate_uid
from sqlalchemy import select
from sqlalchemy.orm import Session

from predraft.core.events import record_event
from predraft.core.schema import Draft, Instance, Review, Study, User, utcnow
from predraft.core.states import EventKind, ReportKind, ReviewAction, Role, StudyState
from predraft.core.studies import latest_draft
from predraft.listener.spool import Spool
from predraft.reporting.sr import build_review_sr
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
    exports: list[str]


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

    draft_text = normalise_text(draft.text)
    if asked is ReviewAction.REJECTED:
        reason = (reason or "").strip()
        if not reason:
            raise ReviewError("a rejection needs a reason")
        if len(reason) > MAX_REASON_LENGTH:
            raise ReviewError(f"the reason is longer than {MAX_REASON_LENGTH} characters")
        review_action = ReviewAction.REJECTED
        final_text = ""
    else:
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
        review_action = ReviewAction.ACCEPTED if final_text == draft_text else ReviewAction.EDITED
        reason = ""

    now = utcnow()
    when = now.strftime("%Y-%m-%d %H:%M UTC")
    who = f"{person_name(user.display_name)} ({user.username})"
    if review_action is ReviewAction.REJECTED:
        sr_text = (
            f"The AI draft of this study (SR {draft.sr_sop_instance_uid}) was rejected by a radiologist "
            f"and must not be used. Reason: {reason}"
        )
        statement = f"AI draft rejected by {who} on {when}."
    else:
        sr_text = final_text.strip()
        how = "edited and verified" if review_action is ReviewAction.EDITED else "verified as drafted"
        statement = (
            f"Report {how} by {who} on {when}; drafted by "
            f"{draft.model_name} {draft.model_version} (AI, SR {draft.sr_sop_instance_uid})."
        )

    draft_sr = pydicom.dcmread(draft.sr_path)
    evidence = _evidence(session, draft_sr)
    kind = ReportKind.REJECTION if review_action is ReviewAction.REJECTED else ReportKind.VERIFIED
    sr_uid, series_uid = generate_uid(), generate_uid()
    sr = build_review_sr(
        evidence=evidence,
        draft_sr=draft_sr,
        verified=kind is ReportKind.VERIFIED,
        text=sr_text,
        statement=statement,
        verifier_name=user.display_name,
        verifier_login=user.username,
        organization=organization,
        edited=review_action is ReviewAction.EDITED,
        series_instance_uid=series_uid,
        sop_instance_uid=sr_uid,
    )
    path = spool.write_sr(sr)

    report = Draft(
        study_id=study.id,
        generation=draft.generation,
        kind=kind,
        text=final_text if kind is ReportKind.VERIFIED else sr_text + "\n",
        findings=draft.findings,
        model_name=draft.model_name,
        model_version=draft.model_version,
        synthetic_demo=draft.synthetic_demo,
        sr_sop_instance_uid=sr_uid,
        sr_series_uid=series_uid,
        sr_path=str(path),
        supersedes_id=draft.id,
        created_at=now,
    )
    session.add(report)
    session.flush()
    review = Review(
        draft_id=draft.id,
        study_id=study.id,
        user_id=user.id,
        action=review_action,
        final_text=final_text,
        diff=text_diff(draft_text, final_text) if final_text else "",
        reason=reason,
        report_id=report.id,
        created_at=now,
    )
    session.add(review)
    study.state = StudyState.REVIEWED
    session.flush()
    record_event(
        session,
        EventKind.REVIEWED,
        f"draft {draft.id} {review_action.value} by user {user.id}; SR {sr_uid}",
        study_id=study.id,
    )
    exports = queue_exports(session, draft_id=report.id, destinations=list(destinations))
    return ReviewOutcome(review.id, review_action, report.id, sr_uid, exports)


def _evidence(session: Session, draft_sr: pydicom.Dataset) -> list[pydicom.Dataset]:
    """Headers of the images the draft references (its Current Requested Procedure Evidence), from the spool."""
    uids = [
        str(sop.ReferencedSOPInstanceUID)
        for study in draft_sr.get("CurrentRequestedProcedureEvidenceSequence", [])
        for series in study.get("ReferencedSeriesSequence", [])
        for sop in series.get("ReferencedSOPSequence", [])
    ]
    paths = dict(
        session.execute(
            select(Instance.sop_instance_uid, Instance.spool_path).where(Instance.sop_instance_uid.in_(uids))
        ).all()
    )
    missing = [uid for uid in uids if uid not in paths]
    if missing or not uids:
        raise ReviewError(f"the draft's source images are not all recorded ({len(missing)} of {len(uids)} missing)")
    return [pydicom.dcmread(paths[uid], stop_before_pixels=True) for uid in uids]
