"""Image tasks: small timm networks that read a whole radiograph and answer one or more single-label questions.

The body-part gate is one: a shared backbone with a ``region`` head (hip, shoulder, hand, leg) and a
``hardware`` head (absent, present). Any site can train its own from a folder of images and a CSV
(:mod:`models.tasktraining`, ``predraft train-task``); a card like the hip classifier's describes the
result and the service loads whichever card its settings name.

A :class:`TaskCard` names the architecture, the input edge, each task's ordered classes, each task's
softmax temperature and its decision thresholds, the cross-validated figures they were fitted on, and the
sha256 of its weights. Images go in as uint8 (N, S, S) letterboxed grey levels, exactly what
:func:`models.pixels.letterbox` makes; probabilities come out per task.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import numpy as np
import timm
import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from safetensors.torch import load_file

from models.calibration import softmax
from models.card import ModelCardError, sha256_of

#: The bundled gate: body region and hardware present, trained on FracAtlas (see its card).
GATE_CARD = Path(__file__).resolve().parent / "gate" / "card.json"

_MEAN = (0.485, 0.456, 0.406)
_STD = (0.229, 0.224, 0.225)


class TaskCard(BaseModel):
    """What a task model's weights are, and the thresholds that turn its probabilities into decisions."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    version: str = Field(min_length=1)
    architecture: str = Field(min_length=1, description="timm model name of the shared backbone")
    input_size: int = Field(ge=16, le=2048, description="square input edge in pixels")
    tasks: dict[str, tuple[str, ...]] = Field(description="task name -> its classes, in the head's output order")
    temperatures: dict[str, float] = Field(default_factory=dict, description="softmax temperature per task")
    thresholds: dict[str, dict[str, float]] = Field(
        default_factory=dict,
        description="task -> class -> the probability at or above which the service acts on that class",
    )
    trained: bool = True
    intended_use: str = ""
    training_data: str = ""
    metrics: dict[str, Any] = Field(default_factory=dict, description="cross-validated figures with 95 % CIs")
    training: dict[str, Any] = Field(default_factory=dict, description="the training run's settings")
    weights: str = Field(description="weights file name, relative to the card")
    weights_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")

    @field_validator("tasks")
    @classmethod
    def _check_tasks(cls, value: dict[str, tuple[str, ...]]) -> dict[str, tuple[str, ...]]:
        if not value:
            raise ValueError("a task card needs at least one task")
        for task, classes in value.items():
            if not task.isidentifier():
                raise ValueError(f"task name {task!r} must be an identifier")
            if len(classes) < 2 or len(set(classes)) != len(classes):
                raise ValueError(f"task {task!r} needs at least two distinct classes, got {list(classes)}")
        return value

    @model_validator(mode="after")
    def _check_references(self) -> TaskCard:
        for task, temperature in self.temperatures.items():
            if task not in self.tasks:
                raise ValueError(f"temperatures names task {task!r}, which the card does not have")
            if temperature <= 0:
                raise ValueError(f"temperature of task {task!r} must be positive, got {temperature}")
        for task, by_class in self.thresholds.items():
            if task not in self.tasks:
                raise ValueError(f"thresholds names task {task!r}, which the card does not have")
            for name, threshold in by_class.items():
                if name not in self.tasks[task]:
                    raise ValueError(f"thresholds of task {task!r} name class {name!r}, which it does not have")
                if not 0 < threshold < 1:
                    raise ValueError(f"threshold {task}.{name} = {threshold} must lie in (0, 1)")
        return self

    @property
    def display_name(self) -> str:
        return f"{self.name} {self.version}"

    def threshold(self, task: str, name: str) -> float:
        """The probability at or above which ``task``'s class ``name`` is acted on (0.5 when the card is silent)."""
        if name not in self.tasks.get(task, ()):
            raise ValueError(f"{self.display_name} has no class {name!r} in task {task!r}")
        return self.thresholds.get(task, {}).get(name, 0.5)


def load_task_card(card_path: Path, *, verify_weights: bool = True) -> tuple[TaskCard, Path]:
    """Read and validate a task card; return it with its weights' absolute path (sha256 checked)."""
    card_path = Path(card_path)
    try:
        card = TaskCard.model_validate(json.loads(card_path.read_text()))
    except FileNotFoundError as exc:
        raise ModelCardError(f"task card {card_path} does not exist") from exc
    except (json.JSONDecodeError, ValueError) as exc:
        raise ModelCardError(f"task card {card_path} is invalid: {exc}") from exc
    weights_path = (card_path.parent / card.weights).resolve()
    if verify_weights:
        if not weights_path.is_file():
            raise ModelCardError(f"weights {weights_path} named by {card_path} do not exist")
        if sha256_of(weights_path) != card.weights_sha256:
            raise ModelCardError(f"weights {weights_path} are not the ones {card_path} describes (sha256 differs)")
    return card, weights_path


def write_task_card(card: TaskCard, card_path: Path) -> None:
    card_path.parent.mkdir(parents=True, exist_ok=True)
    card_path.write_text(json.dumps(card.model_dump(mode="json"), indent=2) + "\n")


class TaskNetwork(torch.nn.Module):
    """A timm backbone without its classifier (global-pooled features) and one linear head per task."""

    def __init__(self, architecture: str, tasks: dict[str, tuple[str, ...]]) -> None:
        super().__init__()
        if not timm.is_model(architecture):
            raise ValueError(f"architecture {architecture!r} is not a timm model name")
        self.backbone = timm.create_model(architecture, pretrained=False, num_classes=0, in_chans=3)
        self.heads = torch.nn.ModuleDict(
            {task: torch.nn.Linear(self.backbone.num_features, len(classes)) for task, classes in tasks.items()})

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
        self._lock = threading.Lock()

    def predict(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """Probabilities per task, (N, classes) float64, for uint8 images (N, S, S) at the card's input size."""
        images = np.asarray(images)
        if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (self.card.input_size,) * 2:
            raise ValueError(f"{self.card.display_name} takes uint8 images of shape (N, {self.card.input_size}, "
                             f"{self.card.input_size}), got {images.dtype} {images.shape}")
        if len(images) == 0:
            return {task: np.zeros((0, len(classes))) for task, classes in self.card.tasks.items()}
        with self._lock, torch.inference_mode():
            logits = self.network(to_network_input(torch.from_numpy(images)))
        return {task: softmax(value.double().numpy(), self.card.temperatures.get(task, 1.0))
                for task, value in logits.items()}


def load_task_model(card_path: Path) -> TaskModel:
    """The task model a card describes, its weights checked against the card's sha256."""
    card, weights_path = load_task_card(card_path)
    network = TaskNetwork(card.architecture, card.tasks)
    try:
        network.load_state_dict(load_file(str(weights_path)))
    except (RuntimeError, ValueError) as exc:
        raise ModelCardError(f"weights {weights_path} do not fit {card.architecture} with the tasks of "
                             f"{card_path}: {exc}") from exc
    return TaskModel(card, network)
