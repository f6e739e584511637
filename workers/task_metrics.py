"""Per-task latency for Prometheus: Celery's task_prerun/task_postrun signals in the worker's process.

Connected when :mod:`predraft.workers.app` is imported; a process that runs no task never sees the signals.
"""

from __future__ import annotations

import threading
import time

from celery.signals import task_postrun, task_prerun

from predraft.core.metrics import TASK_SECONDS


class Stopwatch:
    """Start times of running tasks by id (the tasks of a threads pool overlap)."""

    def __init__(self) -> None:
        self._started: dict[str, float] = {}
        self._lock = threading.Lock()

    def start(self, key: str) -> None:
        with self._lock:
            self._started[key] = time.perf_counter()

    def stop(self, key: str) -> float | None:
        with self._lock:
            started = self._started.pop(key, None)
        return None if started is None else time.perf_counter() - started


_running = Stopwatch()


@task_prerun.connect(dispatch_uid="predraft-task-started")
def _started(task_id: str | None = None, **_: object) -> None:
    if task_id:
        _running.start(task_id)


@task_postrun.connect(dispatch_uid="predraft-task-finished")
def _finished(task_id: str | None = None, task: object = None, state: str | None = None, **_: object) -> None:
    seconds = _running.stop(task_id) if task_id else None
    if seconds is not None:
        TASK_SECONDS.labels(task=getattr(task, "name", "unknown"), state=state or "UNKNOWN").observe(seconds)
