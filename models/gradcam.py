"""Grad-CAM heat maps of the hardware classifier, as small PNG overlays for the worklist.

One map per image and class: the gradient of the class's logit (before softmax and temperature)
with respect to a target layer's feature map, averaged over space, weights that map's channels
(Selvaraju et al., Grad-CAM, ICCV 2017; computed by the ``grad-cam`` package).

Target layers, per architecture family (timm 1.0; checked on ``tf_efficientnet_b4``, ``efficientnet_b0``,
``mobilenetv3_small_100``, ``mobilenetv3_large_100``, ``dm_nfnet_f3``, ``nfnet_l0``, ``resnet18``,
``convnext_tiny`` and the ``test_*`` models). The first attribute path that exists is used. Each is the
feature map that the global pooling sees, after its norm and activation, so Grad-CAM on a GAP + linear
head is exactly CAM:

===============  =============================================================  ==========================
family           architecture names                                             target (first that exists)
===============  =============================================================  ==========================
EfficientNet     ``efficientnet*``, ``tf_efficientnet*``, ``test_efficientnet*``  ``bn2``, ``conv_head``,
                                                                                ``blocks[-1]``
MobileNetV3      ``mobilenetv3*``, ``tf_mobilenetv3*``                          ``blocks[-1]``
NFNet            ``dm_nfnet*``, ``nfnet*``, ``eca_nfnet*``, ``test_nfnet*``     ``final_act``,
                                                                                ``final_conv``, ``stages[-1]``
ResNet           ``resnet*``, ``test_resnet*``                                  ``layer4[-1]``
ConvNeXt         ``convnext*``, ``test_convnext*``                              ``stages[-1]``
===============  =============================================================  ==========================

Why not ``conv_head`` everywhere: in timm's EfficientNet ``bn2`` (BatchNorm + SiLU) follows
``conv_head``; its output is the map that is pooled, while ``conv_head``'s own output is before the
norm's per-channel offset. In timm's MobileNetV3 ``conv_head`` runs *after* global pooling, on a 1x1
map, so a CAM there is one flat value: ``blocks[-1]`` is the last spatial map. In NFNet ``final_act``
follows ``final_conv`` in the same way.

Any other architecture (or a family member lacking every listed attribute, e.g. ``resnetv2_*``, which
has ``stages``, not ``layer4``): one forward of a zero image at the input size with a hook on every
module; the target is the module that finished last with a 4-D output of more than one pixel. When no
such module exists, or token (3-D) outputs follow it (a vision transformer: Grad-CAM would need a
reshape transform), :class:`ValueError` names the architecture.

Thread safety: Grad-CAM registers hooks on the shared network for the duration of a call. Calls on
the same network are serialised by :func:`network_lock`; different networks run in parallel. The
parameters' ``requires_grad`` is never changed and no ``.grad`` is left on them. An eager
``Classifier.predict`` on the same network from another thread during a call would run through
grad-cam's hooks and add its activations to theirs: :func:`cam_map` then raises :class:`RuntimeError`
rather than return a map that may be another image's. Callers that predict and explain on one network
from several threads hold ``network_lock(network)`` around predict as well. (A ``torch.compile``-d
forward does not run hooks registered after it was compiled and is not recompiled by them: checked
with dynamo's eager backend.)
"""

from __future__ import annotations

import io
import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import cv2
import numpy as np
import torch
from PIL import Image
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

if TYPE_CHECKING:
    from predraft.models.factory import Classifier

#: Largest edge of an overlay PNG: the worklist shows thumbnails.
MAX_OVERLAY_SIZE = 1024
#: Opacity of the heat map where the CAM is 1; it fades to 0 where the CAM is 0, so the radiograph
#: stays readable where the model did not look.
MAX_HEAT_OPACITY = 0.6


@dataclass(frozen=True)
class _Family:
    name: str
    prefixes: tuple[str, ...]
    paths: tuple[str, ...]


_FAMILIES: tuple[_Family, ...] = (
    _Family(
        "EfficientNet", ("efficientnet", "tf_efficientnet", "test_efficientnet"), ("bn2", "conv_head", "blocks.-1")
    ),
    _Family("MobileNetV3", ("mobilenetv3", "tf_mobilenetv3"), ("blocks.-1",)),
    _Family("NFNet", ("dm_nfnet", "nfnet", "eca_nfnet", "test_nfnet"), ("final_act", "final_conv", "stages.-1")),
    _Family("ResNet", ("resnet", "test_resnet"), ("layer4.-1",)),
    _Family("ConvNeXt", ("convnext", "test_convnext"), ("stages.-1",)),
)

_LOCKS: weakref.WeakKeyDictionary[torch.nn.Module, threading.Lock] = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()


def network_lock(network: torch.nn.Module) -> threading.Lock:
    """The lock that serialises Grad-CAM (and, by the caller's choice, predict) on ``network``."""
    network = _eager(network)
    with _LOCKS_GUARD:
        lock = _LOCKS.get(network)
        if lock is None:
            lock = _LOCKS[network] = threading.Lock()
        return lock


def target_layers(
    network: torch.nn.Module, architecture: str, *, input_size: int | None = None
) -> list[torch.nn.Module]:
    """The layer(s) whose feature map Grad-CAM weighs, by the family table in this module's docstring.

    ``input_size`` is the edge of the zero image of the fallback's forward (default: the timm model's
    ``pretrained_cfg`` input size, else 224); the family table needs no forward.
    """
    if not isinstance(network, torch.nn.Module):
        raise TypeError(f"network must be a torch.nn.Module, not {type(network).__name__}")
    if not isinstance(architecture, str) or not architecture:
        raise TypeError(f"architecture must be a non-empty str, not {architecture!r}")
    network = _eager(network)
    for family in _FAMILIES:
        if architecture.startswith(family.prefixes):
            for path in family.paths:
                module = _resolve(network, path)
                if module is not None:
                    return [module]
            break  # a family member with none of the usual attributes: search like any other network
    return [_last_spatial_module(network, architecture, input_size)]


def cam_map(classifier: Classifier, hip_image: np.ndarray, class_index: int) -> np.ndarray:
    """Grad-CAM of ``class_index`` on one letterboxed uint8 hip image (S, S): float32 (S, S) in [0, 1].

    The input is prepared exactly like ``Classifier.predict``. Gradients are enabled for the call even
    inside ``torch.inference_mode``; the autograd graph starts at the target layer, so the backward only
    runs through the head, and no ``.grad`` is left on the parameters. The network is put in eval mode
    and left there, and every hook is removed before returning.
    """
    _check_image(classifier, hip_image)
    class_index = _check_class_index(classifier, class_index)
    network = _eager(classifier.network)
    with network_lock(network), torch.inference_mode(False), torch.enable_grad():
        network.eval()
        layers = target_layers(network, classifier.card.architecture, input_size=classifier.card.input_size)
        batch = _input_batch(classifier, hip_image)
        with _graph_from(network, layers[0]):
            # Not GradCAM's context manager: its __exit__ swallows IndexError (grad-cam 1.5.x prints it
            # and returns True), which would turn a failure into an unbound result.
            cam = GradCAM(model=network, target_layers=layers)
            try:
                maps = cam(input_tensor=batch, targets=[ClassifierOutputTarget(class_index)])
                recorded = len(cam.activations_and_grads.activations)
            finally:
                cam.activations_and_grads.release()
                cam.outputs = None  # the graph kept by backward(retain_graph=True)
                network.zero_grad(set_to_none=True)  # the head's weight gradients
    if recorded != len(layers):
        raise RuntimeError(
            f"{recorded} activations recorded for {len(layers)} target layer(s) of {classifier.card.name}: "
            "another thread ran the network during Grad-CAM; hold network_lock(network) around predict"
        )
    result = np.nan_to_num(np.asarray(maps[0], dtype=np.float32), nan=0.0, posinf=1.0, neginf=0.0)
    return np.clip(result, 0.0, 1.0)


def gradcam_overlay(classifier: Classifier, hip_image: np.ndarray, class_index: int, *, size: int = 192) -> bytes:
    """A PNG (RGB, ``size`` x ``size``) of the hip image with the class's Grad-CAM as a JET heat map.

    The heat map's opacity follows the CAM (up to :data:`MAX_HEAT_OPACITY`), so low-attention regions
    show the plain radiograph. The PNG holds pixels only: no text chunks, nothing about the patient.
    """
    if isinstance(size, bool) or not isinstance(size, int | np.integer):
        raise TypeError(f"size must be an int, not {type(size).__name__}")
    if not 16 <= size <= MAX_OVERLAY_SIZE:
        raise ValueError(f"size {size} must lie in [16, {MAX_OVERLAY_SIZE}]")
    heat = cam_map(classifier, hip_image, class_index)
    return _encode_png(_blend(hip_image, heat, int(size)))


def _input_batch(classifier: Classifier, hip_image: np.ndarray) -> torch.Tensor:
    """(1, 3, S, S) float32 on the classifier's device, the same arithmetic as ``Classifier.predict``:
    ``x * (1 / (255 std)) + (-mean / std)`` per channel, for ``(x / 255 - mean) / std``.

    Float32 also on CUDA, where predict runs under bf16 autocast: gradients in bf16 are too coarse.
    """
    card, device = classifier.card, classifier.device
    std = torch.tensor(card.std, dtype=torch.float32, device=device)
    scale = 1.0 / (255.0 * std)
    shift = -torch.tensor(card.mean, dtype=torch.float32, device=device) / std
    pixels = torch.from_numpy(np.ascontiguousarray(hip_image)[None]).to(device)
    return (pixels.unsqueeze(-1).to(torch.float32) * scale + shift).permute(0, 3, 1, 2).contiguous()


def _check_image(classifier: Classifier, hip_image: np.ndarray) -> None:
    if not isinstance(hip_image, np.ndarray):
        raise TypeError(f"hip_image must be a numpy array, not {type(hip_image).__name__}")
    edge = classifier.card.input_size
    if hip_image.shape != (edge, edge):
        raise ValueError(
            f"hip_image of shape {hip_image.shape} does not match input size {edge} of {classifier.card.name}"
        )
    if hip_image.dtype != np.uint8:
        raise ValueError(f"hip_image must be uint8 (a letterboxed hip image), not {hip_image.dtype}")


def _check_class_index(classifier: Classifier, class_index: int) -> int:
    if isinstance(class_index, bool) or not isinstance(class_index, int | np.integer):
        raise TypeError(f"class_index must be an int, not {type(class_index).__name__}")
    count = len(classifier.card.classes)
    if not 0 <= class_index < count:
        raise ValueError(
            f"class_index {class_index} is outside 0..{count - 1} ({classifier.card.name} has {count} classes)"
        )
    return int(class_index)


def _eager(network: torch.nn.Module) -> torch.nn.Module:
    """The module under ``torch.compile``'s wrapper: hooks and a one-off backward run eagerly."""
    original = getattr(network, "_orig_mod", None)
    return original if isinstance(original, torch.nn.Module) else network


@contextmanager
def _graph_from(network: torch.nn.Module, layer: torch.nn.Module) -> Iterator[None]:
    """In this thread's forwards, record no autograd graph before ``layer`` and restart it from a leaf
    at ``layer``'s output: the layers before it save nothing for backward, and the backward only runs
    through the head (on CPU, tf_efficientnet_b4 at 380 px: about the cost of one forward, not three).

    Registered before GradCAM's own hooks, so theirs see (and hook) the new leaf. Forwards in other
    threads pass through untouched. An in-place operation on ``layer``'s output after ``layer`` raises
    instead of corrupting the CAM silently. ``torch.enable_grad()`` around the call restores the mode.
    """
    owner = threading.get_ident()

    def stop_graph(_module: torch.nn.Module, _args: object) -> None:
        if threading.get_ident() == owner:
            torch.set_grad_enabled(False)

    def start_graph(_module: torch.nn.Module, _inputs: object, output: object) -> object:
        if threading.get_ident() != owner:
            return None
        torch.set_grad_enabled(True)
        if isinstance(output, torch.Tensor) and output.is_floating_point():
            return output.detach().requires_grad_(True)
        return None

    handles = [network.register_forward_pre_hook(stop_graph), layer.register_forward_hook(start_graph)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _resolve(network: torch.nn.Module, path: str) -> torch.nn.Module | None:
    """``"layer4.-1"`` -> ``network.layer4[-1]``; None when any step is missing."""
    module: object = network
    for part in path.split("."):
        if part.lstrip("-").isdigit():
            if not isinstance(module, torch.nn.Sequential | torch.nn.ModuleList) or len(module) == 0:
                return None
            module = module[int(part)]
        else:
            module = getattr(module, part, None)
        if module is None:
            return None
    return module if isinstance(module, torch.nn.Module) else None


def _last_spatial_module(network: torch.nn.Module, architecture: str, input_size: int | None) -> torch.nn.Module:
    """The module that finished last with a (N, C, H, W) output, H or W > 1, in a forward of zeros."""
    if input_size is None:
        cfg = getattr(network, "pretrained_cfg", None) or {}
        input_size = int(cfg.get("input_size", (3, 224, 224))[-1])
    finished: list[tuple[torch.nn.Module, int, bool]] = []  # module, output ndim, spatial

    owner = threading.get_ident()

    def record(module: torch.nn.Module, _inputs: object, output: object) -> None:
        if isinstance(output, torch.Tensor) and threading.get_ident() == owner:
            spatial = output.ndim == 4 and (output.shape[-1] > 1 or output.shape[-2] > 1)
            finished.append((module, output.ndim, spatial))

    handles = [module.register_forward_hook(record) for module in network.modules() if module is not network]
    parameter = next(network.parameters(), None)
    dtype = parameter.dtype if parameter is not None and parameter.is_floating_point() else torch.float32
    device = parameter.device if parameter is not None else torch.device("cpu")
    was_training = network.training
    try:
        network.eval()
        with torch.no_grad():
            network(torch.zeros(1, 3, input_size, input_size, dtype=dtype, device=device))
    except Exception as exc:  # any failure of an unknown network means the same: no target found
        raise ValueError(
            f"architecture {architecture!r}: no Grad-CAM target layer (a forward at {input_size} px failed: {exc})"
        ) from exc
    finally:
        for handle in handles:
            handle.remove()
        network.train(was_training)
    last = max((i for i, (_, _, spatial) in enumerate(finished) if spatial), default=None)
    if last is None:
        raise ValueError(f"architecture {architecture!r}: no module gives a spatial (N, C, H, W) feature map")
    if any(ndim == 3 for _, ndim, _ in finished[last + 1 :]):
        raise ValueError(
            f"architecture {architecture!r}: token (N, L, C) outputs follow its last spatial map; "
            "Grad-CAM of a transformer needs a reshape transform, which this module does not provide"
        )
    return finished[last][0]


def _blend(hip_image: np.ndarray, heat: np.ndarray, size: int) -> np.ndarray:
    """RGB uint8 (size, size, 3): the grayscale image under a JET heat map of opacity proportional to ``heat``."""
    shrink = size < hip_image.shape[0]
    interpolation = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
    gray = cv2.resize(hip_image, (size, size), interpolation=interpolation).astype(np.float32)
    heat = np.clip(cv2.resize(heat, (size, size), interpolation=interpolation), 0.0, 1.0)
    colours = cv2.applyColorMap(np.rint(heat * 255.0).astype(np.uint8), cv2.COLORMAP_JET)[..., ::-1]  # BGR -> RGB
    opacity = (MAX_HEAT_OPACITY * heat)[..., None]
    rgb = gray[..., None] * (1.0 - opacity) + colours.astype(np.float32) * opacity
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def _encode_png(rgb: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb)).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()
