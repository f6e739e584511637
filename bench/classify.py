"""Classification throughput and latency: the micro-batcher against the bare network, in the same run.

For each of the paper's networks (tf_efficientnet_b4 at 380 px, dm_nfnet_f3 at 320 px; random weights
written as a card + safetensors and loaded with ``load_classifier``):

- bare: ``Classifier.forward`` on already normalised batches on the device (bf16 autocast and
  channels_last on CUDA), ``--batch`` images at a time: what the network alone can do;
- batcher: letterboxed uint8 images (two per request, as an AP pelvis gives two hips) submitted by
  ``--submitters`` threads that each wait for their rows, as classify tasks of a threads pool do,
  through ``MicroBatcher(batch_size=--batch, wait_ms=--wait-ms)``: upload, normalisation, forward,
  softmax and the hand-back included;
- bare and batcher are measured alternately for ``--rounds`` rounds; the medians are compared;
- study latency: one three-view study (AP pelvis split into two hips, frog-leg, cross-table lateral: four
  images in three requests) submitted at once to the idle batcher, until all three have their rows.

Prints a table and writes JSON (bench/results/classify.json) with the device, targets and whether
they were met (B4 2,500 img/s and F3 1,500 img/s through the batcher, at least 70 % of bare; a study in
under 50 ms). The targets are for a GPU; on CPU they are reported, not expected.

    .venv/bin/python bench/classify.py --device cuda [--batch 256 --images 8192 --compile]
    .venv/bin/python bench/classify.py --device cpu --images 16 --batch 8 --rounds 2 --study-repeats 3
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import timm
import torch

from predraft.models.factory import Classifier, load_classifier, write_untrained_model
from predraft.workers.batcher import MicroBatcher

ROOT = Path(__file__).resolve().parent

NETWORKS = {"tf_efficientnet_b4": 380, "dm_nfnet_f3": 320}
TARGET_IMAGES_PER_SECOND = {"tf_efficientnet_b4": 2500.0, "dm_nfnet_f3": 1500.0}
TARGET_SHARE_OF_BARE = 0.70
TARGET_STUDY_SECONDS = 0.050
STUDY_REQUESTS = (2, 1, 1)  # AP pelvis -> right and left hip; frog-leg; cross-table lateral


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} CPUs, {torch.get_num_threads()} threads)"
    except OSError:
        pass
    return f"{platform.processor() or platform.machine()} ({os.cpu_count()} CPUs)"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_bare(classifier: Classifier, images: np.ndarray, batch: int) -> float:
    """Images per second of the network alone: one normalised batch, already on the device, run
    ``len(images) // batch`` times (at least once)."""
    repeats = max(1, len(images) // batch)
    with torch.inference_mode():
        tensor = classifier.preprocess(images[:batch])
        classifier.forward(tensor)  # warm-up at this shape
        _sync(classifier.device)
        start = time.perf_counter()
        for _ in range(repeats):
            classifier.forward(tensor)
        _sync(classifier.device)
        elapsed = time.perf_counter() - start
    return repeats * len(tensor) / elapsed


def measure_batcher(batcher: MicroBatcher, images: np.ndarray, submitters: int) -> tuple[float, float]:
    """Images per second and mean batch size through the batcher, fed two images per request by
    ``submitters`` threads that each wait for their rows."""
    requests = [images[start : start + 2] for start in range(0, len(images), 2)]
    before = batcher.stats
    barrier = threading.Barrier(submitters + 1)
    chunks = [requests[i::submitters] for i in range(submitters)]

    def feed(chunk: list[np.ndarray]) -> int:
        barrier.wait()
        return sum(len(batcher.predict(request)) for request in chunk)

    with ThreadPoolExecutor(max_workers=submitters) as pool:
        futures = [pool.submit(feed, chunk) for chunk in chunks]
        barrier.wait()
        start = time.perf_counter()
        done = sum(future.result() for future in futures)
        elapsed = time.perf_counter() - start
    assert done == len(images), f"{done} rows for {len(images)} images"
    after = batcher.stats
    mean_batch = (after.images - before.images) / max(1, after.batches - before.batches)
    return len(images) / elapsed, mean_batch


def measure_study(batcher: MicroBatcher, size: int, repeats: int, rng: np.random.Generator) -> list[float]:
    """Seconds from submitting a three-view study's four hip images (three requests) to the idle
    batcher until all of them have their rows."""
    latencies = []
    with ThreadPoolExecutor(max_workers=len(STUDY_REQUESTS)) as pool:
        for _ in range(repeats):
            requests = [rng.integers(0, 256, size=(count, size, size), dtype=np.uint8) for count in STUDY_REQUESTS]
            barrier = threading.Barrier(len(requests) + 1)

            def one(request: np.ndarray, barrier: threading.Barrier = barrier) -> np.ndarray:
                barrier.wait()
                return batcher.predict(request)

            futures = [pool.submit(one, request) for request in requests]
            barrier.wait()
            start = time.perf_counter()
            for future in futures:
                future.result()
            latencies.append(time.perf_counter() - start)
    return latencies


def run_network(architecture: str, args: argparse.Namespace, work: Path) -> dict:
    size = NETWORKS[architecture]
    loaded = time.perf_counter()
    card_path = write_untrained_model(work / architecture, architecture=architecture, input_size=size)
    classifier = load_classifier(card_path, args.device, compile=args.compile)
    loaded = time.perf_counter() - loaded
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(args.images, size, size), dtype=np.uint8)
    warm = time.perf_counter()
    classifier.predict(images[: args.batch])  # warm-up (and compilation) at the full batch size
    warm = time.perf_counter() - warm

    submitters = args.submitters or max(1, min(args.batch, math.ceil(len(images) / 2)))
    bare_rounds, batcher_rounds, mean_batches = [], [], []
    with MicroBatcher(classifier, batch_size=args.batch, wait_ms=args.wait_ms, name="bench-batcher") as batcher:
        for _ in range(args.rounds):  # alternate, so that a noisy neighbour hits both alike
            bare_rounds.append(measure_bare(classifier, images, args.batch))
            rate, mean_batch = measure_batcher(batcher, images, submitters)
            batcher_rounds.append(rate)
            mean_batches.append(mean_batch)
        measure_study(batcher, size, 1, rng)  # warm-up at the study's batch shape
        latencies = measure_study(batcher, size, args.study_repeats, rng)
    bare, batched = statistics.median(bare_rounds), statistics.median(batcher_rounds)
    mean_batch = statistics.mean(mean_batches)
    share = batched / bare
    study = statistics.median(latencies)
    target = TARGET_IMAGES_PER_SECOND[architecture]
    return {
        "architecture": architecture,
        "input_size": size,
        "images": args.images,
        "batch": args.batch,
        "wait_ms": args.wait_ms,
        "submitters": submitters,
        "compiled": classifier.compiled,
        "load_seconds": round(loaded, 2),
        "warmup_seconds": round(warm, 2),
        "rounds": args.rounds,
        "bare_rounds": [round(rate, 2) for rate in bare_rounds],
        "batcher_rounds": [round(rate, 2) for rate in batcher_rounds],
        "bare_images_per_second": round(bare, 2),
        "batcher_images_per_second": round(batched, 2),
        "batcher_share_of_bare": round(share, 3),
        "batcher_mean_batch": round(mean_batch, 2),
        "study_latency_median_ms": round(study * 1000, 1),
        "study_latency_max_ms": round(max(latencies) * 1000, 1),
        "study_repeats": args.study_repeats,
        "targets": {
            "batcher_images_per_second": target,
            "share_of_bare": TARGET_SHARE_OF_BARE,
            "study_latency_ms": TARGET_STUDY_SECONDS * 1000,
        },
        "met": {
            "batcher_images_per_second": batched >= target,
            "share_of_bare": share >= TARGET_SHARE_OF_BARE,
            "study_latency": study < TARGET_STUDY_SECONDS,
        },
    }


def _table(rows: list[dict]) -> str:
    header = (
        f"{'network':<20} {'bare img/s':>11} {'batcher img/s':>14} {'share':>6} {'mean batch':>10} "
        f"{'study ms (med/max)':>19}  targets met (img/s, share, study)"
    )
    lines = [header, "-" * len(header)]
    for row in rows:
        met = row["met"]
        lines.append(
            f"{row['architecture']:<20} {row['bare_images_per_second']:>11.2f} "
            f"{row['batcher_images_per_second']:>14.2f} "
            f"{row['batcher_share_of_bare']:>6.0%} {row['batcher_mean_batch']:>10.1f} "
            f"{row['study_latency_median_ms']:>9.1f}/{row['study_latency_max_ms']:<9.1f}  "
            f"{'yes' if met['batcher_images_per_second'] else 'no'}, {'yes' if met['share_of_bare'] else 'no'}, "
            f"{'yes' if met['study_latency'] else 'no'}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=256, help="batch size of the bare forward and the batcher")
    parser.add_argument("--images", type=int, default=8192, help="images per measurement")
    parser.add_argument("--wait-ms", type=float, default=20.0, help="the batcher's deadline (settings default 20)")
    parser.add_argument(
        "--submitters", type=int, default=0, help="feeding threads (default: --batch, at most one per request)"
    )
    parser.add_argument("--study-repeats", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3, help="bare and batcher measured alternately; medians")
    parser.add_argument("--compile", action="store_true", help="torch.compile (default mode; CUDA only)")
    parser.add_argument("--networks", nargs="+", choices=sorted(NETWORKS), default=list(NETWORKS))
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "classify.json")
    args = parser.parse_args(argv)
    if min(args.batch, args.images, args.study_repeats, args.rounds) < 1:
        parser.error("--batch, --images, --study-repeats and --rounds must be at least 1")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA device here")
    device = torch.device(args.device)

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for architecture in args.networks:
            rows.append(run_network(architecture, args, Path(tmp)))
            print(f"{architecture}: done", file=sys.stderr, flush=True)
    report = {
        "device": args.device,
        "device_name": device_name(device),
        "machine": platform.node(),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "precision": "bf16 autocast, channels_last" if device.type == "cuda" else "float32",
        "note": "random weights; targets are for a GPU" if device.type == "cpu" else "random weights",
        "results": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"device: {report['device_name']} ({report['precision']})")
    print(_table(rows))
    print(f"written: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
