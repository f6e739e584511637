"""Spool retention: the files of finished studies leave the spool once they are old; their rows stay.

A routing target that keeps every image fills its disk, and then refuses every sender (out of resources, 0xA700,
below ``spool_min_free_bytes``). Two settings (area ``retention``), both unset by default (files kept forever), say
how long files stay after a finished study's last activity:

- ``retention_images_days``: its received instances (``incoming/``); each instance row records when its file went
  (``instances.purged_at``);
- ``retention_srs_days``: the SRs predraft issued for it (``sr/``: drafts, verified reports, rejection notices; each
  drafts row records it in ``drafts.purged_at``). Kept apart because an SR is what ``predraft studies resend`` and a
  later redraft (its predecessor) read.

A study is **finished** when it is reviewed, or drafted with every export of its current draft sent (at least one).
Nothing of a study in work is ever purged: not while the study is receiving, ready, drafting, out of scope or in
error (none of those is finished), nor while any of its instances is unfinished (received, prepared), nor while
any export of its SRs is pending, sending or failed (a retry is due), nor while any of its rows (the study, an
instance, an export) holds a lease, waits for a retry or says a message was sent for it
(:mod:`predraft.workers.leases`). Its **last activity** is the latest of: its last image, any instance received (an SR
the PACS echoed back), its draft, any SR issued for it, any change of an export, any review. A study that a late
image re-opens is receiving again, so it is left alone from then on.

**Database rows are never deleted** by retention: studies, series, instances, predictions, drafts, exports, reviews
and events stay, so ``predraft studies show``, the worklist's history and the statistics still tell what was
received, drafted and reviewed; only files go. Each purge of a study writes one ``purged`` event (counts and sizes,
no patient data). Only files inside the spool's own folders are deleted (``incoming/`` for images, ``sr/`` for SRs):
a row pointing elsewhere (a file recorded where it lay) is left as it is, and so is a listener's spool that another
listener on the same database holds.

How it runs: :func:`purgeable` (read only) says which studies and files would go; :func:`purge_study` takes one
study under a row lock (``FOR UPDATE SKIP LOCKED`` on PostgreSQL: a second purge skips a study the first holds, and a
late image's ingest waits for it; SQLite's ``BEGIN IMMEDIATE`` serialises writers), checks again that the study may
go, marks its rows with one ``UPDATE ... WHERE purged_at IS NULL`` and deletes only the files of the rows that UPDATE
marked, so two purges at once never both act. The files go before the transaction commits: a commit that fails
leaves rows unmarked whose files are gone, which the next pass marks (a missing file is fine); the other order could
leave rows that say purged over files nothing deletes. :func:`purge_spool` runs both kinds, one transaction per
study; the listener's stability thread runs it every ``retention_interval_seconds``
(:mod:`predraft.workers.stability`), ``predraft spool purge`` on demand (``--dry-run`` to see what would go).
Emptied study folders are left in place: removing one could race a late image being written into it.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any

from sqlalchemy import ColumnElement, and_, exists, or_, select, update
from sqlalchemy.orm import Session

from predraft.core.db import session_scope
from predraft.core.events import record_event
from predraft.core.schema import Draft, Export, Instance, LeasedModel, Review, Study, utcnow
from predraft.core.states import FINISHED_INSTANCE_STATES, EventKind, ExportState, StudyState

log = logging.getLogger(__name__)

#: Export states in which an export still has work to do (a retry is due after ``failed``).
EXPORTS_IN_WORK = (ExportState.PENDING, ExportState.SENDING, ExportState.FAILED)


class PurgeKind(StrEnum):
    """Which files of a study retention deletes."""

    IMAGES = "images"  # the received instances, under incoming/
    SRS = "srs"  # the SRs predraft issued, under sr/

    @property
    def folder(self) -> str:
        """The spool folder that holds this kind's files."""
        return "incoming" if self is PurgeKind.IMAGES else "sr"


@dataclass(frozen=True)
class SpoolFile:
    """One file of a study: its row (an instance, or a drafts row for an SR), its path and its size (0: missing)."""

    row_id: int
    path: str
    size_bytes: int


@dataclass(frozen=True)
class StudyFiles:
    """The files of one study that go (or went): the study by its row id and StudyInstanceUID, never by patient."""

    study_id: int
    study_uid: str
    state: StudyState
    files: tuple[SpoolFile, ...]

    @property
    def size_bytes(self) -> int:
        return sum(file.size_bytes for file in self.files)

    def as_json(self) -> dict[str, Any]:
        return {
            "study_id": self.study_id,
            "study_uid": self.study_uid,
            "state": self.state.value,
            "files": len(self.files),
            "bytes": self.size_bytes,
        }


@dataclass
class KindReport:
    """What one kind's pass purged (or, in a dry run, would purge)."""

    kind: PurgeKind
    older_than_days: float
    studies: list[StudyFiles] = field(default_factory=list)

    @property
    def files(self) -> int:
        return sum(len(study.files) for study in self.studies)

    @property
    def size_bytes(self) -> int:
        return sum(study.size_bytes for study in self.studies)

    def as_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind.value,
            "older_than_days": self.older_than_days,
            "studies": [study.as_json() for study in self.studies],
            "files": self.files,
            "bytes": self.size_bytes,
        }


@dataclass
class RetentionReport:
    """One pass of :func:`purge_spool`: a report per kind that was asked for (images, then SRs)."""

    dry_run: bool
    kinds: list[KindReport] = field(default_factory=list)

    @property
    def files(self) -> int:
        return sum(kind.files for kind in self.kinds)

    @property
    def size_bytes(self) -> int:
        return sum(kind.size_bytes for kind in self.kinds)

    def as_json(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "kinds": [kind.as_json() for kind in self.kinds],
            "files": self.files,
            "bytes": self.size_bytes,
        }


# --- Which studies may go: SQL conditions on Study ----------------------------------------------------------------


def _message_out(model: LeasedModel) -> ColumnElement[bool]:
    """SQL condition: the row's work is out: a lease (live or lapsed), a retry due, or a message sent."""
    return or_(model.leased_until.is_not(None), model.retry_at.is_not(None), model.dispatched_at.is_not(None))


def _any_instance(*conditions: ColumnElement[bool]) -> ColumnElement[bool]:
    return exists().where(Instance.study_id == Study.id, *conditions)


def _any_export(*conditions: ColumnElement[bool]) -> ColumnElement[bool]:
    return exists().where(Export.draft_id == Draft.id, Draft.study_id == Study.id, *conditions)


def finished_study() -> ColumnElement[bool]:
    """SQL condition on :class:`Study`: it is finished (reviewed, or drafted with every export of its current
    draft sent) and no part of it is in work (see the module docstring)."""
    current = Draft.generation == Study.generation
    exported = and_(
        Study.state == StudyState.DRAFTED,
        _any_export(current),
        ~_any_export(current, Export.state != ExportState.SENT),
    )
    return and_(
        or_(Study.state == StudyState.REVIEWED, exported),
        ~_message_out(Study),
        ~_any_instance(or_(Instance.state.not_in(FINISHED_INSTANCE_STATES), _message_out(Instance))),
        ~_any_export(or_(Export.state.in_(EXPORTS_IN_WORK), _message_out(Export))),
    )


def quiet_since(cutoff: datetime) -> ColumnElement[bool]:
    """SQL condition on :class:`Study`: nothing happened to it at or after ``cutoff`` (its last activity, as the
    module docstring lists it, is older)."""
    return and_(
        Study.last_instance_at < cutoff,
        or_(Study.drafted_at.is_(None), Study.drafted_at < cutoff),
        ~_any_instance(Instance.received_at >= cutoff),
        ~exists().where(Draft.study_id == Study.id, Draft.created_at >= cutoff),
        ~_any_export(Export.updated_at >= cutoff),
        ~exists().where(Review.study_id == Study.id, Review.created_at >= cutoff),
    )


def _may_go(cutoff: datetime) -> ColumnElement[bool]:
    return and_(finished_study(), quiet_since(cutoff))


# --- Selecting and purging ------------------------------------------------------------------------------------------


def _inside(path: str, folder: Path) -> bool:
    """Whether ``path`` names a file inside ``folder`` (lexically, after normalising ``..``)."""
    return os.path.normpath(path).startswith(os.path.normpath(folder) + os.sep)


def _bytes_on_disk(path: str) -> int:
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        return 0


def _unpurged_rows(session: Session, kind: PurgeKind, study_ids: Collection[int]) -> dict[int, list[tuple[int, str]]]:
    """The rows of ``study_ids`` whose files of ``kind`` are not purged yet: study id -> [(row id, path)], by row id
    (a drafts row may give two: its narrative SR and its AI results SR)."""
    model: type[Instance] | type[Draft] = Instance if kind is PurgeKind.IMAGES else Draft
    path_column = Instance.spool_path if kind is PurgeKind.IMAGES else Draft.sr_path
    second_column = Instance.spool_path if kind is PurgeKind.IMAGES else Draft.results_sr_path
    query = (
        select(model.study_id, model.id, path_column, second_column)
        .where(model.study_id.in_(list(study_ids)), model.purged_at.is_(None))
        .order_by(model.id)
    )
    rows: dict[int, list[tuple[int, str]]] = {}
    for study_id, row_id, path, second in session.execute(query).all():
        rows.setdefault(study_id, []).extend((row_id, p) for p in dict.fromkeys((path, second)) if p)
    return rows


def _batches(ids: list[int], size: int = 500) -> Iterator[list[int]]:
    for start in range(0, len(ids), size):
        yield ids[start : start + size]


def purgeable(
    session: Session,
    *,
    kind: PurgeKind,
    cutoff: datetime,
    spool_root: Path,
    study_ids: Collection[int] | None = None,
) -> list[StudyFiles]:
    """The finished studies quiet since before ``cutoff`` whose files of ``kind`` in ``spool_root`` are still there
    to purge, by row id, each with those files and their sizes (0 for a file already missing). Reads only: it
    changes nothing in the database or the spool. ``study_ids``: only among these."""
    query = select(Study.id, Study.study_uid, Study.state).where(_may_go(cutoff)).order_by(Study.id)
    if study_ids is not None:
        query = query.where(Study.id.in_(list(study_ids)))
    studies = session.execute(query).all()
    folder = Path(spool_root) / kind.folder
    found: list[StudyFiles] = []
    for batch in _batches([study.id for study in studies]):
        rows = _unpurged_rows(session, kind, batch)
        for study in (s for s in studies if s.id in rows):
            files = tuple(
                SpoolFile(row_id, path, _bytes_on_disk(path))
                for row_id, path in rows[study.id]
                if _inside(path, folder)
            )
            if files:
                found.append(StudyFiles(study.id, study.study_uid, study.state, files))
    return found


def purge_study(
    session: Session, *, kind: PurgeKind, study_id: int, cutoff: datetime, spool_root: Path, now: datetime
) -> StudyFiles | None:
    """Delete the files of ``kind`` of study ``study_id`` if it may still go (finished, quiet since before
    ``cutoff``): lock the study row, mark its rows purged at ``now`` (only those no one marked yet), delete their
    files (a missing one is fine) and record a ``purged`` event. Returns what went; None when the study may not go
    (any more), another purge holds it, or nothing of it is left to purge. The caller commits."""
    study = session.execute(
        select(Study.id, Study.study_uid, Study.state)
        .where(Study.id == study_id, _may_go(cutoff))
        .with_for_update(skip_locked=True)
    ).first()
    if study is None:
        return None
    folder = Path(spool_root) / kind.folder
    paths: dict[int, list[str]] = {}
    for row_id, path in _unpurged_rows(session, kind, [study_id]).get(study_id, []):
        if _inside(path, folder):
            paths.setdefault(row_id, []).append(path)
    inside = list(paths)
    if not inside:
        return None
    model: type[Instance] | type[Draft] = Instance if kind is PurgeKind.IMAGES else Draft
    kept: dict[str, Any] = {"updated_at": Instance.updated_at} if kind is PurgeKind.IMAGES else {}  # not a new state
    marked = set(
        session.scalars(
            update(model)
            .where(model.id.in_(inside), model.purged_at.is_(None))
            .values(purged_at=now, **kept)
            .returning(model.id)
            .execution_options(synchronize_session=False)
        ).all()
    )
    files = []
    for row_id in sorted(marked):
        for path in paths[row_id]:
            files.append(SpoolFile(row_id, path, _bytes_on_disk(path)))
            Path(path).unlink(missing_ok=True)
    if not files:
        return None
    went = StudyFiles(study.id, study.study_uid, study.state, tuple(files))
    record_event(
        session,
        EventKind.PURGED,
        f"{kind.value}: {len(files)} file(s), {went.size_bytes} bytes deleted from the spool by retention; "
        f"the rows are kept",
        study_id=study.id,
    )
    return went


def purge_spool(
    database_url: str,
    *,
    spool_root: Path,
    images_days: float | None,
    srs_days: float | None,
    dry_run: bool = False,
    now: datetime | None = None,
    study_ids: Collection[int] | None = None,
) -> RetentionReport:
    """One retention pass: images of finished studies quiet for ``images_days``, then SRs of those quiet for
    ``srs_days`` (None: that kind is kept), one transaction per study. ``dry_run``: only say what would go.
    ``study_ids``: only among these (what a person confirmed). Safe to run again, and beside another pass."""
    now = now or utcnow()
    report = RetentionReport(dry_run=dry_run)
    for kind, days in ((PurgeKind.IMAGES, images_days), (PurgeKind.SRS, srs_days)):
        if days is None:
            continue
        if days <= 0:
            raise ValueError(f"{kind.value} are kept a positive number of days, not {days}")
        cutoff = now - timedelta(days=days)
        with session_scope(database_url) as session:
            planned = purgeable(session, kind=kind, cutoff=cutoff, spool_root=spool_root, study_ids=study_ids)
        done = KindReport(kind, days)
        report.kinds.append(done)
        if dry_run:
            done.studies = planned
            continue
        for study in planned:
            with session_scope(database_url) as session:
                went = purge_study(
                    session, kind=kind, study_id=study.study_id, cutoff=cutoff, spool_root=spool_root, now=now
                )
            if went is not None:
                done.studies.append(went)
                log.debug("retention purged %d %s file(s) of study row %d", len(went.files), kind, went.study_id)
        if done.studies:
            log.info(
                "retention purged %d %s file(s), %d bytes, of %d finished study(ies) quiet for %g days",
                done.files,
                kind,
                done.size_bytes,
                len(done.studies),
                days,
            )
    return report


# --- What the spool holds -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SpoolUsage:
    """What the spool's folders hold (files and bytes by folder) and the free space of its file system."""

    root: str
    folders: dict[str, tuple[int, int]]
    free_bytes: int
    total_bytes: int

    def as_json(self) -> dict[str, Any]:
        return {
            "root": self.root,
            "folders": {name: {"files": files, "bytes": size} for name, (files, size) in self.folders.items()},
            "free_bytes": self.free_bytes,
            "total_bytes": self.total_bytes,
        }


def spool_usage(spool_root: Path) -> SpoolUsage:
    """Count the files and bytes under the spool's ``incoming/``, ``sr/`` and ``receiving/`` folders (a file that
    vanishes while counted is skipped), and read the file system's free space."""
    folders: dict[str, tuple[int, int]] = {}
    for name in ("incoming", "sr", "receiving"):
        files = size = 0
        for folder, _, names in os.walk(Path(spool_root) / name):
            for file_name in names:
                try:
                    size += os.stat(os.path.join(folder, file_name)).st_size
                except FileNotFoundError:
                    continue
                files += 1
        folders[name] = (files, size)
    disk = shutil.disk_usage(spool_root)
    return SpoolUsage(str(spool_root), folders, disk.free, disk.total)
