"""Queueing exports: the draft task queues one per destination once the draft is committed;
``predraft studies resend`` queues them again; ``predraft studies show`` says where each stands."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from predraft.cli import main
from predraft.core.db import session_scope
from predraft.core.schema import Draft, Study
from predraft.core.states import StudyState

# predraft.workers.tasks at collection: its shared tasks are then registered in every Celery app a test makes, whichever
# test made the current one (a task module imported later reaches only the apps still active).
from predraft.workers import export_task, tasks
from predraft.workers.export_service import begin_attempt, retry_delay
from tests.conftest import free_port
from tests.unit.exporting import Drafted, configure, export_row, make_draft, queue, run_export

DOWN = {"kind": "dimse", "ae_title": "PACS", "host": "127.0.0.1", "timeout": 5}


@pytest.fixture
def drafted(clean_settings_env, sqlite_url, demo_study, tiny_card_path, tmp_path) -> Iterator[Drafted]:
    images = [image.path for image in demo_study]
    yield make_draft(sqlite_url, images, tiny_card_path, tmp_path / "spool", results_sr=True)
    export_task._settings.cache_clear()


class Sent:
    """Stands in for predraft.workers.export_task.send_exports: records (draft id, destinations) instead of sending."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, list[str]]] = []

    def __call__(self, _app: object, draft_id: int, destinations: list[str]) -> None:
        self.calls.append((draft_id, list(destinations)))


def test_the_draft_task_queues_one_export_per_destination_after_its_commit(
    clean_settings_env, sqlite_url, demo_study, tiny_card_path, tmp_path, monkeypatch
):
    drafted = make_draft(sqlite_url, [image.path for image in demo_study[:2]], tiny_card_path, tmp_path / "spool")
    with session_scope(sqlite_url) as session:  # a late third view re-opened the study: generation 2 is due
        study = session.get_one(Study, 1)
        study.state, study.generation = StudyState.DRAFTING, 2
    configure(
        monkeypatch,
        drafted,
        [{**DOWN, "name": "pacs", "port": 104}, {"kind": "stow", "name": "vna", "url": "http://127.0.0.1:9/dicom-web"}],
    )
    monkeypatch.setenv("PREDRAFT_MODEL", str(tiny_card_path))
    monkeypatch.setenv("PREDRAFT_VAR_DIR", str(tmp_path / "var"))
    tasks._settings.cache_clear()
    sent = Sent()
    monkeypatch.setattr(tasks, "send_exports", sent)
    try:
        tasks.draft.apply(args=[1, 2]).get()
    finally:
        tasks._settings.cache_clear()

    with session_scope(sqlite_url) as session:
        study = session.get_one(Study, 1)
        assert study.state == StudyState.DRAFTED
        second = study.drafts[-1]
        assert second.generation == 2
        assert [(e.destination, e.state, e.attempts) for e in second.exports] == [
            ("pacs", "pending", 0),
            ("vna", "pending", 0),
        ]
        assert study.drafts[0].exports == []  # generation 1 was drafted before any destination was configured
    assert sent.calls == [(second.id, ["pacs", "vna"])]


def test_resend_queues_the_latest_draft_again_and_show_lists_the_exports(drafted, monkeypatch, capsys):
    configure(
        monkeypatch,
        drafted,
        [{**DOWN, "name": "pacs", "port": free_port()}, {**DOWN, "name": "other", "port": free_port()}],
        max_retries=0,
    )
    queue(drafted, "pacs", "other")
    assert run_export(drafted, "pacs") == "dead"
    sent = Sent()
    monkeypatch.setattr(export_task, "send_exports", sent)

    assert main(["studies", "show", drafted.study_uid]) == 1  # exit 1: an export is dead
    shown = capsys.readouterr().out
    assert "Exports:" in shown and "cannot connect to PACS@127.0.0.1" in shown
    assert f"AI results SR (TID 1500) {drafted.results_sr_sop_instance_uid}" in shown
    assert [
        line.split()[:3] for line in shown.splitlines() if line.startswith("  pacs") or line.startswith("  other")
    ] == [["other", "pending", "0"], ["pacs", "dead", "1"]]

    assert main(["studies", "resend", drafted.study_uid, "--destination", "pacs"]) == 0
    both = f"{drafted.sr_sop_instance_uid} and {drafted.results_sr_sop_instance_uid}"  # the draft and its AI results
    assert capsys.readouterr().out == f"queued SR {both} (draft generation 1) for pacs\n"
    assert sent.calls == [(drafted.draft_id, ["pacs"])]
    row = export_row(drafted, "pacs")
    assert (row.state, row.attempts, row.last_error, row.exported_at) == ("pending", 0, None, None)

    assert main(["studies", "resend", drafted.study_uid]) == 0  # every destination
    assert sent.calls[-1] == (drafted.draft_id, ["pacs", "other"])
    assert run_export(drafted, "pacs") == "dead"  # the queued task runs again: one more try
    assert export_row(drafted, "pacs").attempts == 1

    with session_scope(drafted.database_url) as session:  # a worker is sending to "other" right now
        assert (
            begin_attempt(
                session,
                draft_id=drafted.draft_id,
                destination="other",
                task_id="sending-now",
                holder="predraft-export@elsewhere",
                lease_seconds=600.0,
            )
            is not None
        )
    capsys.readouterr()
    assert main(["studies", "resend", drafted.study_uid]) == 0
    assert sent.calls[-1] == (drafted.draft_id, ["pacs"])  # that try is left to finish
    assert "not queued for other: a worker is sending it now" in capsys.readouterr().out
    assert export_row(drafted, "other").state == "sending"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--destination", "nope"], "no export destination 'nope' (configured: pacs)"),
        (["--study", "1.2.3"], "no study with StudyInstanceUID 1.2.3"),
    ],
)
def test_resend_refuses_what_it_cannot_do(drafted, monkeypatch, capsys, argv, message):
    configure(monkeypatch, drafted, [{**DOWN, "name": "pacs", "port": 104}])
    monkeypatch.setattr(export_task, "send_exports", Sent())
    study = drafted.study_uid
    if argv[0] == "--study":
        study, argv = argv[1], []
    assert main(["studies", "resend", study, *argv]) == 1
    assert message in capsys.readouterr().err


def test_resend_without_destinations_says_so(drafted, monkeypatch, capsys):
    configure(monkeypatch, drafted, [])
    assert main(["studies", "resend", drafted.study_uid]) == 1
    assert "no export destinations are configured" in capsys.readouterr().err


def test_retry_delays_double_up_to_the_longest():
    assert [retry_delay(n, first=10, longest=600) for n in range(8)] == [10, 20, 40, 80, 160, 320, 600, 600]
    assert retry_delay(10_000, first=10, longest=600) == 600
    with pytest.raises(ValueError, match="retries must be >= 0, not -1"):
        retry_delay(-1, first=10, longest=600)


@pytest.mark.postgres
def test_queueing_twice_makes_one_row_per_destination_on_postgresql(postgres_url, demo_study, tiny_card_path, tmp_path):
    drafted = make_draft(postgres_url, [image.path for image in demo_study], tiny_card_path, tmp_path / "spool")
    assert queue(drafted, "pacs", "vna") == ["pacs", "vna"]
    assert queue(drafted, "pacs", "vna", "new") == ["pacs", "vna", "new"]  # still pending: sent again, harmless
    with session_scope(postgres_url) as session:
        draft = session.get_one(Draft, drafted.draft_id)
        assert [(e.destination, e.state, e.attempts) for e in draft.exports] == [
            ("new", "pending", 0),
            ("pacs", "pending", 0),
            ("vna", "pending", 0),
        ]
