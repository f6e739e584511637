"""predraft.serve.StopSignals: a stop signal that Python swallows in a weakref callback stays quiet and recorded."""

from __future__ import annotations

import gc
import signal
import sys
import weakref

import pytest

from predraft.serve import StopRequested, StopSignals


class _Thing:
    pass


def test_a_stop_raised_inside_a_weakref_callback_is_not_reported_and_is_still_requested():
    """As when Ctrl-C lands while SQLAlchemy's weakref callbacks run during a migration (seen in CI): Python
    cannot raise from the callback and reports it as unraisable (printed with its traceback by the default
    hook); inside interruptible() that report is dropped."""
    signals = StopSignals()
    reported = []
    previous = sys.unraisablehook
    sys.unraisablehook = reported.append
    try:
        with signals.interruptible():
            thing = _Thing()
            ref = weakref.ref(thing, lambda _: signals._handle(signal.SIGINT, None))
            del thing
            gc.collect()
        assert sys.unraisablehook == reported.append  # put back as it was
    finally:
        sys.unraisablehook = previous
    assert ref() is None
    assert reported == []
    assert signals.requested.is_set()
    with pytest.raises(StopRequested), signals.interruptible():  # honoured at the next interruptible step
        pass


def test_other_unraisable_exceptions_are_still_reported():
    reported = []
    previous = sys.unraisablehook
    sys.unraisablehook = reported.append
    try:
        with StopSignals().interruptible():
            thing = _Thing()
            ref = weakref.ref(thing, lambda _: 1 / 0)
            del thing
            gc.collect()
    finally:
        sys.unraisablehook = previous
    assert ref() is None
    assert [type(report.exc_value) for report in reported] == [ZeroDivisionError]
