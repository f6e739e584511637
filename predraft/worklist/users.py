"""Web users: adding them, changing passwords, listing (a service: callers own the session).

Passwords are hashed with argon2id (argon2-cffi's defaults, RFC 9106's low-memory profile); a hash made with
older parameters is replaced at the next successful login. Changing a password, or disabling a user, ends
every session of that user.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from sqlalchemy import delete, select
from sqlalchemy.engine import CursorResult
from sqlalchemy.orm import Session

from predraft.core.schema import User, WebSession, utcnow
from predraft.core.states import Role

_USERNAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
#: Shortest password accepted.
MIN_PASSWORD_LENGTH = 10
_HASHER = PasswordHasher()
#: Verified against when the user does not exist, so that a wrong user name takes as long as a wrong password.
_DUMMY_HASH = _HASHER.hash("predraft: no such user")


class UserError(ValueError):
    """A user that cannot be added or changed; the message says why."""


@dataclass(frozen=True)
class UserInfo:
    id: int
    username: str
    display_name: str
    role: Role
    active: bool
    created_at: datetime
    password_changed_at: datetime


def _info(user: User) -> UserInfo:
    return UserInfo(
        user.id,
        user.username,
        user.display_name,
        Role(user.role),
        user.active,
        user.created_at,
        user.password_changed_at,
    )


def check_username(username: str) -> str:
    if not isinstance(username, str) or not _USERNAME.match(username):
        raise UserError(
            f"user name {username!r} is not 1-64 letters, digits, '.', '_', '@' or '-' "
            "(starting with a letter or digit)"
        )
    return username


def check_password(password: str) -> str:
    if not isinstance(password, str):
        raise TypeError(f"password must be a str, not {type(password).__name__}")
    if len(password) < MIN_PASSWORD_LENGTH:
        raise UserError(f"a password needs at least {MIN_PASSWORD_LENGTH} characters, not {len(password)}")
    return password


def dicom_person_name(display_name: str | None, username: str) -> str:
    """``Family^Given`` as DICOM writes a person's name: the given one, else the user name as a family name."""
    name = (display_name or "").strip() or username
    if "\\" in name or any(ord(char) < 32 for char in name):
        raise UserError(f"display name {name!r} holds a backslash or a control character")
    if len(name) > 64:
        raise UserError(f"display name {name!r} is longer than 64 characters")
    return name if "^" in name else f"{name}^"


def hash_password(password: str) -> str:
    return _HASHER.hash(check_password(password))


def add_user(
    session: Session, *, username: str, password: str, role: Role | str, display_name: str | None = None
) -> UserInfo:
    """Add a user; UserError if the name is taken or a value is invalid."""
    username = check_username(username)
    try:
        role = Role(role)
    except ValueError as exc:
        raise UserError(f"role {role!r} is not one of {', '.join(r.value for r in Role)}") from exc
    if session.scalar(select(User.id).where(User.username == username)) is not None:
        raise UserError(f"user {username!r} exists already (use `predraft users passwd` to change the password)")
    user = User(
        username=username,
        display_name=dicom_person_name(display_name, username),
        role=role,
        password_hash=hash_password(password),
        active=True,
    )
    session.add(user)
    session.flush()
    return _info(user)


def _user(session: Session, username: str) -> User:
    user = session.scalar(select(User).where(User.username == username))
    if user is None:
        raise UserError(f"no user {username!r}")
    return user


def set_password(session: Session, *, username: str, password: str) -> int:
    """Change the password and end the user's sessions; returns how many sessions were ended."""
    user = _user(session, username)
    user.password_hash = hash_password(password)
    user.password_changed_at = utcnow()
    return end_sessions(session, user_id=user.id)


def set_active(session: Session, *, username: str, active: bool) -> int:
    """Enable or disable a user; disabling ends their sessions (returns how many)."""
    user = _user(session, username)
    user.active = active
    return 0 if active else end_sessions(session, user_id=user.id)


def end_sessions(session: Session, *, user_id: int) -> int:
    result = cast(CursorResult[Any], session.execute(delete(WebSession).where(WebSession.user_id == user_id)))
    return int(result.rowcount or 0)


def list_users(session: Session) -> list[UserInfo]:
    return [_info(user) for user in session.scalars(select(User).order_by(User.username))]


def authenticate(session: Session, *, username: str, password: str) -> User | None:
    """The active user with this name and password, else None (a missing user costs the same time)."""
    user = session.scalar(select(User).where(User.username == username)) if _USERNAME.match(username or "") else None
    try:
        _HASHER.verify(user.password_hash if user is not None else _DUMMY_HASH, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return None
    if user is None or not user.active:
        return None
    if _HASHER.check_needs_rehash(user.password_hash):
        user.password_hash = _HASHER.hash(password)
    return user
