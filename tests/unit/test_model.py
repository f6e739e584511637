"""models.card and models.factory: cards, the sha256 check, networks and predictions."""

from __future__ import annotations

import json

import numpy as np
import pytest

from models.card import ModelCard, ModelCardError, load_card, sha256_of, write_card
from models.factory import create_network, load_classifier, write_untrained_model
from models.taxonomy import CLASS_ORDER, HardwareClass, View

TINY = {"architecture": "test_efficientnet", "input_size": 64}


@pytest.fixture(scope="module")
def tiny_classifier(tiny_card_path):
    return load_classifier(tiny_card_path)


def test_untrained_model_card_loads_and_verifies(tmp_path):
    card_path = write_untrained_model(tmp_path / "model", **TINY)
    card, weights = load_card(card_path)

    assert card_path == tmp_path / "model" / "card.json"
    assert weights == (tmp_path / "model" / "weights.safetensors").resolve()
    assert card.weights_sha256 == sha256_of(weights)
    assert (card.architecture, card.input_size) == ("test_efficientnet", 64)
    assert card.trained is False and "untrained" in card.version
    assert card.classes == CLASS_ORDER and len(card.classes) == 9
    assert card.display_name == f"{card.name} {card.version}"


def test_same_seed_gives_the_same_weights(tmp_path):
    first, _ = load_card(write_untrained_model(tmp_path / "a", seed=3, **TINY))
    second, _ = load_card(write_untrained_model(tmp_path / "b", seed=3, **TINY))
    other, _ = load_card(write_untrained_model(tmp_path / "c", seed=4, **TINY))
    assert first.weights_sha256 == second.weights_sha256 != other.weights_sha256


def test_tampered_weights_fail_the_sha256_check(tmp_path):
    card_path = write_untrained_model(tmp_path, **TINY)
    weights = tmp_path / "weights.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01  # one bit of the last tensor's data
    weights.write_bytes(bytes(data))

    with pytest.raises(ModelCardError, match="sha256"):
        load_card(card_path)
    with pytest.raises(ModelCardError, match="sha256"):
        load_classifier(card_path)
    card, _ = load_card(card_path, verify_weights=False)  # explicitly unchecked
    assert card.architecture == "test_efficientnet"


def test_missing_weights_and_missing_card(tmp_path):
    card_path = write_untrained_model(tmp_path, **TINY)
    (tmp_path / "weights.safetensors").unlink()
    with pytest.raises(ModelCardError, match="do not exist"):
        load_card(card_path)
    with pytest.raises(ModelCardError, match="does not exist"):
        load_card(tmp_path / "nowhere.json")


def test_card_that_is_not_json_is_invalid(tmp_path):
    card_path = tmp_path / "card.json"
    card_path.write_text("{ this is not json")
    with pytest.raises(ModelCardError, match="invalid"):
        load_card(card_path)


@pytest.mark.parametrize("change, match", [
    ({"threshold": 1.0}, "threshold"),
    ({"input_size": 8}, "input_size"),
    ({"weights_sha256": "not-a-digest"}, "weights_sha256"),
    ({"classes": ["tha", "tha"]}, "distinct"),
    ({"classes": ["tha", "screws"]}, "classes"),
    ({"accepted_views": ["oblique"]}, "accepted_views"),
    ({"unexpected": 1}, "unexpected"),
])
def test_invalid_card_fields(tmp_path, change, match):
    card_path = write_untrained_model(tmp_path, **TINY)
    data = json.loads(card_path.read_text())
    data.update(change)
    card_path.write_text(json.dumps(data))
    with pytest.raises(ModelCardError, match=match):
        load_card(card_path)


def test_card_without_required_field_is_invalid(tmp_path):
    card_path = write_untrained_model(tmp_path, **TINY)
    data = json.loads(card_path.read_text())
    del data["trained"]
    card_path.write_text(json.dumps(data))
    with pytest.raises(ModelCardError, match="trained"):
        load_card(card_path)


def test_write_card_round_trips(tmp_path):
    card = ModelCard(name="site", version="1.2.0", architecture="test_efficientnet", input_size=64, trained=True,
                     classes=(HardwareClass.NONE, HardwareClass.THA), accepted_views=(View.AP_PELVIS,),
                     threshold=0.7, temperature=1.5, weights="w.safetensors", weights_sha256="a" * 64)
    write_card(card, tmp_path / "sub" / "card.json")
    loaded, weights = load_card(tmp_path / "sub" / "card.json", verify_weights=False)
    assert loaded == card
    assert weights == (tmp_path / "sub" / "w.safetensors").resolve()


def test_unknown_architecture_is_refused():
    with pytest.raises(ValueError, match="not a timm model name"):
        create_network("no_such_network_v9", 9)


def test_create_network_has_the_requested_outputs():
    import torch

    network = create_network("test_efficientnet", 4).eval()
    with torch.inference_mode():
        assert tuple(network(torch.zeros(2, 3, 64, 64)).shape) == (2, 4)


def test_predict_returns_probabilities_per_class(tiny_classifier):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(3, 64, 64), dtype=np.uint8)
    probabilities = tiny_classifier.predict(images)

    assert probabilities.shape == (3, 9)
    assert (probabilities >= 0).all()
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(tiny_classifier.predict(images[:1]), probabilities[:1], atol=1e-5)


def test_predict_applies_the_card_temperature(tiny_classifier):
    images = np.random.default_rng(1).integers(0, 256, size=(2, 64, 64), dtype=np.uint8)
    plain = tiny_classifier.predict(images)
    sharp = type(tiny_classifier)(card=tiny_classifier.card.model_copy(update={"temperature": 0.01}),
                                  network=tiny_classifier.network, device=tiny_classifier.device).predict(images)
    # softmax(logits / T) == softmax(log(softmax(logits)) / T)
    scaled = np.log(plain.astype(np.float64)) / 0.01
    expected = np.exp(scaled - scaled.max(axis=1, keepdims=True))
    expected /= expected.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(sharp, expected, atol=2e-3)
    assert np.abs(sharp - plain).max() > 0.05


@pytest.mark.parametrize("shape", [(64, 64), (2, 32, 32), (2, 64, 48), (1, 1, 64, 64)])
def test_predict_refuses_the_wrong_input_shape(tiny_classifier, shape):
    with pytest.raises(ValueError, match="do not match input size 64"):
        tiny_classifier.predict(np.zeros(shape, dtype=np.uint8))
