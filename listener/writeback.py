"""Start writing a C-STORE's file to disk while it is still arriving, so the fsync before the answer is short.

pynetdicom receives a data set into a temporary file (``_config.STORE_RECV_CHUNKED_DATASET``), fragment by
fragment. predraft answers only once the file is fsynced, and an fsync of a 7.5 MB radiograph written all at
once waits for the whole file to reach the disk, while the sender waits for its answer. Here the file that
pynetdicom writes asks the kernel (Linux ``sync_file_range(SYNC_FILE_RANGE_WRITE)``, which returns at once) to
start writing each further :data:`WRITEBACK_STEP_BYTES` as they arrive, so that most of the file is already on
its way to the disk when the fsync comes. This changes when the writes start, not what is durable: the fsync
in :meth:`predraft.listener.spool.Spool.adopt` still comes before any answer. Where the call is missing (not
Linux) files are written as before.

:func:`install` hands pynetdicom this file type in place of ``tempfile.NamedTemporaryFile``; the name is
looked up in ``pynetdicom.dimse_messages`` (pynetdicom 3.0, pinned in constraints.txt), which has no hook of
its own for it. ``tests/unit/test_writeback.py`` fails if that name moves.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import tempfile
from functools import lru_cache
from typing import IO, Any

#: Bytes written between two requests to start writeback (below this, the fsync handles the whole file).
WRITEBACK_STEP_BYTES = 1 << 20
#: sync_file_range(2)'s flag: initiate write-out of dirty pages in the range not already under write-out.
SYNC_FILE_RANGE_WRITE = 2


@lru_cache(maxsize=1)
def _sync_file_range() -> Any:
    """libc's sync_file_range, or None where there is none (not Linux, or a libc without it)."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        function = ctypes.CDLL(name, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    function.restype = ctypes.c_int
    return function


def start_writeback(descriptor: int, offset: int, length: int) -> bool:
    """Ask the kernel to start writing ``length`` bytes of the open file ``descriptor`` from ``offset`` to disk,
    without waiting. True when asked; False where the call is missing or refused (nothing else happens)."""
    function = _sync_file_range()
    return function is not None and function(descriptor, offset, length, SYNC_FILE_RANGE_WRITE) == 0


class EarlyWritebackFile:
    """A named temporary file (kept when closed, as with ``delete=False``) that starts writeback of every
    :data:`WRITEBACK_STEP_BYTES` written once they are flushed. It offers what pynetdicom uses of a
    ``NamedTemporaryFile``: ``name``, ``write``, ``file.flush()`` and ``close``."""

    def __init__(self, *, mode: str = "w+b", suffix: str | None = None, delete: bool = True) -> None:
        """Raises ValueError for a text mode or for ``delete=True`` (pynetdicom passes ``delete=False``: the file
        outlives the handle, and the listener moves it into the spool)."""
        if "b" not in mode:
            raise ValueError(f"mode {mode!r} is not binary")
        if delete:
            raise ValueError("an EarlyWritebackFile is kept when closed: pass delete=False")
        self._file: IO[bytes] = tempfile.NamedTemporaryFile(mode=mode, suffix=suffix, delete=False)  # noqa: SIM115
        self.name: str = self._file.name
        self.file = self  # pynetdicom flushes ``.file`` after each fragment
        self._written = 0  # bytes written so far
        self._started = 0  # bytes whose writeback was asked for

    def write(self, data: bytes) -> int:
        written = self._file.write(data)
        self._written += written
        return written

    def flush(self) -> None:
        """Flush Python's buffer, then start writeback when a further step's worth has been written."""
        self._file.flush()
        if self._written - self._started >= WRITEBACK_STEP_BYTES:
            start_writeback(self._file.fileno(), self._started, self._written - self._started)
            self._started = self._written

    def fileno(self) -> int:
        return self._file.fileno()

    def tell(self) -> int:
        return self._file.tell()

    def close(self) -> None:
        self._file.close()

    @property
    def closed(self) -> bool:
        return self._file.closed


def install() -> None:
    """Make pynetdicom receive C-STOREs into :class:`EarlyWritebackFile` files. Raises RuntimeError when the
    pynetdicom in use no longer makes them through ``pynetdicom.dimse_messages.NamedTemporaryFile``."""
    from pynetdicom import dimse_messages

    current = getattr(dimse_messages, "NamedTemporaryFile", None)
    if current is not EarlyWritebackFile and current is not tempfile.NamedTemporaryFile:
        raise RuntimeError("pynetdicom.dimse_messages no longer makes its files with tempfile.NamedTemporaryFile")
    dimse_messages.NamedTemporaryFile = EarlyWritebackFile  # type: ignore[assignment]
