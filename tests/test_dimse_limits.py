"""The DIMSE listener under idle, slow and abusive connections (issue 14): no sender locks the others out.

The attacking sockets come from 127.0.0.2 (any 127/8 address is loopback on Linux); the legitimate caller
from 127.0.0.1. Each test starts its own listener on a free port with short timeouts.
"""

from __future__ import annotations

import contextlib
import select
import socket
import ssl
import struct
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace

import pydicom
import pytest
from prometheus_client import REGISTRY
from pynetdicom import AE, evt
from pynetdicom.pdu import P_DATA_TF
from pynetdicom.sop_class import SecondaryCaptureImageStorage, Verification

from predraft.core.settings import Settings
from predraft.listener import status
from predraft.listener.connections import abort_reason
from predraft.listener.dimse import StoreHandler
from predraft.listener.spool import Spool
from predraft.models.phantoms.dataset import write_demo_study
from tests.conftest import poll, running_listener

ATTACKER = "127.0.0.2"
CALLER_AE = "PACS_AE"
#: The most a legitimate C-ECHO may take while an attacker is at work.
ECHO_BOUND_SECONDS = 2.0
#: How soon "at once" is, for a connection the listener must close without waiting for any timeout.
AT_ONCE_SECONDS = 1.0
A_ASSOCIATE_RQ_TYPE = 0x01
P_DATA_TF_TYPE = 0x04
UNKNOWN_PDU_TYPE = 0x09


def _counted(name: str, **labels: str) -> float:
    """The current value of the counter ``name`` (without ``_total``) for ``labels``."""
    return REGISTRY.get_sample_value(f"{name}_total", labels) or 0.0


def _refused(reason: str) -> float:
    return _counted("predraft_dimse_connections_refused", reason=reason)


def _aborted(reason: str) -> float:
    return _counted("predraft_dimse_associations_aborted", reason=reason)


@pytest.fixture
def listen(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., Settings]]:
    """Start a listener with settings overrides (one per test; it is stopped afterwards)."""
    started: list = []

    def start(**overrides: object) -> Settings:
        context = running_listener(tmp_path, monkeypatch, allowed_calling_aes=[CALLER_AE], **overrides)
        started.append(context)
        return context.__enter__()

    yield start
    for context in reversed(started):
        context.__exit__(None, None, None)


def _connect(port: int, source: str = ATTACKER) -> socket.socket:
    """A raw TCP connection to the listener from ``source``."""
    sock = socket.socket()
    sock.bind((source, 0))
    sock.connect(("127.0.0.1", port))
    return sock


def _closed_within(sock: socket.socket, seconds: float) -> bool:
    """True when the listener closes ``sock`` (end of stream or reset) within ``seconds``; what it sends
    first (an A-ABORT, an A-ASSOCIATE-RJ) is read and dropped."""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        readable, _, _ = select.select([sock], [], [], left)
        if not readable:
            return False
        try:
            if not sock.recv(65536):
                return True
        except OSError:
            return True
    return False


def _closed_among(socks: list[socket.socket], seconds: float) -> set[socket.socket]:
    """Those of ``socks`` that the listener closes (end of stream or reset) within ``seconds``, all watched
    together; what it sends first is read and dropped."""
    closed: set[socket.socket] = set()
    deadline = time.monotonic() + seconds
    while len(closed) < len(socks) and (left := deadline - time.monotonic()) > 0:
        readable, _, _ = select.select([s for s in socks if s not in closed], [], [], left)
        for sock in readable:
            try:
                if not sock.recv(65536):
                    closed.add(sock)
            except OSError:
                closed.add(sock)
    return closed


def _echo(port: int, source: str = "127.0.0.1") -> tuple[int | None, float]:
    """A C-ECHO as CALLER_AE from ``source``: its status (None when no association) and the seconds it took."""
    ae = AE(ae_title=CALLER_AE)
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.network_timeout = ae.dimse_timeout = 5
    started = time.monotonic()
    assoc = ae.associate("127.0.0.1", port, ae_title="PREDRAFT", bind_address=(source, 0))
    try:
        answer = int(assoc.send_c_echo().Status) if assoc.is_established else None
    finally:
        if assoc.is_established:
            assoc.release()
    return answer, time.monotonic() - started


def _assert_echo_in_time(port: int) -> None:
    answer, seconds = _echo(port)
    assert answer == status.SUCCESS, "the legitimate C-ECHO got no association"
    assert seconds < ECHO_BOUND_SECONDS, f"the legitimate C-ECHO took {seconds:.2f} s"


def _associate(port: int, source: str = ATTACKER, **timeouts: float):  # type: ignore[no-untyped-def]
    ae = AE(ae_title=CALLER_AE)
    ae.add_requested_context(Verification)
    ae.add_requested_context(SecondaryCaptureImageStorage)
    ae.acse_timeout = ae.network_timeout = ae.dimse_timeout = 5
    for name, value in timeouts.items():
        setattr(ae, name, value)
    return ae.associate("127.0.0.1", port, ae_title="PREDRAFT", bind_address=(source, 0))


# --- defect 1: connections counted as associations before any A-ASSOCIATE-RQ -----------------------------------


def test_idle_sockets_of_one_address_leave_others_their_associations(listen: Callable[..., Settings]) -> None:
    settings = listen(
        dimse_max_associations=4, dimse_max_connections_per_address=3, dimse_association_request_timeout_seconds=3.0
    )
    too_many, timed_out = _refused("too_many_from_address"), _refused("request_timeout")
    idle = [_connect(settings.listener.port) for _ in range(8)]
    try:
        _assert_echo_in_time(settings.listener.port)
        assert len(_closed_among(idle, AT_ONCE_SECONDS)) == 5, "connections over the per-address limit stay open"
        assert len(_closed_among(idle, 3.5)) == 8, "silent connections outlive the request timeout"
    finally:
        for sock in idle:
            sock.close()
    assert _refused("too_many_from_address") - too_many == 5
    assert poll(lambda: _refused("request_timeout") - timed_out == 3, 1.0)


def test_slow_loris_is_closed_at_the_request_deadline(listen: Callable[..., Settings]) -> None:
    settings = listen(dimse_max_associations=1, dimse_association_request_timeout_seconds=1.0)
    closed_after: list[float] = []

    def trickle() -> None:
        """An A-ASSOCIATE-RQ header, then one byte every 0.25 s, until the listener closes the connection."""
        sock = _connect(settings.listener.port)
        started = time.monotonic()
        try:
            sock.sendall(struct.pack(">BBL", A_ASSOCIATE_RQ_TYPE, 0, 200))
            while time.monotonic() - started < 5.0:
                if _closed_within(sock, 0.25):
                    closed_after.append(time.monotonic() - started)
                    return
                sock.send(b"\x00")
        except OSError:
            closed_after.append(time.monotonic() - started)
        finally:
            sock.close()

    loris = threading.Thread(target=trickle)
    loris.start()
    time.sleep(0.3)  # the trickle has begun (not an assertion on nothing happening)
    _assert_echo_in_time(settings.listener.port)
    loris.join(timeout=10)
    assert closed_after, "the trickling connection was still open after 5 s"
    assert closed_after[0] < 1.0 + AT_ONCE_SECONDS


def test_burst_of_connections_does_not_refuse_later_associations(listen: Callable[..., Settings]) -> None:
    settings = listen(dimse_association_request_timeout_seconds=5.0)
    started = time.monotonic()
    burst = [_connect(settings.listener.port) for _ in range(50)]
    assert time.monotonic() - started < AT_ONCE_SECONDS, "the listen backlog dropped connections (SYN retries)"
    for sock in burst[11:]:
        sock.close()
    try:
        _assert_echo_in_time(settings.listener.port)
        _assert_echo_in_time(settings.listener.port)
    finally:
        for sock in burst[:11]:
            sock.close()


def test_max_associations_counts_established_associations_only(listen: Callable[..., Settings]) -> None:
    settings = listen(dimse_max_associations=1)
    first = _associate(settings.listener.port)
    assert first.is_established
    try:
        answer, _ = _echo(settings.listener.port)
        assert answer is None, "a second association was accepted over dimse_max_associations=1"
    finally:
        first.release()
    assert poll(lambda: _echo(settings.listener.port)[0] == status.SUCCESS, 3.0)


# --- defect 2: a PDU header declaring 4 GiB ------------------------------------------------------------------


def test_huge_pdu_header_before_association_is_refused_at_once(listen: Callable[..., Settings]) -> None:
    settings = listen(dimse_association_request_timeout_seconds=5.0)
    too_large = _refused("pdu_too_large")
    sock = _connect(settings.listener.port)
    try:
        sock.sendall(struct.pack(">BBL", A_ASSOCIATE_RQ_TYPE, 0, 0xFFFFFFFF) + b"\x00" * 64)
        assert _closed_within(sock, AT_ONCE_SECONDS), "a 4 GiB A-ASSOCIATE-RQ header held its connection"
        _assert_echo_in_time(settings.listener.port)
    finally:
        sock.close()
    assert _refused("pdu_too_large") - too_large == 1


def test_huge_pdu_header_in_an_association_aborts_it(listen: Callable[..., Settings]) -> None:
    settings = listen()
    too_large = _aborted("pdu_too_large")
    assoc = _associate(settings.listener.port)
    assert assoc.is_established
    raw = assoc.dul.socket.socket
    ceiling = max(settings.listener.max_pdu, PDU_CEILING_BYTES)
    raw.sendall(struct.pack(">BBL", P_DATA_TF_TYPE, 0, ceiling + 1) + b"\x00" * 64)
    assert poll(lambda: not assoc.is_established, AT_ONCE_SECONDS), "an over-long P-DATA-TF did not end it"
    assert poll(lambda: _aborted("pdu_too_large") - too_large == 1, AT_ONCE_SECONDS)
    _assert_echo_in_time(settings.listener.port)


# --- defect 3: the temp file of a C-STORE cut mid-way --------------------------------------------------------


def _large_image(tmp_path: Path) -> pydicom.Dataset:
    """A Secondary Capture of 4 MB of pixels (16 P-DATA-TF PDUs at the default maximum PDU)."""
    ds = pydicom.dcmread(write_demo_study(tmp_path / "demo")[1].path)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.Rows, ds.Columns, ds.BitsAllocated, ds.BitsStored, ds.HighBit = 1024, 2048, 16, 12, 11
    ds.SamplesPerPixel, ds.PixelRepresentation = 1, 0
    ds.PixelData = bytes(1024 * 2048 * 2)
    return ds


def test_pdus_of_the_largest_accepted_length_are_read(listen: Callable[..., Settings], tmp_path: Path) -> None:
    settings = listen()
    too_large = _aborted("pdu_too_large")
    assoc = _associate(settings.listener.port, source="127.0.0.1")
    assert assoc.is_established
    try:
        assert int(assoc.send_c_store(_large_image(tmp_path)).Status) == status.SUCCESS
    finally:
        assoc.release()
    assert _aborted("pdu_too_large") == too_large


def test_temp_file_of_a_cut_c_store_is_removed(
    listen: Callable[..., Settings], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = listen()
    receiving = Spool(settings.spool_dir).receiving_dir()
    monkeypatch.setattr(tempfile, "tempdir", str(receiving))  # as `predraft listen` does
    peer_aborts = _aborted("peer")
    seen_while_receiving: list[Path] = []
    p_data_sent: list[P_DATA_TF] = []

    def cut_after_a_few(event: evt.Event) -> None:
        """After the third P-DATA-TF: wait for the listener's temp file, then cut the connection."""
        if not isinstance(event.pdu, P_DATA_TF):
            return
        p_data_sent.append(event.pdu)
        if len(p_data_sent) == 3:
            poll(lambda: any(receiving.iterdir()), 2.0)
            seen_while_receiving.extend(receiving.iterdir())
            event.assoc.dul.socket.socket.shutdown(socket.SHUT_RDWR)

    assoc = _associate(settings.listener.port, source="127.0.0.1")
    assert assoc.is_established
    assoc.bind(evt.EVT_PDU_SENT, cut_after_a_few)
    assoc.send_c_store(_large_image(tmp_path))
    assert seen_while_receiving, "the listener wrote no temp file before the cut (the test proves nothing)"
    assert poll(lambda: not any(receiving.iterdir()), 3.0), f"left behind: {list(receiving.iterdir())}"
    assert poll(lambda: _aborted("peer") - peer_aborts >= 1, 1.0)
    assert list((settings.spool_dir / "incoming").rglob("*.dcm")) == []


# --- the metrics and the remaining settings ---------------------------------------------------------------


def test_address_not_allowed_is_counted(listen: Callable[..., Settings]) -> None:
    settings = listen(allowed_addresses=["127.0.0.1/32"])
    before = _refused("address_not_allowed")
    sock = _connect(settings.listener.port)
    try:
        assert _closed_within(sock, AT_ONCE_SECONDS)
    finally:
        sock.close()
    assert _refused("address_not_allowed") - before == 1
    _assert_echo_in_time(settings.listener.port)


def test_idle_association_is_aborted_and_counted(listen: Callable[..., Settings]) -> None:
    settings = listen(dimse_idle_timeout_seconds=0.5)
    idle = _aborted("idle_timeout")
    assoc = _associate(settings.listener.port, network_timeout=30)
    assert assoc.is_established
    assert poll(lambda: assoc.is_aborted, 3.0), "an idle association was not aborted by the listener"
    assert poll(lambda: _aborted("idle_timeout") - idle == 1, 1.0)


def test_an_idle_abort_keeps_its_reason_when_the_peer_then_closes_the_connection() -> None:
    """The peer, answering the listener's A-ABORT, closes the connection; the DUL thread then restarts the idle timer,
    possibly before EVT_ABORTED's handler asks why (CI saw "peer" so). The reactor's flag decides, not the timer."""
    restarted = SimpleNamespace(idle_timer_expired=lambda: False)
    assert abort_reason(SimpleNamespace(dul=restarted, network_timed_out=True)) == "idle_timeout"  # type: ignore[arg-type]
    assert abort_reason(SimpleNamespace(dul=restarted, network_timed_out=False)) == "peer"  # type: ignore[arg-type]


def _associations_open() -> float:
    return REGISTRY.get_sample_value("predraft_dimse_associations_open") or 0.0


def test_an_association_counts_as_open_until_its_last_handler_has_returned(
    listen: Callable[..., Settings], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sender that drops the association while its C-STORE is being handled: the connection is gone at once (the DUL
    thread fires EVT_CONN_CLOSE), but the association counts as open until the handler has returned."""
    entered, release = threading.Event(), threading.Event()
    handle = StoreHandler.__call__

    def held(self: StoreHandler, event: evt.Event) -> int:
        entered.set()
        release.wait(10)
        return handle(self, event)

    monkeypatch.setattr(StoreHandler, "__call__", held)
    settings = listen()
    before = _associations_open()
    assoc = _associate(settings.listener.port, source="127.0.0.1")
    assert assoc.is_established
    threading.Thread(target=assoc.send_c_store, args=(_large_image(tmp_path),), daemon=True).start()
    try:
        assert entered.wait(10), "the C-STORE never reached the handler"
        assoc.abort()
        time.sleep(1.0)  # EVT_CONN_CLOSE comes within milliseconds of the abort
        assert _associations_open() == before + 1
    finally:
        release.set()
    assert poll(lambda: _associations_open() == before, 5.0)


def test_peer_abort_is_counted(listen: Callable[..., Settings]) -> None:
    settings = listen()
    peer = _aborted("peer")
    assoc = _associate(settings.listener.port)
    assert assoc.is_established
    assoc.abort()
    assert poll(lambda: _aborted("peer") - peer == 1, 2.0)


# --- TLS: the handshake of a silent connection must not hold the acceptor -------------------------------------


def test_silent_connection_to_tls_listener_does_not_block_the_acceptor(
    listen: Callable[..., Settings], tmp_path: Path
) -> None:
    from tests.test_dimse_security import _certificate

    ca = _certificate(tmp_path, "test-ca")
    key, cert = _certificate(tmp_path, "server", ca)
    settings = listen(tls_certificate=cert, tls_private_key=key, dimse_association_request_timeout_seconds=2.0)
    silent = _connect(settings.listener.port)
    answers: list[int | None] = []

    def tls_echo() -> None:
        client = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca[1]))
        client.check_hostname = False
        ae = AE(ae_title=CALLER_AE)
        ae.add_requested_context(Verification)
        ae.acse_timeout = ae.network_timeout = 5
        assoc = ae.associate("127.0.0.1", settings.listener.port, ae_title="PREDRAFT", tls_args=(client, None))
        answers.append(int(assoc.send_c_echo().Status) if assoc.is_established else None)
        if assoc.is_established:
            assoc.release()

    try:
        time.sleep(0.2)  # the listener has accepted it (not an assertion on nothing happening)
        echo = threading.Thread(target=tls_echo, daemon=True)
        echo.start()
        echo.join(timeout=ECHO_BOUND_SECONDS)
        assert answers == [status.SUCCESS], "a silent TCP connection kept the TLS listener from accepting others"
        assert _closed_within(silent, 3.0), "the silent connection outlived the request timeout"
    finally:
        silent.close()  # frees an acceptor stuck in its handshake, so that the listener can stop


def test_invalid_pdu_in_an_association_is_counted_as_protocol_error(listen: Callable[..., Settings]) -> None:
    settings = listen()
    protocol_errors = _aborted("protocol_error")
    assoc = _associate(settings.listener.port)
    assert assoc.is_established
    assoc.dul.socket.socket.sendall(struct.pack(">BBL", UNKNOWN_PDU_TYPE, 0, 4) + b"\x00" * 4)
    assert poll(lambda: _aborted("protocol_error") - protocol_errors == 1, 2.0)


# --- review of issue 14: stalled PDUs, endless messages, PDUs a little over the negotiated maximum ------------

#: A PDU is aborted, once associated, only above max(dimse_max_pdu, this): some SCUs overshoot the maximum.
PDU_CEILING_BYTES = 16 * 1024 * 1024
#: The largest command set the listener receives.
COMMAND_SET_BOUND_BYTES = 64 * 1024
#: The smallest max_dataset_bytes the settings allow.
MIN_DATASET_BYTES = 1024 * 1024
#: How much of an endless data set a sender may have got into the kernel's buffers and the listener's reads
#: before its association is aborted (loopback buffers take a few MiB).
SENT_BEFORE_ABORT_BOUND_BYTES = 16 * 1024 * 1024
#: A PDV's message control header: bit 0 command (else data set), bit 1 last fragment.
PDV_DATA, PDV_COMMAND, PDV_LAST = 0x00, 0x01, 0x02
FRAGMENT_BYTES = 16 * 1024


def _p_data_tf(context_id: int, control: int, fragment: bytes) -> bytes:
    """One P-DATA-TF PDU holding one PDV item."""
    item = struct.pack(">LBB", len(fragment) + 2, context_id, control) + fragment
    return struct.pack(">BBL", P_DATA_TF_TYPE, 0, len(item)) + item


def _store_command(sop_class: str) -> bytes:
    """An encoded C-STORE-RQ command set (a data set follows) for a new instance of ``sop_class``."""
    from io import BytesIO

    from pydicom.uid import generate_uid
    from pynetdicom.dimse_messages import C_STORE_RQ
    from pynetdicom.dimse_primitives import C_STORE
    from pynetdicom.dsutils import encode

    request = C_STORE()
    request.MessageID, request.Priority = 1, 2
    request.AffectedSOPClassUID, request.AffectedSOPInstanceUID = sop_class, generate_uid()
    request.DataSet = BytesIO(b"\x00\x00")
    message = C_STORE_RQ()
    message.primitive_to_message(request)
    return bytes(encode(message.command_set, True, True))


def _context_id(assoc, sop_class: str) -> int:  # type: ignore[no-untyped-def]
    return next(cx.context_id for cx in assoc.accepted_contexts if cx.abstract_syntax == sop_class)


def _send_until_closed(sock: socket.socket, pdu: bytes, cap: int) -> int:
    """Send ``pdu`` over and over until the listener closes ``sock`` or ``cap`` bytes are sent; the bytes sent."""
    sent = 0
    sock.settimeout(5.0)
    try:
        while sent < cap:
            sock.sendall(pdu)
            sent += len(pdu)
    except OSError:
        pass
    return sent


def _small_image(tmp_path: Path) -> pydicom.Dataset:
    """A Secondary Capture of 8 KB of pixels."""
    ds = _large_image(tmp_path)
    ds.Rows, ds.Columns = 64, 64
    ds.PixelData = bytes(64 * 64 * 2)
    return ds


def test_association_stalled_mid_pdu_is_aborted_and_frees_its_slot(listen: Callable[..., Settings]) -> None:
    settings = listen(dimse_idle_timeout_seconds=0.5, dimse_max_associations=1, dimse_max_connections_per_address=1)
    idle = _aborted("idle_timeout")
    assoc = _associate(settings.listener.port, source="127.0.0.1", network_timeout=30)
    assert assoc.is_established
    raw = assoc.dul.socket.socket
    try:
        raw.sendall(struct.pack(">BBL", P_DATA_TF_TYPE, 0, 100))  # a header declaring 100 bytes, then nothing
        assert poll(lambda: not assoc.is_alive(), 0.5 + 1.5), "an association stalled mid-PDU was never ended"
        assert poll(lambda: _echo(settings.listener.port)[0] == status.SUCCESS, 3.0), "its slot was not freed"
    finally:
        with contextlib.suppress(OSError):  # frees a listener stuck on it, so that it can stop
            socket.socket.shutdown(raw, socket.SHUT_RDWR)
    assert _aborted("idle_timeout") - idle == 1


def test_association_trickling_a_pdu_is_aborted_after_the_idle_timeout(listen: Callable[..., Settings]) -> None:
    settings = listen(dimse_idle_timeout_seconds=0.5, dimse_max_associations=1, dimse_max_connections_per_address=1)
    assoc = _associate(settings.listener.port, source="127.0.0.1", network_timeout=30)
    assert assoc.is_established
    raw = assoc.dul.socket.socket
    started = time.monotonic()
    try:
        raw.sendall(struct.pack(">BBL", P_DATA_TF_TYPE, 0, 1000))
        while assoc.is_alive() and time.monotonic() - started < 8.0:
            raw.send(b"\x00")  # one byte every 0.2 s: each read of the socket is short of the idle timeout
            time.sleep(0.2)
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            socket.socket.shutdown(raw, socket.SHUT_RDWR)
    assert time.monotonic() - started < 5.0, "an association trickling one PDU outlived the idle timeout"
    assert poll(lambda: _echo(settings.listener.port)[0] == status.SUCCESS, 3.0), "its slot was not freed"


def test_data_set_past_max_dataset_bytes_is_aborted_while_it_arrives(
    listen: Callable[..., Settings], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = listen(max_dataset_bytes=MIN_DATASET_BYTES)
    receiving = Spool(settings.spool_dir).receiving_dir()
    monkeypatch.setattr(tempfile, "tempdir", str(receiving))  # as `predraft listen` does
    too_large = _aborted("message_too_large")
    assoc = _associate(settings.listener.port, source="127.0.0.1")
    assert assoc.is_established
    context_id = _context_id(assoc, SecondaryCaptureImageStorage)
    raw = assoc.dul.socket.socket
    raw.sendall(_p_data_tf(context_id, PDV_COMMAND | PDV_LAST, _store_command(SecondaryCaptureImageStorage)))
    sent = _send_until_closed(
        raw, _p_data_tf(context_id, PDV_DATA, b"\x00" * FRAGMENT_BYTES), 4 * SENT_BEFORE_ABORT_BOUND_BYTES
    )
    assert sent < SENT_BEFORE_ABORT_BOUND_BYTES, f"a data set went on for {sent} bytes without an abort"
    assert poll(lambda: _aborted("message_too_large") - too_large == 1, AT_ONCE_SECONDS)
    assert poll(lambda: not any(receiving.iterdir()), 3.0), f"left behind: {list(receiving.iterdir())}"
    again = _associate(settings.listener.port, source="127.0.0.1")
    try:
        assert int(again.send_c_store(_small_image(tmp_path)).Status) == status.SUCCESS
    finally:
        again.release()


def test_command_set_over_64_kib_is_aborted(listen: Callable[..., Settings]) -> None:
    settings = listen()
    too_large = _aborted("message_too_large")
    assoc = _associate(settings.listener.port)
    assert assoc.is_established
    raw = assoc.dul.socket.socket
    fragment = _p_data_tf(_context_id(assoc, Verification), PDV_COMMAND, b"\x00" * FRAGMENT_BYTES)
    sent = _send_until_closed(raw, fragment, 16 * COMMAND_SET_BOUND_BYTES)
    assert poll(lambda: not assoc.is_alive(), AT_ONCE_SECONDS), f"a command set of {sent} bytes was not aborted"
    assert poll(lambda: _aborted("message_too_large") - too_large == 1, AT_ONCE_SECONDS)
    _assert_echo_in_time(settings.listener.port)


def test_pdus_a_little_over_the_negotiated_maximum_are_read(listen: Callable[..., Settings], tmp_path: Path) -> None:
    from pynetdicom.pdu_primitives import MaximumLengthNotification

    settings = listen()
    too_large = _aborted("pdu_too_large")
    assoc = _associate(settings.listener.port, source="127.0.0.1")
    assert assoc.is_established
    for item in assoc.acceptor.user_information:  # the requestor now sends PDUs 1 KiB over the listener's maximum
        if isinstance(item, MaximumLengthNotification):
            item.maximum_length_received = settings.listener.max_pdu + 1024
    try:
        answer = assoc.send_c_store(_large_image(tmp_path))
    finally:
        if assoc.is_established:
            assoc.release()
    assert answer.get("Status") == status.SUCCESS, "PDUs 1 KiB over the negotiated maximum ended the association"
    assert _aborted("pdu_too_large") == too_large


def test_message_tally_counts_each_set_until_its_last_fragment() -> None:
    from predraft.listener.connections import MessageTally

    def items(*pdvs: tuple[int, int]) -> bytes:
        """The body of a P-DATA-TF PDU: one PDV item per (control, fragment length)."""
        return b"".join(struct.pack(">LBB", size + 2, 1, control) + b"\x00" * size for control, size in pdvs)

    tally = MessageTally()
    assert tally.add(items((PDV_COMMAND, 100), (PDV_COMMAND | PDV_LAST, 50), (PDV_DATA, 1000))) == (150, 1000)
    assert tally.add(items((PDV_DATA | PDV_LAST, 500))) == (0, 1500)
    assert (tally.command_bytes, tally.data_bytes) == (0, 0)
    assert tally.add(items((PDV_DATA, 10))[:-1]) == (0, 0), "a malformed item was counted"


def test_an_association_whose_thread_never_started_is_forgotten() -> None:
    """If pynetdicom links an association to its connection but cannot start its thread (thread exhaustion), the
    table forgets the connection once it is closed: before, its entry stayed for ever, one per such connection."""
    from pynetdicom.association import Association

    from predraft.listener.connections import ConnectionLimits, ConnectionTable

    now = [100.0]
    table = ConnectionTable(
        ConnectionLimits(
            max_associations=1, max_per_address=1, request_timeout=1.0, max_pdu_bytes=65536, max_data_set_bytes=1 << 20
        ),
        clock=lambda: now[0],
    )
    first, second = socket.socket(), socket.socket()
    try:
        assert table.open(first, "127.0.0.9")
        table._connections[first].assoc = Association(AE(), "acceptor")  # linked, its thread never started
        table.forget_socket(first)
        now[0] += 60.0
        table.sweep()
        assert first not in table._connections
        assert table.open(second, "127.0.0.9")  # and its address has its place
    finally:
        first.close()
        second.close()
