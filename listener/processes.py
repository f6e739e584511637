"""Several DIMSE listener processes on one port, and the supervisor that runs them (``predraft listen``).

``dimse_processes`` listener processes (0: one per usable core, at most MAX_LISTENER_PROCESSES) serve the
DIMSE port together. How, and why so:

- **One listening socket, shared; the least busy process accepts.** The supervisor binds (host, port); every
  listener process is given that socket, listens on it once it serves (so the port opens only when one does)
  and accepts from it. When a connection waits, the process with the fewest connections open takes it
  (:class:`predraft.listener.connections.AcceptTurns`): four associations arriving together are held two and
  two by two processes. (Each process binding its own socket with SO_REUSEPORT, the first way, let the kernel
  deal connections by a hash of their ports: half the time three of four went to one process, whose one core
  then did three quarters of the work, 15 to 35 % slower than two and two for small instances over four
  associations; and connections queued on a process that died were reset.) No
  process hands sockets to another (SCM_RIGHTS): a SIGKILLed process loses only the connections it held
  (their unanswered C-STOREs, which the sender sends again), the socket stays open in the others, and they
  keep accepting. Each process applies the same allow-lists, TLS, bounds and durable receiving: it runs
  :func:`predraft.listener.dimse.start_dimse_server` with the very same settings.
- **Limits across processes.** max_associations holds for all processes together: their slots are counted in
  one shared file under an ``flock`` (:class:`predraft.listener.connections.SharedSlots`), which the kernel
  releases when a holder dies; the slots a dead process held are given back before it is started again. The
  per-address connection bound stays per process (see :class:`predraft.listener.connections.ConnectionTable`).
- **One code path.** The supervisor (this process) never serves DIMSE itself: with ``dimse_processes=1`` it
  runs one listener process, as it runs eight.
- **What runs once, in the supervisor.** Deleting the partial files that dead writers left (at start-up
  before any listener process starts, and after one dies; a file is deleted only when the process named in
  it is gone, so a sibling's file being received is never touched, and a restarted process never deletes
  anything); the study-stability check, the sweeper and retention (``predraft listen`` starts
  :class:`predraft.workers.stability.StabilityMonitor` here, never in a listener process); the metrics
  endpoint, which sums the processes' metrics (prometheus-client's multiprocess mode, one port: see
  :mod:`predraft.core.metrics`).
- **Supervision.** A listener process that dies, however it dies, is started again under the same index,
  after RESTART_FIRST_DELAY_SECONDS, doubling up to RESTART_MAX_DELAY_SECONDS while it keeps dying sooner than
  STABLE_SECONDS after its start. SIGINT or SIGTERM stops them all (SIGTERM to each, SIGKILL after
  STOP_TIMEOUT_SECONDS). The listener processes ignore SIGINT (a Ctrl-C reaches the supervisor, which stops
  them in order) and get SIGTERM when the supervisor dies, however it dies (PR_SET_PDEATHSIG).
- **Spawned, not forked.** By the time a listener process is restarted the supervisor runs threads (the
  metrics server, the stability monitor); a fork copies whatever lock one of them holds. A spawned process
  imports afresh (about a second) and is given the supervisor's validated settings.
- **One supervisor per port.** The supervisor holds an abstract Unix socket named after the address, so a
  second one on this machine refuses to start with a clear message (its bind would fail anyway).
"""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.connection
import os
import shutil
import signal
import socket
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.context import SpawnProcess
from multiprocessing.synchronize import Event as ProcessEvent
from pathlib import Path

from predraft.core.settings import MAX_LISTENER_PROCESSES, Settings
from predraft.listener.connections import AcceptTurns, SharedSlots
from predraft.listener.spool import Spool

log = logging.getLogger(__name__)

RESTART_FIRST_DELAY_SECONDS = 0.5
RESTART_MAX_DELAY_SECONDS = 30.0
#: A listener process that ran this long before it died is restarted after the first delay again.
STABLE_SECONDS = 60.0
STOP_TIMEOUT_SECONDS = 20.0
#: How long the first start of every listener process may take (a spawned interpreter imports pynetdicom,
#: pydicom and SQLAlchemy, on a loaded machine).
START_TIMEOUT_SECONDS = 120.0
#: The supervisor's poll of its listener processes and of the stop request.
POLL_SECONDS = 0.5
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


class ListenerStartError(RuntimeError):
    """The listener processes could not be started (the port taken, a process that died at once)."""


@dataclass(frozen=True)
class ProcessPlan:
    """What every listener process is given: the supervisor's settings and shared files."""

    settings: Settings
    slots_path: Path
    supervisor_pid: int
    #: The listening socket every listener process accepts from (passed to a spawned process by multiprocessing).
    listening: socket.socket
    #: How many listener processes share it.
    processes: int


def run_listener_process(plan: ProcessPlan, index: int, ready: ProcessEvent) -> None:
    """The body of listener process ``index``: serve DIMSE (the shared socket, shared slots) until SIGTERM."""
    from predraft.core.bootstrap import configure_logging, die_with_parent
    from predraft.listener.dimse import start_dimse_server

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C is the supervisor's to handle
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda _signum, _frame: stop.set())
    die_with_supervisor = die_with_parent(plan.supervisor_pid)
    if die_with_supervisor is not None:
        die_with_supervisor()
    settings = plan.settings
    configure_logging(settings)
    # C-STOREs are received into files (predraft.listener.dimse) on the spool's file system, in a folder of
    # this process, so that a finished instance is renamed into the spool rather than copied.
    tempfile.tempdir = str(Spool(settings.spool_dir).receiving_dir())
    slots = SharedSlots.attach(plan.slots_path, index)
    plan.listening.setblocking(False)  # a connection a sibling took leaves nothing to accept: no wait for the next
    turns = AcceptTurns(slots, plan.processes) if plan.processes > 1 else None
    server = start_dimse_server(
        settings, slots=slots, listening=plan.listening, turns=turns, remove_stale_partials=False
    )
    log.info("listener process %d (pid %d) serving %s:%d", index, os.getpid(), *server.server_address[:2])
    ready.set()
    while not stop.wait(POLL_SECONDS):
        pass
    server.shutdown()
    slots.close()


@dataclass
class ListenerProcess:
    """One listener process slot of the supervisor: its index, its current process, its restart schedule."""

    index: int
    process: SpawnProcess | None = None
    ready: ProcessEvent | None = None
    started_at: float = 0.0
    quick_deaths: int = 0
    restart_at: float | None = None
    pids: list[int] = field(default_factory=list)  # every pid it has had, in order


class ListenerSupervisor:
    """Starts ``count`` listener processes, restarts one that dies, stops them all.

    ``target`` is the body of a listener process (tests pass their own); it is called as
    ``target(plan, index, ready)`` in a spawned process and sets ``ready`` once it serves.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        count: int | None = None,
        target: Callable[[ProcessPlan, int, ProcessEvent], None] = run_listener_process,
    ) -> None:
        self.settings = settings
        self.count = settings.listener.process_count if count is None else count
        if not 1 <= self.count <= MAX_LISTENER_PROCESSES:
            raise ValueError(f"count {self.count} is not between 1 and {MAX_LISTENER_PROCESSES} listener processes")
        self._target = target
        self._context = multiprocessing.get_context("spawn")
        self.processes = [ListenerProcess(index) for index in range(self.count)]
        self.work_dir: Path | None = None
        self._guard: socket.socket | None = None
        self._listening: socket.socket | None = None
        self._slots: SharedSlots | None = None
        self._spool = Spool(settings.spool_dir)

    @property
    def metrics_dir(self) -> str:
        """The folder the listener processes write their metrics to (prometheus-client's multiprocess mode)."""
        assert self.work_dir is not None, "start() first"
        return str(self.work_dir / "metrics")

    def pids(self) -> list[int]:
        """The pids of the listener processes alive now."""
        return [
            p.process.pid for p in self.processes if p.process is not None and p.process.is_alive() and p.process.pid
        ]

    def start(self, stop: threading.Event, timeout: float = START_TIMEOUT_SECONDS) -> None:
        """Take the port, prepare the shared files, delete dead writers' partial files, start every listener
        process and wait until each serves. Raises ListenerStartError (the caller then calls :meth:`stop`)."""
        self._take_port()
        self.work_dir = Path(tempfile.mkdtemp(prefix="predraft-listener-"))
        (self.work_dir / "metrics").mkdir()
        os.environ[MULTIPROC_ENV] = self.metrics_dir  # the spawned processes inherit it
        self._slots = SharedSlots.attach(SharedSlots.create(self.work_dir / "slots"), 0)
        self._remove_stale_partials()
        for listener in self.processes:
            self._spawn(listener)
        deadline = time.monotonic() + timeout
        for listener in self.processes:
            assert listener.process is not None and listener.ready is not None
            while not listener.ready.wait(POLL_SECONDS):
                if stop.is_set():
                    return
                if not listener.process.is_alive():
                    raise ListenerStartError(
                        f"listener process {listener.index} exited with code {listener.process.exitcode} "
                        "as it started (its error is above)"
                    )
                if time.monotonic() > deadline:
                    raise ListenerStartError(f"listener process {listener.index} not serving after {timeout:.0f} s")
        log.info("%d listener process(es) serving: pids %s", self.count, self.pids())

    def _take_port(self) -> None:
        """Hold this machine's one supervisor lock for the address, then bind it: the socket every listener
        process listens and accepts on."""
        host, port = self.settings.listener.host, self.settings.listener.port
        guard = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            guard.bind(f"\0predraft-dimse-{host}-{port}")  # abstract: gone with the process
        except OSError as exc:
            guard.close()
            raise ListenerStartError(f"another predraft listen serves {host}:{port} on this machine") from exc
        self._guard = guard
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        listening = socket.socket(family, socket.SOCK_STREAM)
        try:
            listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listening.bind((host, port))
        except OSError as exc:
            listening.close()
            raise ListenerStartError(f"cannot listen on {host}:{port}: {exc.strerror}") from exc
        # Bound, not yet listening: the first listener process that serves calls listen(), so the port opens
        # only once a process accepts from it (readiness checks connect to it).
        self._listening = listening

    def _spawn(self, listener: ListenerProcess) -> None:
        assert self.work_dir is not None
        assert self._listening is not None
        plan = ProcessPlan(self.settings, self.work_dir / "slots", os.getpid(), self._listening, self.count)
        listener.ready = self._context.Event()
        listener.process = self._context.Process(
            target=self._target,
            args=(plan, listener.index, listener.ready),
            name=f"dimse-{listener.index}",
            daemon=True,
        )
        listener.process.start()
        listener.started_at = time.monotonic()
        listener.restart_at = None
        assert listener.process.pid is not None
        listener.pids.append(listener.process.pid)
        log.info("started listener process %d (pid %d)", listener.index, listener.process.pid)

    def supervise(self, stop: threading.Event) -> None:
        """Until ``stop`` is set: restart each listener process that dies, with backoff."""
        while not stop.is_set():
            sentinels = [p.process.sentinel for p in self.processes if p.process is not None]
            multiprocessing.connection.wait(sentinels, timeout=POLL_SECONDS)
            if stop.is_set():
                break
            now = time.monotonic()
            for listener in self.processes:
                if listener.process is not None and not listener.process.is_alive():
                    self._died(listener, now)
                if listener.process is None and listener.restart_at is not None and now >= listener.restart_at:
                    self._spawn(listener)

    def _died(self, listener: ListenerProcess, now: float) -> None:
        """Note a listener process's death: give its slots back, forget its live metrics, delete its partial
        files, and schedule its restart."""
        assert listener.process is not None and self._slots is not None
        process, listener.process = listener.process, None
        process.join()  # reaped: its pid no longer looks alive to the stale-file check
        lived = now - listener.started_at
        listener.quick_deaths = listener.quick_deaths + 1 if lived < STABLE_SECONDS else 1
        delay = min(RESTART_MAX_DELAY_SECONDS, RESTART_FIRST_DELAY_SECONDS * 2 ** (listener.quick_deaths - 1))
        listener.restart_at = now + delay
        self._slots.reset(listener.index)
        if process.pid is not None:
            from prometheus_client.multiprocess import mark_process_dead

            mark_process_dead(process.pid, self.metrics_dir)
        code = process.exitcode
        how = f"killed by {signal.Signals(-code).name}" if code is not None and code < 0 else f"exit code {code}"
        log.error(
            "listener process %d (pid %s) died (%s) after %.1f s; restarting it in %.1f s",
            listener.index,
            process.pid,
            how,
            lived,
            delay,
        )
        self._remove_stale_partials()

    def _remove_stale_partials(self) -> None:
        removed = self._spool.remove_stale_partials()
        if removed:
            log.warning("removed %d partial file(s) left in the spool by a process that died", removed)

    def stop(self) -> None:
        """Stop every listener process (SIGTERM, then SIGKILL past STOP_TIMEOUT_SECONDS) and remove the shared
        files."""
        running = [p.process for p in self.processes if p.process is not None and p.process.is_alive()]
        for process in running:
            process.terminate()
        deadline = time.monotonic() + STOP_TIMEOUT_SECONDS
        for process in running:
            process.join(max(0.1, deadline - time.monotonic()))
            if process.is_alive():
                log.warning(
                    "listener process pid %s did not stop in %.0f s; killing it", process.pid, STOP_TIMEOUT_SECONDS
                )
                process.kill()
                process.join()
        if self._slots is not None:
            self._slots.close()
            self._slots = None
        if self.work_dir is not None:
            if os.environ.get(MULTIPROC_ENV) == self.metrics_dir:
                del os.environ[MULTIPROC_ENV]
            shutil.rmtree(self.work_dir, ignore_errors=True)
        if self._listening is not None:
            self._listening.close()
            self._listening = None
        if self._guard is not None:
            self._guard.close()
            self._guard = None
        log.info("listener processes stopped")
