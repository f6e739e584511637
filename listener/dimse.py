"""The DIMSE listener: a pynetdicom SCP for C-ECHO and C-STORE.

Accepted: CR, DX For Presentation, Secondary Capture and structured reports, in every transfer syntax
pynetdicom knows, lossless compressed ones preferred (see PREFERRED_TRANSFER_SYNTAXES). DX For Processing is accepted at
association and refused per instance with "SOP class not supported", so the sender sees why.

The C-STORE handler is thin: it hands the encoded file to :class:`predraft.listener.receive.Receiver`, which
spools (fsync, atomic rename) and records it, and maps the outcome to a named status. It never decodes
pixels; an unexpected error becomes a failure status, not a dead association.

No sender can lock the others out (:mod:`predraft.listener.connections`): connections are bounded per source
address, must deliver their whole A-ASSOCIATE-RQ within a deadline, only established associations count
against dimse_max_associations, an over-long PDU aborts its connection before it is read, so does a DIMSE
message over its bound while it arrives, an association stalled mid-PDU is ended after the idle timeout, the
TLS handshake happens on the connection's own thread, and the temp file of a C-STORE cut mid-way is deleted.

Several listener processes may serve one port (:mod:`predraft.listener.processes`): they accept from one
listening socket that their supervisor made (``listening``), the one with the fewest connections open taking
the next (``turns``), and their association slots are counted together
(:class:`predraft.listener.connections.SharedSlots`).
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, _config, evt
from pynetdicom.association import Association
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]  # pynetdicom makes it at import
from pynetdicom.transport import ThreadedAssociationServer
from sqlalchemy.orm import configure_mappers

from predraft.core import metrics
from predraft.core.settings import Settings
from predraft.listener import status, writeback
from predraft.listener.connections import (
    LISTEN_BACKLOG,
    AcceptTurns,
    AssociationSlots,
    ConnectionLimits,
    ConnectionTable,
    abort_reason,
    note_protocol_error,
)
from predraft.listener.reactors import PromptAssociation
from predraft.listener.receive import Receiver, ReceiveStatus
from predraft.models.taxonomy import DX_FOR_PROCESSING, STORABLE_SOP_CLASSES

log = logging.getLogger(__name__)

# pynetdicom logs C-STORE request identifiers (patient name and ID) unless told not to.
_config.LOG_REQUEST_IDENTIFIERS = False
_config.LOG_RESPONSE_IDENTIFIERS = False
# Received data sets go straight to a file in tempfile's folder as their fragments arrive (no copy of a
# 7.5 MB radiograph held and re-assembled in memory); `predraft listen` points that folder at the spool's
# file system, so the file is then renamed into the spool rather than written again.
_config.STORE_RECV_CHUNKED_DATASET = True
# ...into files whose writeback to disk starts while they arrive, so the fsync before the answer is short.
writeback.install()

#: Lossless compressed syntaxes come first, so a file in one of them is accepted as it was sent.
_LOSSLESS_COMPRESSED = (
    "1.2.840.10008.1.2.4.70",  # JPEG Lossless, SV1
    "1.2.840.10008.1.2.4.57",  # JPEG Lossless
    "1.2.840.10008.1.2.4.80",  # JPEG-LS Lossless
    "1.2.840.10008.1.2.4.90",  # JPEG 2000 Lossless
    "1.2.840.10008.1.2.4.201",  # HTJ2K Lossless
    "1.2.840.10008.1.2.4.202",  # HTJ2K Lossless RPCL
    "1.2.840.10008.1.2.5",  # RLE Lossless
)
#: Then uncompressed, explicit VR first.
_UNCOMPRESSED = (
    "1.2.840.10008.1.2.1",  # Explicit VR Little Endian
    "1.2.840.10008.1.2.1.99",  # Deflated Explicit VR Little Endian
    "1.2.840.10008.1.2",  # Implicit VR Little Endian
    "1.2.840.10008.1.2.2",  # Explicit VR Big Endian
)
#: pynetdicom accepts, for each proposed context, the first syntax of *this* list that the sender
#: proposed. Lossy syntaxes come last: an image the sender also offers uncompressed is never
#: lossy-compressed on its way in, while a file that exists only in a lossy syntax is accepted as it is.
PREFERRED_TRANSFER_SYNTAXES = (
    *_LOSSLESS_COMPRESSED,
    *_UNCOMPRESSED,
    *(uid for uid in ALL_TRANSFER_SYNTAXES if uid not in (*_LOSSLESS_COMPRESSED, *_UNCOMPRESSED)),
)

#: ae.maximum_associations, so high that pynetdicom's own count (of connection threads) never refuses.
PYNETDICOM_THREAD_CAP = 1_000_000

STATUS_OF = {
    ReceiveStatus.STORED: status.SUCCESS,
    ReceiveStatus.DUPLICATE: status.SUCCESS,
    ReceiveStatus.CANNOT_UNDERSTAND: status.CANNOT_UNDERSTAND,
    ReceiveStatus.SOP_CLASS_MISMATCH: status.DATASET_DOES_NOT_MATCH_SOP_CLASS,
    ReceiveStatus.SOP_CLASS_NOT_SUPPORTED: status.SOP_CLASS_NOT_SUPPORTED,
    ReceiveStatus.OUT_OF_RESOURCES: status.OUT_OF_RESOURCES,
    ReceiveStatus.PROCESSING_FAILURE: status.PROCESSING_FAILURE,
}


@dataclass
class StoreHandler:
    """Handles EVT_C_STORE: receive (spool, record), then answer."""

    receiver: Receiver

    def __call__(self, event: evt.Event) -> int:
        calling_ae = str(event.assoc.requestor.ae_title).strip()
        outcome = self.receiver.receive_file(
            event.dataset_path, source=calling_ae, expected_sop_class=str(event.request.AffectedSOPClassUID)
        )
        metrics.record_received("dimse", outcome.status.value, outcome.size)
        return STATUS_OF[outcome.status]


def log_rejected(event: evt.Event) -> None:
    """EVT_REJECTED: name the caller (AE title and address; no patient data) and why."""
    metrics.ASSOCIATIONS.labels(outcome="rejected").inc()
    requestor = event.assoc.requestor
    log.warning(
        "rejected an association from %s at %s: calling AE title not in allowed_calling_aes or called AE title not %s",
        str(requestor.ae_title).strip(),
        requestor.address,
        str(event.assoc.acceptor.ae_title).strip(),
    )


def log_aborted(event: evt.Event) -> None:
    """EVT_ABORTED: an association dropped before release; what was fully received is kept."""
    reason = abort_reason(event.assoc)
    metrics.ASSOCIATIONS.labels(outcome="aborted").inc()
    metrics.ASSOCIATIONS_ABORTED.labels(reason=reason).inc()
    requestor = event.assoc.requestor
    log.warning("association from %s at %s aborted (%s)", str(requestor.ae_title).strip(), requestor.address, reason)


def count_established(event: evt.Event) -> None:
    """EVT_ESTABLISHED: one more open association, until its thread ends however it ends (release, abort, drop),
    after its last C-STORE handler has returned (every acceptor association is a :class:`PromptAssociation`)."""
    metrics.ASSOCIATIONS.labels(outcome="established").inc()
    cast(PromptAssociation, event.assoc).when_ended(count_closed)  # on this thread: it cannot end before the inc
    metrics.ASSOCIATIONS_OPEN.inc()


def count_closed(_: Association) -> None:
    """An established association's thread has ended."""
    metrics.ASSOCIATIONS_OPEN.dec()


class ListenerServer(ThreadedAssociationServer):
    """pynetdicom's threaded server, plus TCP_NODELAY on every connection, a source-address check and the
    connection bounds of :class:`predraft.listener.connections.ConnectionTable` (per address, request deadline,
    established associations)."""

    allowed_networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    connections: ConnectionTable
    #: The listen backlog (socketserver's default is 5: a burst of connections made the kernel drop the
    #: SYNs of everyone else, who then waited a second or more for a retry).
    request_queue_size = LISTEN_BACKLOG
    #: The socket that the supervisor of several listener processes bound and shares between them (None: this
    #: server binds its own). Set non-blocking: the process that loses the race for a connection
    #: gets nothing to accept, rather than waiting for the next.
    listening: socket.socket | None = None
    #: Which of the processes sharing ``listening`` accepts the next connection (None: this one, always).
    turns: AcceptTurns | None = None

    def server_bind(self) -> None:
        """Bind a socket of its own, or take the shared one, already bound (socketserver's server_activate then
        listens on it: the first listener process to do so opens the port; again is harmless)."""
        if self.listening is None:
            super().server_bind()
            return
        assert self.socket is not None  # socketserver made one in __init__: the shared one replaces it
        self.socket.close()
        self.socket = self.listening
        self.server_address = self.socket.getsockname()

    def server_close(self) -> None:
        """Close this process's descriptor of a shared socket without shutting it down (a shutdown would stop it
        listening for every process); a socket of its own as pynetdicom does."""
        if self.listening is None:
            super().server_close()
        else:
            assert self.socket is not None
            self.socket.close()

    def _handle_request_noblock(self) -> None:
        """The acceptor found a connection waiting: accept it when it is this process's turn (see
        :class:`predraft.listener.connections.AcceptTurns`), else leave it to a sibling for a moment."""
        if self.turns is not None and not self.turns.mine():
            time.sleep(self.turns.PAUSE_SECONDS)
            return
        super()._handle_request_noblock()  # type: ignore[misc]  # socketserver's, typeshed calls it private

    def verify_request(self, request: socket.socket | tuple, client_address: tuple) -> bool:
        """Admit a connection (False: the server closes it at once): its address must be allowed and
        have fewer than dimse_max_connections_per_address open."""
        if not self._address_allowed(client_address[0]):
            metrics.CONNECTIONS_REFUSED.labels(reason="address_not_allowed").inc()
            log.warning("refused a DIMSE connection from %s: not in allowed_addresses", client_address[0])
            return False
        return self.connections.open(request, client_address[0])  # type: ignore[arg-type]  # TCP: a socket

    def _address_allowed(self, host: str) -> bool:
        if not self.allowed_networks:
            return True
        address = ipaddress.ip_address(host)
        return any(address in network for network in self.allowed_networks)

    def service_actions(self) -> None:
        """Each poll of the acceptor (every half second or connection): also sweep the connections."""
        super().service_actions()
        self.connections.sweep()

    def shutdown_request(self, request: socket.socket | tuple) -> None:
        self.connections.forget_socket(request)  # type: ignore[arg-type]  # TCP: a socket, never UDP's tuple
        super().shutdown_request(request)

    def get_request(self) -> tuple[socket.socket, tuple]:
        """Accept a connection, as pynetdicom's get_request does, but never wait on the peer here: the TLS
        handshake is left to the connection's first read, on its own thread and within its request
        deadline (pynetdicom's handshakes in this, the one acceptor thread, so a silent peer stopped all)."""
        assert self.socket is not None  # socketserver binds it in __init__
        connection, address = self.socket.accept()
        tune_accepted_socket(connection, self.ae.network_timeout)
        if self.ssl_context:
            connection = self.ssl_context.wrap_socket(connection, server_side=True, do_handshake_on_connect=False)
        return connection, address


def tune_accepted_socket(connection: socket.socket, idle_timeout: float | None) -> None:
    """TCP_NODELAY; a read or write that waits ``idle_timeout`` seconds (dimse_idle_timeout_seconds) for
    the peer raises (pynetdicom's DUL then takes the connection as closed: accept() returns a socket with no
    timeout, and a peer that stopped mid-PDU held its association for ever); TCP keep-alive, probing an idle
    peer after as long, so that a peer that lost power is found even between reads. A TLS socket wrapped
    around it keeps the timeout, its handshake included."""
    options = [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1), (socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)]
    if idle_timeout is not None and hasattr(socket, "TCP_KEEPIDLE"):
        probe_after = max(1, int(idle_timeout))
        options += [
            (socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, probe_after),
            (socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, probe_after),
        ]
    for level, option, value in options:
        with contextlib.suppress(OSError):
            connection.setsockopt(level, option, value)
    connection.settimeout(idle_timeout)


def make_ae(settings: Settings) -> AE:
    ae = AE(ae_title=settings.listener.ae_title)
    ae.add_supported_context(Verification)
    for sop_class in (*STORABLE_SOP_CLASSES, DX_FOR_PROCESSING):
        ae.add_supported_context(sop_class, list(PREFERRED_TRANSFER_SYNTAXES))
    if settings.listener.allowed_calling_aes:
        ae.require_calling_aet = settings.listener.allowed_calling_aes
    ae.require_called_aet = settings.listener.require_called_ae_title
    # pynetdicom counts every connection's thread against maximum_associations, before any A-ASSOCIATE-RQ
    # and for up to acse_timeout after a connection closed; ConnectionTable counts established ones instead.
    ae.maximum_associations = PYNETDICOM_THREAD_CAP
    ae.maximum_pdu_size = settings.listener.max_pdu
    ae.network_timeout = settings.listener.idle_timeout_seconds
    ae.dimse_timeout = 120
    # How long pynetdicom waits for the A-ASSOCIATE-RQ (ConnectionTable shuts a late connection first, even
    # one trickling bytes) and for a rejected or aborted peer to close.
    ae.acse_timeout = settings.listener.association_request_timeout_seconds
    return ae


def make_ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """A server TLS context from the settings, or None when TLS is off. Client certificates are
    required (and checked against tls_client_ca) when tls_client_ca is set."""
    if not settings.listener.tls_enabled:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(settings.listener.tls_certificate), str(settings.listener.tls_private_key))
    if settings.listener.tls_client_ca is not None:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(str(settings.listener.tls_client_ca))
    return context


def make_server(
    settings: Settings,
    store: Callable[[evt.Event], int],
    *,
    slots: AssociationSlots | None = None,
    listening: socket.socket | None = None,
    turns: AcceptTurns | None = None,
) -> ThreadedAssociationServer:
    """The SCP's server, not yet serving: predraft's AE, its connection bounds (:mod:`predraft.listener.connections`),
    source-address check, TLS and event handlers, with ``store`` answering each C-STORE. ``slots``: the
    association and connection counts shared with the other listener processes (None: this process's own);
    ``listening`` and ``turns``: the socket they share and whose turn it is to accept (None: its own socket,
    bound to the configured host and port)."""
    ae = make_ae(settings)
    connections = ConnectionTable(ConnectionLimits.from_settings(settings), slots=slots)
    server_class = type(
        "ConfiguredListenerServer",
        (ListenerServer,),
        {
            "allowed_networks": tuple(
                ipaddress.ip_network(a, strict=False) for a in settings.listener.allowed_addresses
            ),
            "connections": connections,
            "listening": listening,
            "turns": turns,
        },
    )
    server = ae.make_server(
        (settings.listener.host, settings.listener.port),
        evt_handlers=[
            (evt.EVT_C_STORE, store),
            (evt.EVT_REJECTED, log_rejected),
            (evt.EVT_ABORTED, log_aborted),
            (evt.EVT_ACSE_RECV, note_protocol_error),
            (evt.EVT_ESTABLISHED, count_established),
            *connections.event_handlers(),
        ],
        ssl_context=make_ssl_context(settings),
        server_class=server_class,
    )
    ae._servers.append(server)  # as AE.start_server does, so server.shutdown() can deregister it
    return server


def start_dimse_server(
    settings: Settings,
    *,
    slots: AssociationSlots | None = None,
    listening: socket.socket | None = None,
    turns: AcceptTurns | None = None,
    remove_stale_partials: bool = True,
) -> ThreadedAssociationServer:
    """Start the SCP in background threads and return its server (``.server_address``, ``.shutdown()``).

    ``remove_stale_partials``: first delete the partial files that dead writers left in the spool. A listener
    process of ``predraft listen`` passes False: its supervisor does that before it starts any of them and
    after one dies (:mod:`predraft.listener.processes`). ``slots``, ``listening`` and ``turns``: see
    :func:`make_server`."""
    receiver = Receiver.from_settings(settings)
    configure_mappers()  # once, here, rather than in the first C-STORE's wait (about 70 ms)
    if remove_stale_partials:
        removed = receiver.spool.remove_stale_partials()
        if removed:
            log.warning("removed %d partial file(s) left in the spool by a process that died", removed)
    server = make_server(settings, StoreHandler(receiver), slots=slots, listening=listening, turns=turns)
    threading.Thread(target=server.serve_forever, name="dimse-acceptor", daemon=True).start()
    return server
