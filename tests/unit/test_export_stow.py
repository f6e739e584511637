"""Export of drafted SRs by STOW-RS: to predraft's own DICOMweb endpoint (a real HTTP server on a free port,
with bearer and basic auth), and to a stub server answering chosen HTTP statuses and Store Instances
Responses."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from sqlalchemy import select

from predraft.core import db
from predraft.core.db import session_scope
from predraft.core.schema import Instance
from predraft.core.settings import Settings, get_settings
from predraft.workers import export_task
from tests.unit.exporting import Drafted, configure, event_kinds, export_row, make_draft, queue, run_export
from tests.unit.webapp import serving

TOKEN = "export-test-token"
PASSWORD = "export-test-password"


@pytest.fixture
def drafted(clean_settings_env, sqlite_url, demo_study, tiny_card_path, tmp_path) -> Iterator[Drafted]:
    yield make_draft(sqlite_url, [image.path for image in demo_study], tiny_card_path, tmp_path / "spool")
    export_task._settings.cache_clear()


@pytest.fixture
def receiving_predraft(tmp_path) -> Iterator[tuple[str, Settings]]:
    """predraft's HTTP app (uvicorn, in a thread) with its own database and spool: (DICOMweb root, settings)."""
    var_dir = tmp_path / "receiver"
    settings = get_settings(
        var_dir=var_dir,
        database_url=f"sqlite:///{var_dir / 'predraft.sqlite'}",
        dicomweb_tokens=[TOKEN],
        dicomweb_users={"pacs": PASSWORD},
        spool_min_free_bytes=0,
        export_destinations=[],
    )
    db.upgrade(settings.database_url)
    settings.spool_dir.mkdir(parents=True)
    try:
        with serving(settings) as (url, _app):
            yield f"{url}/dicomweb/", settings
    finally:
        db.get_engine(settings.database_url).dispose()


def _stored_by(settings: Settings, sop_instance_uid: str) -> list[str]:
    with session_scope(settings.database_url) as session:
        return list(session.scalars(select(Instance.calling_ae).where(Instance.sop_instance_uid == sop_instance_uid)))


def test_stow_rs_to_predraft_with_bearer_and_basic_auth(drafted, receiving_predraft, monkeypatch):
    url, receiver = receiving_predraft
    stow = {"kind": "stow", "url": url, "timeout": 20}
    configure(
        monkeypatch,
        drafted,
        [
            {**stow, "name": "bearer", "auth": "bearer", "token": TOKEN},
            {**stow, "name": "basic", "auth": "basic", "username": "pacs", "password": PASSWORD},
            {**stow, "name": "wrong-token", "auth": "bearer", "token": "not-the-token"},
            {**stow, "name": "anonymous"},
        ],
    )
    assert queue(drafted, "bearer", "basic", "wrong-token", "anonymous") == [
        "bearer",
        "basic",
        "wrong-token",
        "anonymous",
    ]

    assert run_export(drafted, "bearer") == "sent"
    assert _stored_by(receiver, drafted.sr_sop_instance_uid) == ["STOW:token#1"]  # stored before the answer
    assert run_export(drafted, "bearer") == "nothing to do"

    assert run_export(drafted, "basic") == "sent"  # predraft answers an instance it holds as stored
    row = export_row(drafted, "basic")
    assert (row.state, row.attempts, row.last_error) == ("sent", 1, None)

    for name in ("wrong-token", "anonymous"):  # 401 is not retried: a retry cannot mend credentials
        assert run_export(drafted, name) == "dead"
        row = export_row(drafted, name)
        assert row.attempts == 1 and f"STOW-RS to {url.rstrip('/')}/studies: HTTP 401" in row.last_error
    assert event_kinds(drafted) == ["exported", "exported", "export_dead", "export_dead"]


class StubStow(BaseHTTPRequestHandler):
    """Answers each POST with the next (status, JSON) of the server's ``answers``; records what it got."""

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.requests.append((self.path, self.headers["Content-Type"], self.headers.get("Authorization"), body))
        status, payload = self.server.answers.pop(0) if self.server.answers else (HTTPStatus.OK, {})
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/dicom+json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def stub() -> Iterator[ThreadingHTTPServer]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), StubStow)
    server.answers, server.requests = [], []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def _failed(uid: str, reason: int) -> dict:
    return {
        "00081198": {
            "vr": "SQ",
            "Value": [{"00081155": {"vr": "UI", "Value": [uid]}, "00081197": {"vr": "US", "Value": [reason]}}],
        }
    }


def _stored(uid: str, warning: int | None = None) -> dict:
    item = {"00081155": {"vr": "UI", "Value": [uid]}}
    if warning is not None:
        item["00081196"] = {"vr": "US", "Value": [warning]}
    return {"00081199": {"vr": "SQ", "Value": [item]}}


@pytest.mark.parametrize(
    "answers, state, tries, error",
    [
        ([(503, {}), (502, {})], "sent", 3, None),
        ([(503, {})] * 3, "dead", 3, "HTTP 503 Service Unavailable"),
        ([(409, "failed:0xA700"), (200, "stored")], "sent", 2, None),  # out of resources: retried
        ([(409, "failed:0xC000")], "dead", 1, "HTTP 409 Conflict, failure reason 0xC000"),
        ([(202, "warning:0xB000")], "sent", 1, "warning reason 0xB000"),
        ([(403, {})], "dead", 1, "HTTP 403 Forbidden"),
        ([(429, {}), (200, {})], "sent", 2, None),
    ],
)
def test_stow_rs_statuses(drafted, stub, monkeypatch, answers, state, tries, error):
    uid = drafted.sr_sop_instance_uid
    made = {
        "stored": _stored(uid),
        "failed:0xA700": _failed(uid, 0xA700),
        "failed:0xC000": _failed(uid, 0xC000),
        "warning:0xB000": _stored(uid, 0xB000),
    }
    stub.answers = [(status, made[payload] if isinstance(payload, str) else payload) for status, payload in answers]
    url = f"http://127.0.0.1:{stub.server_address[1]}/dicom-web"
    configure(
        monkeypatch,
        drafted,
        [{"kind": "stow", "name": "stub", "url": url, "auth": "bearer", "token": "t0ken"}],
        max_retries=2,
    )
    queue(drafted, "stub")

    assert run_export(drafted, "stub") == state
    row = export_row(drafted, "stub")
    assert (row.state, row.attempts) == (state, tries)
    assert (row.last_error is None) if error is None else (error in row.last_error), row.last_error
    assert len(stub.requests) == tries
    path, content_type, authorization, body = stub.requests[0]
    assert path == "/dicom-web/studies" and authorization == "Bearer t0ken"
    assert content_type.startswith('multipart/related; type="application/dicom"; boundary=')
    boundary = content_type.rsplit("boundary=", 1)[1]
    assert body.startswith(f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode())
    assert body.endswith(f"\r\n--{boundary}--\r\n".encode())
    assert drafted.sr_path.read_bytes() in body
