"""Training an image task model with grouped cross-validation, then once more on every row.

Protocol (one command, ``predraft train-task``):

1. Groups (patients, or runs of one patient's images) are dealt into ``folds`` folds, stratified by the
   rows' label combination (scikit-learn's StratifiedGroupKFold): no group is ever on both sides.
2. For each fold, a network is trained from random weights on the other folds and predicts the held-out
   fold: every row gets one out-of-fold prediction, made by a model that never saw its group.
3. From the out-of-fold predictions: one softmax temperature per task, the decision thresholds
   (:func:`fit_thresholds`), and every figure of the card with a 95 % CI from a bootstrap over groups.
4. The shipped network is trained on every row with the same settings; the card carries the
   thresholds and figures of step 3, which describe how models made this way do on groups they never saw.

Training: from random weights, or the backbone of local weights of the same architecture (``init_weights``;
the bundled gate starts from the demo hip model's, nothing is downloaded); AdamW with a one-cycle schedule,
``samples_per_epoch`` rows drawn per epoch with weights 1/sqrt(size of the row's label combination), so rare
combinations (hip with hardware) are seen more often without being repeated into memorisation; augmentation
that makes a clean image look like another film (rotation, zoom, shift, flip, contrast and gamma curves, JPEG
artefacts). Every epoch seeds its own draws from the run's seed, so a run is repeatable on the CPU.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, model_validator
from safetensors.torch import load_file, save_file
from sklearn.model_selection import StratifiedGroupKFold
from torchvision.transforms import v2

from predraft.models.calibration import fit_temperature, softmax
from predraft.models.card import sha256_of
from predraft.models.factory import backbone_weights
from predraft.models.imagetask import TaskNetwork, to_network_input
from predraft.models.metalpaste import draw_metal
from predraft.models.taskcard import GlobalPool, TaskCard, write_task_card
from predraft.models.taskdata import TaskRow, prepare_task_images, read_task_rows, task_classes
from predraft.models.taskmetrics import task_metrics, task_targets

log = logging.getLogger(__name__)

WEIGHTS = "weights.safetensors"
CARD = "card.json"
FOLDS = "folds.csv"
OUT_OF_FOLD = "out_of_fold.csv"
REPORT = "cross_validation.json"
#: Another class of a gating task is acted on (routes to its own pack) only when at most this share of the
#: rows of the gate's class reach its threshold out of fold (see fit_thresholds).
OVERRIDE_ERROR = 0.01


class TaskTrainingConfig(BaseModel):
    """Everything that decides a run's result."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    tasks: dict[str, tuple[str, ...] | None] = Field(description="task -> class order (None: sorted as found)")
    architecture: str = "regnetx_002"
    global_pool: GlobalPool = Field("avg", description="how the backbone pools its feature map (taskcard.GlobalPool)")
    input_size: int = Field(128, ge=32, le=1024)
    epochs: int = Field(12, ge=1)
    samples_per_epoch: int = Field(2048, ge=1)
    lr: float = Field(3e-3, gt=0, lt=1)
    batch_size: int = Field(32, ge=1)
    weight_decay: float = Field(0.05, ge=0)
    folds: int = Field(5, ge=2)
    seed: int = 0
    n_bootstrap: int = Field(1000, ge=10)
    gate_task: str | None = Field(None, description="the task whose thresholds gate scope (see fit_thresholds)")
    gate_class: str | None = Field(None, description="the gate task's class the service is for (e.g. hip)")
    binary: dict[str, str] = Field(
        {}, description="two-class tasks -> their positive class, each thresholded for balanced sens/spec"
    )
    min_specificity: dict[str, float] = Field(
        {}, description="binary tasks thresholded for at least this specificity instead of the balanced point"
    )
    metal_paste: dict[str, float] = Field(
        {},
        description="binary task -> the share of its drawn real negatives that get a synthetic metal object drawn "
        "on them (predraft.models.metalpaste) and count as its positive class, in training only",
    )
    init_weights: Path | None = Field(
        None, description="local weights (safetensors) of the same timm architecture to start the backbone from"
    )
    synthetic_sources: tuple[str, ...] = Field(
        (), description="row sources (the CSV's source column) left out of thresholds and headline figures"
    )
    name: str = Field("predraft-task", min_length=1)
    version: str = Field("1.0.0", min_length=1)
    training_data: str = ""
    intended_use: str = ""

    @model_validator(mode="after")
    def _check_rules(self) -> TaskTrainingConfig:
        for task, name, rule in (
            (self.gate_task, self.gate_class, "gate"),
            *((task, positive, "binary") for task, positive in self.binary.items()),
        ):
            if task is None:
                continue
            if task not in self.tasks:
                raise ValueError(f"the {rule} task {task!r} is not among the tasks {list(self.tasks)}")
            if not name:
                raise ValueError(f"the {rule} task {task!r} needs its class (TASK=CLASS)")
            order = self.tasks[task]
            if order is not None and name not in order:
                raise ValueError(f"the {rule} class {name!r} is not among {task}'s classes {list(order)}")
        for task, share in self.metal_paste.items():
            if task not in self.binary:
                raise ValueError(f"metal_paste names {task!r}, which is not a binary task ({list(self.binary)})")
            if not 0 < share < 1:
                raise ValueError(f"the metal paste share of {task!r} must lie in (0, 1), got {share}")
        for task, specificity in self.min_specificity.items():
            if task not in self.binary:
                raise ValueError(f"min_specificity names {task!r}, which is not a binary task ({list(self.binary)})")
            if not 0 < specificity < 1:
                raise ValueError(f"the minimum specificity of {task!r} must lie in (0, 1), got {specificity}")
        return self


class JpegArtefacts(torch.nn.Module):
    """A uint8 (1, S, S) image saved and read back as a JPEG of random quality (Pillow), as exports are."""

    def __init__(self, quality: tuple[int, int]) -> None:
        super().__init__()
        self.quality = quality

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        quality = int(torch.randint(self.quality[0], self.quality[1] + 1, ()).item())
        buffer = io.BytesIO()
        Image.fromarray(image[0].numpy()).save(buffer, "JPEG", quality=quality)
        buffer.seek(0)
        with Image.open(buffer) as decoded:
            return torch.from_numpy(np.array(decoded.convert("L"))).unsqueeze(0)


def augmentation() -> v2.Transform:
    """uint8 (1, S, S) -> uint8 (1, S, S): geometry, contrast curve, JPEG artefacts."""
    return v2.Compose(
        [
            v2.RandomAffine(degrees=12, translate=(0.06, 0.06), scale=(0.85, 1.15)),
            v2.RandomHorizontalFlip(),
            v2.ColorJitter(brightness=0.3, contrast=0.35),
            v2.RandomApply([JpegArtefacts((25, 90))], p=0.5),
        ]
    )


def _gamma(batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A random gamma per image (0.6-1.6): the contrast curves of different exports."""
    gammas = torch.exp(torch.empty(len(batch), 1, 1, 1).uniform_(math.log(0.6), math.log(1.6), generator=generator))
    return ((batch.float() / 255.0) ** gammas * 255.0).round().clamp(0, 255).to(torch.uint8)


def _strata(rows: Sequence[TaskRow]) -> list[str]:
    """Each row's label combination and crop: what the folds are stratified by."""
    return ["|".join(f"{task}={label}" for task, label in sorted(row.labels.items())) + f"|{row.crop}" for row in rows]


def draw_weights(strata: Sequence[str]) -> np.ndarray:
    """Each row's chance of being drawn for a training step: a stratum of n rows is drawn in proportion to
    sqrt(n), evenly among its rows, so that rare strata are seen more often than their share and common ones
    less, without repeating a handful of images for ever. Sums to 1."""
    counts: dict[str, int] = {}
    for stratum in strata:
        counts[stratum] = counts.get(stratum, 0) + 1
    weights = np.array([1.0 / math.sqrt(counts[stratum]) for stratum in strata])
    return weights / weights.sum()


def with_metal_pasted(
    images: torch.Tensor,
    labels: torch.Tensor,
    index: list[int],
    pasteable: np.ndarray,
    classes: dict[str, tuple[str, ...]],
    config: TaskTrainingConfig,
    rng: np.random.Generator,
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """The drawn rows' images and labels (a copy), each pasteable row of a task in ``config.metal_paste`` given
    synthetic metal with that task's share as its chance, and then labelled with the task's positive class."""
    chosen, batch_labels = [images[i] for i in index], labels[index].clone()
    for task, share in config.metal_paste.items():
        column = list(classes).index(task)
        for position, row in enumerate(index):
            if pasteable[row, column] and rng.random() < share:
                chosen[position] = torch.from_numpy(draw_metal(chosen[position].numpy(), rng))
                batch_labels[position, column] = classes[task].index(config.binary[task])
    return chosen, batch_labels


def _fit_network(
    pixels: np.ndarray,
    targets: np.ndarray,
    strata: Sequence[str],
    classes: dict[str, tuple[str, ...]],
    config: TaskTrainingConfig,
    *,
    seed: int,
    progress: Callable[[str], None],
    pasteable: np.ndarray,
) -> TaskNetwork:
    """A network trained on ``pixels``; ``pasteable`` (bool per row, see :func:`pasteable_rows`) marks the rows
    that may get synthetic metal when ``config.metal_paste`` asks for it."""
    torch.manual_seed(seed)
    network = TaskNetwork(config.architecture, classes, config.global_pool)
    if config.init_weights is not None:
        load_backbone_weights(network, config.init_weights)
    optimiser = torch.optim.AdamW(network.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    steps_per_epoch = math.ceil(config.samples_per_epoch / config.batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimiser, max_lr=config.lr, total_steps=steps_per_epoch * config.epochs
    )
    weights = draw_weights(strata)
    images, labels = torch.from_numpy(pixels), torch.from_numpy(targets)
    transform = augmentation()
    for epoch in range(config.epochs):
        generator = torch.Generator().manual_seed(seed * 1000 + epoch)
        torch.manual_seed(seed * 1000 + epoch)  # torchvision's random transforms draw from the global generator
        rng = np.random.default_rng(seed * 1000 + epoch)
        drawn = rng.choice(len(pixels), size=steps_per_epoch * config.batch_size, p=weights)
        network.train()
        started, total = time.monotonic(), 0.0
        paste_rng = np.random.default_rng([seed, epoch, 7])  # its own stream: no paste, no change to the rest
        for step in range(steps_per_epoch):
            index = torch.from_numpy(drawn[step * config.batch_size : (step + 1) * config.batch_size])
            chosen, batch_labels = with_metal_pasted(
                images, labels, index.tolist(), pasteable, classes, config, paste_rng
            )
            batch = torch.stack([transform(image.unsqueeze(0)) for image in chosen])
            outputs = network(to_network_input(_gamma(batch, generator)))
            # A tensor, never sum()'s 0: every row labels at least one task (read_task_rows leaves out the others).
            loss = cast(
                torch.Tensor,
                sum(
                    torch.nn.functional.cross_entropy(outputs[task], batch_labels[:, column], ignore_index=-1)
                    for column, task in enumerate(classes)
                    if (batch_labels[:, column] >= 0).any()
                ),
            )
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
            total += loss.item()
        progress(
            f"epoch {epoch + 1}/{config.epochs}: loss {total / steps_per_epoch:.4f} "
            f"({time.monotonic() - started:.0f} s)"
        )
    return network.eval()


def pasteable_rows(
    rows: Sequence[TaskRow], targets: np.ndarray, classes: dict[str, tuple[str, ...]], config: TaskTrainingConfig
) -> np.ndarray:
    """(rows, tasks) bool: the real rows (no synthetic source) labelled with the negative class of a task that
    ``config.metal_paste`` names, the rows synthetic metal may be drawn on."""
    real = np.array([row.source not in config.synthetic_sources for row in rows])
    pasteable = np.zeros(targets.shape, dtype=bool)
    for task in config.metal_paste:
        column = list(classes).index(task)
        negative = [index for index, name in enumerate(classes[task]) if name != config.binary[task]]
        pasteable[:, column] = real & np.isin(targets[:, column], negative)
    return pasteable


def deal_folds(rows: Sequence[TaskRow], config: TaskTrainingConfig) -> np.ndarray:
    """Each row's fold (0 .. ``config.folds`` - 1): the groups dealt by scikit-learn's StratifiedGroupKFold,
    stratified by the rows' label combination, shuffled with ``config.seed``. No group is in two folds."""
    splitter = StratifiedGroupKFold(n_splits=config.folds, shuffle=True, random_state=config.seed)
    fold_of = np.full(len(rows), -1)
    for fold, (_, held_out) in enumerate(splitter.split(np.zeros(len(rows)), _strata(rows), [r.group for r in rows])):
        fold_of[held_out] = fold
    return fold_of


def fit_fold(
    pixels: np.ndarray,
    targets: np.ndarray,
    rows: Sequence[TaskRow],
    fold_of: np.ndarray,
    fold: int,
    classes: dict[str, tuple[str, ...]],
    config: TaskTrainingConfig,
    *,
    progress: Callable[[str], None] = log.info,
) -> TaskNetwork:
    """The network cross-validation trains for ``fold``: on every row outside it (``fold_of`` from
    :func:`deal_folds`), seeded ``config.seed + fold``; in eval mode, to read the held-out rows."""
    train = fold_of != fold
    strata = [stratum for stratum, keep in zip(_strata(rows), train, strict=True) if keep]
    pasteable = pasteable_rows(rows, targets, classes, config)[train]
    return _fit_network(
        pixels[train],
        targets[train],
        strata,
        classes,
        config,
        seed=config.seed + fold,
        progress=progress,
        pasteable=pasteable,
    )


def load_backbone_weights(network: TaskNetwork, path: Path) -> None:
    """Every backbone weight from ``path``, the weights of a network of the same architecture: a plain classifier
    (a hip model's; its head is ignored) or another task network (a gate's; its heads are ignored)."""
    own = network.backbone.state_dict()
    weights = backbone_weights(load_file(str(path)))
    state = {key: value for key, value in weights.items() if key in own}
    missing = sorted(set(own) - set(state))
    if missing:
        raise ValueError(
            f"{path} lacks {len(missing)} backbone weights of {network.backbone.__class__.__name__} "
            f"(first: {missing[0]}): not weights of this architecture"
        )
    network.backbone.load_state_dict(state)


def predict_logits(network: TaskNetwork, pixels: np.ndarray, batch_size: int = 128) -> dict[str, np.ndarray]:
    outputs: dict[str, list[np.ndarray]] = {task: [] for task in network.heads}
    with torch.inference_mode():
        for start in range(0, len(pixels), batch_size):
            batch = network(to_network_input(torch.from_numpy(pixels[start : start + batch_size])))
            for task, value in batch.items():
                outputs[task].append(value.double().numpy())
    return {task: np.concatenate(values) for task, values in outputs.items()}


def fit_thresholds(
    probabilities: dict[str, np.ndarray],
    targets: np.ndarray,
    classes: dict[str, tuple[str, ...]],
    config: TaskTrainingConfig,
) -> dict[str, dict[str, float]]:
    """Decision thresholds from out-of-fold probabilities.

    Gate task (``gate_task``, ``gate_class``, e.g. region and hip):
    - ``gate_class`` gets the balanced point of p(gate_class) against every other class (see
      :func:`balanced_threshold`): the one number that decides whether an image is of that class where the
      tags say so (below it, the gate rules the tags out) and where they say nothing (at or above it, the
      image is drafted), so that both errors are equally rare;
    - each other class c gets the lowest threshold at which at most :data:`OVERRIDE_ERROR` of the rows
      labelled ``gate_class`` reach p(c), kept in [0.5, 0.995]: the gate routes an image to c's pack only
      this sure.
    Binary tasks (``binary``: task -> positive class): each gets the threshold that maximises the smaller of
    sensitivity and specificity (the balanced point), over the rows labelled for it; one named in
    ``min_specificity`` gets instead the lowest threshold at which at least that share of its negative rows
    stay below it (where a false positive costs more than a miss, as splitting a one-hip image in two).
    """
    thresholds: dict[str, dict[str, float]] = {}
    if config.gate_task:
        column = list(classes).index(config.gate_task)
        names = classes[config.gate_task]
        gate = names.index(config.gate_class)
        labelled = targets[:, column] >= 0
        probs, labels = probabilities[config.gate_task][labelled], targets[labelled, column]
        found = {}
        for index, name in enumerate(names):
            if index == gate:
                balanced = balanced_threshold(probs[:, gate], labels == gate)
                found[name] = round(min(0.995, max(0.005, balanced)), 4)
                continue
            others = probs[labels == gate, index]
            value = float(np.quantile(others, 1 - OVERRIDE_ERROR, method="higher")) + 1e-4 if len(others) else 0.5
            found[name] = round(min(0.995, max(0.5, value)), 4)
        thresholds[config.gate_task] = found
    for task, positive_class in config.binary.items():
        column = list(classes).index(task)
        positive = classes[task].index(positive_class)
        labelled = targets[:, column] >= 0
        scores = probabilities[task][labelled, positive]
        is_positive = targets[labelled, column] == positive
        if task in config.min_specificity:
            negatives = scores[~is_positive]
            value = (
                float(np.quantile(negatives, config.min_specificity[task], method="higher")) + 1e-4
                if len(negatives)
                else 0.5
            )
            thresholds[task] = {positive_class: round(min(0.995, max(0.005, value)), 4)}
            continue
        thresholds[task] = {positive_class: min(0.995, max(0.005, balanced_threshold(scores, is_positive)))}
    return thresholds


def balanced_threshold(scores: np.ndarray, is_positive: np.ndarray) -> float:
    """The lowest threshold (scores floored to 1e-4, so every score reaches its own) that maximises the smaller of
    sensitivity and specificity of ``scores >= threshold``; 0.5 when there is no score."""
    best, best_value = 0.5, -1.0
    for candidate in np.unique(np.floor(scores * 1e4) / 1e4):
        predicted = scores >= candidate
        sensitivity = (predicted & is_positive).sum() / max(1, is_positive.sum())
        specificity = (~predicted & ~is_positive).sum() / max(1, (~is_positive).sum())
        if min(sensitivity, specificity) > best_value:
            best, best_value = float(candidate), min(sensitivity, specificity)
    return best


def train_task_model(
    csv_path: Path,
    images_dir: Path,
    out_dir: Path,
    config: TaskTrainingConfig,
    *,
    cache_dir: Path | None = None,
    progress: Callable[[str], None] = log.info,
) -> TaskCard:
    """Cross-validate, fit thresholds and temperatures, train the shipped network; write card and report."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    rows = read_task_rows(csv_path, images_dir, list(config.tasks))
    classes = {task: task_classes(rows, task, order) for task, order in config.tasks.items()}
    progress(f"{len(rows)} rows, {len({row.group for row in rows})} groups; classes {classes}")
    pixels = prepare_task_images(
        images_dir, rows, input_size=config.input_size, cache_dir=cache_dir or out_dir / "cache"
    )
    targets = task_targets(rows, classes)
    strata = _strata(rows)
    groups = [row.group for row in rows]
    fold_of = deal_folds(rows, config)
    with (out_dir / FOLDS).open("w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["group", "fold"])
        writer.writerows(sorted({(group, int(fold)) for group, fold in zip(groups, fold_of, strict=True)}))
    logits = {task: np.zeros((len(rows), len(names))) for task, names in classes.items()}
    for fold in range(config.folds):
        train_mask = fold_of != fold
        progress(
            f"fold {fold + 1}/{config.folds}: training on {train_mask.sum()} rows, holding out {(~train_mask).sum()}"
        )
        network = fit_fold(pixels, targets, rows, fold_of, fold, classes, config, progress=progress)
        for task, value in predict_logits(network, pixels[~train_mask]).items():
            logits[task][~train_mask] = value
    temperatures, probabilities, thresholds, metrics = calibrate_and_measure(logits, targets, rows, classes, config)
    write_out_of_fold(out_dir / OUT_OF_FOLD, rows, fold_of, probabilities, classes)
    cv_seconds = time.monotonic() - started
    progress(f"cross-validation done in {cv_seconds / 60:.1f} min; training the shipped network on every row")
    network = _fit_network(
        pixels,
        targets,
        strata,
        classes,
        config,
        seed=config.seed + 100,
        progress=progress,
        pasteable=pasteable_rows(rows, targets, classes, config),
    )
    save_file({key: value.contiguous() for key, value in network.state_dict().items()}, str(out_dir / WEIGHTS))
    report = {
        "folds": config.folds,
        "rows": len(rows),
        "groups": len(set(groups)),
        "temperatures": temperatures,
        "thresholds": thresholds,
        "metrics": metrics,
        "minutes_cross_validation": round(cv_seconds / 60, 1),
        "minutes_total": round((time.monotonic() - started) / 60, 1),
    }
    (out_dir / REPORT).write_text(json.dumps(report, indent=2) + "\n")
    card = TaskCard(
        name=config.name,
        version=config.version,
        architecture=config.architecture,
        global_pool=config.global_pool,
        input_size=config.input_size,
        tasks=classes,
        temperatures=temperatures,
        thresholds=thresholds,
        trained=True,
        intended_use=config.intended_use,
        training_data=config.training_data,
        metrics={"cross_validation": metrics, "folds": config.folds, "rows": len(rows), "groups": len(set(groups))},
        training={**config.model_dump(mode="json"), "minutes": report["minutes_total"]},
        weights=WEIGHTS,
        weights_sha256=sha256_of(out_dir / WEIGHTS),
    )
    write_task_card(card, out_dir / CARD)
    progress(f"done in {report['minutes_total']} min: {out_dir / CARD}")
    return card


Calibrated = tuple[dict[str, float], dict[str, np.ndarray], dict[str, dict[str, float]], dict[str, Any]]


def calibrate_and_measure(
    logits: dict[str, np.ndarray],
    targets: np.ndarray,
    rows: Sequence[TaskRow],
    classes: dict[str, tuple[str, ...]],
    config: TaskTrainingConfig,
) -> Calibrated:
    """From out-of-fold ``logits`` (task -> (N, classes), aligned with ``rows`` and :func:`task_targets`'s
    ``targets``): each task's temperature (fitted on its labelled rows), the probabilities, the thresholds
    (:func:`fit_thresholds` on the rows of real sources) and the figures (:func:`task_metrics` on the real rows,
    and per source, ``by_source``, when there are several). Returns (temperatures, probabilities, thresholds,
    metrics)."""
    temperatures, probabilities = {}, {}
    for column, task in enumerate(classes):
        labelled = targets[:, column] >= 0
        temperatures[task] = round(fit_temperature(logits[task][labelled], targets[labelled, column]), 4)
        probabilities[task] = softmax(logits[task], temperatures[task])
    thresholds, metrics = threshold_and_measure(probabilities, targets, rows, classes, config)
    return temperatures, probabilities, thresholds, metrics


def threshold_and_measure(
    probabilities: dict[str, np.ndarray],
    targets: np.ndarray,
    rows: Sequence[TaskRow],
    classes: dict[str, tuple[str, ...]],
    config: TaskTrainingConfig,
) -> tuple[dict[str, dict[str, float]], dict[str, Any]]:
    """From calibrated out-of-fold ``probabilities`` (aligned with ``rows`` and ``targets``): the thresholds
    (:func:`fit_thresholds` on the rows of real sources) and the figures (:func:`task_metrics` on the real rows,
    and per source, ``by_source``, when there are several). A run's out-of-fold CSV holds these probabilities,
    so thresholds can be fitted again by changed rules without training again."""
    real = np.array([row.source not in config.synthetic_sources for row in rows])
    thresholds = fit_thresholds(
        {task: value[real] for task, value in probabilities.items()}, targets[real], classes, config
    )

    def figures(mask: np.ndarray) -> dict[str, Any]:
        return task_metrics(
            {task: value[mask] for task, value in probabilities.items()},
            targets[mask],
            [row for row, keep in zip(rows, mask, strict=True) if keep],
            classes,
            thresholds,
            gate=(config.gate_task, config.gate_class) if config.gate_task and config.gate_class else None,
            binary=config.binary,
            n_bootstrap=config.n_bootstrap,
            seed=config.seed,
        )

    metrics = figures(real)
    sources = sorted({row.source for row in rows})
    if len(sources) > 1:
        metrics["by_source"] = {
            source or "(none)": figures(np.array([row.source == source for row in rows])) for source in sources
        }
    return thresholds, metrics


def read_out_of_fold(
    path: Path, rows: Sequence[TaskRow], classes: dict[str, tuple[str, ...]]
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """What :func:`write_out_of_fold` wrote: each task's (N, classes) probabilities of ``classes`` and each row's
    fold, aligned with ``rows`` by image and crop. ValueError when a row has no reading there."""
    with Path(path).open(newline="") as handle:
        by_key = {(line["image"], line["crop"]): line for line in csv.DictReader(handle)}
    missing = [row.image for row in rows if (row.image, row.crop) not in by_key]
    if missing:
        raise ValueError(f"{path} has no reading of {len(missing)} row(s), e.g. {missing[0]}")
    lines = [by_key[(row.image, row.crop)] for row in rows]
    probabilities = {
        task: np.array([[float(line[f"p_{task}_{name}"]) for name in names] for line in lines])
        for task, names in classes.items()
    }
    return probabilities, np.array([int(line["fold"]) for line in lines])


def write_out_of_fold(
    path: Path,
    rows: Sequence[TaskRow],
    fold_of: np.ndarray,
    probabilities: dict[str, np.ndarray],
    classes: dict[str, tuple[str, ...]],
) -> None:
    """One line per row: image, group, crop, fold, each task's label and each class's out-of-fold probability."""
    columns = [f"p_{task}_{name}" for task, names in classes.items() for name in names]
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["image", "group", "crop", "fold", *[f"label_{task}" for task in classes], *columns])
        for index, row in enumerate(rows):
            writer.writerow(
                [
                    row.image,
                    row.group,
                    row.crop,
                    int(fold_of[index]),
                    *[row.labels.get(task, "") for task in classes],
                    *[
                        f"{probabilities[task][index, k]:.5f}"
                        for task, names in classes.items()
                        for k in range(len(names))
                    ],
                ]
            )
