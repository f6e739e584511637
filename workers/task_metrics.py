"""Per-task latency for Prometheus: Celery's task_prerun/task_postrun signals in the worker's process.

Connected when :mod:`workers.app` is imported; a process that runs no task never sees the signals.
"""

from __future__ import annotations

from celery.signals import task_postrun, task_prerun

from predraft.metrics import TASK_SECONDS, Stopwatch

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
