"""A real shoulder radiograph through a real ``predraft serve``, read by the bundled shoulder pack.

A held-out image of the shoulder-implant set (never in the shoulder model's training data; the gate's training
data did hold it, so the gate's reading here shows the plumbing, not the gate's accuracy) is sent over C-STORE as
a CR with BodyPartExamined SHOULDER and ImageLaterality R: the shoulder pack drafts it, as the right shoulder,
and its SR passes dciodvfy. The same pixels without any body-part tag are routed by the gate.
"""

from __future__ import annotations

import csv
import shutil
import subprocess
from pathlib import Path

import pydicom
import pytest

from predraft.models.shoulder_data import SHOULDER_HOLDOUT
from tests.conftest import REPO_ROOT, jpeg_as_cr
from tests.e2e.conftest import Deployment

pytestmark = pytest.mark.slow

IMPLANTS = REPO_ROOT.parent / "shared" / "data" / "shoulder-implants" / "images"


def _held_out_image() -> Path:
    with SHOULDER_HOLDOUT.open(newline="") as handle:
        name = next(row["image"] for row in csv.DictReader(handle) if row["part"] == "holdout")
    path = IMPLANTS / name
    if not path.is_file():
        pytest.skip(f"{path} is absent (../shared/data/shoulder-implants is not checked out)")
    return path


def _dciodvfy_errors(path: str) -> list[str]:
    dciodvfy = shutil.which("dciodvfy")
    if dciodvfy is None:
        pytest.skip("dciodvfy (dicom3tools) is not on PATH")
    result = subprocess.run([dciodvfy, path], capture_output=True, text=True, timeout=60)
    return [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("Error")]


def test_a_real_shoulder_is_drafted_by_the_shoulder_pack_tagged_or_not(embedded: Deployment, tmp_path: Path) -> None:
    image = _held_out_image()
    tagged = jpeg_as_cr(image, tmp_path / "tagged.dcm", BodyPartExamined="SHOULDER", ImageLaterality="R")
    untagged = jpeg_as_cr(image, tmp_path / "untagged.dcm")
    embedded.storescu(tagged, untagged)

    detail = embedded.wait_for_study(str(pydicom.dcmread(tagged, stop_before_pixels=True).StudyInstanceUID))
    assert detail["state"] == "drafted", detail
    (instance,) = detail["instances"]
    assert (instance["pack"], instance["side"], instance["scope_flag"]) == ("shoulder", "right", None)
    draft = detail["draft"]
    assert draft["pack"] == "shoulder"
    assert "Right shoulder: " in draft["text"] and "EXAMINATION: Radiographs of the shoulder" in draft["text"]
    assert "for revision planning; confirm against operative records" in draft["text"]
    assert "hip" not in draft["text"].lower()
    assert _dciodvfy_errors(draft["sr_path"]) == []

    detail = embedded.wait_for_study(str(pydicom.dcmread(untagged, stop_before_pixels=True).StudyInstanceUID))
    assert detail["state"] == "drafted", detail
    (instance,) = detail["instances"]
    assert (instance["pack"], instance["region_read"], instance["scope_flag"]) == (
        "shoulder",
        "shoulder",
        "no body-part tags",
    )
    assert "Shoulder (side not stated): " in detail["draft"]["text"]
