"""The ``predraft`` console script: the CLI, with a stop signal that lands while Python imports it honoured.

Importing the CLI takes about half a second (click, pydantic, the settings). pydantic-core builds its
validators in native code while the settings' classes are defined, and a KeyboardInterrupt raised there is
"ignored" by Python (printed, then dropped): a Ctrl-C in that moment was lost, and ``predraft serve`` went on to
start everything. Here a SIGINT or SIGTERM that arrives during the import is recorded as well as raised, and
the command does not run. From then on each command's own handling applies (``predraft serve``:
:class:`predraft.serve.StopSignals`).
"""

from __future__ import annotations

import signal
import sys
from types import FrameType

_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
#: The exit status of a command stopped before it ran: 128 + SIGINT, as a shell reports a Ctrl-C.
STOPPED_BEFORE_START = 130


def main() -> int:
    """Import the CLI with stop signals recorded, then run the command unless one came."""
    received: list[int] = []

    def record(signum: int, _frame: FrameType | None) -> None:
        received.append(signum)
        raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, record) for sig in _STOP_SIGNALS}
    try:
        from predraft.cli import main as run_command
    except KeyboardInterrupt:
        received.append(signal.SIGINT)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if received:
        print("predraft stopped before it started", file=sys.stderr)
        return STOPPED_BEFORE_START
    return run_command()
