"""Ingest under faults: a listener killed mid-association, and a spool that reaches its free-space floor."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pydicom
import pytest
from prometheus_client import REGISTRY
from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import ComputedRadiographyImageStorage
from sqlalchemy import select

from predraft.core.db import session_scope
from predraft.core.schema import Instance
from predraft.listener import status
from predraft.listener.spool import PARTIAL_SUFFIX
from tests.conftest import free_port, real_file, running_listener, wait_until

pytestmark = pytest.mark.slow
PREDRAFT = str(Path(sys.executable).parent / "predraft")
INSTANCES = 60


def _copies(source: Path, folder: Path, count: int) -> dict[str, Path]:
    """``count`` copies of ``source`` with fresh SOP Instance UIDs (one study), by SOP Instance UID."""
    folder.mkdir()
    ds = pydicom.dcmread(source)
    copies = {}
    for index in range(count):
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        path = folder / f"{index:03d}.dcm"
        ds.save_as(path)
        copies[str(ds.SOPInstanceUID)] = path
    return copies


@contextmanager
def _listener(env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as stream:
        # A session of its own, so that a test can kill the supervisor and its listener processes together.
        process = subprocess.Popen(
            [PREDRAFT, "listen"], env=env, stdout=stream, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        deadline = time.monotonic() + 60
        while "listening as" not in log.read_text():
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()[-2000:]
            time.sleep(0.1)
        yield process
    finally:
        if process.poll() is None:
            process.terminate()
            process.wait(30)


def test_sigkill_mid_association_keeps_every_acknowledged_instance_intact(tmp_path: Path) -> None:
    if shutil.which("storescu") is None:
        pytest.skip("dcmtk's storescu is not installed")
    sent = _copies(real_file("RG2_UNC.dcm"), tmp_path / "send", INSTANCES)
    var = tmp_path / "var"
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("PREDRAFT_")},
        "PREDRAFT_VAR_DIR": str(var),
        "PREDRAFT_DIMSE_PORT": str(port),
        "PREDRAFT_SPOOL_MIN_FREE_BYTES": "0",
        "PREDRAFT_QUIET_SECONDS": "3600",
        "PREDRAFT_LOG_LEVEL": "WARNING",
    }
    subprocess.run([PREDRAFT, "db", "upgrade"], env=env, check=True, capture_output=True)
    spool = var / "spool" / "incoming"
    with _listener(env, tmp_path / "listener.log") as listener:
        sender = subprocess.Popen(
            ["storescu", "-v", "-aec", "PREDRAFT", "127.0.0.1", str(port), *map(str, sent.values())],
            env={**os.environ, "TCP_NODELAY": "1"},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        deadline = time.monotonic() + 60
        while len(list(spool.rglob("*.dcm"))) < INSTANCES // 4:  # a quarter in: kill it mid-association
            assert time.monotonic() < deadline and sender.poll() is None, "storescu finished before the kill"
            time.sleep(0.01)
        # Every process of the listener killed outright (the supervisor and its listener processes), as the
        # kernel's OOM killer or systemd's final SIGKILL of the unit would.
        os.killpg(listener.pid, signal.SIGKILL)
        listener.wait(10)
        output = sender.communicate(timeout=60)[0]
    acknowledged = _acknowledged(output, sent)
    assert 0 < len(acknowledged) < INSTANCES

    with _listener(env, tmp_path / "restarted.log"):  # the restart cleans partials left by the killed process
        for uid in acknowledged:
            stored = spool / str(pydicom.dcmread(sent[uid], stop_before_pixels=True).StudyInstanceUID) / f"{uid}.dcm"
            assert stored.is_file(), f"acknowledged instance {uid} is missing after the crash"
            assert pydicom.dcmread(stored).PixelData == pydicom.dcmread(sent[uid]).PixelData
        with session_scope(env_database_url(var)) as session:
            recorded = set(session.scalars(select(Instance.sop_instance_uid)))
        assert set(acknowledged) <= recorded
        assert list(spool.rglob(f"*{PARTIAL_SUFFIX}")) == []
        for path in spool.rglob("*.dcm"):  # nothing half-written: every file is a whole instance
            ds = pydicom.dcmread(path)
            assert len(ds.PixelData) == ds.Rows * ds.Columns * 2
        # The sender retries what was not acknowledged; everything ends stored exactly once.
        retry = subprocess.run(
            ["storescu", "-aec", "PREDRAFT", "127.0.0.1", str(port), *map(str, sent.values())],
            env={**os.environ, "TCP_NODELAY": "1"},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert retry.returncode == 0, retry.stderr
        with session_scope(env_database_url(var)) as session:
            assert sorted(session.scalars(select(Instance.sop_instance_uid))) == sorted(sent)


def env_database_url(var: Path) -> str:
    return f"sqlite:///{var / 'predraft.sqlite'}"


def _acknowledged(storescu_output: str, sent: dict[str, Path]) -> list[str]:
    """SOP Instance UIDs whose C-STORE got a Success response, from ``storescu -v`` output."""
    by_path = {str(path): uid for uid, path in sent.items()}
    acknowledged, current = [], None
    for line in storescu_output.splitlines():
        if match := re.search(r"Sending file: (\S+)", line):
            current = by_path.get(match.group(1))
        elif "Received Store Response (Success)" in line and current is not None:
            acknowledged.append(current)
            current = None
    return acknowledged


def test_spool_floor_refuses_with_out_of_resources_then_ingest_resumes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = real_file("RG2_UNC.dcm")
    instance_bytes = source.stat().st_size
    filler = tmp_path / "filler.bin"
    with filler.open("wb") as stream:  # space that "freeing the disk" will give back
        stream.truncate(0)
        stream.write(b"\0" * (40 * instance_bytes))
        stream.flush()
        os.fsync(stream.fileno())
    copies = _copies(source, tmp_path / "send", 12)
    floor = shutil.disk_usage(tmp_path).free - 3 * instance_bytes  # room for about three instances
    with running_listener(tmp_path, monkeypatch, spool_min_free_bytes=floor) as settings:
        statuses = _send_all(settings.listener.port, list(copies.values()))
        assert status.SUCCESS in statuses
        assert status.OUT_OF_RESOURCES in statuses
        refused = [
            path for path, code in zip(copies.values(), statuses, strict=True) if code == status.OUT_OF_RESOURCES
        ]
        filler.unlink()  # free the disk
        assert set(_send_all(settings.listener.port, refused)) == {status.SUCCESS}
        with session_scope(settings.database_url) as session:
            assert sorted(session.scalars(select(Instance.sop_instance_uid))) == sorted(copies)


def _send_all(port: int, paths: list[Path]) -> list[int]:
    ae = AE(ae_title="STORESCU")
    ae.add_requested_context(ComputedRadiographyImageStorage)
    assoc = ae.associate("127.0.0.1", port, ae_title="PREDRAFT")
    assert assoc.is_established
    try:
        return [int(assoc.send_c_store(pydicom.dcmread(path)).Status) for path in paths]
    finally:
        assoc.release()


def test_a_sender_killed_mid_association_leaves_whole_instances_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if shutil.which("storescu") is None:
        pytest.skip("dcmtk's storescu is not installed")
    sent = _copies(real_file("RG2_UNC.dcm"), tmp_path / "send", 30)
    with running_listener(tmp_path, monkeypatch) as settings:
        spool = settings.spool_dir / "incoming"
        open_before = REGISTRY.get_sample_value("predraft_dimse_associations_open")  # other tests' in this process
        sender = subprocess.Popen(
            ["storescu", "-aec", "PREDRAFT", "127.0.0.1", str(settings.listener.port), *map(str, sent.values())],
            env={**os.environ, "TCP_NODELAY": "1"},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 60
        while len(list(spool.rglob("*.dcm"))) < 5:
            assert time.monotonic() < deadline and sender.poll() is None
            time.sleep(0.01)
        sender.send_signal(signal.SIGKILL)  # the association drops without release or abort
        sender.wait(10)
        # The killed sender's association has ended once the listener counts no association open: its last
        # C-STORE handler has returned, so a data set that was all in has been renamed into place and recorded
        # (whole), and one that was not has left nothing in the spool.
        wait_until(
            lambda: REGISTRY.get_sample_value("predraft_dimse_associations_open") == open_before,
            timeout=30,
            what="the killed sender's association still open",
        )
        with session_scope(settings.database_url) as session:
            recorded = set(session.scalars(select(Instance.sop_instance_uid)))
        files = list(spool.rglob("*.dcm"))
        assert recorded == {path.stem for path in files}
        assert not list(spool.rglob(f"*{PARTIAL_SUFFIX}"))
        assert 5 <= len(files) < len(sent)
        for path in files:
            assert pydicom.dcmread(path).PixelData == pydicom.dcmread(sent[path.stem]).PixelData
        # The listener goes on serving.
        assert _send_all(settings.listener.port, [next(iter(sent.values()))]) == [status.SUCCESS]
