"""``predraft evaluate-real``: the gate, the hip model and the metal check on real labelled images."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("evaluate-real")
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
    help="Folder for real_metrics.json and predictions.csv.",
)
@click.option(
    "--gate-card",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="Task card of the gate (needs a region task)  [default: the bundled gate, models/gate/card.json]",
)
@click.option(
    "--model-card",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="Card of the hip hardware classifier  [default: the bundled demo card]",
)
@click.option(
    "--split",
    "split_file",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="CSV with the columns patient and set (or split): keep only the rows whose group is in --split-set.",
)
@click.option("--split-set", default="test", show_default=True, help="The set of --split to evaluate.")
@click.option(
    "--source",
    "sources",
    multiple=True,
    help="Keep only the rows of this source (the CSV's source column), e.g. fracatlas. Repeatable.",
)
@click.option(
    "--n-bootstrap",
    default=1000,
    show_default=True,
    type=int,
    help="Bootstrap resamples (over groups) for the 95 % confidence intervals.",
)
@click.option("--seed", default=0, show_default=True, type=int, help="Seeds the bootstrap.")
def evaluate_real(
    labels: Path,
    images_dir: Path,
    out_dir: Path,
    gate_card: Path | None,
    model_card: Path | None,
    split_file: Path | None,
    split_set: str,
    sources: tuple[str, ...],
    n_bootstrap: int,
    seed: int,
) -> None:
    """Evaluate the gate, the hip model and the model-free metal check on LABELS (a task CSV: image, group,
    optional crop, and region and/or hardware columns, e.g. models/data/gate_labels.csv over ../shared/data).

    Gate: region accuracy, each region's sensitivity and specificity, the service rules at the card's
    thresholds; hardware present at its threshold on whole images and hip halves, beside the metal check on
    the same crops; hip model: how often it reads or drafts hardware on hips without any. 95 % CIs from a
    bootstrap over groups.
    """
    from predraft.evaluate_real import EvaluateRealError, summary_lines
    from predraft.evaluate_real import evaluate_real as run_evaluation
    from predraft.models.card import ModelCardError
    from predraft.models.taskdata import TaskLabelsError

    try:
        metrics = run_evaluation(
            labels,
            images_dir,
            out_dir,
            gate_card=gate_card,
            model_card=model_card,
            split_file=split_file,
            split_set=split_set,
            sources=sources,
            n_bootstrap=n_bootstrap,
            seed=seed,
            progress=click.echo,
        )
    except (EvaluateRealError, TaskLabelsError, ModelCardError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc
    for line in summary_lines(metrics):
        click.echo(line)
    click.echo(f"reports in {out_dir}")
