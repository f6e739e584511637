"""workers.gate: a gate card is checked for the tasks the service acts on; one pass reads image and hips."""

from __future__ import annotations

import numpy as np
import pytest

from models.imagetask import load_task_model
from models.taxonomy import Side, View
from models.views import TagRegion, ViewResult
from tests.unit.test_image_tasks import write_random_task_card
from workers.gate import Gate
from workers.prepare import HipImage, PreparedInstance

GATE_TASKS = {"region": ("hip", "shoulder", "hand", "leg"), "hardware": ("absent", "present")}


def labels(region: TagRegion, body_part: str = "") -> ViewResult:
    return ViewResult(View.UNKNOWN, "none", (Side.UNKNOWN,), "none", region is TagRegion.HIP, "BodyPartExamined",
                      region, body_part)


@pytest.mark.parametrize(("tasks", "message"), [
    ({"region": ("knee", "shoulder"), "hardware": ("absent", "present")}, "no 'region' task with a 'hip' class"),
    ({"region": ("hip", "leg")}, "no 'hardware' task with a 'present' class"),
    ({"body": ("hip", "leg"), "hardware": ("absent", "present")}, "no 'region' task"),
])
def test_a_gate_card_without_the_tasks_the_service_acts_on_is_refused(tmp_path, tasks, message):
    with pytest.raises(ValueError, match=message):
        Gate(load_task_model(write_random_task_card(tmp_path, tasks)))


def test_one_pass_reads_the_image_and_checks_every_hip(tmp_path):
    gate = Gate(load_task_model(write_random_task_card(tmp_path, GATE_TASKS, input_size=32)))
    rng = np.random.default_rng(0)
    hips = [HipImage(side, View.AP_PELVIS, rng.integers(0, 256, (64, 64), dtype=np.uint8))
            for side in (Side.RIGHT, Side.LEFT)]  # at the classifier's edge: resized to the gate's
    prepared = PreparedInstance(labels(TagRegion.NONE), hips, rng.integers(0, 256, (32, 32), dtype=np.uint8))
    gated = gate.apply(prepared)
    assert sorted(gated.reading.probabilities) == sorted(GATE_TASKS["region"])
    assert sum(gated.reading.probabilities.values()) == pytest.approx(1.0)
    assert gated.decision.in_scope is gated.reading.reads_hip
    assert [hip.side for hip in gated.hips] == [Side.RIGHT, Side.LEFT]
    for hip, original in zip(gated.hips, hips, strict=True):
        assert hip.pixels is original.pixels  # the classifier's pixels are untouched
        assert hip.metal.present is (hip.metal.score >= gate.hardware_threshold)
        assert hip.metal.reason.startswith(f"hardware check {hip.metal.score:.2f} (")


def test_the_gate_needs_its_image(tmp_path):
    gate = Gate(load_task_model(write_random_task_card(tmp_path, GATE_TASKS, input_size=32)))
    with pytest.raises(ValueError, match="no gate image"):
        gate.apply(PreparedInstance(labels(TagRegion.HIP, "HIP"), [], None))
