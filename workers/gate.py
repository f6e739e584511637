"""The body-part gate and hardware check as the prepare task runs them.

A gate card (:class:`predraft.models.taskcard.TaskCard`) must have a ``region`` task with a ``hip`` class and a
``hardware`` task with a ``present`` class, each with the thresholds its training fitted. The whole image
(for the region) and each hip crop the tags gave (for hardware) go through the network together, in one
pass; the hip crops are resized from the classifier's input edge to the gate's (a classifier whose edge is
smaller than the gate's, as tests' 64 px ones, gives the hardware check blurrier hips than it was trained
on). An image whose one hip is the whole film (any view but an AP pelvis) goes through once: the hardware
check of that hip is the hardware head's reading of the gate's own image, the framing its whole-image
figures were measured on, and not a second, resampled copy of the same film.

A card may also have a ``field`` task with a ``pelvis`` class: whether a hip image is an AP pelvis showing
both hips, one each side of its midline. When the tags name neither view nor side (``prepared.halves``) and
the image is in scope, p(pelvis) at or above the card's threshold makes the image an AP pelvis: its hips are
the two halves, the patient's right on the image's left as AP films are shown (no burned-in R/L marker is
read: the scope note says so, and the instance is flagged), each with its own hardware check. The halves go
through the network in the same pass as the whole image whenever prepare made them (the tags name no view nor
side), so that an image split in two costs one pass, not two; one that is not split pays for two readings it
does not use. Below the threshold, the image stays one hip of unlabelled view and unstated side.
"""

from __future__ import annotations

import threading
from collections.abc import Collection
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from predraft.models.imagetask import TaskModel, load_task_model
from predraft.models.metal import MetalFinding
from predraft.models.pixels import resize_square
from predraft.models.prepare import HipImage, PreparedInstance
from predraft.models.scope import (
    FIELD_PELVIS,
    FIELD_TASK,
    GATE_CLASS,
    GATE_TASK,
    HARDWARE_PRESENT,
    HARDWARE_TASK,
    GateReading,
    ScopeDecision,
    ScopeFlag,
    check_gate_card,
    decide_scope,
)
from predraft.models.taxonomy import Side, View
from predraft.models.views import ViewResult

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

    def apply(
        self,
        prepared: PreparedInstance,
        readable: Collection[str] = (GATE_CLASS,),
        gate_alone: Collection[str] | None = None,
    ) -> GatedInstance:
        """Scope of the prepared image and the region whose pack reads it (among ``readable``, the regions the
        installed packs read; ``gate_alone``: those the gate may choose without the tags), its view where the image
        decides it, and its sides with the hardware check's
        findings."""
        if prepared.gate_pixels is None:  # tags outside the gate's skeleton are refused before this
            raise ValueError("the prepared instance has no gate image")
        whole = prepared.one_whole_hip
        crops = [] if whole else [self._resize(hip.pixels) for hip in prepared.hips]
        halves = list(prepared.halves) if self.reads_field else []
        # One pass: the whole image, the tags' hip crops, and the halves the field head may choose.
        every = self.model.predict(
            np.stack([prepared.gate_pixels, *crops, *(self._resize(hip.pixels) for hip in halves)])
        )
        reading = GateReading(
            {name: float(p) for name, p in zip(self.model.card.tasks[GATE_TASK], every[GATE_TASK][0], strict=True)},
            self.region_thresholds,
        )
        decision = decide_scope(prepared.labels, reading, readable, gate_alone)
        hardware = every[HARDWARE_TASK]
        hips = self._checked(prepared.hips, hardware[:1] if whole else hardware[1 : 1 + len(crops)])
        labels, pelvis = prepared.labels, None
        if halves:
            assert self.pelvis_threshold is not None  # set whenever reads_field is
            pelvis = float(every[FIELD_TASK][0][self.model.card.tasks[FIELD_TASK].index(FIELD_PELVIS)])
            if decision.region == GATE_CLASS and pelvis >= self.pelvis_threshold:
                hips = self._checked(halves, hardware[1 + len(crops) :])
                labels = replace(
                    labels,
                    view=View.AP_PELVIS,
                    view_rule=VIEW_FROM_IMAGE_RULE,
                    sides=(Side.RIGHT, Side.LEFT),
                    side_rule=SIDES_BY_CONVENTION_RULE,
                )
                note = (
                    f"the image reads as an AP pelvis ({pelvis:.2f}): two hips, the patient's right taken to "
                    "be on the image's left; no R/L marker was read, check the sides"
                )
                decision = replace(
                    decision,
                    reason=f"{decision.reason}; {note}" if decision.reason else note,
                    flag=decision.flag or ScopeFlag.VIEW_FROM_IMAGE,
                )
        return GatedInstance(decision, reading, hips, labels, pelvis)

    def _checked(self, hips: list[HipImage], hardware: np.ndarray) -> list[HipImage]:
        """``hips`` with their hardware check's findings, from the hardware head's rows in the same order."""
        return [
            replace(hip, metal=self._finding(float(row[self._present])))
            for hip, row in zip(hips, hardware, strict=True)
        ]

    def _finding(self, probability: float) -> MetalFinding:
        present = probability >= self.hardware_threshold
        return MetalFinding(
            present=present,
            score=round(probability, 4),
            area_fraction=0.0,
            reason=f"hardware check {probability:.2f} "
            f"({'at or above' if present else 'below'} {self.hardware_threshold:.2f})",
        )

    def _resize(self, pixels: np.ndarray) -> np.ndarray:
        return resize_square(pixels, self.size)


_lock = threading.Lock()
_gates: dict[Path, Gate] = {}


def load_gate(card_path: Path) -> Gate:
    """The process's one gate for ``card_path`` (loaded once, shared by the worker's threads)."""
    with _lock:
        if card_path not in _gates:
            _gates[card_path] = Gate(load_task_model(card_path, inference_only=True))
        return _gates[card_path]
