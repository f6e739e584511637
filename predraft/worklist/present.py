"""How the worklist shows things: states, names, dates, classes and sides. No database, no HTTP."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from enum import StrEnum
from functools import lru_cache
from typing import TYPE_CHECKING, Any, overload

from predraft.core.clock import as_utc
from predraft.core.states import StudyState
from predraft.models.pack import DEFAULT_PACK, PackError, bundled_pack
from predraft.models.taxonomy import Side, View

if TYPE_CHECKING:
    from predraft.core.schema import Study


class WorklistState(StrEnum):
    """A study's state as the worklist shows and filters it (from the study's state and its progress)."""

    RECEIVING = "receiving"  # instances arriving
    WAITING = "waiting"  # complete or quiet; no instance prepared yet
    CLASSIFYING = "classifying"  # instances being prepared and classified, or the draft being written
    DRAFTED = "drafted"  # an unverified draft awaits review
    REVIEWED = "reviewed"  # accepted, edited or rejected
    ERROR = "error"
    OUT_OF_SCOPE = "out_of_scope"  # no hip or pelvis radiograph in it


def worklist_state(state: str, prepared: bool) -> WorklistState:
    if state == StudyState.READY:
        return WorklistState.CLASSIFYING if prepared else WorklistState.WAITING
    if state == StudyState.DRAFTING:
        return WorklistState.CLASSIFYING
    return WorklistState(state)


SIDE_LABELS = {Side.RIGHT: "Right", Side.LEFT: "Left", Side.UNKNOWN: "Side?"}
SIDE_SHORT = {Side.RIGHT: "R", Side.LEFT: "L", Side.UNKNOWN: "?"}
VIEW_SHORT = {
    View.AP_PELVIS: "AP pelvis",
    View.AP_HIP: "AP hip",
    View.FROG_LEG: "Frog-leg",
    View.CROSS_TABLE_LATERAL: "X-table lat",
    View.UNKNOWN: "Unlabelled",
}


def hardware_label(value: str | None, finding: Mapping[str, Any] | None = None) -> str:
    """How the worklist names class ``value`` of a draft's ``finding``: by the labels its pack gave when it was
    drafted (``class_labels``), else by the bundled pack's of that name (drafts made before packs recorded them),
    else by the class name itself."""
    if value is None:
        return "Indeterminate"
    recorded = (finding or {}).get("class_labels") or _bundled_labels((finding or {}).get("pack") or DEFAULT_PACK)
    return str(recorded.get(value, value))


@lru_cache(maxsize=8)
def _bundled_labels(pack: str) -> dict[str, str]:
    try:
        installed = bundled_pack(pack)
    except (PackError, OSError):
        return {}
    return {c.name: c.label for c in installed.pack.classes}


def side_label(value: str | None) -> str:
    if value is None:
        return "?"
    try:
        return SIDE_LABELS[Side(value)]
    except ValueError:
        return value or "?"


def view_label(view: str | None, side: str | None) -> str:
    """``AP pelvis``, ``Frog-leg R``: the view and, for a one-hip view, the side."""
    try:
        name = VIEW_SHORT[View(view)] if view else "Not prepared"
    except ValueError:
        name = view or "?"
    if view == View.AP_PELVIS or not side:
        return name
    sides = "+".join(SIDE_SHORT.get(Side(part), "?") if part in set(Side) else "?" for part in side.split("+"))
    return f"{name} {sides}"


def person_name(value: str) -> str:
    """DICOM PN ``Family^Given^Middle^Prefix^Suffix`` as ``Family, Given Middle`` (first group only)."""
    parts = (value or "").split("=")[0].split("^")
    family, rest = parts[0].strip(), " ".join(part.strip() for part in parts[1:3] if part.strip())
    return f"{family}, {rest}" if family and rest else family or rest


def dicom_date(value: str) -> str:
    """``20261122`` as ``2026-11-22``; anything else as it is."""
    if len(value or "") == 8 and value.isdigit():
        return f"{value[:4]}-{value[4:6]}-{value[6:]}"
    return value or ""


@overload
def utc(moment: datetime) -> datetime: ...
@overload
def utc(moment: datetime | None) -> datetime | None: ...
def utc(moment: datetime | None) -> datetime | None:
    """SQLite gives back naive datetimes for timezone-aware columns: they are UTC."""
    if moment is None:
        return None
    return as_utc(moment)


def timestamp(moment: datetime | None) -> str:
    """UTC time as ``2026-11-22 16:40:03Z`` (the worklist shows UTC, said so in the column head)."""
    moment = utc(moment)
    return moment.strftime("%Y-%m-%d %H:%M:%SZ") if moment else ""


def study_identity(study: Study) -> dict[str, str]:
    """What names a study on the worklist and on its page: UID, patient, accession, study date, received time."""
    return {
        "study_uid": study.study_uid,
        "patient_name": person_name(study.patient_name),
        "patient_id": study.patient_id,
        "accession": study.accession_number,
        "study_date": dicom_date(study.study_date),
        "received_at": timestamp(study.received_at),
    }
