"""Task cards: the JSON beside an image task model's weights (predraft.models.imagetask), readable without torch.

A :class:`TaskCard` names the architecture, the input edge, each task's ordered classes, each task's softmax
temperature and its decision thresholds, the cross-validated figures they were fitted on, and the sha256 of
its weights, which :func:`load_task_card` checks. The service validates cards (``predraft serve``, a
worker's start, ``/readyz``) with this module alone; only the processes that run a model import torch.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from predraft.models.card import read_card

#: How a task network's backbone pools its last feature map into one vector (timm's global pool types): ``avg``
#: its mean; ``catavgmax`` its mean and its largest value per channel side by side (twice the features), so that
#: a head can answer from a small part of the image as well as from the whole.
GlobalPool = Literal["avg", "catavgmax"]
#: The same names as a tuple, for a CLI choice or a check (torch-free, as this module).
GLOBAL_POOLS: tuple[str, ...] = get_args(GlobalPool)

#: The bundled gate: body region and hardware present, trained on FracAtlas (see its card).
GATE_CARD = Path(__file__).resolve().parent / "gate" / "card.json"


class TaskCard(BaseModel):
    """What a task model's weights are, and the thresholds that turn its probabilities into decisions."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    version: str = Field(min_length=1)
    architecture: str = Field(min_length=1, description="timm model name of the shared backbone")
    global_pool: GlobalPool = Field("avg", description="how the backbone's last feature map is pooled (GlobalPool)")
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
    return read_card(TaskCard, "task card", card_path, verify_weights=verify_weights)


def write_task_card(card: TaskCard, card_path: Path) -> None:
    card_path.parent.mkdir(parents=True, exist_ok=True)
    card_path.write_text(json.dumps(card.model_dump(mode="json"), indent=2) + "\n")
