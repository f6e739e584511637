"""The Celery application: one app, four queues, routed by task name.

Queues: ``prepare`` (CPU, on the host that holds the spool), ``classify`` (GPU hosts; receives only
small letterboxed uint8 images), ``draft`` (CPU), ``export`` (on the host that holds the spool: sends the
drafted SRs to the PACS). The database is the record of what is done; tasks are idempotent, acknowledged
late and re-queued if their worker dies.
"""

from __future__ import annotations

from celery import Celery
from kombu.transport import sqlalchemy as kombu_sqlalchemy

from predraft.core.settings import Settings
from predraft.workers import task_metrics  # noqa: F401 - connects the per-task latency signals
from predraft.workers.names import CLASSIFY, DRAFT, EXPORT, PREPARE, QUEUES, ROUTES  # noqa: F401 - re-exported

#: How often a worker polls the embedded (SQLite) broker for messages; Redis needs no polling.
SQLA_POLL_SECONDS = 0.05


def create_celery(settings: Settings) -> Celery:
    app = Celery(
        "predraft",
        broker=settings.broker_url,
        include=["predraft.workers.tasks", "predraft.workers.export_task", "predraft.workers.heartbeat"],
    )
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
    if str(settings.broker_url).startswith("sqla+"):
        # kombu's SQLAlchemy transport polls its table, by default once a second: every hop of a study
        # (prepare, classify, draft, export) waited up to that long (bench/time_to_draft.py). Its
        # transport options all go to create_engine, so the interval is set on the transport class.
        kombu_sqlalchemy.Transport.polling_interval = SQLA_POLL_SECONDS
    return app
