"""Golden drafts: what the shipped demo model and gate draft for phantom studies and the real NEMA files.

Each case is received, prepared, gated, classified and drafted in this process by the real Celery tasks (the
broker replaced by a recording app whose messages are run in order), against SQLite, with the embedded default
model and gate. What is compared, per study: its state and error, each image's view, side, scope and state,
the draft text, and the header and content tree of the narrative SR and of the AI results SR, UIDs, dates and times
aside (``tests/golden/<case>.json``).

A change that should not alter behaviour (a refactoring) must leave these files as they are. A change that
alters drafts on purpose rewrites them, and the diff is reviewed with it::

    PREDRAFT_UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/unit/test_golden_drafts.py
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.uid import generate_uid
from sqlalchemy import select

from predraft.core.db import session_scope
from predraft.core.schema import Instance, Study
from predraft.models.phantoms.dataset import write_phantom_dataset
from tests.conftest import real_file
from tests.inprocess import draft_in_process

GOLDEN = Path(__file__).resolve().parents[1] / "golden"
UPDATE = os.environ.get("PREDRAFT_UPDATE_GOLDEN") == "1"

#: Real files, each sent as a study of its own; the value names what is changed on the way (None: as it is).
REAL_CASES = {
    "real-RG2_UNC": ("RG2_UNC.dcm", None),  # native AP hip, tagged HIP
    "real-RG2_untagged": ("RG2_UNC.dcm", "no body part"),  # the same without BodyPartExamined
    "real-RG2_J2KR": ("RG2_J2KR.dcm", None),  # the same pixels, JPEG 2000 lossless
    "real-RG2_JPLY": ("RG2_JPLY.dcm", None),  # a JPEG stream no decoder reads
    "real-RG3_UNC": ("RG3_UNC.dcm", None),  # distal tibia
    "real-RG3_tagged_pelvis": ("RG3_UNC.dcm", "tagged PELVIS"),  # a tibia that says PELVIS
    "real-RG1_UNCR": ("RG1_UNCR.dcm", None),  # chest PA
    "real-NM_hand": ("NM_Kakadu44_SOTmarkerincons.dcm", None),  # hand
}
PHANTOM_STUDIES, PHANTOM_SEED = 8, 11
#: Content item values that change from run to run.
VOLATILE_VALUE_TYPES = {"UIDREF", "DATETIME", "DATE", "TIME"}
SR_HEADER = (
    "SOPClassUID",
    "Modality",
    "SeriesDescription",
    "CompletionFlag",
    "VerificationFlag",
    "PreliminaryFlag",
    "Manufacturer",
    "ManufacturerModelName",
    "SoftwareVersions",
)


def _real_copies(folder: Path) -> dict[str, Path]:
    """Each real case as its own study (a study UID of its own), changed as :data:`REAL_CASES` says."""
    folder.mkdir()
    paths = {}
    for case, (name, change) in REAL_CASES.items():
        ds = pydicom.dcmread(real_file(name))
        ds.StudyInstanceUID = generate_uid(entropy_srcs=["golden", case])
        ds.SeriesInstanceUID = generate_uid(entropy_srcs=["golden", case, "series"])
        ds.SOPInstanceUID = generate_uid(entropy_srcs=["golden", case, "image"])
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.AccessionNumber = case[-16:]
        if change == "no body part":
            del ds.BodyPartExamined
        elif change == "tagged PELVIS":
            ds.BodyPartExamined = "PELVIS"
        paths[case] = folder / f"{case}.dcm"
        ds.save_as(paths[case], enforce_file_format=True)
    return paths


def _sr_content(items: Any) -> list[Any]:
    """An SR content tree as nested lists: value type, concept name, value (volatile values left out)."""
    tree: list[Any] = []
    for item in items:
        name = item.ConceptNameCodeSequence[0].CodeMeaning if "ConceptNameCodeSequence" in item else ""
        value: Any = None
        if item.ValueType in VOLATILE_VALUE_TYPES:
            value = "(volatile)"
        elif item.ValueType == "TEXT":
            value = item.TextValue
        elif item.ValueType == "CODE":
            code = item.ConceptCodeSequence[0]
            value = [code.CodingSchemeDesignator, code.CodeValue, code.CodeMeaning]
        elif item.ValueType == "NUM":
            measured = item.MeasuredValueSequence[0]
            # Two decimals: a last digit that differs between CPUs' float arithmetic is not a change of behaviour.
            value = [f"{float(measured.NumericValue):.2f}", measured.MeasurementUnitsCodeSequence[0].CodeValue]
        elif item.ValueType == "PNAME":
            value = str(item.PersonName)
        elif item.ValueType == "CONTAINER":
            value = item.get("ContinuityOfContent")
        elif item.ValueType == "IMAGE":
            value = item.ReferencedSOPSequence[0].ReferencedSOPClassUID
        elif item.ValueType == "SCOORD":
            value = [item.GraphicType, [round(float(v), 1) for v in item.GraphicData]]
        entry = [item.get("RelationshipType", ""), item.ValueType, name, value]
        if "ContentSequence" in item:
            entry.append(_sr_content(item.ContentSequence))
        tree.append(entry)
    return tree


def _study_record(session: Any, study: Study) -> dict[str, Any]:
    instances = session.scalars(select(Instance).where(Instance.study_id == study.id)).all()
    record: dict[str, Any] = {
        "study": {"state": study.state, "error": study.error, "description": study.study_description},
        "images": sorted(
            (
                {
                    "series": instance.series.series_description,
                    "state": instance.state,
                    "error": instance.error,
                    "view": instance.view,
                    "view_rule": instance.view_rule,
                    "side": instance.side,
                    "region_read": instance.region_read,
                    "scope_flag": instance.scope_flag,
                    "scope_note": instance.scope_note,
                    "pack": instance.pack,
                    "predictions": sorted((p.side, p.view, p.top_class) for p in instance.predictions),
                }
                for instance in instances
            ),
            key=lambda image: json.dumps(image, sort_keys=True),
        ),
        "drafts": [],
    }
    for draft in study.drafts:
        sr = pydicom.dcmread(draft.sr_path)
        entry = {
            "kind": draft.kind,
            "model": [draft.model_name, draft.model_version],
            "pack": draft.pack,
            "text": draft.text,
            "sr_header": {keyword: str(sr.get(keyword, "")) for keyword in SR_HEADER},
            "sr_title": sr.ConceptNameCodeSequence[0].CodeMeaning,
            "sr_content": _sr_content(sr.ContentSequence),
        }
        if draft.results_sr_path:
            results = pydicom.dcmread(draft.results_sr_path)
            entry["results_sr_header"] = {keyword: str(results.get(keyword, "")) for keyword in SR_HEADER}
            entry["results_sr_content"] = _sr_content(results.ContentSequence)
        record["drafts"].append(entry)
    return json.loads(json.dumps(record))  # as read back from the file: tuples become lists


@pytest.fixture(scope="module")
def drafted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """Every case drafted once, by name."""
    folder = tmp_path_factory.mktemp("golden")
    write_phantom_dataset(folder / "phantoms", studies=PHANTOM_STUDIES, seed=PHANTOM_SEED)
    names: dict[str, str] = {}  # study UID -> case name
    paths = sorted((folder / "phantoms").rglob("*.dcm"))
    for path in paths:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        names[ds.StudyInstanceUID] = f"phantom-{ds.AccessionNumber}"
    for case, path in _real_copies(folder / "real").items():
        paths.append(path)
        names[pydicom.dcmread(path, stop_before_pixels=True).StudyInstanceUID] = case
    url = draft_in_process(folder, paths)
    with session_scope(url) as session:
        return {
            names[study.study_uid]: _study_record(session, study)
            for study in session.scalars(select(Study).order_by(Study.id))
        }


def _cases() -> list[str]:
    phantoms = sorted(path.stem for path in GOLDEN.glob("phantom-*.json"))
    return [*phantoms, *REAL_CASES]


def test_every_case_has_a_golden_file_and_every_golden_file_a_case(drafted):
    if UPDATE:
        GOLDEN.mkdir(exist_ok=True)
        for stale in GOLDEN.glob("*.json"):
            stale.unlink()
        for case, record in drafted.items():
            (GOLDEN / f"{case}.json").write_text(json.dumps(record, indent=1, ensure_ascii=False) + "\n")
    assert sorted(path.stem for path in GOLDEN.glob("*.json")) == sorted(drafted)
    # Something is drafted, something is refused and something fails: the cases cover the three outcomes.
    states = {record["study"]["state"] for record in drafted.values()}
    assert {"drafted", "out_of_scope", "error"} <= states, states


@pytest.mark.parametrize("case", _cases())
def test_draft_is_as_golden(drafted, case):
    path = GOLDEN / f"{case}.json"
    assert case in drafted, f"{case} was not drafted"
    assert drafted[case] == json.loads(path.read_text())
