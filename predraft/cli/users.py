"""``predraft users``: the worklist's accounts (argon2 password hashes in the database)."""

from __future__ import annotations

import json
import sys

import click

from predraft.cli.common import load_settings_with_schema


def _password(from_stdin: bool) -> str:
    if from_stdin:
        value = sys.stdin.readline().rstrip("\n")
        if not value:
            raise click.ClickException("no password on standard input")
        return value
    return str(click.prompt("Password", hide_input=True, confirmation_prompt=True))


@click.group()
def users() -> None:
    """Worklist users: radiologists review drafts, admins see statistics."""


@users.command("add")
@click.argument("username")
@click.option("--role", type=click.Choice(["radiologist", "admin"]), required=True)
@click.option(
    "--name",
    "display_name",
    default=None,
    help="Name as DICOM writes it, Family^Given (signs verified SRs); default the user name.",
)
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input (for scripts).")
def add_command(username: str, role: str, display_name: str | None, password_stdin: bool) -> None:
    """Add a user."""
    from predraft.core.db import session_scope
    from predraft.worklist.users import UserError, add_user

    settings = load_settings_with_schema()
    password = _password(password_stdin)
    try:
        with session_scope(settings.database_url) as session:
            user = add_user(session, username=username, password=password, role=role, display_name=display_name)
    except UserError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"added {user.username} ({user.role.value}, {user.display_name})")


@users.command("passwd")
@click.argument("username")
@click.option("--password-stdin", is_flag=True, help="Read the new password from standard input (for scripts).")
def passwd_command(username: str, password_stdin: bool) -> None:
    """Change a user's password (their sessions end)."""
    from predraft.core.db import session_scope
    from predraft.worklist.users import UserError, set_password

    settings = load_settings_with_schema()
    password = _password(password_stdin)
    try:
        with session_scope(settings.database_url) as session:
            ended = set_password(session, username=username, password=password)
    except UserError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"password of {username} changed; {ended} session(s) ended")


@users.command("disable")
@click.argument("username")
@click.option("--enable", is_flag=True, help="Enable the user again instead.")
def disable_command(username: str, enable: bool) -> None:
    """Disable a user (their sessions end), or enable them again."""
    from predraft.core.db import session_scope
    from predraft.worklist.users import UserError, set_active

    settings = load_settings_with_schema()
    try:
        with session_scope(settings.database_url) as session:
            ended = set_active(session, username=username, active=enable)
    except UserError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"{username} enabled" if enable else f"{username} disabled; {ended} session(s) ended")


@users.command("ls")
@click.option("--json", "as_json", is_flag=True, help="JSON for scripts.")
def list_command(as_json: bool) -> None:
    """List users."""
    from predraft.core.db import session_scope
    from predraft.worklist.users import list_users

    settings = load_settings_with_schema()
    with session_scope(settings.database_url) as session:
        found = list_users(session)
    rows = [
        {
            "username": u.username,
            "role": u.role.value,
            "name": u.display_name,
            "active": u.active,
            "created_at": u.created_at.isoformat(timespec="seconds"),
            "password_changed_at": u.password_changed_at.isoformat(timespec="seconds"),
        }
        for u in found
    ]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("no users (add one: predraft users add NAME --role radiologist)")
        return
    for row in rows:
        click.echo(
            f"{row['username']:<24} {row['role']:<12} {'active' if row['active'] else 'disabled':<9} {row['name']}"
        )
