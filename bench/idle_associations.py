"""What an open, idle DICOM association costs ``predraft listen`` in CPU, next to Orthanc in the same run.

A PACS often holds associations open between studies. pynetdicom 3.0 runs two threads per association that
poll every millisecond (the association's reactor and its DUL), so each open association costs its listener
CPU while nothing is sent. This starts ``predraft listen`` (the real command, defaults) and Orthanc (the
reference, as ``bench/ingest.py`` runs it), opens ``--associations`` associations to each from this process
(pynetdicom's AE; this process's own CPU is not counted), holds them idle, and reads the receivers' CPU time
(user + system, the whole process tree, from /proc) over ``--seconds``, first with no association open, then
with them. Prints a table and writes JSON (bench/results/idle_associations.json).

    .venv/bin/python bench/idle_associations.py [--associations 4] [--seconds 5]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

from pynetdicom import AE
from pynetdicom.sop_class import Verification

sys.path.insert(0, str(Path(__file__).resolve().parent))

from ingest_support import Receiver, orthanc_receiver, predraft_listener, require_tools  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "idle_associations.json"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
SETTLE_S = 1.0  # after opening the associations, before the clock starts


def _tree(pid: int) -> set[int]:
    """``pid`` and every process below it."""
    found, todo = {pid}, [pid]
    while todo:
        children = subprocess.run(["pgrep", "-P", str(todo.pop())], capture_output=True, text=True).stdout.split()
        for child in map(int, children):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def cpu_seconds(pid: int) -> float:
    """User plus system CPU seconds of ``pid``'s process tree so far (processes that ended are not counted)."""
    total = 0
    for process in _tree(pid):
        try:
            fields = Path(f"/proc/{process}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / CLOCK_TICKS


def _parent(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def _receiver_pid(receiver: Receiver) -> int:
    """The top of the receiver's process tree: of the processes holding its listening socket (predraft's
    supervisor binds it and its listener processes accept on it), the one whose parent holds none."""
    out = subprocess.run(
        ["ss", "-Htlnp", f"sport = :{receiver.port}"], capture_output=True, text=True, check=True
    ).stdout
    holders = {int(part.split(",")[0]) for part in out.split("pid=")[1:]}
    tops = sorted(pid for pid in holders if _parent(pid) not in holders)
    if not tops:
        raise RuntimeError(f"no process of {receiver.name} listens on port {receiver.port}")
    return tops[0]


def measure(receiver: Receiver, associations: int, seconds: float) -> dict[str, float]:
    """CPU milliseconds per second of ``receiver`` idle with no association, then with ``associations`` idle."""
    pid = _receiver_pid(receiver)
    start = cpu_seconds(pid)
    time.sleep(seconds)
    alone = (cpu_seconds(pid) - start) * 1000 / seconds
    ae = AE("BENCH_SCU")
    ae.add_requested_context(Verification)
    opened = [ae.associate("127.0.0.1", receiver.port, ae_title=receiver.ae_title) for _ in range(associations)]
    try:
        if not all(assoc.is_established for assoc in opened):
            raise RuntimeError(f"{receiver.name} did not accept {associations} associations")
        time.sleep(SETTLE_S)
        start = cpu_seconds(pid)
        time.sleep(seconds)
        held = (cpu_seconds(pid) - start) * 1000 / seconds
    finally:
        for assoc in opened:
            assoc.release()
    return {
        "cpu_ms_per_s_no_association": round(alone, 1),
        "cpu_ms_per_s_idle_associations": round(held, 1),
        "cpu_ms_per_s_per_idle_association": round((held - alone) / associations, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--associations", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    require_tools()
    receivers: list[tuple[str, Callable[[Path], AbstractContextManager[Receiver]]]] = [
        ("predraft", predraft_listener),
        ("orthanc", orthanc_receiver),
    ]
    results: dict[str, dict[str, float]] = {}
    for name, factory in receivers:
        with tempfile.TemporaryDirectory() as work, factory(Path(work)) as receiver:
            results[name] = measure(receiver, args.associations, args.seconds)
    report = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "associations": args.associations,
        "seconds": args.seconds,
        "results": results,
    }
    print(f"{'receiver':10} {'no assoc.':>10} {f'{args.associations} idle':>10} {'per assoc.':>11}  (CPU ms per s)")
    for name, row in results.items():
        print(
            f"{name:10} {row['cpu_ms_per_s_no_association']:10.1f} {row['cpu_ms_per_s_idle_associations']:10.1f} "
            f"{row['cpu_ms_per_s_per_idle_association']:11.1f}"
        )
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=1) + "\n")
    print(f"written to {RESULTS}")


if __name__ == "__main__":
    main()
