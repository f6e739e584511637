"""Model cards: the JSON file beside a safetensors weights file that says what the weights are.

A card names the timm architecture, input size, normalization, the ordered class list, the views it
accepts, its version, whether it was trained at all, its decision thresholds (one global, optionally one per
class) and softmax temperature, and the sha256 of its weights, which :func:`load_card` checks.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Protocol, Self, TypeVar

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from predraft.models.taxonomy import View

#: The bundled demo model: a small network trained on phantoms only (see README, "The demo model").
DEMO_MODEL_CARD = Path(__file__).resolve().parent / "packs" / "hip" / "card.json"


class _WeightedCard(Protocol):
    """What :func:`read_card` reads: a (pydantic) card that names its weights and their sha256."""

    @property
    def weights(self) -> str: ...

    @property
    def weights_sha256(self) -> str: ...

    @classmethod
    def model_validate(cls, obj: Any) -> Self: ...


_Card = TypeVar("_Card", bound=_WeightedCard)


class ModelCardError(ValueError):
    """A model card that cannot be used: unreadable, invalid, or not matching its weights."""


class ModelCard(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    version: str = Field(min_length=1)
    architecture: str = Field(min_length=1, description="timm model name")
    input_size: int = Field(ge=16, le=2048, description="square input edge in pixels")
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    classes: tuple[str, ...] = Field(description="the model's output classes, in order: its pack's class names")
    accepted_views: tuple[View, ...] = (View.AP_PELVIS, View.AP_HIP, View.FROG_LEG, View.CROSS_TABLE_LATERAL)
    trained: bool = Field(description="False for weights that were never trained: every draft must say so")
    synthetic_demo: bool = Field(False, description="True for the demo model trained on phantoms")
    training_data: str = ""
    threshold: float = Field(0.5, gt=0, lt=1, description="top-class probability under which a hip is indeterminate")
    class_thresholds: dict[str, float] = Field(
        default_factory=dict,
        description="per-class thresholds for the top class; a class not named here uses `threshold`",
    )
    temperature: float = Field(1.0, gt=0, description="softmax temperature fitted on validation data")
    validation_metrics: dict[str, float | int | None] = Field(
        default_factory=dict, description="accuracy, kappa, NLL and ECE on the validation set, at the end of training"
    )
    training: dict[str, Any] = Field(default_factory=dict, description="the training run's settings")
    weights: str = Field(description="weights file name, relative to the card")
    weights_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")

    @field_validator("classes")
    @classmethod
    def _check_classes(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if len(set(value)) != len(value) or len(value) < 2 or not all(value):
            raise ValueError(f"classes {list(value)} must be at least two distinct class names")
        return value

    @field_validator("class_thresholds")
    @classmethod
    def _check_class_thresholds(cls, value: dict[str, float]) -> dict[str, float]:
        for name, threshold in value.items():
            if not 0 < threshold < 1:
                raise ValueError(f"class_thresholds[{name!r}] = {threshold} must lie in (0, 1)")
        return value

    @model_validator(mode="after")
    def _check_threshold_classes(self) -> ModelCard:
        unknown = [name for name in self.class_thresholds if name not in self.classes]
        if unknown:
            raise ValueError(f"class_thresholds names {unknown}, which are not among the card's classes")
        return self

    @property
    def display_name(self) -> str:
        return f"{self.name} {self.version}"

    def threshold_for(self, name: str) -> float:
        """The decision threshold for a side whose top class is ``name``: its own, else the global one."""
        if name not in self.classes:
            raise ValueError(f"class {str(name)!r} is not among the classes of {self.display_name}")
        return self.class_thresholds.get(name, self.threshold)

    @property
    def thresholds(self) -> dict[str, float]:
        """Every class of the card with its decision threshold, in class order."""
        return {name: self.threshold_for(name) for name in self.classes}


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_card(card_path: Path, *, verify_weights: bool = True) -> tuple[ModelCard, Path]:
    """Read and validate a card; return it with the absolute path of its weights.

    Raises :class:`ModelCardError` when the card is missing or invalid, or when the weights' sha256
    differs from the card's.
    """
    return read_card(ModelCard, "model card", card_path, verify_weights=verify_weights)


def read_card(kind: type[_Card], name: str, card_path: Path, *, verify_weights: bool) -> tuple[_Card, Path]:
    """A card of ``kind`` (any pydantic card with ``weights`` and ``weights_sha256``) read, validated and, with
    ``verify_weights``, checked against its weights' sha256; ModelCardError naming it ``name`` otherwise."""
    card_path = Path(card_path)
    try:
        card = kind.model_validate(json.loads(card_path.read_text()))
    except FileNotFoundError as exc:
        raise ModelCardError(f"{name} {card_path} does not exist") from exc
    except (json.JSONDecodeError, ValueError) as exc:
        raise ModelCardError(f"{name} {card_path} is invalid: {exc}") from exc
    weights_path = (card_path.parent / card.weights).resolve()
    if verify_weights:
        if not weights_path.is_file():
            raise ModelCardError(f"weights {weights_path} named by {card_path} do not exist")
        actual = sha256_of(weights_path)
        if actual != card.weights_sha256:
            raise ModelCardError(
                f"weights {weights_path} have sha256 {actual}, but the card {card_path} expects sha256 "
                f"{card.weights_sha256}: these are not the weights the card describes"
            )
    return card, weights_path


def write_card(card: ModelCard, card_path: Path) -> None:
    card_path.parent.mkdir(parents=True, exist_ok=True)
    card_path.write_text(json.dumps(card.model_dump(mode="json"), indent=2) + "\n")
