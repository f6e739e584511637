"""What every worklist request handler is given: settings, the session secret, templates, thumbnails, the login
throttle and the Celery app exports are sent with (:class:`WebContext`)."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import Any

from fastapi.responses import HTMLResponse
from jinja2 import Environment, FileSystemLoader, StrictUndefined

from predraft.core.settings import Settings
from predraft.worklist.images import HipImages
from predraft.worklist.throttle import LoginThrottle

PACKAGE_DIR = Path(__file__).resolve().parent
TEMPLATES_DIR = PACKAGE_DIR / "templates"
STATIC_DIR = PACKAGE_DIR / "static"


def template_environment() -> Environment:
    """Autoescaping on for every template (they are all HTML), undefined names an error."""
    return Environment(
        loader=FileSystemLoader(str(TEMPLATES_DIR)),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


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
                from predraft.workers.app import create_celery  # here, not at the top: Celery and kombu;
                # `predraft web` imports this module at start-up, and only a review's exports need them

                self._celery = create_celery(self.settings)
            return self._celery

    def render(self, name: str, status: int = HTTPStatus.OK, **context: Any) -> HTMLResponse:
        html = self.templates.get_template(name).render(**context)
        return HTMLResponse(html, status_code=status, headers={"Cache-Control": "no-store"})
