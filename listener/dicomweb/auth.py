"""Authentication of DICOMweb requests: a bearer token or HTTP basic auth, from the settings, or for reads the
worklist's logged-in session.

``PREDRAFT_DICOMWEB_TOKENS`` lists accepted bearer tokens and ``PREDRAFT_DICOMWEB_USERS`` maps user
names to passwords. With neither set, DICOMweb is closed: every request gets 401 saying so (there is no
anonymous access). Secrets are compared in constant time and never logged; a refusal is logged with
the client's address and the reason only.

A read (GET or HEAD) that sends no Authorization header is also accepted with the session cookie of any active
worklist user: the OHIF Viewer that predraft serves on the same origin sends no header, and its ``app-config.js``
holds no secret. The worklist sits above this layer, so the app that mounts both (:mod:`predraft.http`) puts the
check on ``app.state`` (:data:`SESSION_USER_STATE`); without it, no session is accepted. Writes (STOW-RS) need a
token or basic auth whatever cookie comes with them, and a read that sends an Authorization header is judged by
that header alone.

The scheme is matched case-insensitively (RFC 9110 11.1) and may be followed by several spaces; the
credentials after them are compared exactly as sent, nothing stripped: a token with a trailing space is
another token.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import logging
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus

from fastapi import HTTPException, Request
from pydantic import SecretStr

from predraft.core.settings import Settings

log = logging.getLogger(__name__)

REALM = "predraft DICOMweb"
#: The challenges sent with every 401: either scheme is accepted.
CHALLENGE = f'Bearer realm="{REALM}", Basic realm="{REALM}", charset="UTF-8"'
NOT_CONFIGURED = "DICOMweb is not configured: set PREDRAFT_DICOMWEB_TOKENS or PREDRAFT_DICOMWEB_USERS to allow access"
_DUMMY_SECRET = b"predraft-no-such-user"  # compared against when the user is unknown, so timing is alike
#: The methods a worklist session may use: reads only.
SESSION_METHODS = frozenset({"GET", "HEAD"})
#: The attribute of ``app.state`` holding the worklist's session check (:data:`SessionUser`), if any.
SESSION_USER_STATE = "dicomweb_session_user"
#: Given a request, the user name of its logged-in worklist session (an active user, an unexpired session), or
#: None. Called in a worker thread (it reads the database).
SessionUser = Callable[[Request], str | None]


@dataclass(frozen=True)
class DicomwebUser:
    """Who made an authenticated request: ``name`` is a basic-auth user name, ``token#N`` (the
    position of the bearer token in the settings) or ``session:<user>`` (a worklist login), never the secret
    itself."""

    name: str


def _refuse(request: Request, reason: str, *, detail: str = "authentication required") -> HTTPException:
    client = request.client.host if request.client else "unknown client"
    log.warning("DICOMweb %s %s from %s refused: %s", request.method, request.url.path, client, reason)
    return HTTPException(HTTPStatus.UNAUTHORIZED, detail=detail, headers={"WWW-Authenticate": CHALLENGE})


def _matches(candidate: bytes, secret: SecretStr) -> bool:
    """Constant-time equality; an empty candidate never matches (nor, so, an empty secret)."""
    return hmac.compare_digest(candidate, secret.get_secret_value().encode()) and bool(candidate)


def check_bearer(token: str, tokens: list[SecretStr]) -> int | None:
    """The index of ``token`` in ``tokens``, or None. Every token is compared, in constant time each."""
    candidate = token.encode()
    found = None
    for index, secret in enumerate(tokens):
        if _matches(candidate, secret) and found is None:
            found = index
    return found


def check_basic(credentials: str, users: dict[str, SecretStr]) -> str | None:
    """The user name if ``credentials`` (base64 ``user:password``) matches ``users``, else None."""
    try:
        decoded = base64.b64decode(credentials, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, separator, password = decoded.partition(":")
    if not separator:
        return None
    secret = users.get(user)
    if secret is None:
        hmac.compare_digest(password.encode(), _DUMMY_SECRET)
        return None
    return user if _matches(password.encode(), secret) else None


def split_authorization(header: str) -> tuple[str, str]:
    """The scheme and credentials of an Authorization header (RFC 9110 11.4: ``auth-scheme [ 1*SP
    credentials ]``). Leading white space of the field and the spaces after the scheme are no part of
    either; the credentials are returned exactly as sent, trailing white space included."""
    scheme, _, credentials = header.lstrip(" \t").partition(" ")
    return scheme, credentials.lstrip(" ")


def session_user(request: Request) -> str | None:
    """The worklist user whose session the request carries, for a read without an Authorization header; else
    None (a write, a header sent, no check installed, no valid session)."""
    if request.method not in SESSION_METHODS or "authorization" in request.headers:
        return None
    check: SessionUser | None = getattr(request.app.state, SESSION_USER_STATE, None)
    return None if check is None else check(request)


def authenticate(request: Request) -> DicomwebUser:
    """FastAPI dependency: the authenticated user, or HTTPException 401 with ``WWW-Authenticate``."""
    settings: Settings = request.app.state.settings
    user = session_user(request)
    if user is not None:
        return DicomwebUser(f"session:{user}")
    if not settings.dicomweb.tokens and not settings.dicomweb.users:
        raise _refuse(request, "DICOMweb is not configured", detail=NOT_CONFIGURED)
    scheme, credentials = split_authorization(request.headers.get("authorization", ""))
    if not scheme:
        raise _refuse(request, "no Authorization header (nor, for a read, a worklist session)")
    if scheme.lower() == "bearer" and settings.dicomweb.tokens:
        index = check_bearer(credentials, settings.dicomweb.tokens)
        if index is not None:
            return DicomwebUser(f"token#{index + 1}")
        raise _refuse(request, "wrong bearer token", detail="invalid credentials")
    if scheme.lower() == "basic" and settings.dicomweb.users:
        user = check_basic(credentials, settings.dicomweb.users)
        if user is not None:
            return DicomwebUser(user)
        raise _refuse(request, "wrong user name or password", detail="invalid credentials")
    # The scheme is not logged: a client that sends a bare secret would find it in the log.
    raise _refuse(
        request,
        "an authorization scheme that is not configured (Bearer: tokens, Basic: users)",
        detail="invalid credentials",
    )
