"""A reusable child process that runs one function call at a time, bounded in time and memory.

Pixel decoders are native code (Rust, C, C++): on a hostile or corrupt stream one can panic with a
BaseException (pyo3's PanicException), abort, crash, loop for ever or allocate without end. Run through
a Sandbox, any of these ends as a DecodeFailure of that call, with a reason (error, crash, timeout,
memory), and the caller goes on: a crashed or timed-out child is killed and the next call starts a
fresh one; a child whose call merely raised is kept.

The child is a fresh interpreter (never a fork of a worker that holds threads and torch), started
lazily and kept for the next calls: it imports only what its calls need. Its address space is bounded
with RLIMIT_AS. Its stdout and stderr go to a private file, truncated before each call, read only to
tell an allocation failure from another crash: nothing it prints (pydicom quotes values, patient data,
in its warnings) reaches the worker's log. It dies with the thread that started it (PR_SET_PDEATHSIG),
so a killed worker leaves no orphan, and ends when its request pipe closes.

Exceptions cross the process boundary as plain data (their type's name and message), never pickled.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import json
import logging
import os
import pickle
import resource
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterable
from enum import StrEnum
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

from predraft.core.library_text import quieten_value_quoting_libraries

MiB = 1024 * 1024
#: Longest a fresh child may take to import its preloaded modules and say it is ready.
STARTUP_TIMEOUT_SECONDS = 60.0
#: Longest a closing child may take to leave on its own before it is killed.
CLOSE_TIMEOUT_SECONDS = 2.0
#: Longest an exception's message that crosses back (the rest is cut).
MAX_MESSAGE_CHARS = 2000
#: Bytes at the end of a crashed child's output searched for the sign of an allocation failure.
CRASH_OUTPUT_TAIL_BYTES = 8192
#: What native runtimes print when an allocation fails before they abort (Rust, C++, glibc).
ALLOCATION_FAILURE_SIGNS = (
    b"memory allocation of",
    b"std::bad_alloc",
    b"Cannot allocate memory",
    b"out of memory",
    b"MemoryError",
    b"failed to map segment",
)
#: Linux prctl option: the signal the child gets when the thread that started it ends.
PR_SET_PDEATHSIG = 1
#: The child's environment (a variable the worker's own environment sets wins):
#:
#: - one thread for every numeric library, and two malloc arenas: RLIMIT_AS counts reserved address space, and
#:   on a many-core host glibc's per-thread arenas (64 MiB each) and OpenCV's thread pool would take the bound;
#: - glibc's malloc takes blocks of up to 32 MiB (its most) from its heap instead of fresh mappings, and keeps up
#:   to 64 MiB freed at the top of the heap instead of handing it back: an image's buffers (15 MB as float32 for
#:   a 2140 x 1760 CR) are reused from one image to the next instead of mapped and faulted in anew each time,
#:   which cost such a CR about 8 of its 23 ms of preparation, gate inputs included (2026-12-08, this 2-core
#:   machine, alternated, medians of 41: 13.5-17.2 against 23.1-24.7 ms; a small image is unchanged). Setting
#:   them also stops glibc's sliding thresholds; the child keeps up to 64 MiB it no longer uses.
CHILD_ENVIRONMENT = {
    "OPENBLAS_NUM_THREADS": "1",
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "MALLOC_ARENA_MAX": "2",
    "MALLOC_MMAP_THRESHOLD_": str(32 * 1024 * 1024),
    "MALLOC_TRIM_THRESHOLD_": str(64 * 1024 * 1024),
    "OPENCV_FOR_THREADS_NUM": "1",
}

_OK, _RAISED, _READY = "ok", "raised", "ready"

_T = TypeVar("_T")


class FailureReason(StrEnum):
    """Why a sandboxed call failed (the label values of predraft.core.metrics.DECODE_FAILURES)."""

    ERROR = "error"  # the call raised: the decoder refused the data (a Rust panic included)
    CRASH = "crash"  # the child died: abort, segmentation fault, killed
    TIMEOUT = "timeout"  # the call ran past the time bound; the child was killed
    MEMORY = "memory"  # the call ran out of its memory bound


class DecodeFailure(Exception):
    """A sandboxed call that did not return: its reason, the name of the exception raised in the child
    (empty when none was: crash, timeout) and that exception's message or a description of the failure."""

    def __init__(self, reason: FailureReason, detail: str, error_type: str = "") -> None:
        super().__init__(reason, detail, error_type)
        self.reason, self.detail, self.error_type = FailureReason(reason), detail, error_type

    @property
    def cause(self) -> str:
        """The exception's type and message, or the description of a failure that raised none."""
        return f"{self.error_type}: {self.detail}" if self.error_type else self.detail

    def __str__(self) -> str:
        return f"{self.reason.value}: {self.cause}"


class SandboxStartError(RuntimeError):
    """A new child did not start: the bounds leave its interpreter and imports no room, or the system none."""


class Sandbox:
    """One child process that runs module-level functions for its caller, one call at a time.

    ``call`` returns the function's result (pickled back) or raises DecodeFailure; it is thread-safe
    (calls are serialised). ``preload`` names modules the child imports before its first call.
    """

    def __init__(self, *, timeout_seconds: float, memory_bytes: int, preload: Iterable[str] = ()) -> None:
        self.timeout_seconds, self.memory_bytes, self.preload = (
            float(timeout_seconds),
            int(memory_bytes),
            tuple(preload),
        )
        self._lock = threading.Lock()
        self._process: subprocess.Popen[bytes] | None = None
        self._requests: Connection | None = None
        self._replies: Connection | None = None
        self._output: BinaryIO | None = None  # the child's output file, read back after a crash
        self.closed = False
        self.owner_pid = os.getpid()  # a forked copy of this object in another process must leave the child alone
        _register(self)

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    @property
    def pid(self) -> int | None:
        """The running child's process id, or None before the first call and after a failure that ended it."""
        return self._process.pid if self._process is not None and self._process.poll() is None else None

    def call(self, function: Callable[..., _T], /, *args: Any, **kwargs: Any) -> _T:
        """``function(*args, **kwargs)`` in the child. ``function`` must be importable by module and name,
        and its arguments and result picklable. Raises DecodeFailure when the call does not return."""
        with self._lock:
            if self.closed:
                raise RuntimeError("the sandbox is closed")
            self._send((function, args, kwargs))
            assert self._replies is not None  # _send leaves a started child and its pipes
            if not self._replies.poll(self.timeout_seconds):
                self._discard()
                raise DecodeFailure(FailureReason.TIMEOUT, f"the decode ran longer than {self.timeout_seconds:g} s")
            try:
                reply = self._replies.recv_bytes()
            except (EOFError, OSError):
                raise self._crash_failure() from None
            return _result(pickle.loads(reply), self.memory_bytes)  # noqa: S301 - from its own child, on a private pipe

    def close(self) -> None:
        """End the child (asked first, then killed) and close its output file; later calls raise."""
        with self._lock:
            self.closed = True
            if self._requests is not None:
                self._requests.close()  # the child's next read ends in EOF: it leaves
                self._requests = None
            if self._process is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self._process.wait(CLOSE_TIMEOUT_SECONDS)
            self._discard()
        _unregister(self)

    # --- the parent's side ---------------------------------------------------------------------------------

    def _send(self, request: tuple[object, ...]) -> None:
        """Send ``request`` to a running child, starting one when there is none or it died while idle."""
        if self._process is None or self._process.poll() is not None:
            self._discard()
            self._start()
        assert self._requests is not None  # a running child has its request pipe
        try:
            self._requests.send(request)
        except (BrokenPipeError, ConnectionResetError):  # it died between the check and the send
            self._discard()
            self._start()
            assert self._requests is not None  # set by _start
            self._requests.send(request)

    def _start(self) -> None:
        """Start a child and wait until it is ready (its preloaded modules imported)."""
        request_read, request_write = os.pipe()
        reply_read, reply_write = os.pipe()
        handle, output = tempfile.mkstemp(prefix="predraft-sandbox-", suffix=".out")
        os.close(handle)
        self._output = open(output, "rb")  # noqa: SIM115 -- kept open until the child is discarded
        paths = [str(Path(entry or ".").resolve()) for entry in sys.path]
        argv = [
            sys.executable,
            "-c",
            _CHILD_BOOTSTRAP,
            json.dumps(paths),
            str(request_read),
            str(reply_write),
            str(self.memory_bytes),
            json.dumps(self.preload),
            str(os.getpid()),
        ]
        environment = {**os.environ, **{key: os.environ.get(key, value) for key, value in CHILD_ENVIRONMENT.items()}}
        try:
            with open(output, "ab") as sink:  # append mode: writes follow the child's truncations
                self._process = subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=sink,
                    stderr=sink,
                    pass_fds=(request_read, reply_write),
                    env=environment,
                    start_new_session=True,
                )
        except BaseException:
            os.close(request_write)
            os.close(reply_read)
            self._discard()  # closes the output file
            raise
        finally:
            os.close(request_read)
            os.close(reply_write)
            os.unlink(output)  # open in both processes, named in none: nothing is left behind, even after a kill
        self._requests = Connection(request_write, readable=False)
        self._replies = Connection(reply_read, writable=False)
        self._await_ready()

    def _await_ready(self) -> None:
        """Wait for the new child's ready message. A child that dies or stalls first (its imports do not fit
        the memory bound, say) raises SandboxStartError: that is the configuration's fault, not an image's."""
        assert self._replies is not None  # set by _start before it waits
        if self._replies.poll(STARTUP_TIMEOUT_SECONDS):
            try:
                self._replies.recv()
                return
            except (EOFError, OSError):
                how, _ = self._ended()
        else:
            how = f"did not start within {STARTUP_TIMEOUT_SECONDS:g} s"
        self._discard()
        raise SandboxStartError(
            f"the decode sandbox {how} under a memory bound of {self.memory_bytes // MiB} MiB (decode_memory_bytes)"
        )

    def _crash_failure(self) -> DecodeFailure:
        """The failure of a child that died: its exit status, and memory when its output says so."""
        how, out_of_memory = self._ended()
        self._discard()
        if out_of_memory:
            return DecodeFailure(
                FailureReason.MEMORY,
                f"the decoding process {how} on an allocation failure (bound {self.memory_bytes // MiB} MiB)",
            )
        return DecodeFailure(FailureReason.CRASH, f"the decoding process {how}")

    def _ended(self) -> tuple[str, bool]:
        """How the child that closed its pipe ended ("died (signal 11)", "exited (1)"), and whether its
        output shows an allocation failure."""
        assert self._process is not None  # called only for a started child, before it is discarded
        try:
            status = self._process.wait(CLOSE_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:  # closed its pipe but lives on (it is killed by _discard)
            status = None
        how = "left" if status is None else (f"died (signal {-status})" if status < 0 else f"exited ({status})")
        tail = _tail(self._output)
        return how, any(sign in tail for sign in ALLOCATION_FAILURE_SIGNS)

    def _discard(self) -> None:
        """Kill the child (and its process group) if it runs, close the pipes and the output file."""
        if self._process is not None:
            if self._process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self._process.pid, signal.SIGKILL)
            self._process.wait()
            self._process = None
        for connection in (self._requests, self._replies):
            if connection is not None:
                connection.close()
        self._requests = self._replies = None
        if self._output is not None:
            self._output.close()
            self._output = None


def _result(reply: tuple[Any, ...], memory_bytes: int) -> Any:
    """The value of an "ok" reply; a DecodeFailure raised for a "raised" one."""
    if reply[0] == _OK:
        return reply[1]
    _, error_type, message, out_of_memory = reply
    if out_of_memory:
        raise DecodeFailure(
            FailureReason.MEMORY, message or f"the decode needed more than its {memory_bytes // MiB} MiB", error_type
        )
    raise DecodeFailure(FailureReason.ERROR, message, error_type)


def _tail(output: BinaryIO | None) -> bytes:
    """The last CRASH_OUTPUT_TAIL_BYTES the child wrote."""
    if output is None:
        return b""
    try:
        output.seek(max(0, output.seek(0, os.SEEK_END) - CRASH_OUTPUT_TAIL_BYTES))
        return output.read()
    except OSError:
        return b""


# --- one sandbox per thread, all closed when the process ends -----------------------------------------------

#: Every open sandbox of the process, held until closed (a worker thread's ends with the thread's locals).
_sandboxes: set[Sandbox] = set()
_sandboxes_lock = threading.Lock()
_local = threading.local()


def _register(sandbox: Sandbox) -> None:
    with _sandboxes_lock:
        _sandboxes.add(sandbox)


def _unregister(sandbox: Sandbox) -> None:
    with _sandboxes_lock:
        _sandboxes.discard(sandbox)


def thread_sandbox(*, timeout_seconds: float, memory_bytes: int, preload: Iterable[str] = ()) -> Sandbox:
    """The calling thread's sandbox with these bounds, made on first use (a closed one, or one of other
    bounds, is replaced). Each worker thread has its own child, so one slow decode delays no other."""
    sandbox: Sandbox | None = getattr(_local, "sandbox", None)
    wanted = (float(timeout_seconds), int(memory_bytes), tuple(preload))
    if sandbox is None or sandbox.owner_pid != os.getpid():  # none yet, or inherited through a fork
        sandbox = None
    elif sandbox.closed or (sandbox.timeout_seconds, sandbox.memory_bytes, sandbox.preload) != wanted:
        sandbox.close()
        sandbox = None
    if sandbox is None:
        sandbox = _local.sandbox = Sandbox(timeout_seconds=timeout_seconds, memory_bytes=memory_bytes, preload=preload)
    return sandbox


def close_all(**_signal_kwargs: object) -> None:
    """Close every sandbox of this process (at exit, and on Celery's worker shutdown signals); copies
    inherited through a fork belong to the parent and are left alone."""
    with _sandboxes_lock:
        sandboxes = [sandbox for sandbox in _sandboxes if sandbox.owner_pid == os.getpid()]
    for sandbox in sandboxes:
        sandbox.close()


atexit.register(close_all)


# --- the child's side ---------------------------------------------------------------------------------------

#: The child's whole command: the parent's import path, then child_main with the remaining arguments.
_CHILD_BOOTSTRAP = (
    "import json, sys; sys.path[:] = json.loads(sys.argv[1]); "
    "from predraft.workers.sandbox import child_main; child_main(sys.argv[2:])"
)


def child_main(argv: list[str]) -> None:
    """The child: bound itself, import ``preload``, say it is ready, then serve calls until EOF."""
    request_fd, reply_fd, memory_bytes, preload, parent_pid = argv
    _die_with_parent(int(parent_pid))
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C meant for the worker is the worker's to handle
    _quieten()
    _bound_memory(int(memory_bytes))
    requests, replies = Connection(int(request_fd), writable=False), Connection(int(reply_fd), readable=False)
    for module in json.loads(preload):
        __import__(module)
    replies.send((_READY, os.getpid()))
    while True:
        try:
            request = requests.recv()
        except (EOFError, OSError):  # the parent closed the sandbox, or is gone
            return
        except BaseException as exc:  # noqa: BLE001 -- an unpicklable request (its function not importable)
            replies.send_bytes(pickle.dumps(_raised(exc)))
            continue
        _truncate_output()
        replies.send_bytes(_serve(request))


def _serve(request: tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]) -> bytes:
    """Run one request; its pickled reply. Any exception, BaseException included, becomes plain data."""
    function, args, kwargs = request
    try:
        reply: tuple[Any, ...] = (_OK, function(*args, **kwargs))
    except BaseException as exc:  # noqa: BLE001 -- a decoder's panic is a BaseException; it ends this call only
        reply = _raised(exc)
    try:  # pickled here, so that a result that cannot be pickled fails this call, not the parent's read
        return pickle.dumps(reply)
    except BaseException as exc:  # noqa: BLE001
        return pickle.dumps(
            (
                _RAISED,
                type(exc).__name__,
                f"the result could not be returned: {_message(exc)}",
                isinstance(exc, MemoryError),
            )
        )


def _raised(exc: BaseException) -> tuple[str, str, str, bool]:
    """The plain-data reply of an exception (any MemoryError, numpy's included, is named MemoryError), and
    whether it, or an exception it was raised from, is a MemoryError (decoders wrap theirs)."""
    if isinstance(exc, MemoryError):
        return _RAISED, MemoryError.__name__, _message(exc), True
    return _RAISED, type(exc).__name__, _message(exc), _caused_by_memory(exc)


def _caused_by_memory(exc: BaseException) -> bool:
    """Whether a MemoryError is in ``exc``'s chain of causes and contexts."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, MemoryError):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


def _message(exc: BaseException) -> str:
    try:
        return str(exc)[:MAX_MESSAGE_CHARS]
    except BaseException:  # noqa: BLE001 -- an exception whose __str__ fails
        return f"{type(exc).__name__} (message unreadable)"


def _die_with_parent(parent_pid: int) -> None:
    """SIGKILL when the thread that started this process ends (Linux); leave if the parent is gone already."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent_pid:
        os._exit(0)


def _quieten() -> None:
    """Log warnings and errors only, with every predraft process's hygiene: no library warning carries a value
    (patient data) into the output (:func:`predraft.core.library_text.quieten_value_quoting_libraries`)."""
    logging.basicConfig(level=logging.WARNING, force=True)
    quieten_value_quoting_libraries()


def _bound_memory(memory_bytes: int) -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = memory_bytes if hard == resource.RLIM_INFINITY else min(memory_bytes, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def _truncate_output() -> None:
    """Empty the output file (stdout and stderr share it), so that a crash's tail is this call's own."""
    with contextlib.suppress(OSError):
        os.ftruncate(2, 0)
