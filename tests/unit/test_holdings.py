"""What QIDO-RS and WADO-RS see of a study (predraft.listener.dicomweb.holdings): its images, the draft's narrative SR
and AI results SR, each in a series of its own; nothing that the spool's retention purged."""

from __future__ import annotations

from sqlalchemy import select

from predraft.core.db import session_scope
from predraft.core.schema import Draft, Instance, Study, utcnow
from predraft.listener.dicomweb.holdings import study_series
from tests.unit.exporting import make_draft


def _held(url: str) -> dict[str, list[tuple[str, str]]]:
    with session_scope(url) as session:
        study = session.scalars(select(Study)).one()
        return {
            series.description: [(i.sop_class_uid, i.sop_instance_uid) for i in series.instances]
            for series in study_series(session, study)
        }


def test_both_srs_of_a_draft_are_held_in_series_of_their_own(
    clean_settings_env, sqlite_url, demo_study, tiny_card_path, tmp_path
):
    drafted = make_draft(sqlite_url, [i.path for i in demo_study], tiny_card_path, tmp_path / "spool", results_sr=True)
    held = _held(sqlite_url)
    assert held["UNVERIFIED AI DRAFT (predraft)"] == [("1.2.840.10008.5.1.4.1.1.88.33", drafted.sr_sop_instance_uid)]
    assert held["AI RESULTS, UNVERIFIED (predraft)"] == [
        ("1.2.840.10008.5.1.4.1.1.88.34", drafted.results_sr_sop_instance_uid)
    ]
    images = sum(len(instances) for description, instances in held.items() if "predraft" not in description)
    assert images == len(demo_study)


def test_what_retention_purged_is_no_longer_held(clean_settings_env, sqlite_url, demo_study, tiny_card_path, tmp_path):
    make_draft(sqlite_url, [i.path for i in demo_study], tiny_card_path, tmp_path / "spool", results_sr=True)
    with session_scope(sqlite_url) as session:
        first = session.scalars(select(Instance).order_by(Instance.id)).first()
        assert first is not None
        first.purged_at = utcnow()
        purged_uid = first.sop_instance_uid
        session.scalars(select(Draft)).one().purged_at = utcnow()
    held = _held(sqlite_url)
    uids = {uid for instances in held.values() for _, uid in instances}
    assert purged_uid not in uids and len(uids) == len(demo_study) - 1
    assert not any("predraft" in description for description in held)
