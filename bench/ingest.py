"""How fast does predraft take instances in, next to Orthanc, dcmtk's storescp and bare pynetdicom? All in one run.

dcmtk's ``storescu`` (with ``TCP_NODELAY=1``) sends N instances to ``predraft listen`` (the real command,
durability on: each file and its folder fsynced and the SQLite commit made before the success status), to
Orthanc (the durable reference: Debian's Orthanc with SyncStorageArea, its SQLite index, no compression, no
plugins, ``TCP_NODELAY=1`` on its side too), to dcmtk's ``storescp`` (which does not fsync) and to bare
pynetdicom. Two sizes: large CR instances (RG2_UNC, 7.5 MB, with fresh SOP Instance UIDs) and small ones
(RG2 subsampled to 128 x 128, about 34 KB). Two ways: one association, and four concurrent associations
(four storescu processes started together, the files dealt between them; storescp then runs with
``--fork`` so it takes them at once, as predraft's and Orthanc's threads do).

Each measurement gets a fresh receiver (empty spool and database, a fresh Orthanc storage folder and index,
or an empty output folder) that first takes one small warm-up instance untimed; the page cache is synced
before the timed send, and the receivers take turns going first; the median of the repeats is reported.
The clock runs from the first storescu start to the last storescu exit, and every instance is counted in
the receiver's folder (Orthanc's through its REST API, /statistics) before a figure is kept. A second
figure ("until_synced") also counts an os.sync() right after the last exit, so every receiver is timed
until their data is on disk; and a disk probe records what durability costs on the machine (fsync latency
of a small file, durable write rate).
Prints a table and writes JSON (bench/results/ingest.json).

Targets (issue 19), Orthanc being the durable reference: large instances on one association at least 1.5x
Orthanc's rate; small instances over four associations at least 0.3x Orthanc's rate and at least 60 % of
bare pynetdicom's (bare pynetdicom alone reaches about 256/s per process on two cores, so half Orthanc's
rate is out of reach there). The bare pynetdicom receiver splits the gap to storescp:
``pynetdicom_bare_over_storescp`` is what any listener built on pynetdicom reaches here,
``predraft_over_pynetdicom_bare`` what predraft's own work (parse, fsync, database) costs on top.

    .venv/bin/python bench/ingest.py [--large 60] [--small 500] [--repeats 3] [--quick] [--skip-orthanc]
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
    orthanc_receiver,
    orthanc_version,
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
SIZES = ("large", "small")
BYTES_PER_MB = 1_000_000
#: The disk probe: 50 files of 34 KB, then 448 MB (60 large instances' worth) in 8 MB writes.
DISK_PROBE_SMALL_FILES, DISK_PROBE_SMALL_BYTES = 50, 34_000
DISK_PROBE_CHUNK_BYTES, DISK_PROBE_LARGE_BYTES = 8_000_000, 448_000_000


@dataclass(frozen=True)
class Target:
    """One of the issue's targets: ``ratio`` of a scenario's row at least ``least``."""

    size: str
    associations: int
    ratio: str  # a key of the scenario's row: "predraft_over_orthanc", "predraft_over_pynetdicom_bare"
    least: float
    text: str


#: The issue's targets (issue 19): Orthanc is the durable reference, bare pynetdicom the ceiling of pynetdicom.
TARGETS = (
    Target("large", 1, "predraft_over_orthanc", 1.5, "large instances, one association: >= 1.5x Orthanc"),
    Target(
        "small",
        CONCURRENT_ASSOCIATIONS,
        "predraft_over_orthanc",
        0.3,
        "small instances, four associations: >= 0.3x Orthanc",
    ),
    Target(
        "small",
        CONCURRENT_ASSOCIATIONS,
        "predraft_over_pynetdicom_bare",
        0.6,
        "small instances, four associations: >= 60 % of bare pynetdicom",
    ),
)


@dataclass(frozen=True)
class Scenario:
    size: str  # one of SIZES: "large" or "small"
    associations: int

    def __post_init__(self) -> None:
        if self.size not in SIZES:
            raise ValueError(f"size {self.size!r} is not one of {SIZES}")
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


def _receivers(
    associations: int, *, orthanc: bool = True
) -> list[tuple[str, Callable[[Path], AbstractContextManager[Receiver]]]]:
    """storescp, predraft, bare pynetdicom, then Orthanc (the order rotates across repeats in
    :func:`run_scenario`); ``orthanc`` false leaves Orthanc out."""
    receivers: list[tuple[str, Callable[[Path], AbstractContextManager[Receiver]]]] = [
        ("storescp", lambda work: dcmtk_storescp(work, fork=associations > 1)),
        ("predraft", predraft_listener),
        ("pynetdicom_bare", bare_pynetdicom),
    ]
    if orthanc:
        receivers.append(("orthanc", orthanc_receiver))
    return receivers


def evaluate_targets(row: dict) -> list[dict]:
    """The issue's targets that apply to ``row``'s scenario, each with its measured ratio and whether it is
    met (None where the ratio was not measured: Orthanc skipped)."""
    evaluated = []
    for target in TARGETS:
        if (target.size, target.associations) != (row["size"], row["associations"]):
            continue
        measured = row.get(target.ratio)
        evaluated.append(
            {
                "target": target.text,
                "scenario": row["scenario"],
                "ratio": target.ratio,
                "at_least": target.least,
                "measured": measured,
                "met": None if measured is None else measured >= target.least,
            }
        )
    return evaluated


def run_scenario(
    scenario: Scenario, files: list[Path], repeats: int, work: Path, warm_up: Path, *, orthanc: bool = True
) -> dict:
    """Measure every receiver ``repeats`` times, rotating which goes first; report the medians, the ratios
    of their rates and the issue's targets for this scenario."""
    receivers = _receivers(scenario.associations, orthanc=orthanc)
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

    def ratio(subject: str, reference: str, figure: str = "") -> float | None:
        """``subject``'s rate over ``reference``'s (the ratio of their median times, reference's over
        subject's); None where either was not measured."""
        if subject not in runs or reference not in runs:
            return None
        seconds = {
            name: (row[name][figure] if figure else row[name])["seconds_median"] for name in (subject, reference)
        }
        return round(seconds[reference] / seconds[subject], 2)

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
    # Orthanc is the durable reference (it fsyncs each file and keeps an index, as predraft does).
    row["predraft_over_orthanc"] = ratio("predraft", "orthanc")
    row["predraft_over_orthanc_until_synced"] = ratio("predraft", "orthanc", "until_synced")
    row["orthanc_over_storescp"] = ratio("orthanc", "storescp")
    row["predraft_over_storescp"] = ratio("predraft", "storescp")
    row["predraft_over_storescp_until_synced"] = ratio("predraft", "storescp", "until_synced")
    # The split of the gap: what pynetdicom alone reaches, and what predraft's own work costs on top of it.
    row["pynetdicom_bare_over_storescp"] = ratio("pynetdicom_bare", "storescp")
    row["predraft_over_pynetdicom_bare"] = ratio("predraft", "pynetdicom_bare")
    row["targets"] = evaluate_targets(row)
    return row


def _format_ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def table(rows: list[dict], targets: list[dict]) -> str:
    """The rates (instances/s; predraft's MB/s too), the ratios, then each target and whether it is met."""
    lines = [
        f"{'scenario':<22} {'storescp':>9} {'bare pyn.':>9} {'orthanc':>9} {'predraft':>9} {'MB/s':>7} "
        f"{'p/orthanc':>9} {'p/bare':>7} {'orthanc/storescp':>16}"
    ]
    for row in rows:
        rates = [
            f"{row[name]['instances_per_s']:>9.1f}" if name in row else f"{'-':>9}"
            for name in ("storescp", "pynetdicom_bare", "orthanc", "predraft")
        ]
        lines.append(
            f"{row['scenario']:<22} {' '.join(rates)} {row['predraft']['mb_per_s']:>7.1f} "
            f"{_format_ratio(row['predraft_over_orthanc']):>9} "
            f"{_format_ratio(row['predraft_over_pynetdicom_bare']):>7} "
            f"{_format_ratio(row['orthanc_over_storescp']):>16}"
        )
    lines.append("(instances/s, medians; MB/s: predraft's)")
    lines.append("")
    lines.append(f"{'target':<66} {'measured':>8}  met")
    for target in targets:
        met = {True: "yes", False: "NO", None: "-"}[target["met"]]
        lines.append(f"{target['target']:<66} {_format_ratio(target['measured']):>8}  {met}")
    return "\n".join(lines)


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
    parser.add_argument(
        "--skip-orthanc",
        action="store_true",
        help="leave Orthanc out (where it is not installed): its ratios and targets are then null",
    )
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
    orthanc = not args.skip_orthanc
    require_tools(orthanc=orthanc)

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
        for size in SIZES:
            for associations in (1, CONCURRENT_ASSOCIATIONS):
                rows.append(
                    run_scenario(
                        Scenario(size, associations), files[size], repeats, work / "runs", warm_up, orthanc=orthanc
                    )
                )
    targets = [target for row in rows for target in row["targets"]]

    report = {
        "machine": {
            "node": platform.node(),
            "cpus": os.cpu_count(),
            "processor": platform.processor(),
            "python": platform.python_version(),
            "pynetdicom": pynetdicom.__version__,
            "pydicom": pydicom.__version__,
            "dcmtk": dcmtk_version(),
            "orthanc": orthanc_version() if orthanc else None,
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
            "orthanc": "the durable reference: a fresh storage folder and SQLite index per measurement, "
            "SyncStorageArea true, StorageCompression false, no plugins, TCP_NODELAY=1 in its environment "
            "(its DICOM side) and TcpNoDelay true (its HTTP side); counted through its REST API"
            if orthanc
            else "skipped (--skip-orthanc)",
            "ratios": "a_over_b: a's rate over b's, from the median times",
            "mb": "10^6 bytes of the sent files",
            "until_synced": "the clock stopped after an os.sync() that follows the last storescu exit: "
            "every receiver timed until the data is on disk (storescp does not fsync)",
        },
        "results": rows,
        "targets": targets,
        "all_targets_met": None
        if any(target["met"] is None for target in targets)
        else all(target["met"] for target in targets),
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(table(rows, targets))
    print(f"\nall targets met: {report['all_targets_met']}; written to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
