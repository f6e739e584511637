"""The whole pipeline in this process: files recorded as received, then prepared, gated, classified and drafted by
the real Celery tasks, the broker replaced by a recording app whose messages are run in order, against SQLite.

Used by the golden drafts (``tests/unit/test_golden_drafts.py``) and by the tests of site packs.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path

import pydicom
import pytest

from predraft.core.db import session_scope, upgrade
from predraft.listener.ingest import InstanceHeader, record_instance
from predraft.workers import tasks
from predraft.workers.app import CLASSIFY, DRAFT, PREPARE
from predraft.workers.dispatch import claim_ready_studies, redraft_study, start_study


class RecordingCelery:
    """Records send_task calls instead of talking to a broker."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, list[object]]] = []

    def send_task(self, name: str, args: list[object], task_id: str | None = None) -> None:
        self.sent.append((name, list(args)))


def _run_in_order(app: RecordingCelery) -> None:
    """Run what the tasks sent, and what that sends, first sent first: the broker, in this process."""
    runners = {PREPARE: tasks.prepare, CLASSIFY: tasks.classify, DRAFT: tasks.draft}
    while app.sent:
        name, args = app.sent.pop(0)
        runners[name].run(*args)


class InProcessPipeline:
    """The pipeline in this process, with no PREDRAFT_* variable but ``env`` and those naming ``folder``'s database
    and var folder. A context manager: the environment and the tasks' app are restored on exit."""

    def __init__(self, folder: Path, env: Mapping[str, str] = {}) -> None:  # noqa: B006
        self.folder = folder
        self.url = f"sqlite:///{folder}/db.sqlite"
        self.env = dict(env)
        self.queue = RecordingCelery()
        self._monkeypatch = pytest.MonkeyPatch()

    def __enter__(self) -> InProcessPipeline:
        monkeypatch = self._monkeypatch
        for name in list(os.environ):
            if name.startswith("PREDRAFT_"):
                monkeypatch.delenv(name)
        monkeypatch.setenv("PREDRAFT_DATABASE_URL", self.url)
        monkeypatch.setenv("PREDRAFT_VAR_DIR", str(self.folder / "var"))
        monkeypatch.setenv("PREDRAFT_CLASSIFY_BATCH_WAIT_MS", "0")
        for name, value in self.env.items():
            monkeypatch.setenv(name, value)
        monkeypatch.chdir(self.folder)
        upgrade(self.url)
        for task in (tasks.prepare, tasks.classify, tasks.draft):
            monkeypatch.setattr(task, "app", self.queue)
        monkeypatch.setattr(tasks, "_models", {})
        tasks._settings.cache_clear()
        return self

    def __exit__(self, *_exc: object) -> None:
        tasks._settings.cache_clear()
        for _, batcher in tasks._models.values():
            batcher.close()
        self._monkeypatch.undo()

    def receive(self, paths: Iterable[Path]) -> None:
        """Record ``paths`` (DICOM files, left where they are) as received, and run every task they cause."""
        for path in paths:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            header = InstanceHeader.from_dataset(ds, ds.file_meta.TransferSyntaxUID)
            with session_scope(self.url) as session:
                record_instance(
                    session, header=header, spool_path=str(path), size_bytes=path.stat().st_size, calling_ae="GOLDEN"
                )
        for study_id in claim_ready_studies(self.url, quiet_seconds=0):
            start_study(self.queue, self.url, study_id)
        _run_in_order(self.queue)

    def redraft(self, study_uid: str, pack: str | None = None) -> None:
        """Draft a study again (with ``pack``: a radiologist's "draft anyway"), running every task it causes."""
        redraft_study(self.queue, self.url, study_uid=study_uid, pack=pack)  # type: ignore[arg-type]
        _run_in_order(self.queue)


def draft_in_process(folder: Path, paths: Iterable[Path], *, env: Mapping[str, str] = {}) -> str:  # noqa: B006
    """Receive ``paths`` and run every task they cause in an :class:`InProcessPipeline`; the database URL."""
    with InProcessPipeline(folder, env) as pipeline:
        pipeline.receive(paths)
        return pipeline.url
