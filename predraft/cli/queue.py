"""``predraft queue ...``: what the task queues hold, and mending what is stuck (services in predraft.workers.admin).

Item IDs: ``D<n>`` a dead letter, ``E<n>`` an export (failed or dead), anything else a Celery task id.
"""

from __future__ import annotations

import click

from predraft.cli.output import (
    EXIT_OK,
    EXIT_PROBLEMS,
    age,
    emit,
    json_option,
    print_table,
    print_workers,
    reachable_settings,
)
from predraft.core.settings import redact_url
from predraft.core.states import LISTED_WORK_STATES, WorkState
from predraft.workers.names import QUEUES as QUEUE_NAMES

#: predraft.workers.admin.STATES, from the light states module so that the CLI starts without importing
#: Celery and the ORM (tests/unit/test_admin_cli.py checks that they agree).
STATE_NAMES = tuple(state.value for state in LISTED_WORK_STATES)


@click.group()
def queue() -> None:
    """The task queues: what waits, runs, failed or is dead; retry and purge."""


@queue.command("stats")
@json_option
def stats_command(as_json: bool) -> int:
    """Per queue: waiting, running, retries pending, dead, oldest waiting; the workers online (heartbeats).

    Exit 1 when work is dead or a queue has no online worker."""
    from predraft.workers.stats import queue_stats

    settings = reachable_settings()
    stats = queue_stats(settings)

    def render() -> None:
        print_table(
            ("Queue", "Waiting", "Running", "Retries pending", "Dead", "Oldest waiting", "Workers"),
            [
                (
                    q["queue"],
                    q["waiting"],
                    q["running"],
                    q["retries_pending"],
                    q["dead"],
                    age(q["oldest_waiting_seconds"]),
                    q["workers"],
                )
                for q in stats["queues"]
            ],
            title=f"Queues on {stats['broker']}",
        )
        print_workers(stats["workers"])
        for problem in stats["problems"]:
            click.echo(f"problem: {problem}")

    emit(stats, as_json=as_json, render=render)
    return EXIT_PROBLEMS if stats["problems"] else EXIT_OK


@queue.command("ls")
@click.option("--queue", "queue_name", type=click.Choice(QUEUE_NAMES), default=None, help="Only this queue.")
@click.option("--state", type=click.Choice(STATE_NAMES), default=None, help="Only items in this state.")
@click.option(
    "--limit",
    default=100,
    show_default=True,
    type=click.IntRange(min=1),
    help="Items listed per task and state (the oldest).",
)
@json_option
def list_command(queue_name: str | None, state: str | None, limit: int, as_json: bool) -> int:
    """List work items: dead, failed (a retry is due), running, waiting. Exit 1 when some are dead."""
    from predraft.workers.admin import list_work

    settings = reachable_settings()
    items = list_work(settings, queue=queue_name, state=state, limit=limit)

    def render() -> None:
        if not items:
            click.echo(
                "nothing " + (state or "queued, failed or dead") + (f" in queue {queue_name}" if queue_name else "")
            )
            return
        print_table(
            ("ID", "State", "Queue", "Study", "Instance / destination", "Attempts", "Since", "Retry at", "Error"),
            [
                (
                    i.id,
                    i.state.value,
                    i.queue,
                    i.study_uid,
                    i.instance_uid or i.destination,
                    i.attempts,
                    i.since,
                    i.retry_at,
                    _first_line(i.error),
                )
                for i in items
            ],
        )

    emit([item.as_json() for item in items], as_json=as_json, render=render)
    return EXIT_PROBLEMS if any(item.state is WorkState.DEAD for item in items) else EXIT_OK


def _first_line(text: str | None, width: int = 70) -> str:
    line = (text or "").strip().splitlines()[0] if (text or "").strip() else ""
    return line if len(line) <= width else line[: width - 1] + "…"


@queue.command("show")
@click.argument("item_id", metavar="ID")
@json_option
def show_command(item_id: str, as_json: bool) -> int:
    """Show one item: D<n> (dead letter), E<n> (export) or a task id. Exit 1 when it is dead or unknown."""
    from predraft.workers.admin import show_work

    settings = reachable_settings()
    item = show_work(settings, item_id)
    if item is None:
        raise click.ClickException(
            f"no waiting, running, failed or dead item {item_id!r} (a task whose work is done is no item "
            "any more: see `predraft studies show`)"
        )

    shown = item.as_json()

    def render() -> None:
        for key, value in shown.items():
            if key not in {"traceback", "error"} and value is not None:
                click.echo(f"{key:<20} {value}")
        if shown.get("error"):
            click.echo(f"error\n  {shown['error']}")
        if shown.get("traceback"):
            click.echo("traceback\n" + shown["traceback"].rstrip())

    emit(shown, as_json=as_json, render=render)
    return EXIT_PROBLEMS if item.state is WorkState.DEAD else EXIT_OK


@queue.command("retry")
@click.argument("item_id", metavar="ID", required=False)
@click.option("--all-dead", is_flag=True, help="Every dead item: dead letters and dead exports.")
@json_option
def retry_command(item_id: str | None, all_dead: bool, as_json: bool) -> int:
    """Send dead work again: ID is D<n> (a dead letter) or E<n> (a dead export). Exit 1 if one is refused."""
    from predraft.workers.admin import RetryRefused, dead_item_ids, retry_work
    from predraft.workers.app import create_celery

    if (item_id is None) == (not all_dead):
        raise click.UsageError("give one ID, or --all-dead")
    settings = reachable_settings()
    ids = dead_item_ids(settings) if item_id is None else [item_id]  # item_id is None exactly with --all-dead
    app = create_celery(settings)
    retried, refused = [], []
    try:
        for one in ids:
            try:
                retried.append({"id": one, "sent": retry_work(app, settings, one)})
            except RetryRefused as exc:
                refused.append({"id": one, "reason": str(exc)})
    finally:
        app.close()

    def render() -> None:
        if not ids:
            click.echo("nothing is dead")
        for entry in retried:
            click.echo(f"{entry['id']}: sent {entry['sent']}")
        for entry in refused:
            click.echo(f"{entry['id']}: not retried: {entry['reason']}", err=True)

    emit({"retried": retried, "refused": refused}, as_json=as_json, render=render)
    return EXIT_PROBLEMS if refused else EXIT_OK


@queue.command("purge")
@click.argument("queue_name", metavar="QUEUE", type=click.Choice(QUEUE_NAMES))
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@json_option
def purge_command(queue_name: str, yes: bool, as_json: bool) -> int:
    """Delete the messages waiting in QUEUE from the broker. Spool files and database rows are kept; the
    sweeper sends again the work the database still says is pending."""
    from predraft.workers.admin import purge_queue, waiting_count
    from predraft.workers.app import create_celery

    settings = reachable_settings()
    note = (
        f"spool files and database rows are kept; the listener's sweeper sends pending work again once it "
        f"has sat unqueued for {settings.workers.sweep_stale_seconds:g} s"
    )
    if not yes:
        click.confirm(
            f"Delete the {waiting_count(settings, queue_name)} message(s) waiting in queue {queue_name} "
            f"of broker {redact_url(settings.broker_url)}? ({note})",
            abort=True,
            err=True,
        )
    app = create_celery(settings)
    try:
        purged = purge_queue(app, queue_name)
    finally:
        app.close()
    result = {"queue": queue_name, "purged": purged, "broker": redact_url(settings.broker_url), "note": note}
    emit(
        result,
        as_json=as_json,
        render=lambda: click.echo(f"purged {purged} message(s) from queue {queue_name}; {note}"),
    )
    return EXIT_OK
