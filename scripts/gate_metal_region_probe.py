"""Does metal make the gate read a film as a hip? A probe on one held-out fold, bundled recipe against metal paste.

    bash scripts/train_gate.sh    # or only its first lines: var/runs/demo-4, var/phantoms/train, var/gate-images
    .venv/bin/python scripts/gate_metal_region_probe.py var/runs/metal-probe \\
        --out docs/evaluation/gate-metal-region-probe.json

The gate learned hips from FracAtlas and from phantoms, three in four of whose hips hold hardware, and other regions
from FracAtlas films that seldom do (shoulder implants aside). A knee with an arthroplasty tagged PELVIS is then at
risk of reading as a hip. This trains fold ``--fold`` of the gate's cross-validation twice, with its folds, fold
seed and settings (``scripts/gate_init_screening.py``'s ``gate_config``): the bundled recipe, and the same with
synthetic metal (``predraft.models.metalpaste``) drawn on 20 % of the real films without hardware drawn for
training. Each network then reads the fold's held-out real films: the legs, hands and shoulders without hardware as
they are and with one synthetic implant drawn on each (the same drawings for both networks), the hips without
hardware likewise, and the films with real hardware (the legs among them apart: the shoulder implants are most of
them). Reported per group: the share at or above each network's balanced hip threshold (fitted on the held-out films
as they are, hip against the rest) and the median p(hip). The paste network was trained on such drawings (on other
films), so its figures with metal drawn are a check that it learned them, not a fair test; the bundled network never
saw one. Fold weights are kept in the run folder, with their training minutes, and reused. Prints a table and
writes the JSON.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
from gate_init_screening import LABELS, ROOT, gate_config  # scripts/ is on sys.path when a script there runs
from safetensors.torch import load_file, save_file

from predraft.models.calibration import softmax
from predraft.models.imagetask import TaskNetwork
from predraft.models.metalpaste import draw_metal
from predraft.models.taskdata import prepare_task_images, read_task_rows, task_classes
from predraft.models.taskmetrics import task_targets
from predraft.models.tasktraining import balanced_threshold, deal_folds, fit_fold, predict_logits

START = ROOT / "var" / "runs" / "demo-4" / "weights.safetensors"
RECIPES = {"bundled": 0.0, "metal_paste_0_2": 0.2}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="run folder: the pixel cache and each recipe's fold weights")
    parser.add_argument("--fold", type=int, default=0)
    parser.add_argument("--images", type=Path, default=ROOT / "var" / "gate-images")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    args.run.mkdir(parents=True, exist_ok=True)
    configs = {name: gate_config(START, 20, metal_paste=share) for name, share in RECIPES.items()}
    config = configs["bundled"]
    rows = read_task_rows(LABELS, args.images, list(config.tasks))
    classes = {task: task_classes(rows, task, order) for task, order in config.tasks.items()}
    pixels = prepare_task_images(args.images, rows, input_size=config.input_size, cache_dir=args.run / "cache")
    targets, fold_of = task_targets(rows, classes), deal_folds(rows, config)
    held = np.array(
        [
            fold == args.fold and row.source not in config.synthetic_sources and row.crop == "whole"
            for row, fold in zip(rows, fold_of, strict=True)
        ]
    )
    region = np.array([row.labels.get("region", "") for row in rows])
    hardware = np.array([row.labels.get("hardware", "") for row in rows])
    groups = {
        "other_regions_without_hardware": held & (region != "hip") & (hardware == "absent"),
        "hips_without_hardware": held & (region == "hip") & (hardware == "absent"),
        "legs_with_hardware": held & (region == "leg") & (hardware == "present"),
        "other_regions_with_hardware": held & (region != "hip") & (hardware == "present"),
        "hips_with_hardware": held & (region == "hip") & (hardware == "present"),
    }
    rng = np.random.default_rng(2026)
    drawn = {index: draw_metal(pixels[index], rng) for index in np.flatnonzero(held & (hardware == "absent"))}
    hip = classes["region"].index("hip")
    summary: dict[str, Any] = {"fold": args.fold, "images": {name: int(mask.sum()) for name, mask in groups.items()}}
    for name, recipe in configs.items():
        weights = args.run / f"{name}-fold{args.fold}.safetensors"
        minutes_file = weights.with_suffix(".minutes")
        if weights.exists() and minutes_file.exists():
            network = TaskNetwork(recipe.architecture, classes, global_pool=recipe.global_pool)
            network.load_state_dict(load_file(str(weights)))
            network.eval()
        else:
            started = time.monotonic()
            network = fit_fold(pixels, targets, rows, fold_of, args.fold, classes, recipe, progress=print)
            save_file({k: v.contiguous() for k, v in network.state_dict().items()}, str(weights))
            minutes_file.write_text(f"{(time.monotonic() - started) / 60}\n")
        minutes = float(minutes_file.read_text())
        plain = softmax(predict_logits(network, pixels[held])["region"])[:, hip]
        p_hip = np.zeros(len(rows))
        p_hip[held] = plain
        threshold = balanced_threshold(plain, region[held] == "hip")
        indices = sorted(drawn)
        p_drawn = np.zeros(len(rows))
        p_drawn[indices] = softmax(predict_logits(network, np.stack([drawn[i] for i in indices]))["region"])[:, hip]
        found: dict[str, Any] = {"minutes_training": round(minutes, 1), "hip_threshold_balanced": threshold}
        for group, mask in groups.items():
            found[group] = {
                "as_they_are": {
                    "read_as_hip": round(float((p_hip[mask] >= threshold).mean()), 4),
                    "median_p_hip": round(float(np.median(p_hip[mask])), 4),
                }
            }
            if (hardware[mask] == "absent").all():
                found[group]["with_metal_drawn"] = {
                    "read_as_hip": round(float((p_drawn[mask] >= threshold).mean()), 4),
                    "median_p_hip": round(float(np.median(p_drawn[mask])), 4),
                }
        summary[name] = found
        for group in groups:
            cell = found[group]
            drawn_text = (
                f"  with metal drawn {cell['with_metal_drawn']['read_as_hip']:.3f}"
                if "with_metal_drawn" in cell
                else ""
            )
            print(f"{name:16} {group:32} read as hip {cell['as_they_are']['read_as_hip']:.3f}{drawn_text}")
    args.out.write_text(json.dumps(summary, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
