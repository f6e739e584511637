"""How fast do ``predraft queue stats`` and ``queue ls`` answer with a large backlog? Makes a backlog as predraft
leaves one: ``--messages`` instances received in a ready study, each stamped with the task id of its
``prepare`` message (:func:`predraft.workers.leases.stamp_dispatch`), the messages published to a Redis
database of its own (``app.send_task`` through a kombu producer batch), except one in a thousand whose try
failed and whose retry waits (``retry_at`` ahead; a worker would hold that message). Then times, in the same
run:

- ``queue_stats()`` in process (the command's own work: the broker's count of each queue through
  ``queue_declare(passive=True)``, one query per task on the leases, the workers' heartbeats, the dead letters);
- ``predraft queue stats --json`` and ``predraft queue ls --state waiting --json`` (the 100 oldest) as a user
  runs them (a new Python process: the above plus start-up);
- references: ``redis-cli LLEN prepare`` (one round trip from a fresh process) and ``predraft --version`` (the
  CLI's start-up alone);
- optionally the embedded broker (kombu SQLAlchemy over SQLite) with ``--embedded-messages`` messages;
- outages: ``predraft queue stats`` and ``predraft studies ls`` against a stopped Redis and an unreachable
  PostgreSQL exit 2 at once (no retry loop), as a ratio to the CLI's start-up (target: under 5 s each; the
  unit tests check the exit status and the message, this the time).

Prints a table and writes JSON (bench/results/cli.json).

    .venv/bin/python bench/cli.py [--messages 100000] [--redis redis://127.0.0.1:6379/11] [--repeat 5]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))

from datetime import timedelta  # noqa: E402

from sqlalchemy import insert, update  # noqa: E402

from predraft.core import db  # noqa: E402
from predraft.core.schema import Instance, Series, Study, utcnow  # noqa: E402
from predraft.core.settings import get_settings  # noqa: E402
from predraft.core.states import InstanceState, StudyState  # noqa: E402
from predraft.workers.app import PREPARE, create_celery  # noqa: E402
from predraft.workers.leases import stamp_dispatch  # noqa: E402
from predraft.workers.stats import queue_stats  # noqa: E402

PREDRAFT = str(Path(sys.executable).parent / "predraft")


def fill(app, database_url: str, count: int) -> tuple[float, int]:  # type: ignore[no-untyped-def]
    """``count`` instances sent to ``prepare`` (every 1000th waiting for its retry instead); returns (seconds,
    retries)."""
    started = time.perf_counter()
    with db.session_scope(database_url) as session:
        study = Study(study_uid="1.2.3.4", state=StudyState.READY, ready_at=utcnow())
        session.add(study)
        session.flush()
        series = Series(study_id=study.id, series_uid="1.2.3.4.1")
        session.add(series)
        session.flush()
        session.execute(
            insert(Instance),
            [
                {
                    "study_id": study.id,
                    "series_id": series.id,
                    "sop_instance_uid": f"1.2.3.4.1.{number}",
                    "sop_class_uid": "1.2.840.10008.5.1.4.1.1.1.1",
                    "transfer_syntax_uid": "1.2.840.10008.1.2.1",
                    "spool_path": f"/spool/{number}.dcm",
                    "size_bytes": 1,
                    "state": InstanceState.RECEIVED,
                }
                for number in range(count)
            ],
        )
        ids = list(session.scalars(Instance.__table__.select().with_only_columns(Instance.id).order_by(Instance.id)))
        task_ids = stamp_dispatch(session, Instance, ids)
        retries = ids[::1000]
        session.execute(
            update(Instance).where(Instance.id.in_(retries)).values(retry_at=utcnow() + timedelta(minutes=10))
        )
    with app.producer_or_acquire() as producer, producer.batch(1000):
        for number, instance_id in enumerate(ids):
            if number % 1000:
                app.send_task(PREPARE, args=[instance_id], producer=producer, task_id=task_ids[instance_id])
    return time.perf_counter() - started, len(retries)


def timed(function: Callable[[], object], repeat: int) -> dict[str, float]:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return {
        "median_s": round(statistics.median(times), 4),
        "min_s": round(min(times), 4),
        "max_s": round(max(times), 4),
    }


def run_cli(env: dict[str, str], *argv: str) -> None:
    result = subprocess.run([PREDRAFT, *argv], env=env, capture_output=True, text=True, timeout=60)
    if result.returncode not in (0, 1):
        raise RuntimeError(f"predraft {' '.join(argv)} exited {result.returncode}: {result.stderr}")


def timed_cli(env: dict[str, str], argv: list[str], repeat: int) -> dict[str, float]:
    """Wall time, and the CPU time (user + system) of the process, which a busy machine inflates less."""
    wall, cpu = [], []
    for _ in range(repeat):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        run_cli(env, *argv)
        wall.append(time.perf_counter() - started)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    return {
        "median_s": round(statistics.median(wall), 4),
        "min_s": round(min(wall), 4),
        "max_s": round(max(wall), 4),
        "cpu_median_s": round(statistics.median(cpu), 4),
    }


def timed_outage(env: dict[str, str], argv: list[str], repeat: int) -> dict[str, float]:
    """Wall time of a command that must fail at once with exit status 2 (a service it needs is down)."""
    wall = []
    for _ in range(repeat):
        started = time.perf_counter()
        result = subprocess.run([PREDRAFT, *argv], env=env, capture_output=True, text=True, timeout=60)
        wall.append(time.perf_counter() - started)
        if result.returncode != 2:
            raise RuntimeError(f"predraft {' '.join(argv)} exited {result.returncode}, not 2: {result.stderr}")
    return {"median_s": round(statistics.median(wall), 4), "max_s": round(max(wall), 4)}


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def measure_outages(work: Path, repeat: int) -> dict[str, object]:
    """The admin commands against services that are down: a stopped Redis, an unreachable PostgreSQL."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("PREDRAFT_")}
    env["PREDRAFT_VAR_DIR"] = str(work / "outage")
    startup = timed_cli(env, ["--version"], repeat)
    cases = {
        "queue_stats_redis_stopped": (
            {"PREDRAFT_BROKER_URL": f"redis://:s3cret@127.0.0.1:{free_port()}/0"},
            ["queue", "stats", "--json"],
        ),
        "studies_ls_postgres_unreachable": (
            {"PREDRAFT_DATABASE_URL": f"postgresql+psycopg://predraft:s3cret@127.0.0.1:{free_port()}/predraft"},
            ["studies", "ls", "--json"],
        ),
    }
    result: dict[str, object] = {"cli_startup_reference": startup, "target_s": 5.0}
    for name, (extra, argv) in cases.items():
        timing = timed_outage({**env, **extra}, argv, repeat)
        timing["ratio_to_startup"] = round(timing["median_s"] / startup["median_s"], 2)
        timing["met"] = timing["max_s"] < 5.0
        result[name] = timing
    return result


def measure(name: str, broker_url: str, work: Path, messages: int, repeat: int) -> dict:
    var = work / name
    env = {key: value for key, value in os.environ.items() if not key.startswith("PREDRAFT_")}
    env.update(PREDRAFT_VAR_DIR=str(var), PREDRAFT_BROKER_URL=broker_url)
    settings = get_settings(var_dir=var, broker_url=broker_url)
    db.upgrade(settings.database_url)
    app = create_celery(settings)
    fill_s, retries = fill(app, settings.database_url, messages)
    stats = queue_stats(settings)
    prepare = stats["queues"][0]
    assert (prepare["waiting"], prepare["retries_pending"]) == (messages - retries, retries), stats
    result = {
        "messages": messages,
        "fill_s": round(fill_s, 1),
        "stats_in_process": timed(lambda: queue_stats(settings), repeat),
        "stats_cli": timed_cli(env, ["queue", "stats", "--json"], repeat),
        "ls_waiting_cli": timed_cli(env, ["queue", "ls", "--state", "waiting", "--json"], repeat),
        "cli_startup_reference": timed_cli(env, ["--version"], repeat),
        "counted": {
            "waiting": prepare["waiting"],
            "retries_pending": prepare["retries_pending"],
            "oldest_waiting_seconds": prepare["oldest_waiting_seconds"],
        },
    }
    if broker_url.startswith("redis") and shutil.which("redis-cli"):
        number = broker_url.rsplit("/", 1)[-1]
        host, port = broker_url.split("//", 1)[1].split("/", 1)[0].split(":")
        result["redis_cli_llen_reference"] = timed(
            lambda: subprocess.run(
                ["redis-cli", "-h", host, "-p", port, "-n", number, "LLEN", "prepare"], capture_output=True, check=True
            ),
            repeat,
        )
    app.close()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/11", help="a Redis database the bench may flush")
    parser.add_argument("--embedded-messages", type=int, default=5_000, help="0: skip the embedded broker")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()

    import redis

    client = redis.Redis.from_url(args.redis)
    client.flushdb()
    results: dict[str, object] = {"host": os.uname().nodename, "cpus": os.cpu_count(), "load_average": os.getloadavg()}
    with tempfile.TemporaryDirectory(prefix="predraft-bench-cli-") as folder:
        work = Path(folder)
        try:
            results["redis"] = measure("redis", args.redis, work, args.messages, args.repeat)
        finally:
            client.flushdb()
        if args.embedded_messages:
            (work / "embedded").mkdir()
            results["embedded"] = measure(
                "embedded",
                f"sqla+sqlite:///{work / 'embedded' / 'broker.sqlite'}",
                work,
                args.embedded_messages,
                args.repeat,
            )

        results["outages"] = measure_outages(work, args.repeat)

    print(
        f"load average {results['load_average'][0]:.1f} on {results['cpus']} CPUs; medians of {args.repeat} "
        "(CPU: user + system time of the process)"
    )
    print(
        f"{'broker':<10} {'messages':>9} {'stats in process':>17} {'predraft queue stats':>21} {'(CPU)':>7} "
        f"{'predraft queue ls':>18} {'CLI start-up':>13} {'redis-cli LLEN':>15}"
    )
    for name in ("redis", "embedded"):
        row = results.get(name)
        if not isinstance(row, dict):
            continue
        llen = row.get("redis_cli_llen_reference", {}).get("median_s", float("nan"))
        print(
            f"{name:<10} {row['messages']:>9} {row['stats_in_process']['median_s']:>16.3f}s "
            f"{row['stats_cli']['median_s']:>20.3f}s {row['stats_cli']['cpu_median_s']:>6.3f}s "
            f"{row['ls_waiting_cli']['median_s']:>17.3f}s {row['cli_startup_reference']['median_s']:>12.3f}s "
            f"{llen:>14.3f}s"
        )
    outages = results["outages"]
    assert isinstance(outages, dict)
    for name in ("queue_stats_redis_stopped", "studies_ls_postgres_unreachable"):
        row = outages[name]
        print(
            f"{name:<32} exit 2 in {row['median_s']:.3f}s (max {row['max_s']:.3f}s, {row['ratio_to_startup']}x "
            f"start-up): {'met' if row['met'] else 'MISSED'} (target < 5 s)"
        )
    out = ROOT / "results" / "cli.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
