"""timm classifiers from model cards and safetensors weights. Nothing is ever downloaded.

Any timm classifier works by name (the paper's ``tf_efficientnet_b4`` at 380 px and ``dm_nfnet_f3`` at
320 px are tested). For training, :func:`create_network` can start from a local timm checkpoint
(ImageNet weights saved beforehand), keeping the backbone and initialising a fresh head.

A :class:`Classifier` runs in float32 on CPU. On CUDA it runs under bf16 autocast on channels_last
tensors, optionally through ``torch.compile`` in its default mode (``max-autotune`` crashed on an H100,
see docs/FACTS.md). A batch that runs out of GPU memory is split in halves, down to single images, and
the smaller size is kept as the classifier's ``batch_limit`` for later batches.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import cast

import numpy as np
import timm
import torch
from safetensors.torch import load_file, save_file
from timm.models import load_state_dict

from predraft.models.card import ModelCard, load_card, sha256_of, write_card
from predraft.models.taxonomy import CLASS_ORDER

log = logging.getLogger(__name__)


def create_network(architecture: str, num_classes: int, init_weights: Path | None = None) -> torch.nn.Module:
    """A timm classifier with ``num_classes`` outputs, built with ``pretrained=False`` (no hub access).

    Without ``init_weights`` every weight is random. With it, the backbone comes from that local timm
    checkpoint (a ``.safetensors`` file or a PyTorch state dict, for example ImageNet weights saved
    beforehand) and the classifier head keeps its fresh random initialisation: see :func:`load_backbone`.
    """
    if not isinstance(architecture, str) or not timm.is_model(architecture):
        raise ValueError(f"architecture {architecture!r} is not a timm model name")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int):
        raise TypeError(f"num_classes must be an int, not {type(num_classes).__name__}")
    if num_classes < 1:
        raise ValueError(f"num_classes {num_classes} must be at least 1")
    network = timm.create_model(architecture, pretrained=False, num_classes=num_classes, in_chans=3)
    if init_weights is not None:
        load_backbone(network, Path(init_weights))
    return network


#: The prefix of the backbone's weights in a task network's own weights file (predraft.models.imagetask: a gate
#: card's, or any ``predraft train-task`` run's).
TASK_BACKBONE_PREFIX = "backbone."


def backbone_weights(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` as a plain network's weights: a task network's backbone weights without their prefix (its heads
    left out); any other state as it is."""
    if not any(key.startswith(TASK_BACKBONE_PREFIX) for key in state):
        return state
    return {
        key.removeprefix(TASK_BACKBONE_PREFIX): value
        for key, value in state.items()
        if key.startswith(TASK_BACKBONE_PREFIX)
    }


_GetClassifier = Callable[[], torch.nn.Module | tuple[torch.nn.Module, ...]]


def classifier_head_keys(network: torch.nn.Module) -> set[str]:
    """The state-dict keys of a timm network's classifier head (``classifier.*``, ``head.fc.*``, ...)."""
    # timm's get_classifier() gives the head module (a tuple of them for some networks); Module types it loosely.
    heads = cast(_GetClassifier, network.get_classifier)() if hasattr(network, "get_classifier") else ()
    heads = heads if isinstance(heads, tuple) else (heads,)
    names = [name for name, module in network.named_modules() if any(module is head for head in heads)]
    if not names:
        configured = getattr(network, "pretrained_cfg", {}).get("classifier") or ()
        names = [configured] if isinstance(configured, str) else list(configured)
    keys = {key for key in network.state_dict() for name in names if name and key.startswith(name + ".")}
    if not keys:
        raise ValueError(f"cannot tell the classifier head of {type(network).__name__}")
    return keys


def load_backbone(network: torch.nn.Module, init_weights: Path) -> set[str]:
    """Load every weight but the classifier head from a local timm checkpoint into ``network`` (or the backbone of
    a task network's weights, as the gate's: predraft.models.imagetask).

    The file is read with timm's own loader (safetensors, or ``torch.load(weights_only=True)``; EMA
    weights preferred; ``module.`` prefixes removed); nothing touches the network. The checkpoint's head
    (ImageNet's 1,000 classes, say) is dropped and ``network``'s head keeps its initialisation. Every
    other weight must be present with the right shape, or a :class:`ValueError` says which are not.
    Returns the head keys that were left as they were.
    """
    init_weights = Path(init_weights)
    if not init_weights.is_file():
        raise FileNotFoundError(f"init_weights {init_weights} does not exist")
    try:
        state = load_state_dict(str(init_weights), use_ema=True)
    except Exception as exc:  # pickle, safetensors and zip errors alike: say which file
        raise ValueError(f"init_weights {init_weights} is not a readable checkpoint: {exc}") from exc
    state = backbone_weights(state)
    head = classifier_head_keys(network)
    own = network.state_dict()
    backbone = {key: value for key, value in state.items() if key not in head}
    missing = [
        key for key in own if key not in head and key not in backbone and not key.endswith("num_batches_tracked")
    ]
    unexpected = [key for key in backbone if key not in own]
    mismatched = [
        f"{key} {tuple(backbone[key].shape)} != {tuple(own[key].shape)}"
        for key in backbone
        if key in own and backbone[key].shape != own[key].shape
    ]
    if missing or unexpected or mismatched:
        problems = [
            f"{label} {len(keys)} (first: {', '.join(keys[:3])})"
            for label, keys in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", mismatched))
            if keys
        ]
        raise ValueError(f"init_weights {init_weights} do not fit {type(network).__name__}: {'; '.join(problems)}")
    network.load_state_dict(backbone, strict=False)
    return head


def _is_out_of_memory(exc: BaseException) -> bool:
    return isinstance(exc, torch.cuda.OutOfMemoryError) or (
        isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()
    )


class Classifier:
    """A loaded network with its card: turns letterboxed uint8 hip images into probabilities.

    ``network`` must already be in eval mode on ``device`` (see :func:`load_classifier`). On CUDA the
    network is switched to channels_last and, with ``compile=True``, wrapped in ``torch.compile``
    (default mode); on CPU ``compile`` is ignored. :meth:`predict` may be called from several threads;
    a compiled network is best driven from one (the worker's :class:`predraft.workers.batcher.MicroBatcher`), and
    sees varying batch sizes, which torch.compile handles by marking the batch dimension dynamic.
    """

    def __init__(
        self, card: ModelCard, network: torch.nn.Module, device: torch.device | str = "cpu", *, compile: bool = False
    ) -> None:
        if not isinstance(card, ModelCard):
            raise TypeError(f"card must be a ModelCard, not {type(card).__name__}")
        if not isinstance(network, torch.nn.Module):
            raise TypeError(f"network must be a torch.nn.Module, not {type(network).__name__}")
        self.card = card
        self.network = network
        self.device = torch.device(device)
        self.accelerated = self.device.type == "cuda"
        #: Largest batch run at once; None until an out-of-memory error lowered it.
        self.batch_limit: int | None = None
        self._limit_lock = threading.Lock()
        std = torch.tensor(card.std, dtype=torch.float32, device=self.device)
        self._scale = 1.0 / (255.0 * std)  # (x / 255 - mean) / std == x * scale + shift, per channel
        self._shift = -torch.tensor(card.mean, dtype=torch.float32, device=self.device) / std
        self._forward: Callable[[torch.Tensor], torch.Tensor] = network
        if self.accelerated:
            network.to(memory_format=torch.channels_last)
            if compile:
                self._forward = torch.compile(network)
        elif compile:
            log.info("torch.compile is used on CUDA only; %s runs uncompiled on %s", card.display_name, self.device)
        self.compiled = self._forward is not network

    def __repr__(self) -> str:
        return f"Classifier({self.card.display_name!r}, device={str(self.device)!r}, compiled={self.compiled})"

    def predict(self, images: np.ndarray) -> np.ndarray:
        """``images``: uint8 array (N, S, S) with S the card's input size. Returns (N, classes) float32.

        Runs the images in batches of at most :attr:`batch_limit`; on out-of-memory the failing batch is
        halved and retried (down to one image, whose out-of-memory error is raised).
        """
        self._check(images)
        total = len(images)
        out = np.empty((total, len(self.card.classes)), dtype=np.float32)
        start = 0
        while start < total:
            step = min(total - start, self.batch_limit or total)
            try:
                out[start : start + step] = self._probabilities(images[start : start + step])
            except RuntimeError as exc:
                if step == 1 or not _is_out_of_memory(exc):
                    raise
            else:
                start += step
                continue
            # Out of memory: retry with half the batch, outside the except block so that the failed
            # batch's tensors, held by the traceback, are freed first.
            self._lower_batch_limit(step // 2)
        return out

    def preprocess(self, images: np.ndarray) -> torch.Tensor:
        """uint8 (N, S, S) images -> the normalised float32 (N, 3, S, S) batch on the device.

        Only the uint8 pixels travel to the device (four times less than float32); the batch is
        channels_last on CUDA and contiguous on CPU.
        """
        self._check(images)
        pixels = torch.from_numpy(np.ascontiguousarray(images) if images.flags.writeable else images.copy())
        pixels = pixels.to(self.device, non_blocking=True)
        # (N, S, S, 1) * (3,) -> (N, S, S, 3), seen as (N, 3, S, S): channels_last without a copy.
        batch = (pixels.unsqueeze(-1).to(torch.float32) * self._scale + self._shift).permute(0, 3, 1, 2)
        return batch if self.accelerated else batch.contiguous()

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        """Logits of a preprocessed batch: under bf16 autocast on CUDA (compiled if asked), float32 on CPU.

        Call it under ``torch.inference_mode()``.
        """
        if self.accelerated:
            with torch.autocast(device_type="cuda", dtype=torch.bfloat16):
                return self._forward(batch)
        return self._forward(batch)

    def _check(self, images: np.ndarray) -> None:
        if not isinstance(images, np.ndarray):
            raise TypeError(f"images must be a numpy array, not {type(images).__name__}")
        size = self.card.input_size
        if images.ndim != 3 or images.shape[1:] != (size, size):
            raise ValueError(f"images of shape {images.shape} do not match input size {size} of {self.card.name}")
        if images.dtype != np.uint8:
            raise ValueError(f"images must be uint8, not {images.dtype}")

    def _lower_batch_limit(self, limit: int) -> None:
        with self._limit_lock:
            if self.batch_limit is None or limit < self.batch_limit:
                self.batch_limit = limit
                log.warning("%s ran out of memory: batches of at most %d from now on", self.card.display_name, limit)
        if self.accelerated:
            torch.cuda.empty_cache()

    @torch.inference_mode()
    def _probabilities(self, images: np.ndarray) -> np.ndarray:
        logits = self.forward(self.preprocess(images))
        return torch.softmax(logits.float() / self.card.temperature, dim=1).cpu().numpy()


def load_classifier(card_path: Path, device: str = "cpu", *, compile: bool = False) -> Classifier:
    """Load the card, check the weights' sha256, build the network and load its weights onto ``device``."""
    card, weights_path = load_card(card_path)
    torch_device = torch.device(device)
    if torch_device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r} was asked for, but torch sees no CUDA device here")
    network = _network_with_weights(card.architecture, len(card.classes), load_file(str(weights_path)))
    network.eval().to(torch_device)
    return Classifier(card, network, torch_device, compile=compile)


def _network_with_weights(architecture: str, num_classes: int, state: dict[str, torch.Tensor]) -> torch.nn.Module:
    """The network holding ``state`` (strict: every key, every shape).

    Built on the meta device and given the loaded tensors, so the random initialisation that the
    weights would overwrite is skipped (seconds for dm_nfnet_f3). Networks with buffers that are not
    in the state dict (computed at construction: swin's attention masks, for example) are built as usual.
    """
    try:
        with torch.device("meta"):
            network = create_network(architecture, num_classes)
    except ValueError:
        raise
    except Exception:  # a network that cannot be built without real tensors
        network = None
    if network is not None:
        own = network.state_dict()
        if all(name in own for name, _ in network.named_buffers()):
            state = {key: value.to(own[key].dtype) if key in own else value for key, value in state.items()}
            network.load_state_dict(state, strict=True, assign=True)
            return network
    network = create_network(architecture, num_classes)
    network.load_state_dict(state, strict=True)
    return network


def write_untrained_model(
    out_dir: Path,
    *,
    architecture: str = "mobilenetv3_small_100",
    input_size: int = 224,
    seed: int = 0,
    name: str = "predraft-untrained",
    classes: Sequence[str] = CLASS_ORDER,
) -> Path:
    """Write random-initialised weights and their card: a stand-in until trained weights exist.

    The card says ``trained: false``; every draft made with it says the model is untrained. ``classes`` are its
    pack's (default the hip's). Returns the card's path.
    """
    torch.manual_seed(seed)
    network = create_network(architecture, len(classes))
    out_dir.mkdir(parents=True, exist_ok=True)
    weights_path = out_dir / "weights.safetensors"
    state = {key: value.contiguous() for key, value in network.state_dict().items()}
    save_file(state, str(weights_path))
    card = ModelCard(
        name=name,
        version=f"0.0.0-untrained-seed{seed}",
        architecture=architecture,
        input_size=input_size,
        classes=tuple(str(name) for name in classes),
        trained=False,
        training_data="none: random initialisation, made at build time",
        weights=weights_path.name,
        weights_sha256=sha256_of(weights_path),
    )
    card_path = out_dir / "card.json"
    write_card(card, card_path)
    return card_path
