"""predraft.worklist.throttle: failed logins counted per user name and per address in a moving window."""

from __future__ import annotations

import pytest

from predraft.worklist.throttle import LoginThrottle
from tests.conftest import wait_until


def test_each_limit_holds_on_its_own_and_lapses_with_the_window():
    throttle = LoginThrottle(per_user=2, per_address=3, window_seconds=1)
    throttle.failed(username="alice", address="10.0.0.1")
    assert throttle.retry_after(username="alice", address="10.0.0.1") is None
    throttle.failed(username="alice", address="10.0.0.1")
    assert throttle.retry_after(username="alice", address="10.0.0.9") == 1  # the user name's limit
    assert throttle.retry_after(username="bob", address="10.0.0.1") is None  # one more from that address
    throttle.failed(username="bob", address="10.0.0.1")
    assert throttle.retry_after(username="carol", address="10.0.0.1") == 1  # the address's limit
    wait_until(
        lambda: throttle.retry_after(username="alice", address="10.0.0.1") is None,
        timeout=10,
        what="the one-second window lapsing",
    )


def test_a_good_password_clears_the_user_names_failures_but_not_the_addresss():
    throttle = LoginThrottle(per_user=2, per_address=2, window_seconds=300)
    throttle.failed(username="alice", address="10.0.0.1")
    throttle.failed(username=" alice ", address="10.0.0.2")  # the name as the form sends it, trimmed
    assert 295 <= throttle.retry_after(username="alice", address="10.0.0.3") <= 300
    throttle.succeeded(username="alice")
    assert throttle.retry_after(username="alice", address="10.0.0.3") is None
    throttle.failed(username="bob", address="10.0.0.1")
    assert throttle.retry_after(username="dave", address="10.0.0.1") is not None


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"per_user": 0}, ValueError, "per_user 0 must be at least 1"),
        ({"per_address": 2.5}, TypeError, "per_address must be an int"),
        ({"window_seconds": True}, TypeError, "window_seconds must be an int"),
    ],
)
def test_the_constructor_checks_its_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        LoginThrottle(**{"per_user": 5, "per_address": 20, "window_seconds": 300, **kwargs})
