"""``predraft spool ...``: what the spool holds, and purging the old files of finished studies (spool retention;
services in predraft.workers.retention). Only the database must answer (a full disk may have taken the embedded
broker down with it): exit 2 when it does not. Studies are named by their row id and StudyInstanceUID, never by
patient. Exit codes as every admin command: predraft.cli.output."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from predraft.cli.common import load_settings
from predraft.cli.output import (
    EXIT_OK,
    EXIT_PROBLEMS,
    REACH_TIMEOUT_SECONDS,
    UnreachableError,
    emit,
    json_option,
    print_table,
)
from predraft.core.settings import Settings

if TYPE_CHECKING:
    from predraft.workers.retention import KindReport

#: Days as the options take them: a positive number.
DAYS = click.FloatRange(min=0, min_open=True)


@click.group()
def spool() -> None:
    """The spool: what it holds, and purging the old files of finished studies (retention)."""


def _database_settings() -> Settings:
    """The settings, once the database has answered (else exit 2, naming it by its URL without password)."""
    from predraft.workers.reach import Unreachable, probe_database

    settings = load_settings()
    try:
        probe_database(settings.database_url, timeout=REACH_TIMEOUT_SECONDS)
    except Unreachable as exc:
        raise UnreachableError(str(exc)) from None
    return settings


def size_text(size: int) -> str:
    """``1536`` -> ``1.5 KiB``; bytes below 1 KiB as they are."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{size} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")  # the loop returns at TiB


def _days(value: float | None) -> str:
    return "kept forever" if value is None else f"after {value:g} days"


@spool.command("purge")
@click.option("--dry-run", is_flag=True, help="Only list what would go; delete nothing.")
@click.option(
    "--older-than-days",
    "images_days",
    type=DAYS,
    default=None,
    help="Images of finished studies quiet for this many days go (default: PREDRAFT_RETENTION_IMAGES_DAYS).",
)
@click.option(
    "--srs-older-than-days",
    "srs_days",
    type=DAYS,
    default=None,
    help="SRs of finished studies quiet for this many days go (default: PREDRAFT_RETENTION_SRS_DAYS).",
)
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@json_option
def purge_command(dry_run: bool, images_days: float | None, srs_days: float | None, yes: bool, as_json: bool) -> int:
    """Delete from the spool the images (and, if set, the SRs) of finished studies whose last activity is older than
    the retention: reviewed studies, and drafted ones whose every export was sent. Nothing of a study in work goes;
    database rows are kept (each purged instance records when). Lists each study with its files and bytes."""
    from predraft.workers.retention import purge_spool

    settings = _database_settings()
    images_days = settings.retention.images_days if images_days is None else images_days
    srs_days = settings.retention.srs_days if srs_days is None else srs_days
    if images_days is None and srs_days is None:
        raise click.ClickException(
            "retention is off (PREDRAFT_RETENTION_IMAGES_DAYS and PREDRAFT_RETENTION_SRS_DAYS are unset): "
            "give --older-than-days N (images) or --srs-older-than-days N"
        )
    plan = purge_spool(
        settings.database_url,
        spool_root=settings.spool_dir,
        images_days=images_days,
        srs_days=srs_days,
        dry_run=True,
    )
    report = plan
    if not dry_run and plan.files:
        if not yes:
            click.confirm(
                f"Delete {plan.files} file(s) ({size_text(plan.size_bytes)}) of finished studies from spool "
                f"{settings.spool_dir}? Database rows are kept.",
                abort=True,
                err=True,
            )
        confirmed = {study.study_id for kind in plan.kinds for study in kind.studies}
        report = purge_spool(
            settings.database_url,
            spool_root=settings.spool_dir,
            images_days=images_days,
            srs_days=srs_days,
            study_ids=confirmed,
        )
    elif not dry_run:
        report.dry_run = False  # nothing to delete: the same empty report

    def render() -> None:
        verb = "would go" if report.dry_run else "purged"
        for kind in report.kinds:
            _print_kind(kind, verb)
        click.echo(f"total: {report.files} file(s), {size_text(report.size_bytes)} {verb}; database rows are kept")

    emit(report.as_json(), as_json=as_json, render=render)
    return EXIT_OK


def _print_kind(kind: KindReport, verb: str) -> None:
    title = f"{kind.kind.value} of finished studies quiet for {kind.older_than_days:g} day(s): {verb}"
    if not kind.studies:
        click.echo(f"{title}: none")
        return
    print_table(
        ("Row", "Study UID", "State", "Files", "Bytes"),
        [
            (study.study_id, study.study_uid, study.state.value, len(study.files), study.size_bytes)
            for study in kind.studies
        ],
        title=title,
    )
    click.echo(
        f"  {kind.kind.value}: {kind.files} file(s), {size_text(kind.size_bytes)} of {len(kind.studies)} study(ies)"
    )


@spool.command("usage")
@json_option
def usage_command(as_json: bool) -> int:
    """What the spool holds (files and bytes of received images, SRs and files being received), its free space and
    floor, the retention settings and what a purge would free now. Exit 1 when the free space is below the floor
    (new instances are refused with out of resources, 0xA700)."""
    from predraft.workers.retention import purge_spool, spool_usage

    settings = _database_settings()
    if not settings.spool_dir.is_dir():
        raise click.ClickException(f"spool {settings.spool_dir} is no folder (no listener has stored anything here)")
    usage = spool_usage(settings.spool_dir)
    retention = settings.retention
    reclaimable = None
    if retention.images_days is not None or retention.srs_days is not None:
        reclaimable = purge_spool(
            settings.database_url,
            spool_root=settings.spool_dir,
            images_days=retention.images_days,
            srs_days=retention.srs_days,
            dry_run=True,
        )
    floor = settings.listener.spool_min_free_bytes
    below = usage.free_bytes < floor
    data = {
        **usage.as_json(),
        "min_free_bytes": floor,
        "below_floor": below,
        "retention": {"images_days": retention.images_days, "srs_days": retention.srs_days},
        "reclaimable": None if reclaimable is None else {"files": reclaimable.files, "bytes": reclaimable.size_bytes},
    }

    def render() -> None:
        print_table(
            ("Folder", "Files", "Size"),
            [(name, files, size_text(size)) for name, (files, size) in usage.folders.items()],
            title=f"Spool {usage.root}",
        )
        click.echo(
            f"free: {size_text(usage.free_bytes)} of {size_text(usage.total_bytes)}; floor {size_text(floor)} "
            f"(PREDRAFT_SPOOL_MIN_FREE_BYTES){': BELOW, new instances are refused' if below else ''}"
        )
        click.echo(f"retention: images {_days(retention.images_days)}, SRs {_days(retention.srs_days)}")
        if reclaimable is not None:
            click.echo(
                f"a purge would free {reclaimable.files} file(s), {size_text(reclaimable.size_bytes)} now "
                "(predraft spool purge --dry-run lists them)"
            )

    emit(data, as_json=as_json, render=render)
    return EXIT_PROBLEMS if below else EXIT_OK
