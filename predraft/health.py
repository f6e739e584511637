"""Readiness: can this site take and draft a study right now? (``GET /readyz``; ``/healthz`` only says the
process is up.)

Four checks, each bounded by a timeout so that a probe never hangs on a dead server:

- ``database``: connect and ``SELECT 1``;
- ``broker``: the Celery broker answers (Redis ``PING``; the embedded SQLite broker: its file opens);
- ``model``: the configured model card is valid and its weights match the card's sha256 (hashed again only
  when the card or the weights file changed on disk);
- ``spool``: the spool is writable (a probe file is written, fsynced and removed) and above its
  free-space floor.

Details name servers without their passwords and never hold patient data.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from predraft.core.settings import Settings, redact_url
from predraft.listener.spool import Spool
from predraft.models.card import load_card
from predraft.models.taskcard import load_task_card
from predraft.workers.queues import ping_broker
from predraft.workers.reach import probe_database, scrub


@dataclass(frozen=True)
class Check:
    """One readiness check: its name, whether it passed, and a short reason (the error when it failed)."""

    name: str
    ok: bool
    detail: str


class ReadinessProbe:
    """Runs the checks of :mod:`predraft.health` against ``settings``; safe to call from many threads."""

    def __init__(self, settings: Settings, *, timeout: float = 2.0) -> None:
        if not timeout > 0:
            raise ValueError(f"timeout {timeout} must be positive")
        self.settings = settings
        self.timeout = timeout
        self._model_lock = threading.Lock()
        self._model_verified: dict[Path, tuple[object, ...]] = {}  # card path -> the stamps of its files, verified

    def run(self) -> list[Check]:
        """Every check, in a fixed order; one failing does not stop the others."""
        checks: list[tuple[str, Callable[[], str]]] = [
            ("database", self._database),
            ("broker", self._broker),
            ("model", self._model),
            ("spool", self._spool),
        ]
        results = []
        for name, check in checks:
            try:
                results.append(Check(name, True, check()))
            except Exception as exc:  # any failure means the same thing: not ready, and why
                detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                results.append(Check(name, False, _scrub(detail, self.settings)))
        return results

    def _database(self) -> str:
        probe_database(self.settings.database_url, timeout=self.timeout)
        return f"{redact_url(self.settings.database_url)} answers"

    def _broker(self) -> str:
        ping_broker(self.settings.broker_url, timeout=self.timeout)
        return f"{redact_url(self.settings.broker_url)} answers"

    def _model(self) -> str:
        packs = self.settings.model.packs()
        shown = []
        for installed in packs.packs:
            card, weights = load_card(installed.card_path, verify_weights=False)
            key = (_stamp(installed.card_path), _stamp(weights))
            with self._model_lock:
                if self._model_verified.get(installed.card_path) != key:
                    load_card(installed.card_path, verify_weights=True)  # hashes the weights: when a file changed
                    self._model_verified[installed.card_path] = key
            shown.append(f"{installed.name}: {card.name} {card.version} ({card.architecture})")
        gate, _ = load_task_card(self.settings.model.gate_card_path, verify_weights=False)
        return f"{'; '.join(shown)}, weights verified; gate {gate.display_name}"

    def _spool(self) -> str:
        spool = Spool(self.settings.spool_dir, min_free_bytes=self.settings.listener.spool_min_free_bytes)
        free = spool.check_ready()
        return f"writable, {free} bytes free (floor {self.settings.listener.spool_min_free_bytes})"


def _stamp(path: Path) -> tuple[str, int, int]:
    status = Path(path).stat()
    return str(path), status.st_mtime_ns, status.st_size


def _scrub(text: str, settings: Settings) -> str:
    for url in (settings.database_url, settings.broker_url):
        text = scrub(text, url)
    return text
