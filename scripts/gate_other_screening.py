"""Screening: could the gate tell an image of a region it never saw (a chest) from the limbs it knows, with no
"other" images to learn from? A Mahalanobis distance on the gate's own features (Lee et al., NeurIPS 2018:
class means and one shared covariance of the global-pooled features), no training.

Fitted on the real whole images the bundled gate was trained on (FracAtlas, the shoulder-implant set: the rows
of models/data/gate_labels.csv), one mean per labelled region, covariance shrunk towards its diagonal. Because
the gate was trained on those same images, their distances are smaller than a new limb film's would be; the
script scores them two ways: in-sample, and with the means and covariance fitted on four of five groups of
patients and the fifth scored (the network still saw it: a lower bound on a new film's distance, not an
estimate). Then the DICOM fixtures of ../shared/data/real (test fixtures, never fitted on), prepared as the
service prepares an image sent without body-part tags: the chests (RG1, 966, the small highdicom DX chest, and
a 16-bit DX chest whose own window fits none of its values), the hand, the tibia, the hip.

Prints each fixture's distance and where it falls among the real limb films', and writes JSON. Nothing here
is used by the service: it is a measurement for whoever plans an "other" class.

    .venv/bin/python scripts/gate_other_screening.py [--out docs/evaluation/gate-other-screening.json]
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pydicom
import torch

from predraft.models.imagetask import load_task_model, to_network_input
from predraft.models.pixels import letterbox
from predraft.models.prepare import prepare_file
from predraft.models.taskcard import GATE_CARD
from predraft.models.taskdata import crop_image, read_grey

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data"
LABELS = ROOT / "models" / "data" / "gate_labels.csv"
REAL_SOURCES = ("fracatlas", "shoulder-implants")
FIXTURES = {
    "RG1 chest PA (CR)": "RG1_UNCR.dcm",
    "966 chest (DX)": "966_fixed.dcm",
    "highdicom DX chest, 169 x 211": "dx_image.dcm",
    "DX chest whose window fits none of its values": "JPEG2KLossless_1s_1f_u_16_16.dcm",
    "hand (CR)": "NM_Kakadu44_SOTmarkerincons.dcm",
    "RG3 tibia (CR)": "RG3_UNC.dcm",
    "RG2 hip (CR)": "RG2_UNC.dcm",
}
#: Tags that name a body part: removed, so that each fixture is read as an untagged image is.
REGION_TAGS = ("BodyPartExamined", "AnatomicRegionSequence", "StudyDescription", "SeriesDescription", "ProtocolName")
SHRINKAGE = 0.1
FOLDS = 5


def _features(network: torch.nn.Module, images: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return np.concatenate(
            [
                network.backbone(to_network_input(torch.from_numpy(images[i : i + 64]))).numpy()
                for i in range(0, len(images), 64)
            ]
        )


class Mahalanobis:
    """Class means and a shared covariance (shrunk towards its diagonal) of features; distance to the nearest mean."""

    def __init__(self, features: np.ndarray, labels: Sequence[str]) -> None:
        labels_array = np.asarray(labels)
        self.classes = sorted(set(labels))
        self.means = np.stack([features[labels_array == name].mean(axis=0) for name in self.classes])
        centred = features - self.means[[self.classes.index(name) for name in labels]]
        covariance = centred.T @ centred / len(features)
        covariance = (1 - SHRINKAGE) * covariance + SHRINKAGE * np.diag(np.diag(covariance))
        self.precision = np.linalg.inv(covariance + 1e-6 * np.eye(len(covariance)))

    def distance(self, features: np.ndarray) -> tuple[np.ndarray, list[str]]:
        differences = features[:, None, :] - self.means[None, :, :]
        squared = np.einsum("nkd,de,nke->nk", differences, self.precision, differences)
        nearest = squared.argmin(axis=1)
        return np.sqrt(squared[np.arange(len(features)), nearest]), [self.classes[i] for i in nearest]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "evaluation" / "gate-other-screening.json")
    args = parser.parse_args()
    torch.set_num_threads(2)
    model = load_task_model(GATE_CARD, inference_only=True)
    network, size = model.network, model.card.input_size
    with LABELS.open(newline="") as handle:
        rows = [row for row in csv.DictReader(handle) if row["crop"] == "whole" and row["source"] in REAL_SOURCES]
    images = np.stack([letterbox(crop_image(read_grey(DATA / row["image"]), "whole"), size) for row in rows])
    features = _features(network, images.astype(np.uint8))
    labels = [row["region"] for row in rows]
    groups = np.array([row["group"] for row in rows])
    in_sample, _ = Mahalanobis(features, labels).distance(features)
    held_out = np.zeros(len(rows))
    unique_groups = np.array(sorted(set(groups)))
    fold_of_group = {
        group: index % FOLDS for index, group in enumerate(np.random.default_rng(0).permutation(unique_groups))
    }
    folds = np.array([fold_of_group[group] for group in groups])
    for fold in range(FOLDS):
        fitted = Mahalanobis(
            features[folds != fold], [label for label, f in zip(labels, folds, strict=True) if f != fold]
        )
        held_out[folds == fold] = fitted.distance(features[folds == fold])[0]
    scorer = Mahalanobis(features, labels)
    fixtures = {}
    for name, file in FIXTURES.items():
        with tempfile.TemporaryDirectory() as folder:  # sent untagged: the gate decides (tags naming a chest stop it)
            ds = pydicom.dcmread(DATA / "real" / file)
            for keyword in REGION_TAGS:
                if keyword in ds:
                    delattr(ds, keyword)
            ds.save_as(Path(folder) / file)
            prepared = prepare_file(Path(folder) / file, input_size=size, gate_size=size)
        assert prepared.gate_pixels is not None
        distance, nearest = scorer.distance(_features(network, prepared.gate_pixels[None]))
        reading = model.predict(prepared.gate_pixels[None])["region"][0]
        fixtures[name] = {
            "file": file,
            "distance": round(float(distance[0]), 2),
            "nearest_region_mean": nearest[0],
            "gate_reads": {
                region: round(float(p), 3) for region, p in zip(model.card.tasks["region"], reading, strict=True)
            },
            "share_of_limb_films_farther_in_sample": round(float((in_sample >= distance[0]).mean()), 4),
            "share_of_limb_films_farther_held_out": round(float((held_out >= distance[0]).mean()), 4),
        }

    def percentiles(values: np.ndarray) -> dict[str, float]:
        return {f"p{q}": round(float(np.percentile(values, q)), 2) for q in (50, 90, 95, 99, 99.5, 100)}

    report = {
        "what": __doc__.split("\n\n")[0],
        "gate": model.card.display_name,
        "limb_films": len(rows),
        "shrinkage": SHRINKAGE,
        "limb_film_distances_in_sample": percentiles(in_sample),
        "limb_film_distances_held_out_groups": percentiles(held_out),
        "fixtures": fixtures,
    }
    print(f"{len(rows)} real limb films; distance percentiles in sample {report['limb_film_distances_in_sample']}")
    print(f"held-out groups {report['limb_film_distances_held_out_groups']}")
    for name, result in fixtures.items():
        top = max(result["gate_reads"], key=result["gate_reads"].get)
        print(
            f"{name:36} {result['distance']:7.2f}  farther among limb films: "
            f"in sample {result['share_of_limb_films_farther_in_sample']:.4f}, "
            f"held out {result['share_of_limb_films_farther_held_out']:.4f}"
            f"  (gate reads {top} {result['gate_reads'][top]:.2f})"
        )
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
