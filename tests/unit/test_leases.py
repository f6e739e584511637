"""Work leases (predraft.workers.leases) on a real database: claims, releases, renewals and retries, as the
tasks, the heartbeat and the sweeper use them."""

from __future__ import annotations

from datetime import timedelta
from types import SimpleNamespace

import pydicom
import pytest
from billiard.einfo import ExceptionWithTraceback
from celery.exceptions import Retry

from predraft.core.clock import as_utc
from predraft.core.db import session_scope
from predraft.core.schema import Instance, Study, utcnow
from predraft.core.states import InstanceState
from predraft.listener.ingest import InstanceHeader, record_instance
from predraft.workers.leases import (
    LeasedTask,
    claim,
    lease_seconds,
    record_given_up,
    release,
    renew_leases,
    retry_due,
    stamp_dispatch,
    work_lease,
)
from predraft.workers.presence import HEARTBEAT_SECONDS


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def url(request) -> str:
    return request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "postgres_url")


@pytest.fixture
def instance_id(url, demo_study) -> int:
    ds = pydicom.dcmread(demo_study[0].path, stop_before_pixels=True)
    header = InstanceHeader.from_dataset(ds, ds.file_meta.TransferSyntaxUID)
    with session_scope(url) as session:
        return record_instance(
            session, header=header, spool_path=str(demo_study[0].path), size_bytes=1, calling_ae="PACS"
        ).instance_id


def _row(url: str, instance_id: int) -> Instance:
    with session_scope(url) as session:
        row = session.get(Instance, instance_id)
        session.expunge(row)
        return row


def test_of_two_claims_one_wins_until_its_lease_ends_or_lapses(url, instance_id):
    with session_scope(url) as session:
        task_id = stamp_dispatch(session, Instance, [instance_id])[instance_id]
    with session_scope(url) as session:
        assert claim(session, Instance, instance_id, task_id=task_id, holder="w1", seconds=60)
        assert not claim(session, Instance, instance_id, task_id="duplicate", holder="w2", seconds=60)
        release(session, Instance, instance_id, task_id="duplicate", finished=True)  # not its lease: nothing
    row = _row(url, instance_id)
    assert (row.task_id, row.leased_by, row.attempts, row.dispatched_at is not None) == (task_id, "w1", 1, True)
    with session_scope(url) as session:
        release(session, Instance, instance_id, task_id=task_id, finished=True)
    row = _row(url, instance_id)
    assert (row.leased_until, row.leased_by, row.dispatched_at, row.attempts) == (None, None, None, 1)
    with session_scope(url) as session:  # a lease whose worker died lapses, and the next claim takes it
        assert claim(session, Instance, instance_id, task_id="t2", holder="w1", seconds=60)
        session.execute(
            Instance.__table__.update()
            .where(Instance.id == instance_id)
            .values(leased_until=utcnow() - timedelta(seconds=1))
        )
    with session_scope(url) as session:
        assert claim(session, Instance, instance_id, task_id="t3", holder="w2", seconds=60)
    assert (_row(url, instance_id).leased_by, _row(url, instance_id).attempts) == ("w2", 3)
    with pytest.raises(ValueError, match="positive"), session_scope(url) as session:
        claim(session, Instance, instance_id, task_id="t4", holder="w3", seconds=0)


def test_work_lease_ends_finished_when_the_task_returns_and_kept_as_sent_when_it_raises(url, instance_id):
    with session_scope(url) as session:
        stamp_dispatch(session, Instance, [instance_id])
    with (
        pytest.raises(RuntimeError),
        work_lease(url, Instance, instance_id, task_id="try-1", holder="w", seconds=60) as held,
    ):
        assert held
        raise RuntimeError("a try failed")
    row = _row(url, instance_id)
    assert (row.leased_until, row.task_id, row.dispatched_at is not None) == (None, "try-1", True)  # a retry follows
    with work_lease(url, Instance, instance_id, task_id="try-1", holder="w", seconds=60) as held:
        assert held
        with work_lease(url, Instance, instance_id, task_id="duplicate", holder="w2", seconds=60) as other:
            assert other is False  # a second delivery meanwhile does nothing
    row = _row(url, instance_id)
    assert (row.leased_until, row.dispatched_at, row.attempts) == (None, None, 2)


def test_a_task_that_sends_the_next_step_does_not_end_that_steps_lease(url, instance_id):
    """prepare stamps classify's message on the row; classify may run before prepare's lease is released."""
    with work_lease(url, Instance, instance_id, task_id="prepare-1", holder="w", seconds=60) as held:
        assert held
        with session_scope(url) as session:
            session.get(Instance, instance_id).state = InstanceState.PREPARED
            classify_id = stamp_dispatch(session, Instance, [instance_id])[instance_id]
        with session_scope(url) as session:
            assert claim(session, Instance, instance_id, task_id=classify_id, holder="w", seconds=60)
    row = _row(url, instance_id)
    assert (row.task_id, row.leased_by, row.attempts) == (classify_id, "w", 1)  # fresh work: its tries from 0


def test_the_heartbeat_renews_only_the_leases_of_the_tasks_its_worker_runs(url, instance_id, demo_study):
    with session_scope(url) as session:
        assert claim(session, Instance, instance_id, task_id="running", holder="w1", seconds=5)
        study_id = session.get(Instance, instance_id).study_id
        assert claim(session, Study, study_id, task_id="ended-unreleased", holder="w1", seconds=5)
    before = _row(url, instance_id).leased_until
    assert renew_leases(url, holder="w2", task_ids=["running"], seconds=600) == 0  # not its lease
    assert renew_leases(url, holder="w1", task_ids=["running"], seconds=600) == 1
    assert renew_leases(url, holder="w1", task_ids=[], seconds=600) == 0
    assert as_utc(_row(url, instance_id).leased_until) > as_utc(before) + timedelta(seconds=500)
    with session_scope(url) as session:
        assert as_utc(session.get(Study, study_id).leased_until) < utcnow() + timedelta(seconds=6)
    assert lease_seconds(0.5) == 3 * HEARTBEAT_SECONDS and lease_seconds(120) == 120


def test_a_retry_is_recorded_when_due_unless_it_already_runs(url, instance_id):
    class Probe(LeasedTask):
        name = "predraft.test-probe"

        def database_url(self) -> str:
            return url

    task = Probe()
    with session_scope(url) as session:
        assert claim(session, Instance, instance_id, task_id="t", holder="w", seconds=60)
        release(session, Instance, instance_id, task_id="t", finished=False)
    now = utcnow()
    # as Celery's tracer hands it: the Retry wrapped in billiard's ExceptionWithTraceback
    task.on_retry(
        OSError(), "t", (instance_id,), {}, SimpleNamespace(exception=ExceptionWithTraceback(Retry(when=30), ""))
    )
    row = _row(url, instance_id)
    assert abs((as_utc(row.retry_at) - now).total_seconds() - 30) < 5
    with session_scope(url) as session:  # the retry runs already (a countdown near 0): left alone
        assert claim(session, Instance, instance_id, task_id="t", holder="w", seconds=60)
    task.on_retry(OSError(), "t", (instance_id,), {}, SimpleNamespace(exception=Retry(when=600)))
    assert _row(url, instance_id).retry_at is None
    record_given_up(url, "t")  # its retries spent: no message is out any more
    row = _row(url, instance_id)
    assert (row.dispatched_at, row.leased_until, row.retry_at) == (None, None, None)


def test_retry_due_reads_each_form_of_celerys_when():
    now = utcnow()
    assert retry_due(None, now) == now
    assert retry_due(12, now) == now + timedelta(seconds=12)
    assert retry_due(now + timedelta(seconds=5), now) == now + timedelta(seconds=5)
