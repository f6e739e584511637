"""Recording received instances for many associations in shared transactions (group commit).

Every association's thread used to open its own transaction, take the database's write lock (SQLite's
``BEGIN IMMEDIATE``), record one instance and commit (an fsync of the write-ahead log) before it answered
its sender. Under concurrent associations the threads queued for that lock one by one, and each commit
paid its own fsync. With a :class:`GroupRecorder` one thread of the process at a time writes (the leader):
it records, in one transaction committed once, every instance waiting at that moment, its own and those
that other threads queued while the previous transaction ran. The busier the listener, the more instances
share a commit; a lone association writes its own at once, with no hand-over to another thread. A leader
whose instance is committed hands the lead to a thread still waiting. A caller's
:meth:`GroupRecorder.record` returns only after the commit that holds its instance, so the
acknowledge-after-durable promise is kept.

A transaction that fails (a unique key raced by another process, a locked or unreachable database) is
rolled back whole and each of its instances is then recorded in a transaction of its own, tried up to
three times, so that one bad instance fails alone and the others are still recorded.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field

from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session

from predraft.core.db import session_scope
from predraft.listener.ingest import IngestResult, InstanceHeader, record_instance

log = logging.getLogger(__name__)

#: The most instances one transaction records.
DEFAULT_MAX_BATCH = 64
#: Tries of an instance recorded alone, after its shared transaction failed.
ATTEMPTS_ALONE = 3


@dataclass(frozen=True)
class _Request:
    header: InstanceHeader
    spool_path: str
    size_bytes: int
    calling_ae: str
    outcome: Future[IngestResult] = field(default_factory=Future)


class GroupRecorder:
    """Records instances from any number of threads, up to ``max_batch`` per transaction, one transaction at a
    time per process (see the module's docstring). Safe to call from many threads."""

    def __init__(self, database_url: str, *, max_batch: int = DEFAULT_MAX_BATCH) -> None:
        """Raises ValueError for an empty database URL or a batch under one instance."""
        if not database_url:
            raise ValueError("database_url must not be empty")
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, not {max_batch}")
        self.database_url = database_url
        self.max_batch = max_batch
        self._waiting: deque[_Request] = deque()
        self._turn = threading.Condition()
        self._writing = False  # a leader is writing
        #: Transactions committed and instances they held (for tests and the bench: how well commits group).
        self.commits = 0
        self.recorded = 0

    def record(self, header: InstanceHeader, *, spool_path: str, size_bytes: int, calling_ae: str) -> IngestResult:
        """Record a durably spooled instance (see :func:`predraft.listener.ingest.record_instance`) and return once
        the transaction that holds it is committed. Raises what recording it alone raised the last time."""
        request = _Request(header, spool_path, size_bytes, calling_ae)
        with self._turn:
            self._waiting.append(request)
            while self._writing and not request.outcome.done():
                self._turn.wait()
            if request.outcome.done():  # a leader recorded it
                return request.outcome.result()
            self._writing = True  # this thread leads
        try:
            while not request.outcome.done():
                with self._turn:
                    batch = [self._waiting.popleft() for _ in range(min(self.max_batch, len(self._waiting)))]
                self._write(batch)
                with self._turn:
                    self._turn.notify_all()  # those recorded return; the others wait on
        finally:
            with self._turn:
                self._writing = False
                self._turn.notify_all()  # one still waiting leads next
        return request.outcome.result()

    def _write(self, batch: list[_Request]) -> None:
        try:
            self._record_together(batch)
        except BaseException as exc:  # every caller must hear back, whatever went wrong
            for request in batch:
                if not request.outcome.done():
                    request.outcome.set_exception(exc)
            raise

    def _record_together(self, batch: list[_Request]) -> None:
        try:
            with session_scope(self.database_url) as session:
                results = [_record(session, request) for request in batch]
        except Exception as exc:
            if len(batch) > 1:
                log.info(
                    "a transaction of %d instances failed (%s): recording each alone", len(batch), type(exc).__name__
                )
            for request in batch:
                self._record_alone(request, tried=exc if len(batch) == 1 else None)
            return
        self.commits += 1
        self.recorded += len(batch)
        for request, result in zip(batch, results, strict=True):
            request.outcome.set_result(result)

    def _record_alone(self, request: _Request, *, tried: Exception | None) -> None:
        """Record ``request`` in transactions of its own, :data:`ATTEMPTS_ALONE` tries in all (``tried``: the error
        of one already made) while the database refuses it (a raced unique key, a lock); any other error at once."""
        error = tried
        for _ in range(ATTEMPTS_ALONE - (tried is not None)):
            if error is not None and not isinstance(error, IntegrityError | OperationalError):
                break
            try:
                with session_scope(self.database_url) as session:
                    result = _record(session, request)
            except Exception as exc:
                error = exc
                continue
            self.commits += 1
            self.recorded += 1
            request.outcome.set_result(result)
            return
        assert error is not None
        request.outcome.set_exception(error)


def _record(session: Session, request: _Request) -> IngestResult:
    return record_instance(
        session,
        header=request.header,
        spool_path=request.spool_path,
        size_bytes=request.size_bytes,
        calling_ae=request.calling_ae,
    )
