"""predraft.listener.spool: UID checks, layout, atomic writes and the free-space floor."""

from __future__ import annotations

import os

import pytest

import predraft.listener.spool as spool_module
from predraft.listener.spool import Spool, SpoolFullError, check_uid

STUDY = "1.2.826.0.1.3680043.8.498.1"
SOP = "1.2.826.0.1.3680043.8.498.1.1.1"


def _leftovers(folder):
    return sorted(name for name in os.listdir(folder) if name.endswith(".part") or name.startswith("."))


def test_layout_of_instances_and_srs(tmp_path):
    spool = Spool(tmp_path / "spool")
    assert (tmp_path / "spool" / "incoming").is_dir() and (tmp_path / "spool" / "sr").is_dir()
    assert spool.instance_path(STUDY, SOP) == tmp_path / "spool" / "incoming" / STUDY / f"{SOP}.dcm"
    assert spool.sr_path(STUDY, SOP) == tmp_path / "spool" / "sr" / STUDY / f"{SOP}.dcm"


def test_atomic_write_gives_the_exact_bytes_and_no_temporary_file(tmp_path):
    spool = Spool(tmp_path)
    data = bytes(range(256)) * 513 + b"\x00end"
    path = spool.write(spool.instance_path(STUDY, SOP), data)

    assert path == spool.instance_path(STUDY, SOP)
    assert path.read_bytes() == data
    assert os.listdir(path.parent) == [path.name]
    assert _leftovers(path.parent) == []


def test_write_replaces_an_existing_file_whole(tmp_path):
    spool = Spool(tmp_path)
    path = spool.instance_path(STUDY, SOP)
    spool.write(path, b"first version, longer than the second")
    spool.write(path, b"second")
    assert path.read_bytes() == b"second"
    assert os.listdir(path.parent) == [path.name]


def test_failed_write_leaves_neither_target_nor_temporary_file(tmp_path, monkeypatch):
    spool = Spool(tmp_path)
    path = spool.instance_path(STUDY, SOP)

    def broken_fsync(fd):
        raise OSError(5, "simulated I/O error")

    monkeypatch.setattr(spool_module.os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="simulated I/O error"):
        spool.write(path, b"data")
    assert not path.exists()
    assert os.listdir(path.parent) == []


@pytest.mark.parametrize(
    "value",
    [
        "../../etc",
        "..",
        "1.2.3/../../../etc/passwd",
        "1.2.3\\..\\x",
        "/etc/passwd",
        "",
        "1.2.a",
        "1..2",
        ".1.2",
        "1.2.",
        "1.2 3",
        "1" * 65,
        "1." * 32 + "12",  # 66 characters
    ],
)
def test_check_uid_rejects_what_is_not_a_uid(value):
    with pytest.raises(ValueError, match="StudyInstanceUID .* is not a valid DICOM UID"):
        check_uid(value, "StudyInstanceUID")


def test_check_uid_accepts_64_characters_and_strips_padding():
    uid64 = "1.2." + "3" * 60
    assert len(uid64) == 64
    assert check_uid(uid64, "SOPInstanceUID") == uid64
    assert check_uid("1.2.840.10008.1.2.1\x00", "TransferSyntaxUID") == "1.2.840.10008.1.2.1"
    assert check_uid("1.2.3 ", "SOPInstanceUID") == "1.2.3"  # a space padding an odd-length UID
    for unpadded in (" 1.2.3 ", "1.2.3\n", "1.2.34 ", "1.2.3  "):  # never shortened into another UID
        with pytest.raises(ValueError, match="not a valid DICOM UID"):
            check_uid(unpadded, "SOPInstanceUID")
    with pytest.raises(ValueError, match="SOPInstanceUID"):
        check_uid(uid64 + "4", "SOPInstanceUID")


def test_paths_refuse_traversal_in_either_uid(tmp_path):
    spool = Spool(tmp_path)
    with pytest.raises(ValueError, match="StudyInstanceUID"):
        spool.instance_path("../../etc", SOP)
    with pytest.raises(ValueError, match="SOPInstanceUID"):
        spool.sr_path(STUDY, "../../../passwd")


def test_spool_full_when_floor_exceeds_free_space(tmp_path):
    spool = Spool(tmp_path, min_free_bytes=2**62)  # more than any disk here has free
    path = spool.instance_path(STUDY, SOP)
    with pytest.raises(SpoolFullError, match="free-space floor"):
        spool.write(path, b"data")
    assert isinstance(SpoolFullError("x"), OSError)
    assert not path.exists()
    assert _leftovers(path.parent) == []


def test_small_floor_still_allows_writes(tmp_path):
    spool = Spool(tmp_path, min_free_bytes=1)
    path = spool.write(spool.sr_path(STUDY, SOP), b"sr")
    assert path.read_bytes() == b"sr"


def test_negative_floor_is_refused(tmp_path):
    with pytest.raises(ValueError, match="must not be negative"):
        Spool(tmp_path, min_free_bytes=-1)


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc/self/fd to name fsynced descriptors")
def test_first_write_of_a_study_makes_its_new_folder_durable(tmp_path, monkeypatch):
    spool = Spool(tmp_path)
    synced: list[str] = []
    real_fsync = os.fsync

    def recording_fsync(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        return real_fsync(fd)

    monkeypatch.setattr(spool_module.os, "fsync", recording_fsync)
    path = spool.write(spool.instance_path(STUDY, SOP), b"data")

    assert str(path.parent) in synced  # the file's entry in the study folder
    assert str(spool.root / "incoming") in synced  # the new study folder's entry in incoming/
