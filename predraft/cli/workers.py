"""``predraft workers``: the workers online, their queues, device, model and heartbeat."""

from __future__ import annotations

import click

from predraft.cli.output import EXIT_OK, EXIT_PROBLEMS, emit, json_option, print_workers, reachable_settings


@click.command()
@click.option(
    "--timeout",
    default=1.0,
    show_default=True,
    type=click.FloatRange(0.05, 4.0),
    help="Seconds to wait for workers to answer Celery inspect (Redis broker).",
)
@json_option
def workers(timeout: float, as_json: bool) -> int:
    """Workers online: their heartbeats, and on Redis whether each answers Celery inspect within --timeout.

    Exit 1 when no worker is online, a queue has none, or a worker does not answer."""
    from predraft.workers.admin import workers_report
    from predraft.workers.app import create_celery

    settings = reachable_settings()
    app = create_celery(settings)
    try:
        report = workers_report(app, settings, timeout=timeout)
    finally:
        app.close()

    def render() -> None:
        print_workers(report["workers"])
        for problem in report["problems"]:
            click.echo(f"problem: {problem}")

    emit(report, as_json=as_json, render=render)
    return EXIT_PROBLEMS if report["problems"] else EXIT_OK
