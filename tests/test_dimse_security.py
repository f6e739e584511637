"""The DIMSE listener's association rules, over a real socket."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from pynetdicom import AE
from pynetdicom.sop_class import DigitalXRayImageStorageForProcessing, Verification

from listener.dimse import start_dimse_server
from predraft import db
from predraft.settings import Settings, get_settings
from tests.conftest import free_port


@pytest.fixture
def listening(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    for key in list(os.environ):
        if key.startswith("PREDRAFT_"):
            monkeypatch.delenv(key)
    settings = get_settings(var_dir=tmp_path / "var", dimse_port=free_port(), allowed_calling_aes=["PACS_AE"])
    db.upgrade(settings.database_url)
    server = start_dimse_server(settings)
    try:
        yield settings
    finally:
        server.shutdown()


def _echo(settings: Settings, calling_ae: str) -> tuple[bool, int | None]:
    ae = AE(ae_title=calling_ae)
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", settings.dimse_port, ae_title=settings.ae_title)
    if not assoc.is_established:
        return False, None
    try:
        return True, int(assoc.send_c_echo().Status)
    finally:
        assoc.release()


def test_allowed_calling_ae_can_echo(listening: Settings) -> None:
    assert _echo(listening, "PACS_AE") == (True, 0x0000)


def test_unknown_calling_ae_is_rejected_at_association(listening: Settings) -> None:
    assert _echo(listening, "INTRUDER") == (False, None)


def test_dx_for_processing_is_not_accepted(listening: Settings) -> None:
    ae = AE(ae_title="PACS_AE")
    ae.add_requested_context(DigitalXRayImageStorageForProcessing)
    assoc = ae.associate("127.0.0.1", listening.dimse_port, ae_title=listening.ae_title)
    try:
        accepted = [context for context in assoc.accepted_contexts
                    if context.abstract_syntax == DigitalXRayImageStorageForProcessing]
        assert accepted == []
    finally:
        if assoc.is_established:
            assoc.release()
