"""timm classifiers from model cards and safetensors weights. Nothing is ever downloaded."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import timm
import torch
from safetensors.torch import load_file, save_file

from models.card import ModelCard, load_card, sha256_of, write_card
from models.taxonomy import CLASS_ORDER, HardwareClass


def create_network(architecture: str, num_classes: int) -> torch.nn.Module:
    """A timm classifier with random weights (``pretrained=False``: no hub access)."""
    if architecture not in timm.list_models():
        raise ValueError(f"architecture {architecture!r} is not a timm model name")
    return timm.create_model(architecture, pretrained=False, num_classes=num_classes, in_chans=3)


@dataclass(frozen=True)
class Classifier:
    """A loaded network with its card: turns letterboxed uint8 hip images into probabilities."""

    card: ModelCard
    network: torch.nn.Module
    device: torch.device

    @torch.inference_mode()
    def predict(self, images: np.ndarray) -> np.ndarray:
        """``images``: uint8 array (N, S, S) with S the card's input size. Returns (N, classes) float."""
        if images.ndim != 3 or images.shape[1:] != (self.card.input_size, self.card.input_size):
            raise ValueError(
                f"images of shape {images.shape} do not match input size {self.card.input_size} of {self.card.name}"
            )
        batch = torch.from_numpy(images).to(self.device, torch.float32).div_(255.0)
        batch = batch.unsqueeze(1).expand(-1, 3, -1, -1)
        mean = torch.tensor(self.card.mean, device=self.device).view(1, 3, 1, 1)
        std = torch.tensor(self.card.std, device=self.device).view(1, 3, 1, 1)
        logits = self.network((batch - mean) / std)
        return torch.softmax(logits.float() / self.card.temperature, dim=1).cpu().numpy()


def load_classifier(card_path: Path, device: str = "cpu") -> Classifier:
    """Load the card, check the weights' sha256, build the network and load its weights."""
    card, weights_path = load_card(card_path)
    network = create_network(card.architecture, len(card.classes))
    state = load_file(str(weights_path))
    network.load_state_dict(state, strict=True)
    torch_device = torch.device(device)
    network.eval().to(torch_device)
    return Classifier(card=card, network=network, device=torch_device)


def write_untrained_model(
    out_dir: Path,
    *,
    architecture: str = "mobilenetv3_small_100",
    input_size: int = 224,
    seed: int = 0,
    name: str = "predraft-untrained",
) -> Path:
    """Write random-initialised weights and their card: a stand-in until trained weights exist.

    The card says ``trained: false``; every draft made with it says the model is untrained.
    Returns the card's path.
    """
    torch.manual_seed(seed)
    network = create_network(architecture, len(CLASS_ORDER))
    out_dir.mkdir(parents=True, exist_ok=True)
    weights_path = out_dir / "weights.safetensors"
    state = {key: value.contiguous() for key, value in network.state_dict().items()}
    save_file(state, str(weights_path))
    card = ModelCard(
        name=name,
        version=f"0.0.0-untrained-seed{seed}",
        architecture=architecture,
        input_size=input_size,
        classes=tuple(HardwareClass),
        trained=False,
        training_data="none: random initialisation, made at build time",
        weights=weights_path.name,
        weights_sha256=sha256_of(weights_path),
    )
    card_path = out_dir / "card.json"
    write_card(card, card_path)
    return card_path
