"""Synthetic metal on real films without hardware (predraft.models.metalpaste) and how training uses it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from predraft.models.metalpaste import draw_metal
from predraft.models.taskdata import TaskRow
from predraft.models.tasktraining import TaskTrainingConfig, pasteable_rows, with_metal_pasted

CLASSES = {"region": ("hip", "leg"), "hardware": ("absent", "present")}


def film(size: int = 96) -> np.ndarray:
    """Air (black) on the left half, a grey body with some texture on the right half."""
    image = np.zeros((size, size), np.uint8)
    image[:, size // 2 :] = np.random.default_rng(0).integers(90, 140, (size, size - size // 2))
    return image


def test_metal_is_bright_drawn_over_the_body_and_never_darkens_a_pixel():
    image = film()
    for seed in range(40):
        pasted = draw_metal(image, np.random.default_rng(seed))
        assert pasted.shape == image.shape and pasted.dtype == np.uint8
        assert (pasted >= image).all()
        changed = pasted.astype(int) - image > 20
        assert changed.any(), seed
        assert pasted[changed].max() > image.max()  # denser than anything on the film (a thin wire: partly so)
        # the object is centred on the body: most of what changed lies over it, not over the air
        assert changed[:, image.shape[1] // 2 :].sum() >= changed[:, : image.shape[1] // 2].sum() * 0.5, seed


def test_metal_depends_on_the_generator_alone():
    image = film()
    first, again = draw_metal(image, np.random.default_rng(5)), draw_metal(image, np.random.default_rng(5))
    assert np.array_equal(first, again)
    assert not np.array_equal(first, draw_metal(image, np.random.default_rng(6)))


@pytest.mark.parametrize("image", [np.zeros((8, 9), np.uint8), np.zeros((8, 8)), np.zeros((2, 8, 8), np.uint8)])
def test_metal_refuses_what_is_not_a_square_grey_uint8_image(image):
    with pytest.raises(ValueError, match="square uint8 grey image"):
        draw_metal(image, np.random.default_rng(0))


def config(**changes: object) -> TaskTrainingConfig:
    fields: dict[str, object] = {
        "tasks": CLASSES,
        "binary": {"hardware": "present"},
        "synthetic_sources": ("phantoms",),
        "metal_paste": {"hardware": 0.5},
    }
    return TaskTrainingConfig.model_validate({**fields, **changes})


def test_metal_paste_names_a_binary_task_and_a_share_below_one():
    with pytest.raises(ValidationError, match="'region', which is not a binary task"):
        config(metal_paste={"region": 0.2})
    with pytest.raises(ValidationError, match="must lie in"):
        config(metal_paste={"hardware": 1.0})


def test_only_real_rows_without_hardware_are_pasteable():
    rows = [
        TaskRow("a.png", "a", "whole", {"region": "hip", "hardware": "absent"}, "fracatlas"),
        TaskRow("b.png", "b", "whole", {"region": "hip", "hardware": "present"}, "fracatlas"),
        TaskRow("c.png", "c", "whole", {"region": "hip", "hardware": "absent"}, "phantoms"),
        TaskRow("d.png", "d", "whole", {"region": "leg"}, "fracatlas"),
    ]
    targets = np.array([[0, 0], [0, 1], [0, 0], [1, -1]])
    pasteable = pasteable_rows(rows, targets, CLASSES, config())
    assert pasteable[:, 1].tolist() == [True, False, False, False]
    assert not pasteable[:, 0].any()
    assert not pasteable_rows(rows, targets, CLASSES, config(metal_paste={})).any()


def test_a_pasted_row_has_metal_and_the_positive_label_and_the_others_are_untouched():
    images = torch.from_numpy(np.stack([film(), film(), film()]))
    labels = torch.tensor([[0, 0], [0, 0], [1, 1]])
    pasteable = np.array([[False, True], [False, False], [False, False]])
    pasted_rows = 0
    rng = np.random.default_rng(0)
    for _ in range(40):
        chosen, batch_labels = with_metal_pasted(images, labels, [0, 1, 2, 0], pasteable, CLASSES, config(), rng)
        for position, row in enumerate([0, 1, 2, 0]):
            pasted = not torch.equal(chosen[position], images[row])
            assert batch_labels[position, 1].item() == (1 if pasted or row == 2 else 0)
            assert batch_labels[position, 0].item() == labels[row, 0].item()
            if row != 0:
                assert not pasted
            pasted_rows += pasted
    assert torch.equal(labels, torch.tensor([[0, 0], [0, 0], [1, 1]]))  # the caller's labels are not changed
    assert 25 <= pasted_rows <= 55  # 80 chances at one half
