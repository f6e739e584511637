"""How much does predraft's pixel pipeline add to a bare pydicom decode? Per transfer syntax of RG2.

For every ``RG2_*.dcm`` of ../shared/data/real, in the same run and interleaved, the median of N
repeats of:

* bare: ``ds.pixel_array`` on a freshly read dataset, pydicom choosing the plugin in its own order (with
  predraft.models.decoders registered, so 12-bit JPEG Extended decodes; there the imagecodecs plugin is named,
  as nothing else reads it);
* bare_same_plugin: ``ds.pixel_array`` through the plugin predraft.models.pixels.decode names (pyjpegls for
  JPEG-LS; otherwise the same as bare), so ``ours - bare_same_plugin`` is the cost of the preprocessing;
* ours: ``decode`` + ``to_unit_range`` + ``crop_collimation`` + ``letterbox(.., 380)`` on a freshly read
  dataset, with the time of each stage.

Reading the file (``dcmread`` from bytes in memory) is outside every timing; the three measurements run
in a shuffled order in each repeat. Files that do not decode
(the known-bad ``RG2_JPLY.dcm``) are listed with their error. The target: ours at most 50 % above bare.
Prints a table and writes JSON (bench/results/pixels.json).

    .venv/bin/python bench/pixels.py [--repeats 15] [--size 380]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path

import pydicom

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))

from predraft.models import decoders  # noqa: E402
from predraft.models.pixels import PixelDataError, crop_collimation, decode, letterbox, to_unit_range  # noqa: E402

REAL = ROOT.parent.parent / "shared" / "data" / "real"
TARGET_OVERHEAD = 0.5


def _bare(data: bytes, same_plugin: bool = False) -> float:
    ds = pydicom.dcmread(io.BytesIO(data))
    plugin = decoders.preferred_plugin(ds)
    if plugin and (same_plugin or plugin == decoders.PLUGIN_LABEL):
        ds.pixel_array_options(decoding_plugin=plugin)
    start = time.perf_counter()
    ds.pixel_array  # noqa: B018 - the decode is the point
    return time.perf_counter() - start


def _ours(data: bytes, size: int) -> dict[str, float]:
    ds = pydicom.dcmread(io.BytesIO(data))
    times = {}
    start = time.perf_counter()
    stored = decode(ds)
    times["decode"] = time.perf_counter() - start
    mark = time.perf_counter()
    unit = to_unit_range(ds, stored, overwrite_input=True)  # as predraft.workers.prepare does
    times["to_unit_range"] = time.perf_counter() - mark
    mark = time.perf_counter()
    cropped = crop_collimation(unit)
    times["crop"] = time.perf_counter() - mark
    mark = time.perf_counter()
    letterbox(cropped, size)
    times["letterbox"] = time.perf_counter() - mark
    times["total"] = time.perf_counter() - start
    return times


def measure(path: Path, repeats: int, size: int) -> dict:
    data = path.read_bytes()
    ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    syntax = ds.file_meta.TransferSyntaxUID
    row = {"file": path.name, "transfer_syntax": str(syntax), "name": syntax.name}
    try:
        _ours(data, size)  # warm-up: imports, plugin set-up, torch kernels
        _bare(data)
    except PixelDataError as exc:
        return {**row, "decodes": False, "error": str(exc)}
    bare, same, ours = [], [], []
    runs = [
        lambda: bare.append(_bare(data)),
        lambda: same.append(_bare(data, same_plugin=True)),
        lambda: ours.append(_ours(data, size)),
    ]
    order = random.Random(path.name)
    for _ in range(repeats):
        order.shuffle(runs)  # no measurement always follows the same one (allocator and cache state)
        for run in runs:
            run()
    bare_ms = statistics.median(bare) * 1000
    same_ms = statistics.median(same) * 1000
    stages = {stage: round(statistics.median(t[stage] for t in ours) * 1000, 2) for stage in ours[0]}
    overhead = (stages["total"] - bare_ms) / bare_ms
    return {
        **row,
        "decodes": True,
        "plugin": decoders.preferred_plugin(ds) or "pydicom's order",
        "bare_ms": round(bare_ms, 2),
        "bare_same_plugin_ms": round(same_ms, 2),
        "ours_ms": stages["total"],
        "stages_ms": stages,
        "overhead_ratio": round(overhead, 3),
        "preprocessing_overhead_ratio": round((stages["total"] - same_ms) / same_ms, 3),
        "target_met": overhead <= TARGET_OVERHEAD,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--size", type=int, default=380)
    args = parser.parse_args(argv)
    files = sorted(REAL.glob("RG2_*.dcm"))
    if not files:
        print(f"no RG2_*.dcm under {REAL}", file=sys.stderr)
        return 1
    results = [measure(path, args.repeats, args.size) for path in files]
    print(
        f"{'file':20s} {'bare ms':>8s} {'same ms':>8s} {'ours ms':>8s} {'overhead':>9s} {'pre-only':>9s}  "
        f"target  {'decode':>7s} {'unit':>6s} {'crop':>6s} {'letterbox':>9s}"
    )
    for row in results:
        if not row["decodes"]:
            print(f"{row['file']:20s} does not decode: {row['error'][:90]}")
            continue
        stages = row["stages_ms"]
        print(
            f"{row['file']:20s} {row['bare_ms']:8.1f} {row['bare_same_plugin_ms']:8.1f} {row['ours_ms']:8.1f} "
            f"{row['overhead_ratio']:9.1%} {row['preprocessing_overhead_ratio']:9.1%}  "
            f"{'yes' if row['target_met'] else 'NO':6s}  {stages['decode']:7.1f} {stages['to_unit_range']:6.1f} "
            f"{stages['crop']:6.1f} {stages['letterbox']:9.1f}"
        )
    decoded = [row for row in results if row["decodes"]]
    report = {
        "machine": os.uname().nodename,
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg(),
        "repeats": args.repeats,
        "size": args.size,
        "target_overhead": TARGET_OVERHEAD,
        "all_targets_met": all(row["target_met"] for row in decoded),
        "results": results,
    }
    out = ROOT / "results" / "pixels.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"all targets met: {report['all_targets_met']}; written to {out.relative_to(ROOT.parent)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
