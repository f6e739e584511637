"""Writing to the event log. Messages name states, UIDs and errors, never patient data."""

from __future__ import annotations

from sqlalchemy.orm import Session

from predraft.core.schema import Event
from predraft.core.states import EventKind


def record_event(
    session: Session,
    kind: EventKind,
    message: str = "",
    *,
    study_id: int | None = None,
    instance_id: int | None = None,
) -> None:
    session.add(Event(kind=kind, message=message, study_id=study_id, instance_id=instance_id))
