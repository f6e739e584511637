"""``predraft serve``: every part on one machine, as child processes of one supervisor.

The children are the very commands of a distributed deployment (``predraft listen``, ``predraft
worker``, ``predraft web``), started with the same settings; ``serve`` adds nothing but start-up
checks, readiness waits and a clean stop on Ctrl-C or SIGTERM.
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
from collections.abc import Callable
from dataclasses import dataclass, field

from predraft.settings import Settings

log = logging.getLogger(__name__)
STOP_TIMEOUT_SECONDS = 20.0


def prepare_environment(settings: Settings) -> None:
    """Apply migrations, declare the broker's queues, check the model card and its weights, check the templates."""
    from models.card import load_card
    from predraft import db
    from reporting.text import check_templates
    from workers.app import QUEUES
    from workers.queues import declare_queues

    db.upgrade(settings.database_url)
    declare_queues(settings.broker_url, QUEUES)  # before the parts start: none of them races to create one
    settings.spool_dir.mkdir(parents=True, exist_ok=True)
    load_card(settings.model_card_path)
    check_templates(settings.template_dir)


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
    """Starts the children, waits until they answer, and stops them all when one dies or on a signal."""

    def __init__(self, settings: Settings) -> None:
        from workers.app import QUEUES  # every queue: the embedded worker does all the work

        python = [sys.executable, "-m", "predraft"]
        self.settings = settings
        self.children = [
            Child("listener", [*python, "listen"]),
            Child("worker", [*python, "worker", "--queues", ",".join(QUEUES)]),
            Child("web", [*python, "web"]),
        ]
        self._stop = threading.Event()

    def start(self) -> None:
        for child in self.children:
            # A session of its own: Ctrl-C reaches the supervisor, which stops the children in order.
            child.process = subprocess.Popen(child.argv, start_new_session=True, env=os.environ.copy())
            log.info("started %s (pid %d)", child.name, child.process.pid)

    def wait_ready(self, timeout: float = 120.0) -> None:
        """Block until the DIMSE port and the HTTP health check answer; raise if a child dies first."""
        s = self.settings
        checks: dict[str, Callable[[], bool]] = {
            "DIMSE listener": lambda: _port_open(s.dimse_host, s.dimse_port),
            "HTTP app": lambda: _http_ok(f"http://{s.http_host}:{s.http_port}/healthz"),
        }
        deadline = time.monotonic() + timeout
        while checks:
            self.raise_if_child_died()
            for name in [name for name, check in checks.items() if check()]:
                del checks[name]
            if time.monotonic() > deadline:
                raise TimeoutError(f"not ready after {timeout:.0f} s: {', '.join(checks)}")
            time.sleep(0.2)

    def raise_if_child_died(self) -> None:
        for child in self.children:
            if child.process is not None and child.process.poll() is not None:
                raise RuntimeError(f"{child.name} exited with code {child.process.returncode}")

    def run_until_stopped(self) -> int:
        """Wait for SIGINT/SIGTERM or a dead child; stop everything; return the exit code."""
        def _handler(signum: int, _frame: object) -> None:
            log.info("received %s; stopping", signal.Signals(signum).name)
            self._stop.set()

        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, _handler)
        code = 0
        while not self._stop.wait(0.5):
            try:
                self.raise_if_child_died()
            except RuntimeError as exc:
                log.error("%s; stopping the others", exc)
                code = 1
                break
        self.stop()
        return code

    def stop(self) -> None:
        running = [c for c in self.children if c.process is not None and c.process.poll() is None]
        for child in running:
            child.process.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
        deadline = time.monotonic() + STOP_TIMEOUT_SECONDS
        for child in running:
            try:
                child.process.wait(max(0.1, deadline - time.monotonic()))  # type: ignore[union-attr]
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop in %.0f s; killing it", child.name, STOP_TIMEOUT_SECONDS)
                child.process.kill()  # type: ignore[union-attr]
                child.process.wait()  # type: ignore[union-attr]
        log.info("all parts stopped")
