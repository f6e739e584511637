"""The worklist query service on many studies: pages, order, the worklist states, search and dates."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest

from predraft.core.db import session_scope
from predraft.core.schema import Study
from predraft.worklist.present import WorklistState, person_name, view_label
from predraft.worklist.worklist import PAGE_SIZE, QueryError, WorklistQuery, worklist_page


@pytest.fixture
def studies(sqlite_url: str) -> str:
    start = datetime(2026, 11, 1, tzinfo=UTC)
    states = ["receiving", "ready", "ready", "drafting", "drafted", "reviewed", "error", "out_of_scope"]
    with session_scope(sqlite_url) as session:
        for n in range(120):
            state = states[n % len(states)]
            prepared = start if state == "ready" and n % 16 == 2 else None  # the second "ready" of each 16
            session.add(
                Study(
                    study_uid=f"2.25.{n}",
                    patient_id=f"PID{n:04d}",
                    patient_name=f"NAME{n:03d}^X",
                    accession_number=f"ACC_{n:04d}",
                    study_date=(date(2026, 1, 1) + timedelta(days=n)).strftime("%Y%m%d"),
                    state=state,
                    received_at=start + timedelta(minutes=n),
                    last_instance_at=start + timedelta(minutes=n),
                    prepared_at=prepared,
                )
            )
    return sqlite_url


def _page(url: str, **params: str):  # type: ignore[no-untyped-def]
    with session_scope(url) as session:
        return worklist_page(session, WorklistQuery.from_params(params))


def test_pages_newest_first_by_default(studies):
    first = _page(studies)
    assert (first.total, first.pages, len(first.rows)) == (120, 3, PAGE_SIZE)
    assert [row["study_uid"] for row in first.rows[:2]] == ["2.25.119", "2.25.118"]
    last = _page(studies, page="3")
    assert len(last.rows) == 20 and last.rows[-1]["study_uid"] == "2.25.0"
    assert _page(studies, page="9").rows == []


def test_sorting_by_patient_ascending(studies):
    rows = _page(studies, sort="patient", order="asc").rows
    assert [row["patient_name"] for row in rows[:2]] == ["NAME000, X", "NAME001, X"]


def test_worklist_states_map_onto_study_states(studies):
    counts = {state: _page(studies, state=state.value).total for state in WorklistState}
    # 120 studies, 8 states round robin: 15 each; "ready" splits into waiting and classifying (prepared ones),
    # and "drafting" counts as classifying.
    assert counts == {
        WorklistState.RECEIVING: 15,
        WorklistState.WAITING: 22,
        WorklistState.CLASSIFYING: 23,
        WorklistState.DRAFTED: 15,
        WorklistState.REVIEWED: 15,
        WorklistState.ERROR: 15,
        WorklistState.OUT_OF_SCOPE: 15,
    }
    assert {row["state"] for row in _page(studies, state="classifying").rows} == {"classifying"}


def test_search_by_leading_part_of_accession_or_patient_id_and_dates(studies):
    assert _page(studies, q="pid011").total == 10  # PID0110..PID0119
    assert _page(studies, q="ACC_0007").total == 1
    assert _page(studies, q="ACC_").total == 120
    assert _page(studies, q="ACC%").total == 0  # LIKE wildcards are literal
    assert _page(studies, q="_").total == 0
    assert _page(studies, **{"from": "2026-01-01", "to": "2026-01-10"}).total == 10


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"state": "signed"}, "state 'signed' is not one of"),
        ({"sort": "password"}, "sort 'password'"),
        ({"order": "up"}, "order 'up'"),
        ({"page": "0"}, "page 0"),
        ({"page": "x"}, "page 'x'"),
        ({"from": "yesterday"}, "from 'yesterday' is not a date"),
    ],
)
def test_bad_parameters_are_refused_by_name(params, message):
    with pytest.raises(QueryError, match=message):
        WorklistQuery.from_params(params)


def test_query_parameters_round_trip():
    query = WorklistQuery.from_params({"state": "drafted", "q": "A1", "sort": "patient", "order": "asc", "page": "2"})
    assert WorklistQuery.from_params(query.params()) == query
    assert query.params(page=1) == {"state": "drafted", "q": "A1", "sort": "patient", "order": "asc"}


def test_presentation_helpers():
    assert person_name("Doe^Jane^M") == "Doe, Jane M"
    assert person_name("Doe") == "Doe" and person_name("") == ""
    assert view_label("frog_leg", "right") == "Frog-leg R"
    assert view_label("ap_pelvis", "right+left") == "AP pelvis"
    assert view_label("ap_hip", "bogus") == "AP hip ?"
