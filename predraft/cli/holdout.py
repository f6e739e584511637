"""``predraft holdout``: put a stratified part of a labelled image set aside before anyone looks at it."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import click


@click.command("holdout")
@click.argument("labels", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.option("--label-column", required=True, help="The CSV column to stratify by, e.g. manufacturer.")
@click.option("--item-column", default="image", show_default=True, help="The CSV column naming each image.")
@click.option("--fraction", default=0.2, show_default=True, type=float, help="Share of each label held out.")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path), help="The split's CSV.")
def holdout(labels: Path, label_column: str, item_column: str, fraction: float, seed: int, out: Path) -> None:
    """Choose, from the labels alone, the images of LABELS (a CSV) held out until the final evaluation, stratified
    by --label-column, and write them with the rest (part: holdout or development) to --out."""
    from predraft.models.holdout import HOLDOUT, HoldoutError, read_labels, stratified_holdout, write_holdout

    try:
        named = read_labels(labels, item_column=item_column, label_column=label_column)
        assignment = stratified_holdout(named, fraction=fraction, seed=seed)
    except HoldoutError as exc:
        raise click.ClickException(str(exc)) from None
    write_holdout(named, assignment, out, item_column=item_column, label_column=label_column)
    held = Counter(named[item] for item, part in assignment.items() if part == HOLDOUT)
    total = Counter(named.values())
    for label in sorted(total):
        click.echo(f"{label}: {held[label]} of {total[label]} held out")
    click.echo(f"wrote {out} ({sum(held.values())} of {len(named)} held out)")
