"""Logins, sessions and CSRF tokens of the worklist.

* The session cookie (``predraft_session``) holds a random 256-bit token; the database keeps only its HMAC
  under the session secret (``web_sessions.token_hash``), so a copy of the table logs nobody in. The cookie
  is HttpOnly, SameSite=Lax, Secure unless ``cookie_secure`` is off, and lasts ``session_lifetime_minutes``;
  logging out, a password change or disabling the user deletes the row.
* Every form carries a CSRF token: the HMAC of the session token (before login: of a random value in the
  ``predraft_login`` cookie). A POST whose token does not match is refused with 403 before anything else runs.
* The session secret is ``session_secret`` or, unset, 32 random bytes generated once into
  ``<var_dir>/session_secret`` with mode 0600 (a file readable by others is refused).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
import stat
from dataclasses import dataclass
from datetime import timedelta
from http import HTTPStatus
from pathlib import Path
from urllib.parse import parse_qs

from fastapi import Request
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from predraft.core.schema import User, WebSession, utcnow
from predraft.core.settings import Settings
from predraft.core.states import Role

log = logging.getLogger(__name__)

SESSION_COOKIE = "predraft_session"
LOGIN_COOKIE = "predraft_login"
CSRF_FIELD = "csrf_token"
SECRET_FILE_NAME = "session_secret"  # noqa: S105 - a file name, not a secret
#: Largest form body read (a report text is a few kB).
MAX_FORM_BYTES = 256 * 1024


class LoginRequired(Exception):
    """No valid session: pages redirect to the login form, other requests get 401."""


class WebError(Exception):
    """A request refused with an HTTP ``status`` and a message fit to show the user."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class CurrentUser:
    id: int
    username: str
    display_name: str
    role: Role
    csrf_token: str

    @property
    def is_admin(self) -> bool:
        return self.role is Role.ADMIN

    @property
    def can_review(self) -> bool:
        return self.role is Role.RADIOLOGIST


def load_session_secret(settings: Settings) -> bytes:
    """The configured secret, else the one in ``<var_dir>/session_secret``, made on first use (mode 0600)."""
    if settings.worklist.session_secret is not None:
        return settings.worklist.session_secret.get_secret_value().encode()
    path = settings.var_dir / SECRET_FILE_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return _read_secret(path)
    with os.fdopen(descriptor, "w") as file:
        file.write(secrets.token_hex(32))
        file.flush()
        os.fsync(file.fileno())
    log.info("generated the session secret %s", path)
    return _read_secret(path)


def _read_secret(path: Path) -> bytes:
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise PermissionError(
            f"session secret {path} has mode {mode:04o}: others may read it; "
            f"run `chmod 600 {path}` (or set PREDRAFT_SESSION_SECRET)"
        )
    value = path.read_text().strip()
    if len(value) < 32:
        raise ValueError(f"session secret {path} holds fewer than 32 characters: delete it to have one generated")
    return value.encode()


def _mac(secret: bytes, purpose: str, value: str) -> str:
    return hmac.new(secret, f"{purpose}\0{value}".encode(), hashlib.sha256).hexdigest()


def token_hash(secret: bytes, token: str) -> str:
    return _mac(secret, "session", token)


def csrf_token(secret: bytes, seed: str) -> str:
    return _mac(secret, "csrf", seed)


def csrf_ok(secret: bytes, seed: str | None, given: str | None) -> bool:
    if not seed or not given:
        return False
    return hmac.compare_digest(csrf_token(secret, seed).encode(), given.encode())  # bytes: any text compares


def start_session(session: Session, *, user: User, secret: bytes, lifetime_minutes: int) -> str:
    """A new session for ``user`` (and expired ones of anybody removed); returns the cookie's token."""
    now = utcnow()
    session.execute(delete(WebSession).where(WebSession.expires_at < now))
    token = secrets.token_urlsafe(32)
    session.add(
        WebSession(
            token_hash=token_hash(secret, token),
            user_id=user.id,
            created_at=now,
            expires_at=now + timedelta(minutes=lifetime_minutes),
        )
    )
    return token


def end_session(session: Session, *, secret: bytes, token: str) -> None:
    session.execute(delete(WebSession).where(WebSession.token_hash == token_hash(secret, token)))


def user_for_token(session: Session, *, secret: bytes, token: str) -> User | None:
    """The active user of an unexpired session with this token, else None."""
    return session.execute(
        select(User)
        .join(WebSession, WebSession.user_id == User.id)
        .where(
            WebSession.token_hash == token_hash(secret, token), WebSession.expires_at > utcnow(), User.active.is_(True)
        )
    ).scalar_one_or_none()


async def read_form(request: Request) -> dict[str, str]:
    """An ``application/x-www-form-urlencoded`` body as a dict (the last value of a repeated field)."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/x-www-form-urlencoded":
        return {}
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            raise WebError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"form larger than {MAX_FORM_BYTES} bytes")
    fields = parse_qs(body.decode("utf-8", errors="replace"), keep_blank_values=True)
    return {key: values[-1] for key, values in fields.items()}
