"""The ``predraft`` command: groups of subcommands, each importing what it needs when it runs.

The import rule of this package, for start-up time: ``predraft --help``, ``predraft --version`` and every command
import all of its modules (this file registers every command), so

- every command imports its services (``predraft.core.db``, ``predraft.workers.*``, ``predraft.models.*``,
  ``predraft.serve``, ``predraft.http``, ...) inside the command function, and so do the shared helpers of
  :mod:`predraft.cli.common` and :mod:`predraft.cli.output` (the database, the reachability check, rich's
  tables): a command pays only for what it runs, and none pays for torch, Celery, the ORM or FastAPI to print
  help (``bench/cli.py`` times the start-up);
- the standard library, click, the CLI's own helpers (``predraft.cli.*``) and the light modules those load
  anyway (pydantic, ``predraft.core.settings``, ``predraft.core.clock``, ``predraft.core.states``
  and ``predraft.workers.names``) are imported at the top of each module.

Those in-function imports carry no comment of their own: this docstring is their reason.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import click

import predraft
from predraft.cli.db import db
from predraft.cli.demo import demo
from predraft.cli.evaluate_real import evaluate_real
from predraft.cli.holdout import holdout
from predraft.cli.models import models
from predraft.cli.packs import packs
from predraft.cli.phantoms import phantoms
from predraft.cli.queue import queue
from predraft.cli.services import listen, serve, web, worker
from predraft.cli.spool import spool
from predraft.cli.studies import studies
from predraft.cli.train import evaluate, train
from predraft.cli.train_task import train_task
from predraft.cli.users import users
from predraft.cli.viewer import viewer
from predraft.cli.workers import workers


@click.group()
@click.version_option(predraft.__version__, prog_name="predraft")
def cli() -> None:
    """predraft: drafts orthopedic hardware reports from radiographs sent by a PACS, one pack per body region."""


for command in (
    db,
    serve,
    listen,
    worker,
    web,
    studies,
    demo,
    models,
    packs,
    phantoms,
    train,
    train_task,
    evaluate,
    evaluate_real,
    holdout,
    users,
    viewer,
    queue,
    workers,
    spool,
):
    cli.add_command(command)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI with ``argv`` (default: the process arguments); return the exit code."""
    try:
        result = cli.main(args=list(argv) if argv is not None else None, prog_name="predraft", standalone_mode=False)
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        return 1
    except click.exceptions.Exit as exc:
        return exc.exit_code
    return result if isinstance(result, int) else 0


def run() -> None:
    sys.exit(main())
