from __future__ import annotations

import json

import click

from predraft.cli.common import load_settings


@click.group()
def studies() -> None:
    """Studies and their drafts."""


@studies.command("ls")
@click.option("--state", default=None, help="Only studies in this state.")
@click.option("--limit", default=100, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="JSON for scripts.")
def list_command(state: str | None, limit: int, as_json: bool) -> None:
    """List studies, newest first."""
    from predraft.db import session_scope
    from predraft.studies import list_studies

    settings = load_settings()
    with session_scope(settings.database_url) as session:
        rows = list_studies(session, state=state, limit=limit)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("no studies")
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("Study UID", "State", "Gen", "Instances", "Accession", "Received", "Drafted")
    for row in rows:
        table.add_row(row["study_uid"], row["state"], str(row["generation"]), str(row["instances"]),
                      row["accession_number"], row["received_at"], row["drafted_at"] or "")
    Console(width=200).print(table)


@studies.command("show")
@click.argument("study_uid")
@click.option("--json", "as_json", is_flag=True, help="JSON for scripts.")
def show_command(study_uid: str, as_json: bool) -> None:
    """Show a study: its instances, their states and the draft text."""
    from predraft.db import session_scope
    from predraft.studies import study_detail

    settings = load_settings()
    with session_scope(settings.database_url) as session:
        detail = study_detail(session, study_uid)
    if detail is None:
        raise click.ClickException(f"no study with StudyInstanceUID {study_uid}")
    if as_json:
        click.echo(json.dumps(detail, indent=2))
        return
    click.echo(f"Study {detail['study_uid']}  state: {detail['state']}  generation: {detail['generation']}")
    if detail["error"]:
        click.echo(f"Error: {detail['error']}")
    for instance in detail["instances"]:
        predictions = ", ".join(f"{p['side']}={p['top_class']} {p['probability']:.2f}" for p in instance["predictions"])
        click.echo(f"  {instance['sop_instance_uid']}  {instance['state']:<10} view={instance['view']} "
                   f"side={instance['side']} {predictions}")
        if instance["error"]:
            click.echo(f"      error: {instance['error']}")
    draft = detail["draft"]
    if draft is None:
        click.echo("No draft.")
    else:
        click.echo(f"\nDraft (generation {draft['generation']}, {draft['model']}), SR {draft['sr_sop_instance_uid']}"
                   f"\n  stored at {draft['sr_path']}\n")
        click.echo(draft["text"])
