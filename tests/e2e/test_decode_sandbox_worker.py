"""A real ``predraft worker`` (two threads) given two images whose RLE stream makes pylibjpeg-rle panic and a
good one: the two bad instances end in ERROR with the reason, the good one is prepared, the worker lives on,
counts the failures, and leaves no decode process behind when it stops (issue 14, item 1)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from predraft.core.db import session_scope, upgrade
from predraft.core.schema import Instance
from predraft.core.settings import Settings
from predraft.core.states import InstanceState
from predraft.workers.app import PREPARE, create_celery
from tests import hostile_decoders as hostile
from tests.conftest import embedded_broker, free_port, real_file, record_file
from tests.e2e.conftest import PREDRAFT

pytestmark = pytest.mark.slow

RLE_LOSSLESS = "1.2.840.10008.1.2.5"
#: Bound on the whole run of the three prepare tasks (each takes well under a second when the worker is sound).
PREPARED_WITHIN_SECONDS = 90


def _states(url: str, ids: list[int]) -> dict[int, tuple[str, str | None]]:
    with session_scope(url) as session:
        return {i: (session.get(Instance, i).state, session.get(Instance, i).error) for i in ids}


def _children(pid: int) -> set[int]:
    """The processes whose parent is ``pid`` (any of its threads)."""
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        found.update(int(child) for child in (task / "children").read_text().split())
    return found


def _gone(pids: set[int], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not [
            pid
            for pid in pids
            if Path(f"/proc/{pid}").exists() and Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
        ]:
            return True
        time.sleep(0.1)
    return False


@pytest.fixture
def worker(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], dict[str, str]]]:
    database_url = f"sqlite:///{tmp_path}/db.sqlite"
    upgrade(database_url)
    env = {key: value for key, value in os.environ.items() if not key.startswith("PREDRAFT_")}
    env.update(
        {
            "PREDRAFT_VAR_DIR": str(tmp_path / "var"),
            "PREDRAFT_DATABASE_URL": database_url,
            "PREDRAFT_BROKER_URL": embedded_broker(tmp_path / "broker.sqlite"),
            "PREDRAFT_WORKER_METRICS_PORT": str(free_port()),
        }
    )
    with (tmp_path / "worker.log").open("ab") as log:
        process = subprocess.Popen(
            [PREDRAFT, "worker", "--queues", "prepare", "--concurrency", "2"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
        )
    try:
        yield process, env
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.mark.timeout(240)
def test_panicking_images_end_in_error_and_the_worker_prepares_the_rest(worker, tmp_path):
    process, env = worker
    url = env["PREDRAFT_DATABASE_URL"]
    bad = [record_file(url, hostile.corrupt_rle(real_file("RG2_RLE.dcm"), tmp_path / f"bad{i}.dcm")) for i in (1, 2)]
    good = record_file(url, real_file("RG2_UNC.dcm"))
    app = create_celery(Settings(broker_url=env["PREDRAFT_BROKER_URL"], database_url=url))
    for instance_id in [*bad, good]:  # both threads get a panicking image first
        app.send_task(PREPARE, args=[instance_id])

    deadline = time.monotonic() + PREPARED_WITHIN_SECONDS
    while time.monotonic() < deadline and any(
        state == InstanceState.RECEIVED for state, _ in _states(url, [*bad, good]).values()
    ):
        time.sleep(0.3)
    states = _states(url, [*bad, good])
    log = (tmp_path / "worker.log").read_text()
    assert states[good] == (InstanceState.PREPARED, None), log[-3000:]
    for instance_id in bad:
        state, error = states[instance_id]
        assert state == InstanceState.ERROR
        assert error.startswith(f"could not be prepared (error) in transfer syntax {RLE_LOSSLESS}: PanicException")
    assert process.poll() is None, log[-3000:]
    metrics = (
        urllib.request.urlopen(f"http://127.0.0.1:{env['PREDRAFT_WORKER_METRICS_PORT']}/metrics", timeout=10)
        .read()
        .decode()
    )
    assert f'predraft_decode_failures_total{{reason="error",transfer_syntax="{RLE_LOSSLESS}"}} 2.0' in metrics, [
        line for line in metrics.splitlines() if "decode" in line
    ]

    children = _children(process.pid)
    assert children, "the worker runs no decode process"
    process.send_signal(signal.SIGTERM)
    process.wait(60)
    assert _gone(children, 10), f"decode processes {children} outlived the worker"
