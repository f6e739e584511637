"""The DIMSE listener's association rules, over a real socket."""

from __future__ import annotations

import logging
import shutil
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.sop_class import (
    ComprehensiveSRStorage,
    DigitalXRayImageStorageForProcessing,
    SecondaryCaptureImageStorage,
    Verification,
)

from predraft.core.settings import Settings
from predraft.listener import status
from predraft.models.phantoms import write_demo_study
from tests.conftest import poll, running_listener


@pytest.fixture
def listening(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    with running_listener(tmp_path, monkeypatch, allowed_calling_aes=["PACS_AE"]) as settings:
        yield settings


def _associate_for_echo(settings: Settings, calling_ae: str, called_ae: str | None = None) -> Association:
    ae = AE(ae_title=calling_ae)
    ae.add_requested_context(Verification)
    return ae.associate("127.0.0.1", settings.listener.port, ae_title=called_ae or settings.listener.ae_title)


def _echo(settings: Settings, calling_ae: str, called_ae: str | None = None) -> tuple[bool, int | None]:
    assoc = _associate_for_echo(settings, calling_ae, called_ae)
    if not assoc.is_established:
        return False, None
    try:
        return True, int(assoc.send_c_echo().Status)
    finally:
        assoc.release()


def test_allowed_calling_ae_can_echo(listening: Settings) -> None:
    assert _echo(listening, "PACS_AE") == (True, 0x0000)


def test_unknown_calling_ae_is_rejected_at_association(listening: Settings, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    assert _echo(listening, "INTRUDER") == (False, None)
    # The listener logs the rejection from its own thread, which may run after the caller has seen it: wait for it.
    assert poll(
        lambda: any(
            "INTRUDER" in record.getMessage() and "reject" in record.getMessage().lower()
            for record in list(caplog.records)
            if record.name.startswith("predraft.listener")
        ),
        seconds=10,
    ), "the listener logs the rejected calling AE title"
    assert _echo(listening, "PACS_AE") == (True, 0x0000)  # and it keeps serving


def test_the_called_ae_title_is_checked_only_when_required(
    listening: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert _echo(listening, "PACS_AE", called_ae="OTHER_NODE") == (True, 0x0000)  # the default, as Orthanc's
    with running_listener(
        tmp_path / "strict", monkeypatch, allowed_calling_aes=["PACS_AE"], require_called_ae_title=True
    ) as strict:
        assoc = _associate_for_echo(strict, "PACS_AE", called_ae="OTHER_NODE")
        assert assoc.is_rejected
        assert assoc.acceptor.primitive.result_source == 0x01  # service-user
        assert assoc.acceptor.primitive.diagnostic == 0x07  # called AE title not recognised
        assert _echo(strict, "PACS_AE") == (True, 0x0000)  # its own AE title still answers


def _store(
    settings: Settings, ds: pydicom.Dataset, calling_ae: str = "PACS_AE", ssl_context: ssl.SSLContext | None = None
) -> int | None:
    ae = AE(ae_title=calling_ae)
    ae.add_requested_context(ds.SOPClassUID)
    tls_args = (ssl_context, None) if ssl_context else None
    assoc = ae.associate("127.0.0.1", settings.listener.port, ae_title=settings.listener.ae_title, tls_args=tls_args)
    if not assoc.is_established:
        return None
    try:
        return int(assoc.send_c_store(ds).Status)
    finally:
        assoc.release()


def _demo_image(tmp_path: Path) -> pydicom.Dataset:
    return pydicom.dcmread(write_demo_study(tmp_path / "demo")[1].path)


def test_dx_for_processing_is_refused_with_sop_class_not_supported(
    listening: Settings, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ds = _demo_image(tmp_path)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = DigitalXRayImageStorageForProcessing
    assert _store(listening, ds) == status.SOP_CLASS_NOT_SUPPORTED
    assert list((listening.spool_dir / "incoming").rglob("*.dcm")) == []
    refusals = [r.getMessage() for r in caplog.records if r.name == "predraft.listener.receive"]
    assert any("For Processing" in message for message in refusals)
    assert not any(str(ds.PatientName) in message or str(ds.PatientID) in message for message in refusals)


def test_secondary_capture_and_sr_are_stored(listening: Settings, tmp_path: Path) -> None:
    image = _demo_image(tmp_path)
    image.SOPClassUID = image.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    assert _store(listening, image) == status.SUCCESS
    report = pydicom.dcmread(write_demo_study(tmp_path / "other")[0].path, stop_before_pixels=True)
    report.SOPClassUID = report.file_meta.MediaStorageSOPClassUID = ComprehensiveSRStorage
    report.SOPInstanceUID = report.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    report.Modality = "SR"
    assert _store(listening, report) == status.SUCCESS
    stored = {p.stem for p in (listening.spool_dir / "incoming").rglob("*.dcm")}
    assert stored == {str(image.SOPInstanceUID), str(report.SOPInstanceUID)}


@pytest.fixture
def listening_from_elsewhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    """A listener that only admits connections from 10.0.0.0/8 (this test connects from 127.0.0.1)."""
    with running_listener(
        tmp_path, monkeypatch, allowed_calling_aes=["PACS_AE"], allowed_addresses=["10.0.0.0/8"]
    ) as settings:
        yield settings


def test_source_address_outside_allowed_addresses_is_refused(listening_from_elsewhere: Settings) -> None:
    assert _echo(listening_from_elsewhere, "PACS_AE") == (False, None)


def _certificate(tmp_path: Path, name: str, ca: tuple[Path, Path] | None = None) -> tuple[Path, Path]:
    """A self-signed (or ``ca``-signed) certificate for 127.0.0.1, made with the openssl command."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is needed to make test certificates")
    key, cert = tmp_path / f"{name}.key", tmp_path / f"{name}.pem"
    subject = ["-subj", f"/CN={name}", "-addext", "subjectAltName=IP:127.0.0.1"]
    if ca is None:
        subprocess.run(
            [
                "openssl",
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "2",
                "-keyout",
                str(key),
                "-out",
                str(cert),
                *subject,
            ],
            check=True,
            capture_output=True,
        )
    else:
        request = tmp_path / f"{name}.csr"
        subprocess.run(
            [
                "openssl",
                "req",
                "-new",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                str(key),
                "-out",
                str(request),
                "-subj",
                f"/CN={name}",
            ],
            check=True,
            capture_output=True,
        )
        subprocess.run(
            [
                "openssl",
                "x509",
                "-req",
                "-in",
                str(request),
                "-CA",
                str(ca[1]),
                "-CAkey",
                str(ca[0]),
                "-CAcreateserial",
                "-days",
                "2",
                "-out",
                str(cert),
            ],
            check=True,
            capture_output=True,
        )
    return key, cert


@pytest.fixture
def tls_material(tmp_path: Path) -> dict[str, tuple[Path, Path]]:
    ca = _certificate(tmp_path, "test-ca")
    return {
        "ca": ca,
        "server": _certificate(tmp_path, "server", ca),
        "client": _certificate(tmp_path, "client", ca),
        "stranger": _certificate(tmp_path, "stranger"),
    }


def _client_context(material: dict[str, tuple[Path, Path]], who: str | None) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(material["ca"][1]))
    context.check_hostname = False
    if who is not None:
        context.load_cert_chain(str(material[who][1]), str(material[who][0]))
    return context


def test_tls_with_client_certificates(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tls_material: dict[str, tuple[Path, Path]]
) -> None:
    key, cert = tls_material["server"]
    with running_listener(
        tmp_path,
        monkeypatch,
        allowed_calling_aes=["PACS_AE"],
        tls_certificate=cert,
        tls_private_key=key,
        tls_client_ca=tls_material["ca"][1],
    ) as settings:
        image = _demo_image(tmp_path)
        assert _store(settings, image, ssl_context=_client_context(tls_material, "client")) == status.SUCCESS
        assert _store(settings, image, ssl_context=_client_context(tls_material, "stranger")) is None
        assert _store(settings, image, ssl_context=_client_context(tls_material, None)) is None
        assert _store(settings, image) is None  # plain TCP to a TLS listener
