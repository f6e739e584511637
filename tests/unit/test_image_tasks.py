"""Image tasks: the task card, the task CSV, the figures and thresholds, the gate's labels and a tiny training run.

The helpers :func:`write_synthetic_set`, :func:`write_random_task_card` and :func:`torch_threads` are shared with
tests/unit/test_evaluate_real.py (imported from here, no conftest fixture).
"""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydantic import ValidationError

from predraft.models.card import ModelCardError, sha256_of
from predraft.models.imagetask import TaskNetwork, fold_batch_norms, load_task_model
from predraft.models.taskcard import TaskCard, load_task_card, write_task_card
from predraft.models.taskdata import TaskLabelsError, TaskRow, read_task_rows
from predraft.models.taskmetrics import grouped_rate, task_metrics
from predraft.models.tasktraining import (
    TaskTrainingConfig,
    fit_thresholds,
    read_out_of_fold,
    write_out_of_fold,
)

#: FracAtlas and the shoulder-implant set, shared beside the repository (see its README.md).
SHARED_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"

TINY_ARCHITECTURE = "test_efficientnet"
TASKS = {"region": ("hip", "shoulder"), "hardware": ("absent", "present")}


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Torch on one thread while these tests run: on a loaded two-core machine two threads make a tiny network's
    step tens of times slower (they wait for each other), one keeps it well under a second."""
    yield from torch_threads(1)


def torch_threads(count: int):
    """Set torch's intra-op threads to ``count`` until the generator resumes, then restore them."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# --- helpers shared with test_evaluate_real ---------------------------------------------------------------------


def _synthetic_image(region: str, present: bool, rng: np.random.Generator) -> np.ndarray:
    """A 64 x 96 grey radiograph-like image: textured soft tissue, two round 'heads' (hip) or one (shoulder),
    and with ``present`` a bright sharply bounded plate on the image's left half."""
    height, width = 64, 96
    image = 0.25 + 0.05 * rng.standard_normal((height, width))
    yy, xx = np.mgrid[:height, :width]
    centres = ((32, 24), (32, 72)) if region == "hip" else ((24, 48),)
    for cy, cx in centres:
        image += 0.3 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * 9.0**2))
    if present:
        image[20:44, 14:30] = 1.0
    return np.clip(image, 0, 1)


def write_synthetic_set(
    folder: Path, *, images_per_group: int = 2, groups_per_class: int = 3, seed: int = 0
) -> tuple[Path, Path, list[dict[str, str]]]:
    """PNGs under ``folder/images`` and ``folder/labels.csv`` in the task CSV format.

    Two regions (hip, shoulder) x hardware (absent, present) x ``groups_per_class`` groups x
    ``images_per_group`` images, each a ``whole`` row with region and hardware; every hip image adds its
    two halves (hardware only, as gate_labels.csv has them): the metal sits on the image's left half.
    Returns (CSV path, images folder, the CSV's rows).
    """
    rng = np.random.default_rng(seed)
    images_dir = folder / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, str]] = []
    for region in TASKS["region"]:
        for hardware in TASKS["hardware"]:
            for group_index in range(groups_per_class):
                group = f"{region}-{hardware}-{group_index}"
                for image_index in range(images_per_group):
                    name = f"{group}-{image_index}.png"
                    pixels = _synthetic_image(region, hardware == "present", rng)
                    Image.fromarray((pixels * 255).round().astype(np.uint8)).save(images_dir / name)
                    rows.append(
                        {"image": name, "group": group, "crop": "whole", "region": region, "hardware": hardware}
                    )
                    if region == "hip":
                        rows.append(
                            {"image": name, "group": group, "crop": "image_left", "region": "", "hardware": hardware}
                        )
                        rows.append(
                            {"image": name, "group": group, "crop": "image_right", "region": "", "hardware": "absent"}
                        )
    csv_path = folder / "labels.csv"
    write_csv(csv_path, rows)
    return csv_path, images_dir, rows


def write_csv(path: Path, rows: list[dict[str, str]], columns: tuple[str, ...] | None = None) -> Path:
    columns = columns or tuple(rows[0])
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, lineterminator="\n", extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_random_task_card(
    folder: Path,
    tasks: dict[str, tuple[str, ...]] | None = None,
    *,
    input_size: int = 32,
    thresholds: dict[str, dict[str, float]] | None = None,
    seed: int = 0,
    global_pool: str = "avg",
) -> Path:
    """An untrained (random-weight) task network of :data:`TINY_ARCHITECTURE` and its card; the card's path."""
    import torch
    from safetensors.torch import save_file

    tasks = tasks or TASKS
    torch.manual_seed(seed)
    network = TaskNetwork(TINY_ARCHITECTURE, tasks, global_pool)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(
        {key: value.contiguous() for key, value in network.state_dict().items()}, str(folder / "weights.safetensors")
    )
    card = TaskCard(
        name="tiny-gate",
        version="0.0.1",
        architecture=TINY_ARCHITECTURE,
        global_pool=global_pool,
        input_size=input_size,
        tasks=tasks,
        thresholds=thresholds or {},
        trained=False,
        weights="weights.safetensors",
        weights_sha256=sha256_of(folder / "weights.safetensors"),
    )
    write_task_card(card, folder / "card.json")
    return folder / "card.json"


def _card(**changes: object) -> dict[str, object]:
    fields: dict[str, object] = {
        "name": "t",
        "version": "1",
        "architecture": TINY_ARCHITECTURE,
        "input_size": 32,
        "tasks": {"region": ["hip", "shoulder"]},
        "weights": "w.safetensors",
        "weights_sha256": "0" * 64,
    }
    fields.update(changes)
    return fields


# --- the task card ------------------------------------------------------------------------------------------------


def test_a_valid_card_reads_its_thresholds_and_defaults_to_one_half():
    card = TaskCard.model_validate(_card(thresholds={"region": {"hip": 0.8}}))
    assert card.threshold("region", "hip") == 0.8
    assert card.threshold("region", "shoulder") == 0.5
    with pytest.raises(ValueError, match="no class 'knee'"):
        card.threshold("region", "knee")


@pytest.mark.parametrize(
    "tasks, message",
    [
        ({"body part": ["hip", "shoulder"]}, "must be an identifier"),
        ({"1region": ["hip", "shoulder"]}, "must be an identifier"),
        ({"region": ["hip"]}, "at least two distinct classes"),
        ({"region": ["hip", "hip"]}, "at least two distinct classes"),
        ({}, "at least one task"),
    ],
)
def test_card_rejects_bad_tasks(tasks, message):
    with pytest.raises(ValidationError, match=message):
        TaskCard.model_validate(_card(tasks=tasks))


@pytest.mark.parametrize(
    "thresholds, message",
    [
        ({"region": {"knee": 0.7}}, "class 'knee'"),
        ({"hardware": {"present": 0.7}}, "task 'hardware'"),
        ({"region": {"hip": 0.0}}, r"must lie in \(0, 1\)"),
        ({"region": {"hip": 1.0}}, r"must lie in \(0, 1\)"),
        ({"region": {"hip": 1.5}}, r"must lie in \(0, 1\)"),
    ],
)
def test_card_rejects_thresholds_of_unknown_classes_or_out_of_range(thresholds, message):
    with pytest.raises(ValidationError, match=message):
        TaskCard.model_validate(_card(thresholds=thresholds))


def test_card_rejects_temperatures_of_unknown_tasks_or_not_positive():
    with pytest.raises(ValidationError, match="task 'hardware'"):
        TaskCard.model_validate(_card(temperatures={"hardware": 1.0}))
    with pytest.raises(ValidationError, match="must be positive"):
        TaskCard.model_validate(_card(temperatures={"region": 0.0}))


def test_load_task_card_checks_the_weights_sha256(tmp_path):
    card_path = write_random_task_card(tmp_path / "model")
    card, weights = load_task_card(card_path)
    assert weights == (tmp_path / "model" / "weights.safetensors").resolve()
    assert card.tasks == TASKS
    weights.write_bytes(weights.read_bytes() + b"\0")
    with pytest.raises(ModelCardError, match="sha256"):
        load_task_card(card_path)
    with pytest.raises(ModelCardError, match="sha256"):
        load_task_model(card_path)


def test_folding_batch_norms_keeps_the_function_and_leaves_no_batch_norm():
    import torch

    torch.manual_seed(0)
    network = TaskNetwork("regnetx_002", TASKS)
    for module in network.modules():  # trained-looking statistics, so that a wrong fold would show
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            torch.nn.init.uniform_(module.weight, 0.5, 1.5)
            torch.nn.init.uniform_(module.bias, -0.2, 0.2)
    with pytest.raises(ValueError, match="eval mode"):
        fold_batch_norms(network.train())
    network.eval()
    batch = torch.randn(3, 3, 64, 64)
    with torch.inference_mode():
        before = network(batch)
    assert fold_batch_norms(network) > 40  # regnetx_002: the stem and three convolutions per block
    assert not any(isinstance(module, torch.nn.BatchNorm2d) for module in network.modules())
    with torch.inference_mode():
        after = network(batch)
    for task in TASKS:
        assert torch.allclose(before[task], after[task], atol=1e-4), task
        assert not torch.allclose(before[task], torch.zeros_like(before[task]))


def test_the_bundled_gate_reads_the_same_with_its_batch_norms_folded_and_channels_last():
    import torch

    from predraft.models.taskcard import GATE_CARD

    plain, folded = load_task_model(GATE_CARD), load_task_model(GATE_CARD, inference_only=True)
    images = np.random.default_rng(0).integers(0, 256, (4, plain.card.input_size, plain.card.input_size), np.uint8)
    first, second = plain.predict(images), folded.predict(images)
    for task in plain.card.tasks:
        np.testing.assert_allclose(first[task], second[task], atol=1e-5)
    assert "bn.weight" not in " ".join(folded.network.state_dict())
    assert any(key.endswith("bn.weight") for key in plain.network.state_dict())
    stem = folded.network.backbone.stem.conv.weight
    assert folded.channels_last and stem.is_contiguous(memory_format=torch.channels_last)
    assert not plain.channels_last and plain.network.backbone.stem.conv.weight.is_contiguous()


def test_a_catavgmax_network_reads_the_mean_and_the_largest_value_of_each_feature_channel():
    import torch

    torch.manual_seed(0)
    network = TaskNetwork("regnetx_002", TASKS, "catavgmax").eval()
    assert network.heads["hardware"].in_features == 2 * network.backbone.num_features
    batch = torch.randn(2, 3, 96, 96)
    with torch.inference_mode():
        feature_map = network.backbone.forward_features(batch)
        pooled = network.backbone(batch)
    channels = network.backbone.num_features
    torch.testing.assert_close(pooled[:, :channels], feature_map.mean(dim=(2, 3)))
    torch.testing.assert_close(pooled[:, channels:], feature_map.amax(dim=(2, 3)))
    assert not torch.allclose(pooled[:, :channels], pooled[:, channels:])
    with pytest.raises(ValueError, match="global pool 'lse'"):
        TaskNetwork("regnetx_002", TASKS, "lse")


def test_a_card_names_its_pooling_and_weights_of_the_other_pooling_do_not_fit(tmp_path):
    card_path = write_random_task_card(tmp_path / "model", global_pool="catavgmax")
    model = load_task_model(card_path, inference_only=True)
    assert model.card.global_pool == "catavgmax"
    assert model.network.heads["region"].in_features == 2 * model.network.backbone.num_features
    probabilities = model.predict(np.zeros((1, 32, 32), np.uint8))
    np.testing.assert_allclose(probabilities["hardware"].sum(axis=1), 1.0, atol=1e-6)
    card = json.loads(card_path.read_text())
    assert card["global_pool"] == "catavgmax"
    card_path.write_text(json.dumps({**card, "global_pool": "avg"}))
    with pytest.raises(ModelCardError, match="do not fit"):
        load_task_model(card_path)
    del card["global_pool"]  # cards written before the field: the mean, as then
    assert TaskCard.model_validate(card).global_pool == "avg"
    with pytest.raises(ValidationError, match="global_pool"):
        TaskCard.model_validate({**card, "global_pool": "max"})


def test_load_task_card_names_a_missing_or_invalid_card(tmp_path):
    with pytest.raises(ModelCardError, match="does not exist"):
        load_task_card(tmp_path / "absent.json")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(_card(thresholds={"region": {"hip": 2.0}})))
    with pytest.raises(ModelCardError, match="is invalid"):
        load_task_card(bad, verify_weights=False)


# --- the task CSV -----------------------------------------------------------------------------------------------


def _labels_folder(tmp_path: Path, rows: list[dict[str, str]], columns: tuple[str, ...] | None = None) -> Path:
    (tmp_path / "images").mkdir(exist_ok=True)
    for name in ("a.png", "b.png"):
        Image.fromarray(np.zeros((8, 8), dtype=np.uint8)).save(tmp_path / "images" / name)
    return write_csv(tmp_path / "labels.csv", rows, columns)


def test_read_task_rows_reads_crops_and_leaves_out_unlabelled_rows(tmp_path):
    csv_path = _labels_folder(
        tmp_path,
        [
            {"image": "a.png", "group": "g1", "crop": "", "region": "hip", "hardware": ""},
            {"image": "a.png", "group": "g1", "crop": "image_left", "region": "", "hardware": "present"},
            {"image": "b.png", "group": "g2", "crop": "whole", "region": "", "hardware": ""},
        ],
    )
    rows = read_task_rows(csv_path, tmp_path / "images", ["region", "hardware"])
    assert [(row.image, row.group, row.crop, row.labels) for row in rows] == [
        ("a.png", "g1", "whole", {"region": "hip"}),
        ("a.png", "g1", "image_left", {"hardware": "present"}),
    ]


def test_read_task_rows_names_a_missing_column(tmp_path):
    csv_path = _labels_folder(tmp_path, [{"image": "a.png", "group": "g1", "region": "hip"}])
    with pytest.raises(TaskLabelsError, match=r"lacks the column\(s\) \['hardware'\]"):
        read_task_rows(csv_path, tmp_path / "images", ["region", "hardware"])


def test_read_task_rows_rejects_an_unknown_crop(tmp_path):
    csv_path = _labels_folder(tmp_path, [{"image": "a.png", "group": "g1", "crop": "middle", "region": "hip"}])
    with pytest.raises(TaskLabelsError, match="line 2: crop 'middle'"):
        read_task_rows(csv_path, tmp_path / "images", ["region"])


def test_read_task_rows_rejects_an_image_and_crop_twice(tmp_path):
    csv_path = _labels_folder(
        tmp_path,
        [
            {"image": "a.png", "group": "g1", "crop": "whole", "region": "hip"},
            {"image": "a.png", "group": "g1", "crop": "image_left", "region": "hip"},
            {"image": "a.png", "group": "g1", "crop": "", "region": "shoulder"},
        ],
    )
    with pytest.raises(TaskLabelsError, match=r"line 4: a.png \(whole\) appears twice"):
        read_task_rows(csv_path, tmp_path / "images", ["region"])


def test_read_task_rows_names_a_missing_image_file(tmp_path):
    csv_path = _labels_folder(
        tmp_path,
        [{"image": "a.png", "group": "g1", "region": "hip"}, {"image": "gone.png", "group": "g2", "region": "hip"}],
    )
    with pytest.raises(TaskLabelsError, match="line 3: image .*gone.png does not exist"):
        read_task_rows(csv_path, tmp_path / "images", ["region"])


def test_read_task_rows_refuses_a_csv_without_a_labelled_row(tmp_path):
    csv_path = _labels_folder(tmp_path, [{"image": "a.png", "group": "g1", "region": ""}])
    with pytest.raises(TaskLabelsError, match="no row labelled"):
        read_task_rows(csv_path, tmp_path / "images", ["region"])


# --- grouped rates ----------------------------------------------------------------------------------------------


def test_grouped_rate_gives_the_share_and_a_ci_around_it():
    hits = np.array([True] * 30 + [False] * 10)
    groups = np.repeat(np.arange(20), 2)
    rate = grouped_rate(hits, groups, n_bootstrap=200, seed=0)
    assert rate["value"] == 0.75 and rate["n"] == 40 and rate["hits"] == 30
    low, high = rate["ci95"]
    assert 0 <= low < 0.75 < high <= 1
    assert grouped_rate(hits, groups, n_bootstrap=200, seed=0) == rate  # seeded


def test_grouped_rate_of_no_rows_has_no_value():
    assert grouped_rate(np.array([], dtype=bool), np.array([]), n_bootstrap=100, seed=0) == {
        "value": None,
        "ci95": None,
        "n": 0,
    }


def test_grouped_rate_resamples_groups_not_rows():
    hits = np.array([True, False, True, True, False, True, False, True])
    one_group = grouped_rate(hits, np.zeros(len(hits)), n_bootstrap=100, seed=0)
    assert one_group["ci95"] == [one_group["value"], one_group["value"]] == [0.625, 0.625]
    # Two groups that are all hits and all misses: a draw holds 0, 1 or 2 copies of the hit group, so
    # the shares drawn are 0, 0.5 or 1 only (a row bootstrap would also draw shares in between).
    pure = grouped_rate(np.array([True] * 5 + [False] * 5), np.array([0] * 5 + [1] * 5), n_bootstrap=400, seed=1)
    assert pure["value"] == 0.5 and pure["ci95"] == [0.0, 1.0]


# --- thresholds ---------------------------------------------------------------------------------------------------


def _config() -> TaskTrainingConfig:
    return TaskTrainingConfig(tasks=dict(TASKS), gate_task="region", gate_class="hip", binary={"hardware": "present"})


def _binary_probabilities(scores: np.ndarray) -> np.ndarray:
    return np.stack([1 - scores, scores], axis=1)


def test_gate_thresholds_balance_the_gate_class_and_route_elsewhere_at_most_one_percent_of_it():
    rng = np.random.default_rng(3)
    hip_says_shoulder = rng.permutation(np.linspace(0.0, 0.9, 200))  # p(shoulder) of the 200 hip rows
    shoulder_says_hip = rng.permutation(np.linspace(0.3, 0.8, 100))  # p(hip) of the 100 shoulder rows
    region = np.zeros((300, 2))
    region[:200, 1], region[200:, 0] = hip_says_shoulder, shoulder_says_hip
    region[:200, 0], region[200:, 1] = 1 - region[:200, 1], 1 - region[200:, 0]
    targets = np.array([[0, -1]] * 200 + [[1, -1]] * 100)
    thresholds = fit_thresholds(
        {"region": region, "hardware": np.full((300, 2), 0.5)},
        targets,
        TASKS,
        TaskTrainingConfig(tasks=dict(TASKS), gate_task="region", gate_class="hip"),
    )
    assert set(thresholds) == {"region"}
    shoulder, hip = thresholds["region"]["shoulder"], thresholds["region"]["hip"]
    # another class: the 99th percentile (higher) of the hip rows' p(shoulder), just above it
    assert shoulder == round(np.sort(hip_says_shoulder)[int(np.ceil(0.99 * 199))] + 1e-4, 4)
    assert (hip_says_shoulder >= shoulder).mean() <= 0.01
    # the gate class: the threshold on p(hip) whose smaller of sensitivity and specificity no other beats
    p_hip, is_hip = region[:, 0], targets[:, 0] == 0

    def worse_of_both(threshold: float) -> float:
        return min((p_hip[is_hip] >= threshold).mean(), (p_hip[~is_hip] < threshold).mean())

    assert 0.3 < hip < 0.8
    assert worse_of_both(hip) == max(worse_of_both(t) for t in np.linspace(0, 1, 1001))
    assert worse_of_both(hip) > worse_of_both(0.5)  # the old way's hip threshold would have missed more hips


def test_gate_thresholds_stay_in_their_bounds():
    region = np.array([[0.9, 0.1]] * 50 + [[0.2, 0.8]] * 50)  # perfectly apart: no row crosses one half
    targets = np.array([[0, -1]] * 50 + [[1, -1]] * 50)
    thresholds = fit_thresholds({"region": region}, targets, TASKS, _config().model_copy(update={"binary": {}}))
    assert thresholds["region"] == {"hip": 0.9, "shoulder": 0.5}  # hip: the lowest perfect threshold
    region[:50] = [[0.0, 1.0]]  # every hip row certain it is a shoulder
    refitted = fit_thresholds({"region": region}, targets, TASKS, _config().model_copy(update={"binary": {}}))
    assert refitted["region"]["shoulder"] == 0.995
    region[:, 0] = 1e-6  # nothing reads as a hip at all
    no_binary = _config().model_copy(update={"binary": {}})
    assert fit_thresholds({"region": region}, targets, TASKS, no_binary)["region"]["hip"] == 0.005


def test_service_rules_are_the_scope_rules_at_the_cards_thresholds():
    region = np.array(
        [
            [0.9, 0.1],  # hip, read as hip
            [0.3, 0.7],  # hip, below the top but above the hip's threshold: kept and drafted, overrules nothing
            [0.1, 0.9],  # hip ruled out
            [0.05, 0.95],  # shoulder ruled out as a hip
            [0.6, 0.4],  # shoulder read as hip: kept as hip when tagged hip, and overrules shoulder tags
        ]
    )
    names = ["hip", "hip", "hip", "shoulder", "shoulder"]
    rows = [TaskRow(f"{i}.png", f"g{i}", "whole", {"region": name}) for i, name in enumerate(names)]
    targets = np.array([[0], [0], [0], [1], [1]])
    metrics = task_metrics(
        {"region": region},
        targets,
        rows,
        {"region": ("hip", "shoulder")},
        {"region": {"hip": 0.2, "shoulder": 0.8}},
        gate=("region", "hip"),
        n_bootstrap=10,
        seed=0,
    )
    rules = {name: figure["hits"] for name, figure in metrics["region"]["service_rules"].items()}
    assert rules == {
        "hip_kept_tagged_or_drafted_untagged": 2,
        "other_ruled_out_tagged_hip_or_refused_untagged": 1,
        "hip_overrules_other_region_tags": 1,
        "other_keeps_own_region_tags": 1,
    }


def test_training_draws_each_stratum_in_proportion_to_the_square_root_of_its_size():
    from predraft.models.tasktraining import _strata, draw_weights

    def rows(count: int, hardware: str) -> list[TaskRow]:
        return [TaskRow(f"{hardware}{i}.png", f"{hardware}{i}", "whole", {"hardware": hardware}) for i in range(count)]

    every = rows(4, "present") + rows(196, "absent")
    weights = draw_weights(_strata(every))
    assert weights.sum() == pytest.approx(1.0)
    present = np.array([row.labels["hardware"] == "present" for row in every])
    assert weights[present].sum() == pytest.approx(2 / (2 + 14))  # sqrt(4) against sqrt(196), not 4 against 196
    assert np.allclose(weights[present], weights[present][0]) and np.allclose(weights[~present], weights[~present][0])


def test_out_of_fold_readings_read_back_as_written(tmp_path):
    rows = [TaskRow(f"{i}.png", f"g{i}", crop, {"region": "hip"}) for i, crop in enumerate(["whole", "image_left"])]
    classes = {"region": ("hip", "shoulder")}
    written = {"region": np.array([[0.25, 0.75], [0.9, 0.1]])}
    write_out_of_fold(tmp_path / "oof.csv", rows, np.array([3, 1]), written, classes)
    probabilities, folds = read_out_of_fold(tmp_path / "oof.csv", rows[::-1], classes)  # aligned by image and crop
    assert probabilities["region"].tolist() == written["region"][::-1].tolist()
    assert folds.tolist() == [1, 3]
    with pytest.raises(ValueError, match="has no reading of 1 row"):
        read_out_of_fold(tmp_path / "oof.csv", [TaskRow("2.png", "g2", "whole", {})], classes)


def test_binary_threshold_is_the_balanced_point():
    scores = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6])
    targets = np.array([[-1, 0]] * 3 + [[-1, 1]] * 3)
    config = TaskTrainingConfig(tasks=dict(TASKS), binary={"hardware": "present"})
    assert fit_thresholds({"hardware": _binary_probabilities(scores)}, targets, TASKS, config) == {
        "hardware": {"present": 0.4}
    }
    rng = np.random.default_rng(5)  # overlapping classes: no threshold does better on its worse side
    positive = rng.random(80) < 0.4
    scores = np.round(np.clip(rng.normal(np.where(positive, 0.65, 0.4), 0.15), 0, 1), 4)
    targets = np.stack([np.full(80, -1), positive.astype(int)], axis=1)
    threshold = fit_thresholds({"hardware": _binary_probabilities(scores)}, targets, TASKS, config)["hardware"][
        "present"
    ]

    def balanced(cut: float) -> float:
        called = scores >= cut
        return min(called[positive].mean(), (~called[~positive]).mean())

    assert 0 < threshold < 1
    assert balanced(threshold) == max(balanced(cut) for cut in np.unique(scores))


def test_a_minimum_specificity_replaces_the_balanced_point():
    negatives = np.linspace(0.0, 0.99, 100)  # p(positive) of 100 negative rows
    scores = np.concatenate([negatives, [0.5, 0.97, 0.99]])
    targets = np.stack([np.full(103, -1), np.r_[np.zeros(100, int), np.ones(3, int)]], axis=1)
    config = TaskTrainingConfig(tasks=dict(TASKS), binary={"hardware": "present"}, min_specificity={"hardware": 0.95})
    threshold = fit_thresholds({"hardware": _binary_probabilities(scores)}, targets, TASKS, config)["hardware"][
        "present"
    ]
    assert (negatives < threshold).mean() >= 0.95  # at least 95 % of the negatives stay below it
    assert (negatives < threshold - 0.011).mean() < 0.95  # and no threshold a step lower would do
    with pytest.raises(ValueError, match="not a binary task"):
        TaskTrainingConfig(tasks=dict(TASKS), min_specificity={"hardware": 0.95})
    with pytest.raises(ValueError, match=r"must lie in \(0, 1\)"):
        TaskTrainingConfig(tasks=dict(TASKS), binary={"hardware": "present"}, min_specificity={"hardware": 1.5})


# --- the gate's labels from ../shared/data ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def gate_rows() -> list[dict[str, str]]:
    from predraft.models.gate_labels import build_rows

    if (
        not (SHARED_DATA / "fracatlas" / "dataset.csv").is_file()
        or not (SHARED_DATA / "shoulder-implants" / "labels.csv").is_file()
    ):
        pytest.skip(f"FracAtlas or the shoulder-implant set is absent ({SHARED_DATA} is not checked out)")
    return build_rows(SHARED_DATA)


def test_gate_labels_join_group_a_into_one_patient(gate_rows):
    group_of = {row["image"].rsplit("/", 1)[-1]: row["group"] for row in gate_rows}
    joined = {group_of[f"IMG000{number}.jpg"] for number in ("0453", "2607", "2749", "4113")}
    assert len(joined) == 1
    assert group_of["IMG0000454.jpg"] in joined and group_of["IMG0004114.jpg"] in joined


def test_gate_labels_split_a_pelvis_into_its_sides(gate_rows):
    rows = {row["crop"]: row for row in gate_rows if row["image"] == "fracatlas/images/IMG0002509.jpg"}
    assert set(rows) == {"whole", "image_left", "image_right"}
    assert (rows["whole"]["region"], rows["whole"]["hardware"]) == ("hip", "present")
    assert (rows["image_left"]["region"], rows["image_left"]["hardware"]) == ("", "present")
    assert (rows["image_right"]["region"], rows["image_right"]["hardware"]) == ("", "absent")


def test_gate_labels_shoulder_implants_are_shoulders_with_hardware(gate_rows):
    shoulders = [row for row in gate_rows if row["image"].startswith("shoulder-implants/")]
    assert shoulders
    assert all((row["crop"], row["region"], row["hardware"]) == ("whole", "shoulder", "present") for row in shoulders)
    assert len({row["group"] for row in shoulders}) == len(shoulders)


def test_gate_labels_give_every_whole_hip_image_and_only_those_a_field(gate_rows):
    field_of = {row["image"].rsplit("/", 1)[-1]: row["field"] for row in gate_rows if row["crop"] == "whole"}
    hips = {row["image"].rsplit("/", 1)[-1] for row in gate_rows if row["crop"] == "whole" and row["region"] == "hip"}
    assert len(hips) == 337 and {field_of[image] for image in hips} == {"pelvis", "other"}
    assert all(field == "" for image, field in field_of.items() if image not in hips)
    assert all(row["field"] == "" for row in gate_rows if row["crop"] != "whole")
    # an AP pelvis with a left plate, a one-hip view of a plate, and a pelvis turned 90 degrees
    assert (field_of["IMG0000822.jpg"], field_of["IMG0000453.jpg"], field_of["IMG0000315.jpg"]) == (
        "pelvis",
        "other",
        "other",
    )
    # the hip-hardware labelling's field wins where both label an image
    assert field_of["IMG0002510.jpg"] == "other" and field_of["IMG0002607.jpg"] == "pelvis"


def test_gate_labels_take_the_hardware_review_over_the_published_flag(gate_rows):
    from predraft.models.gate_labels import HARDWARE_REVIEW

    hardware_of = {row["image"].rsplit("/", 1)[-1]: row["hardware"] for row in gate_rows if row["crop"] == "whole"}
    # a bangle on a forearm flagged without hardware, a cast, and the one film with a nail that FracAtlas missed
    assert (hardware_of["IMG0000007.jpg"], hardware_of["IMG0002563.jpg"]) == ("external", "present")
    with HARDWARE_REVIEW.open(newline="") as handle:
        casts = [row["image_id"] for row in csv.DictReader(handle) if row["seen"] == "cast"]
    assert len(casts) == 20 and all(hardware_of[image] == "external" for image in casts)
    # a film nobody reviewed keeps the published flag
    assert hardware_of["IMG0000001.jpg"] == "absent"
    counts = {name: sum(value == name for value in hardware_of.values()) for name in ("external", "present")}
    assert counts == {"external": 53, "present": 99 + 1 + 477}


def test_gate_labels_refuse_a_review_with_an_unknown_class(tmp_path):
    from predraft.models.gate_labels import read_hardware_review

    review = tmp_path / "review.csv"
    review.write_text("image_id,seen,hardware,note\nIMG0000007.jpg,jewellery,external,\nIMG0000008.jpg,cast,plaster,\n")
    with pytest.raises(ValueError, match=r"not \{'IMG0000008.jpg': 'plaster'\}"):
        read_hardware_review(review)


def test_gate_labels_name_no_image_and_crop_twice(gate_rows):
    keys = [(row["image"], row["crop"]) for row in gate_rows]
    assert len(keys) == len(set(keys))
    assert all(row["crop"] == "whole" or row["region"] == "" for row in gate_rows)


# --- a tiny training run ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("global_pool", ["avg", "catavgmax"])
def test_train_task_model_end_to_end_on_synthetic_images(tmp_path, global_pool):
    from predraft.models.taskdata import prepare_task_images
    from predraft.models.tasktraining import CARD, FOLDS, OUT_OF_FOLD, REPORT, train_task_model

    csv_path, images_dir, rows = write_synthetic_set(tmp_path / "data")
    config = TaskTrainingConfig(
        tasks=dict(TASKS),
        architecture=TINY_ARCHITECTURE,
        global_pool=global_pool,
        input_size=32,
        epochs=1,
        samples_per_epoch=32,
        batch_size=16,
        folds=2,
        n_bootstrap=20,
        gate_task="region",
        gate_class="hip",
        binary={"hardware": "present"},
    )
    out = tmp_path / "run"
    card = train_task_model(csv_path, images_dir, out, config, progress=lambda _: None)

    with (out / FOLDS).open(newline="") as handle:
        folds = list(csv.DictReader(handle))
    fold_of: dict[str, set[str]] = defaultdict(set)
    for record in folds:
        fold_of[record["group"]].add(record["fold"])
    assert set(fold_of) == {row["group"] for row in rows}
    assert all(len(found) == 1 for found in fold_of.values())
    assert {next(iter(found)) for found in fold_of.values()} == {"0", "1"}

    model = load_task_model(out / CARD)
    assert model.card == card and model.card.tasks == TASKS and model.card.global_pool == global_pool
    thresholds = [value for by_class in card.thresholds.values() for value in by_class.values()]
    assert set(card.thresholds) == {"region", "hardware"} and len(thresholds) == 3
    assert all(0 < value < 1 for value in thresholds)

    with (out / OUT_OF_FOLD).open(newline="") as handle:
        out_of_fold = list(csv.DictReader(handle))
    assert [(r["image"], r["crop"]) for r in out_of_fold] == [(r["image"], r["crop"]) for r in rows]

    report = json.loads((out / REPORT).read_text())
    rules = report["metrics"]["region"]["service_rules"]
    assert rules["hip_kept_tagged_or_drafted_untagged"]["n"] == sum(r["region"] == "hip" for r in rows)
    halves = report["metrics"]["hardware"]["at_threshold"]["hip halves"]
    assert halves["sensitivity"]["n"] == sum(r["crop"] != "whole" and r["hardware"] == "present" for r in rows)

    task_rows = read_task_rows(csv_path, images_dir, list(TASKS))
    probabilities = model.predict(prepare_task_images(images_dir, task_rows[:5], input_size=32, workers=1))
    for task, classes in TASKS.items():
        assert probabilities[task].shape == (5, len(classes))
        np.testing.assert_allclose(probabilities[task].sum(axis=1), 1.0, atol=1e-6)


def test_a_task_network_starts_from_another_task_networks_backbone_and_drops_its_heads(tmp_path):
    """``train-task --init-weights`` with a gate's weights: the backbone is copied, the new heads are its own."""
    import torch
    from safetensors.torch import save_file

    from predraft.models.tasktraining import load_backbone_weights

    torch.manual_seed(1)
    gate = TaskNetwork(TINY_ARCHITECTURE, TASKS)
    path = tmp_path / "gate.safetensors"
    save_file({key: value.contiguous() for key, value in gate.state_dict().items()}, str(path))
    torch.manual_seed(2)
    shoulder = TaskNetwork(TINY_ARCHITECTURE, {"manufacturer": ("Cofield", "Depuy", "Tornier", "Zimmer")})
    heads_before = {key: value.clone() for key, value in shoulder.heads.state_dict().items()}
    load_backbone_weights(shoulder, path)
    for key, value in gate.backbone.state_dict().items():
        assert torch.equal(shoulder.backbone.state_dict()[key], value), key
    assert all(torch.equal(shoulder.heads.state_dict()[key], value) for key, value in heads_before.items())
    # and a plain classifier's weights (no "backbone." prefix) still load as before
    plain = tmp_path / "plain.safetensors"
    save_file({key: value.contiguous() for key, value in gate.backbone.state_dict().items()}, str(plain))
    load_backbone_weights(shoulder, plain)


def test_cohens_kappa_is_one_for_agreement_zero_for_chance_and_below_zero_for_worse():
    from predraft.models.taskmetrics import cohen_kappa, grouped_kappa

    assert cohen_kappa(np.diag([10.0, 5.0, 5.0])) == 1.0
    assert cohen_kappa(np.array([[10.0, 0.0], [10.0, 0.0]])) == 0.0  # always the majority class
    assert cohen_kappa(np.array([[0.0, 5.0], [5.0, 0.0]])) == -1.0
    assert cohen_kappa(np.zeros((2, 2))) is None
    # 8 of 10 right, two classes of five: observed 0.8, chance 0.5 -> 0.6
    truth = np.array([0] * 5 + [1] * 5)
    predicted = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 0])
    figures = grouped_kappa(truth, predicted, np.arange(10).astype(str), 2, n_bootstrap=200, seed=0)
    assert figures["value"] == 0.6 and figures["n"] == 10
    assert figures["ci95"][0] < 0.6 < figures["ci95"][1]
    assert grouped_kappa(truth[:0], predicted[:0], np.array([]), 2, n_bootstrap=10, seed=0)["value"] is None
