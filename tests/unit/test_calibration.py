"""predraft.models.calibration: temperature scaling, the expected calibration error, and calibrated cards."""

from __future__ import annotations

import json

import numpy as np
import pytest

from predraft.models.calibration import (
    expected_calibration_error,
    fit_temperature,
    negative_log_likelihood,
    softmax,
    write_calibrated_card,
)
from predraft.models.card import ModelCardError, load_card
from predraft.models.factory import load_classifier, write_untrained_model


def _calibrated(samples: int = 20_000, classes: int = 9, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Logits and labels drawn from softmax(logits): calibrated by construction."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0.0, 2.0, size=(samples, classes))
    probs = softmax(logits)
    labels = (rng.random((samples, 1)) > probs.cumsum(axis=1)).sum(axis=1)
    return logits, np.minimum(labels, classes - 1)


def test_over_confident_logits_get_a_temperature_above_one_and_a_lower_ece():
    logits, labels = _calibrated()
    over_confident = 3.0 * logits
    temperature = fit_temperature(over_confident, labels)

    assert temperature > 1
    assert temperature == pytest.approx(3.0, rel=0.1)
    before = expected_calibration_error(softmax(over_confident), labels)
    after = expected_calibration_error(softmax(over_confident, temperature), labels)
    assert after < before / 3
    assert after < 0.02


def test_calibrated_logits_keep_a_temperature_of_one():
    logits, labels = _calibrated(seed=1)
    assert fit_temperature(logits, labels) == pytest.approx(1.0, abs=0.05)


def test_under_confident_logits_get_a_temperature_below_one():
    logits, labels = _calibrated(seed=2)
    assert fit_temperature(logits / 2.0, labels) == pytest.approx(0.5, rel=0.1)


def test_the_fitted_temperature_minimises_the_nll():
    logits, labels = _calibrated(samples=2_000, seed=3)
    logits = 2.0 * logits
    best = fit_temperature(logits, labels)
    nll = negative_log_likelihood(logits, labels, best)
    for other in (best * 0.97, best * 1.03, 1.0):
        assert nll <= negative_log_likelihood(logits, labels, other)


def test_a_temperature_outside_the_bounds_stops_at_the_bound():
    logits, labels = _calibrated(samples=2_000, seed=4)
    assert fit_temperature(10.0 * logits, labels, bounds=(0.5, 2.0)) == pytest.approx(2.0, rel=1e-3)


@pytest.mark.parametrize(
    "probs, labels, expected",
    [
        ([[1.0, 0.0], [0.0, 1.0]], [0, 1], 0.0),  # sure and right
        ([[1.0, 0.0], [0.0, 1.0]], [1, 0], 1.0),  # sure and wrong
        ([[0.6, 0.4], [0.6, 0.4], [0.9, 0.1], [0.9, 0.1]], [0, 1, 0, 0], 0.5 * 0.1 + 0.5 * 0.1),
    ],
)
def test_expected_calibration_error_of_known_cases(probs, labels, expected):
    assert expected_calibration_error(np.array(probs), np.array(labels), bins=10) == pytest.approx(expected)


@pytest.mark.parametrize(
    "logits, labels, error, match",
    [
        (np.zeros(5), np.zeros(5, int), ValueError, r"logits must be a 2-D array .* shape \(5,\)"),
        (np.zeros((5, 1)), np.zeros(5, int), ValueError, "logits must be a 2-D array"),
        (np.zeros((0, 3)), np.zeros(0, int), ValueError, "logits must be a 2-D array"),
        (np.full((2, 3), np.nan), np.zeros(2, int), ValueError, "logits hold 6 non-finite"),
        ([["a", "b"]], np.zeros(1, int), TypeError, "logits must be an array of numbers"),
        (np.zeros((5, 3)), np.zeros(4, int), ValueError, r"labels of shape \(4,\) do not match logits"),
        (np.zeros((5, 3)), np.zeros((5, 1), int), ValueError, r"labels of shape \(5, 1\)"),
        (np.zeros((5, 3)), np.zeros(5), TypeError, "labels must be integer class indices, not float64"),
        (np.zeros((2, 3)), np.array([0, 3]), ValueError, r"labels must lie in \[0, 2\], got 0..3"),
    ],
)
def test_fit_temperature_refuses_bad_input(logits, labels, error, match):
    with pytest.raises(error, match=match):
        fit_temperature(logits, labels)


@pytest.mark.parametrize(
    "probs, labels, bins, error, match",
    [
        (np.full((2, 3), 0.5), np.zeros(2, int), 15, ValueError, "probs must be probabilities"),
        (np.zeros(3), np.zeros(3, int), 15, ValueError, "probs must be a 2-D array"),
        (np.full((2, 2), 0.5), np.zeros(3, int), 15, ValueError, "labels of shape"),
        (np.full((2, 2), 0.5), np.zeros(2, int), 0, ValueError, "bins 0 must be at least 1"),
        (np.full((2, 2), 0.5), np.zeros(2, int), 2.0, TypeError, "bins must be an int"),
    ],
)
def test_expected_calibration_error_refuses_bad_input(probs, labels, bins, error, match):
    with pytest.raises(error, match=match):
        expected_calibration_error(probs, labels, bins=bins)


def test_fit_temperature_refuses_bad_bounds():
    logits, labels = _calibrated(samples=10)
    with pytest.raises(ValueError, match="bounds"):
        fit_temperature(logits, labels, bounds=(2.0, 1.0))


@pytest.fixture
def tiny_model(tmp_path):
    return write_untrained_model(tmp_path / "model", architecture="test_efficientnet", input_size=64)


def test_calibrated_card_keeps_the_weights_and_changes_the_temperature(tiny_model, tmp_path):
    out = write_calibrated_card(tiny_model, tmp_path / "calibrated" / "card.json", temperature=2.5)
    original, weights = load_card(tiny_model)
    calibrated, calibrated_weights = load_card(out)  # the sha256 is checked here

    assert calibrated_weights == weights
    assert calibrated.weights_sha256 == original.weights_sha256
    assert calibrated.temperature == 2.5 and original.temperature == 1.0
    assert calibrated.version == f"{original.version}+T2.500"
    assert json.loads(out.read_text())["weights"] == "../model/weights.safetensors"
    assert calibrated.model_dump(exclude={"temperature", "version", "weights"}) == original.model_dump(
        exclude={"temperature", "version", "weights"}
    )

    images = np.random.default_rng(0).integers(0, 256, size=(2, 64, 64), dtype=np.uint8)
    plain = load_classifier(tiny_model).predict(images).astype(np.float64)
    soft = load_classifier(out).predict(images)
    np.testing.assert_allclose(soft, softmax(np.log(plain), 2.5), atol=1e-4)


def test_calibrated_card_beside_the_weights_and_with_a_version(tiny_model):
    out = write_calibrated_card(
        tiny_model, tiny_model.with_name("card-calibrated.json"), temperature=1.7, version="1.0.0"
    )
    card, _ = load_card(out)
    assert (card.temperature, card.version, card.weights) == (1.7, "1.0.0", "weights.safetensors")


def test_calibrated_card_refusals(tiny_model, tmp_path):
    with pytest.raises(FileExistsError, match="out_path .* exists"):
        write_calibrated_card(tiny_model, tiny_model, temperature=2.0)
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="temperature .* must be a positive finite number"):
            write_calibrated_card(tiny_model, tmp_path / "new.json", temperature=bad)
    with pytest.raises(TypeError, match="temperature must be a number"):
        write_calibrated_card(tiny_model, tmp_path / "new.json", temperature="2")
    weights = tiny_model.with_name("weights.safetensors")
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01
    weights.write_bytes(bytes(data))
    with pytest.raises(ModelCardError, match="sha256"):
        write_calibrated_card(tiny_model, tmp_path / "new.json", temperature=2.0)
    assert not (tmp_path / "new.json").exists()
