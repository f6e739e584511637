"""Text from libraries that may reach a log or a stored error: only where it cannot quote patient data.

pydicom, highdicom and the other libraries predraft uses quote the values they were given in their warnings
and exception messages ("Unable to convert '1975-03-02' to 'DA' object", a birth date; 'The string "JOHN
SMITH" is unlikely to represent...', a name). predraft's own messages name UIDs and database ids only, by the
project's rule. So a warning or an exception raised inside a library (the standard library or an installed
package other than predraft's own) is shown by its type and place only; one raised in predraft's code keeps
its text.
"""

from __future__ import annotations

import logging
import sysconfig
import traceback
import warnings
from functools import lru_cache
from pathlib import Path

#: The folders that hold predraft's own code, under the root it is imported from: in a checkout, ``predraft/`` and
#: the stage folders installed into its namespace (``listener/`` is ``predraft.listener``); in site-packages,
#: ``predraft/`` alone. Its loggers' names all start with ``predraft``.
OWN_PACKAGES = frozenset({"predraft", "listener", "workers", "reporting", "models", "migrations"})
_OWN_ROOT = Path(__file__).resolve().parents[2]
_ORIGINAL_FORMATWARNING = warnings.formatwarning
WITHHELD = "message withheld: raised in a library, it may quote patient data"


@lru_cache(maxsize=1)
def _library_dirs() -> tuple[Path, ...]:
    paths = sysconfig.get_paths()
    return tuple({Path(paths[key]).resolve() for key in ("stdlib", "platstdlib", "purelib", "platlib")})


def _is_own(path: Path) -> bool:
    try:
        parts = path.relative_to(_OWN_ROOT).parts
    except ValueError:
        return False
    return bool(parts) and parts[0] in OWN_PACKAGES


@lru_cache(maxsize=4096)
def raised_in_library(filename: str) -> bool:
    """Whether ``filename`` (a code object's file) belongs to the standard library or to an installed package
    other than predraft's own packages. Names that are no file ("<template>", "sys") are not."""
    if filename.startswith("<"):
        return False
    path = Path(filename).resolve()
    if _is_own(path):
        return False
    return any(path.is_relative_to(directory) for directory in _library_dirs())


def _library_place(filename: str, lineno: int) -> str:
    """``pydicom/valuerep.py:679``: the file relative to its library folder (no value, no user path)."""
    path = Path(filename).resolve()
    for directory in sorted(_library_dirs(), key=lambda d: len(d.parts), reverse=True):
        if path.is_relative_to(directory):
            return f"{path.relative_to(directory)}:{lineno}"
    return f"{path.name}:{lineno}"


def format_warning(
    message: Warning | str, category: type[Warning], filename: str, lineno: int, line: str | None = None
) -> str:
    """A drop-in for :func:`warnings.formatwarning`: a library's warning as its place and category only;
    predraft's own warnings as Python formats them. Both the printed warnings and, with
    ``logging.captureWarnings`` on (Celery turns it on), those logged as ``py.warnings`` go through it."""
    if raised_in_library(filename):
        return f"{_library_place(filename, lineno)}: {category.__name__} ({WITHHELD})\n"
    return _ORIGINAL_FORMATWARNING(message, category, filename, lineno, line)


def _innermost_file(exc: BaseException) -> tuple[str, int] | None:
    frames = traceback.extract_tb(exc.__traceback__)
    return (frames[-1].filename, frames[-1].lineno or 0) if frames else None


def describe_exception(exc: BaseException) -> str:
    """``"ValueError: <message>"`` for an exception raised in predraft's code; ``"ValueError (message withheld:
    ...) at pydicom/valuerep.py:679"`` for one raised inside a library (or with no traceback to tell)."""
    innermost = _innermost_file(exc)
    if innermost is not None and not raised_in_library(innermost[0]):
        return f"{type(exc).__name__}: {exc}"
    place = "" if innermost is None else f" at {_library_place(*innermost)}"
    return f"{type(exc).__name__} ({WITHHELD}){place}"


def traceback_without_messages(exc: BaseException) -> str:
    """The traceback of ``exc`` and of the exceptions it was raised from: files, lines, functions and source
    lines, each exception by its type only (their messages may quote patient data)."""
    parts: list[str] = []
    current: BaseException | None = exc
    while current is not None and len(parts) < 10:
        parts.append("".join(traceback.format_tb(current.__traceback__)) + type(current).__name__)
        current = current.__cause__ or (None if current.__suppress_context__ else current.__context__)
    return "\n(the above led to the following)\n".join(reversed(parts))


#: Libraries that warn about the values they were given by quoting them: pydicom ("Invalid value for VR DA:
#: '1980-02-03'", a birth date), highdicom ('The string "JOHN SMITH" is unlikely to represent the intended
#: person name', and the same as a log record). Patient data: only their errors are logged, and their Python
#: warnings are not shown.
VALUE_QUOTING_LIBRARIES = ("pydicom", "highdicom")


def quieten_value_quoting_libraries() -> None:
    """No library warning carries patient data into the logs: the value-quoting libraries' warnings are
    ignored and their loggers log errors only; any other library's warning is shown by its place and category
    only (:func:`format_warning`), whether printed to stderr or logged as ``py.warnings``
    (Celery turns ``logging.captureWarnings`` on in the worker; other processes print warnings to stderr).
    Every predraft process runs it: :func:`predraft.core.bootstrap.configure_logging`, and the decode
    sandbox's child."""
    for library in VALUE_QUOTING_LIBRARIES:
        logging.getLogger(library).setLevel(max(logging.ERROR, logging.getLogger().level))
        warnings.filterwarnings("ignore", module=rf"{library}(\.|$)")
    warnings.formatwarning = format_warning
