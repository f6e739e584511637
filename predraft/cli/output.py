"""What the admin commands share: exit codes, the reachability check, JSON or rich output, time arguments.

Exit codes, for monitoring scripts: 0 fine; 1 problems found (dead-lettered work, a queue no worker
consumes, a study in error, an item that cannot be retried); 2 the broker or the database cannot be
reached (checked first by every admin command, within a few seconds).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import click

from predraft.cli.common import load_settings
from predraft.core.clock import as_utc
from predraft.core.settings import Settings

EXIT_OK = 0
EXIT_PROBLEMS = 1
EXIT_UNREACHABLE = 2
#: Seconds each of the broker and the database has to answer the reachability check.
REACH_TIMEOUT_SECONDS = 2.0

json_option = click.option("--json", "as_json", is_flag=True, help="JSON for scripts.")


class UnreachableError(click.ClickException):
    """The broker or the database cannot be reached: exit code 2."""

    exit_code = EXIT_UNREACHABLE


def reachable_settings() -> Settings:
    """The settings, once the broker and the database have both answered (else exit 2, naming which one
    by its URL without password)."""
    from predraft.workers.reach import Unreachable, check_reachable

    settings = load_settings()
    try:
        check_reachable(settings, timeout=REACH_TIMEOUT_SECONDS)
    except Unreachable as exc:
        raise UnreachableError(str(exc)) from None
    except ValueError as exc:  # a broker whose queues predraft cannot read (neither redis:// nor sqla+)
        raise click.ClickException(str(exc)) from None
    return settings


def emit(data: Any, *, as_json: bool, render: Callable[[], None]) -> None:
    """``data`` as indented JSON on stdout, or whatever ``render`` prints for people."""
    if as_json:
        click.echo(json.dumps(data, indent=2))
    else:
        render()


def print_table(columns: Sequence[str], rows: Sequence[Sequence[object]], *, title: str | None = None) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(*columns, title=title, title_justify="left")
    for row in rows:
        table.add_row(*("" if value is None else str(value) for value in row))
    Console(width=200).print(table)


def print_workers(workers: Sequence[dict[str, Any]]) -> None:
    """The workers of ``queue stats`` and ``workers`` as a table."""
    if not workers:
        click.echo("no worker online")
        return
    print_table(
        ("Worker", "Queues", "Pool", "Device", "Models", "Uptime", "Heartbeat", "Active", "Scheduled"),
        [
            (
                w["hostname"],
                ",".join(w["queues"]),
                f"{w['pool']} x{w['concurrency']}",
                f"{w['device']} ({w['device_name']})",
                ", ".join(w.get("models", {}).values()) or f"{w['model_name']} {w['model_version']}",
                age(w["uptime_seconds"]),
                f"{age(w['heartbeat_age_seconds'])} ago"
                + (
                    ""
                    if w["answers_inspect"] is None
                    else ", answers inspect"
                    if w["answers_inspect"]
                    else ", NO answer to inspect"
                ),
                w["active"],
                w["scheduled"],
            )
            for w in workers
        ],
        title="Workers online",
    )


def age(seconds: float | None) -> str:
    """``95`` -> ``1m35s``; None -> empty."""
    if seconds is None:
        return ""
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    if seconds < 86400:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 86400}d{seconds % 86400 // 3600:02d}h"


_SPAN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$", re.IGNORECASE)
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_since(text: str, *, now: datetime | None = None) -> datetime:
    """``30m``, ``2h``, ``3d`` (that long ago) or an ISO date or time (``2026-11-22``, ``2026-11-22T08:00``;
    UTC unless it names its zone) as an aware UTC datetime. Raises ValueError naming the text."""
    now = now or datetime.now(UTC)
    span = _SPAN.match(text)
    if span:
        return now - timedelta(seconds=float(span.group(1)) * _UNITS[span.group(2).lower()])
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"--since {text!r}: give a span such as 30m, 2h or 3d, or a date such as 2026-11-22") from None
    return as_utc(moment).astimezone(UTC)


class SinceType(click.ParamType):
    name = "SPAN|DATE"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> datetime:
        if isinstance(value, datetime):
            return value
        try:
            return parse_since(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)
