"""predraft.models.framing: the implant crop a pack framed ``implant_crop`` reads, in training and in service."""

from __future__ import annotations

import numpy as np
import pytest

from predraft.models.framing import implant_box, implant_crop


def _film(height: int = 600, width: int = 500) -> np.ndarray:
    rng = np.random.default_rng(0)
    image = 0.15 + 0.05 * rng.random((height, width))
    image[100:500, 80:420] += 0.3  # soft tissue and bone, a broad grey field
    return image.astype(np.float32)


def test_the_crop_is_a_square_around_the_densest_large_structure():
    image = _film()
    image[250:400, 200:260] = 1.0  # an implant
    top, bottom, left, right = implant_box(image)
    assert top <= 250 and bottom >= 400 and left <= 200 and right >= 260
    assert abs((bottom - top) - (right - left)) <= 2  # square
    assert (bottom - top) < 0.6 * image.shape[0]  # much less than the film
    assert implant_crop(image).shape == (bottom - top, right - left)


def test_a_marker_at_the_border_is_not_taken_for_an_implant():
    image = _film()
    image[5:40, 460:495] = 1.0  # a lead R marker in the corner, as dense as metal
    assert implant_box(image) == (0, 600, 0, 500)  # no implant: the whole film


def test_a_film_without_a_dense_structure_is_kept_whole_and_bad_input_is_refused():
    assert implant_box(np.zeros((300, 200), dtype=np.float32)) == (0, 300, 0, 200)
    with pytest.raises(ValueError, match="2-D image"):
        implant_box(np.zeros((4, 4, 3), dtype=np.float32))
