"""Process start-up shared by every entry point: logging and waiting for a stop signal."""

from __future__ import annotations

import logging
import signal
import threading
import warnings

from predraft.library_text import format_warning
from predraft.settings import Settings

_FORMAT = "%(asctime)s %(levelname)s %(processName)s %(name)s: %(message)s"


def configure_logging(settings: Settings) -> None:
    """Root logging at ``log_level``: readable lines, or with ``log_format`` json one JSON object per line
    (``time``, ``level``, ``process``, ``logger``, ``message``, and ``exc_info`` for a traceback)."""
    handler = logging.StreamHandler()
    if settings.log_format == "json":
        from pythonjsonlogger.json import JsonFormatter

        handler.setFormatter(JsonFormatter(
            "%(asctime)s %(levelname)s %(processName)s %(name)s %(message)s",
            rename_fields={"asctime": "time", "levelname": "level", "processName": "process", "name": "logger"}))
    else:
        handler.setFormatter(logging.Formatter(_FORMAT))
    logging.basicConfig(level=settings.log_level.upper(), handlers=[handler], force=True)
    for noisy in ("pynetdicom", "celery.worker.strategy"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))
    # Celery logs a failed task's exception message and traceback, which may quote a received value;
    # workers.tasks.RecordedTask logs and records each failure itself, without library messages.
    logging.getLogger("celery.app.trace").setLevel(logging.CRITICAL)
    _quieten_value_quoting_libraries()


#: Libraries that warn about the values they were given by quoting them: pydicom ("Invalid value for VR DA:
#: '1980-02-03'", a birth date), highdicom ('The string "JOHN SMITH" is unlikely to represent the intended
#: person name', and the same as a log record). Patient data: only their errors are logged, and their Python
#: warnings are not shown.
VALUE_QUOTING_LIBRARIES = ("pydicom", "highdicom")


def _quieten_value_quoting_libraries() -> None:
    """No library warning carries patient data into the logs: the value-quoting libraries' warnings are
    ignored and their loggers log errors only; any other library's warning is shown by its place and category
    only (:func:`predraft.library_text.format_warning`), whether printed to stderr or logged as ``py.warnings``
    (Celery turns ``logging.captureWarnings`` on in the worker; other processes print warnings to stderr)."""
    for library in VALUE_QUOTING_LIBRARIES:
        logging.getLogger(library).setLevel(max(logging.ERROR, logging.getLogger().level))
        warnings.filterwarnings("ignore", module=rf"{library}(\.|$)")
    warnings.formatwarning = format_warning


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
