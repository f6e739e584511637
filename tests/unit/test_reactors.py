"""An acceptor association's threads wait for work instead of polling (listener/reactors.py).

Each test runs a real listener in this process and talks to it with pynetdicom as the SCU. The waits of
the listener's reactors are counted, and each is noted as signalled or timed out: a hand-over between
threads that forgot its signal shows as one timed-out wait per message.
"""

from __future__ import annotations

import hashlib
import inspect
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.dul import DULServiceProvider
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]  # made at import

from predraft.core.settings import Settings
from predraft.listener.reactors import LONGEST_WAIT_S, PromptAssociation, PromptDUL, make_prompt
from tests.conftest import poll, running_listener

CALLER_AE = "PACS_AE"

#: sha256 of pynetdicom 3.0.4's source of what reactors.py copies or overrides. When one differs,
#: pynetdicom changed it: compare the new source with the copy in reactors.py, carry the change over,
#: then record the new hash here.
PYNETDICOM_SOURCES = {
    DULServiceProvider.run_reactor: "e3a10eb3a0931e4854af33b9496e92d9679522aca26b0e04da8967559b9e2803",
    DULServiceProvider.send_pdu: "7cbce5da8594124e9e70c790a68df640d21df11af4220783e752bc607de8dde6",
    DULServiceProvider.kill_dul: "5ceccf8dd01c2072c377d18bb1be284941a345bd40f03bd1e03a864ab0817842",
    Association.run_reactor: "ed8bbbe3b3d6ddaee3e8673ba25b2ab2a4c45f25bc1d8ae7b48ebafd09499e6d",
    Association._run_reactor: "f28838c5559e462a563750cfc9f3790027f4bb7e2223baf42c9f5d682c359dee",
}


class WaitLog:
    """Every wait of the listener's reactors: (the class that waited, whether it was signalled)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.waits: list[tuple[str, bool]] = []

    def record(self, who: str, signalled: bool) -> None:
        with self._lock:
            self.waits.append((who, signalled))

    def mark(self) -> int:
        with self._lock:
            return len(self.waits)

    def since(self, mark: int) -> list[tuple[str, bool]]:
        with self._lock:
            return self.waits[mark:]


@pytest.fixture
def waits(monkeypatch: pytest.MonkeyPatch) -> WaitLog:
    log = WaitLog()
    for cls in (PromptDUL, PromptAssociation):
        original: Callable[..., bool] = cls._wait_for_work

        def counted(self: object, _original: Callable[..., bool] = original, _who: str = cls.__name__) -> bool:
            signalled = _original(self)
            log.record(_who, signalled)
            return signalled

        monkeypatch.setattr(cls, "_wait_for_work", counted)
    return log


@pytest.fixture
def listener(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    with running_listener(tmp_path, monkeypatch, allowed_calling_aes=[CALLER_AE]) as settings:
        yield settings


def _associate(port: int) -> Association:
    ae = AE(ae_title=CALLER_AE)
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.network_timeout = ae.dimse_timeout = 10
    assoc = ae.associate("127.0.0.1", port, ae_title="PREDRAFT")
    assert assoc.is_established
    return assoc


def _acceptors() -> list[Association]:
    """The listener's acceptor associations alive in this process."""
    return [t for t in threading.enumerate() if isinstance(t, Association) and t.is_acceptor and t.is_alive()]


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_copied_pynetdicom_loops_are_the_ones_installed() -> None:
    changed = [
        function.__qualname__
        for function, digest in PYNETDICOM_SOURCES.items()
        if hashlib.sha256(inspect.getsource(function).encode()).hexdigest() != digest
    ]
    assert not changed, f"pynetdicom's {changed} changed: carry the change into listener/reactors.py"


def test_acceptor_associations_are_made_prompt(listener: Settings) -> None:
    assoc = _associate(listener.listener.port)
    try:
        assert poll(lambda: len(_acceptors()) == 1, 2.0)
        (acceptor,) = _acceptors()
        assert type(acceptor) is PromptAssociation
        assert type(acceptor.dul) is PromptDUL
    finally:
        assoc.release()


def test_messages_are_answered_without_waiting_out_a_timeout(listener: Settings, waits: WaitLog) -> None:
    assoc = _associate(listener.listener.port)
    echoes = 40
    mark = waits.mark()
    try:
        statuses = [int(assoc.send_c_echo().Status) for _ in range(echoes)]
    finally:
        assoc.release()
    assert statuses == [0x0000] * echoes
    assert assoc.is_released
    during = waits.since(mark)
    timed_out = [who for who, signalled in during if not signalled]
    # Each echo is a hand-over each way between the two threads and the peer: all signalled. A few
    # timeouts may fall in a slow moment of this machine; a forgotten signal gives one or more per echo.
    assert {who for who, _ in during} == {"PromptDUL", "PromptAssociation"}
    assert len(timed_out) < echoes // 4, f"{len(timed_out)} of {len(during)} waits timed out over {echoes} echoes"


def test_an_idle_association_barely_wakes(listener: Settings, waits: WaitLog) -> None:
    assoc = _associate(listener.listener.port)
    try:
        assert poll(lambda: len(_acceptors()) == 1, 2.0)
        idle_seconds = 1.0
        mark = waits.mark()
        time.sleep(idle_seconds)
        during = waits.since(mark)
        assert int(assoc.send_c_echo().Status) == 0x0000  # still served after the idle second
    finally:
        assoc.release()
    # pynetdicom's own loops pass about 1,000 times a second each when idle; these wake about every
    # LONGEST_WAIT_S, each thread.
    bound = 2 * (idle_seconds / LONGEST_WAIT_S) * 1.5 + 4
    assert 0 < len(during) < bound, f"{len(during)} waits in {idle_seconds} s idle"


def test_release_and_peer_abort_end_both_threads_and_close_the_wake_up_sockets(listener: Settings) -> None:
    port = listener.listener.port
    _associate(port).release()  # the listener's first association imports and opens what it keeps
    assert poll(lambda: not _acceptors(), 2.0)
    before = _open_fds()
    for index in range(12):
        assoc = _associate(port)
        if index % 2:
            assoc.abort()
        else:
            assoc.release()
    assert poll(lambda: not _acceptors(), 5.0), "an acceptor association's thread did not end"
    assert not [t for t in threading.enumerate() if isinstance(t, PromptDUL)], "a DUL thread did not end"
    assert poll(lambda: _open_fds() <= before, 2.0), f"{_open_fds() - before} file descriptors left open"


def test_make_prompt_refuses_an_association_already_running(listener: Settings) -> None:
    assoc = _associate(listener.listener.port)
    try:
        with pytest.raises(RuntimeError, match="already started"):
            make_prompt(assoc)
    finally:
        assoc.release()


def test_wake_ups_do_not_fail_once_the_thread_has_ended(listener: Settings) -> None:
    assoc = _associate(listener.listener.port)
    assert poll(lambda: len(_acceptors()) == 1, 2.0)
    (acceptor,) = _acceptors()
    dul = acceptor.dul
    assert isinstance(dul, PromptDUL)
    assoc.release()
    assert poll(lambda: not dul.is_alive(), 2.0)
    dul.wake()  # its sockets are closed: nothing to wake, nothing raised


def test_wake_up_sockets_of_an_association_whose_thread_never_started_are_closed() -> None:
    """Thread exhaustion: pynetdicom made the association (and make_prompt its wake-up sockets) but could
    not start its thread. The connection table's sweep forgets it, and closes those sockets."""
    from predraft.listener.connections import ConnectionLimits, ConnectionTable

    now = [100.0]
    table = ConnectionTable(
        ConnectionLimits(
            max_associations=1, max_per_address=1, request_timeout=1.0, max_pdu_bytes=65536, max_data_set_bytes=1 << 20
        ),
        clock=lambda: now[0],
    )
    sock = socket.socket()
    try:
        before = _open_fds()
        assert table.open(sock, "127.0.0.9")
        assoc = Association(AE(), "acceptor")
        make_prompt(assoc)
        assert _open_fds() == before + 2  # the wake-up socket pair
        table._connections[sock].assoc = assoc
        table.forget_socket(sock)
        now[0] += 60.0
        table.sweep()
        assert sock not in table._connections
        assert _open_fds() == before
    finally:
        sock.close()
