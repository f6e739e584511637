"""``predraft studies ...``: studies, their drafts and exports; redraft and resend (services in
predraft.core.studies, predraft.workers.dispatch and predraft.workers.export_service). Exit codes as every admin
command: predraft.cli.output."""

from __future__ import annotations

import json
from datetime import datetime

import click

from predraft.cli.output import EXIT_OK, EXIT_PROBLEMS, SinceType, print_table, reachable_settings
from predraft.core.states import StudyState


@click.group()
def studies() -> None:
    """Studies and their drafts."""


@studies.command("ls")
@click.option(
    "--state",
    type=click.Choice([state.value for state in StudyState]),
    default=None,
    help="Only studies in this state.",
)
@click.option(
    "--since",
    type=SinceType(),
    default=None,
    help="Only studies with an image received since then: 30m, 2h, 3d, or a date/time (UTC).",
)
@click.option("--limit", default=100, show_default=True, type=click.IntRange(min=1))
@click.option("--json", "as_json", is_flag=True, help="JSON for scripts.")
def list_command(state: str | None, since: datetime | None, limit: int, as_json: bool) -> int:
    """List studies, newest first. Exit 1 when one listed is in error."""
    from predraft.core.db import session_scope
    from predraft.core.studies import list_studies

    settings = reachable_settings()
    with session_scope(settings.database_url) as session:
        rows = list_studies(session, state=state, since=since, limit=limit)
    code = EXIT_PROBLEMS if any(row["state"] == StudyState.ERROR for row in rows) else EXIT_OK
    if as_json:
        click.echo(json.dumps(rows, indent=2))
    elif not rows:
        click.echo("no studies")
    else:
        print_table(
            ("Study UID", "State", "Gen", "Instances", "Accession", "Received", "Last image", "Drafted"),
            [
                (
                    row["study_uid"],
                    row["state"],
                    row["generation"],
                    row["instances"],
                    row["accession_number"],
                    row["received_at"],
                    row["last_instance_at"],
                    row["drafted_at"],
                )
                for row in rows
            ],
        )
    return code


@studies.command("show")
@click.argument("study_uid")
@click.option("--json", "as_json", is_flag=True, help="JSON for scripts.")
def show_command(study_uid: str, as_json: bool) -> int:
    """Show a study: its instances, their states and the draft text. Exit 1 when the study is in error or an
    export of its draft is dead."""
    from predraft.core.db import session_scope
    from predraft.core.studies import study_detail

    settings = reachable_settings()
    with session_scope(settings.database_url) as session:
        detail = study_detail(session, study_uid)
    if detail is None:
        raise click.ClickException(f"no study with StudyInstanceUID {study_uid}")
    exports = (detail["draft"] or {}).get("exports") or []
    code = (
        EXIT_PROBLEMS if detail["state"] == StudyState.ERROR or any(e["state"] == "dead" for e in exports) else EXIT_OK
    )
    if as_json:
        click.echo(json.dumps(detail, indent=2))
        return code
    click.echo(f"Study {detail['study_uid']}  state: {detail['state']}  generation: {detail['generation']}")
    if detail["error"]:
        click.echo(f"Error: {detail['error']}")
    print_table(
        ("SOP Instance UID", "State", "View", "Side", "Reads as", "Predictions", "Error or flag"),
        [
            (
                i["sop_instance_uid"],
                i["state"],
                i["view"],
                i["side"],
                f"{i['region_read']} {i['region_probability']:.2f}" if i["region_read"] else "",
                ", ".join(f"{p['side']}={p['top_class']} {p['probability']:.2f}" for p in i["predictions"]),
                i["error"] or flag_text(i["scope_flag"], i["scope_note"]),
            )
            for i in detail["instances"]
        ],
    )
    steps = detail["timings"]["seconds_from_last_instance"]
    if steps:
        click.echo(
            "  timings after the last instance: " + ", ".join(f"{step} +{value:.1f} s" for step, value in steps.items())
        )
    draft = detail["draft"]
    if draft is None:
        click.echo("No draft.")
    else:
        click.echo(
            f"\nDraft (pack {draft['pack']}, generation {draft['generation']}, {draft['model']}), "
            f"SR {draft['sr_sop_instance_uid']}"
            f"\n  stored at {draft['sr_path']}"
            + (
                f"\n  AI results SR (TID 1500) {draft['results_sr_sop_instance_uid']}"
                f"\n  stored at {draft['results_sr_path']}"
                if draft.get("results_sr_sop_instance_uid")
                else ""
            )
            + "\n"
        )
        click.echo(draft["text"])
        _echo_exports(draft["exports"])
        review = detail.get("review")
        if review is not None:
            why = f" ({review['reason']})" if review["reason"] else ""
            click.echo(
                f"\nReviewed: {review['action']} by {review['user']} at {review['at']}{why}; "
                f"SR {review['sr_sop_instance_uid']}"
            )
            _echo_exports(review["exports"])
    return code


def flag_text(flag: str | None, note: str | None) -> str:
    """An instance's scope flag with its note, as ``studies show`` prints it: "flag: note", or the note alone when
    it begins with the flag's own words (an untagged image's note starts "no body-part tags; ...")."""
    if not flag:
        return ""
    if not note:
        return flag
    return note if note.startswith(flag) else f"{flag}: {note}"


def _echo_exports(exports: list[dict]) -> None:
    if not exports:
        click.echo("\nExports: none (no export destination was configured when it was drafted)")
        return
    click.echo("\nExports:")
    for export in exports:
        when = f" at {export['exported_at']}" if export["exported_at"] else ""
        click.echo(
            f"  {export['destination']:<20} {export['state']:<8} {export['attempts']} tr"
            f"{'y' if export['attempts'] == 1 else 'ies'}{when}"
        )
        if export["last_error"]:
            click.echo(f"      {'note' if export['state'] == 'sent' else 'error'}: {export['last_error']}")


@studies.command("resend")
@click.argument("study_uid")
@click.option(
    "--destination",
    "destination_name",
    default=None,
    help="Only this export destination (default: every configured one).",
)
@click.option("--json", "as_json", is_flag=True, help="JSON for scripts.")
def resend_command(study_uid: str, destination_name: str | None, as_json: bool) -> int:
    """Send the study's latest SRs (its draft's narrative and AI results SRs, or the report its review issued) again
    to every destination (or one)."""
    settings = reachable_settings()  # first: exit 2 at once when the broker or the database is away
    from predraft.core.db import session_scope
    from predraft.workers.app import create_celery
    from predraft.workers.export_service import NothingToResend, requeue_latest_draft
    from predraft.workers.export_task import send_exports

    if destination_name is not None:
        try:
            names = [settings.export.destination(destination_name).name]
        except KeyError as exc:
            raise click.ClickException(exc.args[0]) from None
    else:
        names = [destination.name for destination in settings.export.destinations]
        if not names:
            raise click.ClickException("no export destinations are configured (PREDRAFT_EXPORT_DESTINATIONS)")
    try:
        with session_scope(settings.database_url) as session:
            draft, queued = requeue_latest_draft(session, study_uid=study_uid, destinations=names)
            draft_id, generation = draft.id, draft.generation
            sr_uids = [document.sop_instance_uid for document in draft.documents()]
    except NothingToResend as exc:
        raise click.ClickException(str(exc)) from None
    send_exports(create_celery(settings), draft_id, queued)
    if as_json:
        click.echo(
            json.dumps(
                {
                    "study_uid": study_uid,
                    "draft_generation": generation,
                    "sr_sop_instance_uid": sr_uids[0],
                    "sr_sop_instance_uids": sr_uids,
                    "queued": list(queued),
                },
                indent=2,
            )
        )
    for name in [] if as_json else queued:
        click.echo(f"queued SR {' and '.join(sr_uids)} (draft generation {generation}) for {name}")
    for name in [] if as_json else [name for name in names if name not in queued]:
        click.echo(f"not queued for {name}: a worker is sending it now (see `predraft studies show`)")
    return EXIT_OK


@studies.command("redraft")
@click.argument("study_uid")
@click.option("--json", "as_json", is_flag=True, help="JSON for scripts.")
def redraft_command(study_uid: str, as_json: bool) -> int:
    """Draft a finished study again under a new generation: its new SR supersedes the previous draft (and is
    exported like any draft). Refused while the study is still on its way to a draft."""
    from predraft.workers.app import create_celery
    from predraft.workers.dispatch import CannotRedraft, redraft_study

    settings = reachable_settings()
    app = create_celery(settings)
    try:
        generation = redraft_study(app, settings.database_url, study_uid=study_uid)
    except CannotRedraft as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        app.close()
    if as_json:
        click.echo(json.dumps({"study_uid": study_uid, "generation": generation}, indent=2))
    else:
        click.echo(
            f"study {study_uid} re-opened as generation {generation}: it is drafted again, and the new SR "
            "supersedes the previous one"
        )
    return EXIT_OK
