"""The task names and queues, without Celery: what admin commands that never talk Celery import
(:mod:`predraft.workers.app` builds the app from them)."""

from __future__ import annotations

PREPARE = "predraft.prepare"
CLASSIFY = "predraft.classify"
DRAFT = "predraft.draft"
EXPORT = "predraft.export"
QUEUES = ("prepare", "classify", "draft", "export")
ROUTES = {
    PREPARE: {"queue": "prepare"},
    CLASSIFY: {"queue": "classify"},
    DRAFT: {"queue": "draft"},
    EXPORT: {"queue": "export"},
}
#: The queue of each task.
QUEUE_OF_TASK = {task: route["queue"] for task, route in ROUTES.items()}
