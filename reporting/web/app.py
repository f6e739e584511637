"""The worklist's application context, security headers and error pages; :func:`install` mounts it all."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import Any
from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from jinja2 import Environment, FileSystemLoader, StrictUndefined

from predraft.settings import Settings
from reporting.web.auth import LoginRequired, WebError, load_session_secret
from reporting.web.images import HipImages
from reporting.web.throttle import LoginThrottle

PACKAGE_DIR = Path(__file__).resolve().parent
TEMPLATES_DIR = PACKAGE_DIR / "templates"
STATIC_DIR = PACKAGE_DIR / "static"

#: Headers of every response outside DICOMweb: no inline script or style, no framing, no sniffing.
SECURITY_HEADERS = [
    (b"content-security-policy", b"default-src 'self'; img-src 'self'; style-src 'self'; script-src 'self'; "
                                 b"form-action 'self'; frame-ancestors 'none'; base-uri 'none'; object-src 'none'"),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"same-origin"),
]


def template_environment() -> Environment:
    """Autoescaping on for every template (they are all HTML), undefined names an error."""
    return Environment(loader=FileSystemLoader(str(TEMPLATES_DIR)), autoescape=True, undefined=StrictUndefined,
                       trim_blocks=True, lstrip_blocks=True)


@dataclass
class WebContext:
    settings: Settings
    secret: bytes
    templates: Environment
    images: HipImages
    throttle: LoginThrottle
    _celery: Any = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def celery(self) -> Any:
        """The Celery app the review's export tasks are sent with (made on first use)."""
        with self._lock:
            if self._celery is None:
                from workers.app import create_celery

                self._celery = create_celery(self.settings)
            return self._celery

    def render(self, name: str, status: int = HTTPStatus.OK, **context: Any) -> HTMLResponse:
        html = self.templates.get_template(name).render(**context)
        return HTMLResponse(html, status_code=status, headers={"Cache-Control": "no-store"})


class SecurityHeaders:
    """ASGI middleware: :data:`SECURITY_HEADERS` on every response whose path is not under ``/dicomweb``."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("path", "").startswith("/dicomweb"):
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *SECURITY_HEADERS]
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _wants_html(request: Request) -> bool:
    return "text/html" in request.headers.get("accept", "")


def install(app: FastAPI, settings: Settings) -> None:
    """Mount the worklist on ``app``: its routes, static files, security headers and error pages."""
    from reporting.web.routes import router

    context = WebContext(settings=settings, secret=load_session_secret(settings),
                         templates=template_environment(), images=HipImages(settings),
                         throttle=LoginThrottle(per_user=settings.login_failures_per_user,
                                                per_address=settings.login_failures_per_address,
                                                window_seconds=settings.login_failure_window_seconds))
    app.state.web = context
    app.include_router(router)
    app.mount("/static", StaticFiles(directory=str(STATIC_DIR)), name="static")
    app.add_middleware(SecurityHeaders)

    @app.exception_handler(LoginRequired)
    async def _login_required(request: Request, _exc: LoginRequired) -> Response:
        if _wants_html(request):  # a browser: to the login form, and back to the page afterwards
            target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            if request.method != "GET":  # a form posted after the session ended: back to the worklist
                target = "/"
            return RedirectResponse(f"/login?next={quote(target, safe='')}", status_code=HTTPStatus.SEE_OTHER)
        return PlainTextResponse("login required", status_code=HTTPStatus.UNAUTHORIZED,
                                 headers={"Cache-Control": "no-store"})

    @app.exception_handler(WebError)
    async def _web_error(request: Request, exc: WebError) -> Response:
        if "text/html" in request.headers.get("accept", "") or request.method == "POST":
            return context.render("error.html.j2", status=exc.status, message=exc.message, status_code=exc.status,
                                  user=getattr(request.state, "user", None))
        return PlainTextResponse(exc.message, status_code=exc.status, headers={"Cache-Control": "no-store"})
