"""Image tasks: small timm networks that read a whole radiograph and answer one or more single-label questions.

The body-part gate is one: a shared backbone with a ``region`` head (hip, shoulder, hand, leg) and a
``hardware`` head (absent, present). Any site can train its own from a folder of images and a CSV
(:mod:`predraft.models.tasktraining`, ``predraft train-task``); a card like the hip classifier's describes the
result and the service loads whichever card its settings name.

Its card is a :class:`predraft.models.taskcard.TaskCard`. Images go in as uint8 (N, S, S) letterboxed grey levels,
exactly what :func:`predraft.models.pixels.letterbox` makes; probabilities come out per task.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import cast

import numpy as np
import timm
import torch
from safetensors.torch import load_file
from timm.layers.adaptive_avgmax_pool import adaptive_pool_feat_mult
from torch.nn.utils.fusion import fuse_conv_bn_eval

from predraft.models.calibration import softmax
from predraft.models.card import ModelCardError
from predraft.models.taskcard import GLOBAL_POOLS, TaskCard, load_task_card

_MEAN = (0.485, 0.456, 0.406)
_STD = (0.229, 0.224, 0.225)


class TaskNetwork(torch.nn.Module):
    """A timm backbone without its classifier (global-pooled features) and one linear head per task."""

    def __init__(self, architecture: str, tasks: dict[str, tuple[str, ...]], global_pool: str = "avg") -> None:
        super().__init__()
        if not timm.is_model(architecture):
            raise ValueError(f"architecture {architecture!r} is not a timm model name")
        if global_pool not in GLOBAL_POOLS:
            raise ValueError(f"global pool {global_pool!r} is not one of {GLOBAL_POOLS}")
        self.backbone = timm.create_model(
            architecture, pretrained=False, num_classes=0, in_chans=3, global_pool=global_pool
        )
        # Every timm model sets num_features (Module types it loosely); catavgmax doubles what the heads read.
        num_features = cast(int, self.backbone.num_features) * adaptive_pool_feat_mult(global_pool)
        self.heads = torch.nn.ModuleDict(
            {task: torch.nn.Linear(num_features, len(classes)) for task, classes in tasks.items()}
        )

    def forward(self, batch: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.backbone(batch)
        return {task: head(features) for task, head in self.heads.items()}


def to_network_input(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 (N, S, S) or (N, 1, S, S) grey levels -> float (N, 3, S, S), normalised as ImageNet's."""
    if pixels.dim() == 3:
        pixels = pixels.unsqueeze(1)
    mean = torch.tensor(_MEAN, device=pixels.device).view(1, 3, 1, 1)
    std = torch.tensor(_STD, device=pixels.device).view(1, 3, 1, 1)
    return (pixels.float().expand(-1, 3, -1, -1) / 255.0 - mean) / std


class TaskModel:
    """A loaded task card and its network, on the CPU, in eval mode. Safe to share between threads."""

    def __init__(self, card: TaskCard, network: TaskNetwork) -> None:
        if set(network.heads) != set(card.tasks):
            raise ValueError(f"network heads {sorted(network.heads)} differ from the card's tasks {sorted(card.tasks)}")
        self.card = card
        self.network = network.eval()
        #: Whether the network's weights, and so its inputs, are channels_last (:meth:`for_inference`).
        self.channels_last = False
        self._lock = threading.Lock()

    def for_inference(self) -> TaskModel:
        """Itself, made faster for reading only, in place: each batch norm folded into its convolution
        (:func:`fold_batch_norms`) and the weights and inputs channels_last, which a CPU's convolutions run
        a sixth to a quarter faster (the gate, regnetx_002 at 160 px, one torch thread, alternated: 7.7 against
        9.1 ms for one image, 15.4-16.9 against 21.0-22.3 for three; the same outputs to 1e-6). Its state dict
        no longer fits its card's weights file. (The hip classifier stays contiguous on a CPU: channels_last
        made the demo model slower there for six images at once, 50 against 38 ms.)"""
        fold_batch_norms(self.network)
        self.network.to(memory_format=torch.channels_last)
        self.channels_last = True
        return self

    def predict(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """Probabilities per task, (N, classes) float64, for uint8 images (N, S, S) at the card's input size."""
        images = np.asarray(images)
        if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (self.card.input_size,) * 2:
            raise ValueError(
                f"{self.card.display_name} takes uint8 images of shape (N, {self.card.input_size}, "
                f"{self.card.input_size}), got {images.dtype} {images.shape}"
            )
        if len(images) == 0:
            return {task: np.zeros((0, len(classes))) for task, classes in self.card.tasks.items()}
        with self._lock, torch.inference_mode():
            batch = to_network_input(torch.from_numpy(images))
            if self.channels_last:
                batch = batch.contiguous(memory_format=torch.channels_last)
            logits = self.network(batch)
        return {
            task: softmax(value.double().numpy(), self.card.temperatures.get(task, 1.0))
            for task, value in logits.items()
        }


def fold_batch_norms(network: torch.nn.Module) -> int:
    """Fold each batch norm that directly follows a convolution into that convolution, in place; returns how many.

    The pairs are timm's ``ConvNormAct`` blocks (``conv`` then ``bn``, as every regnet is built); timm's
    ``BatchNormAct2d`` keeps its dropout and activation. The network computes the same function (to float
    rounding) with one layer less per block: about a tenth faster on a CPU. For inference only: the network must
    be in eval mode, and its state dict no longer fits its card's weights file.
    """
    if network.training:
        raise ValueError("fold batch norms of a network in eval mode only")
    folded = 0
    for module in network.modules():
        conv, norm = getattr(module, "conv", None), getattr(module, "bn", None)
        if isinstance(conv, torch.nn.Conv2d) and isinstance(norm, torch.nn.BatchNorm2d):
            module.conv = fuse_conv_bn_eval(conv, norm)
            module.bn = torch.nn.Sequential(
                getattr(norm, "drop", torch.nn.Identity()), getattr(norm, "act", torch.nn.Identity())
            )
            folded += 1
    return folded


def load_task_model(card_path: Path, *, inference_only: bool = False) -> TaskModel:
    """The task model a card describes, its weights checked against the card's sha256.

    ``inference_only``: made faster for reading only (:meth:`TaskModel.for_inference`: batch norms folded, channels
    last), as the service runs it; leave it off to train or save the network further (``predraft.models.taskhead``).
    """
    card, weights_path = load_task_card(card_path)
    network = TaskNetwork(card.architecture, card.tasks, card.global_pool)
    try:
        network.load_state_dict(load_file(str(weights_path)))
    except (RuntimeError, ValueError) as exc:
        raise ModelCardError(
            f"weights {weights_path} do not fit {card.architecture} with the tasks of {card_path}: {exc}"
        ) from exc
    model = TaskModel(card, network)
    return model.for_inference() if inference_only else model
