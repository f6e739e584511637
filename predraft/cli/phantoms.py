"""``predraft phantoms``: write a synthetic, labelled data set of hip radiographs (predraft.models.phantoms)."""

from __future__ import annotations

from pathlib import Path

import click


@click.command()
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--studies", default=100, show_default=True, type=click.IntRange(min=1), help="Number of studies.")
@click.option("--seed", default=0, show_default=True, type=int, help="The same seed writes the same files.")
@click.option(
    "--size", default=900, show_default=True, type=click.IntRange(min=128), help="Long side of each image in pixels."
)
@click.option("--jobs", default=1, show_default=True, type=click.IntRange(min=1), help="Processes to render with.")
def phantoms(out_dir: Path, studies: int, seed: int, size: int, jobs: int) -> None:
    """Write STUDIES synthetic DICOM studies and their labels.csv into OUT_DIR."""
    from predraft.models.phantoms import summarise_labels, write_phantom_dataset

    try:
        labels = write_phantom_dataset(out_dir, studies=studies, seed=seed, size=size, jobs=jobs)
    except (ValueError, OSError) as exc:
        raise click.ClickException(str(exc)) from exc
    summary = summarise_labels(labels)
    click.echo(f"wrote {summary.studies} studies of {summary.patients} patients ({summary.images} images) to {out_dir}")
    click.echo(f"labels: {labels}")
    click.echo("hip images per class:")
    for hardware, count in summary.hips.items():
        click.echo(f"  {hardware.value:<18} {count}")
