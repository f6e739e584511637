"""bench/ingest.py's pynetdicom ceiling: the bare receiver takes what storescu sends, whole, and nothing else."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pydicom
import pytest

from tests.conftest import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "bench"))
import ingest_support  # noqa: E402  (bench/ is scripts, not a package: found through the path set above)

pytestmark = pytest.mark.skipif(shutil.which("storescu") is None, reason="dcmtk's storescu is not installed")


def test_the_bare_pynetdicom_receiver_files_every_instance_it_acknowledges(tmp_path: Path) -> None:
    sent = ingest_support.write_copies(ingest_support.small_template(), 3, tmp_path / "send", "small")
    (tmp_path / "work").mkdir()
    with ingest_support.bare_pynetdicom(tmp_path / "work") as receiver:
        seconds = ingest_support.send_concurrently(receiver, [sent[:2], sent[2:]])
        assert receiver.stored() == 3
        received = {
            pydicom.dcmread(path).SOPInstanceUID: pydicom.dcmread(path).PixelData
            for path in receiver.store_dir.glob(receiver.pattern)
        }
    assert seconds > 0
    assert received == {pydicom.dcmread(path).SOPInstanceUID: pydicom.dcmread(path).PixelData for path in sent}
    # Nothing half-received is left beside the output.
    assert not any((tmp_path / "work" / "bare-out-receiving").iterdir())
