"""predraft.workers.batcher: the micro-batcher that shares forward passes between concurrent classify tasks."""

from __future__ import annotations

import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from predraft.workers.batcher import BatcherClosedError, MicroBatcher

POISON = 255  # FakeClassifier fails a batch holding an image with this value


class FakeClassifier:
    """Deterministic: each output row is (mean of the image, its first pixel). Records every batch.

    With ``gate`` set, the first call blocks until the gate opens, so that tests can queue requests
    while a batch is running and know they form the next batch together.
    """

    def __init__(self, *, gate: threading.Event | None = None, delay: float = 0.0) -> None:
        self.batches: list[tuple[tuple[int, ...], int]] = []
        self.lock = threading.Lock()
        self.gate = gate
        self.running = threading.Event()
        self.delay = delay

    def predict(self, images: np.ndarray) -> np.ndarray:
        with self.lock:
            self.batches.append((images.shape[1:], len(images)))
        self.running.set()
        if self.gate is not None:
            assert self.gate.wait(10), "the test never opened the gate"
        if self.delay:
            time.sleep(self.delay)
        if (images == POISON).any():
            raise ValueError(f"poisoned batch of {len(images)}")
        flat = images.reshape(len(images), -1).astype(np.float64)
        return np.stack([flat.mean(axis=1), flat[:, 0]], axis=1)

    @property
    def sizes(self) -> list[int]:
        with self.lock:
            return [size for _, size in self.batches]


def _expected(images: np.ndarray) -> np.ndarray:
    flat = images.reshape(len(images), -1).astype(np.float64)
    return np.stack([flat.mean(axis=1), flat[:, 0]], axis=1)


def _images(count: int, value: int, size: int = 4) -> np.ndarray:
    """``count`` images, each filled with its own value: value, value + 1, ..."""
    return np.stack([np.full((size, size), (value + i) % POISON, dtype=np.uint8) for i in range(count)])


@pytest.fixture
def batcher_factory():
    made: list[MicroBatcher] = []

    def make(classifier, **kwargs) -> MicroBatcher:
        batcher = MicroBatcher(classifier, **{"batch_size": 8, "wait_ms": 5.0, **kwargs})
        made.append(batcher)
        return batcher

    yield make
    for batcher in made:
        batcher.close(timeout=10)


def _queue_behind_a_running_batch(make, classifier: FakeClassifier, **kwargs):
    """A batcher whose first batch (one image) is running and blocked on ``classifier.gate``."""
    batcher = make(classifier, **kwargs)
    first = batcher.submit(_images(1, 1))
    assert classifier.running.wait(10)
    return batcher, first


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"classifier": object()}, TypeError, "classifier must have a predict method"),
        ({"batch_size": 0}, ValueError, "batch_size 0"),
        ({"batch_size": 2.5}, TypeError, "batch_size must be an int"),
        ({"batch_size": True}, TypeError, "batch_size must be an int"),
        ({"wait_ms": -1}, ValueError, "wait_ms -1"),
        ({"wait_ms": math.inf}, ValueError, "wait_ms inf"),
        ({"wait_ms": "5"}, TypeError, "wait_ms must be a number"),
        ({"name": 3}, TypeError, "name must be a str"),
    ],
)
def test_constructor_checks_its_arguments(kwargs, error, match):
    arguments = {"classifier": FakeClassifier(), "batch_size": 4, "wait_ms": 1.0, **kwargs}
    with pytest.raises(error, match=match):
        MicroBatcher(arguments.pop("classifier"), **arguments)


def test_submit_checks_its_images(batcher_factory):
    batcher = batcher_factory(FakeClassifier())
    with pytest.raises(TypeError, match="images must be a numpy array, not list"):
        batcher.submit([[1, 2]])
    with pytest.raises(ValueError, match=r"images of shape \(0, 4, 4\) hold no image"):
        batcher.submit(np.zeros((0, 4, 4), dtype=np.uint8))


def test_concurrent_submitters_get_exactly_their_own_rows(batcher_factory):
    classifier = FakeClassifier(delay=0.002)
    batcher = batcher_factory(classifier, batch_size=8, wait_ms=2.0)
    rng = np.random.default_rng(0)
    requests = [rng.integers(0, POISON, size=(int(rng.integers(1, 4)), 4, 4), dtype=np.uint8) for _ in range(200)]

    with ThreadPoolExecutor(max_workers=16) as pool:
        results = list(pool.map(lambda images: batcher.submit(images).result(timeout=30), requests))

    for images, rows in zip(requests, results, strict=True):
        np.testing.assert_array_equal(rows, _expected(images))
    total = sum(len(images) for images in requests)
    assert sum(classifier.sizes) == total == batcher.stats.images
    assert max(classifier.sizes) <= 8 == batcher.batch_size
    assert batcher.stats.largest_batch == max(classifier.sizes)
    assert batcher.stats.batches < len(requests)  # requests did share batches


def test_requests_queued_behind_a_running_batch_share_the_next_one(batcher_factory):
    gate = threading.Event()
    classifier = FakeClassifier(gate=gate)
    batcher, first = _queue_behind_a_running_batch(batcher_factory, classifier, batch_size=8, wait_ms=1.0)
    futures = [batcher.submit(_images(2, 10 * i)) for i in range(3)]  # 6 images from 3 submitters
    gate.set()

    np.testing.assert_array_equal(first.result(timeout=10), _expected(_images(1, 1)))
    for i, future in enumerate(futures):
        np.testing.assert_array_equal(future.result(timeout=10), _expected(_images(2, 10 * i)))
    assert classifier.sizes == [1, 6]
    assert batcher.stats.mean_batch == pytest.approx(3.5)


def test_batches_never_exceed_batch_size_and_big_requests_are_split(batcher_factory):
    gate = threading.Event()
    classifier = FakeClassifier(gate=gate)
    batcher, _ = _queue_behind_a_running_batch(batcher_factory, classifier, batch_size=4, wait_ms=1.0)
    small = batcher.submit(_images(3, 50))
    big = batcher.submit(_images(9, 100))  # larger than a batch: spread over three
    gate.set()

    np.testing.assert_array_equal(small.result(timeout=10), _expected(_images(3, 50)))
    np.testing.assert_array_equal(big.result(timeout=10), _expected(_images(9, 100)))
    assert classifier.sizes == [1, 4, 4, 4]  # oldest first: 3 small + 1 big, then 4 + 4 big


def test_a_lone_submitter_is_served_after_the_wait(batcher_factory):
    classifier = FakeClassifier()
    batcher = batcher_factory(classifier, batch_size=64, wait_ms=50.0)
    start = time.monotonic()
    rows = batcher.predict(_images(2, 7), timeout=10)
    elapsed = time.monotonic() - start

    np.testing.assert_array_equal(rows, _expected(_images(2, 7)))
    assert 0.045 <= elapsed < 5.0  # it waited for company, then ran the partial batch
    assert classifier.sizes == [2]


def test_a_full_batch_does_not_wait_for_the_deadline(batcher_factory):
    batcher = batcher_factory(FakeClassifier(), batch_size=4, wait_ms=60_000.0)
    start = time.monotonic()
    batcher.predict(_images(4, 1), timeout=30)
    assert time.monotonic() - start < 30.0


def test_a_failing_request_fails_only_its_own_future(batcher_factory):
    gate = threading.Event()
    classifier = FakeClassifier(gate=gate)
    batcher, _ = _queue_behind_a_running_batch(batcher_factory, classifier, batch_size=16, wait_ms=1.0)
    good_before = batcher.submit(_images(2, 20))
    bad = batcher.submit(np.array([_images(1, 30)[0], np.full((4, 4), POISON, np.uint8)]))
    good_after = batcher.submit(_images(3, 40))
    gate.set()

    with pytest.raises(ValueError, match="poisoned batch of 2"):
        bad.result(timeout=10)
    np.testing.assert_array_equal(good_before.result(timeout=10), _expected(_images(2, 20)))
    np.testing.assert_array_equal(good_after.result(timeout=10), _expected(_images(3, 40)))
    assert classifier.sizes == [1, 7, 2, 2, 3]  # the shared batch failed; each request then ran alone
    assert batcher.stats.failed_batches == 2


def test_a_lone_failing_request_gets_the_error_and_the_batcher_goes_on(batcher_factory):
    batcher = batcher_factory(FakeClassifier(), wait_ms=0.0)
    with pytest.raises(ValueError, match="poisoned batch of 1"):
        batcher.predict(np.full((1, 4, 4), POISON, np.uint8), timeout=10)
    np.testing.assert_array_equal(batcher.predict(_images(1, 3), timeout=10), _expected(_images(1, 3)))


def test_a_failing_split_request_fails_once_and_drops_its_other_parts(batcher_factory):
    gate = threading.Event()
    classifier = FakeClassifier(gate=gate)
    batcher, _ = _queue_behind_a_running_batch(batcher_factory, classifier, batch_size=2, wait_ms=1.0)
    images = _images(6, 60)
    images[0] = POISON
    bad = batcher.submit(images)
    good = batcher.submit(_images(1, 90))
    gate.set()

    with pytest.raises(ValueError, match="poisoned"):
        bad.result(timeout=10)
    np.testing.assert_array_equal(good.result(timeout=10), _expected(_images(1, 90)))
    assert classifier.sizes == [1, 2, 1]  # the bad request's other four images never ran


def test_images_of_different_shapes_never_share_a_batch(batcher_factory):
    gate = threading.Event()
    classifier = FakeClassifier(gate=gate)
    batcher, _ = _queue_behind_a_running_batch(batcher_factory, classifier, batch_size=16, wait_ms=1.0)
    square4 = batcher.submit(_images(2, 1, size=4))
    square6 = batcher.submit(_images(1, 2, size=6))
    more4 = batcher.submit(_images(1, 3, size=4))
    gate.set()

    np.testing.assert_array_equal(square4.result(timeout=10), _expected(_images(2, 1, size=4)))
    np.testing.assert_array_equal(square6.result(timeout=10), _expected(_images(1, 2, size=6)))
    np.testing.assert_array_equal(more4.result(timeout=10), _expected(_images(1, 3, size=4)))
    assert classifier.batches[1:] == [((4, 4), 3), ((6, 6), 1)]


def test_a_wrong_number_of_rows_is_an_error_for_the_submitter(batcher_factory):
    class Short:
        def predict(self, images):
            return np.zeros((len(images) - 1, 2))

    batcher = batcher_factory(Short(), wait_ms=0.0)
    with pytest.raises(ValueError, match=r"returned \(1, 2\) for 2 images"):
        batcher.predict(_images(2, 1), timeout=10)


def test_a_cancelled_request_is_skipped(batcher_factory):
    gate = threading.Event()
    classifier = FakeClassifier(gate=gate)
    batcher, _ = _queue_behind_a_running_batch(batcher_factory, classifier, batch_size=16, wait_ms=1.0)
    cancelled = batcher.submit(_images(5, 1))
    kept = batcher.submit(_images(2, 9))
    assert cancelled.cancel()
    gate.set()

    np.testing.assert_array_equal(kept.result(timeout=10), _expected(_images(2, 9)))
    assert classifier.sizes == [1, 2]


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_failure_of_the_thread_itself_fails_every_request_it_holds(batcher_factory, monkeypatch):
    gate = threading.Event()
    classifier = FakeClassifier(gate=gate)
    batcher, running = _queue_behind_a_running_batch(batcher_factory, classifier, batch_size=16, wait_ms=1.0)
    waiting = batcher.submit(_images(2, 7))

    def broken_delivery(piece, rows):
        raise RuntimeError("a bug after predict")

    monkeypatch.setattr(batcher, "_deliver", broken_delivery)
    gate.set()
    for future in (running, waiting):  # the batch that was running, and the one waiting behind it
        with pytest.raises(BatcherClosedError, match="stopped: RuntimeError"):
            future.result(timeout=10)
    assert batcher.closed
    with pytest.raises(BatcherClosedError, match="takes no more images"):
        batcher.submit(_images(1, 1))


def test_close_runs_what_is_pending_then_refuses_new_images():
    classifier = FakeClassifier()
    batcher = MicroBatcher(classifier, batch_size=64, wait_ms=60_000.0)
    pending = batcher.submit(_images(3, 5))
    batcher.close(timeout=10)

    np.testing.assert_array_equal(pending.result(timeout=0), _expected(_images(3, 5)))
    assert batcher.closed
    with pytest.raises(BatcherClosedError, match="takes no more images"):
        batcher.submit(_images(1, 1))
    batcher.close()  # twice is harmless


def test_context_manager_closes_the_thread():
    with MicroBatcher(FakeClassifier(), batch_size=2, wait_ms=0.0, name="test-batcher") as batcher:
        assert batcher.predict(_images(1, 4), timeout=10).shape == (1, 2)
        assert any(thread.name == "test-batcher" for thread in threading.enumerate())
    assert batcher.closed
    assert not any(thread.name == "test-batcher" for thread in threading.enumerate())


def test_real_classifier_through_the_batcher_matches_direct_predictions(tiny_card_path, batcher_factory):
    from predraft.models.factory import load_classifier

    classifier = load_classifier(tiny_card_path)
    batcher = batcher_factory(classifier, batch_size=4, wait_ms=5.0)
    rng = np.random.default_rng(3)
    requests = [rng.integers(0, 256, size=(n, 64, 64), dtype=np.uint8) for n in (1, 2, 1, 3)]
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda images: batcher.predict(images, timeout=60), requests))
    for images, rows in zip(requests, results, strict=True):
        np.testing.assert_allclose(rows, classifier.predict(images), atol=1e-5)


def test_classify_workers_share_one_classifier_and_batcher(tiny_card_path, clean_settings_env, monkeypatch):
    from predraft.core.settings import get_settings
    from predraft.workers import tasks

    loads = []
    real_load = tasks.load_classifier

    def counting_load(*args, **kwargs):
        loads.append(args)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(tasks, "load_classifier", counting_load)
    monkeypatch.setattr(tasks, "_models", {})
    settings = get_settings(model=tiny_card_path, classify_batch_size=4, classify_batch_wait_ms=1.0)
    with ThreadPoolExecutor(max_workers=4) as pool:
        pairs = list(pool.map(lambda _: tasks._classifier_and_batcher(settings, tiny_card_path), range(8)))
    classifier, batcher = pairs[0]
    assert all(pair[0] is classifier and pair[1] is batcher for pair in pairs)
    assert len(loads) == 1
    assert (batcher.batch_size, batcher.wait_ms, classifier.card.input_size) == (4, 1.0, 64)

    batcher.close()  # a stopped batcher is replaced, with its classifier
    _, replacement = tasks._classifier_and_batcher(settings, tiny_card_path)
    assert replacement is not batcher and not replacement.closed and len(loads) == 2
    replacement.close()
