"""The long-running commands: serve (everything), listen, worker and web."""

from __future__ import annotations

import gc
import os
from typing import TYPE_CHECKING

import click

from predraft.cli.common import load_settings, load_settings_with_schema
from predraft.core.settings import redact_url

if TYPE_CHECKING:
    from predraft.core.settings import Settings
    from predraft.serve import StopSignals


@click.command()
@click.option("--demo", "run_demo", is_flag=True, help="Once up, send the demo study and print its draft.")
def serve(run_demo: bool) -> int:
    """Run the DIMSE listener, a Celery worker and the HTTP app together, until Ctrl-C."""
    from predraft.serve import StopRequested, StopSignals

    signals = StopSignals().install()  # first: a Ctrl-C from now on stops whatever was started
    try:
        with signals.interruptible():
            settings = _prepared_settings()
    except StopRequested:
        click.echo("predraft stopped before it started")
        return 0
    return _supervise(settings, signals, run_demo)


def _prepared_settings() -> Settings:
    """The settings, with logging configured and the environment prepared (migrations, queues, model)."""
    from predraft.core.bootstrap import configure_logging
    from predraft.serve import prepare_environment

    settings = load_settings()
    configure_logging(settings)
    prepare_environment(settings)
    return settings


def _supervise(settings: Settings, signals: StopSignals, run_demo: bool) -> int:
    """Start the parts, wait until they answer, run until a stop signal; whatever happens, stop every part
    that was started before returning (or raising)."""
    from predraft.serve import StopRequested, Supervisor

    supervisor = Supervisor(settings, stop=signals.requested)
    try:
        supervisor.start()
        supervisor.wait_ready()
    except StopRequested:
        supervisor.stop()
        click.echo("predraft stopped before it was up")
        return 0
    except (TimeoutError, RuntimeError) as exc:
        supervisor.stop()
        raise click.ClickException(f"predraft could not start: {exc}") from exc
    except BaseException:
        supervisor.stop()
        raise
    try:
        _announce(settings, run_demo)
    except BaseException:
        supervisor.stop()
        raise
    return supervisor.run_until_stopped()


def _announce(settings: Settings, run_demo: bool) -> None:
    click.echo(
        f"predraft is up: DICOM {settings.listener.ae_title}@{settings.listener.host}:{settings.listener.port}, "
        f"HTTP http://{settings.http.host}:{settings.http.port}, database {redact_url(settings.database_url)}, "
        f"broker {redact_url(settings.broker_url)}, model {settings.model.card_path}. Ctrl-C stops it."
    )
    if run_demo:
        from predraft.demo import DemoError
        from predraft.demo import run_demo as send_demo

        try:
            click.echo(send_demo(settings))
        except DemoError as exc:
            click.echo(f"demo failed: {exc}", err=True)


@click.command()
def listen() -> None:
    """Run the DIMSE listener processes (dimse_processes) and the study-stability monitor."""
    import logging

    from predraft.core.bootstrap import configure_logging
    from predraft.core.metrics import serve_metrics
    from predraft.listener.processes import ListenerStartError, ListenerSupervisor
    from predraft.serve import StopSignals
    from predraft.workers.app import QUEUES, create_celery
    from predraft.workers.queues import declare_queues
    from predraft.workers.stability import StabilityMonitor

    stop = StopSignals().install().requested  # first: a stop while the processes start stops them
    settings = load_settings_with_schema()
    configure_logging(settings)
    # The supervisor serves no DIMSE itself: with dimse_processes 1 it runs one listener process (one code
    # path); it alone runs the stability monitor, the sweeper and the metrics endpoint (predraft.listener.processes).
    supervisor = ListenerSupervisor(settings)
    try:
        try:
            supervisor.start(stop)
            serve_metrics(
                settings.metrics_host, settings.listener.metrics_port, multiprocess_dir=supervisor.metrics_dir
            )
        except (ListenerStartError, OSError) as exc:
            raise click.ClickException(str(exc)) from exc
        if stop.is_set():
            return
        declare_queues(settings.broker_url, QUEUES)  # the queues its first sends go to exist before it sends
        monitor = StabilityMonitor(settings, create_celery(settings))
        monitor.start()
        logging.getLogger(__name__).info("study-stability monitor and sweeper started (pid %d)", os.getpid())
        click.echo(
            f"listening as {settings.listener.ae_title} on {settings.listener.host}:{settings.listener.port} "
            f"with {supervisor.count} listener process(es)"
        )
        supervisor.supervise(stop)
        monitor.stop()
    finally:
        supervisor.stop()


@click.command()
@click.option(
    "--queues",
    "-Q",
    default="prepare,classify,draft,export",
    show_default=True,
    help="Comma-separated queues to consume.",
)
@click.option("--concurrency", "-c", type=int, default=None, help="Worker threads (default from settings).")
@click.option(
    "--metrics-port",
    type=click.IntRange(0, 65535),
    default=None,
    help="Port of this worker's Prometheus endpoint (default from settings; 0: none).",
)
def worker(queues: str, concurrency: int | None, metrics_port: int | None) -> None:
    """Run a Celery worker on the given queues."""
    from predraft.core.bootstrap import configure_logging
    from predraft.core.metrics import serve_metrics
    from predraft.models.card import ModelCardError
    from predraft.reporting.text import TemplateCheckError, check_pack_templates
    from predraft.workers.app import QUEUES, create_celery

    settings = load_settings_with_schema()
    configure_logging(settings)
    unknown = set(queues.split(",")) - set(QUEUES)
    if unknown:
        raise click.ClickException(f"unknown queue(s) {sorted(unknown)}; known: {', '.join(QUEUES)}")
    try:
        packs = settings.model.packs(verify_weights="classify" in queues)  # every pack's card (PackError: ValueError)
        if "prepare" in queues:  # the gate card, its weights and its tasks, checked here (without torch)
            from predraft.models.scope import check_gate_card
            from predraft.models.taskcard import load_task_card

            check_gate_card(load_task_card(settings.model.gate_card_path)[0])
        if "draft" in queues:
            check_pack_templates(
                packs, settings.report.template_dir
            )  # a broken template stops the worker, not a report
    except (ModelCardError, TemplateCheckError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc
    try:
        serve_metrics(settings.metrics_host, settings.workers.metrics_port if metrics_port is None else metrics_port)
    except OSError as exc:
        raise click.ClickException(str(exc)) from exc
    app = create_celery(settings)
    app.worker_main(
        [
            "worker",
            "--queues",
            queues,
            "--pool",
            settings.workers.pool,
            "--concurrency",
            str(concurrency or settings.workers.concurrency),
            "--loglevel",
            settings.log_level,
            "--hostname",
            f"predraft-{queues.replace(',', '-')}@%h",
            "--without-gossip",
            "--without-mingle",
        ]
    )
    # The worker has stopped. The interpreter's last garbage collection would walk every object torch, timm and
    # the rest made (2-3 s on this two-core machine, of a 7 s stop): frozen, they are left to the exit.
    gc.freeze()


@click.command()
def web() -> None:
    """Run the HTTP app."""
    import uvicorn

    from predraft.core.bootstrap import configure_logging
    from predraft.http import create_app

    settings = load_settings_with_schema()
    configure_logging(settings)
    uvicorn.run(
        create_app(settings),
        host=settings.http.host,
        port=settings.http.port,
        log_level=settings.log_level.lower(),
        access_log=False,
        log_config=None,
    )  # our handlers: text or JSON
