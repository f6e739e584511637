"""Failed-login throttling: too many failed logins for one user name, or from one address, in a moving
window and further tries are refused (HTTP 429) until the oldest failure leaves the window.

Counts live in this process's memory (the ``limits`` library's moving window), which fits ``predraft
web``'s single process; they start afresh when it restarts. Behind a reverse proxy every request comes
from the proxy's address, so the per-address limit then counts everyone together: set it high there, or
have the proxy throttle.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from limits import RateLimitItemPerSecond
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter

#: Longest user name a key keeps (users.username is at most 64 characters).
MAX_KEY_LENGTH = 64
#: Locks that serialise the logins of one user name, and of one address (keys hashed onto these).
LOCK_STRIPES = 64


class LoginThrottle:
    """At most ``per_user`` failed logins per user name and ``per_address`` per client address within
    ``window_seconds``; thread-safe."""

    def __init__(self, *, per_user: int, per_address: int, window_seconds: int) -> None:
        for name, value in (("per_user", per_user), ("per_address", per_address), ("window_seconds", window_seconds)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{name} must be an int, not {type(value).__name__}")
            if value < 1:
                raise ValueError(f"{name} {value} must be at least 1")
        self.window_seconds = window_seconds
        self._limits = {
            "user": RateLimitItemPerSecond(per_user, window_seconds),
            "address": RateLimitItemPerSecond(per_address, window_seconds),
        }
        self._limiter = MovingWindowRateLimiter(MemoryStorage())
        self._locks = [threading.Lock() for _ in range(LOCK_STRIPES)]

    @staticmethod
    def _user_key(username: str) -> str:
        return username.strip()[:MAX_KEY_LENGTH]

    def _keys(self, *, username: str, address: str) -> list[tuple[str, str]]:
        return [("user", self._user_key(username)), ("address", address)]

    def retry_after(self, *, username: str, address: str) -> int | None:
        """Whole seconds until a login for ``username`` from ``address`` may be tried again; None if it may now."""
        waits = []
        for kind, key in self._keys(username=username, address=address):
            if not self._limiter.test(self._limits[kind], kind, key):
                reset = self._limiter.get_window_stats(self._limits[kind], kind, key).reset_time
                waits.append(max(1, math.ceil(reset - time.time())))
        return max(waits) if waits else None

    @contextmanager
    def attempt(self, *, username: str, address: str) -> Iterator[int | None]:
        """Hold this user name's and this address's locks for one login; yields :meth:`retry_after`.

        The password check and :meth:`failed` belong inside the block: another login for the same user name
        or from the same address waits, then sees this one counted. Logins of other names and addresses run
        on (each key's lock is one of :data:`LOCK_STRIPES`, taken in a fixed order).
        """
        stripes = sorted(
            {hash((kind, key)) % LOCK_STRIPES for kind, key in self._keys(username=username, address=address)}
        )
        for stripe in stripes:
            self._locks[stripe].acquire()
        try:
            yield self.retry_after(username=username, address=address)
        finally:
            for stripe in reversed(stripes):
                self._locks[stripe].release()

    def failed(self, *, username: str, address: str) -> None:
        """Count one failed login."""
        for kind, key in self._keys(username=username, address=address):
            self._limiter.hit(self._limits[kind], kind, key)

    def succeeded(self, *, username: str) -> None:
        """A good password clears the user name's failures (not the address's)."""
        self._limiter.clear(self._limits["user"], "user", self._user_key(username))
