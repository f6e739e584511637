"""Which serverless Celery broker for the embedded default? Measures kombu's SQLAlchemy (SQLite)
transport against its filesystem transport, in the same run, with the worker settings predraft uses
(threads pool, 2 threads, prefetch 1, acks late).

For each transport: start a real worker process, send N tiny tasks from this process, and time until
every task has run (send-to-done latency of the batch), plus the latency of single tasks sent one at a
time (what a study sees at each step). Prints and writes JSON (bench/results/broker.json).

    .venv/bin/python bench/broker.py [--tasks 200] [--singles 10]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from celery import Celery

ROOT = Path(__file__).resolve().parent


def _app(broker: str, transport_options: dict) -> Celery:
    app = Celery("bench", broker=broker, include=["broker_tasks"])
    app.conf.update(
        task_ignore_result=True,
        task_acks_late=True,
        worker_prefetch_multiplier=1,
        broker_transport_options=transport_options,
        broker_connection_retry_on_startup=True,
    )
    return app


def _wait(done: Path, count: int, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while len(os.listdir(done)) < count:
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {len(os.listdir(done))} of {count} tasks done after {timeout} s")
        time.sleep(0.01)


def measure(name: str, broker: str, transport_options: dict, tasks: int, singles: int, work: Path) -> dict:
    done = work / f"{name}-done"
    done.mkdir()
    env = {**os.environ, "BENCH_DONE_DIR": str(done), "PYTHONPATH": str(ROOT)}
    worker_code = (
        f"import json,sys; sys.path.insert(0, {str(ROOT)!r}); from broker import _app; "
        f"_app({broker!r}, json.loads({json.dumps(transport_options)!r})).worker_main(['worker','-P','threads',"
        "'-c','2','--loglevel','WARNING','--without-gossip','--without-mingle'])"
    )
    worker = subprocess.Popen([sys.executable, "-c", worker_code], env=env, cwd=ROOT)
    os.environ["BENCH_DONE_DIR"] = str(done)
    try:
        app = _app(broker, transport_options)
        app.send_task("bench.touch", args=[-1])  # warm-up: the worker is up once this one is done
        _wait(done, 1, timeout=120)
        single_latencies = []
        for i in range(singles):
            start = time.perf_counter()
            app.send_task("bench.touch", args=[10_000 + i])
            _wait(done, 2 + i)
            single_latencies.append(time.perf_counter() - start)
        start = time.perf_counter()
        for i in range(tasks):
            app.send_task("bench.touch", args=[i])
        _wait(done, 1 + singles + tasks)
        batch = time.perf_counter() - start
    finally:
        worker.terminate()
        worker.wait(30)
    return {
        "transport": name,
        "tasks": tasks,
        "batch_seconds": round(batch, 3),
        "tasks_per_second": round(tasks / batch, 1),
        "single_task_latency_median_s": round(statistics.median(single_latencies), 3),
        "single_task_latency_max_s": round(max(single_latencies), 3),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=200)
    parser.add_argument("--singles", type=int, default=10)
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        folder = work / "fs-broker"
        for sub in ("out", "processed", "control"):
            (folder / sub).mkdir(parents=True)
        results = [
            measure(
                "sqlalchemy-sqlite", f"sqla+sqlite:///{work / 'broker.sqlite'}", {}, args.tasks, args.singles, work
            ),
            measure(
                "filesystem",
                "filesystem://",
                {
                    "data_folder_in": str(folder / "out"),
                    "data_folder_out": str(folder / "out"),
                    "processed_folder": str(folder / "processed"),
                    "control_folder": str(folder / "control"),
                    "store_processed": False,
                },
                args.tasks,
                args.singles,
                work,
            ),
        ]
    reference = results[0]["batch_seconds"]
    for row in results:
        row["batch_time_ratio_to_sqlalchemy"] = round(row["batch_seconds"] / reference, 2)
    report = {"machine": os.uname().nodename, "cpus": os.cpu_count(), "results": results}
    out = ROOT / "results" / "broker.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
