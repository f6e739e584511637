"""The Celery application: one app, three queues, routed by task name.

Queues: ``prepare`` (CPU, on the host that holds the spool), ``classify`` (GPU hosts; receives only
small letterboxed uint8 images), ``draft`` (CPU). The database is the record of what is done; tasks
are idempotent, acknowledged late and re-queued if their worker dies.
"""

from __future__ import annotations

from celery import Celery

from predraft.settings import Settings

PREPARE = "predraft.prepare"
CLASSIFY = "predraft.classify"
DRAFT = "predraft.draft"
QUEUES = ("prepare", "classify", "draft")
ROUTES = {PREPARE: {"queue": "prepare"}, CLASSIFY: {"queue": "classify"}, DRAFT: {"queue": "draft"}}


def create_celery(settings: Settings) -> Celery:
    app = Celery("predraft", broker=settings.broker_url, include=["workers.tasks"])
    app.conf.update(
        task_routes=ROUTES,
        task_default_queue="prepare",
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        worker_hijack_root_logger=False,
        broker_connection_retry_on_startup=True,
        worker_send_task_events=False,
    )
    return app
