"""Training a hip hardware classifier: the reference paper's protocol as one resumable run.

Protocol (``../shared/seeds/hip-hardware-paper.txt``): patient-level 70/10/20 split stratified by class;
staged fine-tuning, first the classifier head alone (4 epochs), then the whole network (50 epochs), each
stage with a one-cycle learning-rate schedule (peak 1e-3 for EfficientNet, 1e-4 for NFNet); random
contrast, brightness, zoom, warp and rotation. predraft adds class-balanced sampling (each batch draws
classes equally often, whatever their prevalence), bf16 autocast on CUDA, a checkpoint after every
epoch and, at the end, temperature scaling and per-class thresholds fitted on the validation set.

A run lives in one output folder: ``split.csv`` (patient -> set), ``checkpoint.pt`` (after each epoch),
``history.json`` (loss and accuracy per epoch), ``cache/`` (the prepared images), and at the end
``weights.safetensors`` with ``card.json``. ``resume=True`` continues from the checkpoint with the same
configuration; every epoch seeds its own sampling and augmentation from the run's seed and the epoch's
number, so a resumed run ends with the weights an uninterrupted one would have had (on the CPU, where
kernels are deterministic).
"""

from __future__ import annotations

import json
import logging
import math
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import timm
import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from safetensors.torch import save_file
from sklearn.metrics import cohen_kappa_score
from torch.utils.data import DataLoader, Dataset, WeightedRandomSampler
from torchvision.transforms import v2
from tqdm import tqdm

from predraft.models.calibration import expected_calibration_error, fit_temperature, negative_log_likelihood, softmax
from predraft.models.card import ModelCard, sha256_of, write_card
from predraft.models.datasets import (
    PreparedImages,
    prepare_images,
    read_labels,
    read_split,
    split_patients,
    write_split,
)
from predraft.models.factory import classifier_head_keys, create_network
from predraft.models.framing import HIP_HALVES, Framing
from predraft.models.taxonomy import CLASS_ORDER

log = logging.getLogger(__name__)

#: The bundled hip pack's classes, the default of a run without ``--pack``.
HIP_CLASSES: tuple[str, ...] = tuple(str(name) for name in CLASS_ORDER)

CHECKPOINT = "checkpoint.pt"
WEIGHTS = "weights.safetensors"
CARD = "card.json"
SPLIT = "split.csv"
HISTORY = "history.json"


class TrainingError(RuntimeError):
    """A run that cannot start or go on: bad data, a checkpoint of another configuration, no CUDA."""


class TrainingConfig(BaseModel):
    """Everything that decides a run's result. A resumed run must have the same configuration."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    architecture: str = Field("tf_efficientnet_b4", description="timm model name")
    input_size: int = Field(380, ge=32, le=1024)
    head_epochs: int = Field(4, ge=0, description="epochs on the classifier head alone")
    epochs: int = Field(50, ge=0, description="epochs on the whole network")
    lr: float = Field(1e-3, gt=0, lt=1, description="one-cycle peak learning rate of the whole-network stage")
    head_lr: float | None = Field(None, gt=0, lt=1, description="peak of the head stage; default lr")
    batch_size: int = Field(32, ge=1)
    weight_decay: float = Field(0.01, ge=0)
    augment: bool = True
    flip: bool = Field(False, description="also mirror training images left-right (a shoulder or a hip of either side)")
    seed: int = 0
    fractions: tuple[float, float, float] = (0.7, 0.1, 0.2)
    max_steps_per_epoch: int | None = Field(None, ge=1, description="cap on optimiser steps per epoch (smoke runs)")
    target_precision: float = Field(0.95, gt=0, lt=1, description="precision each class threshold aims for")
    init_weights: Path | None = Field(None, description="local timm checkpoint for the backbone (ImageNet)")
    name: str = Field("predraft-hip-hardware", min_length=1)
    version: str = Field("1.0.0", min_length=1)
    synthetic_demo: bool = False
    training_data: str = ""
    classes: tuple[str, ...] = Field(
        HIP_CLASSES, description="the model's output classes, in order: its pack's class names (the hip's)"
    )
    framing: Framing = Field(
        HIP_HALVES, description="how an image becomes the model's input: its pack's framing (models/framing.py)"
    )

    @field_validator("classes")
    @classmethod
    def _check_classes(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if len(value) < 2 or len(set(value)) != len(value):
            raise ValueError(f"classes {list(value)} must be at least two distinct names")
        return value

    @field_validator("architecture")
    @classmethod
    def _check_architecture(cls, value: str) -> str:
        if not timm.is_model(value):
            raise ValueError(f"{value!r} is not a timm model name")
        return value

    @field_validator("fractions")
    @classmethod
    def _check_fractions(cls, value: tuple[float, float, float]) -> tuple[float, float, float]:
        if any(f < 0 for f in value) or not math.isclose(sum(value), 1.0, abs_tol=1e-6) or value[1] <= 0:
            raise ValueError(f"fractions {value} must sum to 1 with a non-empty validation share")
        return value

    @model_validator(mode="after")
    def _check_epochs(self) -> TrainingConfig:
        if self.head_epochs + self.epochs < 1:
            raise ValueError("head_epochs + epochs must be at least 1")
        return self

    @property
    def stages(self) -> list[tuple[str, int, float]]:
        """(name, epochs, peak learning rate) of each stage with at least one epoch."""
        stages = [("head", self.head_epochs, self.head_lr or self.lr), ("full", self.epochs, self.lr)]
        return [stage for stage in stages if stage[1] > 0]


def augmentation(flip: bool = False) -> v2.Transform:
    """The paper's augmentations on a uint8 (1, S, S) tensor: rotation and zoom, warp, brightness, contrast; with
    ``flip``, a left-right mirror half the time too."""
    return v2.Compose(
        [
            *([v2.RandomHorizontalFlip()] if flip else []),
            v2.RandomAffine(degrees=10, translate=(0.04, 0.04), scale=(0.9, 1.15)),
            v2.RandomPerspective(distortion_scale=0.15, p=0.5),
            v2.ColorJitter(brightness=0.25, contrast=0.25),
        ]
    )


class _HipDataset(Dataset):
    def __init__(self, images: PreparedImages, classes: tuple[str, ...], transform: v2.Transform | None) -> None:
        self.pixels = torch.from_numpy(images.pixels)
        self.targets = torch.from_numpy(images.targets(classes))
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = self.pixels[index].unsqueeze(0)
        return (self.transform(image) if self.transform else image), self.targets[index]


def normalise(batch: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """uint8 (N, 1, S, S) -> float (N, 3, S, S) normalised as :class:`predraft.models.factory.Classifier` does."""
    mean_t = torch.tensor(mean, device=batch.device).view(1, 3, 1, 1)
    std_t = torch.tensor(std, device=batch.device).view(1, 3, 1, 1)
    return (batch.float().expand(-1, 3, -1, -1) / 255.0 - mean_t) / std_t


def class_balanced_weights(targets: np.ndarray) -> np.ndarray:
    """Per-sample weights so that every class present is drawn equally often."""
    counts = np.bincount(targets).astype(np.float64)
    return 1.0 / counts[targets]


def choose_class_thresholds(
    probs: np.ndarray,
    labels: np.ndarray,
    classes: tuple[str, ...] = HIP_CLASSES,
    *,
    target_precision: float = 0.95,
    floor: float = 0.5,
    ceiling: float = 0.95,
) -> dict[str, float]:
    """Per class, the lowest threshold in [floor, ceiling] at which the validation hips whose top class it
    is, kept when their top probability reaches it, are right at least ``target_precision`` of the time.

    A class never predicted on validation keeps ``floor``; one that never reaches the precision gets
    ``ceiling`` (its hips mostly go to review).
    """
    top, confidence = probs.argmax(axis=1), probs.max(axis=1)
    thresholds: dict[str, float] = {}
    for index, hardware in enumerate(classes):
        mine = top == index
        chosen = ceiling if mine.any() else floor
        for candidate in np.unique(np.concatenate([[floor], confidence[mine]])):
            if floor <= candidate <= ceiling:
                kept = mine & (confidence >= candidate)
                if kept.any() and (labels[kept] == index).mean() >= target_precision:
                    chosen = float(candidate)
                    break
        thresholds[hardware] = round(float(chosen), 4)
    return thresholds


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise TrainingError(f"device {name!r} was asked for, but torch sees no CUDA device here")
    return device


#: Multipliers of the run's seed for each epoch's two random streams (see :func:`epoch_seeds`): distinct primes,
#: so that the streams differ from each other and runs of nearby seeds do not share an epoch's stream.
SAMPLING_SEED_STRIDE = 100_003
AUGMENTATION_SEED_STRIDE = 7_919


def epoch_seeds(run_seed: int, epoch_number: int) -> tuple[int, int]:
    """The seeds of epoch ``epoch_number`` (from 0) of a run: the class-balanced sampler's order, and torch's
    global stream that the augmentations draw from. Derived from the run's seed and the epoch alone, so that a
    resumed run replays exactly the epochs an uninterrupted one would have run."""
    return (
        run_seed * SAMPLING_SEED_STRIDE + epoch_number,
        run_seed * AUGMENTATION_SEED_STRIDE + epoch_number,
    )


def _train_one_epoch(
    network: torch.nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    device: torch.device,
) -> list[float]:
    """One pass over ``batches`` (a progress bar, which shows the loss, or a plain loader); the batch losses."""
    network.train()
    losses: list[float] = []
    for batch, targets in batches:
        inputs = normalise(batch.to(device, non_blocking=True), mean, std)
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss = torch.nn.functional.cross_entropy(network(inputs).float(), targets.to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        losses.append(loss.item())
        if isinstance(batches, tqdm):
            batches.set_postfix(loss=f"{losses[-1]:.3f}")
    return losses


def train(
    data_dir: Path,
    out_dir: Path,
    config: TrainingConfig,
    *,
    resume: bool = False,
    device: str = "auto",
    workers: int = 0,
    progress: bool | None = None,
    stop_after_epochs: int | None = None,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> Path | None:
    """Run (or resume) training; return the card's path, or None when ``stop_after_epochs`` ended it early.

    ``workers`` is the DataLoader's process count (0: augment in the training process). ``progress``
    shows tqdm bars (default: when stderr is a terminal). ``stop_after_epochs`` stops after that many
    epochs of this call, leaving the checkpoint to resume from (tests use it to interrupt a run).
    """
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    torch_device = pick_device(device)
    out_dir.mkdir(parents=True, exist_ok=True)
    checkpoint_path = out_dir / CHECKPOINT
    checkpoint = _load_checkpoint(checkpoint_path, config) if resume else None
    if not resume and checkpoint_path.exists():
        raise TrainingError(f"{out_dir} holds a checkpoint of an earlier run: use --resume, or a new folder")

    rows = read_labels(data_dir, config.classes)
    split_path = out_dir / SPLIT
    if checkpoint is not None and split_path.is_file():
        assignment = read_split(split_path)
    else:
        assignment = split_patients(rows, fractions=config.fractions, seed=config.seed, classes=config.classes)
        write_split(assignment, split_path)
    rows = [row for row in rows if row.patient in assignment]
    images = prepare_images(
        data_dir, rows, input_size=config.input_size, cache_dir=out_dir / "cache", framing=config.framing
    )
    sets = {
        name: images.subset([assignment[row.patient] == name for row in images.rows])
        for name in ("train", "validation")
    }
    for name, subset in sets.items():
        if not subset.rows:
            raise TrainingError(f"the {name} set is empty: {len(rows)} labelled hips are too few for the split")
    log.info("training on %d hips, validating on %d", len(sets["train"].rows), len(sets["validation"].rows))

    torch.manual_seed(config.seed)
    network = create_network(config.architecture, len(config.classes), config.init_weights).to(torch_device)
    mean, std = _normalisation(network)
    head_keys = classifier_head_keys(network)
    history: list[dict[str, Any]] = checkpoint["history"] if checkpoint else []
    done_epochs = len(history)
    show = progress if progress is not None else sys.stderr.isatty()
    dataset = _HipDataset(sets["train"], config.classes, augmentation(config.flip) if config.augment else None)
    # A list, as WeightedRandomSampler types its weights; the same float64 values.
    weights: list[float] = class_balanced_weights(sets["train"].targets(config.classes)).tolist()
    steps = math.ceil(len(dataset) / config.batch_size)
    if config.max_steps_per_epoch:
        steps = min(steps, config.max_steps_per_epoch)
    epoch_number, ran = 0, 0
    for stage_index, (stage, epochs, peak_lr) in enumerate(config.stages):
        if epoch_number + epochs <= done_epochs:
            epoch_number += epochs
            continue
        trainable = [p for n, p in network.named_parameters() if stage == "full" or n in head_keys]
        for name, parameter in network.named_parameters():
            parameter.requires_grad_(stage == "full" or name in head_keys)
        optimizer = torch.optim.AdamW(trainable, lr=peak_lr, weight_decay=config.weight_decay)
        scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=peak_lr, total_steps=epochs * steps)
        if checkpoint is not None and checkpoint["stage_index"] == stage_index:
            network.load_state_dict(checkpoint["network"])
            optimizer.load_state_dict(checkpoint["optimizer"])
            scheduler.load_state_dict(checkpoint["scheduler"])
        elif checkpoint is not None:  # the checkpoint ended the previous stage
            network.load_state_dict(checkpoint["network"])
        checkpoint = None
        for _ in range(epochs):
            if epoch_number < done_epochs:
                epoch_number += 1
                continue
            if stop_after_epochs is not None and ran >= stop_after_epochs:
                return None
            sampling_seed, augmentation_seed = epoch_seeds(config.seed, epoch_number)
            torch.manual_seed(augmentation_seed)
            sampler = WeightedRandomSampler(
                weights,
                num_samples=steps * config.batch_size,
                replacement=True,
                generator=torch.Generator().manual_seed(sampling_seed),
            )
            loader = DataLoader(
                dataset, batch_size=config.batch_size, sampler=sampler, num_workers=workers, drop_last=False
            )
            bar = tqdm(loader, total=steps, desc=f"{stage} epoch {epoch_number + 1}", disable=not show, leave=False)
            losses = _train_one_epoch(network, bar, optimizer, scheduler, mean, std, torch_device)
            logits = predict_logits(network, sets["validation"], mean, std, torch_device, config.batch_size)
            labels = sets["validation"].targets(config.classes)
            entry = {
                "epoch": epoch_number + 1,
                "stage": stage,
                "train_loss": float(np.mean(losses)),
                "validation_loss": negative_log_likelihood(logits, labels),
                "validation_accuracy": float((logits.argmax(axis=1) == labels).mean()),
                "lr_peak": peak_lr,
            }
            history.append(entry)
            log.info(
                "epoch %(epoch)d (%(stage)s): train loss %(train_loss).4f, validation loss "
                "%(validation_loss).4f, accuracy %(validation_accuracy).4f",
                entry,
            )
            if on_epoch:
                on_epoch(entry)
            epoch_number += 1
            ran += 1
            _save_checkpoint(
                checkpoint_path,
                config=config,
                stage_index=stage_index,
                network=network,
                optimizer=optimizer,
                scheduler=scheduler,
                history=history,
            )
    if checkpoint is not None:  # every epoch had already run: the weights are the checkpoint's
        network.load_state_dict(checkpoint["network"])
    (out_dir / HISTORY).write_text(json.dumps(history, indent=2) + "\n")
    return _finish(network, sets["validation"], out_dir, config, mean, std, torch_device, history)


def predict_logits(
    network: torch.nn.Module,
    images: PreparedImages,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    device: torch.device,
    batch_size: int = 64,
) -> np.ndarray:
    """Logits (N, classes) of prepared images, in eval mode (bf16 autocast on CUDA)."""
    network.eval()
    out = []
    with torch.inference_mode():
        for start in range(0, len(images.pixels), batch_size):
            chunk = torch.from_numpy(images.pixels[start : start + batch_size]).unsqueeze(1).to(device)
            with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
                out.append(network(normalise(chunk, mean, std)).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 0), dtype=np.float32)


def _normalisation(network: torch.nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    config = getattr(network, "pretrained_cfg", None) or {}
    mean = tuple(float(v) for v in config.get("mean", (0.485, 0.456, 0.406)))
    std = tuple(float(v) for v in config.get("std", (0.229, 0.224, 0.225)))
    return mean, std


def _finish(
    network: torch.nn.Module,
    validation: PreparedImages,
    out_dir: Path,
    config: TrainingConfig,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    device: torch.device,
    history: list[dict[str, Any]],
) -> Path:
    """Fit the temperature and thresholds on validation, write the weights and the card."""
    logits = predict_logits(network, validation, mean, std, device, config.batch_size)
    labels = validation.targets(config.classes)
    temperature = fit_temperature(logits, labels)
    raw, calibrated = softmax(logits), softmax(logits, temperature)
    thresholds = choose_class_thresholds(calibrated, labels, config.classes, target_precision=config.target_precision)
    predicted = calibrated.argmax(axis=1)
    metrics = {
        "images": len(labels),
        "accuracy": float((predicted == labels).mean()),
        "cohen_kappa": float(cohen_kappa_score(labels, predicted)) if len(set(labels)) > 1 else None,
        "nll_before_calibration": negative_log_likelihood(logits, labels),
        "nll": negative_log_likelihood(logits, labels, temperature),
        "ece_before_calibration": expected_calibration_error(raw, labels),
        "ece": expected_calibration_error(calibrated, labels),
    }
    weights_path = out_dir / WEIGHTS
    state = {
        key: value.detach().to("cpu", torch.float32 if value.is_floating_point() else value.dtype).contiguous()
        for key, value in network.state_dict().items()
    }
    save_file(state, str(weights_path))
    card = ModelCard(
        name=config.name,
        version=config.version,
        architecture=config.architecture,
        input_size=config.input_size,
        mean=mean,
        std=std,
        classes=config.classes,
        trained=True,
        synthetic_demo=config.synthetic_demo,
        training_data=config.training_data,
        threshold=0.5,
        class_thresholds=thresholds,
        temperature=temperature,
        validation_metrics=metrics,
        training=config.model_dump(mode="json") | {"epochs_run": len(history)},
        weights=weights_path.name,
        weights_sha256=sha256_of(weights_path),
    )
    card_path = out_dir / CARD
    write_card(card, card_path)
    return card_path


def _save_checkpoint(
    path: Path,
    *,
    config: TrainingConfig,
    stage_index: int,
    network: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    history: list[dict[str, Any]],
) -> None:
    partial = path.with_suffix(".partial")
    torch.save(
        {
            "config": config.model_dump(mode="json"),
            "stage_index": stage_index,
            "network": network.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "history": history,
        },
        partial,
    )
    partial.replace(path)


def _load_checkpoint(path: Path, config: TrainingConfig) -> dict[str, Any]:
    if not path.is_file():
        raise TrainingError(f"--resume asked for, but {path} does not exist")
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    saved, wanted = checkpoint["config"], config.model_dump(mode="json")
    differ = sorted(key for key in set(saved) | set(wanted) if saved.get(key) != wanted.get(key))
    if differ:
        raise TrainingError(
            f"{path} belongs to a run with other settings ({', '.join(differ)}); "
            "resume with the same options, or train into a new folder"
        )
    return checkpoint
