"""Shared test helpers: paths to the real DICOM fixtures and free ports; under CI, no test skips silently."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from predraft.core.settings import Settings

REPO_ROOT = Path(__file__).resolve().parents[1]
REAL_DATA = REPO_ROOT.parent / "shared" / "data" / "real"
FRACATLAS = REPO_ROOT.parent / "shared" / "data" / "fracatlas" / "images"
CR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.1"
#: The skips CI accepts: a test for the hardware the CI machine does not have. Every other skip (a tool, a
#: service or ../shared/data missing) fails under CI, where scripts/test.sh has installed all of them.
SKIPS_ALLOWED_IN_CI = ("needs a CUDA device",)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Under CI (the ``CI`` environment variable set, as .ci/run does), a skip is a failure, with its reason."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]  (pluggy's hookwrapper result)
    if not os.environ.get("CI") or not report.skipped or hasattr(report, "wasxfail"):
        return
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    if not any(allowed in reason for allowed in SKIPS_ALLOWED_IN_CI):
        report.outcome = "failed"
        report.longrepr = f"skipped under CI, where nothing may be missing: {reason}"


def real_file(name: str) -> Path:
    """A file of ../shared/data/real, or skip the test when the folder is absent."""
    path = REAL_DATA / name
    if not path.is_file():
        pytest.skip(f"real DICOM fixture {path} is absent (../shared/data/real is not checked out)")
    return path


def fracatlas_file(name: str) -> Path:
    """An image of ../shared/data/fracatlas, or skip the test when the folder is absent."""
    path = FRACATLAS / name
    if not path.is_file():
        pytest.skip(f"FracAtlas image {path} is absent (../shared/data/fracatlas is not checked out)")
    return path


def jpeg_as_cr(jpeg: Path, target: Path, **tags: str) -> Path:
    """A CR instance holding ``jpeg``'s grey levels, 8-bit MONOCHROME2, as a digitiser would send it."""
    return jpeg_as_dicom(jpeg, target, CR_IMAGE_STORAGE, **tags)


def jpeg_as_dicom(jpeg: Path, target: Path, sop_class: str, *, frames: int | None = None, **tags: str) -> Path:
    """An instance of ``sop_class`` holding ``jpeg``'s grey levels, 8-bit MONOCHROME2; with ``frames``, that many
    copies of the picture as the frames of a multi-frame image (NumberOfFrames set)."""
    pixels = np.asarray(Image.open(jpeg).convert("L"))
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(target), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality, ds.PatientID, ds.PatientName, ds.AccessionNumber = "CR", "GATE1", "Test^Gate", "ACC-GATE"
    ds.StudyDate, ds.PatientBirthDate = "20260101", "19600101"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = pixels.tobytes() * (frames or 1)
    if frames is not None:
        ds.NumberOfFrames = frames
    for keyword, value in tags.items():
        setattr(ds, keyword, value)
    ds.save_as(target, enforce_file_format=True)
    return target


def poll(condition: Callable[[], bool], seconds: float, *, interval: float = 0.02) -> bool:
    """True as soon as ``condition()`` holds, False when it still does not after ``seconds``. Tests wait on an
    outcome this way (``assert poll(...), reason``) instead of sleeping for a guessed time and then asserting."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return condition()


def wait_until(condition: Callable[[], bool], *, timeout: float, what: str) -> None:
    """:func:`poll` for ``condition``; fail, naming ``what``, when it does not hold after ``timeout`` seconds."""
    if not poll(condition, timeout):
        raise AssertionError(f"{what}: not after {timeout} s")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def embedded_broker(path: Path) -> str:
    """The URL of a kombu SQLAlchemy (SQLite) broker at ``path``, its tables created as a worker's first
    connection creates them (the admin commands refuse a broker file that does not exist)."""
    from kombu import Connection

    url = f"sqla+sqlite:///{path}"
    with Connection(url) as connection:
        queue = connection.SimpleQueue("prepare")
        queue.qsize()
        queue.close()
    return url


POSTGRES_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


@contextmanager
def fresh_postgres_database(prefix: str = "predraft_test") -> Iterator[str]:
    """A fresh PostgreSQL database migrated to head (its SQLAlchemy URL), dropped when the block ends."""
    import psycopg

    from predraft.core import db

    admin_url = os.environ.get("PREDRAFT_TEST_POSTGRES", POSTGRES_ADMIN_URL)
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    try:
        admin = psycopg.connect(admin_url, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        pytest.fail(f"PostgreSQL at {admin_url} is not reachable (scripts/test.sh starts it): {exc}")
    admin.execute(f'CREATE DATABASE "{name}"')
    url = admin_url.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1) + f"/{name}"
    try:
        db.upgrade(url)
        yield url
    finally:
        db.get_engine(url).dispose()
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh, migrated PostgreSQL database (SQLAlchemy URL), dropped afterwards."""
    with fresh_postgres_database() as url:
        yield url


@contextmanager
def running_listener(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **overrides: object) -> Iterator[Settings]:
    """A DIMSE listener (no workers) in this process, on a free port, with its own spool and migrated SQLite
    database; PREDRAFT_* variables of the environment are ignored. ``overrides`` are settings."""
    from predraft.core import db
    from predraft.core.settings import get_settings
    from predraft.listener.dimse import start_dimse_server

    for key in list(os.environ):
        if key.startswith("PREDRAFT_"):
            monkeypatch.delenv(key)
    overrides = {"var_dir": tmp_path / "var", "dimse_port": free_port(), "spool_min_free_bytes": 0, **overrides}
    settings = get_settings(**overrides)
    db.upgrade(settings.database_url)
    server = start_dimse_server(settings)
    try:
        yield settings
    finally:
        server.shutdown()
        db.get_engine(settings.database_url).dispose()


def sr_text(ds: object) -> str:
    """Every TEXT content item of a structured report, depth first, one per line."""
    texts: list[str] = []

    def walk(items: object) -> None:
        for item in items:  # type: ignore[attr-defined]
            if item.ValueType == "TEXT":
                texts.append(item.TextValue)
            walk(item.get("ContentSequence", []))

    walk(ds.ContentSequence)  # type: ignore[attr-defined]
    return "\n".join(texts)


def _wait_for_port(port: int, process: subprocess.Popen, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, f"storescp exited with {process.returncode}"
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"storescp not listening on {port} after {timeout} s")


@pytest.fixture
def storescp(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """dcmtk's storescp (AE STORESCP) on a free port, writing each received instance to its own file: the PACS
    that predraft exports to."""
    if shutil.which("storescp") is None:
        pytest.skip("dcmtk's storescp is not installed (apt-get install dcmtk)")
    port, folder = free_port(), tmp_path / "storescp"
    folder.mkdir()
    process = subprocess.Popen(
        ["storescp", "-aet", "STORESCP", "-od", str(folder), "+uf", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_for_port(port, process)
        yield port, folder
    finally:
        process.terminate()
        process.wait(timeout=10)


def record_file(database_url: str, path: Path) -> int:
    """Record the DICOM file at ``path`` as a received instance (spooled where it lies); its instance id."""
    import pydicom

    from predraft.core.db import session_scope
    from predraft.listener.ingest import InstanceHeader, record_instance

    ds = pydicom.dcmread(path, stop_before_pixels=True)
    header = InstanceHeader.from_dataset(ds, ds.file_meta.TransferSyntaxUID)
    with session_scope(database_url) as session:
        return record_instance(
            session, header=header, spool_path=str(path), size_bytes=1, calling_ae="PACS"
        ).instance_id
