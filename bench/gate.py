"""What the body-part gate adds to preparing an image, on this machine: against preparing without it, and
against preparing as the service did before the gate.

Per image, alternately for ``--rounds`` rounds:

- without: ``prepare_file`` without the gate (read, decode, window, crop, split, letterbox the hips);
- before the gate: the same, then the model-free metal check (``predraft.models.metal.detect_metal``) over each
  hip the tags give, on the hip at full resolution: what prepare did for every image it read until the gate's
  hardware head replaced the metal check (2026-12-05, 262246f). The service then refused an image whose tags
  name no body part before decoding it, so for the untagged image this arm is a reference, not a service;
- with the gate: ``prepare_file`` with the gate image as well (and the two halves, when the tags name no view
  nor side), then ``Gate.apply`` (the gate's network on the whole image: scope, and the field where the tags
  name no view; with the hips it chose: the hardware check's findings).

As in the service, every ``prepare_file`` runs in a decode sandbox's child (:mod:`predraft.workers.sandbox`,
with the workers' default bounds) and its result comes back through a pipe; the gate and the metal check run
in this process, torch limited to ``--threads`` threads (1 by default; the service's worker leaves torch its
default, every core). The images: the real NEMA hip (RG2, 2140 x 1760; its tags name no view), the real
tibia (RG3), a phantom AP pelvis, and the same phantom with every tag that names a view, side or body part
removed (the gate reads it as an AP pelvis and splits it). Per image, two differences of medians:

- ``gate_added_ms``: with the gate less without it, the gate's own cost (the stricter figure);
- ``added_over_before_gate_ms``: with the gate less before the gate, what preparing an image costs now over
  what it cost before (the metal check no longer run taken off), for the images the service read then.

The target is under 30 ms on a two-core CPU; the JSON says, for each figure, whether its worst image met it.
Prints a table and writes JSON (bench/results/gate.json).

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

import numpy as np
import pydicom
import torch

from predraft.core.settings import WorkersSettings
from predraft.models.card import DEMO_MODEL_CARD, load_card
from predraft.models.metal import detect_metal
from predraft.models.phantoms import write_demo_study
from predraft.models.prepare import prepare_file
from predraft.models.taskcard import GATE_CARD
from predraft.workers.gate import load_gate
from predraft.workers.prepare import prepare_bounded
from predraft.workers.sandbox import Sandbox

ROOT = Path(__file__).resolve().parent
REAL = ROOT.parent.parent / "shared" / "data" / "real"
TARGET_MS = 30.0
#: The image whose tags name no body part: the service refused it unread before the gate.
UNTAGGED = "untagged AP pelvis"


def _median_ms(seconds: list[float]) -> float:
    return round(statistics.median(seconds) * 1000, 1)


def _tag_hips(path: Path, input_size: int) -> list[np.ndarray]:
    """The hips the tags give, at full resolution, as prepare held them for the metal check before the gate:
    collimation cropped, then both halves of an AP pelvis or the whole image oriented as one hip."""
    from predraft.models.pixels import crop_collimation, decode, split_bilateral, standard_orientation, to_unit_range
    from predraft.models.taxonomy import View

    ds = pydicom.dcmread(path)
    labels = prepare_file(path, input_size=input_size).labels
    image = crop_collimation(to_unit_range(ds, decode(ds)))
    orientation = ds.get("PatientOrientation")
    if labels.view is View.AP_PELVIS:
        return list(split_bilateral(image, orientation).values())
    return [standard_orientation(image, orientation)]


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


def _prepare_sandbox() -> Sandbox:
    """A decode sandbox as a worker thread has one, with the workers' default bounds: the service prepares each
    image in such a child (its own malloc settings, one thread), and sends the result back through a pipe."""
    defaults = WorkersSettings()
    return Sandbox(
        timeout_seconds=defaults.decode_timeout_seconds,
        memory_bytes=defaults.decode_memory_bytes,
        preload=("predraft.models.prepare",),
    )


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
            UNTAGGED: _untagged_copy(phantom, Path(folder) / "untagged.dcm"),
        }
        missing = [str(path) for path in images.values() if not path.is_file()]
        if missing:
            sys.exit(f"missing images: {missing}")
        results = {}
        with _prepare_sandbox() as sandbox:

            def prepare(path: Path, **gate_inputs: object) -> object:
                return prepare_bounded(path, input_size=input_size, sandbox=sandbox, **gate_inputs)  # type: ignore[arg-type]

            with_gate_inputs = {"gate_size": gate.size, "with_halves": gate.reads_field}
            for path in images.values():  # warm-up: the child's and torch's first passes
                gate.apply(prepare(path, **with_gate_inputs))
            for name, path in images.items():
                hips = _tag_hips(path, input_size)
                without, metal, before, with_gate = [], [], [], []
                for _ in range(args.rounds):
                    started = time.perf_counter()
                    prepare(path)
                    without.append(time.perf_counter() - started)
                    started = time.perf_counter()
                    prepare(path)
                    prepared = time.perf_counter()
                    for hip in hips:
                        detect_metal(hip)
                    before.append(time.perf_counter() - started)
                    metal.append(time.perf_counter() - prepared)
                    started = time.perf_counter()
                    gated = gate.apply(prepare(path, **with_gate_inputs))
                    with_gate.append(time.perf_counter() - started)
                read_before_gate = name != UNTAGGED
                results[name] = {
                    "without_ms": _median_ms(without),
                    "before_gate_ms": _median_ms(before),
                    "with_gate_ms": _median_ms(with_gate),
                    "gate_added_ms": round(_median_ms(with_gate) - _median_ms(without), 1),
                    "added_over_before_gate_ms": round(_median_ms(with_gate) - _median_ms(before), 1)
                    if read_before_gate
                    else None,
                    "model_free_metal_check_ms": _median_ms(metal),
                    "hips": len(gated.hips),
                    "reads_as": gated.reading.top[0] if gated.reading else None,
                    "in_scope": gated.decision.in_scope,
                    "view": gated.labels.view.value,
                }
    worst = max(result["gate_added_ms"] for result in results.values())
    worst_over_before = max(
        result["added_over_before_gate_ms"]
        for result in results.values()
        if result["added_over_before_gate_ms"] is not None
    )
    report = {
        "machine": platform.processor() or platform.machine(),
        "torch_threads": args.threads,
        "rounds": args.rounds,
        "gate": gate.model.card.display_name,
        "gate_input_size": gate.size,
        "images": results,
        "target_ms": TARGET_MS,
        "worst_added_ms": worst,
        "met": worst < TARGET_MS,
        "worst_added_over_before_gate_ms": worst_over_before,
        "met_over_before_gate": worst_over_before < TARGET_MS,
        "untagged_image_read_before_gate": False,
    }
    print(
        f"{'image':20} {'without':>8} {'before':>8} {'with gate':>9} {'added':>6} {'over before':>11}"
        "  reads as (hips, view)   [ms; before: prepare with the metal check, as before the gate]"
    )
    for name, result in results.items():
        over = result["added_over_before_gate_ms"]
        print(
            f"{name:20} {result['without_ms']:8.1f} {result['before_gate_ms']:8.1f} {result['with_gate_ms']:9.1f}"
            f" {result['gate_added_ms']:6.1f} {'-' if over is None else f'{over:.1f}':>11}"
            f"  {result['reads_as']} (in scope: {result['in_scope']}; {result['hips']} hip(s), {result['view']})"
        )
    print(
        f"worst added {worst:.1f} ms ({'met' if report['met'] else 'MISSED'}); worst over prepare before the gate "
        f"{worst_over_before:.1f} ms ({'met' if report['met_over_before_gate'] else 'MISSED'}); "
        f"target under {TARGET_MS:.0f} ms"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
