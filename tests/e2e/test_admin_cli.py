"""The admin commands against running parts: ``predraft listen`` and ``predraft worker`` processes started as a
site starts them, on the embedded default and on Redis + PostgreSQL, with work in every state.

A study is drafted and exported to three destinations: one that accepts the connection and never answers
(its export runs), one nothing listens on (it fails; its retry waits ten minutes) and one that answers
HTTP 401 (dead at once). With the draft worker stopped, a second study's draft waits in its queue; it is
purged (the spool and the instance rows stay), its draft task becomes a dead letter, and ``queue retry``
with the draft worker back ends with the study drafted. ``studies redraft`` drafts the first study again.
"""

from __future__ import annotations

import http.server
import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pydicom
import pytest
from sqlalchemy import func, select

from predraft.core.db import session_scope
from predraft.core.schema import Export, Instance, Study
from predraft.core.settings import Settings, get_settings
from predraft.models.card import load_card
from predraft.models.phantoms import write_demo_study
from predraft.models.taskcard import load_task_card
from predraft.serve import prepare_environment
from predraft.workers.app import DRAFT, EXPORT
from predraft.workers.dead_letters import record_dead_letter
from predraft.workers.leases import record_given_up
from tests.conftest import free_port
from tests.e2e.conftest import PREDRAFT

pytestmark = pytest.mark.slow

AE = "PREDRAFT"
DONE = {"drafted", "out_of_scope", "error"}


class _Silent:
    """A TCP server that accepts connections and never answers (a PACS that hangs)."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.held: list[socket.socket] = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while True:
            try:
                self.held.append(self.sock.accept()[0])
            except OSError:
                return

    def close(self) -> None:
        self.sock.close()
        for connection in self.held:
            connection.close()


class _Refusing(http.server.BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802 - the http.server interface
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(401)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *_: object) -> None:
        pass


class Site:
    """A listener and workers started by the test, and the admin CLI run as a user runs it."""

    def __init__(self, work: Path, env: dict[str, str]) -> None:
        self.work = work
        self.env = {key: value for key, value in os.environ.items() if not key.startswith("PREDRAFT_")} | env
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        overrides = {
            key.removeprefix("PREDRAFT_").lower(): value
            for key, value in env.items()
            if key in {"PREDRAFT_VAR_DIR", "PREDRAFT_DATABASE_URL", "PREDRAFT_BROKER_URL"}
        }
        self.settings: Settings = get_settings(**overrides)
        prepare_environment(self.settings)  # migrations and the untrained demo model, as `serve` does

    def start(self, name: str, *argv: str) -> subprocess.Popen[bytes]:
        log = (self.work / f"{name}.log").open("ab")
        process = subprocess.Popen([PREDRAFT, *argv], env=self.env, stdout=log, stderr=subprocess.STDOUT, cwd=self.work)
        self.processes[name] = process
        return process

    def stop(self, name: str) -> None:
        process = self.processes.pop(name)
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=40)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def logs(self) -> str:
        return "\n".join(f"--- {path.name}\n{path.read_text()[-2500:]}" for path in sorted(self.work.glob("*.log")))

    def cli(self, *args: str, codes: tuple[int, ...] = (0, 1)) -> tuple[int, Any]:
        """``predraft args`` (with ``--json``): its exit code (one of ``codes``) and its JSON."""
        result = subprocess.run([PREDRAFT, *args, "--json"], env=self.env, capture_output=True, text=True, timeout=60)
        assert result.returncode in codes, f"predraft {' '.join(args)}: {result.returncode} {result.stderr}"
        return result.returncode, json.loads(result.stdout) if result.stdout.strip() else None

    def wait(self, what: str, check: Callable[[], Any], timeout: float = 180.0) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = check()
            if value:
                return value
            for name, process in self.processes.items():
                assert process.poll() is None, f"{name} died\n{self.logs()}"
            time.sleep(0.5)
        raise AssertionError(f"{what}: not after {timeout} s\n{self.logs()}")

    def send(self, files: list[Path]) -> str:
        port = self.env["PREDRAFT_DIMSE_PORT"]
        self.wait(
            "listener up",
            lambda: subprocess.run(["echoscu", "-aec", AE, "127.0.0.1", port], capture_output=True).returncode == 0,
            timeout=60,
        )
        result = subprocess.run(
            ["storescu", "-aet", "STORESCU", "-aec", AE, "127.0.0.1", port, *map(str, files)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr
        return str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)

    def study(self, study_uid: str) -> dict | None:
        _, detail = self.cli("studies", "show", study_uid)
        return detail

    def items(self, *args: str) -> list[dict]:
        return self.cli("queue", "ls", *args)[1]

    def workers_online(self) -> list[dict]:
        """The workers online; none while the first worker has yet to create the embedded broker (exit 2)."""
        code, report = self.cli("workers", codes=(0, 1, 2))
        return [] if code == 2 else report["workers"]


@pytest.fixture(params=["embedded", pytest.param("redis_postgres", marks=pytest.mark.postgres)])
def site(request, tmp_path: Path) -> Iterator[Site]:
    if shutil.which("storescu") is None:
        pytest.skip("dcmtk is not installed")
    silent = _Silent()
    refusing = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Refusing)
    threading.Thread(target=refusing.serve_forever, daemon=True).start()
    destinations = [
        {"kind": "dimse", "name": "hang", "ae_title": "HANG", "host": "127.0.0.1", "port": silent.port, "timeout": 120},
        {
            "kind": "dimse",
            "name": "refused",
            "ae_title": "NOBODY",
            "host": "127.0.0.1",
            "port": free_port(),
            "timeout": 5,
        },
        {"kind": "stow", "name": "reject", "url": f"http://127.0.0.1:{refusing.server_address[1]}/dicom-web"},
    ]
    env = {
        "PREDRAFT_VAR_DIR": str(tmp_path / "var"),
        "PREDRAFT_DIMSE_PORT": str(free_port()),
        "PREDRAFT_QUIET_SECONDS": "3600",
        "PREDRAFT_STABILITY_POLL_SECONDS": "0.3",
        "PREDRAFT_SWEEP_INTERVAL_SECONDS": "3600",
        "PREDRAFT_SWEEP_STALE_SECONDS": "3600",
        "PREDRAFT_SPOOL_MIN_FREE_BYTES": "0",
        "PREDRAFT_EXPORT_DESTINATIONS": json.dumps(destinations),
        "PREDRAFT_EXPORT_RETRY_DELAY_SECONDS": "600",
        "PREDRAFT_EXPORT_RETRY_MAX_DELAY_SECONDS": "600",
    }
    if request.param == "redis_postgres":
        env.update(request.getfixturevalue("postgres_and_redis"))
    site = Site(tmp_path, env)
    try:
        yield site
    finally:
        silent.close()  # the hanging export fails now, so its worker stops at once
        for name in list(site.processes):
            site.stop(name)
        # Only now: an export to it still running (the redrafted study's) is answered at once, where a server shut
        # down but not closed would leave it waiting out its 30 s timeout, and the worker's warm shutdown with it.
        refusing.shutdown()
        refusing.server_close()


def _by(items: list[dict], **wanted: object) -> list[dict]:
    return [item for item in items if all(item.get(key) == value for key, value in wanted.items())]


def test_admin_commands_against_running_workers(site: Site, tmp_path: Path) -> None:
    site.start("listener", "listen")
    site.start("worker-main", "worker", "-Q", "prepare,classify,export", "-c", "3")
    site.start("worker-draft", "worker", "-Q", "draft", "-c", "1")
    site.wait("both workers online", lambda: len(site.workers_online()) == 2, timeout=120)

    first = site.send([image.path for image in write_demo_study(tmp_path / "first", seed=11)])
    detail = site.wait("first study drafted", lambda: (d := site.study(first)) and d["state"] in DONE and d)
    assert (detail["state"], detail["draft"]["generation"]) == ("drafted", 1), detail

    def exports_settled() -> list[dict] | None:
        items = site.items("--queue", "export")
        settled = (
            _by(items, state="dead", destination="reject")
            and _by(items, state="failed", destination="refused")
            and _by(items, state="running", destination="hang")
        )
        return items if settled else None

    site.wait("exports running, failed and dead", exports_settled, timeout=120)

    site.stop("worker-draft")  # a second study's draft now waits in its queue
    second = site.send([image.path for image in write_demo_study(tmp_path / "second", seed=12)])
    site.wait(
        "second study's draft waiting",
        lambda: _by(site.items("--queue", "draft", "--state", "waiting"), study_uid=second),
        timeout=180,
    )

    # queue stats: every state, and the workers with their device and model. The draft message is sent by the
    # second study's last classify task before that task returns: wait until the worker holds only the export.
    def settled_stats() -> tuple[int, dict] | None:
        code, stats = site.cli("queue", "stats")
        return (code, stats) if [worker["active"] for worker in stats["workers"]] == [1] else None

    code, stats = site.wait("the second study's classify task finished", settled_stats, timeout=60)
    assert code == 1
    rows = {row["queue"]: row for row in stats["queues"]}
    assert (rows["draft"]["waiting"], rows["draft"]["running"], rows["draft"]["workers"]) == (1, 0, 0)
    assert rows["draft"]["oldest_waiting_seconds"] is not None and rows["draft"]["oldest_waiting_seconds"] < 300
    assert (
        rows["export"]["waiting"],
        rows["export"]["running"],
        rows["export"]["retries_pending"],
        rows["export"]["dead"],
        rows["export"]["workers"],
    ) == (0, 1, 1, 1, 1)
    assert (rows["prepare"]["waiting"], rows["prepare"]["dead"], rows["classify"]["waiting"]) == (0, 0, 0)
    assert "1 dead in queue export (predraft queue ls --state dead)" in stats["problems"]
    assert "no online worker consumes queue draft (1 message(s) waiting)" in stats["problems"]
    card = load_card(site.settings.model.card_path, verify_weights=False)[0]
    (worker,) = stats["workers"]
    assert (
        worker["queues"],
        worker["concurrency"],
        worker["pool"],
        worker["device"],
        worker["model_name"],
        worker["model_version"],
        worker["active"],
    ) == (["classify", "export", "prepare"], 3, "threads", "cpu", card.name, card.version, 1)
    assert worker["device_name"].startswith("CPU: ") and worker["heartbeat_age_seconds"] < 10
    gate = load_task_card(site.settings.model.gate_card_path, verify_weights=False)[0]
    packs = site.settings.model.packs().packs
    assert worker["models"] == {
        "gate": f"{gate.name} {gate.version}",
        **{p.name: f"{p.card.name} {p.card.version}" for p in packs},
    }
    assert worker["models"]["hip"] == f"{card.name} {card.version}"
    assert worker["hostname"].startswith("predraft-prepare-classify-export@")
    code, report = site.cli("workers", "--timeout", "2")
    assert (code, [w["hostname"] for w in report["workers"]], report["queues_without_workers"]) == (
        1,
        [worker["hostname"]],
        ["draft"],
    )
    redis_broker = site.settings.broker_url.startswith("redis")
    assert report["workers"][0]["answers_inspect"] is (True if redis_broker else None)  # Celery inspect on Redis
    assert report["workers"][0]["source"] == ("heartbeat key" if redis_broker else "heartbeat file")

    # queue ls and show, field by field
    code, items = site.cli("queue", "ls")
    assert code == 1
    (dead,) = _by(items, state="dead")
    assert (dead["id"][0], dead["queue"], dead["task"], dead["study_uid"], dead["destination"], dead["attempts"]) == (
        "E",
        "export",
        EXPORT,
        first,
        "reject",
        1,
    )
    assert "401" in dead["error"]
    (failed,) = _by(items, state="failed")
    assert (failed["id"][0], failed["study_uid"], failed["destination"], failed["attempts"]) == (
        "E",
        first,
        "refused",
        1,
    )
    assert "cannot connect" in failed["error"]
    now = datetime.now(UTC)
    assert now + timedelta(seconds=400) < datetime.fromisoformat(failed["retry_at"]) < now + timedelta(seconds=610)
    # the running export and the waiting draft are named by the task ids stamped on their rows
    url = site.settings.database_url
    with session_scope(url) as session:
        hang = session.scalars(select(Export).where(Export.destination == "hang")).one()
        second_study = session.scalars(select(Study).where(Study.study_uid == second)).one()
        hang_task, hang_row, hang_attempts = hang.task_id, hang.id, hang.attempts
        second_id, second_task = second_study.id, second_study.task_id
    assert second_task is not None
    (running,) = _by(items, state="running")
    assert (
        running["id"],
        running["task"],
        running["study_uid"],
        running["destination"],
        running["attempts"],
        running["error"],
        running["worker"],
    ) == (hang_task, EXPORT, first, "hang", hang_attempts, None, worker["hostname"])
    (waiting,) = _by(items, state="waiting")
    assert (
        waiting["id"],
        waiting["task"],
        waiting["queue"],
        waiting["study_uid"],
        waiting["instance_uid"],
        waiting["attempts"],
    ) == (second_task, DRAFT, "draft", second, None, 0)
    assert "worker" not in waiting
    code, shown = site.cli("queue", "show", dead["id"])
    assert (code, shown["export_state"], shown["draft_generation"]) == (1, "dead", 1)
    code, shown = site.cli("queue", "show", running["id"])
    assert (code, shown["state"], shown["destination"], shown["worker"], shown["row"]) == (
        0,
        "running",
        "hang",
        worker["hostname"],
        f"export row {hang_row}",
    )
    code, shown = site.cli("queue", "show", second_task)
    assert (code, shown["state"], shown["study_uid"], shown["row"]) == (0, "waiting", second, f"study row {second_id}")

    # purge the waiting draft: the broker's queue is empty; the spool and the rows stay, and the study's row
    # still says its draft was sent (the sweeper sends it again once sweep_stale_seconds have passed)
    with session_scope(url) as session:
        rows_before = session.scalar(select(func.count(Instance.id)))
        files = session.scalars(select(Instance.spool_path)).all()
    code, purged = site.cli("queue", "purge", "draft", "--yes")
    assert (code, purged["queue"], purged["purged"]) == (0, "draft", 1)
    _, stats = site.cli("queue", "stats")
    draft_row = {row["queue"]: row for row in stats["queues"]}["draft"]
    assert (draft_row["waiting"], draft_row["running"], draft_row["oldest_waiting_seconds"]) == (0, 0, None)
    assert [item["id"] for item in site.items("--queue", "draft", "--state", "waiting")] == [second_task]
    with session_scope(url) as session:
        assert session.scalar(select(func.count(Instance.id))) == rows_before == 6
        assert session.scalars(select(Study.state).where(Study.id == second_id)).one() == "drafting"
    assert all(Path(path).is_file() for path in files)

    # its draft task fails for good (as the worker records it once its retries are spent: the dead letter,
    # and the row no longer says a message is out) ...
    letter = record_dead_letter(
        url,
        task_name=DRAFT,
        task_id=second_task,
        first_arg=second_id,
        attempts=6,
        error="OperationalError: the database went away",
        traceback="Traceback (most recent call last):\nOperationalError",
    )
    record_given_up(url, second_task)
    dead_items = site.items("--state", "dead")
    assert {(item["id"], item["study_uid"]) for item in dead_items} >= {(f"D{letter}", second)}
    assert site.items("--queue", "draft") == _by(dead_items, id=f"D{letter}")
    code, shown = site.cli("queue", "show", second_task)  # the task id now names its dead letter
    assert (code, shown["id"], shown["task_id"]) == (1, f"D{letter}", second_task)
    # ... and `queue retry` with the draft worker back ends with the study drafted
    site.start("worker-draft", "worker", "-Q", "draft", "-c", "1")
    site.wait("draft worker back", lambda: len(site.workers_online()) == 2, timeout=120)
    code, retried = site.cli("queue", "retry", f"D{letter}")
    assert (code, retried["refused"], retried["retried"][0]["id"]) == (0, [], f"D{letter}")
    detail = site.wait("second study drafted", lambda: (d := site.study(second)) and d["state"] in DONE and d)
    assert (detail["state"], detail["draft"]["generation"]) == ("drafted", 1), detail
    assert f"D{letter}" not in {item["id"] for item in site.items("--state", "dead")}
    with session_scope(url) as session:  # sent afresh under a new task id, and done: no message out, no lease
        study = session.get_one(Study, second_id)
        assert study.task_id not in (None, second_task)
        assert (study.dispatched_at, study.leased_until, study.retry_at) == (None, None, None)
    assert site.items("--queue", "draft") == []

    # studies redraft: the first study again, as generation 2
    code, result = site.cli("studies", "redraft", first)
    assert (code, result) == (0, {"study_uid": first, "generation": 2})
    detail = site.wait(
        "first study drafted again",
        lambda: (d := site.study(first)) and d["draft"]["generation"] == 2 and d["state"] == "drafted" and d,
    )
    assert detail["generation"] == 2
