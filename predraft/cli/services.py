"""The long-running commands: serve (everything), listen, worker and web."""

from __future__ import annotations

import click

from predraft.cli.common import load_settings, load_settings_with_schema


@click.command()
@click.option("--demo", "run_demo", is_flag=True, help="Once up, send the demo study and print its draft.")
def serve(run_demo: bool) -> int:
    """Run the DIMSE listener, a Celery worker and the HTTP app together, until Ctrl-C."""
    from predraft.bootstrap import configure_logging
    from predraft.serve import Supervisor, prepare_environment
    from predraft.settings import redact_url

    settings = load_settings()
    configure_logging(settings)
    prepare_environment(settings)
    supervisor = Supervisor(settings)
    supervisor.start()
    try:
        supervisor.wait_ready()
    except (TimeoutError, RuntimeError) as exc:
        supervisor.stop()
        raise click.ClickException(f"predraft could not start: {exc}") from exc
    click.echo(
        f"predraft is up: DICOM {settings.ae_title}@{settings.dimse_host}:{settings.dimse_port}, "
        f"HTTP http://{settings.http_host}:{settings.http_port}, database {redact_url(settings.database_url)}, "
        f"broker {redact_url(settings.broker_url)}, model {settings.model_card_path}. Ctrl-C stops it."
    )
    if run_demo:
        from predraft.demo import DemoError
        from predraft.demo import run_demo as send_demo

        try:
            click.echo(send_demo(settings))
        except DemoError as exc:
            click.echo(f"demo failed: {exc}", err=True)
    return supervisor.run_until_stopped()


@click.command()
def listen() -> None:
    """Run the DIMSE listener and the study-stability monitor."""
    import tempfile

    from listener.dimse import start_dimse_server
    from listener.spool import Spool
    from listener.stability import StabilityMonitor
    from predraft.bootstrap import configure_logging, wait_for_stop_signal
    from predraft.metrics import serve_metrics
    from workers.app import QUEUES, create_celery
    from workers.queues import declare_queues

    settings = load_settings_with_schema()
    configure_logging(settings)
    # C-STOREs are received into files (listener.dimse); keep those on the spool's file system so that
    # a finished instance is renamed into the spool, not copied.
    tempfile.tempdir = str(Spool(settings.spool_dir).receiving_dir())
    server = start_dimse_server(settings)
    try:
        serve_metrics(settings.metrics_host, settings.listener_metrics_port)
    except OSError as exc:
        server.shutdown()
        raise click.ClickException(str(exc)) from exc
    declare_queues(settings.broker_url, QUEUES)  # the queues its first sends go to exist before it sends
    monitor = StabilityMonitor(settings, create_celery(settings))
    monitor.start()
    click.echo(f"listening as {settings.ae_title} on {settings.dimse_host}:{server.server_address[1]}")
    wait_for_stop_signal()
    monitor.stop()
    server.shutdown()


@click.command()
@click.option("--queues", "-Q", default="prepare,classify,draft,export", show_default=True,
              help="Comma-separated queues to consume.")
@click.option("--concurrency", "-c", type=int, default=None, help="Worker threads (default from settings).")
@click.option("--metrics-port", type=click.IntRange(0, 65535), default=None,
              help="Port of this worker's Prometheus endpoint (default from settings; 0: none).")
def worker(queues: str, concurrency: int | None, metrics_port: int | None) -> None:
    """Run a Celery worker on the given queues."""
    from models.card import ModelCardError, load_card
    from predraft.bootstrap import configure_logging
    from predraft.metrics import serve_metrics
    from reporting.text import TemplateCheckError, check_templates
    from workers.app import QUEUES, create_celery

    settings = load_settings_with_schema()
    configure_logging(settings)
    unknown = set(queues.split(",")) - set(QUEUES)
    if unknown:
        raise click.ClickException(f"unknown queue(s) {sorted(unknown)}; known: {', '.join(QUEUES)}")
    try:
        load_card(settings.model_card_path, verify_weights="classify" in queues)
        if "draft" in queues:
            check_templates(settings.template_dir)  # a broken site template stops the worker here, not a report
    except (ModelCardError, TemplateCheckError) as exc:
        raise click.ClickException(str(exc)) from exc
    try:
        serve_metrics(settings.metrics_host, settings.worker_metrics_port if metrics_port is None else metrics_port)
    except OSError as exc:
        raise click.ClickException(str(exc)) from exc
    app = create_celery(settings)
    app.worker_main([
        "worker", "--queues", queues, "--pool", settings.worker_pool,
        "--concurrency", str(concurrency or settings.worker_concurrency),
        "--loglevel", settings.log_level, "--hostname", f"predraft-{queues.replace(',', '-')}@%h",
        "--without-gossip", "--without-mingle",
    ])


@click.command()
def web() -> None:
    """Run the HTTP app."""
    import uvicorn

    from predraft.bootstrap import configure_logging
    from predraft.http import create_app

    settings = load_settings_with_schema()
    configure_logging(settings)
    uvicorn.run(create_app(settings), host=settings.http_host, port=settings.http_port,
                log_level=settings.log_level.lower(), access_log=False, log_config=None)  # our handlers: text or JSON
