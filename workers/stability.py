"""Study stability: a study is ready when its expected views are in, or when it has been quiet for the
configured time (see :func:`predraft.workers.dispatch.claim_ready_studies`).

A background thread in the listener process polls the database; claiming is a conditional UPDATE,
so several listeners on one database never start a study twice. Every ``sweep_interval_seconds`` the
same thread runs the sweeper (:mod:`predraft.workers.sweeper`), which sends again work whose messages were lost,
and every ``retention_interval_seconds`` (when a retention is set) spool retention (:mod:`predraft.workers.retention`),
which deletes the old files of finished studies from the spool this listener holds.
"""

from __future__ import annotations

import logging
import threading
import time

from celery import Celery

from predraft.core.settings import Settings
from predraft.workers.dispatch import claim_ready_studies, start_study
from predraft.workers.retention import purge_spool
from predraft.workers.sweeper import sweep

log = logging.getLogger(__name__)


class StabilityMonitor(threading.Thread):
    def __init__(self, settings: Settings, app: Celery) -> None:
        super().__init__(name="stability", daemon=True)
        self.settings = settings
        self.app = app
        self._stop_event = threading.Event()
        self._next_sweep = time.monotonic() + settings.workers.sweep_interval_seconds
        self._next_retention = time.monotonic()  # at start first: a full spool refuses every sender

    def run(self) -> None:
        while not self._stop_event.wait(self.settings.workers.stability_poll_seconds):
            try:
                self.tick()
            except Exception:  # keep watching: a database hiccup must not stop the listener
                log.exception(
                    "stability check failed; retrying in %.1f s", self.settings.workers.stability_poll_seconds
                )

    def tick(self) -> list[int]:
        """One pass: claim quiet studies and start them. Returns the ids started."""
        claimed = claim_ready_studies(
            self.settings.database_url,
            quiet_seconds=self.settings.workers.quiet_seconds,
            expected_views=self.settings.workers.expected_views,
        )
        for study_id in claimed:
            sent = start_study(self.app, self.settings.database_url, study_id)
            log.info("study row %d is ready; %d instance(s) sent to prepare", study_id, sent)
        if time.monotonic() >= self._next_sweep:
            self._next_sweep = time.monotonic() + self.settings.workers.sweep_interval_seconds
            sweep(
                self.app,
                self.settings.database_url,
                self.settings.broker_url,
                stale_seconds=self.settings.workers.sweep_stale_seconds,
            )
        retention = self.settings.retention
        retaining = retention.images_days is not None or retention.srs_days is not None
        if retaining and time.monotonic() >= self._next_retention:
            self._next_retention = time.monotonic() + retention.interval_seconds
            purge_spool(
                self.settings.database_url,
                spool_root=self.settings.spool_dir,
                images_days=retention.images_days,
                srs_days=retention.srs_days,
            )
        return claimed

    def stop(self) -> None:
        self._stop_event.set()
