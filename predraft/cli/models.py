from __future__ import annotations

from pathlib import Path

import click


@click.group()
def models() -> None:
    """Model weights and cards."""


@models.command("make-untrained")
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--architecture", default="mobilenetv3_small_100", show_default=True, help="timm model name.")
@click.option("--input-size", default=224, show_default=True, type=int)
@click.option("--seed", default=0, show_default=True, type=int)
def make_untrained(out_dir: Path, architecture: str, input_size: int, seed: int) -> None:
    """Write random (untrained) weights and their card: a stand-in until trained weights exist."""
    from predraft.models.factory import write_untrained_model

    try:
        card_path = write_untrained_model(out_dir, architecture=architecture, input_size=input_size, seed=seed)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"wrote {card_path}")


@models.command()
@click.argument("card", type=click.Path(dir_okay=False, path_type=Path))
def check(card: Path) -> None:
    """Validate a model card and the sha256 of its weights."""
    from predraft.models.card import ModelCardError, load_card

    try:
        model, weights = load_card(card)
    except ModelCardError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"{model.display_name}: {model.architecture} at {model.input_size} px, weights {weights} verified")
