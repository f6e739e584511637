"""The listener processes' shared association slots and connection counts, whose turn it is to accept, and their
number (predraft.listener.processes, predraft.listener.connections)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from predraft.core.settings import MAX_LISTENER_PROCESSES, get_settings
from predraft.listener.connections import AcceptTurns, SharedSlots
from predraft.listener.processes import ListenerStartError, ListenerSupervisor
from tests.conftest import free_port


def test_slots_are_counted_across_processes_and_a_dead_ones_are_given_back(tmp_path: Path) -> None:
    path = SharedSlots.create(tmp_path / "slots")
    first, second = SharedSlots.attach(path, 0), SharedSlots.attach(path, 1)
    assert first.take(2) and second.take(2)
    assert not first.take(2) and not second.take(2)
    first.reset(1)  # process 1 died: the supervisor gives its slot back
    assert second.total() == 1 and second.take(2)
    second.give_back()
    assert first.total() == 1
    first.close()
    second.close()


def test_connections_are_counted_per_process_and_a_dead_ones_are_forgotten(tmp_path: Path) -> None:
    path = SharedSlots.create(tmp_path / "slots")
    first, second = SharedSlots.attach(path, 0), SharedSlots.attach(path, 1)
    assert first.fewest_connections(2) and second.fewest_connections(2)  # a tie: both may take the next
    first.connection_opened()
    assert not first.fewest_connections(2) and second.fewest_connections(2)
    assert first.fewest_connections(1)  # alone, it is always its turn
    second.connection_opened()
    second.connection_opened()
    assert (first.connections(0), second.connections(1)) == (1, 2) and first.fewest_connections(2)
    first.reset(1)  # process 1 died: its connections went with it
    assert first.connections(1) == 0 and second.fewest_connections(2)
    second.connection_closed()
    second.connection_closed()  # never below zero
    assert second.connections(1) == 0
    assert first.take(1) and first.connections(0) == 1  # slots and connections are counted apart
    first.close()
    second.close()


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_process_with_fewest_connections_accepts_and_another_waits_its_turn(tmp_path: Path) -> None:
    path = SharedSlots.create(tmp_path / "slots")
    busy, idle = SharedSlots.attach(path, 0), SharedSlots.attach(path, 1)
    clock = _Clock()
    turns = AcceptTurns(busy, 2, clock=clock)
    busy.connection_opened()

    waited = 0.0
    while not turns.mine():  # the idle sibling never takes it: after MAX_DEFER_SECONDS the busy one does
        clock.now += AcceptTurns.PAUSE_SECONDS
        waited += AcceptTurns.PAUSE_SECONDS
    assert AcceptTurns.MAX_DEFER_SECONDS <= waited < AcceptTurns.MAX_DEFER_SECONDS + 2 * AcceptTurns.PAUSE_SECONDS

    clock.now += 1  # a new connection, long after: it is left to the sibling again
    assert not turns.mine()
    idle.connection_opened()
    idle.connection_opened()  # the sibling took two: now it is the busy one's turn at once
    assert turns.mine()
    busy.close()
    idle.close()


def test_accept_turns_refuse_a_number_of_processes_out_of_range(tmp_path: Path) -> None:
    slots = SharedSlots.attach(SharedSlots.create(tmp_path / "slots"), 0)
    for processes in (0, MAX_LISTENER_PROCESSES + 1):
        with pytest.raises(ValueError, match="processes"):
            AcceptTurns(slots, processes)
    slots.close()


def test_a_slot_index_past_the_most_processes_is_refused(tmp_path: Path) -> None:
    path = SharedSlots.create(tmp_path / "slots")
    with pytest.raises(ValueError, match=f"index {MAX_LISTENER_PROCESSES} is not a listener process index"):
        SharedSlots.attach(path, MAX_LISTENER_PROCESSES)


def test_zero_processes_means_one_per_usable_core_up_to_the_limit(clean_settings_env, monkeypatch) -> None:
    monkeypatch.setattr("os.sched_getaffinity", lambda _pid: set(range(64)))
    assert get_settings().listener.process_count == MAX_LISTENER_PROCESSES
    monkeypatch.setattr("os.sched_getaffinity", lambda _pid: {0})
    assert get_settings().listener.process_count == 1
    assert get_settings(dimse_processes=3).listener.process_count == 3


def test_more_processes_than_the_limit_are_refused(clean_settings_env) -> None:
    with pytest.raises(ValueError, match="dimse_processes"):
        get_settings(dimse_processes=MAX_LISTENER_PROCESSES + 1)


def test_the_supervisor_holds_the_port_but_it_opens_only_when_a_process_listens(clean_settings_env) -> None:
    port = free_port()
    settings = get_settings(dimse_port=port, dimse_host="127.0.0.1")
    supervisor, rival = ListenerSupervisor(settings, count=1), ListenerSupervisor(settings, count=1)
    try:
        supervisor._take_port()
        with pytest.raises(ConnectionRefusedError):  # bound, not listening: no process serves yet
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
        with pytest.raises(ListenerStartError, match="another predraft listen serves"):
            rival._take_port()
        assert supervisor._listening is not None
        supervisor._listening.listen()  # what the first listener process's server does once it serves
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    finally:
        supervisor.stop()
    with pytest.raises(ConnectionRefusedError):  # stopped: the port is free again
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
