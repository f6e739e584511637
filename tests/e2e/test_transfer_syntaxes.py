"""Every real radiograph over C-STORE in its own transfer syntax, as dcmtk's storescu sends it.

A DIMSE listener (no workers) runs in-process per test, on a free port with its own spool and SQLite
database: the RG1/RG2/RG3 files share their Study and SOP Instance UIDs across transfer syntaxes, so a
shared listener would file the second one as a duplicate. storescu proposes the file's own transfer
syntax, so the instance travels as it is: the spooled file must carry the same transfer syntax and
byte-identical PixelData. Two files hold an odd-length value, which DICOM does not allow (PS3.5 7.1.1):
``dx_image.dcm`` (native PixelData of 169 x 211 bytes) and ``NM_Kakadu44_SOTmarkerincons.dcm`` (an
odd-length JPEG 2000 fragment). storescu pads such a value with one NUL byte as it sends (dcmtk's own
storescp receives the same padded bytes), so for those the spooled PixelData is the sent one, padded.

Then the ways a send goes wrong, with the behaviour observed from dcmtk 3.6.7's storescu:

* a JPEG 2000 file offered only uncompressed syntaxes (``storescu -R`` with no ``-x`` option):
  storescu cannot decompress JPEG 2000, fails the store before sending any data and aborts;
* a truncated copy of a DICOM file: storescu cannot read it. With ``-R`` it stops while checking its
  input files, before it associates ("missing SOP class (or instance)"); with its default proposals it
  associates, fails reading the file ("premature end of stream") and aborts the association before any
  C-STORE request. Either way it exits 1.

In both cases nothing is spooled and the listener keeps serving (a C-ECHO afterwards succeeds).
"""

from __future__ import annotations

import os
import re
import shutil
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import (
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGExtended12Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)
from sqlalchemy import select

from predraft.core import db
from predraft.core.schema import Instance
from predraft.core.settings import Settings
from tests.conftest import REAL_DATA, real_file, running_listener

pytestmark = pytest.mark.slow

MANIFEST = REAL_DATA / "MANIFEST.md"
#: A row of the MANIFEST's table: ``| <file>.dcm | ...``.
_MANIFEST_ROW = re.compile(r"^\|\s*([^|\s]+\.dcm)\s*\|", re.MULTILINE)

#: The storescu option that proposes each transfer syntax, so a file in it goes as it is.
#: Explicit VR Little Endian is in storescu's default proposal, so it needs no option.
STORESCU_PROPOSAL: dict[str, tuple[str, ...]] = {
    ExplicitVRLittleEndian: (),
    JPEGLosslessSV1: ("-xs",),
    JPEGExtended12Bit: ("-xx",),
    JPEG2000Lossless: ("-xv",),
    JPEG2000: ("-xw",),
    JPEGLSLossless: ("-xt",),
    JPEGLSNearLossless: ("-xu",),
    RLELossless: ("-xr",),
    DeflatedExplicitVRLittleEndian: ("-xd",),
}

#: The real files whose PixelData holds an odd-length value, which storescu pads as it sends.
ODD_LENGTH_PIXEL_DATA = frozenset({"dx_image.dcm", "NM_Kakadu44_SOTmarkerincons.dcm"})
#: An encapsulated PixelData item: tag group and element (FFFE,E000), then a 32-bit length.
_ITEM_HEADER = struct.Struct("<HHL")
_PAD = b"\x00"

CALLING_AE = "STORESCU"
SEND_TIMEOUT_SECONDS = 60
#: storescu's exit status when a store fails and -nh (no halt) is not given.
STORESCU_FAILED = 1


def manifest_names() -> list[str]:
    """The file names listed in ../shared/data/real/MANIFEST.md, in table order ([] when absent)."""
    if not MANIFEST.is_file():
        return []
    return _MANIFEST_ROW.findall(MANIFEST.read_text())


def _file_params() -> list[object]:
    names = manifest_names()
    if names:
        return names
    return [pytest.param("absent", marks=pytest.mark.skip(reason=f"{MANIFEST} is absent (../shared not checked out)"))]


def _require_dcmtk() -> None:
    for tool in ("storescu", "echoscu"):
        if shutil.which(tool) is None:
            pytest.skip(f"dcmtk's {tool} is not installed (apt-get install dcmtk)")


@pytest.fixture
def listening(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    """A DIMSE listener (no workers) on a free port, with its own spool and migrated SQLite database."""
    _require_dcmtk()
    with running_listener(tmp_path, monkeypatch) as settings:
        yield settings


def storescu(settings: Settings, path: Path, *options: str) -> subprocess.CompletedProcess[str]:
    """Send ``path`` with storescu (``-R``: propose only what the file needs, in ``options``' syntaxes)."""
    return subprocess.run(
        [
            "storescu",
            "-R",
            "-aet",
            CALLING_AE,
            "-aec",
            settings.listener.ae_title,
            *options,
            "127.0.0.1",
            str(settings.listener.port),
            str(path),
        ],
        env={**os.environ, "TCP_NODELAY": "1"},
        capture_output=True,
        text=True,
        timeout=SEND_TIMEOUT_SECONDS,
    )


def echo_succeeds(settings: Settings) -> bool:
    """Whether dcmtk's echoscu gets a successful C-ECHO from the listener."""
    result = subprocess.run(
        ["echoscu", "-aet", CALLING_AE, "-aec", settings.listener.ae_title, "127.0.0.1", str(settings.listener.port)],
        capture_output=True,
        text=True,
        timeout=SEND_TIMEOUT_SECONDS,
    )
    return result.returncode == 0


def even_padded(pixel_data: bytes, *, encapsulated: bool) -> bytes:
    """``pixel_data`` as storescu puts it on the wire: an odd-length native value, or each odd-length item
    of an encapsulated value, padded with one NUL byte. Well-formed PixelData comes back unchanged."""
    if not encapsulated:
        return pixel_data + _PAD * (len(pixel_data) % 2)
    items, offset = [], 0
    while offset < len(pixel_data):
        group, element, length = _ITEM_HEADER.unpack_from(pixel_data, offset)
        value = pixel_data[offset + _ITEM_HEADER.size : offset + _ITEM_HEADER.size + length]
        padded = value + _PAD * (length % 2)
        items.append(_ITEM_HEADER.pack(group, element, len(padded)) + padded)
        offset += _ITEM_HEADER.size + length
    return b"".join(items)


def spooled(settings: Settings) -> list[Path]:
    return sorted((settings.spool_dir / "incoming").rglob("*.dcm"))


def _check_sent_as_is(settings: Settings, source: Path) -> None:
    original = pydicom.dcmread(source)
    syntax = str(original.file_meta.TransferSyntaxUID)
    assert syntax in STORESCU_PROPOSAL, f"{source.name}: no storescu option known for transfer syntax {syntax}"

    result = storescu(settings, source, *STORESCU_PROPOSAL[syntax])
    assert result.returncode == 0 and "Store Failed" not in result.stderr, result.stderr

    expected = settings.spool_dir / "incoming" / str(original.StudyInstanceUID) / f"{original.SOPInstanceUID}.dcm"
    assert spooled(settings) == [expected]
    stored = pydicom.dcmread(expected)
    assert str(stored.file_meta.TransferSyntaxUID) == syntax
    sent = even_padded(original.PixelData, encapsulated=original.file_meta.TransferSyntaxUID.is_encapsulated)
    assert (sent != original.PixelData) == (source.name in ODD_LENGTH_PIXEL_DATA)
    assert stored.PixelData == sent, f"{source.name}: the spooled PixelData differs from the sent"
    with db.session_scope(settings.database_url) as session:
        row = session.scalars(select(Instance)).one()
        assert (row.sop_instance_uid, row.transfer_syntax_uid, row.spool_path) == (
            str(original.SOPInstanceUID),
            syntax,
            str(expected),
        )


@pytest.mark.parametrize("name", _file_params())
def test_real_file_travels_in_its_own_transfer_syntax(listening: Settings, name: str) -> None:
    _check_sent_as_is(listening, real_file(name))


def test_deflated_file_travels_deflated(listening: Settings, tmp_path: Path) -> None:
    """No real file is deflated: a deflated copy of the small DX file goes as it is too (-xd)."""
    ds = pydicom.dcmread(real_file("dx_image.dcm"))
    deflated = tmp_path / "dx_deflated.dcm"
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    ds.save_as(deflated, enforce_file_format=True)
    _check_sent_as_is(listening, deflated)


def test_manifest_lists_every_file_of_the_folder() -> None:
    """The parametrisation above follows the MANIFEST: it must name every .dcm file there is."""
    if not MANIFEST.is_file():
        pytest.skip(f"{MANIFEST} is absent (../shared not checked out)")
    assert sorted(manifest_names()) == sorted(p.name for p in REAL_DATA.glob("*.dcm"))


def test_uncompressed_only_proposal_of_a_jpeg2000_file_fails_in_storescu(listening: Settings) -> None:
    """``storescu -R`` alone proposes Explicit VR LE (and Big Endian / Implicit VR LE) for the file's SOP
    class. The listener accepts Explicit VR LE; storescu cannot decompress JPEG 2000, so it fails the store
    with "DIMSE Failed to send message" before any data goes out, aborts, and exits 1. Nothing is spooled."""
    source = real_file("RG2_J2KR.dcm")
    result = storescu(listening, source)
    assert result.returncode == STORESCU_FAILED, result.stderr
    assert (
        "unable to convert dataset from 'JPEG 2000 (Lossless only)' transfer syntax to 'Little Endian Explicit'"
    ) in result.stderr
    assert "Store Failed" in result.stderr and "0006:020e DIMSE Failed to send message" in result.stderr
    assert spooled(listening) == []
    assert echo_succeeds(listening)


@pytest.mark.parametrize("kept_bytes", [1000, 4_000_000], ids=["cut-in-the-header", "cut-in-the-pixel-data"])
@pytest.mark.parametrize("proposal", ["required", "default"])
def test_truncated_file_is_refused_by_storescu_and_the_listener_keeps_serving(
    listening: Settings, tmp_path: Path, kept_bytes: int, proposal: str
) -> None:
    """A copy of RG2_UNC cut short: storescu never sends a C-STORE request for it (see the module's
    docstring for how it fails with and without ``-R``), nothing is spooled, the listener keeps serving."""
    truncated = tmp_path / "truncated.dcm"
    truncated.write_bytes(real_file("RG2_UNC.dcm").read_bytes()[:kept_bytes])
    command = [
        "storescu",
        "-v",
        *(["-R"] if proposal == "required" else []),
        "-aet",
        CALLING_AE,
        "-aec",
        listening.listener.ae_title,
        "127.0.0.1",
        str(listening.listener.port),
        str(truncated),
    ]
    result = subprocess.run(
        command, env={**os.environ, "TCP_NODELAY": "1"}, capture_output=True, text=True, timeout=SEND_TIMEOUT_SECONDS
    )
    assert result.returncode == STORESCU_FAILED, result.stderr
    assert "Sending Store Request" not in result.stderr
    if proposal == "required":
        assert f"F: missing SOP class (or instance) in file: {truncated}" in result.stderr
        assert "Requesting Association" not in result.stderr
    else:
        assert f"Bad DICOM file: {truncated}: I/O suspension or premature end of stream" in result.stderr
        assert "Association Accepted" in result.stderr and "Aborting Association" in result.stderr
    assert spooled(listening) == []
    assert echo_succeeds(listening)
    # and it still takes instances: the whole file goes through on a new association
    assert storescu(listening, real_file("RG2_UNC.dcm")).returncode == 0
    assert len(spooled(listening)) == 1
