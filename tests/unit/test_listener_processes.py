"""The listener processes' shared association slots and their number (predraft.listener.processes)."""

from __future__ import annotations

from pathlib import Path

import pytest

from predraft.core.settings import MAX_LISTENER_PROCESSES, get_settings
from predraft.listener.connections import SharedSlots


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
