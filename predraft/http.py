"""The HTTP app: one FastAPI application assembling the routers of the stages.

``/healthz``, ``/readyz`` and ``/metrics`` live here (open, no login: probes and Prometheus call them);
DICOMweb comes from ``listener/``, the worklist from ``predraft/worklist/``.

There are no trailing-slash redirects (``/stats/`` is 404, not a redirect to ``/stats``): Starlette builds
their Location from the request's Host header, so a forged Host made them redirect to any site. Every
redirect predraft sends is a relative path of its own.
"""

from __future__ import annotations

from http import HTTPStatus

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest

import predraft
from predraft.core.metrics import QueueDepthCollector
from predraft.core.settings import Settings
from predraft.health import ReadinessProbe
from predraft.listener.dicomweb import router as dicomweb_router
from predraft.listener.dicomweb.auth import SESSION_USER_STATE
from predraft.workers.names import QUEUES
from predraft.workers.queues import ping_broker, waiting_counts
from predraft.worklist.app import install
from predraft.worklist.auth import LoginRequired
from predraft.worklist.routes import current_user


def create_app(settings: Settings) -> FastAPI:
    """The app: ``/healthz``, ``/readyz`` and ``/metrics`` (open), DICOMweb under ``/dicomweb`` (its own
    bearer/basic auth; reads also with a worklist login), and the worklist (every other route; a login session)."""
    app = FastAPI(
        title="predraft",
        version=predraft.__version__,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        redirect_slashes=False,
    )  # a slash redirect's Location is built from the Host header
    app.state.settings = settings
    app.include_router(dicomweb_router)
    install(app, settings)
    setattr(app.state, SESSION_USER_STATE, _worklist_session_user)  # DICOMweb reads take a worklist login
    probe = ReadinessProbe(settings)
    queue_metrics = CollectorRegistry(auto_describe=False)
    queue_metrics.register(QueueDepthCollector(lambda: _queue_depths(settings)))

    @app.get("/healthz")
    def healthz() -> JSONResponse:
        """The process is up."""
        return JSONResponse({"status": "ok", "version": predraft.__version__})

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        """200 when the database, the broker, the model and the spool are all fine; else 503 naming what
        is not (``failing``), each check with its reason."""
        checks = await run_in_threadpool(probe.run)
        failing = [check.name for check in checks if not check.ok]
        body = {
            "status": "unready" if failing else "ready",
            "failing": failing,
            "checks": {check.name: {"ok": check.ok, "detail": check.detail} for check in checks},
        }
        return JSONResponse(body, status_code=HTTPStatus.SERVICE_UNAVAILABLE if failing else HTTPStatus.OK)

    @app.get("/metrics")
    async def metrics() -> Response:
        """Prometheus text format: this process's counters and histograms, and the broker's queue depths."""
        text = generate_latest(REGISTRY) + await run_in_threadpool(generate_latest, queue_metrics)
        return Response(text, media_type=CONTENT_TYPE_LATEST)

    return app


def _worklist_session_user(request: Request) -> str | None:
    """The user name of the request's worklist session (the worklist's own check), or None."""
    try:
        return current_user(request).username
    except LoginRequired:
        return None


def _queue_depths(settings: Settings) -> dict[str, int]:
    """Waiting messages per queue, counted by the broker (never read one by one); 2 s at most."""
    ping_broker(settings.broker_url, timeout=2.0)  # first: an embedded broker's file is never created by a scrape
    return waiting_counts(settings.broker_url, QUEUES, timeout=2.0)
