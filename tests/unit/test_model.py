"""predraft.models.card and predraft.models.factory: cards, the sha256 check, networks and predictions."""

from __future__ import annotations

import json
import re
import socket
import time

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from predraft.models.card import ModelCard, ModelCardError, load_card, sha256_of, write_card
from predraft.models.factory import (
    Classifier,
    classifier_head_keys,
    create_network,
    load_classifier,
    write_untrained_model,
)
from predraft.models.taxonomy import CLASS_ORDER, HardwareClass, View

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

    expected, actual = json.loads(card_path.read_text())["weights_sha256"], sha256_of(weights)
    assert expected != actual
    both = f"(?s)(?=.*{actual})(?=.*{expected})"  # the message names both digests
    with pytest.raises(ModelCardError, match=both):
        load_card(card_path)
    with pytest.raises(ModelCardError, match=f"have sha256 {actual}, but the card .* expects sha256 {expected}"):
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


@pytest.mark.parametrize(
    "change, match",
    [
        ({"threshold": 1.0}, "threshold"),
        ({"input_size": 8}, "input_size"),
        ({"weights_sha256": "not-a-digest"}, "weights_sha256"),
        ({"classes": ["tha", "tha"]}, "distinct"),
        ({"classes": ["tha", "tha"]}, "classes"),
        ({"accepted_views": ["oblique"]}, "accepted_views"),
        ({"class_thresholds": {"tha": 1.0}}, re.escape("class_thresholds['tha'] = 1.0 must lie in (0, 1)")),
        ({"class_thresholds": {"tha": 0}}, "class_thresholds"),
        ({"class_thresholds": {"rod": 0.5}}, "class_thresholds"),
        (
            {"classes": ["none", "tha"], "class_thresholds": {"dhs": 0.5}},
            re.escape("class_thresholds names ['dhs'], which are not among the card's classes"),
        ),
        ({"unexpected": 1}, "unexpected"),
    ],
)
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
    card = ModelCard(
        name="site",
        version="1.2.0",
        architecture="test_efficientnet",
        input_size=64,
        trained=True,
        classes=(HardwareClass.NONE, HardwareClass.THA),
        accepted_views=(View.AP_PELVIS,),
        threshold=0.7,
        temperature=1.5,
        weights="w.safetensors",
        weights_sha256="a" * 64,
    )
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
    sharp = type(tiny_classifier)(
        card=tiny_classifier.card.model_copy(update={"temperature": 0.01}),
        network=tiny_classifier.network,
        device=tiny_classifier.device,
    ).predict(images)
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


def _card(**changes) -> ModelCard:
    fields = {
        "name": "site",
        "version": "1",
        "architecture": "test_efficientnet",
        "input_size": 64,
        "trained": True,
        "classes": CLASS_ORDER,
        "weights": "w.safetensors",
        "weights_sha256": "a" * 64,
        **changes,
    }
    return ModelCard(**fields)


def test_class_thresholds_default_to_the_global_threshold():
    card = _card(threshold=0.6, class_thresholds={"tha": 0.8, HardwareClass.POST_INFECTIOUS: 0.3})
    assert card.threshold_for(HardwareClass.THA) == 0.8
    assert card.threshold_for("post_infectious") == 0.3
    assert card.threshold_for("dhs") == 0.6
    assert list(card.thresholds) == list(CLASS_ORDER)
    assert card.thresholds[HardwareClass.NONE] == 0.6 and card.thresholds[HardwareClass.THA] == 0.8
    assert _card().thresholds == dict.fromkeys(CLASS_ORDER, 0.5)
    with pytest.raises(ValueError, match="class 'rod' is not among the classes of site 1"):
        card.threshold_for("rod")
    small = _card(classes=("none", "tha"))
    with pytest.raises(ValueError, match="class 'dhs' is not among the classes of site 1"):
        small.threshold_for("dhs")


def test_class_thresholds_round_trip_and_old_cards_still_load(tmp_path):
    card = _card(class_thresholds={"tha": 0.8})
    write_card(card, tmp_path / "card.json")
    data = json.loads((tmp_path / "card.json").read_text())
    assert data["class_thresholds"] == {"tha": 0.8} and data["threshold"] == 0.5
    assert load_card(tmp_path / "card.json", verify_weights=False)[0] == card

    del data["class_thresholds"]  # a card written before per-class thresholds existed
    (tmp_path / "old.json").write_text(json.dumps(data))
    old, _ = load_card(tmp_path / "old.json", verify_weights=False)
    assert old.class_thresholds == {} and old.threshold_for("tha") == 0.5


@pytest.mark.parametrize(
    "architecture, input_size",
    [
        ("tf_efficientnet_b4", 380),
        # 1 GB of weights and 136 GFLOP: 10-20 s on two CPU cores, the heaviest unit test by far.
        pytest.param("dm_nfnet_f3", 320, marks=pytest.mark.slow),
    ],
)
def test_the_papers_networks_load_by_name_and_predict(tmp_path, architecture, input_size):
    card_path = write_untrained_model(tmp_path, architecture=architecture, input_size=input_size)
    classifier = load_classifier(card_path)
    assert (classifier.card.architecture, classifier.card.input_size) == (architecture, input_size)

    image = np.random.default_rng(0).integers(0, 256, size=(1, input_size, input_size), dtype=np.uint8)
    probabilities = classifier.predict(image)
    assert probabilities.shape == (1, 9) and probabilities.dtype == np.float32
    assert (probabilities >= 0).all()
    np.testing.assert_allclose(probabilities.sum(), 1.0, atol=1e-5)


def _no_network(monkeypatch):
    """Offline for Hugging Face, and any socket connection an error."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def refuse(*args, **kwargs):
        raise AssertionError(f"a network connection was attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture
def imagenet_state():
    """A stand-in for ImageNet weights: test_efficientnet's own random state with a 1,000-class head."""
    torch.manual_seed(123)
    return {key: value.contiguous() for key, value in create_network("test_efficientnet", 1000).state_dict().items()}


@pytest.mark.parametrize("form", ["safetensors", "pth", "pth-wrapped"])
def test_create_network_takes_its_backbone_from_a_local_file(tmp_path, monkeypatch, imagenet_state, form):
    if form == "safetensors":
        path = tmp_path / "imagenet.safetensors"
        save_file(imagenet_state, str(path))
    elif form == "pth":
        path = tmp_path / "imagenet.pth"
        torch.save(imagenet_state, path)
    else:  # a training checkpoint: {"state_dict": ...} with DistributedDataParallel's prefix
        path = tmp_path / "checkpoint.pth.tar"
        torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in imagenet_state.items()}}, path)
    _no_network(monkeypatch)

    torch.manual_seed(7)
    reference = create_network("test_efficientnet", 9)  # what a fresh head looks like with this seed
    torch.manual_seed(7)
    network = create_network("test_efficientnet", 9, init_weights=path)

    state = network.state_dict()
    head = classifier_head_keys(network)
    assert head == {"classifier.weight", "classifier.bias"}
    for key, value in state.items():
        if key in head:
            assert value.shape[0] == 9
            torch.testing.assert_close(value, reference.state_dict()[key])  # initialised, not loaded
        else:
            torch.testing.assert_close(value, imagenet_state[key], rtol=0, atol=0)
    backbone = [key for key in state if key not in head and state[key].is_floating_point()]
    assert any(not torch.equal(state[key], reference.state_dict()[key]) for key in backbone)


def test_nfnet_head_keys_are_found():
    assert classifier_head_keys(create_network("test_nfnet", 9)) == {"head.fc.weight", "head.fc.bias"}


def test_init_weights_of_another_architecture_are_refused(tmp_path):
    path = tmp_path / "other.safetensors"
    save_file(
        {k: v.contiguous() for k, v in create_network("mobilenetv3_small_050", 1000).state_dict().items()}, str(path)
    )
    with pytest.raises(ValueError, match=f"init_weights {re.escape(str(path))} do not fit EfficientNet: missing"):
        create_network("test_efficientnet", 9, init_weights=path)


def test_init_weights_may_be_a_task_networks_own_whose_backbone_is_taken(tmp_path):
    path = tmp_path / "task.safetensors"
    plain = create_network("test_efficientnet", 9).state_dict()
    task_state = {f"backbone.{k}": v.contiguous() for k, v in plain.items() if not k.startswith("classifier.")}
    task_state["heads.region.weight"] = torch.zeros(4, 8)  # a task network's head: left out
    save_file(task_state, str(path))
    network = create_network("test_efficientnet", 5, init_weights=path)
    loaded = network.state_dict()
    for key, value in load_file(str(path)).items():
        if key.startswith("backbone."):
            assert torch.equal(loaded[key.removeprefix("backbone.")], value), key
    assert loaded["classifier.weight"].shape[0] == 5  # its own head, freshly initialised


def test_init_weights_missing_or_unreadable(tmp_path):
    with pytest.raises(FileNotFoundError, match="init_weights .*nowhere.safetensors does not exist"):
        create_network("test_efficientnet", 9, init_weights=tmp_path / "nowhere.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="init_weights .*junk.safetensors is not a readable checkpoint"):
        create_network("test_efficientnet", 9, init_weights=junk)


@pytest.mark.parametrize(
    "num_classes, error, match",
    [
        (0, ValueError, "num_classes 0 must be at least 1"),
        (2.0, TypeError, "num_classes must be an int"),
    ],
)
def test_create_network_checks_num_classes(num_classes, error, match):
    with pytest.raises(error, match=match):
        create_network("test_efficientnet", num_classes)


class OutOfMemoryAbove(torch.nn.Module):
    """A fake network that raises CUDA's out-of-memory error for batches larger than ``limit``.

    Its logits encode its input: logit k of an image is k times the image's mean.
    """

    def __init__(
        self,
        limit: int,
        error: type[Exception] = torch.cuda.OutOfMemoryError,
        message: str = "CUDA out of memory. Tried to allocate 2.00 GiB",
    ) -> None:
        super().__init__()
        self.limit, self.error, self.message = limit, error, message
        self.calls: list[int] = []

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        self.calls.append(len(batch))
        if len(batch) > self.limit:
            raise self.error(self.message)
        return batch.mean(dim=(1, 2, 3))[:, None] * torch.arange(9.0)


def _oom_classifier(network) -> Classifier:
    return Classifier(_card(), network, "cpu")


def _expected_from_means(images: np.ndarray) -> np.ndarray:
    reference = _oom_classifier(OutOfMemoryAbove(limit=10_000))
    return np.concatenate([reference.predict(images[i : i + 1]) for i in range(len(images))])


def test_out_of_memory_halves_the_batch_and_remembers(caplog):
    images = np.stack([np.full((64, 64), 20 * i, dtype=np.uint8) for i in range(10)])
    network = OutOfMemoryAbove(limit=3)
    classifier = _oom_classifier(network)

    probabilities = classifier.predict(images)
    np.testing.assert_allclose(probabilities, _expected_from_means(images), atol=1e-6)
    assert network.calls == [10, 5, 2, 2, 2, 2, 2]
    assert classifier.batch_limit == 2
    assert "ran out of memory: batches of at most 2" in caplog.text

    network.calls.clear()
    classifier.predict(images[:5])
    assert network.calls == [2, 2, 1]  # the smaller size is kept: no second out-of-memory


def test_a_runtime_error_saying_out_of_memory_is_out_of_memory_too():
    images = np.zeros((4, 64, 64), dtype=np.uint8)
    network = OutOfMemoryAbove(limit=1, error=RuntimeError, message="CUDA error: out of memory")
    assert _oom_classifier(network).predict(images).shape == (4, 9)
    assert network.calls == [4, 2, 1, 1, 1, 1]


def test_out_of_memory_on_one_image_and_other_errors_are_raised():
    images = np.zeros((4, 64, 64), dtype=np.uint8)
    with pytest.raises(torch.cuda.OutOfMemoryError, match="CUDA out of memory"):
        _oom_classifier(OutOfMemoryAbove(limit=0)).predict(images)
    network = OutOfMemoryAbove(limit=1, error=RuntimeError, message="mat1 and mat2 shapes cannot be multiplied")
    with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):
        _oom_classifier(network).predict(images)
    assert network.calls == [4]  # not retried


def test_predict_refuses_images_that_are_not_uint8(tiny_classifier):
    with pytest.raises(ValueError, match="images must be uint8, not float32"):
        tiny_classifier.predict(np.zeros((1, 64, 64), dtype=np.float32))
    with pytest.raises(TypeError, match="images must be a numpy array, not list"):
        tiny_classifier.predict([[0]])


def test_predict_takes_read_only_images(tiny_classifier):
    images = np.frombuffer(bytes(64 * 64), dtype=np.uint8).reshape(1, 64, 64)
    assert not images.flags.writeable
    assert tiny_classifier.predict(images).shape == (1, 9)


def test_compile_is_for_cuda_only(tiny_classifier):
    classifier = Classifier(tiny_classifier.card, tiny_classifier.network, "cpu", compile=True)
    assert classifier.compiled is False and not classifier.accelerated
    assert "compiled=False" in repr(classifier)


def test_classifier_checks_its_arguments(tiny_classifier):
    with pytest.raises(TypeError, match="card must be a ModelCard, not dict"):
        Classifier({}, tiny_classifier.network)
    with pytest.raises(TypeError, match="network must be a torch.nn.Module, not function"):
        Classifier(tiny_classifier.card, lambda batch: batch)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_a_gpu_is_a_clear_error(tiny_card_path):
    with pytest.raises(RuntimeError, match="device 'cuda' was asked for, but torch sees no CUDA device"):
        load_classifier(tiny_card_path, "cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_bf16_channels_last_matches_cpu(tiny_card_path):
    cpu = load_classifier(tiny_card_path)
    cuda = load_classifier(tiny_card_path, "cuda")
    images = np.random.default_rng(5).integers(0, 256, size=(8, 64, 64), dtype=np.uint8)
    start = time.perf_counter()
    np.testing.assert_allclose(cuda.predict(images), cpu.predict(images), atol=0.05)
    assert time.perf_counter() - start < 60
    first = next(cuda.network.parameters())
    assert first.is_cuda


@pytest.mark.parametrize("architecture", ["test_efficientnet", "test_vit_relpos"])
def test_loaded_networks_hold_exactly_the_weights_on_the_file(tmp_path, architecture):
    # test_vit_relpos has buffers computed at construction (not in its weights): it is built the plain way.
    card_path = write_untrained_model(tmp_path, architecture=architecture, input_size=160, seed=11)
    saved = load_file(str(tmp_path / "weights.safetensors"))
    network = load_classifier(card_path).network

    state = network.state_dict()
    assert state.keys() == saved.keys()
    for key, value in saved.items():
        assert state[key].dtype == value.dtype
        torch.testing.assert_close(state[key], value, rtol=0, atol=0)
    assert not any(tensor.is_meta for tensor in [*network.parameters(), *network.buffers()])
    assert not network.training

    torch.manual_seed(11)
    reference = create_network(architecture, 9).eval()
    batch = torch.rand(1, 3, 160, 160)
    with torch.inference_mode():
        torch.testing.assert_close(network(batch), reference(batch))
