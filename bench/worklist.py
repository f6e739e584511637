"""The worklist's first page with 10,000 studies in PostgreSQL, through the real HTTP app.

Makes a fresh PostgreSQL database (as the tests' ``postgres_url`` fixture does: ``CREATE DATABASE`` on the
server of ``PREDRAFT_TEST_POSTGRES``, default ``postgresql://postgres@127.0.0.1:5432/postgres``, migrated
with ``predraft.core.db.upgrade``, dropped at the end), fills it with N studies of three instances each; most are
drafted (findings on both sides), a fifth of those reviewed, the rest in the other worklist states. Starts
``predraft web`` (the real command, uvicorn, its own process) on it, logs in as a radiologist, and times,
from this process over loopback, R round trips each of:

* ``GET /`` (the worklist page: count, first 50 rows by received time, their drafts, reviews and views),
* ``GET /worklist/rows`` (the fragment the page polls),
* ``GET /?q=<an accession>`` and ``GET /?state=drafted&sort=patient&order=asc`` (a search and a filter),
* ``GET /healthz`` (the reference: the same HTTP stack with no database work).

It also times the worklist query alone in this process (:func:`predraft.worklist.worklist.worklist_page`).
Prints a table and writes JSON to bench/results/worklist.json. Target (the issue): the first page under
300 ms.

    .venv/bin/python bench/worklist.py [--studies 10000] [--repeats 30]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from predraft.core import db  # noqa: E402

PREDRAFT = str(Path(sys.executable).parent / "predraft")
RESULTS = Path(__file__).resolve().parent / "results" / "worklist.json"
ADMIN_URL = os.environ.get("PREDRAFT_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")
PASSWORD = "bench password 1234"
TARGET_MS = 300.0


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def fill(url: str, studies: int) -> None:
    """N studies with 3 instances each; 80 % drafted (a fifth of those reviewed), the rest in other states."""
    from sqlalchemy import insert

    from predraft.core.schema import Draft, Instance, Review, Series, Study, User
    from predraft.worklist.users import hash_password

    now = datetime.now(UTC)
    states = ["receiving", "ready", "drafting", "error", "out_of_scope"]
    findings = [
        {
            "side": "right",
            "hardware": "tha",
            "top_class": "tha",
            "probability": 0.93,
            "views": ["ap_pelvis"],
            "reason": "weighted mean probability 0.93",
            "metal": True,
            "probabilities": {"tha": 0.93, "hemi": 0.05, "none": 0.02},
        },
        {
            "side": "left",
            "hardware": None,
            "top_class": "none",
            "probability": 0.41,
            "views": ["ap_pelvis"],
            "reason": "confidence 0.41 below the model's threshold 0.50",
            "metal": False,
            "probabilities": {"none": 0.41, "tha": 0.39, "hemi": 0.2},
        },
    ]
    engine = db.get_engine(url)
    with engine.begin() as connection:
        user_id = connection.execute(
            insert(User)
            .values(
                username="bench",
                display_name="Bench^Radiologist",
                role="radiologist",
                password_hash=hash_password(PASSWORD),
                active=True,
                created_at=now,
                password_changed_at=now,
            )
            .returning(User.id)
        ).scalar_one()
        study_rows, series_rows, instance_rows, draft_rows, review_rows = [], [], [], [], []
        for n in range(1, studies + 1):
            drafted = n % 5 != 0
            reviewed = drafted and n % 4 == 0
            received = now - timedelta(minutes=studies - n)
            study_rows.append(
                {
                    "id": n,
                    "study_uid": f"2.25.{n}",
                    "patient_id": f"P{n:07d}",
                    "patient_name": f"PATIENT^NUMBER{n}",
                    "accession_number": f"A{n:08d}",
                    "study_date": (received.date()).strftime("%Y%m%d"),
                    "study_description": "XR PELVIS AND RIGHT HIP 3 VIEWS",
                    "requested_procedure": "",
                    "state": ("reviewed" if reviewed else "drafted") if drafted else states[n % len(states)],
                    "generation": 1,
                    "received_at": received,
                    "last_instance_at": received,
                    "prepared_at": received if drafted else None,
                    "drafted_at": received if drafted else None,
                }
            )
            series_rows.append(
                {
                    "id": n,
                    "study_id": n,
                    "series_uid": f"2.25.{n}.1",
                    "modality": "CR",
                    "series_description": "",
                    "body_part": "PELVIS",
                }
            )
            for k, (view, side) in enumerate(
                (("ap_pelvis", "right+left"), ("frog_leg", "right"), ("cross_table_lateral", "right"))
            ):
                instance_rows.append(
                    {
                        "study_id": n,
                        "series_id": n,
                        "sop_instance_uid": f"2.25.{n}.1.{k}",
                        "sop_class_uid": "1.2.840.10008.5.1.4.1.1.1",
                        "transfer_syntax_uid": "1.2.840.10008.1.2.1",
                        "spool_path": "/nonexistent",
                        "size_bytes": 1,
                        "calling_ae": "BENCH",
                        "state": "classified",
                        "view": view,
                        "view_rule": "bench",
                        "side": side,
                        "received_at": received,
                        "updated_at": received,
                    }
                )
            if drafted:
                draft_rows.append(
                    {
                        "id": n,
                        "study_id": n,
                        "generation": 1,
                        "kind": "draft",
                        "text": "draft\n",
                        "findings": findings,
                        "model_name": "predraft-demo-phantoms",
                        "model_version": "1.0.0",
                        "synthetic_demo": True,
                        "sr_sop_instance_uid": f"2.25.{n}.9",
                        "sr_series_uid": f"2.25.{n}.9",
                        "sr_path": "/nonexistent",
                        "created_at": received + timedelta(seconds=2),
                    }
                )
            if reviewed:
                review_rows.append(
                    {
                        "draft_id": n,
                        "study_id": n,
                        "user_id": user_id,
                        "action": "accepted",
                        "final_text": "draft\n",
                        "diff": "",
                        "reason": "",
                        "report_id": None,
                        "created_at": received + timedelta(minutes=5),
                    }
                )
        connection.execute(insert(Study), study_rows)
        connection.execute(insert(Series), series_rows)
        connection.execute(insert(Instance), instance_rows)
        connection.execute(insert(Draft), draft_rows)
        connection.execute(insert(Review), review_rows)
        connection.exec_driver_sql("ANALYZE")


def _time(session: requests.Session, url: str, repeats: int) -> dict[str, float]:
    session.get(url, timeout=60).raise_for_status()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        response = session.get(url, timeout=60)
        times.append((time.perf_counter() - start) * 1000.0)
        response.raise_for_status()
    return {
        "median_ms": round(statistics.median(times), 2),
        "min_ms": round(min(times), 2),
        "p90_ms": round(sorted(times)[int(0.9 * (len(times) - 1))], 2),
        "max_ms": round(max(times), 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--studies", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args(argv)

    import psycopg

    name = f"predraft_bench_{uuid.uuid4().hex[:10]}"
    admin = psycopg.connect(ADMIN_URL, autocommit=True, connect_timeout=5)
    admin.execute(f'CREATE DATABASE "{name}"')
    url = ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1) + f"/{name}"
    process = None
    try:
        db.upgrade(url)
        started = time.perf_counter()
        fill(url, args.studies)
        fill_s = time.perf_counter() - started

        from predraft.core.db import session_scope
        from predraft.worklist.worklist import WorklistQuery, worklist_page

        query_times = []
        for _ in range(args.repeats + 1):
            start = time.perf_counter()
            with session_scope(url) as session:
                page = worklist_page(session, WorklistQuery())
            query_times.append((time.perf_counter() - start) * 1000.0)
        assert page.total == args.studies and len(page.rows) == 50

        port = _free_port()
        var_dir = Path(tempfile.mkdtemp(prefix="predraft-bench-worklist-"))
        env = {key: value for key, value in os.environ.items() if not key.startswith("PREDRAFT_")}
        env.update(
            {
                "PREDRAFT_DATABASE_URL": url,
                "PREDRAFT_VAR_DIR": str(var_dir),
                "PREDRAFT_HTTP_PORT": str(port),
                "PREDRAFT_COOKIE_SECURE": "false",
                "PREDRAFT_LOG_LEVEL": "WARNING",
            }
        )
        process = subprocess.Popen([PREDRAFT, "web"], env=env, start_new_session=True)
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                if requests.get(base + "/healthz", timeout=1).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError("predraft web did not start")
            time.sleep(0.2)

        http = requests.Session()
        http.headers["Accept"] = "text/html"
        login = http.get(base + "/login", timeout=30).text
        token = re.search(r'name="csrf_token" value="([^"]+)"', login).group(1)  # type: ignore[union-attr]
        response = http.post(
            base + "/login",
            data={"csrf_token": token, "username": "bench", "password": PASSWORD, "next": "/"},
            timeout=30,
        )
        assert response.status_code == 200 and "worklist" in response.text, response.status_code
        first = http.get(base + "/", timeout=60)
        assert first.text.count("data-study-uid=") == 50 and f"{args.studies} studies" in first.text.replace(
            '<span id="total">', ""
        ).replace("</span>", "")

        results = {
            "worklist_first_page": _time(http, base + "/", args.repeats),
            "worklist_rows_fragment": _time(http, base + "/worklist/rows", args.repeats),
            "search_by_accession": _time(http, base + f"/?q=A{args.studies // 2:08d}", args.repeats),
            "filter_drafted_sorted_by_patient": _time(
                http, base + "/?state=drafted&sort=patient&order=asc", args.repeats
            ),
            "healthz_reference": _time(http, base + "/healthz", args.repeats),
        }
        report = {
            "when": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()},
            "database": "PostgreSQL " + admin.execute("SHOW server_version").fetchone()[0],
            "studies": args.studies,
            "instances": 3 * args.studies,
            "repeats": args.repeats,
            "fill_seconds": round(fill_s, 1),
            "query_in_process": {"median_ms": round(statistics.median(query_times[1:]), 2)},
            "http_round_trips": results,
            "target_ms": TARGET_MS,
            "first_page_under_target": results["worklist_first_page"]["median_ms"] < TARGET_MS,
        }
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(report, indent=2) + "\n")
        print(
            f"{args.studies} studies ({3 * args.studies} instances) in {report['database']}, "
            f"median of {args.repeats} round trips over loopback:"
        )
        print(f"{'request':<36} {'median ms':>10} {'p90 ms':>8} {'max ms':>8}")
        for key, value in results.items():
            print(f"{key:<36} {value['median_ms']:>10.1f} {value['p90_ms']:>8.1f} {value['max_ms']:>8.1f}")
        print(f"{'worklist query alone (in process)':<36} {report['query_in_process']['median_ms']:>10.1f}")
        print(
            f"target: first page under {TARGET_MS:.0f} ms: {'met' if report['first_page_under_target'] else 'MISSED'}"
            f"; written to {RESULTS.relative_to(Path.cwd()) if RESULTS.is_relative_to(Path.cwd()) else RESULTS}"
        )
        return 0 if report["first_page_under_target"] else 1
    finally:
        if process is not None and process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=30)
        db.get_engine(url).dispose()
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


if __name__ == "__main__":
    sys.exit(main())
