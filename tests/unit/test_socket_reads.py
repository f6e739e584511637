"""predraft.listener.connections.read_exactly: the listener's PDU read, on a real socket pair."""

from __future__ import annotations

import os
import socket
import threading

import pytest

from predraft.listener.connections import FIRST_READ_BYTES, read_exactly


@pytest.fixture
def pair():
    ours, theirs = socket.socketpair()
    yield ours, theirs
    ours.close()
    theirs.close()


def _send_in_pieces(sock: socket.socket, data: bytes, piece: int, *, close: bool) -> threading.Thread:
    def send() -> None:
        for start in range(0, len(data), piece):
            sock.sendall(data[start : start + piece])
        if close:
            sock.shutdown(socket.SHUT_WR)

    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    return thread


def test_exactly_the_bytes_asked_for_are_read_and_the_rest_stays_for_the_next_read(pair):
    ours, theirs = pair
    data = os.urandom(70_000)
    sender = _send_in_pieces(theirs, data, 1_000, close=False)
    assert read_exactly(ours, 6) == data[:6]
    assert read_exactly(ours, 50_000) == data[6:50_006]
    assert read_exactly(ours, 19_994) == data[50_006:]
    sender.join()


def test_a_pdu_longer_than_the_first_buffer_is_read_whole(pair):
    """The buffer starts at FIRST_READ_BYTES and doubles: a 2.5 MB PDU arrives byte for byte."""
    ours, theirs = pair
    data = os.urandom(FIRST_READ_BYTES * 2 + FIRST_READ_BYTES // 2 + 7)
    sender = _send_in_pieces(theirs, data, 65_536, close=False)
    read = read_exactly(ours, len(data))
    sender.join()
    assert len(read) == len(data)
    assert read == data


def test_a_peer_that_closes_early_gives_what_it_sent(pair):
    """As pynetdicom's own read: fewer bytes than asked, which the DUL takes as the connection closed."""
    ours, theirs = pair
    data = os.urandom(FIRST_READ_BYTES + 3)
    sender = _send_in_pieces(theirs, data, 100_000, close=True)
    read = read_exactly(ours, FIRST_READ_BYTES * 4)
    sender.join()
    assert read == data
    assert read_exactly(ours, 10) == b""


def test_a_stalled_peer_raises_the_sockets_timeout(pair):
    ours, theirs = pair
    theirs.sendall(b"abc")
    ours.settimeout(0.2)
    with pytest.raises(TimeoutError):
        read_exactly(ours, 10)
