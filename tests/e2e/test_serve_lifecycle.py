"""``predraft serve``'s parts never outlive it (issue 14, item 7).

A SIGINT at any moment of the start-up stops serve and every part it started; a serve killed outright
(SIGKILL, the OOM killer) takes its parts with it, so the next serve gets the ports at once.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import free_port
from tests.e2e.conftest import PREDRAFT

pytestmark = pytest.mark.slow

UP_TIMEOUT = 120.0
EXIT_TIMEOUT = 30.0
CHILDREN_GONE_TIMEOUT = 10.0
IMPORT_SECONDS = 2.0  # more than the console script takes to import the serve command on a loaded machine


@dataclass
class Serve:
    process: subprocess.Popen[str]
    env: dict[str, str]
    log_path: Path
    http_port: int

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def _launch(tmp_path: Path, name: str, ports: dict[str, str] | None = None) -> Serve:
    """Start ``predraft serve`` as a user would (the console script), on free ports unless ``ports``."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("PREDRAFT_")}
    env.update(
        ports
        or {
            "PREDRAFT_DIMSE_PORT": str(free_port()),
            "PREDRAFT_HTTP_PORT": str(free_port()),
            "PREDRAFT_LISTENER_METRICS_PORT": str(free_port()),
            "PREDRAFT_WORKER_METRICS_PORT": str(free_port()),
        }
    )
    env["PREDRAFT_VAR_DIR"] = str(tmp_path / "var")
    log_path = tmp_path / f"{name}.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [PREDRAFT, "serve"], env=env, stdout=log, stderr=subprocess.STDOUT, text=True, cwd=tmp_path
        )
    return Serve(process, env, log_path, int(env["PREDRAFT_HTTP_PORT"]))


def _ports(serve: Serve) -> dict[str, str]:
    return {key: value for key, value in serve.env.items() if key.endswith("_PORT")}


def _stat(pid: int) -> tuple[int, str, int] | None:
    """(parent pid, state, start time) of ``pid`` from /proc, or None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = text[text.rindex(")") + 2 :].split()
    return int(fields[1]), fields[0], int(fields[19])


def _descendants(pid: int) -> set[tuple[int, int]]:
    """Every live descendant of ``pid``, as (pid, start time): the start time tells a reused pid apart."""
    parents: dict[int, list[tuple[int, int]]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (stat := _stat(int(entry.name))) is not None and stat[1] != "Z":
            parents.setdefault(stat[0], []).append((int(entry.name), stat[2]))
    found: set[tuple[int, int]] = set()
    todo = [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.add(child)
            todo.append(child[0])
    return found


def _alive(processes: set[tuple[int, int]]) -> set[tuple[int, int]]:
    return {
        (pid, start)
        for pid, start in processes
        if (stat := _stat(pid)) is not None and stat[2] == start and stat[1] != "Z"
    }


def _wait_gone(processes: set[tuple[int, int]], timeout: float) -> set[tuple[int, int]]:
    """Poll until none of ``processes`` lives, at most ``timeout`` seconds; return those still alive."""
    deadline = time.monotonic() + timeout
    while (alive := _alive(processes)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return alive


def _watch(serve: Serve, until: float | None) -> set[tuple[int, int]]:
    """Record serve's descendants until ``until`` seconds after its start, or (None) until it is up."""
    seen: set[tuple[int, int]] = set()
    started = time.monotonic()
    while True:
        seen |= _descendants(serve.process.pid)
        if serve.process.poll() is not None:
            raise AssertionError(f"predraft serve exited early:\n{serve.log()[-4000:]}")
        if until is not None and time.monotonic() - started >= until:
            return seen
        if until is None and "predraft is up" in serve.log():
            return seen | _descendants(serve.process.pid)
        if time.monotonic() - started > UP_TIMEOUT:
            raise AssertionError(f"predraft serve not up after {UP_TIMEOUT} s:\n{serve.log()[-4000:]}")
        time.sleep(0.05)


def _healthz(port: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as response:
        return response.status


def _stop_for_good(serve: Serve, seen: set[tuple[int, int]]) -> None:
    """Leave nothing running whatever a test found: serve and every part it was seen to start."""
    if serve.process.poll() is None:
        serve.process.kill()
        serve.process.wait(10)
    for pid, _ in _alive(seen):
        os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("moment", [0.5, 2.0, 5.0, None], ids=["0.5s", "2s", "5s", "up"])
def test_sigint_at_any_moment_of_the_start_up_stops_serve_and_every_part(tmp_path, moment):
    serve = _launch(tmp_path, "serve")
    seen: set[tuple[int, int]] = set()
    try:
        seen = _watch(serve, moment)
        serve.process.send_signal(signal.SIGINT)
        deadline = time.monotonic() + EXIT_TIMEOUT
        while serve.process.poll() is None and time.monotonic() < deadline:
            seen |= _descendants(serve.process.pid)  # a part started while serve stops must go too
            time.sleep(0.05)
        assert serve.process.poll() is not None, f"serve still runs {EXIT_TIMEOUT} s after SIGINT:\n{serve.log()}"
        assert _wait_gone(seen, CHILDREN_GONE_TIMEOUT) == set(), f"parts outlived serve:\n{serve.log()[-4000:]}"
        if moment is None or moment >= IMPORT_SECONDS:  # earlier, Python may still be importing the command:
            assert "Traceback" not in serve.log()  # its KeyboardInterrupt ends it then, nothing being started
        if moment is None:
            assert serve.process.returncode == 0 and "all parts stopped" in serve.log()
    finally:
        _stop_for_good(serve, seen)


def test_a_killed_serve_takes_its_parts_and_the_next_serve_gets_the_ports(tmp_path):
    first = _launch(tmp_path, "first")
    second = None
    seen: set[tuple[int, int]] = set()
    try:
        seen = _watch(first, None)
        assert len(seen) >= 3, f"expected the listener, worker and web parts: {seen}"
        first.process.kill()
        first.process.wait(10)
        assert _wait_gone(seen, CHILDREN_GONE_TIMEOUT) == set(), "parts outlived a killed serve"

        second = _launch(tmp_path, "second", ports=_ports(first))
        seen |= _watch(second, None)
        assert _healthz(second.http_port) == 200
        second.process.send_signal(signal.SIGINT)
        assert second.process.wait(EXIT_TIMEOUT) == 0, second.log()[-4000:]
        assert "Address already in use" not in second.log()
    finally:
        _stop_for_good(first, seen)
        if second is not None:
            _stop_for_good(second, seen)
