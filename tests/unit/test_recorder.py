"""predraft.listener.recorder.GroupRecorder: instances of concurrent associations share a transaction, every
caller hears back only after the commit that holds its instance, one bad instance fails alone, and a lone
caller writes its own at once."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from pydicom.uid import ExplicitVRLittleEndian
from sqlalchemy import event, func, select

from predraft.core.db import get_engine, read_connection, session_scope
from predraft.core.schema import Instance, Study
from predraft.listener.ingest import InstanceHeader
from predraft.listener.recorder import GroupRecorder

CR = "1.2.840.10008.5.1.4.1.1.1"
STUDY = "1.2.826.0.1.3680043.8.498.20"
WAIT_S = 10


def _header(n: int, *, study: str = STUDY) -> InstanceHeader:
    return InstanceHeader(
        study_uid=study,
        series_uid=study + ".1",
        sop_instance_uid=f"{study}.1.{n}",
        sop_class_uid=CR,
        transfer_syntax_uid=ExplicitVRLittleEndian,
        modality="CR",
    )


def _record(recorder: GroupRecorder, n: int, **kwargs):
    return recorder.record(_header(n, **kwargs), spool_path=f"/spool/{n}.dcm", size_bytes=100 + n, calling_ae="PACS")


def _held(url: str, n: int) -> bool:
    with read_connection(url) as connection:
        uid = _header(n).sop_instance_uid
        return connection.scalar(select(Instance.id).where(Instance.sop_instance_uid == uid)) is not None


def _instances(url: str) -> dict[str, int]:
    with session_scope(url) as session:
        return {uid: size for uid, size in session.execute(select(Instance.sop_instance_uid, Instance.size_bytes))}


def _wait_until(condition, what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {WAIT_S} s for {what}")
        time.sleep(0.01)


@pytest.fixture
def held_first_insert(request):
    """Pause the first INSERT of an instance row until ``release`` is set; ``paused`` says it is held there."""

    def install(url: str) -> tuple[threading.Event, threading.Event]:
        paused, release = threading.Event(), threading.Event()

        def hold(connection, cursor, statement, parameters, context, executemany):
            if statement.lstrip().upper().startswith("INSERT INTO INSTANCES") and not paused.is_set():
                paused.set()
                assert release.wait(WAIT_S), "the test never released the held INSERT"

        engine = get_engine(url)
        event.listen(engine, "before_cursor_execute", hold)
        request.addfinalizer(lambda: event.remove(engine, "before_cursor_execute", hold))
        request.addfinalizer(release.set)
        return paused, release

    return install


def _queued_behind_a_held_transaction(recorder: GroupRecorder, held, numbers: list[int]) -> tuple[object, list]:
    """Record instance 0 and hold its transaction at its INSERT (``held``: the fixture's two events), queue the
    instances ``numbers`` meanwhile, then let it go. Returns instance 0's result and, in the order of
    ``numbers``, each queued instance's result or the exception it raised."""
    paused, release = held
    with ThreadPoolExecutor(max_workers=len(numbers) + 1) as pool:
        first = pool.submit(_record, recorder, 0)
        assert paused.wait(WAIT_S)
        queued = [pool.submit(_record, recorder, n) for n in numbers]
        _wait_until(lambda: len(recorder._waiting) == len(numbers), f"{len(numbers)} instances waiting")
        release.set()
        return first.result(WAIT_S), [future.exception(WAIT_S) or future.result() for future in queued]


def test_instances_waiting_while_a_transaction_runs_share_the_next_one(any_url, held_first_insert):
    recorder = GroupRecorder(any_url)
    first, rest = _queued_behind_a_held_transaction(recorder, held_first_insert(any_url), list(range(1, 9)))
    results = [first, *rest]

    assert (recorder.commits, recorder.recorded) == (2, 9)
    assert not any(result.duplicate for result in results)
    assert len({result.instance_id for result in results}) == 9
    assert {result.study_id for result in results} == {results[0].study_id}
    assert _instances(any_url) == {_header(n).sop_instance_uid: 100 + n for n in range(9)}


def test_a_caller_hears_back_only_after_its_instance_is_committed(sqlite_url, held_first_insert):
    paused, release = held_first_insert(sqlite_url)
    recorder = GroupRecorder(sqlite_url)
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(_record, recorder, 1)
        assert paused.wait(WAIT_S)
        time.sleep(0.2)
        assert not pending.done()
        assert not _held(sqlite_url, 1)
        release.set()
        result = pending.result(WAIT_S)

    assert _held(sqlite_url, 1) and not result.duplicate


def test_a_failing_instance_fails_alone_and_the_rest_of_its_transaction_is_recorded(sqlite_url, held_first_insert):
    held = held_first_insert(sqlite_url)
    bad_uid = _header(5).sop_instance_uid

    def refuse_the_bad_one(connection, cursor, statement, parameters, context, executemany):
        if statement.lstrip().upper().startswith("INSERT INTO INSTANCES") and bad_uid in str(parameters):
            raise RuntimeError("refused by the test")

    engine = get_engine(sqlite_url)
    event.listen(engine, "before_cursor_execute", refuse_the_bad_one)
    try:
        recorder = GroupRecorder(sqlite_url)
        _, outcomes = _queued_behind_a_held_transaction(recorder, held, list(range(1, 7)))
    finally:
        event.remove(engine, "before_cursor_execute", refuse_the_bad_one)

    assert isinstance(outcomes[4], RuntimeError) and "refused by the test" in str(outcomes[4])
    others = {n: outcome for n, outcome in zip(range(1, 7), outcomes, strict=True) if n != 5}
    assert all(not result.duplicate for result in others.values())
    assert set(_instances(sqlite_url)) == {_header(n).sop_instance_uid for n in range(7) if n != 5}
    # the shared transaction of six failed; the five good ones then went in alone
    assert (recorder.commits, recorder.recorded) == (6, 6)


def test_the_same_instance_twice_in_one_transaction_is_recorded_once(sqlite_url, held_first_insert):
    recorder = GroupRecorder(sqlite_url)
    _, results = _queued_behind_a_held_transaction(recorder, held_first_insert(sqlite_url), [1, 1])

    assert sorted(result.duplicate for result in results) == [False, True]
    assert results[0].instance_id == results[1].instance_id
    assert len(_instances(sqlite_url)) == 2


def test_a_lone_caller_records_its_instance_on_its_own_thread(sqlite_url):
    recorder = GroupRecorder(sqlite_url)
    writers: list[int] = []

    def note_thread(connection, cursor, statement, parameters, context, executemany):
        if statement.lstrip().upper().startswith("INSERT INTO INSTANCES"):
            writers.append(threading.get_ident())

    engine = get_engine(sqlite_url)
    event.listen(engine, "before_cursor_execute", note_thread)
    try:
        _record(recorder, 1)
        _record(recorder, 2)
    finally:
        event.remove(engine, "before_cursor_execute", note_thread)

    assert writers == [threading.get_ident()] * 2
    assert (recorder.commits, recorder.recorded) == (2, 2)
    assert _held(sqlite_url, 1) and _held(sqlite_url, 2)
    with session_scope(sqlite_url) as session:
        assert session.scalar(select(func.count()).select_from(Study)) == 1


def test_a_study_row_is_shared_by_many_concurrent_callers(any_url):
    recorder = GroupRecorder(any_url, max_batch=4)
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda n: _record(recorder, n), range(40)))

    assert recorder.recorded == 40 and recorder.commits <= 40
    assert len({result.study_id for result in results}) == 1
    assert len(_instances(any_url)) == 40


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"database_url": ""}, "database_url"),
        ({"database_url": "sqlite://", "max_batch": 0}, "max_batch"),
    ],
)
def test_the_constructor_refuses_what_cannot_work(kwargs, message):
    with pytest.raises(ValueError, match=message):
        GroupRecorder(**kwargs)
