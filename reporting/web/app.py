"""The HTTP app. For now: health checks only. The worklist (login required) comes with its issue."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.responses import JSONResponse

import predraft
from predraft.settings import Settings


def create_app(settings: Settings) -> FastAPI:
    app = FastAPI(title="predraft", version=predraft.__version__, docs_url=None, redoc_url=None, openapi_url=None)

    @app.get("/healthz")
    def healthz() -> JSONResponse:
        """The process is up."""
        return JSONResponse({"status": "ok", "version": predraft.__version__})

    return app
