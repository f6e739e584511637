"""A pydicom 3 decoder plugin for 12-bit JPEG Extended (Process 2 and 4) using imagecodecs.

None of the other permissive decoders this project carries reads 12-bit JPEG Extended: GDCM and Pillow
refuse precisions above 8 bits, and pylibjpeg-libjpeg (which can) is GPLv3. imagecodecs (BSD-3-Clause)
bundles libjpeg-turbo 3 (IJG/BSD-style licences), which decodes 8- and 12-bit sequential DCT JPEG.

``register()`` adds the plugin, labelled ``imagecodecs``, to pydicom's JPEG Extended decoder, after
GDCM and Pillow. ``preferred_plugin(ds)`` names it for 12-bit JPEG Extended data, so callers can skip
the plugins that are bound to fail (each failure is logged by pydicom with a traceback), and names the
faster of the installed plugins where one was clearly faster (JPEG-LS).

libjpeg-turbo is lenient: it also decodes streams whose scan header is not valid for a sequential DCT
process (the NEMA WG04 ``*_JPLY.dcm`` files have Se=0 where ISO/IEC 10918-1 B.2.3 requires Se=63).
This plugin checks the frame header and every scan header first and refuses such streams, so a
non-conformant stream fails with a message that says what is wrong instead of being guessed at.

Plugin contract (pydicom.pixels.decoders): ``is_available(uid)``, ``DECODER_DEPENDENCIES`` and a
``_decode_frame(src, runner) -> bytes`` that returns one frame in the container size pydicom expects.
"""

from __future__ import annotations

import threading

import numpy as np
from pydicom.dataset import Dataset
from pydicom.pixels.decoders import JPEGExtended12BitDecoder
from pydicom.pixels.decoders.base import DecodeRunner, get_decoder
from pydicom.uid import JPEGExtended12Bit, JPEGLSLossless, JPEGLSNearLossless

try:
    import imagecodecs
except ImportError:  # pragma: no cover - imagecodecs is a dependency; keep pydicom usable without it
    imagecodecs = None  # type: ignore[assignment]  # None marks the optional module absent (is_available)

PLUGIN_LABEL = "imagecodecs"
DECODER_DEPENDENCIES = {JPEGExtended12Bit: ("imagecodecs>=2024.1",)}

# ISO/IEC 10918-1 Table B.1: start-of-frame markers of the sequential DCT processes, which DICOM's JPEG
# Extended (Process 2 and 4) transfer syntax allows: SOF0 baseline and SOF1 extended, Huffman coded.
_SEQUENTIAL_DCT_SOF = {0xC0: "SOF0 (baseline)", 0xC1: "SOF1 (extended sequential)"}
_OTHER_SOF = {
    0xC2: "SOF2 (progressive)",
    0xC3: "SOF3 (lossless)",
    0xC5: "SOF5",
    0xC6: "SOF6",
    0xC7: "SOF7",
    0xC9: "SOF9 (arithmetic)",
    0xCA: "SOF10",
    0xCB: "SOF11",
    0xCD: "SOF13",
    0xCE: "SOF14",
    0xCF: "SOF15",
}
_SOS, _EOI, _SOI = 0xDA, 0xD9, 0xD8
_STANDALONE = {0x01, *range(0xD0, 0xD8)}  # TEM and RST0-7 carry no length field

#: Plugins named first for other syntaxes (see ``preferred_plugin``).
_PREFERRED: dict[str, str] = {JPEGLSLossless: "pyjpegls", JPEGLSNearLossless: "pyjpegls"}

_lock = threading.Lock()
_registered = False


class JpegStreamError(ValueError):
    """The JPEG stream is not a conformant sequential DCT codestream."""


def is_available(uid: str) -> bool:
    """True when imagecodecs (with its libjpeg-turbo codec) is installed and ``uid`` is JPEG Extended."""
    return uid == JPEGExtended12Bit and imagecodecs is not None and bool(imagecodecs.JPEG8.available)


def check_sequential_dct(src: bytes) -> tuple[int, int]:
    """Check the markers of a JPEG Extended frame; return (precision, components) of its frame header.

    Walks the marker segments up to the entropy-coded data of each scan and checks, per ISO/IEC 10918-1:
    SOI first; exactly one SOF0/SOF1 frame header with precision 8 or 12; every scan header (SOS) with
    Ss=0, Se=63, Ah=0, Al=0 (B.2.3: a sequential DCT scan codes all 64 coefficients at full precision).
    """
    if src[:2] != b"\xff\xd8":
        raise JpegStreamError(f"the frame does not start with an SOI marker (first bytes {src[:2].hex()})")
    precision = components = 0
    position, scans = 2, 0
    while position < len(src) - 1:
        if src[position] != 0xFF:
            raise JpegStreamError(f"expected a marker at byte {position}, found 0x{src[position]:02x}")
        marker = src[position + 1]
        if marker == 0xFF:  # fill byte before a marker
            position += 1
            continue
        if marker == _EOI:
            break
        if marker in _STANDALONE:
            position += 2
            continue
        if position + 4 > len(src):
            raise JpegStreamError(f"the stream ends inside the marker 0xff{marker:02x} at byte {position}")
        length = int.from_bytes(src[position + 2 : position + 4], "big")
        segment = src[position + 4 : position + 2 + length]
        if marker in _OTHER_SOF:
            raise JpegStreamError(f"{_OTHER_SOF[marker]} frame: JPEG Extended allows only SOF0 or SOF1")
        if marker in _SEQUENTIAL_DCT_SOF:
            if precision:
                raise JpegStreamError("the stream holds more than one frame header")
            precision, components = segment[0], segment[5]
            if precision not in (8, 12):
                raise JpegStreamError(f"sample precision {precision} bits; a DCT frame holds 8 or 12")
        elif marker == _SOS:
            if not precision:
                raise JpegStreamError("a scan header comes before any frame header")
            count = segment[0]
            ss, se, ah_al = segment[1 + 2 * count : 4 + 2 * count]
            if (ss, se, ah_al) != (0, 63, 0):
                raise JpegStreamError(
                    f"scan header has Ss={ss}, Se={se}, Ah={ah_al >> 4}, Al={ah_al & 0x0F}; a sequential DCT "
                    "scan requires Ss=0, Se=63, Ah=Al=0 (ISO/IEC 10918-1 B.2.3)"
                )
            scans += 1
            position = _skip_entropy_coded(src, position + 2 + length)
            continue
        position += 2 + length
    if not precision:
        raise JpegStreamError("no SOF0/SOF1 frame header found")
    if not scans:
        raise JpegStreamError("no scan (SOS) found")
    return precision, components


def _skip_entropy_coded(src: bytes, position: int) -> int:
    """Index of the next marker after entropy-coded data (0xFF00 stuffing and RSTn belong to the data)."""
    while True:
        position = src.find(b"\xff", position)
        if position < 0 or position + 1 >= len(src):
            return len(src)
        following = src[position + 1]
        if following == 0x00 or 0xD0 <= following <= 0xD7 or following == 0xFF:
            position += 1 if following == 0xFF else 2
            continue
        return position


def _decode_frame(src: bytes, runner: DecodeRunner) -> bytes:
    """Decode one JPEG Extended frame with libjpeg-turbo (through imagecodecs) into pydicom's container."""
    if runner.samples_per_pixel != 1:
        raise NotImplementedError("the imagecodecs plugin decodes single-sample (grayscale) JPEG Extended only")
    precision, components = check_sequential_dct(src)
    if components != 1:
        raise JpegStreamError(f"the frame header has {components} components; Samples per Pixel is 1")
    if precision > runner.bits_allocated:
        raise JpegStreamError(f"{precision}-bit samples do not fit Bits Allocated {runner.bits_allocated}")
    decoded = imagecodecs.jpeg8_decode(src)
    if decoded.shape != (runner.rows, runner.columns):
        raise JpegStreamError(f"decoded {decoded.shape}, but Rows x Columns is {runner.rows} x {runner.columns}")
    container = np.dtype(f"<u{runner.bits_allocated // 8}")
    return decoded.astype(container, copy=False).tobytes()


def register() -> None:
    """Add the plugin to pydicom's JPEG Extended decoder once (idempotent and thread-safe)."""
    global _registered
    with _lock:
        if not _registered and PLUGIN_LABEL not in JPEGExtended12BitDecoder.available_plugins:
            JPEGExtended12BitDecoder.add_plugin(PLUGIN_LABEL, (__name__, "_decode_frame"))
        _registered = True


def preferred_plugin(ds: Dataset) -> str:
    """The plugin to name for this dataset's pixel data, or "" to let pydicom try each in turn.

    * 12-bit JPEG Extended: imagecodecs, the only one that reads it (GDCM and Pillow refuse it, and
      pydicom logs a traceback for every refusal before it reaches the plugin that works).
    * JPEG-LS: pyjpegls (CharLS), which pydicom tries after GDCM; on every JPEG-LS file of the real test
      set it gave the same array as GDCM in about 60 % of the time (see bench/pixels.py).

    Other syntaxes keep pydicom's order: for JPEG 2000 neither GDCM nor pylibjpeg-openjpeg was faster on
    every file. predraft.models.pixels falls back to every plugin when the preferred one fails.
    """
    syntax = ds.file_meta.get("TransferSyntaxUID", "") if hasattr(ds, "file_meta") else ""
    if syntax == JPEGExtended12Bit:
        wanted = PLUGIN_LABEL if int(ds.get("BitsStored", 8) or 8) > 8 else ""
    else:
        wanted = _PREFERRED.get(syntax, "")
    if wanted and wanted in get_decoder(syntax).available_plugins:
        return wanted
    return ""
