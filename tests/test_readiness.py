"""``/readyz`` against real parts: a Redis of the test's own that it stops and starts again, and a spool whose
file system it fills past the free-space floor and frees again. ``/healthz`` stays 200 throughout."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from predraft.core import db
from predraft.core.settings import get_settings
from predraft.http import create_app
from tests.conftest import free_port

FILLER_BYTES = 96 * 1024 * 1024


class RedisServer:
    """A redis-server on a free loopback port, without persistence, that the test can stop and restart."""

    def __init__(self, work: Path) -> None:
        if shutil.which("redis-server") is None:
            pytest.skip("redis-server is not installed")
        self.port = free_port()
        self.work = work
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.work),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while (
            subprocess.run(["redis-cli", "-p", str(self.port), "ping"], capture_output=True, text=True).stdout.strip()
            != "PONG"
        ):
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _client(tmp_path: Path, **overrides: object) -> TestClient:
    settings = get_settings(var_dir=tmp_path / "var", session_secret="s" * 40, **overrides)
    db.upgrade(settings.database_url)
    return TestClient(create_app(settings))


def test_ready_then_unready_while_the_broker_is_stopped_then_ready_again(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    client = _client(tmp_path, broker_url=redis_server.url, spool_min_free_bytes=0)
    ready = client.get("/readyz")
    assert ready.status_code == 200, ready.text
    body = ready.json()
    assert body["status"] == "ready" and body["failing"] == []
    assert set(body["checks"]) == {"database", "broker", "model", "spool"}
    assert all(check["ok"] for check in body["checks"].values())
    assert "weights verified" in body["checks"]["model"]["detail"]

    redis_server.stop()
    started = time.monotonic()
    down = client.get("/readyz")
    assert time.monotonic() - started < 10  # a dead broker is a quick answer, not a hang
    assert down.status_code == 503
    assert down.json()["failing"] == ["broker"]
    assert str(redis_server.port) in down.json()["checks"]["broker"]["detail"]
    assert client.get("/healthz").status_code == 200  # the process is still up

    redis_server.start()
    assert client.get("/readyz").status_code == 200


def test_unready_below_the_spool_floor_and_ready_once_space_is_freed(tmp_path: Path, redis_server: RedisServer) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    filler = tmp_path / "filler.bin"
    with filler.open("wb") as stream:  # the space that freeing the disk gives back
        for _ in range(FILLER_BYTES // (1 << 20)):
            stream.write(b"\0" * (1 << 20))
    # A floor a third of the filler above what is free now: below it until the filler is deleted.
    floor = shutil.disk_usage(spool).free + FILLER_BYTES // 3
    client = _client(tmp_path, broker_url=redis_server.url, spool_dir=spool, spool_min_free_bytes=floor)

    full = client.get("/readyz")
    assert full.status_code == 503, full.text
    assert full.json()["failing"] == ["spool"]
    assert "free-space floor" in full.json()["checks"]["spool"]["detail"]

    filler.unlink()
    freed = client.get("/readyz")
    assert freed.status_code == 200, freed.text
    assert list(spool.glob("**/*.part")) == []  # the writability probe leaves nothing behind


def test_a_broken_model_is_named(tmp_path: Path, redis_server: RedisServer) -> None:
    from predraft.models.factory import write_untrained_model

    card = write_untrained_model(tmp_path / "model", architecture="resnet18", input_size=64)
    client = _client(tmp_path, broker_url=redis_server.url, model=card, spool_min_free_bytes=0)
    assert client.get("/readyz").status_code == 200
    weights = card.parent / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8] + b"corrupt!")
    broken = client.get("/readyz")
    assert broken.status_code == 503 and broken.json()["failing"] == ["model"]
    assert "sha256" in broken.json()["checks"]["model"]["detail"]
