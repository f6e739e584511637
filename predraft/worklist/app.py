"""The worklist's security headers and error pages; :func:`install` mounts them with its routes and context."""

from __future__ import annotations

from http import HTTPStatus
from typing import Any
from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.responses import PlainTextResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

from predraft.core.settings import Settings
from predraft.worklist.auth import LoginRequired, WebError, load_session_secret
from predraft.worklist.context import STATIC_DIR, WebContext, template_environment
from predraft.worklist.images import HipImages
from predraft.worklist.routes import current_user, router
from predraft.worklist.throttle import LoginThrottle
from predraft.worklist.viewer import install_viewer

#: Headers of every response outside DICOMweb: no inline script or style, no framing, no sniffing.
SECURITY_HEADERS = [
    (
        b"content-security-policy",
        b"default-src 'self'; img-src 'self'; style-src 'self'; script-src 'self'; "
        b"form-action 'self'; frame-ancestors 'none'; base-uri 'none'; object-src 'none'",
    ),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"same-origin"),
]


class SecurityHeaders:
    """ASGI middleware: :data:`SECURITY_HEADERS` on every response whose path is not under ``/dicomweb``, each
    unless the response sets that header itself (the viewer's own Content-Security-Policy: a second policy would
    not replace the first, the browser would enforce both)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("path", "").startswith("/dicomweb"):
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                message["headers"] = [*headers, *(pair for pair in SECURITY_HEADERS if pair[0] not in present)]
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _wants_html(request: Request) -> bool:
    return "text/html" in request.headers.get("accept", "")


def install(app: FastAPI, settings: Settings) -> None:
    """Mount the worklist on ``app``: its routes, static files, security headers and error pages."""
    context = WebContext(
        settings=settings,
        secret=load_session_secret(settings),
        templates=template_environment(),
        images=HipImages(settings),
        throttle=LoginThrottle(
            per_user=settings.worklist.login_failures_per_user,
            per_address=settings.worklist.login_failures_per_address,
            window_seconds=settings.worklist.login_failure_window_seconds,
        ),
    )
    app.state.web = context
    app.include_router(router)
    install_viewer(app, settings.worklist.viewer_dir, login=current_user)
    app.mount("/static", StaticFiles(directory=str(STATIC_DIR)), name="static")
    app.add_middleware(SecurityHeaders)

    @app.exception_handler(LoginRequired)
    async def _login_required(request: Request, _exc: LoginRequired) -> Response:
        if _wants_html(request):  # a browser: to the login form, and back to the page afterwards
            target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            if request.method != "GET":  # a form posted after the session ended: back to the worklist
                target = "/"
            return RedirectResponse(f"/login?next={quote(target, safe='')}", status_code=HTTPStatus.SEE_OTHER)
        return PlainTextResponse(
            "login required", status_code=HTTPStatus.UNAUTHORIZED, headers={"Cache-Control": "no-store"}
        )

    @app.exception_handler(WebError)
    async def _web_error(request: Request, exc: WebError) -> Response:
        if "text/html" in request.headers.get("accept", "") or request.method == "POST":
            return context.render(
                "error.html.j2",
                status=exc.status,
                message=exc.message,
                status_code=exc.status,
                user=getattr(request.state, "user", None),
            )
        return PlainTextResponse(exc.message, status_code=exc.status, headers={"Cache-Control": "no-store"})
