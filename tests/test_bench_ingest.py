"""bench/ingest.py: its receivers take what storescu sends, whole (the bare pynetdicom ceiling, the Orthanc
reference counted through its REST API), and a tiny run writes every rate, ratio and target it promises."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pydicom
import pytest

from tests.conftest import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "bench"))
import ingest  # noqa: E402  (bench/ is scripts, not a package: found through the path set above)
import ingest_support  # noqa: E402

pytestmark = pytest.mark.skipif(shutil.which("storescu") is None, reason="dcmtk's storescu is not installed")
needs_orthanc = pytest.mark.skipif(ingest_support.ORTHANC is None, reason="Orthanc is not installed")

RECEIVERS = ("storescp", "predraft", "pynetdicom_bare", "orthanc")
#: Each ratio in a row: (subject, reference).
RATIOS = {
    "predraft_over_orthanc": ("predraft", "orthanc"),
    "orthanc_over_storescp": ("orthanc", "storescp"),
    "predraft_over_storescp": ("predraft", "storescp"),
    "pynetdicom_bare_over_storescp": ("pynetdicom_bare", "storescp"),
    "predraft_over_pynetdicom_bare": ("predraft", "pynetdicom_bare"),
}


def test_the_bare_pynetdicom_receiver_files_every_instance_it_acknowledges(tmp_path: Path) -> None:
    sent = ingest_support.write_copies(ingest_support.small_template(), 3, tmp_path / "send", "small")
    (tmp_path / "work").mkdir()
    with ingest_support.bare_pynetdicom(tmp_path / "work") as receiver:
        seconds = ingest_support.send_concurrently(receiver, [sent[:2], sent[2:]])
        assert receiver.stored() == 3
        received = {
            pydicom.dcmread(path).SOPInstanceUID: pydicom.dcmread(path).PixelData
            for path in receiver.store_dir.glob(receiver.pattern)
        }
    assert seconds > 0
    assert received == {pydicom.dcmread(path).SOPInstanceUID: pydicom.dcmread(path).PixelData for path in sent}
    # Nothing half-received is left beside the output.
    assert not any((tmp_path / "work" / "bare-out-receiving").iterdir())


@needs_orthanc
def test_the_orthanc_receiver_counts_what_it_stored_through_its_rest_api(tmp_path: Path) -> None:
    sent = ingest_support.write_copies(ingest_support.small_template(), 3, tmp_path / "send", "small")
    work = tmp_path / "work"
    work.mkdir()
    with ingest_support.orthanc_receiver(work) as receiver:
        assert receiver.stored() == 0
        seconds = ingest_support.send_concurrently(receiver, [sent[:2], sent[2:]])
        assert receiver.stored() == 3
        config = json.loads((work / "orthanc.json").read_text())
    assert seconds > 0
    assert config["SyncStorageArea"] is True and config["StorageCompression"] is False
    assert config["TcpNoDelay"] is True and config["Plugins"] == []
    assert config["DicomPort"] == receiver.port and config["HttpPort"] != receiver.port
    # Its storage is its own folder under the work folder, holding the files themselves.
    assert sum(1 for path in Path(config["StorageDirectory"]).rglob("*") if path.is_file()) >= 3


@needs_orthanc
@pytest.mark.slow
def test_a_tiny_run_reports_orthanc_beside_the_others_with_ratios_and_targets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(ingest, "DISK_PROBE_LARGE_BYTES", 16_000_000)  # the probe, not the bench, is not tested
    output = tmp_path / "ingest.json"
    assert ingest.main(["--large", "4", "--small", "4", "--repeats", "1", "--output", str(output)]) == 0
    report = json.loads(output.read_text())

    assert report["machine"]["orthanc"]
    rows = {(row["size"], row["associations"]): row for row in report["results"]}
    assert set(rows) == {("large", 1), ("large", 4), ("small", 1), ("small", 4)}
    for row in rows.values():
        for name in RECEIVERS:
            assert row[name]["instances_per_s"] > 0 and row[name]["mb_per_s"] > 0, (row["scenario"], name)
            assert row[name]["seconds_median"] > 0
        assert "Orthanc" in row["orthanc"]["receiver"]
        for key, (subject, reference) in RATIOS.items():
            seconds = row[reference]["seconds_median"] / row[subject]["seconds_median"]
            assert row[key] == pytest.approx(seconds, abs=0.006), (row["scenario"], key)
        for name in RECEIVERS:
            # The rate is computed from the median before both are rounded (the median to the millisecond, the rate
            # to a tenth): the seconds the rate gives back are the median's within those two roundings (a relative
            # tolerance on the rate fails for runs of a few milliseconds).
            rate = row[name]["instances_per_s"]
            assert row["instances"] / rate == pytest.approx(
                row[name]["seconds_median"], abs=0.0005 + 0.05 * row["instances"] / rate**2 + 1e-6
            ), (row["scenario"], name)

    targets = {(target["scenario"], target["ratio"]): target for target in report["targets"]}
    assert set(targets) == {
        ("large, 1 association", "predraft_over_orthanc"),
        ("small, 4 associations", "predraft_over_orthanc"),
        ("small, 4 associations", "predraft_over_pynetdicom_bare"),
    }
    assert [target["at_least"] for target in report["targets"]] == [1.5, 0.3, 0.6]
    for (scenario, ratio), target in targets.items():
        row = next(row for row in report["results"] if row["scenario"] == scenario)
        assert target["measured"] == row[ratio]
        assert target["met"] is (row[ratio] >= target["at_least"])
        assert target in row["targets"]
    assert report["all_targets_met"] is all(target["met"] for target in report["targets"])

    table = capsys.readouterr().out
    assert "p/orthanc" in table and "small, 4 associations" in table
    assert ">= 60 % of bare pynetdicom" in table


def test_without_orthanc_its_ratios_and_targets_are_null() -> None:
    row = {"scenario": "small, 4 associations", "size": "small", "associations": 4, "predraft_over_orthanc": None}
    row["predraft_over_pynetdicom_bare"] = 0.7
    assert ingest.evaluate_targets(row) == [
        {
            "target": "small instances, four associations: >= 0.3x Orthanc",
            "scenario": "small, 4 associations",
            "ratio": "predraft_over_orthanc",
            "at_least": 0.3,
            "measured": None,
            "met": None,
        },
        {
            "target": "small instances, four associations: >= 60 % of bare pynetdicom",
            "scenario": "small, 4 associations",
            "ratio": "predraft_over_pynetdicom_bare",
            "at_least": 0.6,
            "measured": 0.7,
            "met": True,
        },
    ]
    assert [name for name, _ in ingest._receivers(4, orthanc=False)] == ["storescp", "predraft", "pynetdicom_bare"]
