"""The classify worker's micro-batcher: one forward pass for images from many concurrent tasks.

A classify worker runs several tasks at once (Celery threads pool). Each task calls
:meth:`MicroBatcher.submit` with its hip images and waits on the returned future; one background
thread gathers pending images across tasks until ``batch_size`` images are pending or ``wait_ms`` has
passed since the oldest pending image arrived, runs ``classifier.predict`` once on them, and gives each
task its own rows. While a batch runs, new images queue up and form the next one.

- Images of different shapes or dtypes never share a batch (each batch takes the oldest request's).
- A request larger than ``batch_size`` is spread over several batches.
- If a batch of several requests fails, each request is run alone once, so that one bad request fails
  only its own future; an error of a lone request goes to its future.
- :meth:`close` refuses new requests, runs what is pending, and stops the thread.
- Should the thread itself fail (a bug outside ``predict``), every request it holds, the batch it was
  running included, fails with :class:`BatcherClosedError` instead of waiting forever.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from predraft.core import metrics

log = logging.getLogger(__name__)


class Predictor(Protocol):
    def predict(self, images: np.ndarray) -> np.ndarray: ...


class BatcherClosedError(RuntimeError):
    """The batcher was closed, or its thread died: it takes no more images."""


@dataclass(frozen=True)
class BatcherStats:
    """What a batcher has run so far."""

    batches: int
    images: int
    largest_batch: int
    failed_batches: int

    @property
    def mean_batch(self) -> float:
        return self.images / self.batches if self.batches else 0.0


class _Request:
    __slots__ = ("images", "future", "arrived", "taken", "done_rows", "result", "failed")

    def __init__(self, images: np.ndarray, arrived: float) -> None:
        self.images = images
        self.future: Future[np.ndarray] = Future()
        self.arrived = arrived
        self.taken = 0  # rows handed to batches so far
        self.done_rows = 0  # rows whose results are in
        self.result: np.ndarray | None = None
        self.failed = False

    @property
    def key(self) -> tuple[tuple[int, ...], np.dtype]:
        return self.images.shape[1:], self.images.dtype


@dataclass
class _Piece:
    request: _Request
    start: int
    stop: int


class MicroBatcher:
    """Collects images across submitters into batches for ``classifier.predict``; thread-safe.

    ``classifier``: anything with ``predict(images: ndarray (N, ...)) -> ndarray (N, ...)``, one output
    row per image. ``batch_size``: most images per call. ``wait_ms``: longest wait, counted from the
    oldest pending image, before a partial batch runs (0: run whatever is pending at once).
    """

    def __init__(self, classifier: Predictor, *, batch_size: int, wait_ms: float, name: str = "micro-batcher") -> None:
        if not callable(getattr(classifier, "predict", None)):
            raise TypeError(f"classifier must have a predict method, {type(classifier).__name__} has none")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int):
            raise TypeError(f"batch_size must be an int, not {type(batch_size).__name__}")
        if batch_size < 1:
            raise ValueError(f"batch_size {batch_size} must be at least 1")
        if isinstance(wait_ms, bool) or not isinstance(wait_ms, int | float):
            raise TypeError(f"wait_ms must be a number, not {type(wait_ms).__name__}")
        if not 0 <= wait_ms < math.inf:
            raise ValueError(f"wait_ms {wait_ms} must be a finite number >= 0")
        if not isinstance(name, str):
            raise TypeError(f"name must be a str, not {type(name).__name__}")
        self.classifier = classifier
        self.batch_size = batch_size
        self.wait_ms = float(wait_ms)
        self._wait_s = self.wait_ms / 1000.0
        self._pending: deque[_Request] = deque()
        self._pending_rows = 0
        self._condition = threading.Condition(threading.Lock())
        self._closed = False
        self._batches = self._images = self._largest = self._failed = 0
        self._running: list[_Piece] = []  # the batch being executed (only the batching thread touches it)
        self._device = str(getattr(classifier, "device", "unknown"))  # the metrics' label
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def __repr__(self) -> str:
        return (
            f"MicroBatcher({self.classifier!r}, batch_size={self.batch_size}, wait_ms={self.wait_ms}, "
            f"closed={self._closed})"
        )

    def __enter__(self) -> MicroBatcher:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def closed(self) -> bool:
        """True once closed, or when its thread is gone (it died, or this process is a fork's child)."""
        return self._closed or not self._thread.is_alive()

    @property
    def stats(self) -> BatcherStats:
        with self._condition:
            return BatcherStats(self._batches, self._images, self._largest, self._failed)

    def submit(self, images: np.ndarray) -> Future[np.ndarray]:
        """Queue ``images`` (N >= 1 along the first axis); the future resolves to their N output rows."""
        if not isinstance(images, np.ndarray):
            raise TypeError(f"images must be a numpy array, not {type(images).__name__}")
        if images.ndim < 1 or len(images) == 0:
            raise ValueError(f"images of shape {images.shape} hold no image")
        request = _Request(images, time.monotonic())
        with self._condition:
            if self._closed or not self._thread.is_alive():
                raise BatcherClosedError(f"{self!r} takes no more images")
            self._pending.append(request)
            self._pending_rows += len(images)
            self._condition.notify()
        return request.future

    def predict(self, images: np.ndarray, timeout: float | None = None) -> np.ndarray:
        """``submit(images).result(timeout)``: block until this request's rows are in."""
        return self.submit(images).result(timeout)

    def close(self, timeout: float | None = None) -> None:
        """Take no more images, run the pending ones without waiting for the deadline, stop the thread."""
        with self._condition:
            self._closed = True
            self._condition.notify()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    # The batching thread.

    def _run(self) -> None:
        try:
            while True:
                pieces = self._next_batch()
                if pieces is None:
                    return
                if pieces:
                    self._running = pieces
                    self._execute(pieces)
                    self._running = []
        except BaseException as exc:  # a bug here must not leave submitters waiting forever
            log.exception("%s stopped", self._thread.name)
            with self._condition:
                self._closed = True
                stranded = {
                    id(request): request for request in [piece.request for piece in self._running] + list(self._pending)
                }
                self._pending.clear()
            for request in stranded.values():
                self._fail(request, BatcherClosedError(f"{self._thread.name} stopped: {exc!r}"))
            raise

    def _next_batch(self) -> list[_Piece] | None:
        """Wait until a batch is due and take it; None once closed and drained."""
        with self._condition:
            while True:
                while self._pending and (self._pending[0].future.cancelled() or self._pending[0].failed):
                    self._drop(self._pending.popleft())
                if not self._pending:
                    if self._closed:
                        return None
                    self._condition.wait()
                    continue
                remaining = self._pending[0].arrived + self._wait_s - time.monotonic()
                if self._closed or self._pending_rows >= self.batch_size or remaining <= 0:
                    return self._take()
                self._condition.wait(remaining)

    def _drop(self, request: _Request) -> None:
        self._pending_rows -= len(request.images) - request.taken

    def _take(self) -> list[_Piece]:
        """Take up to batch_size rows of the oldest request's shape, oldest first (lock held)."""
        key = self._pending[0].key
        pieces: list[_Piece] = []
        space = self.batch_size
        kept: deque[_Request] = deque()
        while self._pending:
            request = self._pending.popleft()
            if request.future.cancelled() or request.failed:
                self._drop(request)
                continue
            if space == 0 or request.key != key:
                kept.append(request)
                continue
            if request.taken == 0 and not request.future.set_running_or_notify_cancel():
                self._drop(request)
                continue
            count = min(space, len(request.images) - request.taken)
            pieces.append(_Piece(request, request.taken, request.taken + count))
            request.taken += count
            self._pending_rows -= count
            space -= count
            if request.taken < len(request.images):
                kept.append(request)  # the rest goes in a later batch, still first in line
        self._pending = kept
        return pieces

    def _execute(self, pieces: list[_Piece]) -> None:
        images = np.concatenate([piece.request.images[piece.start : piece.stop] for piece in pieces])
        started = time.perf_counter()
        try:
            rows = self._predict(images)
        except Exception as exc:
            self._count(len(images), failed=True)
            if len({id(piece.request) for piece in pieces}) == 1:
                self._fail(pieces[0].request, exc)
                return
            log.warning(
                "a batch of %d images from %d requests failed (%s); running each request alone",
                len(images),
                len(pieces),
                type(exc).__name__,
            )
            for piece in pieces:
                self._execute([piece])
            return
        self._count(len(images), failed=False)
        metrics.INFERENCE_SECONDS.labels(device=self._device).observe(time.perf_counter() - started)
        metrics.BATCH_SIZE.labels(device=self._device).observe(len(images))
        offset = 0
        for piece in pieces:
            count = piece.stop - piece.start
            self._deliver(piece, rows[offset : offset + count])
            offset += count

    def _predict(self, images: np.ndarray) -> np.ndarray:
        rows = self.classifier.predict(images)
        if not isinstance(rows, np.ndarray) or rows.ndim < 1 or len(rows) != len(images):
            shape = getattr(rows, "shape", type(rows).__name__)
            raise ValueError(f"classifier.predict returned {shape} for {len(images)} images: one row each expected")
        return rows

    def _count(self, images: int, *, failed: bool) -> None:
        with self._condition:
            self._batches += 1
            self._images += images
            self._largest = max(self._largest, images)
            self._failed += int(failed)

    def _deliver(self, piece: _Piece, rows: np.ndarray) -> None:
        request = piece.request
        if request.failed:
            return
        if piece.start == 0 and piece.stop == len(request.images):
            request.future.set_result(rows.copy())
            return
        if request.result is None:
            request.result = np.empty((len(request.images), *rows.shape[1:]), dtype=rows.dtype)
        request.result[piece.start : piece.stop] = rows
        request.done_rows += len(rows)
        if request.done_rows == len(request.images):
            request.future.set_result(request.result)

    def _fail(self, request: _Request, exc: BaseException) -> None:
        if request.failed or request.future.done():
            return
        request.failed = True  # its rows still pending are dropped
        if not request.future.running():
            request.future.set_running_or_notify_cancel()
        if not request.future.done():
            request.future.set_exception(exc)
