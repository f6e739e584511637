"""``predraft train`` and ``predraft evaluate``: the reference paper's protocol on a site's labelled data."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
from pydantic import ValidationError


@click.command()
@click.argument("data", type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Run folder: split, checkpoint, history, then weights.safetensors and card.json.",
)
@click.option(
    "--pack",
    "pack_dir",
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    help="The pack the model is for (a folder with its pack.toml): its classes, in its order, are the labels' "
    "vocabulary and the model's outputs [default: the bundled hip pack's nine classes].",
)
@click.option("--architecture", default="tf_efficientnet_b4", show_default=True, help="timm model name.")
@click.option("--input-size", default=380, show_default=True, type=int, help="Square input edge in pixels.")
@click.option("--head-epochs", default=4, show_default=True, type=int, help="Epochs on the classifier head alone.")
@click.option("--epochs", default=50, show_default=True, type=int, help="Epochs on the whole network.")
@click.option("--lr", default=1e-3, show_default=True, type=float, help="One-cycle peak learning rate.")
@click.option("--head-lr", default=None, type=float, help="Peak learning rate of the head stage [default: --lr].")
@click.option("--batch-size", default=32, show_default=True, type=int)
@click.option("--max-steps-per-epoch", default=None, type=int, help="Cap on steps per epoch (smoke runs).")
@click.option("--no-augment", is_flag=True, help="Train without augmentation.")
@click.option("--flip", is_flag=True, help="Also mirror training images left-right (augmentation).")
@click.option("--seed", default=0, show_default=True, type=int, help="Seeds the split, sampling and augmentation.")
@click.option(
    "--init-weights",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="Local timm checkpoint (ImageNet weights) for the backbone; nothing is downloaded.",
)
@click.option("--name", default="predraft-hip-hardware", show_default=True, help="Model name for the card.")
@click.option("--version", "model_version", default="1.0.0", show_default=True, help="Model version for the card.")
@click.option("--synthetic-demo", is_flag=True, help="Mark the card as trained on phantoms only (never clinical).")
@click.option("--training-data", default="", help="One line describing the training data, for the card.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--workers", default=0, show_default=True, type=int, help="DataLoader processes for augmentation.")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its checkpoint.")
def train(
    data: Path,
    out_dir: Path,
    pack_dir: Path | None,
    architecture: str,
    input_size: int,
    head_epochs: int,
    epochs: int,
    lr: float,
    head_lr: float | None,
    batch_size: int,
    max_steps_per_epoch: int | None,
    no_augment: bool,
    flip: bool,
    seed: int,
    init_weights: Path | None,
    name: str,
    model_version: str,
    synthetic_demo: bool,
    training_data: str,
    device: str,
    workers: int,
    resume: bool,
) -> None:
    """Train a classifier on DATA (DICOM or PNG files and labels.csv: patient, study, image, side, class).

    Patient-level 70/10/20 split stratified by class, head-only then whole-network fine-tuning with
    one-cycle learning rates and the paper's augmentations, class-balanced sampling, bf16 on CUDA, a
    checkpoint every epoch; at the end, temperature and per-class thresholds fitted on validation. With --pack,
    the classes are that pack's; copy card.json and weights.safetensors from --out into the pack's folder and run
    ``predraft packs check`` on it.
    """
    from predraft.models.datasets import LabelsError
    from predraft.models.pack import BUNDLED_PACKS, DEFAULT_PACK, PackError, read_pack
    from predraft.models.training import TrainingConfig, TrainingError
    from predraft.models.training import train as run_training

    try:
        classes = read_pack(pack_dir or BUNDLED_PACKS / DEFAULT_PACK).class_names
    except PackError as exc:
        raise click.ClickException(str(exc)) from None
    try:
        config = TrainingConfig(
            classes=classes,
            architecture=architecture,
            input_size=input_size,
            head_epochs=head_epochs,
            epochs=epochs,
            lr=lr,
            head_lr=head_lr,
            batch_size=batch_size,
            max_steps_per_epoch=max_steps_per_epoch,
            augment=not no_augment,
            flip=flip,
            seed=seed,
            init_weights=init_weights.resolve() if init_weights else None,
            name=name,
            version=model_version,
            synthetic_demo=synthetic_demo,
            training_data=training_data or f"labelled data folder {data.name}",
        )
        card_path = run_training(
            data, out_dir, config, resume=resume, device=device, workers=workers, on_epoch=_echo_epoch
        )
    except ValidationError as exc:
        raise click.BadParameter(str(exc)) from exc
    except (LabelsError, TrainingError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"wrote {card_path}")


def _echo_epoch(entry: dict[str, Any]) -> None:
    click.echo(
        "epoch {epoch:>3} {stage:<4}  train loss {train_loss:.4f}  validation loss {validation_loss:.4f}  "
        "accuracy {validation_accuracy:.4f}".format(**entry)
    )


@click.command()
@click.argument("model", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.argument("data", type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder for the JSON reports, PNG plots and predictions.csv.",
)
@click.option(
    "--split-file",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="A training run's split.csv: evaluate only the patients of --split.",
)
@click.option("--split", default="test", show_default=True, type=click.Choice(["train", "validation", "test"]))
@click.option(
    "--bootstrap",
    "n_bootstrap",
    default=1000,
    show_default=True,
    type=int,
    help="Bootstrap resamples (over patients) for the 95 % confidence intervals.",
)
@click.option("--seed", default=0, show_default=True, type=int, help="Seeds the bootstrap.")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda or cuda:N.")
@click.option("--batch-size", default=64, show_default=True, type=int)
@click.option(
    "--cache-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Keep the prepared images here for the next evaluation of the same data.",
)
def evaluate(
    model: Path,
    data: Path,
    out_dir: Path,
    split_file: Path | None,
    split: str,
    n_bootstrap: int,
    seed: int,
    device: str,
    batch_size: int,
    cache_dir: Path | None,
) -> None:
    """Evaluate the model card MODEL on DATA: accuracy, kappa, per-class metrics and AUC with 95 % CIs,
    confusion matrix and ROC curves, per image and per study after aggregation across views."""
    from predraft.evaluate import evaluate_model, summary_lines
    from predraft.models.card import ModelCardError
    from predraft.models.datasets import LabelsError

    try:
        result = evaluate_model(
            model,
            data,
            out_dir,
            device=device,
            batch_size=batch_size,
            n_bootstrap=n_bootstrap,
            seed=seed,
            split_file=split_file,
            split=split,
            cache_dir=cache_dir,
        )
    except (ModelCardError, LabelsError, ValueError, RuntimeError) as exc:
        raise click.ClickException(str(exc)) from exc
    for line in summary_lines(result):
        click.echo(line)
    click.echo(f"reports in {out_dir}")
