"""False hardware on untagged native real hips as the service drafts them, with the field read out of fold.

``predraft evaluate-real`` reports this figure with the shipped gate's field head, which was trained on every
FracAtlas image (the hip model's test patients included). This script gives the same figure with each
image's p(pelvis) taken from the gate's cross-validation instead (``out_of_fold.csv`` of its training run:
read by a model that never saw the image's group), and the hip model's calls from evaluate-real's
``predictions.csv``. Prints JSON.

    .venv/bin/python scripts/untagged_served_oof.py var/evaluation/demo-5-real/predictions.csv \\
        var/runs/gate/out_of_fold.csv models/gate/card.json
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import numpy as np

from predraft.evaluate_real import native_hips, served_figures
from predraft.models.taskcard import load_task_card
from predraft.models.taskdata import TaskRow


def main(predictions_csv: Path, out_of_fold_csv: Path, gate_card: Path) -> dict[str, object]:
    threshold = load_task_card(gate_card)[0].threshold("field", "pelvis")
    with out_of_fold_csv.open(newline="") as handle:
        pelvis_of = {
            (record["image"], record["crop"]): float(record["p_field_pelvis"]) for record in csv.DictReader(handle)
        }
    with predictions_csv.open(newline="") as handle:
        records = list(csv.DictReader(handle))
    rows = [
        TaskRow(
            record["image"],
            record["group"],
            record["crop"],
            {task: record[f"label_{task}"] for task in ("region", "hardware") if record.get(f"label_{task}")},
        )
        for record in records
    ]
    pelvis = np.array([pelvis_of.get((row.image, row.crop), 0.0) for row in rows])
    drafted = np.array([record["hip_drafted_as_hardware"] == "1" for record in records])
    read = np.array([record["hip_top_class"] != "none" for record in records])
    groups = np.array([row.group for row in rows])
    figures = served_figures(
        rows, native_hips(rows), read, drafted, groups, pelvis, threshold, n_bootstrap=1000, seed=0
    )
    return {
        "field_threshold": threshold,
        "native whole images": figures["read_as_ap_pelvis"]["n"],
        "served hips": figures["read_as_hardware"]["n"],
        "read_as_ap_pelvis (out of fold)": figures.pop("read_as_ap_pelvis"),
        **figures,
    }


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    print(json.dumps(main(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])), indent=2))
