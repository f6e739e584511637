"""The HTTP app: one FastAPI application assembling the routers of the stages.

``/healthz`` lives here; DICOMweb comes from ``listener/``, the worklist from ``reporting/web/``.
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.responses import JSONResponse

import predraft
from listener.dicomweb import router as dicomweb_router
from predraft.settings import Settings


def create_app(settings: Settings) -> FastAPI:
    """The app: ``/healthz`` (open), DICOMweb under ``/dicomweb`` (its own bearer/basic auth), and the worklist
    (every other route; a login session)."""
    from reporting.web.app import install

    app = FastAPI(title="predraft", version=predraft.__version__, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.settings = settings
    app.include_router(dicomweb_router)
    install(app, settings)

    @app.get("/healthz")
    def healthz() -> JSONResponse:
        """The process is up."""
        return JSONResponse({"status": "ok", "version": predraft.__version__})

    return app
