"""``predraft serve``: every part on one machine, as child processes of one supervisor.

The children are the very commands of a distributed deployment (``predraft listen``, ``predraft
worker``, ``predraft web``), started with the same settings; ``serve`` adds nothing but start-up
checks, readiness waits and a clean stop on Ctrl-C or SIGTERM.
The listener part is itself a supervisor (:mod:`predraft.listener.processes`): it restarts a DIMSE listener
process that dies, so serve restarts nothing itself and stops everything only when a part's top process dies.

No part outlives serve: a SIGINT or SIGTERM at any moment (while the environment is prepared, while the
parts start, while serve waits for them to answer) stops every part started so far (:class:`StopSignals`);
and on Linux each part is made to receive SIGTERM when serve dies, however it dies (SIGKILL, the OOM killer),
so that the next serve finds its ports free.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from predraft.core.bootstrap import die_with_parent
from predraft.core.settings import Settings
from predraft.models.taskcard import load_task_card
from predraft.workers.names import QUEUES

log = logging.getLogger(__name__)
STOP_TIMEOUT_SECONDS = 20.0
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopRequested(BaseException):  # noqa: N818 - like KeyboardInterrupt: not caught by ``except Exception``
    """A stop signal arrived before serve was up; nothing that was started may be left running."""


class StopSignals:
    """SIGINT and SIGTERM as one stop request, from the moment :meth:`install` runs until the process exits.

    A signal always sets :attr:`requested`. Inside :meth:`interruptible` (work that starts no process and may
    block for long: migrations, the broker's queues) it also raises :class:`StopRequested` at once, again on
    each further signal in case a library swallowed the first. Elsewhere (while parts start, while serve waits
    for them or runs) nothing is raised: the code checks :attr:`requested`, so that a part is never started
    without being recorded, and so stopped.

    Python itself swallows the exception when the signal lands in a weakref callback or a finaliser (SQLAlchemy's,
    during a migration, say) and prints it as "Exception ignored in ..." with its traceback; inside
    :meth:`interruptible` such a StopRequested is dropped quietly instead, the stop being recorded all the same.
    """

    def __init__(self) -> None:
        self.requested = threading.Event()
        self._interruptible = False

    def install(self) -> StopSignals:
        for sig in STOP_SIGNALS:
            signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, _frame: object) -> None:
        self.requested.set()
        if self._interruptible:
            raise StopRequested(signal.Signals(signum).name)

    @contextmanager
    def interruptible(self) -> Iterator[None]:
        """Run the block so that a stop signal interrupts it with :class:`StopRequested` (also raised on entry
        when a stop was requested before)."""
        if self.requested.is_set():
            raise StopRequested("stop requested")
        self._interruptible = True
        reporting = sys.unraisablehook
        sys.unraisablehook = _quiet_about_stops(reporting)
        try:
            yield
        finally:
            self._interruptible = False
            sys.unraisablehook = reporting


def _quiet_about_stops(reporting: Callable[[Any], object]) -> Callable[[Any], None]:
    """An unraisable-exception hook that drops a :class:`StopRequested` (its stop is recorded in
    :attr:`StopSignals.requested`) and hands anything else to ``reporting``."""

    def hook(unraisable: Any) -> None:
        if not isinstance(unraisable.exc_value, StopRequested):
            reporting(unraisable)

    return hook


def prepare_environment(settings: Settings) -> None:
    """Apply migrations, declare the broker's queues, check the packs (their cards, weights and templates) and the
    gate's card."""
    # `predraft serve` imports this module to install its StopSignals before anything slow: SQLAlchemy's ORM,
    # pydicom, numpy and Jinja load here, inside StopSignals.interruptible(), where a Ctrl-C stops serve at once
    from predraft.core import db  # here, not at the top: the ORM, pydicom, Jinja (see above)
    from predraft.models.scope import check_gate_card
    from predraft.reporting.text import check_pack_templates
    from predraft.workers.queues import declare_queues

    db.upgrade(settings.database_url)
    declare_queues(settings.broker_url, QUEUES)  # before the parts start: none of them races to create one
    settings.spool_dir.mkdir(parents=True, exist_ok=True)
    check_pack_templates(settings.model.packs(verify_weights=True), settings.report.template_dir)
    check_gate_card(load_task_card(settings.model.gate_card_path)[0])


@dataclass
class Child:
    name: str
    argv: list[str]
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:  # noqa: S310 - loopback health check
            return response.status == 200
    except OSError:
        return False


class Supervisor:
    """Starts the children, waits until they answer, and stops them all when one dies or on a signal.

    ``stop`` is the stop request that the caller's :class:`StopSignals` sets (installed before anything else
    runs, so that no signal is lost while the parts start).
    """

    def __init__(self, settings: Settings, stop: threading.Event) -> None:
        python = [sys.executable, "-m", "predraft"]
        self.settings = settings
        self.children = [
            Child("listener", [*python, "listen"]),
            Child("worker", [*python, "worker", "--queues", ",".join(QUEUES)]),  # every queue: it does all the work
            Child("web", [*python, "web"]),
        ]
        self._stop = stop

    def start(self) -> None:
        """Start the children in order, none once a stop was requested; each dies with this process."""
        preexec = die_with_parent(os.getpid())
        for child in self.children:
            if self._stop.is_set():
                return
            # A session of its own: Ctrl-C reaches the supervisor, which stops the children in order.
            child.process = subprocess.Popen(
                child.argv, start_new_session=True, env=os.environ.copy(), preexec_fn=preexec
            )  # in the child: a prctl and a getppid only
            log.info("started %s (pid %d)", child.name, child.process.pid)

    def wait_ready(self, timeout: float = 120.0) -> None:
        """Block until the DIMSE port and the HTTP health check answer; raise if a child dies first, and
        :class:`StopRequested` once a stop is requested."""
        s = self.settings
        checks: dict[str, Callable[[], bool]] = {
            "DIMSE listener": lambda: _port_open(s.listener.host, s.listener.port),
            "HTTP app": lambda: _http_ok(f"http://{s.http.host}:{s.http.port}/healthz"),
        }
        deadline = time.monotonic() + timeout
        while checks:
            if self._stop.is_set():
                raise StopRequested("stop requested while waiting for the parts")
            self.raise_if_child_died()
            for name in [name for name, check in checks.items() if check()]:
                del checks[name]
            if time.monotonic() > deadline:
                raise TimeoutError(f"not ready after {timeout:.0f} s: {', '.join(checks)}")
            self._stop.wait(0.2)

    def raise_if_child_died(self) -> None:
        for child in self.children:
            if child.process is not None and child.process.poll() is not None:
                raise RuntimeError(f"{child.name} exited with code {child.process.returncode}")

    def run_until_stopped(self) -> int:
        """Wait for SIGINT/SIGTERM or a dead child; stop everything; return the exit code."""
        code = 0
        while not self._stop.wait(0.5):
            try:
                self.raise_if_child_died()
            except RuntimeError as exc:
                log.error("%s; stopping the others", exc)
                code = 1
                break
        else:
            log.info("stop requested; stopping")
        self.stop()
        return code

    def stop(self) -> None:
        running = [(c, c.process) for c in self.children if c.process is not None and c.process.poll() is None]
        for _child, process in running:
            process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_SECONDS
        for child, process in running:
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop in %.0f s; killing it", child.name, STOP_TIMEOUT_SECONDS)
                process.kill()
                process.wait()
        log.info("all parts stopped")
