from __future__ import annotations

import click

from predraft.cli.common import load_settings


@click.command()
@click.option("--timeout", default=180.0, show_default=True, help="Seconds to wait for the draft.")
def demo(timeout: float) -> None:
    """Send a synthetic three-view hip study to the running listener and print its draft."""
    from predraft.demo import DemoError, run_demo

    try:
        click.echo(run_demo(load_settings(), timeout=timeout))
    except DemoError as exc:
        raise click.ClickException(str(exc)) from exc
