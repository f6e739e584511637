"""``predraft train-task``: a body-part gate, or any single-label image task, from a folder of images and a CSV."""

from __future__ import annotations

from pathlib import Path

import click
from pydantic import ValidationError

from predraft.models.taskcard import GLOBAL_POOLS


def _task(value: str) -> tuple[str, tuple[str, ...] | None]:
    name, _, classes = value.partition("=")
    return name.strip(), tuple(part.strip() for part in classes.split(",")) if classes else None


@click.command("train-task")
@click.argument("labels", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.option(
    "--images",
    "images_dir",
    required=True,
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    help="Folder the CSV's image paths are relative to.",
)
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Run folder: folds.csv, out_of_fold.csv, cross_validation.json, weights.safetensors, card.json.",
)
@click.option(
    "--task",
    "tasks",
    multiple=True,
    required=True,
    help="A CSV column to learn, optionally with its class order: region=hip,shoulder,hand,leg. Repeat "
    "for several heads on one backbone.",
)
@click.option("--gate", default=None, help="TASK=CLASS whose thresholds gate scope, e.g. region=hip.")
@click.option(
    "--binary",
    "binaries",
    multiple=True,
    help="TASK=POSITIVE thresholded for balanced sensitivity and specificity, e.g. hardware=present. Repeatable.",
)
@click.option(
    "--min-specificity",
    "min_specificities",
    multiple=True,
    help="TASK=SPECIFICITY: threshold a --binary task for at least this out-of-fold specificity instead "
    "of the balanced point, e.g. field=0.95. Repeatable.",
)
@click.option(
    "--synthetic-source",
    "synthetic_sources",
    multiple=True,
    help="A value of the CSV's source column whose rows are synthetic: trained on, but left out of the "
    "thresholds and the headline figures (reported apart). Repeatable.",
)
@click.option(
    "--init-weights",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="Local weights (safetensors) of the same architecture to start the backbone from.",
)
@click.option("--architecture", default="regnetx_002", show_default=True, help="timm model name.")
@click.option(
    "--global-pool",
    type=click.Choice(GLOBAL_POOLS),
    default="avg",
    show_default=True,
    help="How the backbone's last feature map is pooled: its mean, or its mean and largest value per channel "
    "(catavgmax: a head can answer from a small part of the image).",
)
@click.option("--input-size", default=128, show_default=True, type=int)
@click.option("--epochs", default=12, show_default=True, type=int)
@click.option("--samples-per-epoch", default=2048, show_default=True, type=int)
@click.option("--lr", default=3e-3, show_default=True, type=float, help="One-cycle peak learning rate.")
@click.option("--batch-size", default=32, show_default=True, type=int)
@click.option("--folds", default=5, show_default=True, type=int, help="Grouped cross-validation folds.")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--name", default="predraft-task", show_default=True)
@click.option("--version", "model_version", default="1.0.0", show_default=True)
@click.option("--training-data", default="", help="What the model was trained on (and its attribution), for the card.")
@click.option("--intended-use", default="", help="What the model is for, and what not, for the card.")
def train_task(
    labels: Path,
    images_dir: Path,
    out_dir: Path,
    tasks: tuple[str, ...],
    gate: str | None,
    binaries: tuple[str, ...],
    min_specificities: tuple[str, ...],
    synthetic_sources: tuple[str, ...],
    init_weights: Path | None,
    architecture: str,
    global_pool: str,
    input_size: int,
    epochs: int,
    samples_per_epoch: int,
    lr: float,
    batch_size: int,
    folds: int,
    seed: int,
    name: str,
    model_version: str,
    training_data: str,
    intended_use: str,
) -> None:
    """Train an image task model on LABELS (CSV: image, group, optional crop, one column per task).

    Grouped cross-validation first (no group on both sides of a fold), thresholds and temperatures fitted on
    the out-of-fold predictions, figures with 95 % CIs from a bootstrap over groups; then the shipped
    network on every row. The card carries the cross-validated figures.
    """
    from predraft.models.taskdata import TaskLabelsError
    from predraft.models.tasktraining import TaskTrainingConfig, train_task_model

    gate_task, _, gate_class = gate.partition("=") if gate else (None, "", None)
    binary = dict(value.partition("=")[::2] for value in binaries)
    try:
        min_specificity = {task: float(value) for task, value in (item.split("=", 1) for item in min_specificities)}
    except ValueError as exc:
        raise click.BadParameter(f"--min-specificity takes TASK=NUMBER, e.g. field=0.95 ({exc})") from exc
    try:
        config = TaskTrainingConfig(
            tasks=dict(_task(task) for task in tasks),
            architecture=architecture,
            global_pool=global_pool,
            input_size=input_size,
            epochs=epochs,
            samples_per_epoch=samples_per_epoch,
            lr=lr,
            batch_size=batch_size,
            folds=folds,
            seed=seed,
            gate_task=gate_task,
            gate_class=gate_class or None,
            binary=binary,
            min_specificity=min_specificity,
            synthetic_sources=synthetic_sources,
            init_weights=init_weights,
            name=name,
            version=model_version,
            training_data=training_data or f"{labels.name} over {images_dir}",
            intended_use=intended_use,
        )
        train_task_model(labels, images_dir, out_dir, config, progress=click.echo)
    except ValidationError as exc:
        raise click.BadParameter(str(exc)) from exc
    except (TaskLabelsError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"wrote {out_dir / 'card.json'}")
