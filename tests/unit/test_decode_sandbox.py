"""predraft.workers.sandbox and the bounded prepare: a decoder that panics, hangs, allocates without end or dies costs
its own instance only, never the worker (issue 14, item 1)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
from sqlalchemy import select

from predraft.core.db import session_scope
from predraft.core.metrics import DECODE_FAILURES
from predraft.core.schema import Event, Instance
from predraft.core.states import InstanceState
from predraft.models.pixels import decode
from predraft.models.prepare import OutOfScopeError, prepare_file
from predraft.workers import tasks
from predraft.workers.app import CLASSIFY
from predraft.workers.prepare import prepare_bounded
from predraft.workers.sandbox import DecodeFailure, FailureReason, Sandbox, SandboxStartError, close_all, thread_sandbox
from tests import hostile_decoders as hostile
from tests.conftest import record_file
from tests.inprocess import RecordingCelery

RLE_LOSSLESS = "1.2.840.10008.1.2.5"
MiB = 1024 * 1024


@pytest.fixture
def panicking_rle(real_path, tmp_path) -> Path:
    return hostile.corrupt_rle(real_path("RG2_RLE.dcm"), tmp_path / "corrupt_rle.dcm")


@pytest.fixture
def sandbox():
    box = Sandbox(timeout_seconds=60, memory_bytes=3 * 1024 * MiB)
    yield box
    box.close()


def _failure(box: Sandbox, function, *args) -> DecodeFailure:
    with pytest.raises(DecodeFailure) as info:
        box.call(function, *args)
    return info.value


@pytest.mark.timeout(60)
def test_the_corrupt_rle_stream_panics_in_process_past_except_exception(panicking_rle):
    with pytest.raises(BaseException, match="index out of bounds") as info:
        decode(pydicom.dcmread(panicking_rle))
    assert not isinstance(info.value, Exception)
    assert type(info.value).__name__ == "PanicException"


@pytest.mark.timeout(60)
def test_bounded_prepare_reports_the_panic_and_the_same_child_prepares_the_next_image(
    panicking_rle, real_path, sandbox
):
    with pytest.raises(DecodeFailure, match="PanicException: index out of bounds") as info:
        prepare_bounded(panicking_rle, input_size=64, sandbox=sandbox)
    assert info.value.reason is FailureReason.ERROR
    pid = sandbox.pid

    labels, hips, *_ = prepare_bounded(real_path("RG2_UNC.dcm"), input_size=64, sandbox=sandbox)
    assert sandbox.pid == pid  # a panic is caught in the child: no restart
    expected_labels, expected_hips, *_ = prepare_file(real_path("RG2_UNC.dcm"), input_size=64)
    assert labels == expected_labels
    assert [(h.side, h.view, h.metal) for h in hips] == [(h.side, h.view, h.metal) for h in expected_hips]
    assert all(np.array_equal(a.pixels, b.pixels) for a, b in zip(hips, expected_hips, strict=True))


def test_out_of_scope_and_undecodable_images_keep_their_errors(real_path, sandbox):
    with pytest.raises(OutOfScopeError, match="body part CHEST is not a hip or pelvis"):  # the gate never overrules
        prepare_bounded(real_path("RG1_UNCR.dcm"), input_size=64, sandbox=sandbox)
    with pytest.raises(DecodeFailure, match="PixelDataError: .*could not be decoded") as info:
        prepare_bounded(real_path("RG2_JPLY.dcm"), input_size=64, sandbox=sandbox)
    assert info.value.reason is FailureReason.ERROR and info.value.error_type == "PixelDataError"


@pytest.mark.timeout(60)
def test_a_hanging_decoder_times_out_within_its_bound_and_the_next_call_gets_a_fresh_child():
    with Sandbox(timeout_seconds=1.0, memory_bytes=1024 * MiB) as box:
        first = box.call(hostile.child_pid)
        started = time.monotonic()
        failure = _failure(box, hostile.hang)
        elapsed = time.monotonic() - started
        assert failure.reason is FailureReason.TIMEOUT
        assert str(failure) == "timeout: the decode ran longer than 1 s"
        assert 1.0 <= elapsed < 5.0
        assert not _alive(first)  # killed, not left running
        assert box.call(hostile.echo, 42) == 42
        assert box.call(hostile.child_pid) != first


@pytest.mark.timeout(60)
def test_a_decoder_allocating_without_end_fails_on_the_memory_bound_and_the_child_goes_on():
    with Sandbox(timeout_seconds=30, memory_bytes=512 * MiB) as box:
        pid = box.call(hostile.child_pid)
        failure = _failure(box, hostile.allocate_without_end)
        assert failure.reason is FailureReason.MEMORY
        assert failure.error_type == "MemoryError"
        assert box.call(hostile.echo, "next") == "next"
        assert box.call(hostile.child_pid) == pid


@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", ["RG2_RLE.dcm", "RG2_J2KR.dcm"])
def test_a_real_decoder_asked_for_a_huge_frame_fails_on_the_memory_bound(real_path, tmp_path, name):
    ds = pydicom.dcmread(real_path(name))
    ds.Rows = ds.Columns = 40_000  # 3.2 GB of 16-bit pixels, from a few MB of pixel data
    ds.save_as(tmp_path / name)
    with Sandbox(timeout_seconds=30, memory_bytes=1024 * MiB) as box:
        with pytest.raises(DecodeFailure, match="could not be decoded: Unable to allocate") as info:
            prepare_bounded(tmp_path / name, input_size=64, sandbox=box)
        assert info.value.reason is FailureReason.MEMORY
        assert len(prepare_bounded(real_path("RG2_UNC.dcm"), input_size=64, sandbox=box)[1]) == 1


@pytest.mark.timeout(60)
def test_a_dying_decoder_is_a_crash_and_an_aborted_allocation_is_memory():
    with Sandbox(timeout_seconds=30, memory_bytes=1024 * MiB) as box:
        failure = _failure(box, hostile.abort)
        assert failure.reason is FailureReason.CRASH
        assert str(failure) == f"crash: the decoding process died (signal {signal.SIGSEGV.value})"
        assert box.call(hostile.echo, 1) == 1
        assert _failure(box, hostile.abort_out_of_memory).reason is FailureReason.MEMORY
        assert box.call(hostile.echo, 2) == 2


def test_a_base_exception_or_an_unpicklable_exception_crosses_as_plain_data(sandbox):
    failure = _failure(sandbox, hostile.raise_base_exception)
    assert (failure.reason, failure.error_type) == (FailureReason.ERROR, "NotAnException")
    assert failure.detail == "index out of bounds: the len is 7532800 but the index is 7532800"
    failure = _failure(sandbox, hostile.raise_unpicklable)
    assert (failure.reason, failure.error_type, failure.detail) == (
        FailureReason.ERROR,
        "UnpicklableError",
        "decoder refused the stream",
    )
    assert sandbox.call(hostile.echo, [1, 2]) == [1, 2]


def test_nothing_the_child_prints_or_warns_reaches_the_callers_output(sandbox, capfd):
    assert sandbox.call(hostile.write_patient_data_to_stderr) == "done"
    captured = capfd.readouterr()
    assert hostile.SECRET not in captured.out + captured.err


def test_the_child_has_the_memory_bound_and_no_torch(sandbox, real_path):
    import resource

    assert sandbox.call(resource.getrlimit, resource.RLIMIT_AS) == (3 * 1024 * MiB, 3 * 1024 * MiB)
    assert sandbox.call(hostile.loaded_modules, "torch", "predraft.models.prepare") == {
        "torch": False,
        "predraft.models.prepare": False,
    }
    prepare_bounded(real_path("RG2_J2KR.dcm"), input_size=64, sandbox=sandbox)
    assert sandbox.call(hostile.loaded_modules, "torch", "predraft.models.prepare") == {
        "torch": False,
        "predraft.models.prepare": True,
    }


def test_the_childs_malloc_reuses_an_images_buffers_for_the_next_image(sandbox, monkeypatch):
    # Three 15 MB buffers an image (a 2140 x 1760 CR as float32): the child's malloc keeps them for the next image;
    # with glibc's starting thresholds held (128 KiB), each is mapped and faulted in again: at least once per
    # 2 MiB (transparent huge pages), once per 4 KiB page without them.
    reused = sandbox.call(hostile.page_faults_per_image, 15 * MiB, 3)
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", str(128 * 1024))
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", str(128 * 1024))
    with Sandbox(timeout_seconds=60, memory_bytes=3 * 1024 * MiB) as glibc_defaults:
        mapped_anew = glibc_defaults.call(hostile.page_faults_per_image, 15 * MiB, 3)
    assert mapped_anew >= 3 * 7
    assert reused < 0.1 * mapped_anew


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead: only its parent has not reaped it yet
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def _wait_until_dead(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.05)
    return False


@pytest.mark.timeout(60)
def test_a_bound_too_small_for_the_decoders_to_load_is_a_start_error_not_an_images_failure():
    started = Sandbox(timeout_seconds=30, memory_bytes=256 * MiB, preload=("predraft.models.prepare",))
    refused = pytest.raises(SandboxStartError, match="the decode sandbox exited .* under a memory bound of 256 MiB")
    with started as box, refused:
        box.call(hostile.echo, 1)


def test_each_thread_has_its_own_sandbox_until_its_bounds_change_and_close_all_ends_them():
    mine = thread_sandbox(timeout_seconds=30, memory_bytes=1024 * MiB)
    assert thread_sandbox(timeout_seconds=30, memory_bytes=1024 * MiB) is mine
    theirs: list[Sandbox] = []
    thread = threading.Thread(target=lambda: theirs.append(thread_sandbox(timeout_seconds=30, memory_bytes=1024 * MiB)))
    thread.start()
    thread.join()
    assert theirs[0] is not mine
    other = thread_sandbox(timeout_seconds=30, memory_bytes=2048 * MiB)
    assert other is not mine and mine.closed
    pid = other.call(hostile.child_pid)
    close_all()
    assert other.closed and _wait_until_dead(pid, 10)
    with pytest.raises(RuntimeError, match="closed"):
        other.call(hostile.echo, 1)


@pytest.mark.timeout(60)
def test_closing_ends_the_child_and_a_killed_parent_leaves_no_orphan(tmp_path):
    box = Sandbox(timeout_seconds=30, memory_bytes=1024 * MiB)
    pid = box.call(hostile.child_pid)
    box.close()
    assert _wait_until_dead(pid, 10)

    script = textwrap.dedent("""
        import sys, time
        from tests import hostile_decoders
        from predraft.workers.sandbox import Sandbox
        box = Sandbox(timeout_seconds=30, memory_bytes=1024 * 1024 * 1024)
        print(box.call(hostile_decoders.child_pid), flush=True)
        time.sleep(60)
    """)
    parent = subprocess.Popen(
        [sys.executable, "-c", script], cwd=Path(__file__).resolve().parents[2], stdout=subprocess.PIPE, text=True
    )
    try:
        child = int(parent.stdout.readline())
        assert _alive(child)
        parent.send_signal(signal.SIGKILL)
        parent.wait(10)
        assert _wait_until_dead(child, 10), "the sandbox child outlived its killed parent"
    finally:
        parent.kill()
        parent.wait()


def test_every_real_file_prepares_bounded_as_in_process(sandbox):
    real_dir = Path(__file__).resolve().parents[3] / "shared" / "data" / "real"
    files = sorted(real_dir.glob("*.dcm"))
    assert len(files) >= 20, f"the real test set at {real_dir} is missing"
    for path in files:
        assert _outcome(prepare_bounded, path, input_size=64, sandbox=sandbox) == _outcome(
            prepare_file, path, input_size=64
        ), path.name


def _outcome(prepare, *args, **kwargs) -> object:
    """Comparable outcome: the labels and hips, or the error's type name and message."""
    try:
        labels, hips = prepare(*args, **kwargs)
    except DecodeFailure as failure:
        return failure.error_type, failure.detail
    except Exception as exc:  # noqa: BLE001 -- any error of prepare_file is an outcome to compare
        return type(exc).__name__, str(exc)
    return labels, [(h.side, h.view, h.metal, h.pixels.tobytes()) for h in hips]


# --- the prepare task ----------------------------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_the_prepare_task_records_the_panicking_image_as_error_and_prepares_the_rest(
    sqlite_url, panicking_rle, real_path, clean_settings_env, tiny_card_path, tmp_path, monkeypatch
):
    bad, good = record_file(sqlite_url, panicking_rle), record_file(sqlite_url, real_path("RG2_UNC.dcm"))
    for key, value in {
        "PREDRAFT_DATABASE_URL": sqlite_url,
        "PREDRAFT_MODEL": str(tiny_card_path),
        "PREDRAFT_VAR_DIR": str(tmp_path / "var"),
    }.items():
        monkeypatch.setenv(key, value)
    tasks._settings.cache_clear()
    app = RecordingCelery()
    monkeypatch.setattr(tasks.prepare, "app", app)
    panics = DECODE_FAILURES.labels(transfer_syntax=RLE_LOSSLESS, reason="error")
    before = panics._value.get()
    try:
        tasks.prepare.run(bad)  # returns: the panic is this instance's error, not the worker thread's end
        tasks.prepare.run(good)
    finally:
        tasks._settings.cache_clear()

    with session_scope(sqlite_url) as session:
        failed, prepared = session.get(Instance, bad), session.get(Instance, good)
        assert failed.state == InstanceState.ERROR
        assert failed.error.startswith(
            f"could not be prepared (error) in transfer syntax {RLE_LOSSLESS}: PanicException: index out of bounds"
        )
        assert prepared.state == InstanceState.PREPARED
        kinds = session.scalars(select(Event.kind).where(Event.instance_id == bad)).all()
        assert "error" in kinds
    assert [name for name, _ in app.sent] == [CLASSIFY]
    assert app.sent[0][1][0] == good
    assert panics._value.get() == before + 1


def test_a_transfer_syntax_pydicom_does_not_know_counts_as_other() -> None:
    """The metric's label comes from what a sender wrote: a UID that names no transfer syntax makes no series."""
    failure = DecodeFailure(FailureReason.ERROR, "the decoder refused it", "ValueError")
    other = DECODE_FAILURES.labels(transfer_syntax="other", reason="error")
    rle = DECODE_FAILURES.labels(transfer_syntax=RLE_LOSSLESS, reason="error")
    before_other, before_rle = other._value.get(), rle._value.get()
    tasks._decode_failure_error(1, "1.2.826.0.1.3680043.99.1", failure)
    tasks._decode_failure_error(2, RLE_LOSSLESS, failure)
    assert (other._value.get(), rle._value.get()) == (before_other + 1, before_rle + 1)
    sampled = {sample.labels["transfer_syntax"] for metric in DECODE_FAILURES.collect() for sample in metric.samples}
    assert "1.2.826.0.1.3680043.99.1" not in sampled
