"""The spool: received instances and drafted SRs as files, written atomically and durably.

Layout under the spool root::

    incoming/<StudyInstanceUID>/<SOPInstanceUID>.dcm   received instances
    sr/<StudyInstanceUID>/<SOPInstanceUID>.dcm         drafted SRs

A write goes to a temporary file in the target folder, is fsynced, renamed into place and the folder
fsynced, so a crash leaves either the whole file or none of it.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path

_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")


class SpoolFullError(OSError):
    """The spool's file system is below its free-space floor."""


def check_uid(value: str, what: str) -> str:
    """Return ``value`` if it is a DICOM UID (digits and dots, at most 64 characters), else raise."""
    value = str(value).strip().rstrip("\x00")
    if len(value) > 64 or not _UID.match(value):
        raise ValueError(f"{what} {value[:80]!r} is not a valid DICOM UID")
    return value


class Spool:
    def __init__(self, root: Path, *, min_free_bytes: int = 0) -> None:
        if min_free_bytes < 0:
            raise ValueError(f"min_free_bytes {min_free_bytes} must not be negative")
        self.root = Path(root).absolute()
        self.min_free_bytes = min_free_bytes
        for folder in ("incoming", "sr"):
            (self.root / folder).mkdir(parents=True, exist_ok=True)

    def instance_path(self, study_uid: str, sop_instance_uid: str) -> Path:
        return self.root / "incoming" / check_uid(study_uid, "StudyInstanceUID") / (
            check_uid(sop_instance_uid, "SOPInstanceUID") + ".dcm")

    def sr_path(self, study_uid: str, sop_instance_uid: str) -> Path:
        return self.root / "sr" / check_uid(study_uid, "StudyInstanceUID") / (
            check_uid(sop_instance_uid, "SOPInstanceUID") + ".dcm")

    def write(self, path: Path, data: bytes) -> Path:
        """Write ``data`` to ``path`` atomically and durably; refuse when below the free-space floor."""
        self._make_durable_folder(path.parent)
        if self.min_free_bytes and shutil.disk_usage(path.parent).free - len(data) < self.min_free_bytes:
            raise SpoolFullError(f"spool {self.root} is below its free-space floor of {self.min_free_bytes} bytes")
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=".", suffix=".part")
        try:
            with os.fdopen(handle, "wb") as stream:
                stream.write(data)
                stream.flush()
                os.fsync(stream.fileno())
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        _fsync_directory(path.parent)
        return path

    def _make_durable_folder(self, folder: Path) -> None:
        """Create ``folder`` (inside the spool) if needed, and fsync each parent that gained an entry."""
        if folder.is_dir():
            return
        self._make_durable_folder(folder.parent)
        folder.mkdir(exist_ok=True)
        _fsync_directory(folder.parent)


def _fsync_directory(folder: Path) -> None:
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
