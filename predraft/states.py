"""Named states of studies and instances, as stored in the database."""

from __future__ import annotations

from enum import StrEnum


class StudyState(StrEnum):
    """Where a study stands. The database, not the broker, is the truth about it."""

    RECEIVING = "receiving"  # instances arriving; not yet quiet
    READY = "ready"  # quiet (or complete); its instances are being prepared and classified
    DRAFTING = "drafting"  # every instance is done; the draft task owns it
    DRAFTED = "drafted"  # an unverified draft SR is stored
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
