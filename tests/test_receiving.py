"""Receiving: files adopted into the spool, duplicates kept as first held, no patient data in DB errors."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest

from predraft.core import db
from predraft.listener import spool as spool_module
from predraft.listener.receive import Receiver, ReceiveStatus
from predraft.listener.spool import Spool, SpoolFullError
from predraft.models.phantoms import write_demo_study

STUDY, SOP = "1.2.3", "1.2.3.4"


def test_adopt_moves_the_file_into_place(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    received = spool.receiving_dir() / "incoming.dcm"
    received.write_bytes(b"payload")
    target = spool.adopt(received, spool.instance_path(STUDY, SOP))
    assert target.read_bytes() == b"payload"
    assert not received.exists()


def test_adopt_copies_across_file_systems(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spool = Spool(tmp_path / "spool")
    received = tmp_path / "elsewhere.dcm"
    received.write_bytes(b"payload")
    real_replace = os.replace

    def replace_across_devices(source, target):  # type: ignore[no-untyped-def]
        if Path(source) == received:
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        return real_replace(source, target)

    monkeypatch.setattr(spool_module.os, "replace", replace_across_devices)
    target = spool.adopt(received, spool.instance_path(STUDY, SOP))
    assert target.read_bytes() == b"payload"
    assert not received.exists()
    assert [p.name for p in target.parent.iterdir()] == [target.name]  # no partial file left


def test_adopt_refuses_below_the_floor(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", min_free_bytes=2**62)
    received = tmp_path / "incoming.dcm"
    received.write_bytes(b"payload")
    with pytest.raises(SpoolFullError, match="free-space floor"):
        spool.adopt(received, spool.instance_path(STUDY, SOP))


def test_receive_file_consumes_the_received_file_whatever_the_outcome(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    db.upgrade(url)
    spool = Spool(tmp_path / "spool")
    receiver = Receiver(spool, url)
    image = write_demo_study(tmp_path / "demo")[0]
    stored = spool.receiving_dir() / "a.dcm"
    stored.write_bytes(image.path.read_bytes())
    refused = spool.receiving_dir() / "b.dcm"
    refused.write_bytes(b"not dicom")

    assert receiver.receive_file(stored, source="PACS").status is ReceiveStatus.STORED
    assert receiver.receive_file(refused, source="PACS").status is ReceiveStatus.CANNOT_UNDERSTAND
    assert not stored.exists() and not refused.exists()
    study_uid = str(pydicom.dcmread(image.path, stop_before_pixels=True).StudyInstanceUID)
    assert spool.instance_path(study_uid, image.sop_instance_uid).read_bytes() == image.path.read_bytes()


def test_receiving_folders_of_dead_processes_are_removed(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True
    ).stdout.strip()
    (spool.root / "receiving" / dead).mkdir(parents=True)
    (spool.root / "receiving" / dead / "half.dcm").write_bytes(b"half")
    mine = spool.receiving_dir()
    (mine / "live.dcm").write_bytes(b"still arriving")
    assert spool.remove_stale_partials() == 1
    assert not (spool.root / "receiving" / dead).exists()
    assert (mine / "live.dcm").exists()


def test_a_duplicate_leaves_the_held_copy_untouched(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    db.upgrade(url)
    spool = Spool(tmp_path / "spool")
    receiver = Receiver(spool, url)
    image = write_demo_study(tmp_path / "demo")[0]
    first = image.path.read_bytes()
    assert receiver.receive(first, source="PACS").status is ReceiveStatus.STORED
    changed = pydicom.dcmread(image.path)
    changed.StudyDescription = "RESENT WITH ANOTHER DESCRIPTION"
    changed.save_as(tmp_path / "resent.dcm")
    outcome = receiver.receive((tmp_path / "resent.dcm").read_bytes(), source="PACS")
    assert outcome.status is ReceiveStatus.DUPLICATE
    held = spool.instance_path(str(changed.StudyInstanceUID), image.sop_instance_uid)
    assert held.read_bytes() == first


def test_database_errors_carry_no_parameter_values(tmp_path: Path) -> None:
    from sqlalchemy import insert
    from sqlalchemy.exc import IntegrityError

    from predraft.core.schema import Study

    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    db.upgrade(url)
    row = {"study_uid": "1.2.3", "patient_name": "DOE^JANE", "state": "receiving"}
    with db.session_scope(url) as session:
        session.execute(insert(Study).values(**row))
    with pytest.raises(IntegrityError) as caught, db.session_scope(url) as session:
        session.execute(insert(Study).values(**row))
    assert "DOE^JANE" not in str(caught.value)
    assert "hidden" in str(caught.value)
