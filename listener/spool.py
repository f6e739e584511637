"""The spool: received instances and drafted SRs as files, written atomically and durably.

Layout under the spool root::

    incoming/<StudyInstanceUID>/<SOPInstanceUID>.dcm   received instances
    sr/<StudyInstanceUID>/<SOPInstanceUID>.dcm         drafted SRs

A write goes to a temporary file in the target folder, is fsynced, renamed into place and the folder
fsynced, so a crash leaves either the whole file or none of it.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import tempfile
from pathlib import Path

from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO

_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
PARTIAL_SUFFIX = ".part"
_PARTIAL_NAME = re.compile(r"^\.(\d+)\..*\.part$")


class SpoolFullError(OSError):
    """The spool's file system is below its free-space floor."""


def check_uid(value: str, what: str) -> str:
    """Return ``value`` without its padding if it is a DICOM UID, else raise ValueError naming ``what``.

    A UID is digits and dots, at most 64 characters, padded to an even length by one trailing NUL (PS3.5
    6.2, UI); a trailing space that pads an odd-length UID to an even length is taken as padding too, as
    some modalities write it. Nothing else is stripped: ``1.2.3\n``, ``1.2.3  `` or `` 1.2.3`` is refused,
    never shortened into another instance's UID.
    """
    text = str(value)
    padded = len(text) % 2 == 0 and text[-1:] in ("\x00", " ")
    uid = text[:-1] if padded or text.endswith("\x00") else text
    if len(uid) > 64 or not _UID.fullmatch(uid):
        raise ValueError(f"{what} of {len(uid)} characters is not a valid DICOM UID: {_uid_fault(uid)}")
    return uid


def _uid_fault(uid: str) -> str:
    """Why ``uid`` is no UID, without quoting it (a broken modality may put patient data there)."""
    if len(uid) > 64:
        return "longer than 64 characters"
    odd = next((char for char in uid if char not in "0123456789."), None)
    if odd is None:
        return "empty, or a dot where a number should be (components are numbers joined by single dots)"
    if odd == "\x00":
        return "it holds a NUL that is not its one trailing pad"
    if odd == " ":
        return "it holds a space that is not its one trailing pad"
    if not odd.isprintable():
        return "it holds a control character (a newline, a tab...)"
    if odd.isalpha():
        return "it holds a letter"
    return "it holds a character other than a digit or a dot (a punctuation mark or symbol)"


class Spool:
    def __init__(self, root: Path, *, min_free_bytes: int = 0) -> None:
        if min_free_bytes < 0:
            raise ValueError(f"min_free_bytes {min_free_bytes} must not be negative")
        self.root = Path(root).absolute()
        self.min_free_bytes = min_free_bytes
        for folder in ("incoming", "sr"):
            (self.root / folder).mkdir(parents=True, exist_ok=True)

    def instance_path(self, study_uid: str, sop_instance_uid: str) -> Path:
        return (
            self.root
            / "incoming"
            / check_uid(study_uid, "StudyInstanceUID")
            / (check_uid(sop_instance_uid, "SOPInstanceUID") + ".dcm")
        )

    def sr_path(self, study_uid: str, sop_instance_uid: str) -> Path:
        return (
            self.root
            / "sr"
            / check_uid(study_uid, "StudyInstanceUID")
            / (check_uid(sop_instance_uid, "SOPInstanceUID") + ".dcm")
        )

    def write_sr(self, sr: Dataset) -> Path:
        """Write an SR that predraft issued (a draft, or a radiologist's verified report) as a DICOM file, at
        :meth:`sr_path` of its study and SOP instance UIDs, atomically and durably; return its path."""
        path = self.sr_path(str(sr.StudyInstanceUID), str(sr.SOPInstanceUID))
        with DicomBytesIO() as buffer:
            sr.save_as(buffer, enforce_file_format=True)
            return self.write(path, buffer.getvalue())

    def write(self, path: Path, data: bytes) -> Path:
        """Write ``data`` to ``path`` atomically and durably; refuse when below the free-space floor."""
        self._make_durable_folder(path.parent)
        self._check_floor(path.parent, incoming_bytes=len(data))
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{os.getpid()}.", suffix=PARTIAL_SUFFIX)
        try:
            with os.fdopen(handle, "wb") as stream:
                stream.write(data)
                stream.flush()
                os.fsync(stream.fileno())
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        _fsync_path(path.parent)
        return path

    def adopt(self, source: Path, path: Path) -> Path:
        """Move the finished file ``source`` to ``path`` durably (fsync, rename, fsync the folder).

        Zero-copy when ``source`` is on the spool's file system (see :meth:`receiving_dir`); otherwise
        it is copied as :meth:`write` would. ``source`` is gone afterwards either way. Refuses below the
        free-space floor like :meth:`write`.
        """
        self._make_durable_folder(path.parent)
        self._check_floor(path.parent, incoming_bytes=0)  # the received file already takes its space
        _fsync_path(source)
        try:
            os.replace(source, path)
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
            self.write(path, source.read_bytes())
            source.unlink()
            return path
        _fsync_path(path.parent)
        return path

    def receiving_dir(self) -> Path:
        """A folder of this process on the spool's file system, for files still being received (a
        DIMSE listener points ``tempfile.tempdir`` here). A dead process's folder is removed by
        :meth:`remove_stale_partials`."""
        folder = self.root / "receiving" / str(os.getpid())
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def remove_stale_partials(self) -> int:
        """Delete temporary files left by writers that died (their pid is gone); return how many.

        A writer killed mid-write leaves ``.<pid>.<random>.part``; the finished file never appeared, so
        the sender got no success and will send again. Files of live writers are left alone.
        """
        removed = 0
        receiving = self.root / "receiving"
        for folder in receiving.iterdir() if receiving.is_dir() else ():
            if folder.name.isdigit() and not _process_alive(int(folder.name)):
                removed += sum(1 for _ in folder.iterdir())
                shutil.rmtree(folder, ignore_errors=True)
        for partial in self.root.rglob(f"*{PARTIAL_SUFFIX}"):
            match = _PARTIAL_NAME.match(partial.name)
            if match is None or _process_alive(int(match.group(1))):
                continue
            partial.unlink(missing_ok=True)
            removed += 1
        return removed

    def check_ready(self) -> int:
        """Raise unless an instance could be stored now: SpoolFullError below the free-space floor, OSError
        when the spool cannot be written (a probe file is written, fsynced and removed). Returns the free bytes."""
        self._check_floor(self.root, incoming_bytes=0)
        handle, probe = tempfile.mkstemp(dir=self.root, prefix=f".{os.getpid()}.ready.", suffix=PARTIAL_SUFFIX)
        try:
            os.write(handle, b"ready")
            os.fsync(handle)
        finally:
            os.close(handle)
            os.unlink(probe)
        return shutil.disk_usage(self.root).free

    def _check_floor(self, folder: Path, *, incoming_bytes: int) -> None:
        """Raise SpoolFullError if storing ``incoming_bytes`` more would leave less than the floor free."""
        if self.min_free_bytes and shutil.disk_usage(folder).free - incoming_bytes < self.min_free_bytes:
            raise SpoolFullError(f"spool {self.root} is below its free-space floor of {self.min_free_bytes} bytes")

    def _make_durable_folder(self, folder: Path) -> None:
        """Create ``folder`` (inside the spool) if needed, and fsync each parent that gained an entry."""
        if folder.is_dir():
            return
        self._make_durable_folder(folder.parent)
        folder.mkdir(exist_ok=True)
        _fsync_path(folder.parent)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _fsync_path(path: Path) -> None:
    """fsync a file or a folder (for a folder: the entries it holds)."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
