"""The admin commands (``predraft queue ...``, ``studies ...``, ``workers``) against real brokers and databases:
the embedded default (kombu's SQLAlchemy transport over SQLite) and Redis + PostgreSQL, with work in every
state (waiting, running, failed, dead). JSON output is checked field by field.

No worker runs here. Work is put where a worker would leave it: messages sent with Celery (a retry is a
message with an ETA), a message delivered and not acknowledged, the heartbeat a worker writes (a Redis key,
or a file for the embedded broker, which cannot tell what runs), dead letters recorded by
``record_dead_letter`` and export rows.
``tests/e2e/test_admin_cli.py`` runs the commands against running workers.
"""

from __future__ import annotations

import io
import json
import os
import socket
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid
from sqlalchemy import func, select

from predraft.cli import main
from predraft.cli.output import parse_since
from predraft.cli.queue import QUEUE_NAMES, STATE_NAMES
from predraft.core.db import session_scope, upgrade
from predraft.core.schema import Draft, Export, Instance, Study
from predraft.core.settings import Settings, get_settings
from predraft.core.states import ExportState, InstanceState, StudyState
from predraft.listener.ingest import InstanceHeader, record_instance
from predraft.workers.admin import STATES
from predraft.workers.app import DRAFT, EXPORT, PREPARE, QUEUES, create_celery
from predraft.workers.dead_letters import record_dead_letter
from predraft.workers.presence import REDIS_KEY_PREFIX, heartbeat_dir, write_heartbeat_file
from tests.conftest import embedded_broker, free_port

REDIS_DB_URL = "redis://127.0.0.1:6379/12"


@dataclass
class Site:
    kind: str
    settings: Settings
    app: object


@pytest.fixture(params=["embedded", pytest.param("redis_postgres", marks=pytest.mark.postgres)])
def site(request, clean_settings_env, monkeypatch) -> Iterator[Site]:
    var = clean_settings_env / "var"
    env = {"PREDRAFT_VAR_DIR": str(var)}
    if request.param == "embedded":
        var.mkdir()
        env["PREDRAFT_BROKER_URL"] = embedded_broker(var / "broker.sqlite")
        upgrade(f"sqlite:///{var / 'predraft.sqlite'}")
    else:
        import redis

        redis.Redis.from_url(REDIS_DB_URL).flushdb()
        env.update(PREDRAFT_DATABASE_URL=request.getfixturevalue("postgres_url"), PREDRAFT_BROKER_URL=REDIS_DB_URL)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = get_settings()
    app = create_celery(settings)
    yield Site(request.param, settings, app)
    app.close()
    if request.param != "embedded":
        import redis

        redis.Redis.from_url(REDIS_DB_URL).flushdb()


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


def _draft(
    site: Site, study_id: int, generation: int, exports: dict[str, tuple[ExportState, int, str | None]]
) -> tuple[int, dict[str, int]]:
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
        rows = {}
        for destination, (state, attempts, error) in exports.items():
            row = Export(draft_id=draft.id, destination=destination, state=state, attempts=attempts, last_error=error)
            session.add(row)
            session.flush()
            rows[destination] = row.id
        return draft.id, rows


@dataclass
class Seeded:
    """What ``_seed`` put in each state, by the ids the commands show."""

    waiting_task: str
    waiting_study: str
    waiting_instance: str
    retry_task: str
    retry_instance: str
    running_task: str
    running_study: str
    failed_export: str
    dead_export: str
    superseded_export: str
    drafted_study: str
    dead_letter: str
    dead_study: str
    dead_study_id: int


def _seed(site: Site, demo_study, stack: list) -> Seeded:
    paths = [image.path for image in demo_study]
    app = site.app
    url = site.settings.database_url
    # waiting: a prepare message; failed: a prepare retry of another instance, due in five minutes
    ready_id, ready_uid = _study(site, paths[:2], state=StudyState.READY, instance_state=InstanceState.RECEIVED)
    with session_scope(url) as session:
        (first, first_uid), (second, second_uid) = session.execute(
            select(Instance.id, Instance.sop_instance_uid).where(Instance.study_id == ready_id).order_by(Instance.id)
        ).all()
    waiting = app.send_task(PREPARE, args=[first])
    retry = app.send_task(PREPARE, args=[second], countdown=300, retries=3)
    # running: a draft task a worker holds
    running_id, running_uid = _study(
        site, paths[:1], state=StudyState.DRAFTING, instance_state=InstanceState.CLASSIFIED
    )
    running = app.send_task(DRAFT, args=[running_id, 1])
    connection = app.connection_for_read()  # delivered to a consumer that has not acknowledged it
    stack.append(connection)
    queue = connection.SimpleQueue("draft", no_ack=False)
    stack.append(queue)
    assert queue.get(timeout=5).headers["id"] == running.id
    # its worker's heartbeat (on the embedded broker, the only way to tell what runs)
    _fake_worker(
        site,
        [
            {
                "id": running.id,
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
    # exports of a drafted study: the newest draft's failed (retry due) and dead; the superseded draft's dead
    drafted_id, drafted_uid = _study(site, paths[:1], state=StudyState.DRAFTED, instance_state=InstanceState.CLASSIFIED)
    with session_scope(url) as session:  # a late image re-opened it once: generation 2 was drafted too
        session.get_one(Study, drafted_id).generation = 2
    _, old = _draft(site, drafted_id, 1, {"vna": (ExportState.DEAD, 1, "HTTP 401 from the VNA")})
    draft_id, rows = _draft(
        site,
        drafted_id,
        2,
        {
            "pacs": (ExportState.FAILED, 2, "cannot connect to PACS@10.0.0.9:104"),
            "vna": (ExportState.DEAD, 1, "HTTP 401 from the VNA: not retried"),
        },
    )
    app.send_task(EXPORT, args=[draft_id, "pacs"], countdown=600, retries=1)
    # dead: a draft task whose retries were spent
    dead_id, dead_uid = _study(site, paths[:1], state=StudyState.DRAFTING, instance_state=InstanceState.CLASSIFIED)
    letter = record_dead_letter(
        url,
        task_name=DRAFT,
        task_id="task-dead-0001",
        first_arg=dead_id,
        attempts=6,
        error="OperationalError: database is locked",
        traceback='Traceback (most recent call last):\n  File "workers/tasks.py"\nOperationalError: database is locked',
    )
    return Seeded(
        waiting_task=waiting.id,
        waiting_study=ready_uid,
        waiting_instance=first_uid,
        retry_task=retry.id,
        retry_instance=second_uid,
        running_task=running.id,
        running_study=running_uid,
        failed_export=f"E{rows['pacs']}",
        dead_export=f"E{rows['vna']}",
        superseded_export=f"E{old['vna']}",
        drafted_study=drafted_uid,
        dead_letter=f"D{letter}",
        dead_study=dead_uid,
        dead_study_id=dead_id,
    )


def _fake_worker(
    site: Site, tasks: list[dict], queues: tuple[str, ...] = ("draft",), *, heartbeat_age: float = 0.0
) -> dict:
    """The heartbeat a worker of this process would write (predraft.workers.heartbeat): a key on Redis, else a file."""
    now = datetime.now(UTC)
    status = {
        "hostname": f"predraft-draft@{socket.gethostname()}",
        "pid": os.getpid(),
        "queues": list(queues),
        "pool": "threads",
        "concurrency": 2,
        "device": "cpu",
        "device_name": "CPU: test",
        "model_name": "predraft-test",
        "model_version": "9.9.9",
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
def seeded(site, demo_study) -> Iterator[Seeded]:
    stack: list = []
    try:
        yield _seed(site, demo_study, stack)
    finally:
        for resource in reversed(stack):
            resource.close()


def _run(capsys, *argv: str) -> tuple[int, object, str]:
    """``predraft argv`` in this process: (exit code, the JSON it printed or its text, stderr)."""
    capsys.readouterr()
    code = main(list(argv))
    captured = capsys.readouterr()
    out = json.loads(captured.out) if "--json" in argv and captured.out.strip() else captured.out
    return code, out, captured.err


def _iso(text: str | None) -> datetime:
    assert text is not None
    return datetime.fromisoformat(text)


# --- queue stats ------------------------------------------------------------------------------------------------


def test_queue_stats_counts_every_state(site, seeded, capsys):
    code, stats, _ = _run(capsys, "queue", "stats", "--json")
    assert code == 1  # dead work, and queues no worker consumes
    assert stats["broker"] == site.settings.broker_url
    rows = {row["queue"]: row for row in stats["queues"]}
    assert list(rows) == list(QUEUES)
    workers = 1  # the draft worker's heartbeat
    prepare, draft, export = rows["prepare"], rows["draft"], rows["export"]
    assert (
        prepare["waiting"],
        prepare["running"],
        prepare["retries_pending"],
        prepare["dead"],
        prepare["workers"],
    ) == (1, 0, 1, 0, 0)
    assert 0 <= prepare["oldest_waiting_seconds"] < 120
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
    assert "1 dead in queue draft (predraft queue ls --state dead)" in stats["problems"]
    assert "1 dead in queue export (predraft queue ls --state dead)" in stats["problems"]
    assert "no online worker consumes queue prepare (2 message(s) waiting)" in stats["problems"]
    assert "no online worker consumes queue draft" not in stats["problems"]
    (worker,) = stats["workers"]
    assert {
        key: worker[key]
        for key in (
            "queues",
            "pool",
            "concurrency",
            "device",
            "device_name",
            "model_name",
            "model_version",
            "active",
            "reserved",
            "scheduled",
            "source",
            "answers_inspect",
        )
    } == {
        "queues": ["draft"],
        "pool": "threads",
        "concurrency": 2,
        "device": "cpu",
        "device_name": "CPU: test",
        "model_name": "predraft-test",
        "model_version": "9.9.9",
        "active": 1,
        "reserved": 0,
        "scheduled": 0,
        "source": "heartbeat file" if site.kind == "embedded" else "heartbeat key",
        "answers_inspect": None,
    }
    assert 89 <= worker["uptime_seconds"] < 200 and 0 <= worker["heartbeat_age_seconds"] < 5


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
    code, text, _ = _run(capsys, "queue", "stats")
    assert code == 0 and "Workers online" in text and "predraft-test 9.9.9" in text
    code, report, _ = _run(capsys, "workers", "--json")
    assert (code, report["problems"], len(report["workers"])) == (0, [], 1)


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
        (s.retry_task, "failed", "prepare", PREPARE, s.waiting_study, s.retry_instance, None, 3, None),
        (s.running_task, "running", "draft", DRAFT, s.running_study, None, None, 0, None),
        (s.waiting_task, "waiting", "prepare", PREPARE, s.waiting_study, s.waiting_instance, None, 0, None),
    ]
    by_id = {item["id"]: item for item in items}
    assert sorted(by_id) == sorted(row[0] for row in expected)  # the superseded draft's dead export is left out
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
    if site.kind == "embedded":
        assert by_id[s.running_task]["worker"] == f"predraft-draft@{socket.gethostname()}"

    code, items, _ = _run(capsys, "queue", "ls", "--state", "waiting", "--queue", "prepare", "--json")
    assert (code, [item["id"] for item in items]) == (0, [s.waiting_task])
    code, items, _ = _run(capsys, "queue", "ls", "--state", "dead", "--queue", "export", "--json")
    assert (code, [item["id"] for item in items]) == (1, [s.dead_export])
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
        "task_id": "task-dead-0001",
        "retried_at": None,
    }
    assert item["traceback"].startswith("Traceback (most recent call last):")

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
    assert {key: item[key] for key in _FIELDS} == {
        "id": s.waiting_task,
        "state": "waiting",
        "queue": "prepare",
        "task": PREPARE,
        "study_uid": s.waiting_study,
        "instance_uid": s.waiting_instance,
        "destination": None,
        "attempts": 0,
        "error": None,
    }
    code, item, _ = _run(capsys, "queue", "show", s.running_task, "--json")
    assert (code, item["state"], item["study_uid"]) == (0, "running", s.running_study)
    code, item, _ = _run(capsys, "queue", "show", s.retry_task, "--json")
    assert (code, item["state"], item["attempts"], item["instance_uid"]) == (0, "failed", 3, s.retry_instance)

    code, text, _ = _run(capsys, "queue", "show", s.dead_letter)
    assert code == 1 and "traceback" in text and "OperationalError: database is locked" in text
    code, _, err = _run(capsys, "queue", "show", str(uuid.uuid4()))
    assert code == 1 and "no queued, failed or dead item" in err
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
    with session_scope(site.settings.database_url) as session:
        assert session.scalars(select(Study.state).where(Study.study_uid == s.dead_study)).one() == "drafting"
    code, items, _ = _run(capsys, "queue", "ls", "--queue", "draft", "--state", "waiting", "--json")
    assert [(item["task"], item["study_uid"]) for item in items] == [(DRAFT, s.dead_study)]

    code, result, _ = _run(capsys, "queue", "retry", s.dead_export, "--json")
    assert code == 0 and result["retried"][0]["sent"].endswith(" to vna")
    with session_scope(site.settings.database_url) as session:
        row = session.get(Export, int(s.dead_export[1:]))
        assert (row.state, row.attempts, row.last_error) == ("pending", 0, None)
    code, items, _ = _run(capsys, "queue", "ls", "--queue", "export", "--state", "waiting", "--json")
    assert [(item["destination"], item["study_uid"]) for item in items] == [("vna", s.drafted_study)]

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


def test_retry_all_dead(site, seeded, capsys):
    code, result, _ = _run(capsys, "queue", "retry", "--all-dead", "--json")
    assert code == 0 and [entry["id"] for entry in result["retried"]] == [seeded.dead_letter, seeded.dead_export]
    assert main(["queue", "retry"]) == 2  # neither an ID nor --all-dead: a usage error


def test_purge_deletes_waiting_messages_only(site, seeded, capsys, monkeypatch, demo_study):
    url = site.settings.database_url
    with session_scope(url) as session:
        before = session.scalar(select(func.count(Instance.id)))
    monkeypatch.setattr("sys.stdin", io.StringIO("n\n"))
    assert main(["queue", "purge", "prepare"]) == 1  # declined: nothing purged
    assert "Delete the 1 message(s) waiting in queue prepare" in capsys.readouterr().err
    code, result, _ = _run(capsys, "queue", "purge", "prepare", "--yes", "--json")
    assert code == 0
    assert (result["queue"], result["purged"], result["broker"]) == ("prepare", 2, site.settings.broker_url)
    assert "sweeper sends pending work again" in result["note"]
    code, stats, _ = _run(capsys, "queue", "stats", "--json")
    rows = {row["queue"]: row for row in stats["queues"]}
    assert (rows["prepare"]["waiting"], rows["prepare"]["retries_pending"]) == (0, 0)
    assert rows["draft"]["running"] == 1  # a running task is left alone
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


def test_studies_redraft_reopens_a_finished_study_under_a_new_generation(site, seeded, capsys):
    code, result, _ = _run(capsys, "studies", "redraft", seeded.drafted_study, "--json")
    assert (code, result) == (0, {"study_uid": seeded.drafted_study, "generation": 3})
    with session_scope(site.settings.database_url) as session:
        study = session.scalars(select(Study).where(Study.study_uid == seeded.drafted_study)).one()
        assert (study.state, study.generation, study.error) == ("ready", 3, None)
        # every image is prepared and classified again, by the model configured now
        instances = sorted(instance.id for instance in study.instances)
        assert {instance.state for instance in study.instances} == {"received"}
    from predraft.workers.queues import waiting_messages

    sent = waiting_messages(site.settings.broker_url, ["prepare"], limit=100)
    assert (
        sorted(message.args[0] for message in sent if message.task == PREPARE and message.args[0] in instances)
        == instances
    )
    assert not [m for m in waiting_messages(site.settings.broker_url, ["draft"], limit=10) if m.args[0] == study.id]
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
