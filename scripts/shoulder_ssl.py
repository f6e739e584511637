"""Self-supervised pretraining (SimCLR) of the shoulder pack's backbone on real radiographs (issue 17, screening).

    .venv/bin/python -m predraft.models.shoulder_data ../shared/data var/shoulder
    .venv/bin/python scripts/shoulder_ssl.py ../shared/data var/shoulder/development var/ssl/gate \
        --init-weights var/runs/gate-1.2.0/weights.safetensors --minutes 35        # continued from the gate
    .venv/bin/python scripts/shoulder_ssl.py ../shared/data var/shoulder/development var/ssl/random \
        --minutes 30                                                       # from random weights
    .venv/bin/predraft train var/shoulder/development --pack models/packs/shoulder --out var/runs/shoulder-ssl \
        --architecture regnetx_002 --input-size 160 --head-epochs 1 --epochs 30 --lr 5e-4 --flip \
        --init-weights var/ssl/gate/backbone.safetensors --device cpu --workers 0
    # ... the same for var/ssl/random (shoulder-sslr), the gate's own weights (shoulder-a) and none (shoulder-random)
    .venv/bin/python scripts/shoulder_ensemble.py var/shoulder/development var/runs/shoulder-a var/runs/shoulder-ssl \
        var/runs/shoulder-sslr var/runs/shoulder-random --out var/eval/shoulder-ssl.json

What it gave (2026-12-06): README, "The shoulder pack", and ``docs/evaluation/shoulder-ssl-*.json``.

The images, without any label: the shoulder pack's development part (its held-out part is never read) and every
FracAtlas film that is not a shoulder (hand, hip, leg: no shoulder of the held-out part among them), all framed
as the pack frames them (``models/framing.py``) at the pack's input size. Two random views of each image (crop,
mirror, rotation, contrast curve, blur) are pulled together and pushed from the batch's other images by the
NT-Xent loss through a small projection head; the backbone's weights are written, without that head, as
``backbone.safetensors`` for ``--init-weights``. Training stops after ``--minutes`` (whole epochs). Nothing is
downloaded.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import time
from pathlib import Path

import numpy as np
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torchvision.transforms import v2

from predraft.models.card import load_card
from predraft.models.datasets import LabelRow, prepare_images, read_labels
from predraft.models.factory import load_backbone
from predraft.models.pack import read_pack
from predraft.models.taxonomy import Side

PACK = Path(__file__).resolve().parents[1] / "models" / "packs" / "shoulder"


def _views(size: int) -> v2.Transform:
    """uint8 (1, S, S) -> float (1, S, S) in [0, 1]: one random view."""
    return v2.Compose(
        [
            v2.RandomResizedCrop(size, scale=(0.35, 1.0), ratio=(0.8, 1.25), antialias=True),
            v2.RandomHorizontalFlip(),
            v2.RandomApply([v2.RandomRotation(15)], p=0.5),
            v2.ColorJitter(brightness=0.4, contrast=0.4),
            v2.RandomApply([v2.GaussianBlur(9, sigma=(0.1, 2.0))], p=0.5),
            v2.ToDtype(torch.float32, scale=True),
        ]
    )


def _fracatlas_films(shared: Path) -> list[LabelRow]:
    """Every FracAtlas film not labelled shoulder, as rows of one unlabelled image each."""
    rows = []
    with (shared / "fracatlas" / "dataset.csv").open(newline="") as handle:
        for record in csv.DictReader(handle):
            if record["shoulder"] == "1":
                continue
            image = f"images/{record['image_id']}"
            rows.append(LabelRow(patient=image, study=image, image=image, side=Side.UNKNOWN, hardware="none"))
    return rows


def _nt_xent(z: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR's loss over 2N projections: rows i and i+N are the two views of one image."""
    z = F.normalize(z, dim=1)
    n = len(z) // 2
    similarity = z @ z.T / temperature
    similarity.fill_diagonal_(float("-inf"))
    targets = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)])
    return F.cross_entropy(similarity, targets)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("shared", type=Path, help="../shared/data")
    parser.add_argument("development", type=Path, help="the shoulder pack's development folder")
    parser.add_argument("out", type=Path)
    parser.add_argument("--init-weights", type=Path, default=None)
    parser.add_argument("--minutes", type=float, default=25.0)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--temperature", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    pack = read_pack(PACK)
    card, _ = load_card(PACK / pack.card, verify_weights=False)
    size, architecture = card.input_size, card.architecture
    started = time.monotonic()

    development = read_labels(args.development, pack.class_names)
    films = _fracatlas_films(args.shared)
    cache = args.out / "prepared"  # the framed images, kept for a second run
    pixels = np.concatenate(
        [
            prepare_images(
                args.development, development, input_size=size, framing=pack.framing, cache_dir=cache
            ).pixels,
            prepare_images(
                args.shared / "fracatlas", films, input_size=size, framing=pack.framing, cache_dir=cache
            ).pixels,
        ]
    )
    images = torch.from_numpy(pixels).unsqueeze(1)  # (N, 1, S, S) uint8
    print(
        f"{len(development)} development images, {len(films)} FracAtlas films; prepared in "
        f"{(time.monotonic() - started) / 60:.1f} min",
        flush=True,
    )

    backbone = timm.create_model(architecture, pretrained=False, num_classes=len(pack.class_names), in_chans=3)
    if args.init_weights is not None:
        load_backbone(backbone, args.init_weights)
    backbone.reset_classifier(0)  # features only: the projection head follows, and the file holds no head
    features = backbone.num_features
    projection = torch.nn.Sequential(
        torch.nn.Linear(features, 512), torch.nn.ReLU(inplace=True), torch.nn.Linear(512, 128)
    )
    model = torch.nn.Sequential(backbone, projection)
    config = getattr(backbone, "pretrained_cfg", None) or {}
    mean = torch.tensor(config.get("mean", (0.485, 0.456, 0.406))).view(1, 3, 1, 1)
    std = torch.tensor(config.get("std", (0.229, 0.224, 0.225))).view(1, 3, 1, 1)
    optimiser = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    view = _views(size)
    steps_per_epoch = len(images) // args.batch_size
    history = []
    epoch = 0
    budget_s = args.minutes * 60
    train_started = time.monotonic()
    model.train()
    while True:
        epoch_started = time.monotonic()
        order = torch.randperm(len(images))
        losses = []
        for step in range(steps_per_epoch):
            # a cosine rate over the time budget, not over a set number of steps
            progress = min(1.0, (time.monotonic() - train_started) / budget_s)
            for group in optimiser.param_groups:
                group["lr"] = args.lr * 0.5 * (1 + math.cos(math.pi * progress))
            batch = images[order[step * args.batch_size : (step + 1) * args.batch_size]]
            first = torch.stack([view(image) for image in batch])
            second = torch.stack([view(image) for image in batch])
            both = (torch.cat([first, second]).expand(-1, 3, -1, -1) - mean) / std
            loss = _nt_xent(model(both), args.temperature)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            losses.append(loss.item())
        epoch += 1
        spent = time.monotonic() - train_started
        history.append({"epoch": epoch, "loss": round(float(np.mean(losses)), 4), "minutes": round(spent / 60, 2)})
        print(f"epoch {epoch}: loss {history[-1]['loss']} ({time.monotonic() - epoch_started:.0f} s)", flush=True)
        if spent + (time.monotonic() - epoch_started) > budget_s:
            break

    args.out.mkdir(parents=True, exist_ok=True)
    save_file(
        {key: value.contiguous() for key, value in backbone.state_dict().items()}, args.out / "backbone.safetensors"
    )
    summary = {
        "method": "SimCLR (NT-Xent, two views per image), projection head 512-128 dropped afterwards",
        "architecture": architecture,
        "input_size": size,
        "init_weights": str(args.init_weights) if args.init_weights else None,
        "images": {"shoulder_development": len(development), "fracatlas_not_shoulder": len(films)},
        "batch_size": args.batch_size,
        "lr": args.lr,
        "temperature": args.temperature,
        "epochs": epoch,
        "minutes_training": round((time.monotonic() - train_started) / 60, 1),
        "minutes_total": round((time.monotonic() - started) / 60, 1),
        "history": history,
    }
    (args.out / "pretraining.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps({key: value for key, value in summary.items() if key != "history"}, indent=1))


if __name__ == "__main__":
    main()
