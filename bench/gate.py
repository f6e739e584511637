"""What the body-part gate adds to preparing an image, on this machine, against preparing without it.

Per image, alternately for ``--rounds`` rounds:

- without: ``prepare_file`` as before the gate (read, decode, window, crop, split, letterbox the hips);
- with: ``prepare_file`` with the gate image as well (and the two halves, when the tags name no view nor
  side), then ``Gate.apply`` (the gate's network on the whole image: scope, and the field where the tags
  name no view; then on the hips it chose: the hardware check's findings);
- beside them, the model-free metal check over the same hips, which prepare ran before the gate's hardware
  head replaced it (what it no longer spends).

Both run in this process with torch limited to ``--threads`` threads (a worker's prepare thread). The
images: the real NEMA hip (RG2, 2140 x 1760; its tags name no view), the real tibia (RG3), a phantom AP
pelvis, and the same phantom with every tag that names a view, side or body part removed (the gate reads
it as an AP pelvis and splits it: the dearest path). The gate's
cost is the difference of the medians, per image; its target is under 30 ms on a two-core CPU. Prints a
table and writes JSON (bench/results/gate.json).

    .venv/bin/python bench/gate.py [--rounds 15]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pydicom
import torch

from predraft.models.card import DEMO_MODEL_CARD, load_card
from predraft.models.phantoms import write_demo_study
from predraft.models.prepare import prepare_file
from predraft.models.taskcard import GATE_CARD
from predraft.workers.gate import load_gate

ROOT = Path(__file__).resolve().parent
REAL = ROOT.parent.parent / "shared" / "data" / "real"
TARGET_MS = 30.0


def _metal_check_ms(path: Path, input_size: int, rounds: int) -> float:
    """Median time of the model-free metal check over the image's hips: what prepare no longer spends."""
    from predraft.models.metal import detect_metal
    from predraft.models.pixels import crop_collimation, decode, split_bilateral, standard_orientation, to_unit_range
    from predraft.models.taxonomy import View

    ds = pydicom.dcmread(path)
    labels = prepare_file(path, input_size=input_size).labels
    image = crop_collimation(to_unit_range(ds, decode(ds)))
    orientation = ds.get("PatientOrientation")
    crops = (
        list(split_bilateral(image, orientation).values())
        if labels.view is View.AP_PELVIS
        else [standard_orientation(image, orientation)]
    )
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        for crop in crops:
            detect_metal(crop)
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


#: Tags that say what an image shows, view or side: removed from the untagged copy.
IMAGE_TAGS = (
    "BodyPartExamined",
    "AnatomicRegionSequence",
    "StudyDescription",
    "SeriesDescription",
    "ProtocolName",
    "ViewPosition",
    "ViewCodeSequence",
    "ViewModifierCodeSequence",
    "ImageLaterality",
    "Laterality",
    "PatientOrientation",
)


def _untagged_copy(path: Path, target: Path) -> Path:
    ds = pydicom.dcmread(path)
    for keyword in IMAGE_TAGS:
        if keyword in ds:
            delattr(ds, keyword)
    ds.save_as(target)
    return target


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (a worker's prepare thread: 1)")
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "gate.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    input_size = load_card(DEMO_MODEL_CARD)[0].input_size
    gate = load_gate(GATE_CARD)
    with tempfile.TemporaryDirectory() as folder:
        phantom = write_demo_study(Path(folder))[0].path
        images = {
            "RG2 real hip": REAL / "RG2_UNC.dcm",
            "RG3 real tibia": REAL / "RG3_UNC.dcm",
            "phantom AP pelvis": phantom,
            "untagged AP pelvis": _untagged_copy(phantom, Path(folder) / "untagged.dcm"),
        }
        missing = [str(path) for path in images.values() if not path.is_file()]
        if missing:
            sys.exit(f"missing images: {missing}")
        for path in images.values():  # warm-up: caches, torch's first pass
            gate.apply(prepare_file(path, input_size=input_size, gate_size=gate.size, with_halves=gate.reads_field))
        results = {}
        for name, path in images.items():
            without, with_gate = [], []
            for _ in range(args.rounds):
                started = time.perf_counter()
                prepare_file(path, input_size=input_size)
                without.append(time.perf_counter() - started)
                started = time.perf_counter()
                gated = gate.apply(
                    prepare_file(path, input_size=input_size, gate_size=gate.size, with_halves=gate.reads_field)
                )
                with_gate.append(time.perf_counter() - started)
            added = (statistics.median(with_gate) - statistics.median(without)) * 1000
            results[name] = {
                "without_ms": round(statistics.median(without) * 1000, 1),
                "with_gate_ms": round(statistics.median(with_gate) * 1000, 1),
                "gate_added_ms": round(added, 1),
                "hips": len(gated.hips),
                "model_free_metal_check_ms": round(_metal_check_ms(path, input_size, args.rounds), 1),
                "reads_as": gated.reading.top[0] if gated.reading else None,
                "in_scope": gated.decision.in_scope,
                "view": gated.labels.view.value,
            }
    worst = max(result["gate_added_ms"] for result in results.values())
    report = {
        "machine": platform.processor() or platform.machine(),
        "torch_threads": args.threads,
        "rounds": args.rounds,
        "gate": gate.model.card.display_name,
        "gate_input_size": gate.size,
        "images": results,
        "worst_added_ms": worst,
        "target_ms": TARGET_MS,
        "met": worst < TARGET_MS,
    }
    print(f"{'image':20} {'without ms':>10} {'with gate ms':>12} {'added ms':>9}  reads as (hips, view)")
    for name, result in results.items():
        print(
            f"{name:20} {result['without_ms']:10.1f} {result['with_gate_ms']:12.1f} {result['gate_added_ms']:9.1f}"
            f"  {result['reads_as']} (in scope: {result['in_scope']}; {result['hips']} hip(s), {result['view']})"
        )
    print(f"worst added {worst:.1f} ms; target under {TARGET_MS:.0f} ms: {'met' if report['met'] else 'MISSED'}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
