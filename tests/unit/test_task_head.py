"""predraft.models.taskhead: one more head on a trained task network, the backbone and the other heads untouched."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from predraft.models.imagetask import load_task_model
from predraft.models.taskhead import OUT_OF_FOLD, REPORT, add_task_head
from tests.unit.test_image_tasks import TASKS, torch_threads, write_csv, write_random_task_card


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    yield from torch_threads(1)


def write_field_set(folder: Path, groups: int = 12, per_group: int = 3) -> tuple[Path, Path, list[dict[str, str]]]:
    """Grey images whose field is plain to see: a ``pelvis`` has two bright blobs side by side, an ``other`` one
    in the middle. Half the groups are phantoms (a synthetic source), the rest real."""
    rng = np.random.default_rng(3)
    images = folder / "images"
    images.mkdir(parents=True)
    rows = []
    for group in range(groups):
        field = ("pelvis", "other")[group % 2]
        for index in range(per_group):
            pixels = rng.integers(0, 60, (64, 64)).astype(np.uint8)
            for x in (12, 40) if field == "pelvis" else (26,):
                pixels[24:40, x : x + 12] = 230
            name = f"g{group}-{index}.png"
            Image.fromarray(pixels).save(images / name)
            rows.append(
                {
                    "image": name,
                    "group": f"g{group}",
                    "source": "phantoms" if group % 4 >= 2 else "real",
                    "crop": "whole",
                    "field": field,
                }
            )
    return write_csv(folder / "labels.csv", rows), images, rows


@pytest.mark.parametrize("global_pool", ["avg", "catavgmax"])
def test_a_field_head_is_added_and_nothing_else_changes(tmp_path, global_pool):
    base_card = write_random_task_card(tmp_path / "base", TASKS, global_pool=global_pool)
    labels, images, rows = write_field_set(tmp_path / "data")
    card = add_task_head(
        base_card,
        labels,
        images,
        tmp_path / "run",
        task="field",
        classes=("pelvis", "other"),
        binary="pelvis",
        min_specificity=0.9,
        synthetic_sources=("phantoms",),
        folds=3,
        n_bootstrap=20,
        version="0.0.2",
        progress=lambda _: None,
    )
    assert card.version == "0.0.2" and card.tasks == {**TASKS, "field": ("pelvis", "other")}
    assert card.global_pool == global_pool
    assert 0.005 <= card.thresholds["field"]["pelvis"] <= 0.995 and card.temperatures["field"] > 0
    assert card.training["added_heads"]["field"]["min_specificity"] == {"field": 0.9}
    assert card.metrics["added_heads"]["field"]["caveat"].startswith("the backbone was trained on these images")
    figures = card.metrics["cross_validation"]["field"]
    assert figures["accuracy"]["n"] == 18 and set(figures["by_source"]) == {"phantoms", "real"}  # real rows only
    report = json.loads((tmp_path / "run" / REPORT).read_text())
    assert report["thresholds"] == card.thresholds["field"]
    with (tmp_path / "run" / OUT_OF_FOLD).open(newline="") as handle:
        out_of_fold = list(csv.DictReader(handle))
    assert len(out_of_fold) == len(rows) and {row["fold"] for row in out_of_fold} == {"0", "1", "2"}

    base, added = load_task_model(base_card), load_task_model(tmp_path / "run" / "card.json")
    pixels = np.stack([np.asarray(Image.open(images / row["image"]).resize((32, 32))) for row in rows])
    before, after = base.predict(pixels), added.predict(pixels)
    for task in TASKS:  # the backbone and the other heads are the base's, bit for bit
        np.testing.assert_array_equal(before[task], after[task])
    pelvis = after["field"][:, 0] >= 0.5
    assert (pelvis == np.array([row["field"] == "pelvis" for row in rows])).mean() >= 0.9  # it learned the field


def test_a_head_the_card_has_already_is_refused(tmp_path):
    base_card = write_random_task_card(tmp_path / "base", TASKS)
    labels, images, _ = write_field_set(tmp_path / "data")
    with pytest.raises(ValueError, match="has a 'region' head already"):
        add_task_head(
            base_card,
            labels,
            images,
            tmp_path / "run",
            task="region",
            classes=("hip", "shoulder"),
            version="0.0.2",
            progress=lambda _: None,
        )


def test_malformed_command_lines_are_refused_with_a_clear_error(tmp_path, capsys):
    from click.testing import CliRunner

    from predraft.cli import cli
    from predraft.models.taskhead import main

    base_card = write_random_task_card(tmp_path / "base", TASKS)
    labels, images, _ = write_field_set(tmp_path / "data")
    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                str(base_card),
                str(labels),
                "--images",
                str(images),
                "--out",
                str(tmp_path / "run"),
                "--task",
                "field",
                "--version",
                "0.0.2",
            ]
        )
    assert exit_info.value.code == 2 and "--task takes TASK=class,class,..." in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
    result = CliRunner().invoke(
        cli,
        [
            "train-task",
            str(labels),
            "--images",
            str(images),
            "--out",
            str(tmp_path / "run"),
            "--task",
            "field",
            "--binary",
            "field=pelvis",
            "--min-specificity",
            "field=high",
        ],
    )
    assert result.exit_code == 2 and "--min-specificity takes TASK=NUMBER" in result.output
    result = CliRunner().invoke(
        cli,
        [
            "train-task",
            str(labels),
            "--images",
            str(images),
            "--out",
            str(tmp_path / "run"),
            "--task",
            "field",
            "--min-specificity",
            "field=0.95",
        ],
    )
    assert result.exit_code == 2 and "not a binary task" in result.output
    assert not (tmp_path / "run").exists()
