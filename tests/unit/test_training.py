"""``predraft train`` on a small phantom set: a tiny network, a few steps, a card that loads, and a resume
that continues the same run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from predraft.cli import main
from predraft.models.card import load_card
from predraft.models.factory import load_classifier
from predraft.models.taxonomy import CLASS_ORDER, HardwareClass
from predraft.models.training import (
    TrainingConfig,
    TrainingError,
    choose_class_thresholds,
    class_balanced_weights,
    train,
)

TINY = {"architecture": "test_efficientnet", "input_size": 64, "batch_size": 8, "max_steps_per_epoch": 3}


@pytest.fixture(scope="module")
def phantom_data(tmp_path_factory) -> Path:
    from predraft.models.phantoms import write_phantom_dataset

    folder = tmp_path_factory.mktemp("phantoms")
    write_phantom_dataset(folder, studies=30, seed=101)
    return folder


def test_class_balanced_weights_draw_every_class_equally() -> None:
    targets = np.array([0, 0, 0, 0, 1, 1, 2])
    weights = class_balanced_weights(targets)
    per_class = [weights[targets == c].sum() for c in range(3)]
    assert per_class == pytest.approx([1.0, 1.0, 1.0])


def test_class_thresholds_reach_the_target_precision() -> None:
    # class 1 predicted 4 times: right at 0.9 and 0.8, wrong at 0.7, right at 0.6 -> precision 1.0 from 0.8 on
    probs = np.zeros((6, len(CLASS_ORDER)))
    for row, (cls, p) in enumerate([(1, 0.9), (1, 0.8), (1, 0.7), (1, 0.6), (0, 0.99), (0, 0.55)]):
        probs[row, cls] = p
        probs[row, 2] = 1 - p
    labels = np.array([1, 1, 0, 1, 0, 0])
    thresholds = choose_class_thresholds(probs, labels, target_precision=0.95)
    assert thresholds[HardwareClass.THA] == pytest.approx(0.8)
    assert thresholds[HardwareClass.NONE] == pytest.approx(0.5)  # both right from the floor on
    assert thresholds[HardwareClass.PLATE] == pytest.approx(0.5)  # never predicted: the floor
    # 3 of 4 right (0.75) at the floor: a target of 0.7 is met there
    assert choose_class_thresholds(probs, labels, target_precision=0.7)[HardwareClass.THA] == pytest.approx(0.5)


def test_config_validates() -> None:
    with pytest.raises(ValueError, match="not a timm model"):
        TrainingConfig(architecture="no_such_net")
    with pytest.raises(ValueError, match="at least 1"):
        TrainingConfig(head_epochs=0, epochs=0)
    with pytest.raises(ValueError, match="fractions"):
        TrainingConfig(fractions=(0.9, 0.0, 0.1))


def test_train_writes_a_card_that_loads(phantom_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    code = main(
        [
            "train",
            str(phantom_data),
            "--out",
            str(out),
            "--architecture",
            "test_efficientnet",
            "--input-size",
            "64",
            "--head-epochs",
            "1",
            "--epochs",
            "1",
            "--batch-size",
            "8",
            "--max-steps-per-epoch",
            "2",
            "--device",
            "cpu",
            "--synthetic-demo",
            "--version",
            "0.1.0-test",
        ]
    )
    assert code == 0
    card, weights = load_card(out / "card.json")
    assert card.trained and card.synthetic_demo and card.version == "0.1.0-test"
    assert card.training["head_epochs"] == 1 and card.training["epochs_run"] == 2
    assert 0 <= card.validation_metrics["accuracy"] <= 1 and card.validation_metrics["images"] > 0
    assert 0.05 <= card.temperature <= 20
    assert set(card.class_thresholds) == set(CLASS_ORDER)
    classifier = load_classifier(out / "card.json")
    probabilities = classifier.predict(np.zeros((2, 64, 64), np.uint8))
    assert probabilities.shape == (2, 9) and np.allclose(probabilities.sum(axis=1), 1, atol=1e-5)
    history = json.loads((out / "history.json").read_text())
    assert [entry["stage"] for entry in history] == ["head", "full"]
    split = (out / "split.csv").read_text().splitlines()
    assert split[0] == "patient,split" and {line.split(",")[1] for line in split[1:]} <= {"train", "validation", "test"}
    assert weights.is_file()


def test_head_stage_leaves_the_backbone_alone(phantom_data: Path, tmp_path: Path) -> None:
    config = TrainingConfig(**TINY, head_epochs=1, epochs=0, seed=5)
    card_path = train(phantom_data, tmp_path / "head", config, device="cpu", progress=False)
    trained = load_file(str(card_path.parent / "weights.safetensors"))
    torch.manual_seed(5)
    from predraft.models.factory import classifier_head_keys, create_network

    fresh = create_network("test_efficientnet", 9)
    head = classifier_head_keys(fresh)
    for key, value in fresh.state_dict().items():
        if key in head:
            assert not torch.equal(trained[key], value), key
        elif value.is_floating_point() and "running" not in key:
            assert torch.equal(trained[key], value), key


def test_resume_continues_the_same_run(phantom_data: Path, tmp_path: Path) -> None:
    config = TrainingConfig(**TINY, head_epochs=1, epochs=2, seed=7)
    whole = train(phantom_data, tmp_path / "whole", config, device="cpu", progress=False)
    interrupted = tmp_path / "interrupted"
    assert train(phantom_data, interrupted, config, device="cpu", progress=False, stop_after_epochs=2) is None
    assert not (interrupted / "card.json").exists()
    assert len(json.loads(json.dumps(torch.load(interrupted / "checkpoint.pt", weights_only=True)["history"]))) == 2
    with pytest.raises(TrainingError, match="use --resume"):
        train(phantom_data, interrupted, config, device="cpu", progress=False)
    other = TrainingConfig(**(TINY | {"batch_size": 4}), head_epochs=1, epochs=2, seed=7)
    with pytest.raises(TrainingError, match="batch_size"):
        train(phantom_data, interrupted, other, device="cpu", progress=False, resume=True)
    resumed = train(phantom_data, interrupted, config, device="cpu", progress=False, resume=True)
    first, second = (
        load_file(str(whole.parent / "weights.safetensors")),
        load_file(str(resumed.parent / "weights.safetensors")),
    )
    assert first.keys() == second.keys()
    for key in first:
        assert torch.equal(first[key], second[key]), key
    assert json.loads((whole.parent / "history.json").read_text()) == json.loads(
        (resumed.parent / "history.json").read_text()
    )


def test_resume_without_checkpoint_is_refused(phantom_data: Path, tmp_path: Path) -> None:
    with pytest.raises(TrainingError, match="does not exist"):
        train(phantom_data, tmp_path / "new", TrainingConfig(**TINY), device="cpu", resume=True)


def test_evaluate_writes_reports_per_image_and_per_study(phantom_data: Path, tmp_path: Path) -> None:
    import csv

    from predraft.models.datasets import read_labels

    card_path = train(
        phantom_data, tmp_path / "run", TrainingConfig(**TINY, head_epochs=0, epochs=1), device="cpu", progress=False
    )
    out = tmp_path / "evaluation"
    assert (
        main(
            [
                "evaluate",
                str(card_path),
                str(phantom_data),
                "--out",
                str(out),
                "--bootstrap",
                "20",
                "--split-file",
                str(card_path.parent / "split.csv"),
                "--split",
                "test",
            ]
        )
        == 0
    )
    for name in (
        "image_metrics.json",
        "image_confusion.png",
        "image_roc.png",
        "study_metrics.json",
        "study_confusion.png",
        "study_roc.png",
        "predictions.csv",
    ):
        assert (out / name).is_file(), name
    split = dict(line.split(",") for line in (card_path.parent / "split.csv").read_text().splitlines()[1:])
    rows = [row for row in read_labels(phantom_data) if split[row.patient] == "test"]
    image = json.loads((out / "image_metrics.json").read_text())
    study = json.loads((out / "study_metrics.json").read_text())
    assert image["n"] == len(rows)
    assert study["n"] == study["abstention"]["study_sides"] == len({(row.study, row.side) for row in rows})
    assert image["model"]["name"] == "predraft-hip-hardware"
    with (out / "predictions.csv").open() as handle:
        predictions = list(csv.DictReader(handle))
    assert len(predictions) == len(rows)
    correct = sum(p["class"] == p["predicted"] for p in predictions)
    assert image["accuracy"]["value"] == pytest.approx(correct / len(rows))
