"""Metrics and logs of a running site: ``predraft serve`` (embedded default) with the listener's and the worker's
Prometheus endpoints on, JSON logs, and an export destination that refuses every connection.

One three-view phantom study goes in with storescu; the test scrapes the web app's, the listener's and the
worker's ``/metrics`` before and after and checks that each counter and histogram moved by exactly what that
study did: three instances and their bytes, one association, three prepare and three classify tasks, one
draft, the hips through the micro-batcher, one time-to-draft observation equal to the study's recorded time
to draft, one failed export; then a radiologist accepts the draft and the review counter moves by one.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pydicom
import pytest

from predraft.models.phantoms import write_demo_study
from tests.e2e.conftest import PREDRAFT, Deployment, Samples, _start, scrape
from tests.unit.webapp import Client, csrf_in

pytestmark = pytest.mark.slow

PASSWORD = "a long enough password"


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def wait_for(
    read: Callable[[], Samples], predicate: Callable[[Samples], bool], what: str, timeout: float = 20.0
) -> Samples:
    deadline = time.monotonic() + timeout
    while True:
        samples = read()
        if predicate(samples) or time.monotonic() > deadline:
            assert predicate(samples), f"{what} not seen within {timeout} s"
            return samples
        time.sleep(0.2)


@contextmanager
def closed_port() -> Iterator[int]:
    """A loopback port that refuses connections (bound, never listening) while the block runs."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Deployment]:
    with closed_port() as refusing:
        destination = {
            "kind": "dimse",
            "name": "pacs",
            "ae_title": "PACS",
            "host": "127.0.0.1",
            "port": refusing,
            "timeout": 3,
        }
        env = {
            "PREDRAFT_LOG_FORMAT": "json",
            "PREDRAFT_EXPORT_DESTINATIONS": json.dumps([destination]),
            "PREDRAFT_EXPORT_RETRY_DELAY_SECONDS": "600",
            "PREDRAFT_COOKIE_SECURE": "false",
        }
        yield from _start(tmp_path, env)


def test_metrics_move_by_what_one_study_did(site: Deployment, tmp_path: Path) -> None:
    ports = {"web": site.http_port, "listener": site.listener_metrics_port, "worker": site.worker_metrics_port}
    before = {part: scrape(port) for part, port in ports.items()}

    demo = write_demo_study(tmp_path / "demo")
    study_uid = str(pydicom.dcmread(demo[0].path, stop_before_pixels=True).StudyInstanceUID)
    site.storescu(*[image.path for image in demo])
    detail = site.wait_for_study(study_uid)
    assert detail["state"] == "drafted", detail

    worker = wait_for(
        lambda: scrape(site.worker_metrics_port),
        lambda s: (
            value(s, "predraft_exports_total", destination="pacs", outcome="failed")
            - value(before["worker"], "predraft_exports_total", destination="pacs", outcome="failed")
            >= 1
        ),
        "the failed export",
    )
    listener = wait_for(
        lambda: scrape(site.listener_metrics_port),
        lambda s: value(s, "predraft_dimse_associations_open") == 0,
        "the association closed",
    )
    web = scrape(site.http_port)

    def delta(part: str, after: Samples, name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before[part], name, **labels)

    # listener: three instances stored over DIMSE, their bytes as spooled, one association
    spooled = sorted((site.var_dir / "spool" / "incoming" / study_uid).glob("*.dcm"))
    assert len(spooled) == 3
    assert delta("listener", listener, "predraft_instances_received_total", transport="dimse", outcome="stored") == 3
    assert delta("listener", listener, "predraft_received_bytes_total", transport="dimse") == sum(
        path.stat().st_size for path in spooled
    )
    assert delta("listener", listener, "predraft_dimse_associations_total", outcome="established") == 1

    # worker: each task's latency histogram counted its runs; the batcher saw every hip image
    def runs(task: str) -> float:
        return delta("worker", worker, "predraft_task_duration_seconds_count", task=task, state="SUCCESS")

    assert (runs("predraft.prepare"), runs("predraft.classify"), runs("predraft.draft")) == (3, 3, 1)
    hips = sum(len(instance["predictions"]) for instance in detail["instances"])
    assert hips == 4  # the AP pelvis gives two hips, the frog-leg and the cross-table lateral one each
    assert delta("worker", worker, "predraft_classify_batch_size_sum", device="cpu") == hips
    batches = delta("worker", worker, "predraft_classify_batch_size_count", device="cpu")
    assert 1 <= batches <= 3
    assert delta("worker", worker, "predraft_classify_inference_seconds_count", device="cpu") == batches
    assert delta("worker", worker, "predraft_time_to_draft_seconds_count") == 1
    recorded = detail["timings"]["seconds_from_last_instance"]["drafted"]
    assert delta("worker", worker, "predraft_time_to_draft_seconds_sum") == pytest.approx(recorded, abs=0.5)
    assert delta("worker", worker, "predraft_exports_total", destination="pacs", outcome="failed") == 1
    assert delta("worker", worker, "predraft_exports_total", destination="pacs", outcome="sent") == 0

    # web: the queue depths read from the broker; nothing left waiting but the export's retry
    assert value(web, "predraft_queue_depth_up") == 1
    for queue in ("prepare", "classify", "draft"):
        assert ("predraft_queue_messages_waiting", frozenset({("queue", queue)})) in web and value(
            web, "predraft_queue_messages_waiting", queue=queue
        ) == 0

    # a radiologist accepts the draft: the web app counts the review
    added = subprocess.run(
        [PREDRAFT, "users", "add", "rita", "--role", "radiologist", "--password-stdin"],
        input=PASSWORD + "\n",
        env=site.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert added.returncode == 0, added.stderr
    client = Client(f"http://127.0.0.1:{site.http_port}")
    assert client.login("rita", PASSWORD).status_code == 200
    page = client.get(f"/studies/{study_uid}").text
    draft_id = page.split('name="draft_id" value="', 1)[1].split('"', 1)[0]
    done = client.post(
        f"/studies/{study_uid}/review",
        {"csrf_token": csrf_in(page), "draft_id": draft_id, "action": "accepted", "text": detail["draft"]["text"]},
    )
    assert done.status_code == 200 and "Review recorded: accepted" in done.text, done.text[:500]
    assert delta("web", scrape(site.http_port), "predraft_reviews_total", action="accepted") == 1


def test_logs_are_json_lines_without_patient_data(site: Deployment, tmp_path: Path) -> None:
    demo = write_demo_study(tmp_path / "demo")
    study_uid = str(pydicom.dcmread(demo[0].path, stop_before_pixels=True).StudyInstanceUID)
    site.storescu(*[image.path for image in demo])
    assert site.wait_for_study(study_uid)["state"] == "drafted"

    records = [json.loads(line) for line in site.log_path.read_text().splitlines() if line.startswith("{")]
    assert {"time", "level", "process", "logger", "message"} <= set(records[0])
    loggers = {record["logger"] for record in records}
    assert any(name.startswith("predraft.listener.") for name in loggers), loggers  # the listener's own lines
    assert any(name.startswith("predraft.workers.") for name in loggers), loggers  # the worker's
    assert any(name.startswith("uvicorn") for name in loggers), loggers  # the web server's, through ours
    text = site.log_path.read_text()
    assert "PHANTOM" not in text and "DEMO" not in text.replace("predraft-demo", "")  # no patient name or ID


def test_a_taken_metrics_port_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {
            **{key: value for key, value in os.environ.items() if not key.startswith("PREDRAFT_")},
            "PREDRAFT_VAR_DIR": str(tmp_path / "var"),
            "PREDRAFT_WORKER_METRICS_PORT": str(port),
        }
        subprocess.run([PREDRAFT, "db", "upgrade"], env=env, check=True, capture_output=True, timeout=60)
        result = subprocess.run(
            [PREDRAFT, "worker", "-Q", "draft"], env=env, capture_output=True, text=True, timeout=60
        )
    assert result.returncode == 1
    assert f"cannot serve metrics on 127.0.0.1:{port}" in result.stderr, result.stderr
