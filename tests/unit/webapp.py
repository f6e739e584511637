"""Helpers of the worklist tests: the real HTTP app (uvicorn) in this process on a free port, over a drafted
study in a SQLite database, and a browser-like client (requests) that logs in and posts forms with their
CSRF token."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from html import unescape
from pathlib import Path
from typing import Any

import requests
import uvicorn
from sqlalchemy import select

from predraft.core.db import session_scope
from predraft.core.schema import Instance
from predraft.core.settings import Settings, get_settings
from tests.conftest import free_port
from tests.unit.exporting import Drafted, make_draft

SECRET = "s" * 40
PASSWORD = "correct horse battery"


@dataclass
class WebApp:
    url: str
    settings: Settings
    drafted: Drafted
    app: Any

    def client(self) -> Client:
        return Client(self.url)

    def add_user(self, username: str, role: str, display_name: str | None = None) -> None:
        from predraft.worklist.users import add_user

        with session_scope(self.settings.database_url) as session:
            add_user(session, username=username, password=PASSWORD, role=role, display_name=display_name)

    def logged_in(self, username: str, role: str = "radiologist") -> Client:
        self.add_user(username, role, f"{username.capitalize()}^Test")
        client = self.client()
        response = client.login(username, PASSWORD)
        assert response.status_code == 200 and response.url.endswith("/"), response.text[:500]
        return client


class Client:
    """A requests session against the app: it follows redirects, keeps cookies, and finds CSRF tokens."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.http = requests.Session()
        self.http.headers["Accept"] = "text/html"

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        return self.http.get(self.url + path, timeout=30, **kwargs)

    def post(self, path: str, data: dict[str, str], **kwargs: Any) -> requests.Response:
        return self.http.post(self.url + path, data=data, timeout=60, **kwargs)

    def csrf(self, path: str = "/") -> str:
        return csrf_in(self.get(path).text)

    def login(self, username: str, password: str) -> requests.Response:
        token = self.csrf("/login")
        return self.post("/login", {"csrf_token": token, "username": username, "password": password, "next": "/"})


def csrf_in(html: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match, f"no CSRF token in the page: {html[:300]}"
    return unescape(match.group(1))


@contextmanager
def serving(settings: Settings) -> Iterator[tuple[str, Any]]:
    """``predraft.http.create_app(settings)`` under uvicorn on a free loopback port, until the block ends."""
    from predraft.http import create_app

    app = create_app(settings)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, name="test-http", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the HTTP app did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}", app
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def dicomweb_settings(folder: Path, database_url: str, token: str, **overrides: Any) -> Settings:
    """Settings of an HTTP app in ``folder`` on ``database_url`` whose DICOMweb takes the API token ``token`` (no
    spool free-space floor: the tests' files are small)."""
    values: dict[str, Any] = {
        "var_dir": folder / "var",
        "database_url": database_url,
        "spool_dir": folder / "spool",
        "session_secret": SECRET,
        "cookie_secure": False,
        "dicomweb_tokens": [token],
        "spool_min_free_bytes": 0,
        **overrides,
    }
    return get_settings(**values)


def web_settings(tmp_path: Path, database_url: str, card_path: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "var_dir": tmp_path / "var",
        "database_url": database_url,
        "spool_dir": tmp_path / "spool",
        "model": card_path,
        "cookie_secure": False,
        "session_secret": SECRET,
        **overrides,
    }
    return get_settings(**values)


@contextmanager
def drafted_web_app(
    tmp_path: Path, database_url: str, image_paths: list[Path], card_path: Path, **overrides: Any
) -> Iterator[WebApp]:
    drafted = make_draft(database_url, image_paths, card_path, tmp_path / "spool", results_sr=True)
    with session_scope(database_url) as session:  # as the prepare task records them
        for instance in session.scalars(select(Instance)):
            instance.view = instance.predictions[0].view
            instance.side = "+".join(prediction.side for prediction in instance.predictions)
    settings = web_settings(tmp_path, database_url, card_path, **overrides)
    with serving(settings) as (url, app):
        yield WebApp(url, settings, drafted, app)
