"""How fast does predraft take instances in, next to dcmtk's storescp and bare pynetdicom? All in the same run.

dcmtk's ``storescu`` (with ``TCP_NODELAY=1``) sends N instances to ``predraft listen`` (the real command,
durability on: each file and its folder fsynced and the SQLite commit made before the success status) and
to dcmtk's ``storescp`` (which does not fsync). Two sizes: large CR instances (RG2_UNC, 7.5 MB, with fresh
SOP Instance UIDs) and small ones (RG2 subsampled to 128 x 128, about 34 KB). Two ways: one association,
and four concurrent associations (four storescu processes started together, the files dealt between
them; storescp then runs with ``--fork`` so it takes them at once, as predraft's threads do).

Each measurement gets a fresh receiver (empty spool and database, or an empty output folder) that first
takes one small warm-up instance untimed; the page cache is synced before the timed send, and the
receivers take turns going first; the median of the repeats is reported.
The clock runs from the first storescu start to the last storescu exit, and every instance is counted in
the receiver's folder before a figure is kept. A second figure ("until_synced") also counts an os.sync()
right after the last exit, so every receiver is timed until their data is on disk; and a disk probe
records what durability costs on the machine (fsync latency of a small file, durable write rate).
Prints and writes JSON (bench/results/ingest.json).

Targets (the issue): predraft at least 0.8x storescp's rate on large instances and 0.5x on small ones.
The bare pynetdicom receiver splits the gap: ``pynetdicom_bare_over_storescp`` is what any listener built
on pynetdicom reaches here, ``predraft_over_pynetdicom_bare`` what predraft's own work (parse, fsync,
database) costs on top.

    .venv/bin/python bench/ingest.py [--large 60] [--small 500] [--repeats 3] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pynetdicom

sys.path.insert(0, str(Path(__file__).resolve().parent))

from ingest_support import (  # noqa: E402  (the bench folder is not a package)
    DCMTK_MAX_PDU,
    SMALL_LIMIT_BYTES,
    Receiver,
    bare_pynetdicom,
    dcmtk_storescp,
    dcmtk_version,
    large_template,
    predraft_listener,
    require_tools,
    send_concurrently,
    small_template,
    split,
    write_copies,
)

RESULTS = Path(__file__).resolve().parent / "results" / "ingest.json"
DEFAULT_LARGE, DEFAULT_SMALL, DEFAULT_REPEATS = 60, 500, 3
QUICK_LARGE, QUICK_SMALL, QUICK_REPEATS = 12, 100, 1
CONCURRENT_ASSOCIATIONS = 4
#: The issue's targets: predraft's rate over storescp's, by instance size.
TARGET_RATIO = {"large": 0.8, "small": 0.5}
BYTES_PER_MB = 1_000_000
#: The disk probe: 50 files of 34 KB, then 448 MB (60 large instances' worth) in 8 MB writes.
DISK_PROBE_SMALL_FILES, DISK_PROBE_SMALL_BYTES = 50, 34_000
DISK_PROBE_CHUNK_BYTES, DISK_PROBE_LARGE_BYTES = 8_000_000, 448_000_000


@dataclass(frozen=True)
class Scenario:
    size: str  # a key of TARGET_RATIO: "large" or "small"
    associations: int

    def __post_init__(self) -> None:
        if self.size not in TARGET_RATIO:
            raise ValueError(f"size {self.size!r} is not one of {sorted(TARGET_RATIO)}")
        if self.associations < 1:
            raise ValueError(f"associations must be at least 1, not {self.associations}")

    @property
    def name(self) -> str:
        return f"{self.size}, {self.associations} association{'s' if self.associations > 1 else ''}"


@dataclass(frozen=True)
class Measurement:
    seconds: float  # first storescu start to last storescu exit
    seconds_until_synced: float  # the same, plus an os.sync() right after: until the data is on disk
    notes: str


def measure(
    receiver_factory: Callable[[Path], AbstractContextManager[Receiver]],
    files: list[Path],
    associations: int,
    work: Path,
    warm_up: Path,
) -> Measurement:
    """Send ``files`` over ``associations`` concurrent storescu processes to a fresh receiver and check
    every instance arrived. ``warm_up`` goes first, untimed (the first C-STORE after start pays for lazy
    imports and first connections). The page cache is synced before the timed send, so the final sync
    flushes this run's writes."""
    work.mkdir(parents=True)
    try:
        with receiver_factory(work) as receiver:
            send_concurrently(receiver, [[warm_up]])
            os.sync()
            seconds = send_concurrently(receiver, split(files, associations))
            start = time.perf_counter()
            os.sync()
            synced = seconds + time.perf_counter() - start
            stored = receiver.stored()
            if stored != len(files) + 1:
                raise RuntimeError(f"{receiver.name} holds {stored} of the {len(files)} + 1 instances sent")
            return Measurement(seconds, synced, receiver.notes)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _receivers(associations: int) -> list[tuple[str, Callable[[Path], AbstractContextManager[Receiver]]]]:
    """storescp, predraft, then bare pynetdicom (the order rotates across repeats in :func:`run_scenario`)."""
    return [
        ("storescp", lambda work: dcmtk_storescp(work, fork=associations > 1)),
        ("predraft", predraft_listener),
        ("pynetdicom_bare", bare_pynetdicom),
    ]


def run_scenario(scenario: Scenario, files: list[Path], repeats: int, work: Path, warm_up: Path) -> dict:
    """Measure every receiver ``repeats`` times, rotating which goes first; report the medians."""
    receivers = _receivers(scenario.associations)
    runs: dict[str, list[Measurement]] = {name: [] for name, _ in receivers}
    total_bytes = sum(path.stat().st_size for path in files)
    for repeat in range(repeats):
        shift = repeat % len(receivers)
        for name, factory in receivers[shift:] + receivers[:shift]:
            run = measure(
                factory,
                files,
                scenario.associations,
                work / f"{scenario.size}-{scenario.associations}-{name}-{repeat}",
                warm_up,
            )
            runs[name].append(run)
            print(
                f"  {scenario.name}: {name} run {repeat + 1}: {len(files)} instances in {run.seconds:.2f} s "
                f"({run.seconds_until_synced:.2f} s until synced)",
                file=sys.stderr,
                flush=True,
            )

    def rates(seconds: list[float]) -> dict:
        median = statistics.median(seconds)
        return {
            "seconds_median": round(median, 3),
            "seconds_all": [round(s, 3) for s in seconds],
            "instances_per_s": round(len(files) / median, 1),
            "mb_per_s": round(total_bytes / median / BYTES_PER_MB, 1),
        }

    def ratio(faster: str, slower: str, figure: str = "") -> float:
        """``slower``'s rate over ``faster``'s (the ratio of their median times)."""
        seconds = {name: (row[name][figure] if figure else row[name])["seconds_median"] for name in (faster, slower)}
        return round(seconds[faster] / seconds[slower], 2)

    row: dict = {
        "scenario": scenario.name,
        "size": scenario.size,
        "associations": scenario.associations,
        "instances": len(files),
        "bytes_per_instance": total_bytes // len(files),
    }
    for name, _ in receivers:
        row[name] = {
            **rates([run.seconds for run in runs[name]]),
            "receiver": runs[name][0].notes,
            "until_synced": rates([run.seconds_until_synced for run in runs[name]]),
        }
    row["predraft_over_storescp"] = ratio("storescp", "predraft")
    row["target_ratio"] = TARGET_RATIO[scenario.size]
    row["target_met"] = row["predraft_over_storescp"] >= TARGET_RATIO[scenario.size]
    row["predraft_over_storescp_until_synced"] = ratio("storescp", "predraft", "until_synced")
    # The split of the gap: what pynetdicom alone reaches, and what predraft's own work costs on top of it.
    row["pynetdicom_bare_over_storescp"] = ratio("storescp", "pynetdicom_bare")
    row["predraft_over_pynetdicom_bare"] = ratio("pynetdicom_bare", "predraft")
    return row


def disk_figures(folder: Path) -> dict:
    """What durability costs on the work folder's disk: a small file's write + fsync + folder fsync, and the
    rate of one large write made durable with a single fsync (the ceiling for durable large instances)."""
    small_latencies = []
    payload = os.urandom(DISK_PROBE_SMALL_BYTES)
    for index in range(DISK_PROBE_SMALL_FILES):
        start = time.perf_counter()
        descriptor = os.open(folder / f"probe-{index}", os.O_WRONLY | os.O_CREAT)
        os.write(descriptor, payload)
        os.fsync(descriptor)
        os.close(descriptor)
        folder_descriptor = os.open(folder, os.O_RDONLY)
        os.fsync(folder_descriptor)
        os.close(folder_descriptor)
        small_latencies.append(time.perf_counter() - start)
    chunk = os.urandom(DISK_PROBE_CHUNK_BYTES)
    os.sync()
    start = time.perf_counter()
    with open(folder / "probe-large", "wb") as stream:
        for _ in range(DISK_PROBE_LARGE_BYTES // DISK_PROBE_CHUNK_BYTES):
            stream.write(chunk)
        stream.flush()
        os.fsync(stream.fileno())
    large_seconds = time.perf_counter() - start
    for probe in folder.glob("probe-*"):
        probe.unlink()
    return {
        "small_file_write_fsync_ms_median": round(statistics.median(small_latencies) * 1000, 2),
        "durable_write_mb_per_s": round(DISK_PROBE_LARGE_BYTES / large_seconds / BYTES_PER_MB, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--large", type=int, default=None, help=f"large instances (default {DEFAULT_LARGE})")
    parser.add_argument("--small", type=int, default=None, help=f"small instances (default {DEFAULT_SMALL})")
    parser.add_argument("--repeats", type=int, default=None, help=f"runs per receiver (default {DEFAULT_REPEATS})")
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"{QUICK_LARGE} large, {QUICK_SMALL} small, {QUICK_REPEATS} repeat (unless given)",
    )
    parser.add_argument("--output", type=Path, default=RESULTS, help="where to write the JSON")
    args = parser.parse_args(argv)
    large = args.large or (QUICK_LARGE if args.quick else DEFAULT_LARGE)
    small = args.small or (QUICK_SMALL if args.quick else DEFAULT_SMALL)
    repeats = args.repeats or (QUICK_REPEATS if args.quick else DEFAULT_REPEATS)
    for option, value, least in (
        ("--large", large, CONCURRENT_ASSOCIATIONS),
        ("--small", small, CONCURRENT_ASSOCIATIONS),
        ("--repeats", repeats, 1),
    ):
        if value < least:
            parser.error(f"{option} {value} is too small: at least {least}")
    require_tools()

    with tempfile.TemporaryDirectory(prefix="predraft-bench-ingest-") as tmp:
        work = Path(tmp)
        files = {
            "large": write_copies(large_template(), large, work / "send" / "large", "large"),
            "small": write_copies(small_template(), small, work / "send" / "small", "small"),
        }
        disk = disk_figures(work)
        warm_up = write_copies(small_template(), 1, work / "send" / "warm-up", "warm-up")[0]
        small_size = files["small"][0].stat().st_size
        if small_size >= SMALL_LIMIT_BYTES:
            raise RuntimeError(f"a small instance is {small_size} bytes, not under {SMALL_LIMIT_BYTES}")
        rows = []
        for size in ("large", "small"):
            for associations in (1, CONCURRENT_ASSOCIATIONS):
                rows.append(run_scenario(Scenario(size, associations), files[size], repeats, work / "runs", warm_up))

    report = {
        "machine": {
            "node": platform.node(),
            "cpus": os.cpu_count(),
            "processor": platform.processor(),
            "python": platform.python_version(),
            "pynetdicom": pynetdicom.__version__,
            "pydicom": pydicom.__version__,
            "dcmtk": dcmtk_version(),
            "work_folder": tempfile.gettempdir(),
            "disk": disk,
        },
        "method": {
            "large_instances": large,
            "small_instances": small,
            "repeats": repeats,
            "statistic": "median of the repeats",
            "warm_up": "one small instance, untimed, per receiver start",
            "clock": "first storescu start to last storescu exit",
            "sender": "dcmtk storescu, TCP_NODELAY=1, uncompressed (Explicit VR LE), "
            f"PDUs of up to {DCMTK_MAX_PDU} bytes",
            "concurrency": f"{CONCURRENT_ASSOCIATIONS} storescu processes started together, files dealt "
            "round-robin; storescp with --fork in that case, plain storescp for one",
            "mb": "10^6 bytes of the sent files",
            "until_synced": "the clock stopped after an os.sync() that follows the last storescu exit: "
            "every receiver timed until the data is on disk (storescp does not fsync)",
        },
        "results": rows,
        "all_targets_met": all(row["target_met"] for row in rows),
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
