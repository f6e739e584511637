"""Export of drafted SRs over DIMSE, against real SCPs on free ports: dcmtk's storescp, a pynetdicom SCP
answering chosen statuses, predraft's own listener over TLS, and a port where nothing listens."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pydicom
import pytest
from pynetdicom import AE, evt
from pynetdicom.sop_class import ComprehensiveSRStorage, Verification
from sqlalchemy import select, update
from sqlalchemy.exc import OperationalError

from predraft.core.db import session_scope
from predraft.core.schema import Export, Instance, utcnow
from predraft.workers import export_task
from predraft.workers.export import OUT_OF_RESOURCES
from predraft.workers.export_service import begin_attempt
from tests.conftest import free_port, running_listener
from tests.unit.exporting import Drafted, configure, event_kinds, export_row, make_draft, queue, run_export


@pytest.fixture
def drafted(clean_settings_env, sqlite_url, demo_study, tiny_card_path, tmp_path) -> Iterator[Drafted]:
    yield make_draft(sqlite_url, [image.path for image in demo_study], tiny_card_path, tmp_path / "spool")
    export_task._settings.cache_clear()


def _received(folder: Path) -> list[str]:
    return [str(pydicom.dcmread(path).SOPInstanceUID) for path in sorted(folder.iterdir()) if path.is_file()]


@pytest.fixture
def drafted_with_results(clean_settings_env, sqlite_url, demo_study, tiny_card_path, tmp_path) -> Iterator[Drafted]:
    """A draft with its AI results SR beside the narrative one."""
    images = [image.path for image in demo_study]
    yield make_draft(sqlite_url, images, tiny_card_path, tmp_path / "spool", results_sr=True)
    export_task._settings.cache_clear()


def test_both_srs_of_a_draft_are_stored_by_one_export(drafted_with_results, storescp, monkeypatch):
    port, folder = storescp
    drafted = drafted_with_results
    configure(
        monkeypatch,
        drafted,
        [{"kind": "dimse", "name": "storescp", "ae_title": "STORESCP", "host": "127.0.0.1", "port": port}],
    )
    queue(drafted, "storescp")
    assert run_export(drafted, "storescp") == "sent"
    assert drafted.results_sr_sop_instance_uid is not None
    assert sorted(_received(folder)) == sorted([drafted.sr_sop_instance_uid, drafted.results_sr_sop_instance_uid])
    classes = sorted(str(pydicom.dcmread(path).SOPClassUID) for path in folder.iterdir() if path.is_file())
    assert classes == ["1.2.840.10008.5.1.4.1.1.88.33", "1.2.840.10008.5.1.4.1.1.88.34"]
    assert (export_row(drafted, "storescp").state, export_row(drafted, "storescp").last_error) == ("sent", None)


def test_a_destination_without_comprehensive_3d_sr_still_gets_the_narrative_draft(drafted_with_results, monkeypatch):
    scp = StatusScp()  # Comprehensive SR only, as many PACS
    try:
        configure(monkeypatch, drafted_with_results, [scp.destination()])
        queue(drafted_with_results, "scp")
        assert run_export(drafted_with_results, "scp") == "sent"
        assert scp.received == [drafted_with_results.sr_sop_instance_uid]
        row = export_row(drafted_with_results, "scp")
        assert row.state == "sent" and row.attempts == 1
        assert "the AI results SR was not stored" in row.last_error
        assert "1.2.840.10008.5.1.4.1.1.88.34" in row.last_error
    finally:
        scp.server.shutdown()


def test_sr_is_stored_by_storescp_once_however_often_the_task_runs(drafted, storescp, monkeypatch):
    port, folder = storescp
    configure(
        monkeypatch,
        drafted,
        [{"kind": "dimse", "name": "storescp", "ae_title": "STORESCP", "host": "127.0.0.1", "port": port}],
    )
    assert queue(drafted, "storescp") == ["storescp"]

    assert run_export(drafted, "storescp") == "sent"
    assert _received(folder) == [drafted.sr_sop_instance_uid]
    row = export_row(drafted, "storescp")
    assert (row.state, row.attempts, row.last_error) == ("sent", 1, None)
    assert row.exported_at is not None

    # A redelivered message, or the same task sent twice: nothing is sent again.
    assert run_export(drafted, "storescp") == "nothing to do"
    assert queue(drafted, "storescp") == []  # the draft task run again queues nothing new
    assert _received(folder) == [drafted.sr_sop_instance_uid]
    assert export_row(drafted, "storescp").attempts == 1
    assert event_kinds(drafted) == ["exported"]


#: Two deliveries of one export message, on two workers.
FIRST_TRY = {"task_id": "first-delivery", "holder": "predraft-export@one", "lease_seconds": 600.0}
SECOND_TRY = {"task_id": "second-delivery", "holder": "predraft-export@two", "lease_seconds": 600.0}


def test_a_try_claims_its_row_so_a_second_delivery_does_not_send_while_it_runs(drafted, storescp, monkeypatch):
    port, folder = storescp
    configure(
        monkeypatch,
        drafted,
        [{"kind": "dimse", "name": "storescp", "ae_title": "STORESCP", "host": "127.0.0.1", "port": port}],
    )
    queue(drafted, "storescp")
    with session_scope(drafted.database_url) as session:  # a first delivery, still sending
        job = begin_attempt(session, draft_id=drafted.draft_id, destination="storescp", **FIRST_TRY)
    assert job is not None and job.attempt == 1
    assert export_row(drafted, "storescp").state == "sending"
    with session_scope(drafted.database_url) as session:
        assert begin_attempt(session, draft_id=drafted.draft_id, destination="storescp", **SECOND_TRY) is None

    assert run_export(drafted, "storescp") == "nothing to do"  # the same message delivered again
    assert _received(folder) == []
    assert export_row(drafted, "storescp").attempts == 1

    # The first worker died mid-try: once its lease lapses (no heartbeat renews it), the next delivery takes over.
    with session_scope(drafted.database_url) as session:
        session.execute(
            update(Export).where(Export.id == job.export_id).values(leased_until=utcnow() - timedelta(seconds=1))
        )
    assert run_export(drafted, "storescp") == "sent"
    assert _received(folder) == [drafted.sr_sop_instance_uid]
    row = export_row(drafted, "storescp")
    assert (row.state, row.attempts) == ("sent", 2)


def test_a_database_error_while_recording_a_try_is_retried_there_not_left_claimed(drafted, monkeypatch):
    configure(
        monkeypatch,
        drafted,
        [{"kind": "dimse", "name": "down", "ae_title": "PACS", "host": "127.0.0.1", "port": free_port(), "timeout": 5}],
        max_retries=0,
    )
    queue(drafted, "down")
    real, calls = export_task.record_failure, []

    def locked_once(session, **values):
        calls.append(values["retry_at"] is None)
        if len(calls) == 1:
            raise OperationalError("UPDATE exports", {}, Exception("database is locked"))
        real(session, **values)

    monkeypatch.setattr(export_task, "record_failure", locked_once)
    monkeypatch.setattr(export_task.time, "sleep", lambda seconds: None)
    assert run_export(drafted, "down") == "dead"
    assert calls == [True, True]  # recorded on the second go, by the same try: nothing sent twice
    row = export_row(drafted, "down")
    assert (row.state, row.attempts) == ("dead", 1) and row.last_error


def test_a_destination_that_refuses_connections_is_retried_then_dead(drafted, monkeypatch):
    port = free_port()  # nothing listens there
    configure(
        monkeypatch,
        drafted,
        [{"kind": "dimse", "name": "down", "ae_title": "PACS", "host": "127.0.0.1", "port": port, "timeout": 5}],
        max_retries=2,
    )
    queue(drafted, "down")

    assert run_export(drafted, "down") == "dead"
    row = export_row(drafted, "down")
    assert (row.state, row.attempts, row.exported_at) == ("dead", 3, None)  # the first try and two retries
    assert f"cannot connect to PACS@127.0.0.1:{port}" in row.last_error
    assert event_kinds(drafted) == ["export_failed", "export_failed", "export_dead"]
    assert run_export(drafted, "down") == "nothing to do"  # dead stays dead until resent


class StatusScp:
    """A pynetdicom C-STORE SCP on a free port that answers each store with the next of ``statuses``."""

    def __init__(self, *, accept_sr: bool = True, calling_aes: list[str] | None = None) -> None:
        self.statuses: list[int] = []
        self.received: list[str] = []
        self.calling_aes: list[str] = []
        ae = AE(ae_title="STATUS_SCP")
        ae.add_supported_context(ComprehensiveSRStorage if accept_sr else Verification)
        if calling_aes:
            ae.require_calling_aet = calling_aes
        self.server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, self._store)])
        self.port = self.server.server_address[1]

    def _store(self, event: evt.Event) -> int:
        self.received.append(str(event.dataset.SOPInstanceUID))
        self.calling_aes.append(str(event.assoc.requestor.ae_title).strip())
        return self.statuses.pop(0) if self.statuses else 0x0000

    def destination(self) -> dict:
        return {"kind": "dimse", "name": "scp", "ae_title": "STATUS_SCP", "host": "127.0.0.1", "port": self.port}


@pytest.fixture
def scp() -> Iterator[StatusScp]:
    server = StatusScp()
    yield server
    server.server.shutdown()


@pytest.mark.parametrize(
    "statuses, state, tries, error",
    [
        ([0xB000], "sent", 1, "stored it with warning status 0xB000"),  # coercion of data elements
        ([0xA700, 0x0000], "sent", 2, None),  # out of resources, then stored
        ([0xA7FF, 0xA700, 0xA701], "dead", 3, "refused it, out of resources: status 0xA701"),
        ([0xC000], "dead", 1, "refused it: failure status 0xC000"),  # cannot understand: not retried
        ([0xA900], "dead", 1, "refused it: failure status 0xA900"),  # data set does not match the SOP class
    ],
)
def test_store_statuses(drafted, scp, monkeypatch, statuses, state, tries, error):
    scp.statuses = list(statuses)
    configure(monkeypatch, drafted, [scp.destination()], max_retries=2)
    queue(drafted, "scp")

    assert run_export(drafted, "scp") == state
    row = export_row(drafted, "scp")
    assert (row.state, row.attempts) == (state, tries)
    assert (row.last_error is None) if error is None else (error in row.last_error), row.last_error
    assert (row.exported_at is not None) == (state == "sent")
    assert scp.received == [drafted.sr_sop_instance_uid] * tries
    assert scp.calling_aes == ["PREDRAFT"] * tries  # the default calling AE: predraft's own AE title
    assert all(code in OUT_OF_RESOURCES for code in statuses[: tries - 1])


def test_a_destination_that_does_not_take_srs_is_dead_at_once(drafted, monkeypatch):
    scp = StatusScp(accept_sr=False)
    try:
        configure(monkeypatch, drafted, [{**scp.destination(), "calling_ae": "PREDRAFT_OUT"}])
        queue(drafted, "scp")
        assert run_export(drafted, "scp") == "dead"
    finally:
        scp.server.shutdown()
    row = export_row(drafted, "scp")
    assert row.attempts == 1
    assert "accepted no presentation context for SOP class 1.2.840.10008.5.1.4.1.1.88.33" in row.last_error


def test_a_rejected_association_is_retried_then_dead(drafted, monkeypatch):
    scp = StatusScp(calling_aes=["SOMEONE_ELSE"])
    try:
        configure(monkeypatch, drafted, [scp.destination()], max_retries=1)
        queue(drafted, "scp")
        assert run_export(drafted, "scp") == "dead"
    finally:
        scp.server.shutdown()
    row = export_row(drafted, "scp")
    assert row.attempts == 2 and scp.received == []
    assert row.last_error == (
        f"association rejected by STATUS_SCP@127.0.0.1:{scp.port} (permanent): "
        "Service User, Calling AE title not recognised"
    ), row.last_error


def _certificate(folder: Path, name: str, ca: tuple[Path, Path] | None = None) -> tuple[Path, Path]:
    """A self-signed CA, or a ``ca``-signed certificate for 127.0.0.1 (subjectAltName), made with openssl."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is needed to make test certificates")
    key, cert = folder / f"{name}.key", folder / f"{name}.pem"
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
                "-subj",
                f"/CN={name}",
            ],
            check=True,
            capture_output=True,
        )
        return key, cert
    request, extensions = folder / f"{name}.csr", folder / f"{name}.ext"
    extensions.write_text("subjectAltName=IP:127.0.0.1\n")
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
            "-extfile",
            str(extensions),
        ],
        check=True,
        capture_output=True,
    )
    return key, cert


def test_export_over_tls_to_a_listener_that_wants_client_certificates(drafted, monkeypatch, tmp_path):
    folder = tmp_path / "tls"
    folder.mkdir()
    ca = _certificate(folder, "ca")
    (server_key, server_cert), (client_key, client_cert) = (
        _certificate(folder, "server", ca),
        _certificate(folder, "client", ca),
    )
    with running_listener(
        tmp_path / "listener",
        monkeypatch,
        allowed_calling_aes=["PREDRAFT"],
        tls_certificate=server_cert,
        tls_private_key=server_key,
        tls_client_ca=ca[1],
    ) as listener:
        tls = {
            "kind": "dimse",
            "ae_title": listener.listener.ae_title,
            "host": "127.0.0.1",
            "port": listener.listener.port,
            "tls": True,
            "tls_ca": str(ca[1]),
        }
        configure(
            monkeypatch,
            drafted,
            [
                {**tls, "name": "with-cert", "tls_certificate": str(client_cert), "tls_private_key": str(client_key)},
                {**tls, "name": "without-cert"},
                {**tls, "name": "plain", "tls": False, "tls_ca": None},
            ],
            max_retries=0,
        )
        queue(drafted, "with-cert", "without-cert", "plain")
        assert run_export(drafted, "with-cert") == "sent"
        assert run_export(drafted, "without-cert") == "dead"
        assert run_export(drafted, "plain") == "dead"
        with session_scope(listener.database_url) as session:
            stored = session.scalars(
                select(Instance).where(Instance.sop_instance_uid == drafted.sr_sop_instance_uid)
            ).one()
            assert stored.calling_ae == "PREDRAFT"
    # TLS 1.3: the listener refuses the missing client certificate after the client's side of the handshake.
    assert "aborted before it was established" in export_row(drafted, "without-cert").last_error
    assert f"PREDRAFT@127.0.0.1:{listener.listener.port}" in export_row(drafted, "plain").last_error
