"""Routing: the tags and the gate choose each image's pack; a region no pack reads is out of scope with that
reason; a study with images of two regions gets one section per region in one draft; a radiologist can ask for a
study to be drafted anyway with a chosen pack. Run through the real tasks in this process (tests/inprocess.py),
with the bundled hip pack and gate, and a site's pack for the hand made with a tiny untrained model."""

from __future__ import annotations

from pathlib import Path

import pydicom
from prometheus_client import REGISTRY
from pydicom.uid import generate_uid
from sqlalchemy import select

from predraft.core.db import session_scope
from predraft.core.schema import Draft, Instance, Study
from predraft.models.card import load_card, write_card
from predraft.models.phantoms.dataset import write_phantom_dataset
from predraft.models.scope import ScopeFlag
from tests.conftest import real_file
from tests.inprocess import InProcessPipeline

HAND_TOML = """
name = "hands"
version = "0.1.0"
title = "Hand and wrist: orthopedic hardware"
regions = ["hand"]
examination = "Radiographs of the hand"
statement = "Says whether the hand holds hardware; nothing else."
views = ["ap_pelvis", "ap_hip", "frog_leg", "cross_table_lateral", "unknown"]
no_finding = "none"

[sides]
right = "Right hand"
left = "Left hand"
unknown = "Hand (side not stated)"

[[classes]]
name = "none"
label = "No hardware"
sentence = "No orthopedic hardware in the hand."
code = { value = "HANDNONE", scheme = "99SITE", meaning = "No hardware in the hand" }

[[classes]]
name = "fixation"
label = "Fixation"
sentence = "Fixation hardware in the hand."
code = { value = "HANDFIX", scheme = "99SITE", meaning = "Hand fixation hardware" }
"""


def _hands_pack(folder: Path, tiny_card_path: Path) -> Path:
    """A site's packs folder holding a hand pack with a tiny untrained two-class model."""
    from predraft.models.factory import write_untrained_model

    pack = folder / "packs" / "hands"
    card_path = write_untrained_model(
        pack, architecture="test_efficientnet", input_size=64, classes=("none", "fixation")
    )
    card, _ = load_card(card_path)
    write_card(card.model_copy(update={"name": "site-hands"}), card_path)
    (pack / "pack.toml").write_text(HAND_TOML)
    return pack.parent


def _drafts_counted(pack: str) -> float:
    """predraft_drafts_total{pack} in this process's registry (0 before the first)."""
    return REGISTRY.get_sample_value("predraft_drafts_total", {"pack": pack}) or 0.0


def _copy_into_study(source: Path, target: Path, study_uid: str, **tags: str) -> Path:
    ds = pydicom.dcmread(source)
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=[study_uid, source.name, "series"])
    ds.SOPInstanceUID = generate_uid(entropy_srcs=[study_uid, source.name, "image"])
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    for keyword, value in tags.items():
        setattr(ds, keyword, value)
    target.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(target, enforce_file_format=True)
    return target


def _phantom_study(folder: Path) -> tuple[str, list[Path]]:
    write_phantom_dataset(folder, studies=1, seed=11)
    paths = sorted(folder.rglob("*.dcm"))
    return str(pydicom.dcmread(paths[0], stop_before_pixels=True).StudyInstanceUID), paths


def test_a_study_of_two_regions_gets_one_section_per_pack_in_one_draft(tmp_path, tiny_card_path):
    packs = _hands_pack(tmp_path, tiny_card_path)
    study_uid, hips = _phantom_study(tmp_path / "phantom")
    hand = _copy_into_study(real_file("NM_Kakadu44_SOTmarkerincons.dcm"), tmp_path / "hand.dcm", study_uid)
    assert pydicom.dcmread(hand).BodyPartExamined == "HAND"
    before = {pack: _drafts_counted(pack) for pack in ("hip", "hands")}
    with InProcessPipeline(tmp_path, {"PREDRAFT_PACKS_DIR": str(packs)}) as pipeline:
        pipeline.receive([*hips, hand])
    assert {pack: _drafts_counted(pack) - before[pack] for pack in before} == {"hip": 1, "hands": 1}
    with session_scope(pipeline.url) as session:
        instances = session.scalars(select(Instance).order_by(Instance.id)).all()
        routed = {instance.sop_instance_uid: instance.pack for instance in instances}
        assert routed[str(pydicom.dcmread(hand).SOPInstanceUID)] == "hands"
        assert {routed[str(pydicom.dcmread(path).SOPInstanceUID)] for path in hips} == {"hip"}
        draft = session.scalars(select(Draft)).one()
        assert draft.pack == "hip, hands"
        assert [finding["pack"] for finding in draft.findings][-1] == "hands"
        assert draft.text.index("Right hip") < draft.text.index("Right hand:")
        assert "EXAMINATION: " in draft.text and "Says whether the hand holds hardware" in draft.text
        sr = pydicom.dcmread(draft.sr_path)
    assert len(sr.ContributingEquipmentSequence) == 2
    assert {item.ManufacturerModelName for item in sr.ContributingEquipmentSequence} == {
        "predraft-demo-phantoms",
        "site-hands",
    }


def test_a_region_no_pack_reads_is_out_of_scope_and_a_radiologist_can_have_it_drafted_anyway(tmp_path):
    study_uid = generate_uid(entropy_srcs=["routing", "hand only"])
    hand = _copy_into_study(real_file("NM_Kakadu44_SOTmarkerincons.dcm"), tmp_path / "hand.dcm", study_uid)
    with InProcessPipeline(tmp_path) as pipeline:
        pipeline.receive([hand])
        with session_scope(pipeline.url) as session:
            study = session.scalars(select(Study)).one()
            instance = session.scalars(select(Instance)).one()
            assert (
                study.state == "out_of_scope" and study.error == "no hip or pelvis or shoulder radiograph in this study"
            )
            assert instance.state == "skipped" and instance.error.startswith(
                "body part HAND is not a hip or pelvis or a shoulder ("
            )
            assert instance.pack is None

        pipeline.redraft(study_uid, pack="hip")
        with session_scope(pipeline.url) as session:
            study = session.scalars(select(Study)).one()
            instance = session.scalars(select(Instance)).one()
            assert study.state == "drafted" and study.requested_pack == "hip" and study.generation == 2
            assert instance.pack == "hip" and instance.scope_flag == ScopeFlag.REQUESTED.value
            assert instance.scope_note.startswith("drafted with the hip pack at a radiologist's request (routing said:")
            draft = session.scalars(select(Draft)).one()
            assert draft.pack == "hip" and "Right hip:" in draft.text
