"""``predraft evaluate-real``: the gate, the hip model and the metal check on labelled images (tiny synthetic set)."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from predraft.cli import cli
from predraft.evaluate_real import METRICS, PREDICTIONS, EvaluateRealError, evaluate_real, summary_lines
from predraft.models.card import DEMO_MODEL_CARD, load_card
from predraft.models.taskdata import TaskLabelsError
from tests.unit.test_image_tasks import TASKS, torch_threads, write_csv, write_random_task_card, write_synthetic_set

THRESHOLDS = {"region": {"hip": 0.6, "shoulder": 0.7}, "hardware": {"present": 0.55}}


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    yield from torch_threads(1)


@pytest.fixture(scope="module")
def labelled(tmp_path_factory) -> dict[str, Any]:
    folder = tmp_path_factory.mktemp("evaluate-real")
    csv_path, images_dir, rows = write_synthetic_set(folder / "data")
    gate_card = write_random_task_card(folder / "gate", thresholds=THRESHOLDS)
    return {"folder": folder, "csv": csv_path, "images": images_dir, "rows": rows, "gate": gate_card}


@pytest.fixture(scope="module")
def result(labelled) -> dict[str, Any]:
    out = labelled["folder"] / "out"
    metrics = evaluate_real(
        labelled["csv"], labelled["images"], out, gate_card=labelled["gate"], n_bootstrap=20, workers=1
    )
    with (out / PREDICTIONS).open(newline="") as handle:
        predictions = list(csv.DictReader(handle))
    return {"metrics": metrics, "written": json.loads((out / METRICS).read_text()), "predictions": predictions}


def _figures(node: Any, *, kappas: bool = False) -> list[dict[str, Any]]:
    """Every grouped rate in a metrics tree (``kappas``: every Cohen's kappa instead, which is no share)."""
    if isinstance(node, dict):
        if "ci95" in node and "n" in node:
            return [node] if not kappas else []
        return [
            figure
            for key, value in node.items()
            for figure in (([value] if kappas else []) if key == "kappa" else _figures(value, kappas=kappas))
        ]
    return []


def _count(rows: list[dict[str, str]], **where: object) -> int:
    def matches(row: dict[str, str]) -> bool:
        return all(test(row[key]) if callable(test) else row[key] == test for key, test in where.items())

    return sum(matches(row) for row in rows)


def test_every_figure_is_a_share_in_its_interval(result):
    metrics = result["metrics"]
    assert result["written"] == metrics
    figures = _figures(metrics)
    assert len(figures) > 20
    for figure in figures:
        if figure["n"] == 0:
            assert figure["value"] is None
            continue
        low, high = figure["ci95"]
        assert 0 <= low <= figure["value"] <= high <= 1
        assert figure["hits"] == round(figure["value"] * figure["n"])
    kappas = _figures(metrics, kappas=True)
    assert kappas, "every task reports Cohen's kappa"
    for kappa in kappas:
        if kappa["value"] is not None:
            low, high = kappa["ci95"]
            assert -1 <= low <= kappa["value"] <= high <= 1


def test_counts_follow_the_csv(result, labelled):
    rows, metrics = labelled["rows"], result["metrics"]
    assert metrics["rows"] == len(rows)
    assert metrics["groups"] == len({row["group"] for row in rows})
    assert metrics["rows_by_crop"] == {crop: _count(rows, crop=crop) for crop in ("image_left", "image_right", "whole")}

    region = metrics["gate"]["region"]
    assert region["accuracy"]["n"] == _count(rows, crop="whole")
    for name in TASKS["region"]:
        assert region["classes"][name]["sensitivity"]["n"] == _count(rows, region=name)
        assert region["classes"][name]["specificity"]["n"] == _count(rows, region=lambda v, n=name: v not in ("", n))
    rules = region["service_rules"]
    assert (
        rules["hip_kept_tagged_or_drafted_untagged"]["n"]
        == rules["hip_overrules_other_region_tags"]["n"]
        == _count(rows, region="hip")
    )
    assert (
        rules["other_ruled_out_tagged_hip_or_refused_untagged"]["n"]
        == rules["other_keeps_own_region_tags"]["n"]
        == _count(rows, region="shoulder")
    )

    hardware = metrics["hardware_present"]
    assert hardware["gate_threshold"] == THRESHOLDS["hardware"]["present"]
    for source in ("gate", "metal"):
        for label, is_whole in (("whole images", True), ("hip halves", False)):
            crop = (lambda v: v == "whole") if is_whole else (lambda v: v != "whole")
            figures = hardware[source][label]
            assert figures["sensitivity"]["n"] == _count(rows, crop=crop, hardware="present")
            assert figures["specificity"]["n"] == _count(rows, crop=crop, hardware="absent")

    hip_model = metrics["hip_model"]
    assert hip_model["whole images"]["read_as_hardware"]["n"] == _count(
        rows, crop="whole", region="hip", hardware="absent"
    )
    assert hip_model["hip halves"]["drafted_as_hardware"]["n"] == _count(
        rows, crop=lambda v: v != "whole", hardware="absent"
    )


def test_the_models_are_named_with_their_versions(result, labelled):
    models = result["metrics"]["models"]
    demo, _ = load_card(DEMO_MODEL_CARD, verify_weights=False)
    assert (models["gate"]["name"], models["gate"]["version"]) == ("tiny-gate", "0.0.1")
    assert models["gate"]["thresholds"] == THRESHOLDS
    assert (models["hip"]["name"], models["hip"]["version"]) == (demo.name, demo.version)
    assert models["metal"]["name"] == "predraft.models.metal.detect_metal"


def test_predictions_have_one_line_per_row_agreeing_with_the_figures(result, labelled):
    rows, predictions, metrics = labelled["rows"], result["predictions"], result["metrics"]
    assert [(p["image"], p["group"], p["crop"]) for p in predictions] == [
        (r["image"], r["group"], r["crop"]) for r in rows
    ]
    assert [(p["label_region"], p["label_hardware"]) for p in predictions] == [
        (r["region"], r["hardware"]) for r in rows
    ]
    demo, _ = load_card(DEMO_MODEL_CARD, verify_weights=False)
    for line in predictions:
        assert abs(float(line["gate_p_region_hip"]) + float(line["gate_p_region_shoulder"]) - 1) < 1e-4
        assert 0 <= float(line["gate_p_hardware_present"]) <= 1 and 0 <= float(line["metal_score"]) <= 1
        assert line["hip_top_class"] in set(demo.classes)
        assert line["metal_present"] == str(int(float(line["metal_score"]) >= 0.5))
    # the metal baseline counts exactly the crops predictions.csv marks as metal
    metal_whole = metrics["hardware_present"]["metal"]["whole images"]["sensitivity"]
    assert metal_whole["hits"] == _count(predictions, crop="whole", label_hardware="present", metal_present="1")
    gate_halves = metrics["hardware_present"]["gate"]["hip halves"]["specificity"]
    assert gate_halves["hits"] == sum(
        line["crop"] != "whole" and line["label_hardware"] == "absent" and float(line["gate_p_hardware_present"]) < 0.55
        for line in predictions
    )
    drafted = metrics["hip_model"]["hip halves"]["drafted_as_hardware"]
    assert drafted["hits"] == _count(
        predictions, crop=lambda v: v != "whole", label_hardware="absent", hip_drafted_as_hardware="1"
    )


def test_summary_names_each_section(result):
    text = "\n".join(summary_lines(result["metrics"]))
    for expected in (
        "48 rows",
        "region accuracy",
        "hip_kept_tagged_or_drafted_untagged",
        "hardware present, hip halves, metal",
        "hardware present, whole images, gate",
        "on hips without hardware",
    ):
        assert expected in text


def test_command_prints_the_summary_and_writes_the_reports(labelled, tmp_path):
    out = tmp_path / "out"
    outcome = CliRunner().invoke(
        cli,
        [
            "evaluate-real",
            str(labelled["csv"]),
            "--images",
            str(labelled["images"]),
            "--out",
            str(out),
            "--gate-card",
            str(labelled["gate"]),
            "--model-card",
            str(DEMO_MODEL_CARD),
            "--n-bootstrap",
            "10",
            "--seed",
            "3",
        ],
    )
    assert outcome.exit_code == 0, outcome.output
    assert "region accuracy" in outcome.output and "metal: sensitivity" in outcome.output
    assert f"reports in {out}" in outcome.output
    written = json.loads((out / METRICS).read_text())
    assert (written["n_bootstrap"], written["seed"]) == (10, 3)


@pytest.mark.parametrize("column", ["set", "split"])
def test_split_keeps_the_groups_of_the_chosen_set(labelled, tmp_path, column):
    groups = sorted({row["group"] for row in labelled["rows"]})
    chosen = [group for group in groups if group.endswith("-0")]
    split = write_csv(
        tmp_path / "split.csv", [{"patient": group, column: "test" if group in chosen else "train"} for group in groups]
    )
    metrics = evaluate_real(
        labelled["csv"],
        labelled["images"],
        tmp_path / "out",
        gate_card=labelled["gate"],
        split_file=split,
        n_bootstrap=10,
        workers=1,
    )
    assert metrics["rows"] == _count(labelled["rows"], group=lambda g: g in chosen)
    assert metrics["groups"] == len(chosen)
    assert metrics["split"] == {"file": str(split), "set": "test"}


def test_source_keeps_the_rows_of_the_named_sources(labelled, tmp_path):
    rows = [{**row, "source": "phantoms" if row["group"].endswith("-0") else "fracatlas"} for row in labelled["rows"]]
    csv_path = write_csv(tmp_path / "labels.csv", rows)
    metrics = evaluate_real(
        csv_path,
        labelled["images"],
        tmp_path / "out",
        gate_card=labelled["gate"],
        sources=("fracatlas",),
        n_bootstrap=10,
        workers=1,
    )
    assert metrics["rows"] == _count(rows, source="fracatlas") < len(rows)
    assert metrics["rows_by_source"] == {"fracatlas": metrics["rows"]} and metrics["sources"] == ["fracatlas"]
    outcome = _invoke(
        labelled, tmp_path, "--gate-card", str(labelled["gate"]), "--source", "shoulder-implants", labels=csv_path
    )
    assert outcome.exit_code == 1 and "among the sources ['shoulder-implants']" in outcome.output


def test_region_only_labels_give_the_gate_figures_alone(labelled, tmp_path):
    csv_path = write_csv(
        tmp_path / "labels.csv",
        [row for row in labelled["rows"] if row["region"]],
        ("image", "group", "crop", "region"),
    )
    metrics = evaluate_real(
        csv_path, labelled["images"], tmp_path / "out", gate_card=labelled["gate"], n_bootstrap=10, workers=1
    )
    assert set(metrics["gate"]) == {"region"}
    assert metrics["hardware_present"] is None and metrics["hip_model"] is None


def test_a_gate_without_hardware_leaves_the_metal_baseline(labelled, tmp_path):
    gate = write_random_task_card(tmp_path / "gate", {"region": TASKS["region"]})
    metrics = evaluate_real(
        labelled["csv"], labelled["images"], tmp_path / "out", gate_card=gate, n_bootstrap=10, workers=1
    )
    assert set(metrics["hardware_present"]) == {"metal"}
    assert "service_rules" in metrics["gate"]["region"]
    assert metrics["hip_model"]["whole images"]["read_as_hardware"]["n"] > 0


# --- errors ---------------------------------------------------------------------------------------------------


def _invoke(labelled: dict[str, Any], tmp_path: Path, *extra: str, labels: Path | None = None):
    return CliRunner().invoke(
        cli,
        [
            "evaluate-real",
            str(labels or labelled["csv"]),
            "--images",
            str(labelled["images"]),
            "--out",
            str(tmp_path / "out"),
            "--n-bootstrap",
            "10",
            *extra,
        ],
    )


def test_labels_without_region_or_hardware_are_refused(labelled, tmp_path):
    csv_path = write_csv(tmp_path / "labels.csv", labelled["rows"], ("image", "group", "crop"))
    outcome = _invoke(labelled, tmp_path, "--gate-card", str(labelled["gate"]), labels=csv_path)
    assert outcome.exit_code == 1
    assert "has neither a region nor a hardware column" in outcome.output
    assert not (tmp_path / "out").exists()


def test_labels_without_a_group_column_are_refused(labelled, tmp_path):
    csv_path = write_csv(tmp_path / "labels.csv", labelled["rows"], ("image", "crop", "region", "hardware"))
    with pytest.raises(TaskLabelsError, match=r"lacks the column\(s\) \['group'\]"):
        evaluate_real(csv_path, labelled["images"], tmp_path / "out", gate_card=labelled["gate"], workers=1)


def test_a_label_outside_the_gate_classes_is_refused(labelled, tmp_path):
    rows = [dict(row) for row in labelled["rows"]]
    rows[0]["region"] = "knee"
    csv_path = write_csv(tmp_path / "labels.csv", rows)
    outcome = _invoke(labelled, tmp_path, "--gate-card", str(labelled["gate"]), labels=csv_path)
    assert outcome.exit_code == 1 and "['knee'] outside the classes ['hip', 'shoulder']" in outcome.output


def test_a_gate_card_without_a_region_task_is_refused(labelled, tmp_path):
    gate = write_random_task_card(tmp_path / "gate", {"hardware": TASKS["hardware"]})
    outcome = _invoke(labelled, tmp_path, "--gate-card", str(gate))
    assert outcome.exit_code == 1 and "has no region task" in outcome.output


def test_a_split_that_leaves_no_row_is_refused(labelled, tmp_path):
    split = write_csv(tmp_path / "split.csv", [{"patient": row["group"], "set": "train"} for row in labelled["rows"]])
    outcome = _invoke(labelled, tmp_path, "--gate-card", str(labelled["gate"]), "--split", str(split))
    assert outcome.exit_code == 1 and "no labelled row" in outcome.output and "'test' set" in outcome.output


def test_a_split_file_without_its_columns_is_refused(labelled, tmp_path):
    split = write_csv(tmp_path / "split.csv", [{"group": "x", "fold": "0"}])
    with pytest.raises(EvaluateRealError, match="needs the columns patient and set"):
        evaluate_real(
            labelled["csv"],
            labelled["images"],
            tmp_path / "out",
            gate_card=labelled["gate"],
            split_file=split,
            workers=1,
        )


def test_a_missing_gate_card_is_named(labelled, tmp_path, monkeypatch):
    import predraft.models.taskcard

    monkeypatch.setattr(predraft.models.taskcard, "GATE_CARD", tmp_path / "no-gate" / "card.json")
    with pytest.raises(ValueError, match="no-gate/card.json does not exist"):
        evaluate_real(labelled["csv"], labelled["images"], tmp_path / "out", workers=1)


def test_an_untagged_native_image_read_as_a_pelvis_is_served_as_its_two_halves():
    import numpy as np

    from predraft.evaluate_real import native_hips, untagged_hips_as_served
    from predraft.models.taskdata import TaskRow

    def row(image: str, crop: str, **labels: str) -> TaskRow:
        return TaskRow(image, image, crop, labels)

    rows = [
        row("a", "whole", region="hip", hardware="absent"),
        row("a", "image_left", hardware="absent"),
        row("a", "image_right", hardware="absent"),
        row("b", "whole", region="hip", hardware="absent"),  # read as pelvis, but its halves are not labelled
        row("c", "whole", region="hip", hardware="absent"),
        row("c", "image_left", hardware="absent"),
        row("c", "image_right", hardware="absent"),  # not read as a pelvis
        row("d", "whole", region="leg", hardware="absent"),
    ]  # not a hip
    pelvis = np.array([0.9, 0.0, 0.0, 0.95, 0.2, 0.0, 0.0, 0.99])
    served, split = untagged_hips_as_served(rows, native_hips(rows), pelvis, threshold=0.5)
    assert served == [1, 2, 3, 4]
    assert split.tolist() == [True, False, False]


def test_native_hips_are_the_hips_without_an_implant_a_cast_or_a_ring_included():
    from predraft.evaluate_real import native_hips
    from predraft.models.taskdata import TaskRow

    rows = [
        TaskRow("a", "a", "whole", {"region": "hip", "hardware": "absent"}),
        TaskRow("b", "b", "whole", {"region": "hip", "hardware": "external"}),  # a cast or jewellery: no implant
        TaskRow("c", "c", "whole", {"region": "hip", "hardware": "present"}),
        TaskRow("d", "d", "whole", {"region": "leg", "hardware": "external"}),  # not a hip
        TaskRow("e", "e", "image_left", {"hardware": "external"}),
        TaskRow("f", "f", "image_right", {"hardware": "present"}),
    ]
    assert native_hips(rows).tolist() == [True, True, False, False, True, False]
