"""Process start-up shared by every entry point: logging and waiting for a stop signal."""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable

from pythonjsonlogger.json import JsonFormatter

from predraft.core.library_text import quieten_value_quoting_libraries
from predraft.core.settings import Settings

_FORMAT = "%(asctime)s %(levelname)s %(processName)s %(name)s: %(message)s"


def configure_logging(settings: Settings) -> None:
    """Root logging at ``log_level``: readable lines, or with ``log_format`` json one JSON object per line
    (``time``, ``level``, ``process``, ``logger``, ``message``, and ``exc_info`` for a traceback)."""
    handler = logging.StreamHandler()
    if settings.log_format == "json":
        handler.setFormatter(
            JsonFormatter(
                "%(asctime)s %(levelname)s %(processName)s %(name)s %(message)s",
                rename_fields={"asctime": "time", "levelname": "level", "processName": "process", "name": "logger"},
            )
        )
    else:
        handler.setFormatter(logging.Formatter(_FORMAT))
    logging.basicConfig(level=settings.log_level.upper(), handlers=[handler], force=True)
    for noisy in ("pynetdicom", "celery.worker.strategy"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))
    # Celery logs a failed task's exception message and traceback, which may quote a received value;
    # predraft.workers.tasks.RecordedTask logs and records each failure itself, without library messages.
    logging.getLogger("celery.app.trace").setLevel(logging.CRITICAL)
    quieten_value_quoting_libraries()


def wait_for_stop_signal() -> int:
    """Block until SIGINT or SIGTERM; return the signal number."""
    received: list[int] = []
    stop = threading.Event()

    def _handler(signum: int, _frame: object) -> None:
        received.append(signum)
        stop.set()

    previous = {sig: signal.signal(sig, _handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        while not stop.wait(0.5):
            pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return received[0]


#: linux/prctl.h: the signal a child gets when its parent dies.
PR_SET_PDEATHSIG = 1


def die_with_parent(parent_pid: int) -> Callable[[], None] | None:
    """A ``preexec_fn`` that has the kernel send the child SIGTERM when ``parent_pid`` dies (Linux prctl
    PR_SET_PDEATHSIG, kept across exec), then checks that the parent is still ``parent_pid``: one that died
    between the fork and the prctl left the child an orphan, which exits at once. None where there is no prctl.

    The death signal follows the thread that forked the child: a supervisor (``predraft serve``, the listener's
    processes) starts its children from its main thread, which lives as long as it does.
    """
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up before the fork: the child only calls it

    def _preexec() -> None:
        prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
        if os.getppid() != parent_pid:
            os._exit(0)

    return _preexec
