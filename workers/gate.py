"""The body-part gate and hardware check as the prepare task runs them: one forward pass per image.

A gate card (:class:`models.taskcard.TaskCard`) must have a ``region`` task with a ``hip`` class and a
``hardware`` task with a ``present`` class, each with the thresholds its training fitted. The whole image
(for the region) and each hip crop (for hardware) go through the network together; the hip crops are
resized from the classifier's input edge to the gate's (a classifier whose edge is smaller than the gate's,
as tests' 64 px ones, gives the hardware check blurrier hips than it was trained on).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image

from models.imagetask import TaskModel, load_task_model
from models.metal import MetalFinding
from models.scope import (
    GATE_TASK,
    HARDWARE_PRESENT,
    HARDWARE_TASK,
    GateReading,
    ScopeDecision,
    check_gate_card,
    decide_scope,
)
from workers.prepare import HipImage, PreparedInstance


@dataclass(frozen=True)
class GatedInstance:
    decision: ScopeDecision
    reading: GateReading | None
    hips: list[HipImage]  # each with the hardware check's finding as its ``metal``


class Gate:
    """A loaded gate card, checked to have the tasks and classes the service acts on."""

    def __init__(self, model: TaskModel) -> None:
        check_gate_card(model.card)
        tasks = model.card.tasks
        self.model = model
        self.size = model.card.input_size
        self.region_thresholds = {name: model.card.threshold(GATE_TASK, name) for name in tasks[GATE_TASK]}
        self.hardware_threshold = model.card.threshold(HARDWARE_TASK, HARDWARE_PRESENT)
        self._present = tasks[HARDWARE_TASK].index(HARDWARE_PRESENT)

    def apply(self, prepared: PreparedInstance) -> GatedInstance:
        """Scope of the prepared image, and its hips with the hardware check's findings."""
        if prepared.gate_pixels is None:  # tags outside the gate's skeleton are refused before this
            raise ValueError("the prepared instance has no gate image")
        batch = np.stack([prepared.gate_pixels, *[self._resize(hip.pixels) for hip in prepared.hips]])
        probabilities = self.model.predict(batch)
        regions = probabilities[GATE_TASK][0]
        reading = GateReading({name: float(p) for name, p in zip(self.model.card.tasks[GATE_TASK], regions,
                                                                  strict=True)}, self.region_thresholds)
        decision = decide_scope(prepared.labels, reading)
        hips = [replace(hip, metal=self._finding(float(row[self._present])))
                for hip, row in zip(prepared.hips, probabilities[HARDWARE_TASK][1:], strict=True)]
        return GatedInstance(decision, reading, hips)

    def _finding(self, probability: float) -> MetalFinding:
        present = probability >= self.hardware_threshold
        return MetalFinding(present=present, score=round(probability, 4), area_fraction=0.0,
                            reason=f"hardware check {probability:.2f} "
                                   f"({'at or above' if present else 'below'} {self.hardware_threshold:.2f})")

    def _resize(self, pixels: np.ndarray) -> np.ndarray:
        if pixels.shape[0] == self.size:
            return pixels
        return np.asarray(Image.fromarray(pixels).resize((self.size, self.size), Image.Resampling.BILINEAR))


_lock = threading.Lock()
_gates: dict[Path, Gate] = {}


def load_gate(card_path: Path) -> Gate:
    """The process's one gate for ``card_path`` (loaded once, shared by the worker's threads)."""
    with _lock:
        if card_path not in _gates:
            _gates[card_path] = Gate(load_task_model(card_path))
        return _gates[card_path]
