"""A real ``predraft serve`` per test: on the embedded default, or on Redis + PostgreSQL.

The deployment is started as a user would start it (the console script, settings from PREDRAFT_*
variables), on free ports, and stopped with SIGINT as Ctrl-C would; the stop is checked too.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import free_port, wait_until

PREDRAFT = str(Path(sys.executable).parent / "predraft")
REDIS_URL = os.environ.get("PREDRAFT_TEST_REDIS", "redis://127.0.0.1:6379")


#: Prometheus samples by (name, labels).
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(port: int) -> Samples:
    """Every sample of the /metrics page on ``port`` (prometheus-client's own parser reads it)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        assert response.status == 200
        text = response.read().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


@dataclass
class Deployment:
    env: dict[str, str]
    var_dir: Path
    dimse_port: int
    http_port: int
    process: subprocess.Popen[str]
    log_path: Path
    listener_metrics_port: int
    worker_metrics_port: int

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([PREDRAFT, *args], env=self.env, capture_output=True, text=True, timeout=60)
        if check and result.returncode != 0:
            raise AssertionError(f"predraft {' '.join(args)} exited {result.returncode}: {result.stderr}")
        return result

    def study(self, study_uid: str) -> dict | None:
        result = self.cli("studies", "show", study_uid, "--json", check=False)
        # exit 1: shown, with a problem (the study in error, a dead export); else an unknown study (or exit 2)
        return json.loads(result.stdout) if result.returncode in (0, 1) and result.stdout.strip() else None

    def associations_open(self) -> float:
        """The listener's gauge of DIMSE associations established and not yet ended (its /metrics)."""
        samples = scrape(self.listener_metrics_port)
        key = ("predraft_dimse_associations_open", frozenset())
        assert key in samples, f"the listener's /metrics has no {key[0]}"
        return samples[key]

    def wait_until_no_association_is_open(self, timeout: float = 30.0) -> None:
        """Every association a sender opened has ended: whatever it sent has been answered."""
        wait_until(lambda: self.associations_open() == 0, timeout=timeout, what="DIMSE associations still open")

    def wait_for_study(self, study_uid: str, timeout: float = 120.0) -> dict:
        """Poll ``predraft studies show --json`` until the study is drafted, out of scope or in error."""
        deadline = time.monotonic() + timeout
        detail = None
        while time.monotonic() < deadline:
            detail = self.study(study_uid)
            if detail and detail["state"] in {"drafted", "error", "out_of_scope"}:
                return detail
            assert self.process.poll() is None, f"predraft serve died:\n{self.log_path.read_text()[-4000:]}"
            time.sleep(0.5)
        raise AssertionError(
            f"study {study_uid} not done after {timeout} s: {detail}\n{self.log_path.read_text()[-4000:]}"
        )

    def storescu(self, *files: Path, extra: tuple[str, ...] = ()) -> None:
        """Send ``files`` with dcmtk's storescu (``extra``: e.g. -xv to propose JPEG 2000 as the file has it)."""
        if shutil.which("storescu") is None:
            pytest.skip("dcmtk's storescu is not installed (apt-get install dcmtk)")
        result = subprocess.run(
            [
                "storescu",
                "-R",
                "-nh",
                "-aet",
                "STORESCU",
                "-aec",
                "PREDRAFT",
                *extra,
                "127.0.0.1",
                str(self.dimse_port),
                *map(str, files),
            ],
            env={**os.environ, "TCP_NODELAY": "1"},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0 and "Store Failed" not in result.stderr, result.stderr


def _ready(deployment: Deployment, timeout: float = 120.0) -> None:
    url = f"http://127.0.0.1:{deployment.http_port}/healthz"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if deployment.process.poll() is not None:
            raise AssertionError(f"predraft serve exited early:\n{deployment.log_path.read_text()[-4000:]}")
        if "predraft is up" in deployment.log_path.read_text():
            with urllib.request.urlopen(url, timeout=2) as response:
                assert response.status == 200
            return
        time.sleep(0.3)
    raise AssertionError(f"predraft serve not up after {timeout} s:\n{deployment.log_path.read_text()[-4000:]}")


@pytest.fixture
def postgres_and_redis(postgres_url: str) -> Iterator[dict[str, str]]:
    """A fresh PostgreSQL database and a flushed Redis database number."""
    redis = pytest.importorskip("redis")
    redis_db = 1 + uuid.uuid4().int % 15
    client = redis.Redis.from_url(f"{REDIS_URL}/{redis_db}")
    client.flushdb()
    try:
        yield {"PREDRAFT_DATABASE_URL": postgres_url, "PREDRAFT_BROKER_URL": f"{REDIS_URL}/{redis_db}"}
    finally:
        client.flushdb()


def _start(tmp_path: Path, extra_env: dict[str, str]) -> Iterator[Deployment]:
    var_dir = tmp_path / "var"
    env = {key: value for key, value in os.environ.items() if not key.startswith("PREDRAFT_")}
    dimse_port, http_port = free_port(), free_port()
    listener_metrics_port, worker_metrics_port = free_port(), free_port()
    env.update(
        {
            "PREDRAFT_VAR_DIR": str(var_dir),
            "PREDRAFT_DIMSE_PORT": str(dimse_port),
            "PREDRAFT_HTTP_PORT": str(http_port),
            "PREDRAFT_LISTENER_METRICS_PORT": str(listener_metrics_port),
            "PREDRAFT_WORKER_METRICS_PORT": str(worker_metrics_port),
            "PREDRAFT_QUIET_SECONDS": "4",
            "PREDRAFT_STABILITY_POLL_SECONDS": "0.5",
            # One listener process (the same supervisor and code path as several): each more is a spawned
            # interpreter to start and stop in every test; tests/e2e/test_listener_processes.py runs several.
            "PREDRAFT_DIMSE_PROCESSES": "1",
            **extra_env,
        }
    )
    log_path = tmp_path / "serve.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [PREDRAFT, "serve"], env=env, stdout=log, stderr=subprocess.STDOUT, text=True, cwd=tmp_path
        )
    deployment = Deployment(
        env, var_dir, dimse_port, http_port, process, log_path, listener_metrics_port, worker_metrics_port
    )
    try:
        _ready(deployment)
        yield deployment
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                code = process.wait(timeout=40)
            except subprocess.TimeoutExpired:
                process.kill()
                raise AssertionError("predraft serve did not stop within 40 s of SIGINT") from None
            assert code == 0, f"predraft serve exited {code} on SIGINT:\n{log_path.read_text()[-3000:]}"
            assert "all parts stopped" in log_path.read_text()


@pytest.fixture
def embedded(tmp_path: Path) -> Iterator[Deployment]:
    yield from _start(tmp_path, {})


@pytest.fixture
def distributed(tmp_path: Path, postgres_and_redis: dict[str, str]) -> Iterator[Deployment]:
    yield from _start(tmp_path, postgres_and_redis)


@pytest.fixture(params=["embedded", pytest.param("redis_postgres", marks=pytest.mark.postgres)])
def deployment(request: pytest.FixtureRequest) -> Deployment:
    return request.getfixturevalue("embedded" if request.param == "embedded" else "distributed")


#: Debian's Chromium, which the browser tests drive with Playwright (never a browser Playwright downloads).
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]


@pytest.fixture
def browser() -> Iterator[object]:
    """Headless Chromium launched by Playwright, closed after the test."""
    sync_api = pytest.importorskip("playwright.sync_api")
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is absent (apt-get install chromium)")
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()
