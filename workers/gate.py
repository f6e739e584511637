"""The body-part gate and hardware check as the prepare task runs them: one forward pass per image.

A gate card (:class:`models.taskcard.TaskCard`) must have a ``region`` task with a ``hip`` class and a
``hardware`` task with a ``present`` class, each with the thresholds its training fitted. The whole image
(for the region) and each hip crop (for hardware) go through the network together; the hip crops are
resized from the classifier's input edge to the gate's (a classifier whose edge is smaller than the gate's,
as tests' 64 px ones, gives the hardware check blurrier hips than it was trained on).

A card may also have a ``field`` task with a ``pelvis`` class: whether a hip image is an AP pelvis showing
both hips, one each side of its midline. When the tags name neither view nor side (``prepared.halves``) and
the image is in scope, p(pelvis) at or above the card's threshold makes the image an AP pelvis: its hips are
the two halves, the patient's right on the image's left as AP films are shown (no burned-in R/L marker is
read: the scope note says so, and the instance is flagged), each with its own hardware check. Below it, the
image stays one hip of unlabelled view and unstated side.
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
    FIELD_PELVIS,
    FIELD_TASK,
    GATE_TASK,
    HARDWARE_PRESENT,
    HARDWARE_TASK,
    GateReading,
    ScopeDecision,
    ScopeFlag,
    check_gate_card,
    decide_scope,
)
from models.taxonomy import Side, View
from models.views import ViewResult
from workers.prepare import HipImage, PreparedInstance

#: How an image read as an AP pelvis from its pixels is labelled (``view_rule``, ``side_rule``).
VIEW_FROM_IMAGE_RULE = "image (field head)"
SIDES_BY_CONVENTION_RULE = "AP convention (patient's right on the image's left; no R/L marker read)"


@dataclass(frozen=True)
class GatedInstance:
    decision: ScopeDecision
    reading: GateReading | None
    hips: list[HipImage]  # each with the hardware check's finding as its ``metal``
    labels: ViewResult  # the tags' view and sides, or those the image gave (an untagged AP pelvis)
    pelvis_probability: float | None = None  # the field head's p(pelvis), when it was asked


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
        self.reads_field = FIELD_PELVIS in tasks.get(FIELD_TASK, ())
        self.pelvis_threshold = model.card.threshold(FIELD_TASK, FIELD_PELVIS) if self.reads_field else None

    def apply(self, prepared: PreparedInstance) -> GatedInstance:
        """Scope of the prepared image, its view where the image decides it, and its hips with the hardware
        check's findings."""
        if prepared.gate_pixels is None:  # tags outside the gate's skeleton are refused before this
            raise ValueError("the prepared instance has no gate image")
        halves = list(prepared.halves) if self.reads_field else []
        crops = [*prepared.hips, *halves]
        probabilities = self.model.predict(np.stack([prepared.gate_pixels, *[self._resize(c.pixels) for c in crops]]))
        regions = probabilities[GATE_TASK][0]
        reading = GateReading({name: float(p) for name, p in zip(self.model.card.tasks[GATE_TASK], regions,
                                                                  strict=True)}, self.region_thresholds)
        decision = decide_scope(prepared.labels, reading)
        checked = [replace(crop, metal=self._finding(float(row[self._present])))
                   for crop, row in zip(crops, probabilities[HARDWARE_TASK][1:], strict=True)]
        hips, labels, pelvis = checked[:len(prepared.hips)], prepared.labels, None
        if halves:
            pelvis = float(probabilities[FIELD_TASK][0][self.model.card.tasks[FIELD_TASK].index(FIELD_PELVIS)])
            if decision.in_scope and pelvis >= self.pelvis_threshold:
                hips = checked[len(prepared.hips):]
                labels = replace(labels, view=View.AP_PELVIS, view_rule=VIEW_FROM_IMAGE_RULE,
                                 sides=(Side.RIGHT, Side.LEFT), side_rule=SIDES_BY_CONVENTION_RULE)
                note = (f"the image reads as an AP pelvis ({pelvis:.2f}): two hips, the patient's right taken to "
                        "be on the image's left; no R/L marker was read, check the sides")
                decision = replace(decision, reason=f"{decision.reason}; {note}" if decision.reason else note,
                                   flag=decision.flag or ScopeFlag.VIEW_FROM_IMAGE)
        return GatedInstance(decision, reading, hips, labels, pelvis)

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
