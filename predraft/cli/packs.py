"""``predraft packs ls`` and ``predraft packs check DIR``: the installed body-region packs, and one pack checked
before a site installs it (predraft.models.pack)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from predraft.cli.common import load_settings
from predraft.cli.output import EXIT_OK, EXIT_PROBLEMS, print_table

if TYPE_CHECKING:
    from predraft.models.card import ModelCard


@click.group()
def packs() -> None:
    """Body-region packs: their classes, wording, codes, views, templates and model card."""


def _model_words(card: ModelCard) -> str:
    """A pack's model as ``packs`` shows it: name and version, and whether it is untrained or a demo."""
    return card.display_name + ("" if card.trained else " (untrained)") + (" (demo)" if card.synthetic_demo else "")


@packs.command("ls")
def ls_command() -> None:
    """List the installed packs (the bundled ones, then the site's from PREDRAFT_PACKS_DIR) and which regions each
    reads; a region two packs name is read by the site's pack."""
    from predraft.models.pack import PackError

    settings = load_settings()
    try:
        registry = settings.model.packs()
    except PackError as exc:
        raise click.ClickException(str(exc)) from None
    shadowed = registry.shadowed()
    rows = []
    for installed in registry.packs:
        reads = [region for region in installed.pack.regions if region not in shadowed[installed.name]]
        elsewhere = [f"{region} (read by {registry.by_region[region].name})" for region in shadowed[installed.name]]
        rows.append(
            [
                installed.name,
                installed.pack.version,
                "site" if installed.site else "bundled",
                ", ".join(reads) or "-",
                ", ".join(elsewhere) or "-",
                str(len(installed.pack.classes)),
                _model_words(installed.card),
                str(installed.folder),
            ]
        )
    print_table(["pack", "version", "origin", "reads", "not read", "classes", "model", "folder"], rows)


@packs.command("check")
@click.argument("folder", type=click.Path(file_okay=False, exists=True, path_type=Path))
def check_command(folder: Path) -> int:
    """Check the pack in FOLDER: its pack.toml, its card and the sha256 of its weights, that the card's classes are
    the pack's, and that every report template renders. Exit 0 when it can be installed, 1 with the reason."""
    from predraft.models.pack import PackError, load_pack
    from predraft.reporting.text import TemplateCheckError, check_templates

    try:
        installed = load_pack(folder, site=True)
        check_templates(installed.pack, load_settings().report.template_dir, installed.templates)
    except (PackError, TemplateCheckError) as exc:
        click.echo(f"{folder}: not usable: {exc}", err=True)
        return EXIT_PROBLEMS
    pack = installed.pack
    click.echo(
        f"{folder}: pack {pack.name} {pack.version} ({pack.title}) reads {', '.join(pack.regions)}; "
        f"{len(pack.classes)} classes ({', '.join(pack.class_names)}); model {_model_words(installed.card)}; templates "
        f"{'its own and the base ones' if installed.templates else 'the base ones'}: usable"
    )
    return EXIT_OK
