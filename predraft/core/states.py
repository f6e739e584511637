"""Named states of studies and instances, as stored in the database."""

from __future__ import annotations

from enum import StrEnum


class StudyState(StrEnum):
    """Where a study stands. The database, not the broker, is the truth about it."""

    RECEIVING = "receiving"  # instances arriving; not yet quiet
    READY = "ready"  # quiet (or complete); its instances are being prepared and classified
    DRAFTING = "drafting"  # every instance is done; the draft task owns it
    DRAFTED = "drafted"  # an unverified draft SR is stored
    REVIEWED = "reviewed"  # a radiologist accepted (maybe edited) or rejected its latest draft
    OUT_OF_SCOPE = "out_of_scope"  # no hip or pelvis image in it: no hip draft
    ERROR = "error"  # nothing could be drafted; see the error column and the event log


class InstanceState(StrEnum):
    """Where one received instance stands."""

    RECEIVED = "received"  # durably in the spool and recorded
    PREPARED = "prepared"  # decoded; its hip images are on their way to classification
    CLASSIFIED = "classified"  # predictions stored
    SKIPPED = "skipped"  # stored but not classified (out of scope, or not an image to classify)
    ERROR = "error"  # could not be processed; the reason is in the error column


#: Instance states after which no further work is due for the current draft.
FINISHED_INSTANCE_STATES = frozenset({InstanceState.CLASSIFIED, InstanceState.SKIPPED, InstanceState.ERROR})


class ExportState(StrEnum):
    """Where the export of one draft's SR to one destination stands."""

    PENDING = "pending"  # queued: not tried yet (or queued again by `predraft studies resend`)
    SENDING = "sending"  # a worker claimed this try and is sending now (since the row's updated_at)
    SENT = "sent"  # the destination stored it (a warning status counts as stored; see last_error)
    FAILED = "failed"  # the last try failed; a retry is scheduled
    DEAD = "dead"  # given up: retries exhausted, or a refusal that a retry cannot mend; see last_error


#: Export states in which the export task still has work to do.
EXPORTABLE_STATES = frozenset({ExportState.PENDING, ExportState.FAILED})


class ReportKind(StrEnum):
    """What an SR that predraft issued for a study (a row of the drafts table) is."""

    DRAFT = "draft"  # the unverified AI draft (CompletionFlag PARTIAL, VerificationFlag UNVERIFIED)
    VERIFIED = "verified"  # a radiologist accepted the draft, perhaps edited: VERIFIED, COMPLETE, FINAL
    REJECTION = "rejection"  # a radiologist rejected the draft: a verified SR that says so, with the reason


class ReviewAction(StrEnum):
    """What a radiologist did with a draft."""

    ACCEPTED = "accepted"  # signed as drafted
    EDITED = "edited"  # signed with edits
    REJECTED = "rejected"  # not to be used; with a reason


class Role(StrEnum):
    """Who a web user is: radiologists review drafts; admins see statistics (and the worklist, read-only)."""

    RADIOLOGIST = "radiologist"
    ADMIN = "admin"


class EventKind(StrEnum):
    """What a row of the event log (the events table) records."""

    STUDY_OPENED = "study_opened"  # the first instance of a study was received
    STUDY_REOPENED = "study_reopened"  # a late instance or a redraft opened a new generation of the study
    RECEIVED = "received"  # an instance was received (written by early versions; now only study_opened is)
    DUPLICATE = "duplicate"  # an instance was received again
    READY = "ready"  # the study is quiet or complete: its instances are sent to be prepared
    SCOPE_FLAG = "scope_flag"  # an image drafted although tags and pixels disagree, or without tags
    CLASSIFIED = "classified"  # an instance's hips are classified
    SKIPPED = "skipped"  # an instance is not classified (out of scope, or not an image predraft reads)
    RECLASSIFYING = "reclassifying"  # images classified by another model are classified again before drafting
    DRAFTING = "drafting"  # every instance is done: the draft task is sent
    DRAFTED = "drafted"  # the draft SR is stored
    OUT_OF_SCOPE = "out_of_scope"  # the study has no hip or pelvis image: no draft
    ERROR = "error"  # an instance or a study failed; the message says why
    SWEPT = "swept"  # the sweeper sent again work that no queue held
    DEAD_LETTER = "dead_letter"  # a task failed for good
    RETRY = "retry"  # an administrator sent a dead letter's work again
    EXPORT_QUEUED = "export_queued"  # a drafted or verified SR is queued for a destination again (resend)
    EXPORTED = "exported"  # a destination stored an SR
    EXPORT_FAILED = "export_failed"  # a try to send an SR failed; a retry follows
    EXPORT_DEAD = "export_dead"  # sending an SR is given up
    REVIEWED = "reviewed"  # a radiologist accepted, edited or rejected the draft
    PURGED = "purged"  # spool retention deleted a finished study's images or SRs (its rows are kept)


class WorkState(StrEnum):
    """Where a work item of the admin view stands (``predraft queue ls``; :mod:`predraft.workers.admin`)."""

    WAITING = "waiting"  # its message was sent; no worker has taken it yet
    RUNNING = "running"  # a worker holds it under a live lease
    FAILED = "failed"  # a try failed; its retry waits for its ETA
    DEAD = "dead"  # retries spent (a dead letter), or an export given up
    RETRIED = "retried"  # a dead letter whose work was sent again
    DONE = "done"  # an export that was sent (shown, never listed)


#: The states ``predraft queue ls --state`` takes (a retried dead letter or a sent export is shown, never listed).
LISTED_WORK_STATES = (WorkState.WAITING, WorkState.RUNNING, WorkState.FAILED, WorkState.DEAD)
