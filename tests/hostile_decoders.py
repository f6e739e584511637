"""Hostile stand-ins for pixel decoders, run through predraft.workers.sandbox by the tests (importable in its child).

Each misbehaves the way a broken decoder can: hangs, allocates without end, dies, or raises a
BaseException that is not an Exception (as pyo3's PanicException does).
"""

from __future__ import annotations

import os
import random
import signal
import time
import warnings
from pathlib import Path

#: Seeded byte flips of RG2_RLE.dcm's pixel data that make pylibjpeg-rle (Rust) panic on an index out of bounds.
PANIC_SEED, PANIC_FLIPS = 2, 4

#: What a test may look for on its own stderr to prove the child's output never reached it.
SECRET = "DOE^JANE-19800203"


def echo(value: object) -> object:
    """A well-behaved decoder: returns its argument."""
    return value


def child_pid() -> int:
    """The pid of the process running it (the sandbox's child)."""
    return os.getpid()


def loaded_modules(*names: str) -> dict[str, bool]:
    """Which of these modules the child has imported."""
    import sys

    return {name: name in sys.modules for name in names}


def page_faults_per_image(size: int, buffers: int, images: int = 5) -> float:
    """Minor page faults per "image" once warm: each image fills ``buffers`` fresh NumPy arrays of ``size`` bytes
    and frees them all, as preparing an image does with its decoded, windowed and cropped copies. Near 0 when
    malloc reuses the memory; about ``buffers * size / 4096`` when each buffer is mapped and faulted in anew."""
    import resource

    import numpy as np

    def one_image() -> None:
        held = [np.ones(size, dtype=np.uint8) for _ in range(buffers)]
        del held

    one_image()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(images):
        one_image()
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / images


def hang() -> None:
    """Never returns (a decoder looping on a corrupt stream)."""
    while True:
        time.sleep(0.05)


def allocate_without_end() -> None:
    """Allocates and touches 64 MiB blocks until the allocation fails."""
    import numpy as np

    blocks = []
    while True:
        blocks.append(np.ones(64 * 1024 * 1024, dtype=np.uint8))


def abort() -> None:
    """Dies at once (a native decoder's abort or segmentation fault)."""
    os.kill(os.getpid(), signal.SIGSEGV)


def abort_out_of_memory() -> None:
    """Dies as Rust does when an allocation fails: the message on stderr, then abort."""
    os.write(2, b"memory allocation of 8589934592 bytes failed\n")
    os.abort()


class NotAnException(BaseException):
    """Like pyo3_runtime.PanicException: a BaseException that ``except Exception`` does not catch."""


def raise_base_exception() -> None:
    raise NotAnException("index out of bounds: the len is 7532800 but the index is 7532800")


class UnpicklableError(Exception):
    """An exception whose pickled form cannot be rebuilt (a required argument is not in ``args``)."""

    def __init__(self, code: int, text: str) -> None:
        super().__init__(text)
        self.code = code


def raise_unpicklable() -> None:
    raise UnpicklableError(7, "decoder refused the stream")


def write_patient_data_to_stderr() -> str:
    """Warns and logs through pydicom's channels, and prints, each quoting a value as pydicom does."""
    import logging

    warnings.warn_explicit(
        f"Invalid value for VR PN: '{SECRET}'", UserWarning, "pydicom/valuerep.py", 1, module="pydicom.valuerep"
    )
    logging.getLogger("pydicom").warning("Invalid value for VR PN: '%s'", SECRET)
    print(SECRET)
    return "done"


def corrupt_rle(source: Path, target: Path) -> Path:
    """RG2_RLE with PANIC_FLIPS bytes of its encapsulated pixel data inverted, as a new instance of its study
    (a new SOP Instance UID): pylibjpeg-rle panics on it."""
    import pydicom
    from pydicom.uid import generate_uid

    ds = pydicom.dcmread(source)
    data = bytearray(ds.PixelData)
    rng = random.Random(PANIC_SEED)
    for _ in range(PANIC_FLIPS):
        data[rng.randrange(200, len(data))] ^= 0xFF  # past the item tags and the basic offset table
    ds.PixelData = bytes(data)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.save_as(target, enforce_file_format=True)
    return target
