"""The sweeper, the broker's public counts (predraft.workers.queues) and dead letters, on real brokers: kombu's
SQLAlchemy transport over SQLite (the embedded default) and Redis with PostgreSQL.

The sweeper decides from the database (the rows' leases, predraft.workers.leases) and the broker's count of
waiting messages only; what it sends is recorded by :class:`Recorder`, which also publishes for real.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta

import pydicom
import pytest
from sqlalchemy import select, update

from predraft.core.db import session_scope
from predraft.core.schema import DeadLetter, Draft, Event, Export, Instance, Study, utcnow
from predraft.core.settings import get_settings
from predraft.core.states import ExportState, InstanceState, StudyState
from predraft.listener.ingest import InstanceHeader, record_instance
from predraft.workers.app import CLASSIFY, DRAFT, EXPORT, PREPARE, QUEUES, create_celery
from predraft.workers.dead_letters import DeadLetterError, record_dead_letter, retry_dead_letter
from predraft.workers.leases import claim, stamp_dispatch
from predraft.workers.queues import BrokerUnreachable, declare_queues, waiting_counts
from predraft.workers.sweeper import sweep

REDIS_TEST_DB = "redis://127.0.0.1:6379/13"
OLD = 600.0  # seconds: older than the sweeps' stale time below
STALE = 60.0


class Recorder:
    """A Celery app that records what is sent ((task, arguments, task id)) and publishes it for real."""

    def __init__(self, app) -> None:
        self.app = app
        self.sent: list[tuple[str, list, str | None]] = []

    def send_task(self, name: str, args: list, task_id: str | None = None):
        self.sent.append((name, list(args), task_id))
        return self.app.send_task(name, args=args, task_id=task_id)

    def calls(self) -> list[tuple[str, object]]:
        """(task, first argument) of everything sent, sorted."""
        return sorted((name, args[0]) for name, args, _ in self.sent)


@dataclass
class Site:
    """A database and a broker, with a recording app on them."""

    database_url: str
    broker_url: str
    app: Recorder

    def sweep(self) -> object:
        return sweep(self.app, self.database_url, self.broker_url, stale_seconds=STALE)


@pytest.fixture
def sqla_broker(tmp_path) -> str:
    return f"sqla+sqlite:///{tmp_path}/broker.sqlite"


def _site(database_url: str, broker_url: str) -> Iterator[Site]:
    application = create_celery(get_settings(broker_url=broker_url))
    declare_queues(broker_url, QUEUES)
    try:
        yield Site(database_url, broker_url, Recorder(application))
    finally:
        application.close()


@pytest.fixture
def site(sqlite_url, sqla_broker, clean_settings_env) -> Iterator[Site]:
    """The embedded default: SQLite and kombu's SQLAlchemy transport."""
    yield from _site(sqlite_url, sqla_broker)


@pytest.fixture(params=["embedded", pytest.param("redis_postgres", marks=pytest.mark.postgres)])
def both(request, clean_settings_env) -> Iterator[Site]:
    """Each broker with its database: the embedded default, and Redis with PostgreSQL."""
    if request.param == "embedded":
        yield from _site(request.getfixturevalue("sqlite_url"), request.getfixturevalue("sqla_broker"))
        return
    import redis

    client = redis.Redis.from_url(REDIS_TEST_DB)
    client.flushdb()
    try:
        yield from _site(request.getfixturevalue("postgres_url"), REDIS_TEST_DB)
    finally:
        client.flushdb()
        client.close()


def _study(url: str, demo_study, *, state: StudyState, instance_states: list[InstanceState], age: float = OLD) -> int:
    """A study in ``state`` whose instances are in ``instance_states``, all last changed ``age`` seconds ago and
    sent nowhere (as rows from before leases, or whose messages were never published)."""
    old = utcnow() - timedelta(seconds=age)
    study_id = None
    for image, instance_state in zip(demo_study, instance_states, strict=False):
        ds = pydicom.dcmread(image.path, stop_before_pixels=True)
        header = InstanceHeader.from_dataset(ds, ds.file_meta.TransferSyntaxUID)
        with session_scope(url) as session:
            result = record_instance(
                session, header=header, spool_path=str(image.path), size_bytes=1, calling_ae="PACS"
            )
            session.flush()
            session.get(Instance, result.instance_id).state = instance_state
            study_id = result.study_id
    with session_scope(url) as session:
        study = session.get(Study, study_id)
        study.state, study.ready_at = state, old
        for instance in study.instances:
            instance.updated_at = old
    return study_id


def _instances(url: str, study_id: int) -> list[tuple[int, str]]:
    with session_scope(url) as session:
        return [(i.id, i.state) for i in session.get(Study, study_id).instances]


def _age_leases(url: str, model, row_ids: list[int], **ages: float) -> None:
    """Set the lease columns ``ages`` (column name -> seconds ago; negative: ahead) of rows ``row_ids``."""
    now = utcnow()
    with session_scope(url) as session:
        session.execute(
            update(model)
            .where(model.id.in_(row_ids))
            .values(**{column: now - timedelta(seconds=seconds) for column, seconds in ages.items()})
        )


# --- the broker's public counts -----------------------------------------------------------------------------------


def test_waiting_counts_count_what_waits_and_not_what_a_worker_took(both):
    app = both.app.app
    assert waiting_counts(both.broker_url, QUEUES) == {queue: 0 for queue in QUEUES}  # Redis: no list at all yet
    app.send_task(PREPARE, args=[7])
    app.send_task(PREPARE, args=[8])
    app.send_task(DRAFT, args=[3, 2])
    app.send_task(CLASSIFY, args=[9, [{"pixels": "..."}]])
    assert waiting_counts(both.broker_url, QUEUES) == {"prepare": 2, "classify": 1, "draft": 1, "export": 0}
    with app.connection_for_read() as connection:  # a worker takes one and has not acknowledged it yet
        queue = connection.SimpleQueue("prepare", no_ack=False)
        taken = queue.get(timeout=5)
        assert waiting_counts(both.broker_url, ["prepare"]) == {"prepare": 1}
        taken.ack()
        queue.close()
    assert waiting_counts(both.broker_url, ["prepare", "draft"]) == {"prepare": 1, "draft": 1}


def test_declare_queues_creates_every_queue_once_and_publishing_then_inserts_none(site):
    import sqlalchemy

    declare_queues(site.broker_url, QUEUES)  # again, as the listener does after serve: nothing changes
    engine = sqlalchemy.create_engine(site.broker_url.removeprefix("sqla+"))
    with engine.connect() as connection:
        names = sorted(connection.exec_driver_sql("SELECT name FROM kombu_queue").scalars())
    assert names == sorted(QUEUES)

    # A process whose first publish finds the queue declared inserts no row: nothing left to collide on.
    inserted = []

    def record(_connection, _cursor, statement, *_args) -> None:
        if statement.startswith("INSERT INTO kombu_queue"):
            inserted.append(statement)

    sqlalchemy.event.listen(sqlalchemy.engine.Engine, "before_cursor_execute", record)
    try:
        site.app.app.send_task(PREPARE, args=[7])
    finally:
        sqlalchemy.event.remove(sqlalchemy.engine.Engine, "before_cursor_execute", record)
    assert inserted == []
    assert waiting_counts(site.broker_url, ["prepare"]) == {"prepare": 1}


def test_an_unreachable_broker_is_named_without_its_password():
    with pytest.raises(BrokerUnreachable, match=r"redis://user:\*\*\*@127.0.0.1:1/0") as caught:
        waiting_counts("redis://user:secret@127.0.0.1:1/0", QUEUES, timeout=0.5)
    assert "secret" not in str(caught.value)


def test_no_code_reads_a_kombu_private_name():
    """The broker's storage is kombu's business: its key and table names appear nowhere in predraft."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    private = ("kombu_message", "kombu_queue", "unacked", "\\x06\\x16", '"eta": "', "_size(", "lrange", "hgetall")
    found = [
        f"{path.relative_to(root)}: {name}"
        for folder in ("predraft", "listener", "workers", "models", "reporting", "migrations")
        for path in (root / folder).rglob("*.py")
        for name in private
        if name in path.read_text()
    ]
    assert found == []


# --- the sweeper ---------------------------------------------------------------------------------------------------


def test_sweeper_resends_lost_prepare_and_reprepares_lost_classify(both, demo_study):
    url = both.database_url
    study_id = _study(
        url,
        demo_study,
        state=StudyState.READY,
        instance_states=[InstanceState.RECEIVED, InstanceState.PREPARED, InstanceState.CLASSIFIED],
    )
    (first, _), (second, _), (third, _) = _instances(url, study_id)
    report = both.sweep()
    assert (report.prepared, report.reclassified, report.finished, report.drafted) == ([first], [second], [], [])
    assert both.app.calls() == [(PREPARE, first), (PREPARE, second)]
    assert dict(_instances(url, study_id))[second] == InstanceState.RECEIVED
    with session_scope(url) as session:  # each row names the message sent for it
        stamped = {i.id: (i.task_id, i.dispatched_at is not None) for i in session.get(Study, study_id).instances}
    assert stamped[first] == (next(tid for name, args, tid in both.app.sent if args == [first]), True)
    assert stamped[third] == (None, False)
    assert waiting_counts(both.broker_url, ["prepare"]) == {"prepare": 2}
    # what was just sent is not sent twice, even once it is stale, while its queue holds messages
    _age_leases(url, Instance, [first, second], dispatched_at=OLD)
    assert both.sweep().total == 0
    assert len(both.app.sent) == 2
    with session_scope(url) as session:
        kinds = session.scalars(select(Event.kind).where(Event.study_id == study_id)).all()
    assert kinds.count("swept") == 2


def test_a_backlog_is_never_sent_again_and_a_lost_message_behind_it_is_once_it_drains(both, demo_study):
    url = both.database_url
    study_id = _study(url, demo_study, state=StudyState.READY, instance_states=[InstanceState.RECEIVED] * 3)
    ids = [instance_id for instance_id, _ in _instances(url, study_id)]
    with session_scope(url) as session:  # all three sent long ago; two messages still wait, one was lost
        task_ids = stamp_dispatch(session, Instance, ids)
    for instance_id in ids[:2]:
        both.app.app.send_task(PREPARE, args=[instance_id], task_id=task_ids[instance_id])
    _age_leases(url, Instance, ids, dispatched_at=OLD)
    assert both.sweep().total == 0  # the queue is not empty: nothing counts as lost
    with both.app.app.connection_for_write() as connection:  # workers drain the queue (here: a purge)
        assert connection.default_channel.queue_purge("prepare") == 2
    report = both.sweep()
    assert sorted(report.prepared) == sorted(ids)  # empty queue: every stale, unclaimed row is sent again once
    assert both.sweep().total == 0


def test_a_lapsed_lease_is_sent_again_whatever_waits_and_a_live_one_is_left_alone(both, demo_study):
    url = both.database_url
    study_id = _study(url, demo_study, state=StudyState.READY, instance_states=[InstanceState.PREPARED] * 2)
    (dead_worker, _), (live_worker, _) = _instances(url, study_id)
    with session_scope(url) as session:
        for instance_id, holder in ((dead_worker, "predraft-classify@gone"), (live_worker, "predraft-classify@up")):
            assert claim(session, Instance, instance_id, task_id=f"t-{instance_id}", holder=holder, seconds=STALE)
            assert not claim(session, Instance, instance_id, task_id="again", holder="other", seconds=STALE)
    both.app.app.send_task(CLASSIFY, args=[999, []])  # the classify queue is not empty
    _age_leases(url, Instance, [dead_worker], leased_until=1)  # its worker died: nobody renewed it
    report = both.sweep()
    assert (report.reclassified, report.prepared) == ([dead_worker], [])
    assert both.app.calls() == [(PREPARE, dead_worker)]
    with session_scope(url) as session:
        live = session.get(Instance, live_worker)
        assert (live.state, live.leased_by, live.task_id) == (
            InstanceState.PREPARED,
            "predraft-classify@up",
            f"t-{live_worker}",
        )
        swept = session.get(Instance, dead_worker)
        assert (swept.state, swept.leased_by, swept.attempts) == (InstanceState.RECEIVED, None, 1)


def test_an_overdue_retry_is_sent_again_and_one_still_ahead_is_left_alone(both, demo_study):
    url = both.database_url
    study_id = _study(url, demo_study, state=StudyState.DRAFTING, instance_states=[InstanceState.CLASSIFIED])
    both.app.app.send_task(DRAFT, args=[999, 1])  # the draft queue is not empty
    with session_scope(url) as session:
        stamp_dispatch(session, Study, [study_id])
    _age_leases(url, Study, [study_id], dispatched_at=OLD, retry_at=-30)  # a retry due in 30 s
    assert both.sweep().total == 0
    _age_leases(url, Study, [study_id], retry_at=STALE + 5)  # due long ago: the worker that held it is gone
    assert both.sweep().drafted == [study_id]
    assert both.app.calls() == [(DRAFT, study_id)]


def test_sweeper_leaves_fresh_work_alone(site, demo_study):
    _study(site.database_url, demo_study, state=StudyState.READY, instance_states=[InstanceState.RECEIVED], age=5)
    assert site.sweep().total == 0
    assert site.app.sent == []


def test_sweeper_drafts_a_study_whose_draft_message_was_lost(site, demo_study):
    study_id = _study(
        site.database_url,
        demo_study,
        state=StudyState.DRAFTING,
        instance_states=[InstanceState.CLASSIFIED, InstanceState.SKIPPED],
    )
    report = site.sweep()
    assert report.drafted == [study_id]
    assert site.app.calls() == [(DRAFT, study_id)]
    _age_leases(site.database_url, Study, [study_id], dispatched_at=OLD)
    assert site.sweep().drafted == []  # the message is queued now


def test_sweeper_finishes_a_ready_study_whose_instances_are_all_done(site, demo_study):
    study_id = _study(
        site.database_url,
        demo_study,
        state=StudyState.READY,
        instance_states=[InstanceState.CLASSIFIED, InstanceState.ERROR],
    )
    assert site.sweep().finished == [study_id]
    with session_scope(site.database_url) as session:
        study = session.get(Study, study_id)
        assert (study.state, study.task_id is not None) == (StudyState.DRAFTING, True)
    assert site.app.calls() == [(DRAFT, study_id)]


def test_sweeper_ignores_drafted_studies(site, demo_study):
    drafted = _study(
        site.database_url, demo_study[:1], state=StudyState.DRAFTED, instance_states=[InstanceState.RECEIVED]
    )
    with session_scope(site.database_url) as session:
        session.add(_draft_row(drafted))
    assert site.sweep().total == 0


def _draft_row(study_id: int) -> Draft:
    return Draft(
        study_id=study_id,
        generation=1,
        text="t",
        findings=[],
        model_name="m",
        model_version="v",
        sr_sop_instance_uid="1.2.3",
        sr_series_uid="1.2.4",
        sr_path="/x",
    )


def test_a_study_is_not_swept_while_receiving(site, demo_study):
    _study(site.database_url, demo_study, state=StudyState.RECEIVING, instance_states=[InstanceState.RECEIVED])
    assert site.sweep().total == 0


def test_instances_record_when_they_last_changed(sqlite_url, demo_study):
    study_id = _study(sqlite_url, demo_study[:1], state=StudyState.READY, instance_states=[InstanceState.RECEIVED])
    with session_scope(sqlite_url) as session:
        instance = session.scalars(select(Instance).where(Instance.study_id == study_id)).one()
        before = instance.updated_at
        instance.state = InstanceState.PREPARED
    with session_scope(sqlite_url) as session:
        after = session.scalars(select(Instance).where(Instance.study_id == study_id)).one().updated_at
    assert after.replace(tzinfo=None) > before.replace(tzinfo=None)


def test_sweeper_resends_lost_exports(both, demo_study):
    url = both.database_url
    study_id = _study(url, demo_study[:1], state=StudyState.DRAFTED, instance_states=[InstanceState.CLASSIFIED])
    old, now = utcnow() - timedelta(seconds=OLD), utcnow()
    with session_scope(url) as session:
        draft = _draft_row(study_id)
        session.add(draft)
        session.flush()
        draft_id = draft.id
        rows = {}
        for destination, state, lease in [
            ("pacs", ExportState.PENDING, {"dispatched_at": old}),  # sent long ago, never taken: lost
            ("archive", ExportState.FAILED, {"retry_at": old}),  # its retry was due long ago
            ("waiting-retry", ExportState.FAILED, {"retry_at": now + timedelta(seconds=300)}),
            ("viewer", ExportState.SENT, {}),
            ("late", ExportState.PENDING, {"dispatched_at": now}),  # sent a moment ago
            ("orphaned", ExportState.SENDING, {"leased_until": now - timedelta(seconds=1)}),  # its worker died
            ("busy", ExportState.SENDING, {"leased_until": now + timedelta(seconds=60)}),
            ("unrecorded", ExportState.SENDING, {}),  # a try that could not record its outcome
        ]:
            row = Export(draft_id=draft_id, destination=destination, state=state, updated_at=old, **lease)
            session.add(row)
            session.flush()
            rows[destination] = row.id
    report = both.sweep()
    resent = ["archive", "orphaned", "pacs", "unrecorded"]
    assert sorted(report.exported) == sorted(rows[name] for name in resent)
    assert sorted(args for name, args, _ in both.app.sent) == [[draft_id, name] for name in resent]
    assert {name for name, _, _ in both.app.sent} == {EXPORT}
    assert waiting_counts(both.broker_url, ["export"]) == {"export": 4}
    assert both.sweep().exported == []  # each is queued now, stamped with its new message


def test_sweeper_leaves_dead_letters_until_they_are_retried(site, demo_study):
    app, sqlite_url = site.app, site.database_url
    waiting = _study(sqlite_url, demo_study[:1], state=StudyState.READY, instance_states=[InstanceState.RECEIVED])
    ((instance_id, _),) = _instances(sqlite_url, waiting)
    letter = record_dead_letter(
        sqlite_url,
        task_name=PREPARE,
        task_id="t-1",
        first_arg=instance_id,
        attempts=6,
        error="OperationalError: database is locked",
        traceback="Traceback ...",
    )
    assert site.sweep().total == 0
    with session_scope(sqlite_url) as session:
        row = session.get(DeadLetter, letter)
        assert (row.study_id, row.instance_id, row.attempts) == (waiting, instance_id, 6)
    assert retry_dead_letter(app, sqlite_url, letter) == f"prepare instance row {instance_id}"
    assert app.calls() == [(PREPARE, instance_id)]
    with pytest.raises(DeadLetterError, match="already retried"):
        retry_dead_letter(app, sqlite_url, letter)
    with pytest.raises(DeadLetterError, match="no dead letter 999"):
        retry_dead_letter(app, sqlite_url, 999)


def test_a_dead_draft_is_drafted_again_on_retry(site, demo_study):
    app, sqlite_url = site.app, site.database_url
    study_id = _study(
        sqlite_url,
        demo_study,
        state=StudyState.ERROR,
        instance_states=[InstanceState.CLASSIFIED, InstanceState.CLASSIFIED],
    )
    letter = record_dead_letter(
        sqlite_url,
        task_name=DRAFT,
        task_id="t-2",
        first_arg=study_id,
        attempts=6,
        error="OperationalError",
        traceback="",
    )
    assert retry_dead_letter(app, sqlite_url, letter) == f"draft study row {study_id}"
    with session_scope(sqlite_url) as session:
        assert session.get(Study, study_id).state == StudyState.DRAFTING
    assert app.calls() == [(DRAFT, study_id)]


def test_a_stale_dead_draft_leaves_a_study_that_moved_on_alone(site, demo_study):
    app, sqlite_url = site.app, site.database_url
    study_id = _study(
        sqlite_url,
        demo_study,
        state=StudyState.REVIEWED,
        instance_states=[InstanceState.CLASSIFIED, InstanceState.CLASSIFIED],
    )
    letter = record_dead_letter(
        sqlite_url,
        task_name=DRAFT,
        task_id="t-3",
        first_arg=study_id,
        attempts=6,
        error="OperationalError",
        traceback="",
    )
    assert retry_dead_letter(app, sqlite_url, letter).startswith(f"nothing: study row {study_id} is reviewed")
    with session_scope(sqlite_url) as session:
        assert session.get(Study, study_id).state == StudyState.REVIEWED
    assert app.calls() == []
    with pytest.raises(DeadLetterError, match="already retried"):  # and it no longer counts as dead
        retry_dead_letter(app, sqlite_url, letter)
