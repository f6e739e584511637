"""The admin commands (``predraft queue ...``, ``studies ...``, ``workers``) against real brokers and databases:
the embedded default (kombu's SQLAlchemy transport over SQLite) and Redis + PostgreSQL, with work in every
state (waiting, running, failed, dead). JSON output is checked field by field.

No worker runs here. Work is put where predraft's own code leaves it, by the functions the listener and the
workers call: messages sent by ``start_study`` and ``finish_if_done`` (each stamps its task id on the row,
so the broker's count is real), a message a worker takes (``basic_get``: acknowledged when its try ends,
held unacknowledged while it runs), the lease the task then takes (``claim``, ``work_lease``), a failed try
and its retry (``record_retry``; an export's ``begin_attempt`` and ``record_failure``), a task that failed
for good (``record_dead_letter`` and ``record_given_up``), and the heartbeat a worker writes (a Redis key, or
a file for the embedded broker), which only says which workers are online.
``tests/e2e/test_admin_cli.py`` runs the commands against running workers.
"""

from __future__ import annotations

import io
import json
import os
import socket
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.uid import generate_uid
from sqlalchemy import func, select, update

from predraft.cli import main
from predraft.cli.output import parse_since
from predraft.cli.queue import QUEUE_NAMES, STATE_NAMES
from predraft.cli.studies import flag_text
from predraft.core.db import session_scope, upgrade
from predraft.core.schema import Draft, Export, Instance, Study, utcnow
from predraft.core.settings import Settings, get_settings
from predraft.core.states import InstanceState, StudyState
from predraft.listener.ingest import InstanceHeader, record_instance
from predraft.models.scope import ScopeFlag
from predraft.workers.admin import STATES
from predraft.workers.app import DRAFT, EXPORT, PREPARE, QUEUES, create_celery
from predraft.workers.dead_letters import record_dead_letter
from predraft.workers.dispatch import finish_if_done, start_study
from predraft.workers.export_service import begin_attempt, queue_exports, record_failure
from predraft.workers.export_task import send_exports
from predraft.workers.leases import LeasedModel, claim, record_given_up, record_retry, work_lease
from predraft.workers.presence import REDIS_KEY_PREFIX, heartbeat_dir, write_heartbeat_file
from predraft.workers.queues import waiting_counts
from tests.conftest import embedded_broker, free_port

REDIS_DB_URL = "redis://127.0.0.1:6379/12"
HOST = socket.gethostname()
#: The workers that hold leases here, named as Celery names them (``holder_of``).
DRAFT_WORKER = f"predraft-draft@{HOST}"
PREPARE_WORKER = f"predraft-prepare@{HOST}"
EXPORT_WORKER = f"predraft-export@{HOST}"
#: How long a seeded lease lasts (``sweep_stale_seconds``, as a worker takes it).
LEASE_SECONDS = 600.0


@dataclass
class Site:
    kind: str
    settings: Settings
    app: Any


def _open_site(kind: str, var: Path, monkeypatch: pytest.MonkeyPatch, postgres_url: str | None = None) -> Site:
    """Point the PREDRAFT_* variables (what ``main`` reads) at a fresh site of ``kind``: ``embedded`` (its
    database the default under the var folder) or ``redis_postgres``."""
    var.mkdir(parents=True)
    monkeypatch.setenv("PREDRAFT_VAR_DIR", str(var))
    if kind == "embedded":
        monkeypatch.delenv("PREDRAFT_DATABASE_URL", raising=False)
        monkeypatch.setenv("PREDRAFT_BROKER_URL", embedded_broker(var / "broker.sqlite"))
        upgrade(f"sqlite:///{var / 'predraft.sqlite'}")
    else:
        import redis

        assert postgres_url is not None
        redis.Redis.from_url(REDIS_DB_URL).flushdb()
        monkeypatch.setenv("PREDRAFT_DATABASE_URL", postgres_url)
        monkeypatch.setenv("PREDRAFT_BROKER_URL", REDIS_DB_URL)
    settings = get_settings()
    return Site(kind, settings, create_celery(settings))


def _close_site(site: Site) -> None:
    site.app.close()
    if site.kind != "embedded":
        import redis

        redis.Redis.from_url(REDIS_DB_URL).flushdb()


@pytest.fixture(params=["embedded", pytest.param("redis_postgres", marks=pytest.mark.postgres)])
def site(request, clean_settings_env, monkeypatch) -> Iterator[Site]:
    postgres = request.getfixturevalue("postgres_url") if request.param == "redis_postgres" else None
    opened = _open_site(request.param, clean_settings_env / "var", monkeypatch, postgres)
    yield opened
    _close_site(opened)


@pytest.fixture
def stack() -> Iterator[list]:
    """Connections (and the messages they hold unacknowledged), closed after the test."""
    resources: list = []
    yield resources
    for resource in reversed(resources):
        resource.close()


def _study(site: Site, paths: list[Path], *, state: StudyState, instance_state: InstanceState) -> tuple[int, str]:
    """Record ``paths`` as one new study (fresh UIDs) in ``state``; returns its row id and StudyInstanceUID."""
    study_uid = generate_uid()
    for path in paths:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        header = replace(
            InstanceHeader.from_dataset(ds, ds.file_meta.TransferSyntaxUID),
            study_uid=study_uid,
            series_uid=generate_uid(),
            sop_instance_uid=generate_uid(),
        )
        with session_scope(site.settings.database_url) as session:
            record_instance(session, header=header, spool_path=str(path), size_bytes=1, calling_ae="PACS")
    with session_scope(site.settings.database_url) as session:
        study = session.scalars(select(Study).where(Study.study_uid == study_uid)).one()
        study.state = state
        for instance in study.instances:
            instance.state = instance_state
        return study.id, study_uid


def _instances(site: Site, study_id: int) -> dict[int, str]:
    """The instances of a study: row id -> SOPInstanceUID, by row id."""
    with session_scope(site.settings.database_url) as session:
        return dict(
            session.execute(
                select(Instance.id, Instance.sop_instance_uid)
                .where(Instance.study_id == study_id)
                .order_by(Instance.id)
            ).all()
        )


def _take(site: Site, stack: list, queue: str, *, ack: bool) -> tuple[str, list]:
    """A worker takes the next message of ``queue`` (one, as a worker with prefetch 1 does): acknowledged when
    its try ends (``ack``), else held unacknowledged while it runs (tasks are acknowledged late). Returns its
    task id and arguments."""
    connection = site.app.connection_for_read()
    stack.append(connection)
    message = connection.default_channel.basic_get(queue, no_ack=False)
    assert message is not None, f"no message in queue {queue}"
    if ack:
        message.ack()
    return message.headers["id"], list(message.payload[0])


def _take_and_lease(site: Site, queue: str, model: LeasedModel, holder: str) -> tuple[str, list]:
    """A worker takes the next message of ``queue`` and leases the row its first argument names."""
    connection = site.app.connection_for_read()
    try:
        message = connection.default_channel.basic_get(queue, no_ack=False)
        assert message is not None
        message.ack()
    finally:
        connection.close()
    task_id, args = message.headers["id"], list(message.payload[0])
    _lease(site, model, args[0], task_id, holder)
    return task_id, args


def _lease(site: Site, model: LeasedModel, row_id: int, task_id: str, holder: str) -> None:
    """The task's first step: it leases its row to its worker."""
    with session_scope(site.settings.database_url) as session:
        assert claim(session, model, row_id, task_id=task_id, holder=holder, seconds=LEASE_SECONDS)


def _failed_try(
    site: Site, model: LeasedModel, row_id: int, task_id: str, holder: str, *, retry_in: float | None
) -> None:
    """One try of task ``task_id`` that raised; Celery retries it in ``retry_in`` seconds (``LeasedTask.on_retry``),
    or not at all (None: its retries are spent)."""
    url = site.settings.database_url
    with (
        pytest.raises(ConnectionError),
        work_lease(url, model, row_id, task_id=task_id, holder=holder, seconds=LEASE_SECONDS) as held,
    ):
        assert held
        raise ConnectionError("the broker went away")
    if retry_in is not None:
        record_retry(url, task_id, utcnow() + timedelta(seconds=retry_in))


def _draft(site: Site, study_id: int, generation: int, destinations: list[str]) -> tuple[int, dict[str, str]]:
    """A draft of ``generation`` recorded as the draft task records it: its exports queued (pending, their task
    ids stamped) and sent. Returns the draft's row id and each destination's task id."""
    with session_scope(site.settings.database_url) as session:
        draft = Draft(
            study_id=study_id,
            generation=generation,
            text="t",
            findings=[],
            model_name="m",
            model_version="v",
            sr_sop_instance_uid=generate_uid(),
            sr_series_uid=generate_uid(),
            sr_path="/nowhere/sr.dcm",
        )
        session.add(draft)
        session.flush()
        draft_id = draft.id
        task_ids = queue_exports(session, draft_id=draft_id, destinations=destinations)
    send_exports(site.app, draft_id, task_ids)
    return draft_id, task_ids


def _export_try(
    site: Site, draft_id: int, destination: str, task_id: str, *, error: str, retry_in: float | None
) -> int:
    """One try of an export, as the export task makes it: it claims the row, the destination fails with
    ``error``; a retry follows in ``retry_in`` seconds, or none (dead). Returns the export's row id."""
    with session_scope(site.settings.database_url) as session:
        job = begin_attempt(
            session,
            draft_id=draft_id,
            destination=destination,
            task_id=task_id,
            holder=EXPORT_WORKER,
            lease_seconds=LEASE_SECONDS,
        )
        assert job is not None
    retry_at = None if retry_in is None else utcnow() + timedelta(seconds=retry_in)
    with session_scope(site.settings.database_url) as session:
        record_failure(session, export_id=job.export_id, error=error, retry_at=retry_at)
    if retry_at is not None:
        record_retry(site.settings.database_url, task_id, retry_at)
    return job.export_id


@dataclass
class Seeded:
    """What ``_seed`` put in each state, by the ids the commands show."""

    waiting_task: str
    waiting_study: str
    waiting_instance: str
    waiting_instance_id: int
    retry_task: str
    retry_instance: str
    retry_instance_id: int
    running_task: str
    running_study: str
    running_study_id: int
    failed_export: str
    dead_export: str
    superseded_export: str
    drafted_study: str
    dead_letter: str
    dead_task: str
    dead_study: str
    dead_study_id: int


def _seed(site: Site, demo_study, stack: list) -> Seeded:
    paths = [image.path for image in demo_study]
    app = site.app
    url = site.settings.database_url
    # waiting: a ready study's two prepare messages; a worker took one, whose try failed three times and whose
    # retry is due in five minutes (the worker holds the retry's message for its ETA: not in the queue)
    ready_id, ready_uid = _study(site, paths[:2], state=StudyState.READY, instance_state=InstanceState.RECEIVED)
    assert start_study(app, url, ready_id) == 2
    retry_task, (retry_row,) = _take(site, stack, "prepare", ack=True)
    for _ in range(3):
        _failed_try(site, Instance, retry_row, retry_task, PREPARE_WORKER, retry_in=300)
    instances = _instances(site, ready_id)
    (waiting_row,) = set(instances) - {retry_row}
    with session_scope(url) as session:
        waiting_task = session.get_one(Instance, waiting_row).task_id
    assert waiting_task is not None
    # running: a draft task a worker took (unacknowledged while it runs) and holds the lease of
    running_id, running_uid = _study(site, paths[:1], state=StudyState.READY, instance_state=InstanceState.CLASSIFIED)
    assert finish_if_done(app, url, running_id)
    running_task, running_args = _take(site, stack, "draft", ack=False)
    assert running_args == [running_id, 1]
    _lease(site, Study, running_id, running_task, DRAFT_WORKER)
    # its worker's heartbeat: which workers are online (what runs is the lease)
    _fake_worker(
        site,
        [
            {
                "id": running_task,
                "task": DRAFT,
                "queue": "draft",
                "first_arg": running_id,
                "args": [running_id, 1],
                "state": "active",
                "eta": None,
                "retries": 0,
                "started_at": datetime.now(UTC).isoformat(),
            }
        ],
    )
    # exports of a drafted study: the newest draft's failed twice (a retry due in ten minutes) and dead at once;
    # the superseded draft's dead
    drafted_id, drafted_uid = _study(site, paths[:1], state=StudyState.DRAFTED, instance_state=InstanceState.CLASSIFIED)
    with session_scope(url) as session:  # a late image re-opened it once: generation 2 was drafted too
        session.get_one(Study, drafted_id).generation = 2
    old_id, old_tasks = _draft(site, drafted_id, 1, ["vna"])
    _take(site, stack, "export", ack=True)
    old_vna = _export_try(site, old_id, "vna", old_tasks["vna"], error="HTTP 401 from the VNA", retry_in=None)
    draft_id, tasks = _draft(site, drafted_id, 2, ["pacs", "vna"])
    for _ in tasks:
        _take(site, stack, "export", ack=True)
    for retry_in in (60, 600):
        pacs = _export_try(
            site, draft_id, "pacs", tasks["pacs"], error="cannot connect to PACS@10.0.0.9:104", retry_in=retry_in
        )
    vna = _export_try(site, draft_id, "vna", tasks["vna"], error="HTTP 401 from the VNA: not retried", retry_in=None)
    # dead: a draft task whose retries were spent (the worker records the dead letter and gives the row up)
    dead_id, dead_uid = _study(site, paths[:1], state=StudyState.READY, instance_state=InstanceState.CLASSIFIED)
    assert finish_if_done(app, url, dead_id)
    dead_task, _ = _take(site, stack, "draft", ack=True)
    _failed_try(site, Study, dead_id, dead_task, DRAFT_WORKER, retry_in=None)
    letter = record_dead_letter(
        url,
        task_name=DRAFT,
        task_id=dead_task,
        first_arg=dead_id,
        attempts=6,
        error="OperationalError: database is locked",
        traceback='Traceback (most recent call last):\n  File "workers/tasks.py"\nOperationalError: database is locked',
    )
    record_given_up(url, dead_task)
    return Seeded(
        waiting_task=waiting_task,
        waiting_study=ready_uid,
        waiting_instance=instances[waiting_row],
        waiting_instance_id=waiting_row,
        retry_task=retry_task,
        retry_instance=instances[retry_row],
        retry_instance_id=retry_row,
        running_task=running_task,
        running_study=running_uid,
        running_study_id=running_id,
        failed_export=f"E{pacs}",
        dead_export=f"E{vna}",
        superseded_export=f"E{old_vna}",
        drafted_study=drafted_uid,
        dead_letter=f"D{letter}",
        dead_task=dead_task,
        dead_study=dead_uid,
        dead_study_id=dead_id,
    )


def _fake_worker(
    site: Site, tasks: list[dict], queues: tuple[str, ...] = ("draft",), *, heartbeat_age: float = 0.0
) -> dict:
    """The heartbeat a worker of this process would write (predraft.workers.heartbeat): a key on Redis, else a file."""
    now = datetime.now(UTC)
    status = {
        "hostname": DRAFT_WORKER,
        "pid": os.getpid(),
        "queues": list(queues),
        "pool": "threads",
        "concurrency": 2,
        "device": "cpu",
        "device_name": "CPU: test",
        "model_name": "predraft-test",
        "model_version": "9.9.9",
        "models": {"gate": "predraft-gate 1.2.0", "hip": "predraft-test 9.9.9"},
        "started_at": (now - timedelta(seconds=90)).isoformat(),
        "heartbeat_at": (now - timedelta(seconds=heartbeat_age)).isoformat(),
        "tasks": tasks,
    }
    if site.kind == "embedded":
        write_heartbeat_file(heartbeat_dir(site.settings) / f"{status['hostname']}.json", status)
    else:
        import redis

        redis.Redis.from_url(site.settings.broker_url).set(
            f"{REDIS_KEY_PREFIX}{status['hostname']}", json.dumps(status), ex=10
        )
    return status


@pytest.fixture
def seeded(site, demo_study, stack) -> Seeded:
    return _seed(site, demo_study, stack)


def _run(capsys, *argv: str) -> tuple[int, Any, str]:
    """``predraft argv`` in this process: (exit code, the JSON it printed or its text, stderr)."""
    capsys.readouterr()
    code = main(list(argv))
    captured = capsys.readouterr()
    out = json.loads(captured.out) if "--json" in argv and captured.out.strip() else captured.out
    return code, out, captured.err


def _iso(text: str | None) -> datetime:
    assert text is not None
    return datetime.fromisoformat(text)


def _row(site: Site, model: LeasedModel, row_id: int) -> Any:
    with session_scope(site.settings.database_url) as session:
        row = session.get_one(model, row_id)
        session.expunge(row)
        return row


# --- queue stats ------------------------------------------------------------------------------------------------


def test_queue_stats_counts_every_state(site, seeded, capsys):
    code, stats, _ = _run(capsys, "queue", "stats", "--json")
    assert code == 1  # dead work, and queues no worker consumes
    assert stats["broker"] == site.settings.broker_url
    rows = {row["queue"]: row for row in stats["queues"]}
    assert list(rows) == list(QUEUES)
    workers = 1  # the draft worker's heartbeat
    prepare, draft, export = rows["prepare"], rows["draft"], rows["export"]
    # prepare: one message in the queue (the broker's count); the other instance's retry is on its row
    assert (
        prepare["waiting"],
        prepare["running"],
        prepare["retries_pending"],
        prepare["dead"],
        prepare["workers"],
    ) == (1, 0, 1, 0, 0)
    assert 0 <= prepare["oldest_waiting_seconds"] < 120
    # draft: the leased study runs (its message taken, unacknowledged: not waiting); the dead one is given up
    assert (
        draft["waiting"],
        draft["running"],
        draft["retries_pending"],
        draft["dead"],
        draft["oldest_waiting_seconds"],
        draft["workers"],
    ) == (0, 1, 0, 1, None, workers)
    assert (
        export["waiting"],
        export["running"],
        export["retries_pending"],
        export["dead"],
        export["oldest_waiting_seconds"],
        export["workers"],
    ) == (0, 0, 1, 1, None, 0)
    assert rows["classify"] == {
        "queue": "classify",
        "waiting": 0,
        "running": 0,
        "retries_pending": 0,
        "dead": 0,
        "oldest_waiting_seconds": None,
        "workers": 0,
    }
    assert stats["problems"] == [
        "no online worker consumes queue prepare (2 message(s) waiting)",  # the waiting one and the retry
        "no online worker consumes queue classify",
        "1 dead in queue draft (predraft queue ls --state dead)",
        "1 dead in queue export (predraft queue ls --state dead)",
        "no online worker consumes queue export (1 message(s) waiting)",
    ]
    (worker,) = stats["workers"]
    assert {
        key: worker[key]
        for key in (
            "hostname",
            "queues",
            "pool",
            "concurrency",
            "device",
            "device_name",
            "model_name",
            "model_version",
            "models",
            "active",
            "reserved",
            "scheduled",
            "source",
            "answers_inspect",
        )
    } == {
        "hostname": DRAFT_WORKER,
        "queues": ["draft"],
        "pool": "threads",
        "concurrency": 2,
        "device": "cpu",
        "device_name": "CPU: test",
        "model_name": "predraft-test",
        "model_version": "9.9.9",
        "models": {"gate": "predraft-gate 1.2.0", "hip": "predraft-test 9.9.9"},
        "active": 1,
        "reserved": 0,
        "scheduled": 0,
        "source": "heartbeat file" if site.kind == "embedded" else "heartbeat key",
        "answers_inspect": None,
    }
    assert 89 <= worker["uptime_seconds"] < 200 and 0 <= worker["heartbeat_age_seconds"] < 5


def test_queue_stats_running_is_the_leases_not_the_heartbeats(site, seeded, capsys):
    """A worker's heartbeat that lists no task does not make the leased work stop running, nor does a heartbeat
    that lists a task make work run (the old design counted the heartbeats' tasks on the embedded broker)."""
    _fake_worker(site, [], queues=("draft",))  # the heartbeat lists nothing now
    _, stats, _ = _run(capsys, "queue", "stats", "--json")
    rows = {row["queue"]: row for row in stats["queues"]}
    assert (rows["draft"]["running"], stats["workers"][0]["active"]) == (1, 0)
    _fake_worker(
        site,
        [{"id": seeded.waiting_task, "task": PREPARE, "queue": "prepare", "state": "active", "retries": 0}],
        queues=("draft",),
    )
    _, stats, _ = _run(capsys, "queue", "stats", "--json")
    rows = {row["queue"]: row for row in stats["queues"]}
    assert (rows["prepare"]["running"], rows["draft"]["running"]) == (0, 1)


def test_queue_stats_is_fine_when_every_queue_has_a_worker_and_nothing_is_dead(capsys, clean_settings_env, monkeypatch):
    var = clean_settings_env / "var"
    var.mkdir()
    monkeypatch.setenv("PREDRAFT_VAR_DIR", str(var))
    monkeypatch.setenv("PREDRAFT_BROKER_URL", embedded_broker(var / "broker.sqlite"))
    upgrade(f"sqlite:///{var / 'predraft.sqlite'}")
    site = Site("embedded", get_settings(), None)
    _fake_worker(site, [], queues=QUEUES)
    code, stats, _ = _run(capsys, "queue", "stats", "--json")
    assert (code, stats["problems"]) == (0, [])
    assert [row["workers"] for row in stats["queues"]] == [1, 1, 1, 1]
    assert [(row["waiting"], row["running"], row["retries_pending"], row["dead"]) for row in stats["queues"]] == [
        (0, 0, 0, 0)
    ] * 4
    code, text, _ = _run(capsys, "queue", "stats")
    assert code == 0 and "Workers online" in text and "predraft-gate 1.2.0, predraft-test 9.9.9" in text
    code, report, _ = _run(capsys, "workers", "--json")
    assert (code, report["problems"], len(report["workers"])) == (0, [], 1)


def test_a_backlog_is_counted_by_the_broker_and_listed_from_the_rows_oldest_first(site, demo_study, capsys):
    """Five prepare messages sent and no worker: ``waiting`` is the broker's count, the oldest wait is the age
    of the oldest row sent, and ``queue ls`` lists the rows by when they were sent (not by row id, nor by when
    their messages were published)."""
    url = site.settings.database_url
    study_id, study_uid = _study(
        site, [demo_study[0].path] * 5, state=StudyState.READY, instance_state=InstanceState.RECEIVED
    )
    assert start_study(site.app, url, study_id) == 5
    assert waiting_counts(site.settings.broker_url, QUEUES) == {"prepare": 5, "classify": 0, "draft": 0, "export": 0}
    # the rows say they were sent 10, 20, ... 50 minutes ago, the lowest row id last: the listing follows when
    # each was sent, not the row ids, nor the order in which the messages sit in the queue
    now = utcnow()
    rows = list(_instances(site, study_id))
    sent_at = {row_id: now - timedelta(minutes=10 * (index + 1)) for index, row_id in enumerate(rows)}
    with session_scope(url) as session:
        for row_id, moment in sent_at.items():
            session.execute(update(Instance).where(Instance.id == row_id).values(dispatched_at=moment))
        task_ids = {row_id: session.get_one(Instance, row_id).task_id for row_id in rows}
    oldest_first = sorted(rows, key=sent_at.__getitem__)
    assert oldest_first == rows[::-1]

    code, stats, _ = _run(capsys, "queue", "stats", "--json")
    prepare = {row["queue"]: row for row in stats["queues"]}["prepare"]
    assert (code, prepare["waiting"], prepare["running"], prepare["retries_pending"]) == (1, 5, 0, 0)
    assert 50 * 60 <= prepare["oldest_waiting_seconds"] < 50 * 60 + 60
    assert "no online worker consumes queue prepare (5 message(s) waiting)" in stats["problems"]

    code, items, _ = _run(capsys, "queue", "ls", "--state", "waiting", "--json")
    assert code == 0
    assert [item["id"] for item in items] == [task_ids[row_id] for row_id in oldest_first]
    assert [_iso(item["since"]) for item in items] == [
        sent_at[row_id].replace(microsecond=0) for row_id in oldest_first
    ]
    assert {(item["state"], item["queue"], item["task"], item["study_uid"], item["attempts"]) for item in items} == {
        ("waiting", "prepare", PREPARE, study_uid, 0)
    }
    code, items, _ = _run(capsys, "queue", "ls", "--state", "waiting", "--limit", "2", "--json")
    assert [item["id"] for item in items] == [task_ids[row_id] for row_id in oldest_first[:2]]

    # a worker takes the next message: the broker counts four, its row runs, the others still wait
    taken, (taken_row,) = _take_and_lease(site, "prepare", Instance, PREPARE_WORKER)
    assert task_ids[taken_row] == taken
    left = [row_id for row_id in oldest_first if row_id != taken_row]
    _, stats, _ = _run(capsys, "queue", "stats", "--json")
    prepare = {row["queue"]: row for row in stats["queues"]}["prepare"]
    assert (prepare["waiting"], prepare["running"]) == (4, 1)
    oldest = (now - sent_at[left[0]]).total_seconds()
    assert oldest <= prepare["oldest_waiting_seconds"] < oldest + 60
    _, items, _ = _run(capsys, "queue", "ls", "--queue", "prepare", "--json")
    assert [(item["state"], item["id"], item.get("worker")) for item in items] == [
        ("running", taken, PREPARE_WORKER)
    ] + [("waiting", task_ids[row_id], None) for row_id in left]


def test_a_lapsed_lease_no_longer_runs(site, demo_study, stack, capsys):
    """A worker that died stops renewing its lease: once it lapses, the work is no longer ``running`` but
    sent and waiting again (the sweeper sends it anew), with no worker named."""
    url = site.settings.database_url
    path = demo_study[0].path
    studies = []
    for _ in range(2):
        study_id, study_uid = _study(site, [path], state=StudyState.READY, instance_state=InstanceState.CLASSIFIED)
        assert finish_if_done(site.app, url, study_id)
        task_id, _ = _take(site, stack, "draft", ack=False)
        studies.append((study_id, study_uid, task_id))
    (live_id, _, live_task), (lapsing_id, lapsing_uid, lapsing_task) = studies
    _lease(site, Study, live_id, live_task, DRAFT_WORKER)
    with session_scope(url) as session:
        assert claim(session, Study, lapsing_id, task_id=lapsing_task, holder="predraft-draft@gone", seconds=0.5)
    time.sleep(0.6)

    code, stats, _ = _run(capsys, "queue", "stats", "--json")
    draft = {row["queue"]: row for row in stats["queues"]}["draft"]
    assert (draft["waiting"], draft["running"], draft["retries_pending"], draft["dead"]) == (0, 1, 0, 0)
    code, items, _ = _run(capsys, "queue", "ls", "--queue", "draft", "--json")
    assert [(item["state"], item["id"], item.get("worker")) for item in items] == [
        ("running", live_task, DRAFT_WORKER),
        ("waiting", lapsing_task, None),
    ]
    code, item, _ = _run(capsys, "queue", "show", lapsing_task, "--json")
    assert (code, item["state"], item["study_uid"], item["attempts"], item["row"]) == (
        0,
        "waiting",
        lapsing_uid,
        1,
        f"study row {lapsing_id}",
    )
    assert "worker" not in item
    # a second delivery takes the lapsed lease over, as its new holder
    with session_scope(url) as session:
        assert claim(session, Study, lapsing_id, task_id=lapsing_task, holder=DRAFT_WORKER, seconds=LEASE_SECONDS)
        assert not claim(session, Study, live_id, task_id=live_task, holder="predraft-draft@other", seconds=60)
    code, items, _ = _run(capsys, "queue", "ls", "--queue", "draft", "--state", "running", "--json")
    assert sorted((item["id"], item["worker"], item["attempts"]) for item in items) == sorted(
        [(live_task, DRAFT_WORKER, 1), (lapsing_task, DRAFT_WORKER, 2)]
    )


def _summary(seeded: Seeded, stats: dict, items: list[dict]) -> dict:
    """What ``queue stats`` and ``queue ls`` say of a seed, with its ids and UIDs named by their part in it and
    times reduced to whether there is one (the rest depends on the moment and the broker's URL)."""
    names = {value: name for name, value in vars(seeded).items() if isinstance(value, str)}
    order = ["dead", "failed", "running", "waiting"]
    return {
        "queues": [
            {**row, "oldest_waiting_seconds": row["oldest_waiting_seconds"] is not None} for row in stats["queues"]
        ],
        "workers": [(worker["hostname"], worker["queues"], worker["active"]) for worker in stats["workers"]],
        "problems": stats["problems"],
        "items": sorted(
            (
                {
                    key: names.get(value, value) if key in {"id", "study_uid", "instance_uid"} else value
                    for key, value in item.items()
                    if key not in {"since", "retry_at"}
                }
                | {"since": item["since"] is not None, "retry_at": item["retry_at"] is not None}
                for item in items
            ),
            key=lambda item: (order.index(item["state"]), item["id"]),
        ),
    }


@pytest.mark.postgres
def test_both_brokers_give_the_same_stats_and_listing(request, clean_settings_env, monkeypatch, demo_study, capsys):
    """The same work on the embedded broker and on Redis + PostgreSQL: the same counts and items (the old design
    read each transport's storage, and could tell what runs only from heartbeats on the embedded one)."""
    summaries = {}
    for kind in ("embedded", "redis_postgres"):
        postgres = request.getfixturevalue("postgres_url") if kind == "redis_postgres" else None
        site = _open_site(kind, clean_settings_env / kind, monkeypatch, postgres)
        stack: list = []
        try:
            seeded = _seed(site, demo_study, stack)
            _, stats, _ = _run(capsys, "queue", "stats", "--json")
            _, items, _ = _run(capsys, "queue", "ls", "--json")
            assert stats["broker"] == site.settings.broker_url
            summaries[kind] = _summary(seeded, stats, items)
        finally:
            for resource in reversed(stack):
                resource.close()
            _close_site(site)
    embedded, redis_postgres = summaries["embedded"], summaries["redis_postgres"]
    assert embedded == redis_postgres
    assert [
        (row["queue"], row["waiting"], row["running"], row["retries_pending"], row["dead"])
        for row in embedded["queues"]
    ] == [
        ("prepare", 1, 0, 1, 0),
        ("classify", 0, 0, 0, 0),
        ("draft", 0, 1, 0, 1),
        ("export", 0, 0, 1, 1),
    ]
    assert [(item["id"], item["state"], item.get("worker")) for item in embedded["items"]] == [
        ("dead_export", "dead", None),
        ("dead_letter", "dead", None),
        ("failed_export", "failed", None),
        ("retry_task", "failed", None),
        ("running_task", "running", DRAFT_WORKER),
        ("waiting_task", "waiting", None),
    ]


def test_a_celery_retry_is_recorded_as_due_at_its_eta(site, demo_study, stack, capsys):
    """A retry as Celery's tracer reports it (``celery.app.trace``'s ``handle_retry``): a failed try's retry
    due in five minutes is ``retries_pending`` until then, not overdue at once."""
    import sys

    from billiard.einfo import ExceptionInfo
    from celery.exceptions import Retry

    from predraft.workers.leases import LeasedTask

    url = site.settings.database_url
    study_id, _ = _study(site, [demo_study[0].path], state=StudyState.READY, instance_state=InstanceState.RECEIVED)
    assert start_study(site.app, url, study_id) == 1
    task_id, (row_id,) = _take(site, stack, "prepare", ack=True)
    _failed_try(site, Instance, row_id, task_id, PREPARE_WORKER, retry_in=None)

    class Leased(LeasedTask):
        name = "tests.leased"

        def database_url(self) -> str:
            return url

    try:
        raise Retry(exc=ConnectionError("the broker went away"), when=300)
    except Retry as retry:
        Leased().on_retry(retry.exc, task_id, (row_id,), {}, ExceptionInfo(sys.exc_info()))
    _, stats, _ = _run(capsys, "queue", "stats", "--json")
    assert {row["queue"]: row for row in stats["queues"]}["prepare"]["retries_pending"] == 1
    _, (item,), _ = _run(capsys, "queue", "ls", "--queue", "prepare", "--json")
    now = datetime.now(UTC)
    assert (item["id"], item["state"]) == (task_id, "failed")
    assert now + timedelta(seconds=250) < _iso(item["retry_at"]) <= now + timedelta(seconds=300)


# --- queue ls / show --------------------------------------------------------------------------------------------

_FIELDS = ("id", "state", "queue", "task", "study_uid", "instance_uid", "destination", "attempts", "error")


def test_queue_ls_lists_every_state_field_by_field(site, seeded, capsys):
    code, items, _ = _run(capsys, "queue", "ls", "--json")
    assert code == 1  # some are dead
    s = seeded
    expected = [
        (s.dead_letter, "dead", "draft", DRAFT, s.dead_study, None, None, 6, "OperationalError: database is locked"),
        (
            s.dead_export,
            "dead",
            "export",
            EXPORT,
            s.drafted_study,
            None,
            "vna",
            1,
            "HTTP 401 from the VNA: not retried",
        ),
        (s.retry_task, "failed", "prepare", PREPARE, s.waiting_study, s.retry_instance, None, 3, None),
        (
            s.failed_export,
            "failed",
            "export",
            EXPORT,
            s.drafted_study,
            None,
            "pacs",
            2,
            "cannot connect to PACS@10.0.0.9:104",
        ),
        (s.running_task, "running", "draft", DRAFT, s.running_study, None, None, 1, None),
        (s.waiting_task, "waiting", "prepare", PREPARE, s.waiting_study, s.waiting_instance, None, 0, None),
    ]
    # the superseded draft's dead export is left out; the dead study's row is given up (its dead letter stands)
    by_id = {item["id"]: item for item in items}
    assert sorted(by_id) == sorted(row[0] for row in expected)
    for row in expected:
        assert tuple(by_id[row[0]][key] for key in _FIELDS) == row, row[0]
    states = [item["state"] for item in items]
    assert states == sorted(states, key=["dead", "failed", "running", "waiting"].index)
    now = datetime.now(UTC)
    for item in items:
        assert now - timedelta(minutes=5) < _iso(item["since"]) <= now + timedelta(seconds=1), item
    assert now + timedelta(seconds=500) < _iso(by_id[s.failed_export]["retry_at"]) <= now + timedelta(seconds=600)
    assert now + timedelta(seconds=200) < _iso(by_id[s.retry_task]["retry_at"]) <= now + timedelta(seconds=300)
    assert [by_id[key]["retry_at"] for key in (s.dead_letter, s.running_task, s.waiting_task)] == [None] * 3
    # the worker that holds the lease, on either broker; no other item names one
    assert {item["id"]: item.get("worker") for item in items if "worker" in item} == {s.running_task: DRAFT_WORKER}
    running = _row(site, Study, s.running_study_id)
    assert _iso(by_id[s.running_task]["since"]) == running.leased_at.replace(microsecond=0, tzinfo=UTC)
    waiting = _row(site, Instance, s.waiting_instance_id)
    assert _iso(by_id[s.waiting_task]["since"]) == waiting.dispatched_at.replace(microsecond=0, tzinfo=UTC)

    code, items, _ = _run(capsys, "queue", "ls", "--state", "waiting", "--queue", "prepare", "--json")
    assert (code, [item["id"] for item in items]) == (0, [s.waiting_task])
    code, items, _ = _run(capsys, "queue", "ls", "--state", "dead", "--queue", "export", "--json")
    assert (code, [item["id"] for item in items]) == (1, [s.dead_export])
    code, items, _ = _run(capsys, "queue", "ls", "--state", "failed", "--json")
    assert (code, [item["id"] for item in items]) == (0, [s.retry_task, s.failed_export])
    code, items, _ = _run(capsys, "queue", "ls", "--state", "running", "--json")
    assert (code, [item["id"] for item in items]) == (0, [s.running_task])
    code, text, _ = _run(capsys, "queue", "ls", "--queue", "classify")
    assert (code, text.strip()) == (0, "nothing queued, failed or dead in queue classify")
    code, text, _ = _run(capsys, "queue", "ls")
    assert code == 1 and s.dead_letter in text and "database is locked" in text


def test_queue_show_gives_the_details_of_each_kind_of_item(site, seeded, capsys):
    s = seeded
    code, item, _ = _run(capsys, "queue", "show", s.dead_letter, "--json")
    assert code == 1
    assert {key: item[key] for key in (*_FIELDS, "task_id", "retried_at")} == {
        "id": s.dead_letter,
        "state": "dead",
        "queue": "draft",
        "task": DRAFT,
        "study_uid": s.dead_study,
        "instance_uid": None,
        "destination": None,
        "attempts": 6,
        "error": "OperationalError: database is locked",
        "task_id": s.dead_task,
        "retried_at": None,
    }
    assert item["traceback"].startswith("Traceback (most recent call last):")
    # the dead task's own id: its row was given up, so the dead letter is what it shows
    code, by_task, _ = _run(capsys, "queue", "show", s.dead_task, "--json")
    assert (code, by_task) == (1, item)

    code, item, _ = _run(capsys, "queue", "show", s.failed_export, "--json")
    assert code == 0
    assert (item["state"], item["destination"], item["draft_generation"], item["export_state"], item["attempts"]) == (
        "failed",
        "pacs",
        2,
        "failed",
        2,
    )

    code, item, _ = _run(capsys, "queue", "show", s.waiting_task, "--json")
    assert code == 0
    assert {key: item[key] for key in (*_FIELDS, "retry_at", "row")} == {
        "id": s.waiting_task,
        "state": "waiting",
        "queue": "prepare",
        "task": PREPARE,
        "study_uid": s.waiting_study,
        "instance_uid": s.waiting_instance,
        "destination": None,
        "attempts": 0,
        "error": None,
        "retry_at": None,
        "row": f"instance row {s.waiting_instance_id}",
    }
    assert "worker" not in item
    code, item, _ = _run(capsys, "queue", "show", s.running_task, "--json")
    assert (code, item["state"], item["study_uid"], item["attempts"], item["worker"], item["row"]) == (
        0,
        "running",
        s.running_study,
        1,
        DRAFT_WORKER,
        f"study row {s.running_study_id}",
    )
    code, item, _ = _run(capsys, "queue", "show", s.retry_task, "--json")
    assert (code, item["state"], item["attempts"], item["instance_uid"], item["row"]) == (
        0,
        "failed",
        3,
        s.retry_instance,
        f"instance row {s.retry_instance_id}",
    )
    assert _iso(item["retry_at"]) > datetime.now(UTC) + timedelta(seconds=200)

    code, text, _ = _run(capsys, "queue", "show", s.running_task)
    assert code == 0 and f"worker               {DRAFT_WORKER}" in text and "running" in text
    code, text, _ = _run(capsys, "queue", "show", s.dead_letter)
    assert code == 1 and "traceback" in text and "OperationalError: database is locked" in text
    code, _, err = _run(capsys, "queue", "show", str(uuid.uuid4()))
    assert code == 1 and "no waiting, running, failed or dead item" in err
    code, _, err = _run(capsys, "queue", "show", "D999")
    assert code == 1 and "'D999'" in err


# --- retry / purge ----------------------------------------------------------------------------------------------


def test_retry_sends_dead_work_again_and_refuses_the_rest(site, seeded, capsys):
    s = seeded
    code, result, _ = _run(capsys, "queue", "retry", s.dead_letter, "--json")
    assert (code, result) == (
        0,
        {"retried": [{"id": s.dead_letter, "sent": f"draft study row {s.dead_study_id}"}], "refused": []},
    )
    study = _row(site, Study, s.dead_study_id)
    assert (study.state, study.attempts, study.retry_at) == ("drafting", 0, None)
    assert study.task_id != s.dead_task and study.dispatched_at is not None  # sent afresh, under a new task id
    code, items, _ = _run(capsys, "queue", "ls", "--queue", "draft", "--state", "waiting", "--json")
    assert [(item["id"], item["task"], item["study_uid"]) for item in items] == [(study.task_id, DRAFT, s.dead_study)]
    assert waiting_counts(site.settings.broker_url, ["draft"]) == {"draft": 1}

    code, result, _ = _run(capsys, "queue", "retry", s.dead_export, "--json")
    assert code == 0 and result["retried"][0]["sent"].endswith(" to vna")
    row = _row(site, Export, int(s.dead_export[1:]))
    assert (row.state, row.attempts, row.last_error, row.retry_at) == ("pending", 0, None, None)
    code, items, _ = _run(capsys, "queue", "ls", "--queue", "export", "--state", "waiting", "--json")
    assert [(item["id"], item["destination"], item["study_uid"]) for item in items] == [
        (row.task_id, "vna", s.drafted_study)
    ]
    assert waiting_counts(site.settings.broker_url, ["export"]) == {"export": 1}

    for item_id, reason in [
        (s.dead_letter, "was already retried"),
        (s.failed_export, "is failed, not dead"),
        (s.superseded_export, "a newer one superseded"),
        ("E999", "no export E999"),
        (s.waiting_task, "is not a dead item"),
    ]:
        code, result, _ = _run(capsys, "queue", "retry", item_id, "--json")
        assert code == 1 and reason in result["refused"][0]["reason"], (item_id, result)
    code, text, _ = _run(capsys, "queue", "retry", "--all-dead")
    assert (code, text.strip()) == (0, "nothing is dead")
    code, stats, _ = _run(capsys, "queue", "stats", "--json")
    assert [row["dead"] for row in stats["queues"]] == [0, 0, 0, 0]
    assert [row["waiting"] for row in stats["queues"]] == [1, 0, 1, 1]


def test_retry_all_dead(site, seeded, capsys):
    code, result, _ = _run(capsys, "queue", "retry", "--all-dead", "--json")
    assert code == 0 and [entry["id"] for entry in result["retried"]] == [seeded.dead_letter, seeded.dead_export]
    assert main(["queue", "retry"]) == 2  # neither an ID nor --all-dead: a usage error


def test_purge_deletes_waiting_messages_only(site, seeded, capsys, monkeypatch):
    url = site.settings.database_url
    with session_scope(url) as session:
        before = session.scalar(select(func.count(Instance.id)))
    monkeypatch.setattr("sys.stdin", io.StringIO("n\n"))
    assert main(["queue", "purge", "prepare"]) == 1  # declined: nothing purged
    assert "Delete the 1 message(s) waiting in queue prepare" in capsys.readouterr().err
    assert waiting_counts(site.settings.broker_url, ["prepare"]) == {"prepare": 1}
    code, result, _ = _run(capsys, "queue", "purge", "prepare", "--yes", "--json")
    assert code == 0
    assert (result["queue"], result["purged"], result["broker"]) == ("prepare", 1, site.settings.broker_url)
    assert "sweeper sends pending work again" in result["note"]
    code, stats, _ = _run(capsys, "queue", "stats", "--json")
    rows = {row["queue"]: row for row in stats["queues"]}
    # the broker holds nothing now; the rows are untouched: the retry is still due, the running task runs
    assert (rows["prepare"]["waiting"], rows["prepare"]["oldest_waiting_seconds"]) == (0, None)
    assert (rows["prepare"]["retries_pending"], rows["draft"]["running"]) == (1, 1)
    # the row still says its message was sent: the sweeper sends it again after sweep_stale_seconds
    code, items, _ = _run(capsys, "queue", "ls", "--queue", "prepare", "--json")
    assert [(item["id"], item["state"]) for item in items] == [
        (seeded.retry_task, "failed"),
        (seeded.waiting_task, "waiting"),
    ]
    with session_scope(url) as session:
        assert session.scalar(select(func.count(Instance.id))) == before
        paths = session.scalars(select(Instance.spool_path)).all()
    assert paths and all(Path(path).is_file() for path in paths)


# --- workers ----------------------------------------------------------------------------------------------------


def test_workers_lists_the_online_workers(site, capsys):
    code, report, _ = _run(capsys, "workers", "--json", "--timeout", "0.2")
    assert (code, report["broker"], report["workers"]) == (1, site.settings.broker_url, [])
    assert (report["queues_without_workers"], report["problems"][0]) == (list(QUEUES), "no worker online")
    _fake_worker(site, [], queues=("prepare", "classify"))
    code, report, _ = _run(capsys, "workers", "--json", "--timeout", "0.2")
    assert code == 1 and [w["queues"] for w in report["workers"]] == [["prepare", "classify"]]
    assert report["queues_without_workers"] == ["draft", "export"]
    hostname = report["workers"][0]["hostname"]
    if site.kind == "embedded":  # no broadcast on this broker: nobody is asked
        assert report["workers"][0]["answers_inspect"] is None
        assert report["problems"] == ["no online worker consumes queue draft", "no online worker consumes queue export"]
    else:  # a heartbeat without a worker behind it to answer Celery's inspect
        assert report["workers"][0]["answers_inspect"] is False
        assert report["problems"][-1] == (f"worker {hostname} sends heartbeats but did not answer inspect within 0.2 s")
    code, text, _ = _run(capsys, "workers", "--timeout", "0.2")
    assert code == 1 and "problem: no online worker consumes queue draft" in text and hostname in text
    # a heartbeat older than ten seconds is a worker offline
    _fake_worker(site, [], queues=QUEUES, heartbeat_age=30)
    code, report, _ = _run(capsys, "workers", "--json", "--timeout", "0.2")
    assert (code, report["workers"]) == (1, [])


# --- studies ------------------------------------------------------------------------------------------------------


def test_studies_ls_filters_by_state_and_since(site, seeded, capsys):
    code, rows, _ = _run(capsys, "studies", "ls", "--json")
    assert code == 0 and len(rows) == 4
    code, rows, _ = _run(capsys, "studies", "ls", "--state", "drafted", "--since", "1h", "--json")
    assert code == 0
    assert [(row["study_uid"], row["state"], row["generation"], row["instances"]) for row in rows] == [
        (seeded.drafted_study, "drafted", 2, 1)
    ]
    assert set(rows[0]) == {
        "study_uid",
        "state",
        "generation",
        "instances",
        "accession_number",
        "received_at",
        "last_instance_at",
        "drafted_at",
    }
    code, rows, _ = _run(capsys, "studies", "ls", "--since", "2099-01-01", "--json")
    assert (code, rows) == (0, [])
    with session_scope(site.settings.database_url) as session:
        study = session.scalars(select(Study).where(Study.study_uid == seeded.dead_study)).one()
        study.state, study.error = StudyState.ERROR, "drafting failed"
    code, rows, _ = _run(capsys, "studies", "ls", "--state", "error", "--json")
    assert (code, [row["study_uid"] for row in rows]) == (1, [seeded.dead_study])
    assert main(["studies", "ls", "--since", "yesterday"]) == 2  # a usage error, named
    assert "--since 'yesterday'" in capsys.readouterr().err


def test_studies_show_exit_code_says_whether_an_export_is_dead(site, seeded, capsys):
    code, detail, _ = _run(capsys, "studies", "show", seeded.drafted_study, "--json")
    assert code == 1 and [(e["destination"], e["state"]) for e in detail["draft"]["exports"]] == [
        ("pacs", "failed"),
        ("vna", "dead"),
    ]
    code, detail, _ = _run(capsys, "studies", "show", seeded.running_study, "--json")
    assert (code, detail["state"], detail["draft"]) == (0, "drafting", None)


def test_studies_redraft_reopens_a_finished_study_under_a_new_generation(site, seeded, stack, capsys):
    before = waiting_counts(site.settings.broker_url, QUEUES)
    code, result, _ = _run(capsys, "studies", "redraft", seeded.drafted_study, "--json")
    assert (code, result) == (0, {"study_uid": seeded.drafted_study, "generation": 3})
    with session_scope(site.settings.database_url) as session:
        study = session.scalars(select(Study).where(Study.study_uid == seeded.drafted_study)).one()
        assert (study.state, study.generation, study.error) == ("ready", 3, None)
        assert (study.task_id, study.dispatched_at) == (None, None)  # no draft sent: it waits for its images
        # every image is prepared and classified again, by the model configured now: a prepare message each,
        # its task id stamped on the row
        sent = {instance.task_id: instance.id for instance in study.instances}
        assert {instance.state for instance in study.instances} == {"received"}
        assert all(instance.dispatched_at is not None and instance.attempts == 0 for instance in study.instances)
    assert None not in sent and len(sent) == 1
    after = waiting_counts(site.settings.broker_url, QUEUES)
    assert after == before | {"prepare": before["prepare"] + len(sent)}
    code, items, _ = _run(capsys, "queue", "ls", "--queue", "prepare", "--state", "waiting", "--json")
    assert [item["id"] for item in items] == [seeded.waiting_task, *sent]
    # the messages in the queue are those: the seed's, then the redraft's, each with its row's task id
    queued = [_take(site, stack, "prepare", ack=True) for _ in range(after["prepare"])]
    assert queued == [
        (seeded.waiting_task, [seeded.waiting_instance_id]),
        *[(task_id, [row_id]) for task_id, row_id in sent.items()],
    ]
    code, _, err = _run(capsys, "studies", "redraft", seeded.running_study)
    assert code == 1 and "is drafting: it is on its way to a draft already" in err
    code, _, err = _run(capsys, "studies", "redraft", "1.2.3.4")
    assert code == 1 and "no study with StudyInstanceUID 1.2.3.4" in err


# --- unreachable ----------------------------------------------------------------------------------------------------

COMMANDS = [
    ["queue", "stats"],
    ["queue", "ls"],
    ["queue", "show", "D1"],
    ["queue", "retry", "--all-dead"],
    ["queue", "purge", "draft", "--yes"],
    ["studies", "ls"],
    ["studies", "show", "1.2.3"],
    ["studies", "redraft", "1.2.3"],
    ["studies", "resend", "1.2.3"],
    ["workers"],
]


@pytest.mark.parametrize("argv", COMMANDS, ids=" ".join)
@pytest.mark.parametrize("broker", ["redis", "embedded"])
def test_every_command_exits_2_quickly_naming_a_stopped_broker_without_its_password(
    argv, broker, capsys, clean_settings_env, monkeypatch, sqlite_url
):
    url = (
        f"redis://:s3cret@127.0.0.1:{free_port()}/0"
        if broker == "redis"
        else f"sqla+sqlite:///{clean_settings_env}/no-such-folder/broker.sqlite"
    )
    monkeypatch.setenv("PREDRAFT_BROKER_URL", url)
    monkeypatch.setenv("PREDRAFT_DATABASE_URL", sqlite_url)
    assert main(argv) == 2  # at once: bench/cli.py times it (outages)
    err = capsys.readouterr().err
    shown = url.replace("s3cret", "***")
    assert f"cannot reach the broker {shown}" in err and "s3cret" not in err


@pytest.mark.parametrize("argv", [["queue", "stats", "--json"], ["studies", "ls", "--json"]], ids=" ".join)
def test_an_unreachable_database_exits_2_naming_it_without_its_password(argv, capsys, clean_settings_env, monkeypatch):
    var = clean_settings_env / "var"
    var.mkdir()
    monkeypatch.setenv("PREDRAFT_BROKER_URL", embedded_broker(var / "broker.sqlite"))
    url = f"postgresql+psycopg://predraft:s3cret@127.0.0.1:{free_port()}/predraft"
    monkeypatch.setenv("PREDRAFT_DATABASE_URL", url)
    assert main(argv) == 2  # at once: bench/cli.py times it (outages)
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "cannot reach the database postgresql+psycopg://predraft:***@127.0.0.1" in captured.err
    assert "s3cret" not in captured.err


def test_a_stopped_broker_exits_2_from_the_console_script_too(tmp_path):
    import subprocess
    import sys

    env = {key: value for key, value in os.environ.items() if not key.startswith("PREDRAFT_")}
    env.update(PREDRAFT_VAR_DIR=str(tmp_path / "var"), PREDRAFT_BROKER_URL=f"redis://:s3cret@127.0.0.1:{free_port()}/3")
    result = subprocess.run(
        [str(Path(sys.executable).parent / "predraft"), "queue", "stats"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2, result
    assert "cannot reach the broker redis://:***@127.0.0.1:" in result.stderr and "s3cret" not in result.stderr


# --- small parts ----------------------------------------------------------------------------------------------------


def test_the_cli_knows_the_queues_and_states_of_the_workers():
    assert QUEUE_NAMES == QUEUES and STATE_NAMES == STATES


def test_since_takes_spans_and_dates():
    now = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
    assert parse_since("30m", now=now) == datetime(2026, 11, 22, 11, 30, tzinfo=UTC)
    assert parse_since("2h", now=now) == datetime(2026, 11, 22, 10, 0, tzinfo=UTC)
    assert parse_since("3d", now=now) == datetime(2026, 11, 19, 12, 0, tzinfo=UTC)
    assert parse_since("2026-11-20", now=now) == datetime(2026, 11, 20, tzinfo=UTC)
    assert parse_since("2026-11-20T08:00+01:00", now=now) == datetime(2026, 11, 20, 7, 0, tzinfo=UTC)
    with pytest.raises(ValueError, match="--since 'soon': give a span such as 30m"):
        parse_since("soon", now=now)


def test_studies_show_names_a_flag_once():
    untagged = "no body-part tags; the image reads as hip or pelvis, 1.00"
    assert flag_text(ScopeFlag.UNTAGGED.value, untagged) == untagged
    assert flag_text(ScopeFlag.TAGS_DISAGREE.value, "tags say KNEE, the image reads as hip or pelvis, 0.98") == (
        "tags disagree: tags say KNEE, the image reads as hip or pelvis, 0.98"
    )
    assert flag_text(ScopeFlag.REQUESTED.value, None) == "drafted on request"
    assert flag_text(None, None) == ""
