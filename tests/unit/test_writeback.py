"""predraft.listener.writeback: the file pynetdicom receives a C-STORE into starts its writeback as it grows,
holds exactly what was written, and is what pynetdicom makes once installed."""

from __future__ import annotations

import os
import tempfile

import pytest
from pynetdicom import dimse_messages

from predraft.listener import writeback
from predraft.listener.writeback import WRITEBACK_STEP_BYTES, EarlyWritebackFile


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    return tmp_path


def test_written_fragments_are_kept_whole_and_writeback_starts_each_step(in_tmp, monkeypatch):
    asked: list[tuple[int, int]] = []
    monkeypatch.setattr(writeback, "start_writeback", lambda fd, offset, length: asked.append((offset, length)))
    fragment = os.urandom(16_384)
    fragments = (3 * WRITEBACK_STEP_BYTES) // len(fragment) + 5

    handle = EarlyWritebackFile(mode="wb", suffix=".dcm", delete=False)
    for _ in range(fragments):
        handle.write(fragment)
        handle.file.flush()  # as pynetdicom does after each fragment
    handle.close()

    with open(handle.name, "rb") as stream:
        assert stream.read() == fragment * fragments
    assert handle.name.startswith(str(in_tmp)) and handle.name.endswith(".dcm")
    assert len(asked) == 3
    assert [offset for offset, _ in asked] == [0, asked[0][1], asked[0][1] + asked[1][1]]
    assert all(length >= WRITEBACK_STEP_BYTES for _, length in asked)


def test_start_writeback_asks_the_kernel_on_linux(in_tmp):
    path = in_tmp / "file"
    with open(path, "wb") as stream:
        stream.write(b"x" * 8192)
        stream.flush()
        assert writeback.start_writeback(stream.fileno(), 0, 8192) is (os.uname().sysname == "Linux")
        assert writeback.start_writeback(-1, 0, 8192) is False  # a bad descriptor is refused, never raised


@pytest.mark.parametrize(("kwargs", "message"), [({"mode": "w", "delete": False}, "binary"), ({}, "delete=False")])
def test_the_file_refuses_what_pynetdicom_would_not_get_back(in_tmp, kwargs, message):
    with pytest.raises(ValueError, match=message):
        EarlyWritebackFile(**kwargs)


def test_install_makes_pynetdicom_receive_into_early_writeback_files(monkeypatch):
    monkeypatch.setattr(dimse_messages, "NamedTemporaryFile", tempfile.NamedTemporaryFile)
    writeback.install()
    assert dimse_messages.NamedTemporaryFile is EarlyWritebackFile
    writeback.install()  # twice is harmless
    assert dimse_messages.NamedTemporaryFile is EarlyWritebackFile


def test_install_refuses_a_pynetdicom_that_makes_its_files_otherwise(monkeypatch):
    monkeypatch.setattr(dimse_messages, "NamedTemporaryFile", object())
    with pytest.raises(RuntimeError, match="no longer makes"):
        writeback.install()
