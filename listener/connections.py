"""Bookkeeping of the DIMSE listener's connections, so that no sender can lock the others out.

pynetdicom 3.0 counts every connection as an association from the moment it is accepted (one
``Association`` thread each, checked against ``ae.maximum_associations``), reads a PDU of whatever length
its header declares, and waits for a trickling A-ASSOCIATE-RQ as long as it trickles. :class:`ConnectionTable`
replaces that with:

- at most ``dimse_max_connections_per_address`` open connections from one source address (associated or
  not); one more is closed at once;
- ``dimse_association_request_timeout_seconds`` from a connection's opening until its whole A-ASSOCIATE-RQ is
  in, then the connection is shut (the periodic :meth:`ConnectionTable.sweep`);
- at most ``dimse_max_associations`` associations past their A-ASSOCIATE-RQ, from all callers together and,
  with several listener processes, in all of them together (:class:`SharedSlots`; checked on EVT_REQUESTED;
  one more is rejected "transient, local limit exceeded");
- a PDU whose declared length is over the bound is not read: the connection is aborted at once
  (:class:`BoundedAssociationSocket`); once associated the bound is generous (some SCUs overshoot the
  negotiated maximum PDU), and the DIMSE message being received is bounded instead: its command set to
  MAX_COMMAND_SET_BYTES, its data set to max_dataset_bytes (plus DATASET_SLACK_BYTES), counted as its
  fragments arrive (:class:`MessageTally`);
- an established association whose peer has sent no whole PDU for dimse_idle_timeout_seconds is aborted
  by pynetdicom; if it is still there IDLE_GRACE_SECONDS later (its peer stalled or trickles mid-PDU, so
  pynetdicom's reader never returns) the sweep shuts its socket. The accepted socket's own timeout (set in
  :mod:`predraft.listener.dimse`) ends a read that waits that long for a single byte first;
- when an association's threads have ended, however it ended, the files pynetdicom was receiving its
  C-STOREs into and that no handler will take are deleted (:func:`remove_received_temp_files`).

It relies on these pynetdicom 3.0 internals, each covered by tests/test_dimse_limits.py:
``DULServiceProvider._read_pdu_data`` reads a PDU as ``socket.recv(6)`` then ``socket.recv(length)``
(the second only for a known PDU type), and treats an OSError (a timeout included) or a short read as the
connection closed; ``DULServiceProvider._idle_timer.remaining`` goes negative once the idle timeout is past;
``DIMSEServiceProvider.message`` holds the C-STORE being received and its ``_data_set_file``, the queued
complete ones in ``msg_queue`` carry ``_dataset_file``.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import mmap
import os
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, cast

from pynetdicom import evt
from pynetdicom.pdu import A_ABORT_RQ
from pynetdicom.pdu_primitives import A_P_ABORT
from pynetdicom.transport import AssociationSocket

from predraft.core import metrics
from predraft.core.settings import MAX_LISTENER_PROCESSES, Settings
from predraft.listener.reactors import PromptDUL, make_prompt

if TYPE_CHECKING:
    from pynetdicom.association import Association

log = logging.getLogger(__name__)

#: The largest A-ASSOCIATE-RQ (or anything sent before one) predraft reads: 128 presentation contexts with
#: a dozen transfer syntaxes each stay well under it.
MAX_ASSOCIATE_RQ_BYTES = 64 * 1024
#: With dimse_max_pdu 0 ("unlimited"), a PDU may hold a whole data set: up to max_dataset_bytes plus this.
UNLIMITED_PDU_OVERHEAD_BYTES = 64 * 1024
#: Once associated, a PDU is refused only above max(the listener's maximum PDU, this): some SCUs send PDUs a
#: little over the negotiated maximum (counting the PDV header in it, say), and pynetdicom reads them.
ESTABLISHED_PDU_CEILING_BYTES = 16 * 1024 * 1024
#: The largest DIMSE command set received (a C-STORE-RQ's takes a few hundred bytes).
MAX_COMMAND_SET_BYTES = 64 * 1024
#: A data set is aborted once its fragments pass max_dataset_bytes plus this; the receiver checks the exact
#: bound (on the file, with its File Meta Information) once the data set is in.
DATASET_SLACK_BYTES = 64 * 1024
#: The sweep shuts an aborted association whose idle timeout passed this long ago and that is still there.
IDLE_GRACE_SECONDS = 2.0
#: A PDU's header: type (1), reserved (1), length (4, big endian).
PDU_HEADER_BYTES = 6
P_DATA_TF_TYPE = 0x04
#: The PDU types pynetdicom reads the body of (it refuses others after their header).
KNOWN_PDU_TYPES = frozenset(range(0x01, 0x08))
#: A PDV item's header: item length (4, big endian; counts the next two bytes and the fragment), presentation
#: context ID (1), message control header (1).
PDV_ITEM_HEADER = struct.Struct(">LBB")
PDV_LENGTH_BYTES = 4
PDV_COMMAND = 0x01  # message control header bit 0: a command fragment (else a data set fragment)
PDV_LAST_FRAGMENT = 0x02  # bit 1: the last fragment of its command set or data set
#: A PDU is read into a buffer of at most this many bytes at first, doubled as its bytes arrive: a peer that
#: declares a long PDU and stalls holds no more memory than it sent (twice, at most, past this).
FIRST_READ_BYTES = 1024 * 1024
#: A-ASSOCIATE-RJ: rejected transient, by the service provider (presentation related), local limit exceeded.
REJECT_LOCAL_LIMIT = (0x02, 0x03, 0x02)
#: A-ABORT source: the service provider; reason: invalid PDU parameter value.
ABORT_SOURCE_PROVIDER = 0x02
ABORT_INVALID_PDU_PARAMETER = 0x06


@dataclass(frozen=True)
class ConnectionLimits:
    """The bounds of :class:`ConnectionTable`, from the settings."""

    max_associations: int
    max_per_address: int
    request_timeout: float
    max_pdu_bytes: int  # the largest declared PDU length read once the A-ASSOCIATE-RQ is in
    max_data_set_bytes: int  # the most data set fragment bytes of one DIMSE message
    max_command_set_bytes: int = MAX_COMMAND_SET_BYTES

    @classmethod
    def from_settings(cls, settings: Settings) -> ConnectionLimits:
        max_pdu = settings.listener.max_pdu or settings.listener.max_dataset_bytes + UNLIMITED_PDU_OVERHEAD_BYTES
        return cls(
            max_associations=settings.listener.max_associations,
            max_per_address=settings.listener.max_connections_per_address,
            request_timeout=settings.listener.association_request_timeout_seconds,
            max_pdu_bytes=max(max_pdu, ESTABLISHED_PDU_CEILING_BYTES),
            max_data_set_bytes=settings.listener.max_dataset_bytes + DATASET_SLACK_BYTES,
        )


class AssociationSlots(Protocol):
    """The count of established associations that max_associations bounds. :class:`ConnectionTable` calls it
    under its own lock, so an implementation need only exclude other processes."""

    def take(self, limit: int) -> bool:
        """Take a slot if fewer than ``limit`` are taken; True if taken."""

    def give_back(self) -> None:
        """Give one slot taken by :meth:`take` back."""

    def connection_opened(self) -> None:
        """One more open connection in this process (what :class:`AcceptTurns` balances)."""

    def connection_closed(self) -> None:
        """One connection fewer, closed however it closed."""


class LocalSlots:
    """The slots of one process alone (a listener in a test, or a tool's)."""

    def __init__(self) -> None:
        self.taken = 0

    def take(self, limit: int) -> bool:
        if self.taken >= limit:
            return False
        self.taken += 1
        return True

    def give_back(self) -> None:
        self.taken = max(0, self.taken - 1)

    def connection_opened(self) -> None:
        """Nothing to count: one process alone takes every connection."""

    def connection_closed(self) -> None:
        """Nothing to count."""


#: Connections the kernel queues for the acceptor, which takes each in well under a millisecond.
LISTEN_BACKLOG = 128
#: One signed 64-bit count per listener process index.
_SLOT_COUNT = struct.Struct("<q")


class SharedSlots:
    """The slots of every listener process on one port, so that max_associations holds for them together.

    A small file (``SLOT_FILE_BYTES``) mapped into each process holds two counts per process index: the slots it
    holds and the connections it has open (for :class:`AcceptTurns`). A process only changes its own counts,
    and takes a slot only while it holds an exclusive ``flock`` on the file and the sum of all slot counts is
    under the limit; its connection count is written without the lock (one writer, read by the others as a
    hint). An ``flock`` (not a multiprocessing semaphore) because the kernel
    releases it when its holder dies: a listener process SIGKILLed in the middle of :meth:`take` leaves no
    lock held, and the others keep taking associations. The slots a dead process held are given back by its
    supervisor (:meth:`reset`) before the process of that index is started again.

    Each process opens the file itself (:meth:`attach`): an ``flock`` belongs to an open file description, so
    the processes exclude each other through it, and the threads of one process are excluded by
    :class:`ConnectionTable`'s own lock.
    """

    SLOT_FILE_BYTES = _SLOT_COUNT.size * MAX_LISTENER_PROCESSES * 2  # the slot counts, then the connection counts

    def __init__(self, path: Path, index: int) -> None:
        if not 0 <= index < MAX_LISTENER_PROCESSES:
            raise ValueError(f"index {index} is not a listener process index (0 to {MAX_LISTENER_PROCESSES - 1})")
        self.path = Path(path)
        self.index = index
        self._fd = os.open(self.path, os.O_RDWR)
        self._map = mmap.mmap(self._fd, self.SLOT_FILE_BYTES)

    @classmethod
    def create(cls, path: Path) -> Path:
        """Create (or empty) the slot file at ``path``, every count 0; the supervisor does it before it starts
        any listener process."""
        path = Path(path)
        path.write_bytes(bytes(cls.SLOT_FILE_BYTES))
        return path

    @classmethod
    def attach(cls, path: Path, index: int) -> SharedSlots:
        """The slots as seen from the listener process ``index``."""
        return cls(path, index)

    @contextlib.contextmanager
    def _locked(self) -> Any:
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def _count(self, index: int) -> int:
        return int(_SLOT_COUNT.unpack_from(self._map, index * _SLOT_COUNT.size)[0])

    def _set(self, index: int, value: int) -> None:
        _SLOT_COUNT.pack_into(self._map, index * _SLOT_COUNT.size, value)

    def connections(self, index: int) -> int:
        """The connections the listener process ``index`` has open."""
        return self._count(MAX_LISTENER_PROCESSES + index)

    def _set_connections(self, index: int, value: int) -> None:
        self._set(MAX_LISTENER_PROCESSES + index, value)

    def connection_opened(self) -> None:
        self._set_connections(self.index, self.connections(self.index) + 1)

    def connection_closed(self) -> None:
        self._set_connections(self.index, max(0, self.connections(self.index) - 1))

    def fewest_connections(self, processes: int) -> bool:
        """Whether this process has no more connections open than any other of the first ``processes``."""
        mine = self.connections(self.index)
        return all(mine <= self.connections(other) for other in range(processes) if other != self.index)

    def total(self) -> int:
        """Slots taken in every process together."""
        return sum(self._count(index) for index in range(MAX_LISTENER_PROCESSES))

    def take(self, limit: int) -> bool:
        with self._locked():
            if self.total() >= limit:
                return False
            self._set(self.index, self._count(self.index) + 1)
            return True

    def give_back(self) -> None:
        with self._locked():
            self._set(self.index, max(0, self._count(self.index) - 1))

    def reset(self, index: int) -> None:
        """Give back every slot the process ``index`` held, and forget its connections: it died, however it died."""
        with self._locked():
            self._set(index, 0)
            self._set_connections(index, 0)

    def close(self) -> None:
        self._map.close()
        os.close(self._fd)


class AcceptTurns:
    """Whose turn it is to accept the connection waiting on the listening socket that several listener processes
    share (:mod:`predraft.listener.processes`): the process with the fewest connections open, so that four
    associations arriving together are held two and two by two processes rather than as chance deals them.

    A process whose turn it is not leaves the connection to the others (the caller pauses PAUSE_SECONDS and looks
    again), but for at most MAX_DEFER_SECONDS in a row: a busy or just-restarted sibling that does not take it
    by then does not hold a sender up. Ties take it together; the kernel gives it to one of them."""

    #: How long a process leaves a waiting connection to another before it looks again.
    PAUSE_SECONDS = 0.0005
    #: How long a process leaves waiting connections to the others, in a row, before it takes one anyway.
    MAX_DEFER_SECONDS = 0.05
    #: A gap this long since the last time a process left a connection starts a new row.
    NEW_ROW_SECONDS = 0.005

    def __init__(self, slots: SharedSlots, processes: int, clock: Callable[[], float] = time.monotonic) -> None:
        """Raises ValueError unless ``processes`` is between 1 and MAX_LISTENER_PROCESSES."""
        if not 1 <= processes <= MAX_LISTENER_PROCESSES:
            raise ValueError(f"processes {processes} is not between 1 and {MAX_LISTENER_PROCESSES}")
        self.slots = slots
        self.processes = processes
        self._clock = clock
        self._row_started: float | None = None
        self._last_left = float("-inf")

    def mine(self) -> bool:
        """Whether this process should accept the waiting connection now."""
        if self.slots.fewest_connections(self.processes):
            self._row_started = None
            return True
        now = self._clock()
        if self._row_started is None or now - self._last_left > self.NEW_ROW_SECONDS:
            self._row_started = now
        self._last_left = now
        if now - self._row_started >= self.MAX_DEFER_SECONDS:
            self._row_started = None
            return True
        return False


@dataclass(eq=False)
class Connection:
    """One accepted TCP connection, from its acceptance until its association's threads have ended."""

    address: str
    sock: socket.socket
    deadline: float  # monotonic time by which the whole A-ASSOCIATE-RQ must be in
    assoc: Association | None = None
    requested: bool = False  # the whole A-ASSOCIATE-RQ is in
    holds_slot: bool = False  # counts against max_associations
    closed: bool = False  # no longer counts against max_per_address
    refused: bool = False  # a CONNECTIONS_REFUSED reason was counted for it
    idle_shut: bool = False  # the sweep shut it, its association aborted and idle past IDLE_GRACE_SECONDS


class ConnectionTable:
    """The open connections of one listener. Thread-safe: called from the acceptor thread (open, sweep),
    the request threads (EVT_CONN_OPEN) and each association's threads (the other events).

    ``slots`` counts the established associations against max_associations: this process's alone by default,
    those of every listener process on the port with :class:`SharedSlots`. The per-address bound stays per
    process: with N listener processes one address may hold up to N times max_per_address connections (the
    processes take connections in turn, so the bound still stops one sender from taking every connection of
    every process); counting connections across processes exactly
    would take a shared table of addresses, which a flood of addresses could fill."""

    def __init__(
        self,
        limits: ConnectionLimits,
        clock: Callable[[], float] = time.monotonic,
        slots: AssociationSlots | None = None,
    ) -> None:
        self.limits = limits
        self._clock = clock
        self._lock = threading.Lock()
        self._connections: dict[socket.socket, Connection] = {}
        self._per_address: Counter[str] = Counter()
        self._slots: AssociationSlots = LocalSlots() if slots is None else slots

    def open(self, sock: socket.socket, address: str) -> bool:
        """Admit a just-accepted connection, or return False (the caller closes it) when ``address``
        already has max_per_address open."""
        with self._lock:
            if self._per_address[address] >= self.limits.max_per_address:
                admitted = False
            else:
                admitted = True
                self._per_address[address] += 1
                self._connections[sock] = Connection(address, sock, self._clock() + self.limits.request_timeout)
                self._slots.connection_opened()
        if not admitted:
            metrics.CONNECTIONS_REFUSED.labels(reason="too_many_from_address").inc()
            log.warning(
                "refused a DIMSE connection from %s: it has %d open (dimse_max_connections_per_address)",
                address,
                self.limits.max_per_address,
            )
        return admitted

    def event_handlers(self) -> list[tuple[evt.EventType, Callable[[evt.Event], None]]]:
        """The pynetdicom event handlers that feed this table, for ``AE.make_server(evt_handlers=...)``."""
        return [
            (evt.EVT_CONN_OPEN, self.on_connection_open),
            (evt.EVT_REQUESTED, self.on_requested),
            (evt.EVT_REJECTED, self.on_rejected),
            (evt.EVT_CONN_CLOSE, self.on_connection_close),
        ]

    def on_connection_open(self, event: evt.Event) -> None:
        """EVT_CONN_OPEN (before the association's threads start): make its threads wait for work rather
        than poll (:mod:`predraft.listener.reactors`), link the association to its connection and bound the
        PDUs its socket reads."""
        make_prompt(event.assoc)
        association_socket = event.assoc.dul.socket
        assert association_socket is not None  # the acceptor's DUL gets its socket before EVT_CONN_OPEN
        raw = association_socket.socket
        with self._lock:
            connection = None if raw is None else self._connections.get(raw)
        if connection is None:
            return
        connection.assoc = event.assoc
        event.assoc.predraft_connection = connection  # type: ignore[attr-defined]  # predraft's own attribute
        BoundedAssociationSocket.install(association_socket, connection, self)

    def on_requested(self, event: evt.Event) -> None:
        """EVT_REQUESTED: the whole A-ASSOCIATE-RQ is in; take an association slot or reject the request."""
        connection = connection_of(event.assoc)
        if connection is None:
            return
        with self._lock:
            connection.requested = True
            admitted = self._slots.take(self.limits.max_associations)
            if admitted:
                connection.holds_slot = True
        if not admitted:
            self._reject_over_limit(event.assoc, connection)

    def _reject_over_limit(self, assoc: Association, connection: Connection) -> None:
        """Reject an association request over max_associations, as pynetdicom's own rejections do
        (A-ASSOCIATE-RJ, then wait until the connection is closed)."""
        metrics.ASSOCIATIONS.labels(outcome="rejected").inc()
        log.warning(
            "rejected an association from %s at %s: %d associations are open (dimse_max_associations)",
            str(assoc.requestor.ae_title).strip(),
            connection.address,
            self.limits.max_associations,
        )
        assoc.acse.send_reject(*REJECT_LOCAL_LIMIT)
        assoc.kill()

    def on_rejected(self, event: evt.Event) -> None:
        """EVT_REJECTED (calling or called AE title refused): give the slot back at once."""
        connection = connection_of(event.assoc)
        if connection is not None:
            self._release_slot(connection)

    def on_connection_close(self, event: evt.Event) -> None:
        """EVT_CONN_CLOSE: the connection no longer counts against its address or max_associations."""
        connection = connection_of(event.assoc)
        if connection is not None:
            self._close(connection)

    def forget_socket(self, sock: socket.socket) -> None:
        """The server shut ``sock`` down (``shutdown_request``): the same as EVT_CONN_CLOSE."""
        with self._lock:
            connection = self._connections.get(sock)
        if connection is not None:
            self._close(connection)

    def count_refused(self, connection: Connection, reason: str) -> None:
        """Count ``connection`` in CONNECTIONS_REFUSED{reason}, once whatever else happens to it."""
        with self._lock:
            if connection.refused:
                return
            connection.refused = True
        metrics.CONNECTIONS_REFUSED.labels(reason=reason).inc()

    def sweep(self) -> None:
        """Shut the connections whose A-ASSOCIATE-RQ is late; finish those whose association threads have
        ended (close them, delete their received temp files, forget them). Called every poll of the acceptor."""
        now = self._clock()
        with self._lock:
            connections = list(self._connections.values())
        for connection in connections:
            if not connection.requested and not connection.closed and now >= connection.deadline:
                self._expire(connection)
            elif _stuck_after_idle_abort(connection):
                self._shut_stuck(connection)
            if _threads_ended(connection, now):
                self._finish(connection)

    def _expire(self, connection: Connection) -> None:
        log.warning(
            "closed a DIMSE connection from %s: no whole A-ASSOCIATE-RQ within %.1f s",
            connection.address,
            self.limits.request_timeout,
        )
        shut_socket(connection.sock)
        self._close(connection)

    def _shut_stuck(self, connection: Connection) -> None:
        """Shut the socket of an association aborted for idleness whose reader is still blocked mid-PDU:
        the read ends, and pynetdicom finishes the abort (EVT_CONN_CLOSE then frees the slot)."""
        connection.idle_shut = True
        log.warning(
            "shut a DIMSE association from %s: aborted for idleness, it was still reading a PDU %.1f s later",
            connection.address,
            IDLE_GRACE_SECONDS,
        )
        shut_socket(connection.sock)

    def _finish(self, connection: Connection) -> None:
        self._close(connection)
        if connection.assoc is not None:
            if isinstance(connection.assoc.dul, PromptDUL):  # its thread ended or never started
                connection.assoc.dul.close_wake_sockets()
            removed = remove_received_temp_files(connection.assoc)
            if removed:
                log.warning(
                    "removed %d partly received file(s) of an association from %s that ended mid-C-STORE",
                    removed,
                    connection.address,
                )
        with self._lock:
            self._connections.pop(connection.sock, None)

    def _close(self, connection: Connection) -> None:
        """Idempotent: the connection stops counting against its address and max_associations. One closed
        past its deadline without a whole A-ASSOCIATE-RQ counts as request_timeout, whoever closed it
        (pynetdicom's ARTIM timer may be first)."""
        self._release_slot(connection)
        with self._lock:
            if connection.closed:
                return
            connection.closed = True
            self._slots.connection_closed()
            self._per_address[connection.address] -= 1
            if self._per_address[connection.address] <= 0:
                del self._per_address[connection.address]
        if not connection.requested and self._clock() >= connection.deadline:
            self.count_refused(connection, "request_timeout")

    def _release_slot(self, connection: Connection) -> None:
        with self._lock:
            if connection.holds_slot:
                connection.holds_slot = False
                self._slots.give_back()


#: A connection never linked to an association (its request thread failed) is forgotten after this long.
_UNLINKED_GRACE_SECONDS = 5.0


def _threads_ended(connection: Connection, now: float) -> bool:
    """True when nothing of pynetdicom will touch ``connection`` again: its association and DUL threads
    have ended (or it never got an association and is closed or long past its deadline)."""
    assoc = connection.assoc
    if assoc is None:
        return connection.closed or now >= connection.deadline + _UNLINKED_GRACE_SECONDS
    if assoc.ident is None:  # linked, but its thread never started (thread exhaustion): forgotten like unlinked
        return connection.closed and now >= connection.deadline + _UNLINKED_GRACE_SECONDS
    return not assoc.is_alive() and not assoc.dul.is_alive()


def _stuck_after_idle_abort(connection: Connection) -> bool:
    """True when ``connection``'s association was aborted, and its peer has sent no whole PDU for
    IDLE_GRACE_SECONDS past the idle timeout, yet its connection is open: pynetdicom's reader is blocked in a
    PDU that stalls or trickles, and its abort waits on that reader for ever."""
    assoc = connection.assoc
    if assoc is None or not connection.requested or connection.closed or connection.idle_shut:
        return False
    return bool(assoc.is_aborted) and assoc.dul._idle_timer.remaining < -IDLE_GRACE_SECONDS


def connection_of(assoc: Association) -> Connection | None:
    return getattr(assoc, "predraft_connection", None)


def shut_socket(sock: socket.socket) -> None:
    """Shut ``sock`` down for both directions (a thread blocked reading it wakes up with end of stream)
    without closing its descriptor, which pynetdicom's threads still hold. For a TLS socket this acts on
    the TCP socket beneath, with no TLS close_notify."""
    with contextlib.suppress(OSError):  # already shut or reset
        socket.socket.shutdown(sock, socket.SHUT_RDWR)


@dataclass
class MessageTally:
    """The fragment bytes of the DIMSE message being received on one association, its command set and its
    data set counted apart; each count starts again after its set's last fragment."""

    command_bytes: int = 0
    data_bytes: int = 0

    def add(self, body: bytes | bytearray) -> tuple[int, int]:
        """Count the PDV items of one P-DATA-TF PDU's ``body``; return the largest command and data set
        counts reached while counting it (a set ended by this PDU is counted whole first). A malformed item
        ends the walk: pynetdicom refuses that PDU itself."""
        command_peak, data_peak = self.command_bytes, self.data_bytes
        offset = 0
        while offset + PDV_ITEM_HEADER.size <= len(body):
            item_length, _context_id, control = PDV_ITEM_HEADER.unpack_from(body, offset)
            fragment = item_length - (PDV_ITEM_HEADER.size - PDV_LENGTH_BYTES)
            if fragment < 0 or offset + PDV_LENGTH_BYTES + item_length > len(body):
                break
            if control & PDV_COMMAND:
                self.command_bytes += fragment
                command_peak = max(command_peak, self.command_bytes)
                if control & PDV_LAST_FRAGMENT:
                    self.command_bytes = 0
            else:
                self.data_bytes += fragment
                data_peak = max(data_peak, self.data_bytes)
                if control & PDV_LAST_FRAGMENT:
                    self.data_bytes = 0
            offset += PDV_LENGTH_BYTES + item_length
        return command_peak, data_peak


def read_exactly(sock: socket.socket, nr_bytes: int) -> bytearray:
    """``nr_bytes`` read from ``sock``, or fewer when the peer closes the connection first: what pynetdicom's
    ``AssociationSocket.recv`` returns, which reads 4 KiB per call and extends a bytearray with each (a third of
    the listener's time on a 7.5 MB radiograph). This reads straight into one buffer, as much per call as the
    kernel holds. Raises what ``sock.recv_into`` raises: TimeoutError once the socket's timeout passes."""
    buffer = bytearray(min(nr_bytes, FIRST_READ_BYTES))
    nr_read = 0
    while nr_read < nr_bytes:
        if nr_read == len(buffer):
            buffer.extend(bytes(min(len(buffer), nr_bytes - len(buffer))))
        with memoryview(buffer) as whole, whole[nr_read:] as free:
            got = sock.recv_into(free)
        if not got:
            del buffer[nr_read:]
            break
        nr_read += got
    return buffer


class BoundedAssociationSocket(AssociationSocket):
    """An AssociationSocket that will not read a PDU longer than predraft accepts, nor a DIMSE message
    larger: the connection is aborted (A-ABORT, then shut) as soon as a PDU's header declares too much,
    or as soon as a P-DATA-TF PDU takes its message's command set or data set past its bound. Until the
    whole A-ASSOCIATE-RQ is in the PDU bound is MAX_ASSOCIATE_RQ_BYTES, then the largest PDU predraft accepts.

    pynetdicom 3.0's DUL reads each PDU as ``recv(6)`` (its header) then ``recv(declared length)``; the
    second call is the one refused. Returning an empty read makes the DUL treat the connection as closed.
    A read that times out (the socket's timeout, the idle timeout) is noted as an idle abort."""

    connection: Connection
    table: ConnectionTable
    pending_pdu_type: int | None  # the type of the PDU whose header was read last and whose body comes next
    tally: MessageTally

    @classmethod
    def install(cls, association_socket: AssociationSocket, connection: Connection, table: ConnectionTable) -> None:
        """Turn the (not yet read) ``association_socket`` into a bounded one. It is created by pynetdicom's
        request handler, so its class is swapped rather than the object replaced."""
        association_socket.__class__ = cls
        bounded = cast(BoundedAssociationSocket, association_socket)  # it is one now, its class swapped
        bounded.connection = connection
        bounded.table = table
        bounded.pending_pdu_type = None
        bounded.tally = MessageTally()

    def recv(self, nr_bytes: int) -> bytearray:
        pdu_type, self.pending_pdu_type = self.pending_pdu_type, None
        limits = self.table.limits
        bound = limits.max_pdu_bytes if self.connection.requested else MAX_ASSOCIATE_RQ_BYTES
        if nr_bytes > bound:
            self._refuse_pdu(nr_bytes, bound)
            return bytearray()
        data = self._read(nr_bytes)
        if pdu_type is None:
            self._note_header(data)
        elif pdu_type == P_DATA_TF_TYPE and self.connection.requested and len(data) == nr_bytes:
            command_bytes, data_bytes = self.tally.add(data)
            if command_bytes > limits.max_command_set_bytes or data_bytes > limits.max_data_set_bytes:
                self._refuse_message(command_bytes, data_bytes)
                return bytearray()
        return data

    def _read(self, nr_bytes: int) -> bytearray:
        """What pynetdicom's read returns, read by :func:`read_exactly`; one that times out is noted as an idle
        abort, then raised (the DUL takes it as the connection closed)."""
        try:
            return read_exactly(cast(socket.socket, self.socket), nr_bytes)
        except TimeoutError:
            assoc = self.assoc
            if assoc.is_established and not getattr(assoc, "predraft_abort_reason", None):
                assoc.predraft_abort_reason = "idle_timeout"  # type: ignore[attr-defined]  # predraft's own
            log.warning(
                "a DIMSE connection from %s sent nothing for %s s in the middle of a PDU",
                self.connection.address,
                assoc.network_timeout,
            )
            raise

    def _note_header(self, header: bytearray) -> None:
        """After a PDU header is read: pynetdicom reads the body next if the type is one it knows."""
        if len(header) == PDU_HEADER_BYTES and header[0] in KNOWN_PDU_TYPES:
            self.pending_pdu_type = header[0]

    def _refuse_pdu(self, declared: int, bound: int) -> None:
        """Count and log an over-long PDU, then send an A-ABORT and shut the connection."""
        log.warning(
            "aborted a DIMSE connection from %s: a PDU declared %d bytes, over the %d accepted",
            self.connection.address,
            declared,
            bound,
        )
        self._abort("pdu_too_large")

    def _refuse_message(self, command_bytes: int, data_bytes: int) -> None:
        """Count and log a DIMSE message over its bound, then send an A-ABORT and shut the connection (its
        partly received file is deleted when the association's threads end)."""
        limits = self.table.limits
        if command_bytes > limits.max_command_set_bytes:
            part, size, bound = "command set", command_bytes, limits.max_command_set_bytes
        else:
            part, size, bound = "data set", data_bytes, limits.max_data_set_bytes
        log.warning(
            "aborted a DIMSE association from %s: a message's %s reached %d bytes while it arrived, "
            "over the %d accepted",
            self.connection.address,
            part,
            size,
            bound,
        )
        self._abort("message_too_large")

    def _abort(self, reason: str) -> None:
        """Send an A-ABORT and shut the connection; ``reason`` is counted in ASSOCIATIONS_ABORTED (when
        EVT_ABORTED follows) if associated, else in CONNECTIONS_REFUSED."""
        assoc = self.assoc
        if assoc.is_established:
            assoc.predraft_abort_reason = reason  # type: ignore[attr-defined]  # predraft's own attribute
        else:
            self.table.count_refused(self.connection, reason)
        abort = A_ABORT_RQ()
        abort.source, abort.reason_diagnostic = ABORT_SOURCE_PROVIDER, ABORT_INVALID_PDU_PARAMETER
        raw = self.socket
        if raw is not None:
            with contextlib.suppress(OSError):
                raw.sendall(abort.encode())
            shut_socket(raw)


def abort_reason(assoc: Association) -> str:
    """Why an association was aborted, for ASSOCIATIONS_ABORTED: pdu_too_large, message_too_large, and
    idle_timeout when a read timed out mid-PDU (see :class:`BoundedAssociationSocket`), protocol_error (see
    :func:`note_protocol_error`), idle_timeout (the network timeout expired, so the reactor aborted: see
    :attr:`PromptAssociation.network_timed_out`), else peer (the caller aborted or dropped the connection)."""
    reason = getattr(assoc, "predraft_abort_reason", None)
    if reason:
        return str(reason)
    if getattr(assoc, "network_timed_out", False):
        return "idle_timeout"
    return "peer"


def note_protocol_error(event: evt.Event) -> None:
    """EVT_ACSE_RECV: pynetdicom delivers an A-P-ABORT with a provider reason when the peer sent an
    invalid or unexpected PDU (0: the connection was dropped); :func:`abort_reason` then says protocol_error."""
    primitive = event.primitive  # type: ignore[attr-defined]  # set from the event's attrs, undeclared
    if (
        isinstance(primitive, A_P_ABORT)
        and primitive.provider_reason
        and not getattr(event.assoc, "predraft_abort_reason", None)
    ):
        event.assoc.predraft_abort_reason = "protocol_error"  # type: ignore[attr-defined]  # predraft's own


def remove_received_temp_files(assoc: Association) -> int:
    """Delete the files pynetdicom received ``assoc``'s C-STOREs into that no handler will take: the one
    being received when the association ended, and complete ones still queued. Call it only once the
    association's threads have ended. Returns how many were deleted."""
    messages: list[Any] = [getattr(assoc.dimse, "message", None)]
    messages += [item[1] for item in list(assoc.dimse.msg_queue.queue) if isinstance(item, tuple)]
    removed = 0
    for message in messages:
        handle = getattr(message, "_data_set_file", None) or getattr(message, "_dataset_file", None)
        if handle is not None and _delete_temp_file(handle):
            removed += 1
    return removed


def _delete_temp_file(handle: Any) -> bool:
    """Close and delete a NamedTemporaryFile made with delete=False; True if a file was deleted."""
    with contextlib.suppress(OSError):
        handle.close()
    try:
        os.unlink(handle.name)
    except FileNotFoundError:
        return False
    return True
