"""predraft.models.gradcam: target layers per family, a known-answer CAM, PNG overlays and a clean network after."""

from __future__ import annotations

import io
import threading
from copy import deepcopy as copy_module

import numpy as np
import pytest
import timm
import torch
from PIL import Image

from predraft.models.card import ModelCard
from predraft.models.factory import Classifier, create_network, load_classifier, write_untrained_model
from predraft.models.gradcam import _input_batch, cam_map, gradcam_overlay, network_lock, target_layers
from predraft.models.taxonomy import CLASS_ORDER

SIZE = 64
QUADRANTS = {"top_left": (0, 0), "top_right": (0, 1), "bottom_left": (1, 0), "bottom_right": (1, 1)}


# -- a hand-made network with a known answer ---------------------------------------------------------------


class QuadrantNet(torch.nn.Module):
    """Channel 0 is brightness above mid-grey, channel 1 darkness below it; the logit of class 0 is the
    mean of channel 0, of class 1 the mean of channel 1, all others 0. So Grad-CAM of class 0 is the
    bright map (its maximum lies on the bright square) and of class 1 the dark map (zero on the square)."""

    def __init__(self, card: ModelCard) -> None:
        super().__init__()
        self.features = torch.nn.Sequential(torch.nn.Conv2d(3, 2, 1), torch.nn.ReLU(), torch.nn.AvgPool2d(4))
        self.pool = torch.nn.AdaptiveAvgPool2d(1)
        self.fc = torch.nn.Linear(2, len(card.classes))
        std, mean = torch.tensor(card.std), torch.tensor(card.mean)
        with torch.no_grad():  # x_c = (v - mean_c) / std_c, so sum_c x_c * std_c / 3 = v - mean(mean)
            self.features[0].weight.copy_(torch.stack([std / 3, -std / 3]).view(2, 3, 1, 1))
            self.features[0].bias.copy_(torch.stack([mean.mean() - 0.5, 0.5 - mean.mean()]))
            self.fc.weight.zero_()
            self.fc.weight[0, 0] = self.fc.weight[1, 1] = 1.0
            self.fc.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.features(x)).flatten(1))


def quadrant_classifier() -> Classifier:
    card = ModelCard(
        name="quadrant",
        version="1",
        architecture="quadrant_net",
        input_size=SIZE,
        classes=tuple(CLASS_ORDER),
        trained=False,
        weights="none.safetensors",
        weights_sha256="0" * 64,
    )
    return Classifier(card=card, network=QuadrantNet(card).eval(), device=torch.device("cpu"))


def square_in(quadrant: str, edge: int = 16) -> tuple[np.ndarray, tuple[slice, slice]]:
    row, col = QUADRANTS[quadrant]
    half = SIZE // 2
    top, left = row * half + (half - edge) // 2, col * half + (half - edge) // 2
    square = (slice(top, top + edge), slice(left, left + edge))
    image = np.zeros((SIZE, SIZE), dtype=np.uint8)
    image[square] = 255
    return image, square  # 16 px squares at multiples of 8 fill whole cells of the 4 px pooling


def quadrant_of(index: tuple[int, int]) -> str:
    cell = (int(index[0] >= SIZE // 2), int(index[1] >= SIZE // 2))
    return next(name for name, where in QUADRANTS.items() if where == cell)


@pytest.mark.parametrize("quadrant", QUADRANTS)
def test_known_answer_cam_peaks_on_the_bright_square(quadrant):
    classifier = quadrant_classifier()
    image, square = square_in(quadrant)

    bright = cam_map(classifier, image, 0)
    dark = cam_map(classifier, image, 1)

    assert bright.shape == (SIZE, SIZE) and bright.dtype == np.float32
    assert bright.min() >= 0.0 and bright.max() <= 1.0 and bright.max() > 0.9
    assert quadrant_of(np.unravel_index(np.argmax(bright), bright.shape)) == quadrant
    assert bright[square].mean() > 0.5 > bright[~_mask(square)].mean()
    core = tuple(slice(part.start + 4, part.stop - 4) for part in square)  # away from the upsampling's blur
    assert dark[core].max() < 0.05 and dark[~_mask(square)].mean() > 0.5  # the other class looks elsewhere


def _mask(square: tuple[slice, slice]) -> np.ndarray:
    mask = np.zeros((SIZE, SIZE), dtype=bool)
    mask[square] = True
    return mask


def test_concurrent_calls_on_one_network_do_not_mix_their_images():
    classifier = quadrant_classifier()
    results: dict[str, str] = {}

    def explain(quadrant: str) -> None:
        cam = cam_map(classifier, square_in(quadrant)[0], 0)
        results[quadrant] = quadrant_of(np.unravel_index(np.argmax(cam), cam.shape))

    threads = [threading.Thread(target=explain, args=(quadrant,)) for quadrant in QUADRANTS for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == {quadrant: quadrant for quadrant in QUADRANTS}
    assert network_lock(classifier.network) is network_lock(classifier.network)
    assert network_lock(classifier.network) is not network_lock(quadrant_classifier().network)


class MeddledNet(QuadrantNet):
    """After its own forward, runs its features once more from another thread under inference mode,
    like an unlocked ``Classifier.predict`` on the same network during Grad-CAM."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = super().forward(x)
        foreign: list[object] = []

        def predict_elsewhere() -> None:
            with torch.inference_mode():
                foreign.append(self.features(torch.zeros(1, 3, SIZE, SIZE)))

        thread = threading.Thread(target=predict_elsewhere)
        thread.start()
        thread.join()
        assert isinstance(foreign[0], torch.Tensor) and not foreign[0].requires_grad  # left undisturbed
        return logits


def test_a_forward_from_another_thread_during_the_call_is_refused_not_mixed_in():
    classifier = quadrant_classifier()
    meddled = Classifier(card=classifier.card, network=MeddledNet(classifier.card).eval(), device="cpu")

    with pytest.raises(RuntimeError, match="2 activations recorded for 1 target layer.*network_lock"):
        cam_map(meddled, square_in("top_left")[0], 0)
    assert all(not module._forward_hooks and not module._forward_pre_hooks for module in meddled.network.modules())
    assert torch.is_grad_enabled()


# -- timm models --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory) -> dict[str, Classifier]:
    out = tmp_path_factory.mktemp("gradcam-models")
    return {
        name: load_classifier(write_untrained_model(out / name, architecture=name, input_size=SIZE))
        for name in ("test_efficientnet", "test_nfnet", "test_resnet", "test_convnext")
    }


def hip_image(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (SIZE, SIZE), dtype=np.uint8)


@pytest.mark.parametrize(
    ("architecture", "expected"),
    [
        ("test_efficientnet", lambda net: net.bn2),
        ("test_nfnet", lambda net: net.final_act),
        ("test_resnet", lambda net: net.layer4[-1]),
        ("test_convnext", lambda net: net.stages[-1]),
        ("mobilenetv3_small_050", lambda net: net.blocks[-1]),  # conv_head there runs after pooling
        ("test_byobnet", lambda net: net.final_conv),  # no family: the forward-hook search
    ],
)
def test_target_layer_per_family_is_the_pooled_feature_map(architecture, expected):
    network = create_network(architecture, 9).eval()
    layers = target_layers(network, architecture, input_size=SIZE)
    assert layers == [expected(network)]

    seen: list[torch.Tensor] = []
    handle = layers[0].register_forward_hook(lambda _module, _inputs, output: seen.append(output))
    with torch.no_grad():
        features = network.forward_features(torch.randn(1, 3, SIZE, SIZE))
    handle.remove()
    assert seen[-1].ndim == 4 and seen[-1].shape[-1] > 1
    torch.testing.assert_close(seen[-1], features)  # the map global pooling sees


def test_target_layers_refuse_networks_without_a_usable_map():
    with pytest.raises(ValueError, match="'test_vit'.*reshape transform"):
        target_layers(timm.create_model("test_vit", pretrained=False), "test_vit")
    mlp = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 2))
    with pytest.raises(ValueError, match="'mlp': no module gives a spatial"):
        target_layers(mlp, "mlp", input_size=8)
    with pytest.raises(ValueError, match="'mlp'.*forward at 16 px failed"):
        target_layers(mlp, "mlp", input_size=16)
    with pytest.raises(TypeError, match="architecture must be a non-empty str"):
        target_layers(mlp, "")


@pytest.mark.parametrize("architecture", ["test_efficientnet", "test_nfnet", "test_resnet", "test_convnext"])
def test_overlay_is_an_rgb_png_of_the_requested_size_and_leaves_the_network_clean(tiny_models, architecture):
    classifier = tiny_models[architecture]
    network = classifier.network

    png = gradcam_overlay(classifier, hip_image(), 3, size=96)

    with Image.open(io.BytesIO(png)) as image:
        assert (image.format, image.mode, image.size) == ("PNG", "RGB", (96, 96))
        assert not image.info.get("text") and not getattr(image, "text", {})
    assert not network.training and not any(module.training for module in network.modules())
    for module in network.modules():
        assert not module._forward_hooks and not module._forward_pre_hooks
        assert not module._backward_hooks and not module._backward_pre_hooks
    assert all(parameter.requires_grad and parameter.grad is None for parameter in network.parameters())


def test_cam_works_inside_inference_mode_and_does_not_change_predictions(tiny_models):
    classifier = tiny_models["test_efficientnet"]
    image = hip_image(1)
    before = classifier.predict(image[None])

    with torch.inference_mode():
        cam = cam_map(classifier, image, 0)

    assert cam.shape == (SIZE, SIZE) and cam.dtype == np.float32 and 0.0 <= cam.min() <= cam.max() <= 1.0
    np.testing.assert_array_equal(classifier.predict(image[None]), before)


@pytest.mark.parametrize("architecture", ["test_efficientnet", "test_nfnet"])
def test_cam_equals_plain_grad_cam_on_a_copy(tiny_models, architecture):
    """Frozen parameters and a graph that starts at the target layer change the cost, not the map."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    classifier = tiny_models[architecture]
    image = hip_image(3)
    copy = copy_module(classifier.network).eval()
    with GradCAM(model=copy, target_layers=target_layers(copy, architecture)) as plain:
        expected = plain(input_tensor=_input_batch(classifier, image), targets=[ClassifierOutputTarget(5)])[0]

    np.testing.assert_allclose(cam_map(classifier, image, 5), expected, atol=1e-5)


def test_no_graph_is_recorded_before_the_target_layer(tiny_models):
    network = tiny_models["test_efficientnet"].network
    recorded: dict[str, bool] = {}

    def note(name: str):
        def hook(_module, _inputs, output) -> None:
            recorded.setdefault(name, output.requires_grad)

        return hook

    modules = {"stem": network.conv_stem, "head": network.conv_head, "logits": network.classifier}
    hooks = [module.register_forward_hook(note(name)) for name, module in modules.items()]
    try:
        cam_map(tiny_models["test_efficientnet"], hip_image(4), 2)
    finally:
        for hook in hooks:
            hook.remove()
    assert recorded == {"stem": False, "head": False, "logits": True}  # the graph starts at bn2


def test_input_is_prepared_exactly_like_predict(tiny_models):
    classifier = tiny_models["test_resnet"]
    image = hip_image(2)
    with torch.no_grad():
        logits = classifier.network(_input_batch(classifier, image))
    probabilities = torch.softmax(logits / classifier.card.temperature, dim=1).numpy()
    np.testing.assert_allclose(probabilities, classifier.predict(image[None]), rtol=1e-6, atol=1e-7)


def test_a_training_network_is_left_in_eval_mode(tiny_models):
    classifier = tiny_models["test_convnext"]
    classifier.network.train()
    gradcam_overlay(classifier, hip_image(), 0, size=32)
    assert not classifier.network.training


def test_wrong_arguments_are_refused_by_name():
    classifier = quadrant_classifier()
    image = square_in("top_left")[0]
    with pytest.raises(ValueError, match=r"hip_image of shape \(64, 63\) does not match input size 64"):
        cam_map(classifier, image[:, :63], 0)
    with pytest.raises(ValueError, match=r"hip_image of shape \(1, 64, 64\)"):
        cam_map(classifier, image[None], 0)
    with pytest.raises(ValueError, match="hip_image must be uint8.*float32"):
        cam_map(classifier, image.astype(np.float32), 0)
    with pytest.raises(TypeError, match="hip_image must be a numpy array, not list"):
        cam_map(classifier, image.tolist(), 0)
    with pytest.raises(ValueError, match=r"class_index 9 is outside 0\.\.8"):
        gradcam_overlay(classifier, image, 9)
    with pytest.raises(ValueError, match=r"class_index -1 is outside 0\.\.8"):
        gradcam_overlay(classifier, image, -1)
    with pytest.raises(TypeError, match="class_index must be an int, not bool"):
        gradcam_overlay(classifier, image, True)
    with pytest.raises(ValueError, match=r"size 8 must lie in \[16, 1024\]"):
        gradcam_overlay(classifier, image, 0, size=8)
    assert all(not module._forward_hooks for module in classifier.network.modules())
