"""Shared test helpers: paths to the real DICOM fixtures and free ports."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
REAL_DATA = REPO_ROOT.parent / "shared" / "data" / "real"


def real_file(name: str) -> Path:
    """A file of ../shared/data/real, or skip the test when the folder is absent."""
    path = REAL_DATA / name
    if not path.is_file():
        pytest.skip(f"real DICOM fixture {path} is absent (../shared/data/real is not checked out)")
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
