"""Faults on Redis + PostgreSQL: a worker SIGKILLed while it classifies, and Redis (no persistence)
restarted in the middle of a batch of 20 studies. Each time every study ends drafted exactly once.

The parts run as a hospital runs them: ``predraft listen`` and ``predraft worker`` processes (the
console script), a Redis server of the test's own on a free port (so it can be killed and restarted
without touching anyone else's), and a fresh PostgreSQL database. The listener's sweeper, told to act
after a few seconds instead of minutes, sends again what the broker lost.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pydicom
import pytest
from sqlalchemy import func, select

from predraft.core.db import session_scope
from predraft.core.schema import Draft, Instance, Study, utcnow
from predraft.core.states import InstanceState, StudyState
from predraft.models.phantoms import write_demo_study
from predraft.workers.app import QUEUES
from tests.conftest import free_port
from tests.e2e.conftest import PREDRAFT

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

AE = "PREDRAFT"


@contextmanager
def _redis(port: int, work: Path) -> Iterator[subprocess.Popen[bytes]]:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    process = subprocess.Popen(
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(work),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    import redis

    while time.monotonic() < deadline:
        try:
            redis.Redis(port=port).ping()
            break
        except redis.ConnectionError:
            time.sleep(0.1)
    try:
        yield process
    finally:
        process.kill()
        process.wait()


class Cluster:
    """A listener and workers on one Redis and one PostgreSQL database, started by the test."""

    def __init__(self, work: Path, database_url: str, redis_port: int) -> None:
        self.work = work
        self.database_url = database_url
        self.broker_url = f"redis://127.0.0.1:{redis_port}/0"
        self.dimse_port = free_port()
        self.env = {key: value for key, value in os.environ.items() if not key.startswith("PREDRAFT_")}
        self.env.update(
            {
                "PREDRAFT_VAR_DIR": str(work / "var"),
                "PREDRAFT_DATABASE_URL": database_url,
                "PREDRAFT_BROKER_URL": self.broker_url,
                "PREDRAFT_DIMSE_PORT": str(self.dimse_port),
                "PREDRAFT_HTTP_PORT": str(free_port()),
                "PREDRAFT_QUIET_SECONDS": "3600",
                "PREDRAFT_STABILITY_POLL_SECONDS": "0.3",
                "PREDRAFT_SWEEP_INTERVAL_SECONDS": "1",
                "PREDRAFT_SWEEP_STALE_SECONDS": "6",
                "PREDRAFT_SPOOL_MIN_FREE_BYTES": "0",
            }
        )
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, *argv: str, **env: str) -> subprocess.Popen[bytes]:
        log = (self.work / f"{name}.log").open("ab")
        process = subprocess.Popen(
            [PREDRAFT, *argv], env={**self.env, **env}, stdout=log, stderr=subprocess.STDOUT, cwd=self.work
        )
        self.processes[name] = process
        return process

    def wait_for_listener(self) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if (
                subprocess.run(
                    ["echoscu", "-aec", AE, "127.0.0.1", str(self.dimse_port)], capture_output=True
                ).returncode
                == 0
            ):
                return
            time.sleep(0.3)
        raise AssertionError("listener not up:\n" + (self.work / "listener.log").read_text()[-3000:])

    def send(self, files: list[Path]) -> None:
        result = subprocess.run(
            ["storescu", "-aet", "STORESCU", "-aec", AE, "127.0.0.1", str(self.dimse_port), *map(str, files)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr

    def classify_leases(self) -> list[str]:
        """The workers that hold a live lease on a prepared instance (a classify task running)."""
        with session_scope(self.database_url) as session:
            return list(
                session.scalars(
                    select(Instance.leased_by).where(
                        Instance.state == InstanceState.PREPARED, Instance.leased_until >= utcnow()
                    )
                )
            )

    def drafts_per_study(self, study_uids: list[str]) -> dict[str, int]:
        with session_scope(self.database_url) as session:
            rows = session.execute(
                select(Study.study_uid, Study.state, func.count(Draft.id))
                .outerjoin(Draft, Draft.study_id == Study.id)
                .group_by(Study.id)
            ).all()
        return {uid: count for uid, state, count in rows if uid in study_uids and state == StudyState.DRAFTED}

    def wait_all_drafted(self, study_uids: list[str], timeout: float) -> dict[str, int]:
        deadline = time.monotonic() + timeout
        drafted: dict[str, int] = {}
        while time.monotonic() < deadline:
            drafted = self.drafts_per_study(study_uids)
            if len(drafted) == len(study_uids):
                return drafted
            time.sleep(0.5)
        logs = "\n".join(f"--- {p.name}\n{p.read_text()[-2000:]}" for p in self.work.glob("*.log"))
        raise AssertionError(f"{len(drafted)} of {len(study_uids)} studies drafted after {timeout} s\n{logs}")

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()


@pytest.fixture
def cluster(tmp_path: Path, postgres_url: str) -> Iterator[tuple[Cluster, int]]:
    if shutil.which("storescu") is None:
        pytest.skip("dcmtk is not installed")
    port = free_port()
    with _redis(port, tmp_path):
        cluster = Cluster(tmp_path, postgres_url, port)
        try:
            yield cluster, port
        finally:
            cluster.stop()


def _studies(tmp_path: Path, count: int, first_seed: int) -> tuple[list[list[Path]], list[str]]:
    studies = [
        write_demo_study(tmp_path / f"study-{seed}", seed=seed) for seed in range(first_seed, first_seed + count)
    ]
    files = [[image.path for image in images] for images in studies]
    uids = [str(pydicom.dcmread(paths[0], stop_before_pixels=True).StudyInstanceUID) for paths in files]
    return files, uids


def test_a_worker_killed_while_it_classifies_loses_no_study(cluster, tmp_path):
    cluster, _ = cluster
    cluster.start("listener", "listen")
    # A long batching wait keeps each classify task running (its instance leased to the worker) for seconds.
    worker = cluster.start(
        "worker-1",
        "worker",
        "--queues",
        ",".join(QUEUES),
        PREDRAFT_CLASSIFY_BATCH_WAIT_MS="4000",
        PREDRAFT_CLASSIFY_BATCH_SIZE="64",
    )
    cluster.wait_for_listener()
    files, uids = _studies(tmp_path, 3, first_seed=40)
    for paths in files:
        cluster.send(paths)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if cluster.classify_leases():
            break
        assert worker.poll() is None, (tmp_path / "worker-1.log").read_text()[-3000:]
        time.sleep(0.1)
    else:
        raise AssertionError("no classify task ever ran:\n" + (tmp_path / "worker-1.log").read_text()[-3000:])
    worker.send_signal(signal.SIGKILL)  # as the OOM killer or a lost host would
    worker.wait()
    assert cluster.drafts_per_study(uids) == {} or len(cluster.drafts_per_study(uids)) < len(uids)
    cluster.start("worker-2", "worker", "--queues", ",".join(QUEUES))  # the restarted worker
    drafted = cluster.wait_all_drafted(uids, timeout=240)
    assert drafted == {uid: 1 for uid in uids}


def test_redis_restarted_in_the_middle_of_twenty_studies(cluster, tmp_path):
    cluster, port = cluster
    cluster.start("listener", "listen")
    cluster.start("worker", "worker", "--queues", ",".join(QUEUES))
    cluster.wait_for_listener()
    files, uids = _studies(tmp_path, 20, first_seed=60)
    for paths in files[:10]:
        cluster.send(paths)
    # Redis without persistence dies with whatever it held, and comes back empty on the same port.
    redis_process = next(p for p in _redis_processes(port))
    os.kill(redis_process, signal.SIGKILL)
    time.sleep(1.0)
    with _redis(port, tmp_path):
        for paths in files[10:]:
            cluster.send(paths)
        drafted = cluster.wait_all_drafted(uids, timeout=420)
        assert drafted == {uid: 1 for uid in uids}
        listener_log = (tmp_path / "listener.log").read_text()
        assert "sweeper sent again" in listener_log


def _redis_processes(port: int) -> list[int]:
    result = subprocess.run(["pgrep", "-f", f"redis-server 127.0.0.1:{port}"], capture_output=True, text=True)
    return [int(pid) for pid in result.stdout.split()]
