"""An acceptor association's two threads wait for work instead of polling for it.

pynetdicom 3.0 runs two threads per association, and both poll: the DUL thread (PDUs in and out) sleeps
1 ms whenever a pass of its loop found nothing to do, and the association thread (DIMSE messages to
handlers, release, abort, the idle timeout) sleeps 1 ms before every pass. An idle association thus wakes
about 2,000 times a second (70-90 ms of CPU per second on this project's 2-core machines:
``bench/idle_associations.py``), every wake-up takes the GIL from whichever thread is doing real work, and
each C-STORE waits up to a millisecond at each hand-over between the threads.

:func:`make_prompt`, called for each acceptor association before its threads start, swaps in subclasses
whose loops are pynetdicom's own, pass for pass, but wait where those sleep:

- :class:`PromptDUL` waits in ``select`` on its peer's socket and a wake-up socket, which is written
  whenever another thread hands the DUL a primitive to send or asks it to stop; the wait is bounded by
  the ARTIM timer and by :data:`LONGEST_WAIT_S`.
- :class:`PromptAssociation` waits on an event that is set when a DIMSE message is complete or an ACSE
  primitive (release, abort) arrives for it, and when the DUL thread ends; bounded by the network idle
  timer and by :data:`LONGEST_WAIT_S`. Beyond pynetdicom's, it says when its thread has ended
  (:meth:`PromptAssociation.when_ended`) and whether it ended the association for the network idle timeout
  (:attr:`PromptAssociation.network_timed_out`).

The bound is a safety net, not the mechanism: a state change that sends no signal (there should be none)
is still seen within :data:`LONGEST_WAIT_S`. ``tests/unit/test_reactors.py`` checks the copied loops
against pynetdicom's own source, so that an upgrade that changes them fails a test rather than behaving
silently differently.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import select
import socket
import threading
from collections.abc import Callable
from typing import Any, cast

from pynetdicom import evt
from pynetdicom.association import Association
from pynetdicom.dul import DULServiceProvider
from pynetdicom.pdu import A_ABORT_RQ
from pynetdicom.timer import Timer
from pynetdicom.transport import AssociationSocket

#: pynetdicom's own loggers for its reactors' messages, kept so that logs read as before.
_PYNETDICOM_DUL_LOG = logging.getLogger("pynetdicom.dul")
_PYNETDICOM_ASSOC_LOG = logging.getLogger("pynetdicom.association")
log = logging.getLogger(__name__)

#: The longest either thread waits before looking again with nothing signalled (seconds).
LONGEST_WAIT_S = 0.05


def _bounded_by(timer: Timer) -> float:
    """How long a reactor may wait: LONGEST_WAIT_S, or less if ``timer`` runs and is due sooner."""
    running = timer.timeout is not None and timer._start_time is not None and timer._end_time is None
    return max(0.0, min(LONGEST_WAIT_S, timer.remaining)) if running else LONGEST_WAIT_S


class _SignallingQueue(queue.Queue[Any]):
    """A queue that also sets ``signal`` whenever something is put on it."""

    def __init__(self, signal: threading.Event) -> None:
        super().__init__()
        self.signal = signal

    def _put(self, item: Any) -> None:
        super()._put(item)
        self.signal.set()


class PromptDUL(DULServiceProvider):
    """pynetdicom's DUL service provider whose reactor waits in ``select`` (see the module docstring)."""

    _wake_reader: socket.socket
    _wake_writer: socket.socket
    _work_signal: threading.Event  # the association thread's; set when this thread ends

    @classmethod
    def install(cls, dul: DULServiceProvider, work_signal: threading.Event) -> PromptDUL:
        """Turn ``dul`` (whose thread has not started) into a prompt one; returns it, retyped."""
        if dul.is_alive():
            raise RuntimeError("the DUL's thread has already started")
        dul.__class__ = cls
        prompt = cast(PromptDUL, dul)
        prompt._wake_reader, prompt._wake_writer = socket.socketpair()
        prompt._wake_reader.setblocking(False)
        prompt._wake_writer.setblocking(False)
        prompt._work_signal = work_signal
        prompt.to_user_queue = _SignallingQueue(work_signal)
        return prompt

    def run(self) -> None:
        """The thread's body: the reactor, then the wake-up sockets closed and the association told."""
        # pynetdicom's Thread target was bound to the base class's run_reactor before the class was swapped.
        try:
            self.run_reactor()
        finally:
            self._work_signal.set()
            self.close_wake_sockets()

    def close_wake_sockets(self) -> None:
        """Close the wake-up sockets (idempotent): when the thread ends, or for one that never started."""
        self._wake_writer.close()
        self._wake_reader.close()

    def wake(self) -> None:
        """Make the reactor's current or next wait return at once (callable from any thread)."""
        with contextlib.suppress(OSError):  # full (a wake-up is pending anyway) or closed (thread ended)
            self._wake_writer.send(b"\0")

    def send_pdu(self, primitive: Any) -> None:
        """pynetdicom's, then a wake-up: the primitive is sent on the reactor's next pass."""
        super().send_pdu(primitive)
        self.wake()

    def kill_dul(self) -> None:
        """pynetdicom's, then a wake-up, so that the thread ends at once."""
        super().kill_dul()
        self.wake()

    def _wait_for_work(self) -> bool:
        """Where pynetdicom sleeps: wait until the peer's socket is readable, a wake-up is sent, the ARTIM
        timer is due or LONGEST_WAIT_S has passed. True when something was signalled, False on a timeout."""
        timeout = _bounded_by(self.artim_timer)
        waiting_on: list[Any] = [self._wake_reader]
        association_socket = self.socket
        peer = None if association_socket is None else association_socket.socket
        if peer is not None and peer.fileno() >= 0:
            waiting_on.append(peer)
        try:
            readable, _, _ = select.select(waiting_on, [], [], timeout)
        except (OSError, ValueError):  # the peer's socket was closed meanwhile: the next pass sees to it
            return True
        if self._wake_reader in readable:
            with contextlib.suppress(OSError):
                self._wake_reader.recv(4096)
        return bool(readable)

    def run_reactor(self) -> None:
        """pynetdicom 3.0's ``DULServiceProvider.run_reactor`` with ``time.sleep`` replaced by
        :meth:`_wait_for_work`; otherwise the same, pass for pass."""
        # Main DUL loop
        self._idle_timer.start()
        self.socket = cast("AssociationSocket", self.socket)
        sleep = False

        while True:
            # Let the assoc reactor off the leash
            if not self.assoc._dul_ready.is_set():
                self.assoc._dul_ready.set()
                # When single-stepping the reactor, sleep between events so that
                # test code has time to run.
                sleep = True

            if sleep:
                self._wait_for_work()

            if self._kill_thread:
                break

            # Check the ARTIM timer first so its event is placed on the queue
            #   ahead of any other events this loop
            if self.artim_timer.expired:
                self.event_queue.put("Evt18")

            # Check the connection for incoming data
            try:
                # We can either encode and send a primitive **OR**
                #   receive and decode a PDU per loop of the reactor
                if self._process_recv_primitive():  # encode (sent by state machine)
                    pass
                elif self._is_transport_event():  # receive and decode PDU
                    self._idle_timer.restart()
            except Exception as exc:
                _PYNETDICOM_DUL_LOG.error("Exception in DUL.run(), aborting association")
                _PYNETDICOM_DUL_LOG.exception(exc)
                # Bypass the state machine and send an A-ABORT
                #   we do it this way because an exception here will mess up
                #   the state machine and we can't guarantee it'll get sent
                #   otherwise
                abort_pdu = A_ABORT_RQ()
                abort_pdu.source = 0x02
                abort_pdu.reason_diagnostic = 0x00
                self.socket.send(abort_pdu.encode())
                self.assoc.is_aborted = True
                self.assoc.is_established = False
                # Hard shutdown of the Association and DUL reactors
                self.assoc._kill = True
                self._kill_thread = True
                return

            # Check the event queue to see if there is anything to do
            try:
                event = self.event_queue.get(block=False)
            # If the queue is empty, return to the start of the loop
            except queue.Empty:
                sleep = True
                continue

            self.state_machine.do_action(event)
            sleep = False


class PromptAssociation(Association):
    """pynetdicom's acceptor Association whose reactor waits on an event (see the module docstring)."""

    _work_signal: threading.Event
    #: Set by the reactor when it ends the association because the network idle timer expired, before it aborts
    #: or releases: EVT_ABORTED's handlers read why from here, not from the idle timer, which the DUL thread
    #: restarts on any transport event, such as the peer closing the connection on receiving the A-ABORT.
    network_timed_out: bool = False
    _when_ended: list[Callable[[Association], None]]

    def when_ended(self, callback: Callable[[Association], None]) -> None:
        """Call ``callback(association)`` on the association's thread as it ends, however it ends (release,
        abort, dropped connection), after its last handler has returned: unlike EVT_CONN_CLOSE, which the DUL
        thread fires when the connection closes, perhaps while a C-STORE handler is still finishing."""
        self._when_ended.append(callback)

    def run(self) -> None:
        """The thread's body: pynetdicom's reactor (the thread's target), then the :meth:`when_ended` callbacks,
        each run even if another raised."""
        try:
            super().run()
        finally:
            for callback in self._when_ended:
                try:
                    callback(self)
                except Exception:
                    log.exception("a callback at the end of an association failed")

    def _wait_for_work(self) -> bool:
        """Where pynetdicom sleeps 1 ms: wait until a message or primitive arrives for this thread, the DUL
        thread ends, the network idle timer is due or LONGEST_WAIT_S has passed. True when something was
        signalled, False on a timeout."""
        return self._work_signal.wait(_bounded_by(self.dul._idle_timer))

    def _run_reactor(self) -> None:
        """pynetdicom 3.0's ``Association._run_reactor`` with its 1 ms sleep replaced by
        :meth:`_wait_for_work`, skipped right after a pass that served a message (more may be queued: a
        pass serves one); otherwise the same, pass for pass."""
        self._is_paused = False
        served = False
        while not self._kill:
            if not served:
                self._wait_for_work()
            # Cleared before the queues are looked at: whatever arrives from now on sets it again.
            self._work_signal.clear()
            served = False

            # A race condition may occur if the Acceptor uses the send_*()
            #   methods as the received DIMSE message may be taken off the
            #   queue before the send_*() method gets to it, so we allow
            #   the reactor to be paused
            # We also need to be careful that the reactor actually stops
            #   before attempting DIMSE or ACSE messaging
            # Will block until `_reactor_checkpoint` is set()
            self._is_paused = True
            self._reactor_checkpoint.wait()
            self._is_paused = False

            # Check with the DIMSE provider to see if a completely decoded
            #   message is available
            context_id, msg = self.dimse.get_msg(block=False)
            if msg:
                self._serve_request(msg, cast(int, context_id))
                served = True

            # Check for release request from the peer
            if self.is_established and self.acse.is_release_requested():
                # Send A-RELEASE response
                self.acse.send_release(is_response=True)
                _PYNETDICOM_ASSOC_LOG.info("Association Released")
                self.is_released = True
                self.is_established = False
                evt.trigger(self, evt.EVT_RELEASED, {})
                self.kill()
                return

            # Check for abort from either locally or the peer
            if self.acse.is_aborted():
                log_msg = "Association Aborted"
                if self.acse.is_aborted("a-p-abort"):
                    log_msg += " (A-P-ABORT)"
                _PYNETDICOM_ASSOC_LOG.info(log_msg)
                # Ensure that EVT_ASCE_RECV fires for subscribers
                self.dul.receive_pdu(wait=False)
                self.is_aborted = True
                self.is_established = False
                evt.trigger(self, evt.EVT_ABORTED, {})
                self.kill()
                return

            # Check if the DULServiceProvider thread is still running
            #   DUL.is_alive() is inherited from threading.thread
            if not self.dul.is_alive():
                self.kill()
                return

            # Check if network_timeout has expired
            if self.dul.idle_timer_expired():
                _PYNETDICOM_ASSOC_LOG.error("Network timeout reached")
                self.network_timed_out = True  # predraft's: see the attribute
                if self.network_timeout_response == "A-RELEASE":
                    self._is_paused = True
                    self._reactor_checkpoint.wait()
                    self.release()
                    self._is_paused = False
                else:
                    self.abort()

                self.kill()
                return


def make_prompt(assoc: Association) -> None:
    """Make an acceptor association's two threads wait for work instead of polling; call it before they
    start (EVT_CONN_OPEN). The association and its DUL keep their identity; their classes are swapped."""
    if assoc.is_alive():
        raise RuntimeError("the association's thread has already started")
    work_signal = threading.Event()
    assoc.__class__ = PromptAssociation
    cast(PromptAssociation, assoc)._work_signal = work_signal
    cast(PromptAssociation, assoc)._when_ended = []
    assoc.dimse.msg_queue = _SignallingQueue(work_signal)
    PromptDUL.install(assoc.dul, work_signal)
