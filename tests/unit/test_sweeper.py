"""What the broker holds (predraft.workers.queues), the sweeper and dead letters, on real brokers: kombu's
SQLAlchemy transport over SQLite (the embedded default) and Redis."""

from __future__ import annotations

from datetime import timedelta

import pydicom
import pytest
from sqlalchemy import select

from predraft.core.db import session_scope
from predraft.core.schema import DeadLetter, Draft, Event, Export, Instance, Study, utcnow
from predraft.core.settings import get_settings
from predraft.core.states import ExportState, InstanceState, StudyState
from predraft.listener.ingest import InstanceHeader, record_instance
from predraft.workers.app import CLASSIFY, DRAFT, PREPARE, QUEUES, create_celery
from predraft.workers.dead_letters import DeadLetterError, record_dead_letter, retry_dead_letter
from predraft.workers.export_service import SENDING_CLAIM_SECONDS
from predraft.workers.queues import BrokerUnreachable, declare_queues, queued_messages
from predraft.workers.sweeper import sweep

REDIS_TEST_DB = "redis://127.0.0.1:6379/13"


@pytest.fixture
def sqla_broker(tmp_path) -> str:
    return f"sqla+sqlite:///{tmp_path}/broker.sqlite"


@pytest.fixture
def app(sqla_broker, clean_settings_env):
    application = create_celery(get_settings(broker_url=sqla_broker))
    yield application
    application.close()


def _sent(broker_url: str) -> list[tuple[str, object]]:
    return sorted((m.task, m.first_arg) for m in queued_messages(broker_url, QUEUES))


def _study(url: str, demo_study, *, state: StudyState, instance_states: list[InstanceState], age: float = 600) -> int:
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


def test_queued_messages_reads_the_embedded_broker(app, sqla_broker):
    assert queued_messages(sqla_broker, QUEUES) == []  # no table yet: nothing was ever sent
    app.send_task(PREPARE, args=[7])
    app.send_task(DRAFT, args=[3, 2])
    app.send_task(CLASSIFY, args=[9, [{"pixels": "..."}]])
    messages = {(m.queue, m.task, m.first_arg, m.delivered) for m in queued_messages(sqla_broker, QUEUES)}
    assert messages == {("prepare", PREPARE, 7, False), ("draft", DRAFT, 3, False), ("classify", CLASSIFY, 9, False)}
    assert [m.task for m in queued_messages(sqla_broker, ["draft"])] == [DRAFT]


def test_declare_queues_creates_every_queue_once_and_publishing_then_inserts_none(app, sqla_broker):
    import sqlalchemy

    declare_queues(sqla_broker, QUEUES)
    declare_queues(sqla_broker, QUEUES)  # again, as the listener does after serve: nothing changes
    engine = sqlalchemy.create_engine(sqla_broker.removeprefix("sqla+"))
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
        app.send_task(PREPARE, args=[7])
    finally:
        sqlalchemy.event.remove(sqlalchemy.engine.Engine, "before_cursor_execute", record)
    assert inserted == []
    assert [m.first_arg for m in queued_messages(sqla_broker, ["prepare"])] == [7]


@pytest.mark.postgres
def test_queued_messages_reads_redis(clean_settings_env):
    import redis

    client = redis.Redis.from_url(REDIS_TEST_DB)
    client.flushdb()
    application = create_celery(get_settings(broker_url=REDIS_TEST_DB))
    try:
        application.send_task(PREPARE, args=[11])
        application.send_task(DRAFT, args=[5, 1])
        assert sorted((m.queue, m.task, m.first_arg) for m in queued_messages(REDIS_TEST_DB, QUEUES)) == [
            ("draft", DRAFT, 5),
            ("prepare", PREPARE, 11),
        ]
        # a delivered, unacknowledged message: kombu keeps it in the unacked hash with its delivery time
        with application.connection_for_read() as connection:
            queue = connection.SimpleQueue("prepare", no_ack=False)
            received = queue.get(timeout=5)
            delivered = [m for m in queued_messages(REDIS_TEST_DB, QUEUES) if m.delivered]
            assert [(m.task, m.first_arg) for m in delivered] == [(PREPARE, 11)]
            assert delivered[0].since is not None
            received.ack()
            queue.close()
        assert [(m.task, m.first_arg) for m in queued_messages(REDIS_TEST_DB, QUEUES)] == [(DRAFT, 5)]
    finally:
        client.flushdb()
        application.close()


def test_an_unreachable_broker_is_named_without_its_password():
    with pytest.raises(BrokerUnreachable, match=r"redis://user:\*\*\*@127.0.0.1:1/0") as caught:
        queued_messages("redis://user:secret@127.0.0.1:1/0", QUEUES, timeout=0.5)
    assert "secret" not in str(caught.value)


def test_sweeper_resends_lost_prepare_and_reprepares_lost_classify(app, sqla_broker, sqlite_url, demo_study):
    study_id = _study(
        sqlite_url,
        demo_study,
        state=StudyState.READY,
        instance_states=[InstanceState.RECEIVED, InstanceState.PREPARED, InstanceState.CLASSIFIED],
    )
    (first, _), (second, _), (third, _) = _instances(sqlite_url, study_id)
    report = sweep(app, sqlite_url, sqla_broker, stale_seconds=60)
    assert (report.prepared, report.reclassified, report.finished, report.drafted) == ([first], [second], [], [])
    assert _sent(sqla_broker) == [(PREPARE, first), (PREPARE, second)]
    assert dict(_instances(sqlite_url, study_id))[second] == InstanceState.RECEIVED
    # what a queue holds is not sent twice, even once it is stale again
    with session_scope(sqlite_url) as session:
        for instance in session.get(Study, study_id).instances:
            instance.updated_at = utcnow() - timedelta(seconds=600)
    assert sweep(app, sqlite_url, sqla_broker, stale_seconds=60).total == 0
    assert len(_sent(sqla_broker)) == 2
    with session_scope(sqlite_url) as session:
        kinds = session.scalars(select(Event.kind).where(Event.study_id == study_id)).all()
    assert kinds.count("swept") == 2
    assert third not in {arg for _, arg in _sent(sqla_broker)}


def test_sweeper_leaves_fresh_work_alone(app, sqla_broker, sqlite_url, demo_study):
    _study(sqlite_url, demo_study, state=StudyState.READY, instance_states=[InstanceState.RECEIVED], age=5)
    assert sweep(app, sqlite_url, sqla_broker, stale_seconds=60).total == 0
    assert _sent(sqla_broker) == []


def test_sweeper_drafts_a_study_whose_draft_message_was_lost(app, sqla_broker, sqlite_url, demo_study):
    study_id = _study(
        sqlite_url,
        demo_study,
        state=StudyState.DRAFTING,
        instance_states=[InstanceState.CLASSIFIED, InstanceState.SKIPPED],
    )
    report = sweep(app, sqlite_url, sqla_broker, stale_seconds=60)
    assert report.drafted == [study_id]
    assert _sent(sqla_broker) == [(DRAFT, study_id)]
    assert sweep(app, sqlite_url, sqla_broker, stale_seconds=60).drafted == []  # the message is queued now


def test_sweeper_finishes_a_ready_study_whose_instances_are_all_done(app, sqla_broker, sqlite_url, demo_study):
    study_id = _study(
        sqlite_url, demo_study, state=StudyState.READY, instance_states=[InstanceState.CLASSIFIED, InstanceState.ERROR]
    )
    assert sweep(app, sqlite_url, sqla_broker, stale_seconds=60).finished == [study_id]
    with session_scope(sqlite_url) as session:
        assert session.get(Study, study_id).state == StudyState.DRAFTING
    assert _sent(sqla_broker) == [(DRAFT, study_id)]


def test_sweeper_ignores_drafted_studies(app, sqla_broker, sqlite_url, demo_study):
    drafted = _study(sqlite_url, demo_study[:1], state=StudyState.DRAFTED, instance_states=[InstanceState.RECEIVED])
    with session_scope(sqlite_url) as session:
        session.add(
            Draft(
                study_id=drafted,
                generation=1,
                text="t",
                findings=[],
                model_name="m",
                model_version="v",
                sr_sop_instance_uid="1.2.3",
                sr_series_uid="1.2.4",
                sr_path="/x",
            )
        )
    assert sweep(app, sqlite_url, sqla_broker, stale_seconds=60).total == 0


def test_sweeper_leaves_dead_letters_until_they_are_retried(app, sqla_broker, sqlite_url, demo_study):
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
    assert sweep(app, sqlite_url, sqla_broker, stale_seconds=60).total == 0
    with session_scope(sqlite_url) as session:
        row = session.get(DeadLetter, letter)
        assert (row.study_id, row.instance_id, row.attempts) == (waiting, instance_id, 6)
    assert retry_dead_letter(app, sqlite_url, letter) == f"prepare instance row {instance_id}"
    assert _sent(sqla_broker) == [(PREPARE, instance_id)]
    with pytest.raises(DeadLetterError, match="already retried"):
        retry_dead_letter(app, sqlite_url, letter)
    with pytest.raises(DeadLetterError, match="no dead letter 999"):
        retry_dead_letter(app, sqlite_url, 999)


def test_a_dead_draft_is_drafted_again_on_retry(app, sqla_broker, sqlite_url, demo_study):
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
    assert _sent(sqla_broker) == [(DRAFT, study_id)]


def test_a_stale_dead_draft_leaves_a_study_that_moved_on_alone(app, sqla_broker, sqlite_url, demo_study):
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
    assert _sent(sqla_broker) == []
    with pytest.raises(DeadLetterError, match="already retried"):  # and it no longer counts as dead
        retry_dead_letter(app, sqlite_url, letter)


def test_a_study_is_not_swept_while_receiving(app, sqla_broker, sqlite_url, demo_study):
    _study(sqlite_url, demo_study, state=StudyState.RECEIVING, instance_states=[InstanceState.RECEIVED])
    assert sweep(app, sqlite_url, sqla_broker, stale_seconds=60).total == 0


def test_instances_record_when_they_last_changed(sqlite_url, demo_study):
    study_id = _study(sqlite_url, demo_study[:1], state=StudyState.READY, instance_states=[InstanceState.RECEIVED])
    with session_scope(sqlite_url) as session:
        instance = session.scalars(select(Instance).where(Instance.study_id == study_id)).one()
        before = instance.updated_at
        instance.state = InstanceState.PREPARED
    with session_scope(sqlite_url) as session:
        after = session.scalars(select(Instance).where(Instance.study_id == study_id)).one().updated_at
    assert after.replace(tzinfo=None) > before.replace(tzinfo=None)


def test_sweeper_resends_lost_exports(app, sqla_broker, sqlite_url, demo_study):
    study_id = _study(sqlite_url, demo_study[:1], state=StudyState.DRAFTED, instance_states=[InstanceState.CLASSIFIED])
    old = utcnow() - timedelta(seconds=600)
    with session_scope(sqlite_url) as session:
        draft = Draft(
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
        session.add(draft)
        session.flush()
        draft_id = draft.id
        abandoned = utcnow() - timedelta(seconds=SENDING_CLAIM_SECONDS + 1)
        for destination, state, updated in [
            ("pacs", ExportState.PENDING, old),
            ("archive", ExportState.FAILED, old),
            ("viewer", ExportState.SENT, old),
            ("late", ExportState.PENDING, utcnow()),
            ("orphaned", ExportState.SENDING, abandoned),
            ("busy", ExportState.SENDING, old),
        ]:
            session.add(Export(draft_id=draft_id, destination=destination, state=state, updated_at=updated))
    report = sweep(app, sqlite_url, sqla_broker, stale_seconds=60, export_retry_max_delay_seconds=300)
    assert len(report.exported) == 3
    assert sorted(m.args for m in queued_messages(sqla_broker, QUEUES)) == [
        (draft_id, "archive"),
        (draft_id, "orphaned"),
        (draft_id, "pacs"),
    ]
    # a failed export whose retry may still be waiting is left alone
    assert sweep(app, sqlite_url, sqla_broker, stale_seconds=60, export_retry_max_delay_seconds=3600).exported == []
