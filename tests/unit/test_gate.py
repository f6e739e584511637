"""predraft.workers.gate: a gate card is checked for the tasks the service acts on; one pass reads image and hips."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from predraft.models.imagetask import load_task_model
from predraft.models.pixels import resize_square
from predraft.models.prepare import HipImage, PreparedInstance
from predraft.models.scope import ScopeFlag
from predraft.models.taxonomy import Side, View
from predraft.models.views import TagRegion, ViewResult
from predraft.workers.gate import VIEW_FROM_IMAGE_RULE, Gate
from tests.unit.test_image_tasks import write_random_task_card

GATE_TASKS = {"region": ("hip", "shoulder", "hand", "leg"), "hardware": ("absent", "present")}
HIP_ALWAYS = {"hip": 0.001, "shoulder": 0.999, "hand": 0.999, "leg": 0.999}  # random weights: always reads hip


def labels(region: TagRegion, body_part: str = "") -> ViewResult:
    return ViewResult(
        View.UNKNOWN, "none", (Side.UNKNOWN,), "none", region is TagRegion.HIP, "BodyPartExamined", region, body_part
    )


@pytest.mark.parametrize(
    ("tasks", "message"),
    [
        ({"region": ("knee", "shoulder"), "hardware": ("absent", "present")}, "no 'region' task with a 'hip' class"),
        ({"region": ("hip", "leg")}, "no 'hardware' task with a 'present' class"),
        ({"body": ("hip", "leg"), "hardware": ("absent", "present")}, "no 'region' task"),
    ],
)
def test_a_gate_card_without_the_tasks_the_service_acts_on_is_refused(tmp_path, tasks, message):
    with pytest.raises(ValueError, match=message):
        Gate(load_task_model(write_random_task_card(tmp_path, tasks)))


def test_one_pass_reads_the_image_and_checks_every_hip(tmp_path):
    gate = Gate(
        load_task_model(write_random_task_card(tmp_path, GATE_TASKS, input_size=32, thresholds={"region": HIP_ALWAYS}))
    )
    rng = np.random.default_rng(0)
    hips = [
        HipImage(side, View.AP_PELVIS, rng.integers(0, 256, (64, 64), dtype=np.uint8))
        for side in (Side.RIGHT, Side.LEFT)
    ]  # at the classifier's edge: resized to the gate's
    pelvis = replace(labels(TagRegion.NONE), view=View.AP_PELVIS)
    prepared = PreparedInstance(pelvis, hips, rng.integers(0, 256, (32, 32), dtype=np.uint8))
    gated = gate.apply(prepared)
    assert sorted(gated.reading.probabilities) == sorted(GATE_TASKS["region"])
    assert sum(gated.reading.probabilities.values()) == pytest.approx(1.0)
    assert gated.decision.in_scope and gated.reading.confident({"hip"}) == "hip"
    assert [hip.side for hip in gated.hips] == [Side.RIGHT, Side.LEFT]
    for hip, original in zip(gated.hips, hips, strict=True):
        assert hip.pixels is original.pixels  # the classifier's pixels are untouched
        assert hip.metal.present is (hip.metal.score >= gate.hardware_threshold)
        assert hip.metal.reason.startswith(f"hardware check {hip.metal.score:.2f} (")
    # each hip's check is its own: the same hip alone gets the same score as beside the other
    alone = gate.apply(prepared._replace(hips=hips[:1])).hips[0].metal.score
    assert alone == pytest.approx(gated.hips[0].metal.score, abs=1e-3)


def test_a_hip_that_is_the_whole_image_is_checked_on_the_gates_own_image(tmp_path):
    model = load_task_model(
        write_random_task_card(tmp_path, GATE_TASKS, input_size=32, thresholds={"region": HIP_ALWAYS})
    )
    with torch.no_grad():  # a random head reads every picture about alike: make its reading depend on the picture
        model.network.heads["hardware"].weight.mul_(1000)
    gate = Gate(model)
    whole = np.zeros((32, 32), dtype=np.uint8)  # a black film
    hip = HipImage(Side.UNKNOWN, View.UNKNOWN, np.full((64, 64), 255, dtype=np.uint8))  # another: a white one
    gated = gate.apply(PreparedInstance(labels(TagRegion.NONE), [hip], whole))
    present = GATE_TASKS["hardware"].index("present")
    on_the_gate_image = float(model.predict(whole[None])["hardware"][0, present])
    on_the_hip_crop = float(model.predict(resize_square(hip.pixels, 32)[None])["hardware"][0, present])
    assert abs(on_the_gate_image - on_the_hip_crop) > 0.01  # the two readings can be told apart
    assert gated.hips[0].metal.score == pytest.approx(on_the_gate_image, abs=1e-4)
    assert gated.hips[0].pixels is hip.pixels  # the classifier still reads its own crop


def test_the_gate_needs_its_image(tmp_path):
    gate = Gate(load_task_model(write_random_task_card(tmp_path, GATE_TASKS, input_size=32)))
    with pytest.raises(ValueError, match="no gate image"):
        gate.apply(PreparedInstance(labels(TagRegion.HIP, "HIP"), [], None))


# --- the field head: an untagged AP pelvis read from its pixels -------------------------------------------------

FIELD_TASKS = {**GATE_TASKS, "field": ("pelvis", "other")}


def field_gate(tmp_path, pelvis_threshold: float, region_thresholds: dict[str, float] | None = None) -> Gate:
    return Gate(
        load_task_model(
            write_random_task_card(
                tmp_path,
                FIELD_TASKS,
                input_size=32,
                thresholds={"region": region_thresholds or HIP_ALWAYS, "field": {"pelvis": pelvis_threshold}},
            )
        )
    )


def untagged(region: TagRegion = TagRegion.NONE, body_part: str = "") -> PreparedInstance:
    rng = np.random.default_rng(1)
    whole = HipImage(Side.UNKNOWN, View.UNKNOWN, rng.integers(0, 256, (64, 64), dtype=np.uint8))
    halves = tuple(
        HipImage(side, View.AP_PELVIS, rng.integers(0, 256, (64, 64), dtype=np.uint8))
        for side in (Side.RIGHT, Side.LEFT)
    )
    return PreparedInstance(labels(region, body_part), [whole], rng.integers(0, 256, (32, 32), dtype=np.uint8), halves)


def test_an_untagged_image_read_as_an_ap_pelvis_becomes_two_hips_with_sides_by_convention(tmp_path):
    prepared = untagged()
    gated = field_gate(tmp_path, pelvis_threshold=0.001).apply(prepared)
    assert gated.decision.in_scope and gated.decision.flag is ScopeFlag.UNTAGGED  # still flagged as untagged
    assert 0.0 < gated.pelvis_probability < 1.0
    assert [(hip.side, hip.view) for hip in gated.hips] == [(Side.RIGHT, View.AP_PELVIS), (Side.LEFT, View.AP_PELVIS)]
    assert [hip.pixels is half.pixels for hip, half in zip(gated.hips, prepared.halves, strict=True)] == [True, True]
    assert all(hip.metal is not None for hip in gated.hips)  # each half has its own hardware check
    assert gated.labels.view is View.AP_PELVIS and gated.labels.sides == (Side.RIGHT, Side.LEFT)
    assert gated.labels.view_rule == VIEW_FROM_IMAGE_RULE and "no R/L marker read" in gated.labels.side_rule
    assert gated.decision.reason.startswith("no body-part tags; the image reads as hip or pelvis, ")
    assert f"reads as an AP pelvis ({gated.pelvis_probability:.2f})" in gated.decision.reason
    assert "no R/L marker was read, check the sides" in gated.decision.reason


def test_below_the_pelvis_threshold_the_image_stays_one_hip_of_unknown_view_and_side(tmp_path):
    prepared = untagged()
    gated = field_gate(tmp_path, pelvis_threshold=0.999).apply(prepared)
    assert gated.decision.in_scope and gated.pelvis_probability < 0.999
    assert [(hip.side, hip.view) for hip in gated.hips] == [(Side.UNKNOWN, View.UNKNOWN)]
    assert gated.labels == prepared.labels and "AP pelvis" not in gated.decision.reason


def test_hip_tags_without_a_view_read_as_a_pelvis_are_flagged_view_read_from_the_image(tmp_path):
    gated = field_gate(tmp_path, pelvis_threshold=0.001).apply(untagged(TagRegion.HIP, "PELVIS"))
    assert gated.decision.in_scope and gated.decision.flag is ScopeFlag.VIEW_FROM_IMAGE
    assert gated.decision.reason.startswith("the image reads as an AP pelvis (")
    assert [hip.side for hip in gated.hips] == [Side.RIGHT, Side.LEFT]


def test_an_image_out_of_scope_is_never_split(tmp_path):
    refusing = {"hip": 0.999, "shoulder": 0.001, "hand": 0.999, "leg": 0.999}  # always sure of a shoulder
    prepared = untagged(TagRegion.HIP, "PELVIS")
    gated = field_gate(tmp_path, pelvis_threshold=0.001, region_thresholds=refusing).apply(prepared)
    assert not gated.decision.in_scope and gated.decision.reason.startswith("tags say PELVIS, the image reads as")
    assert gated.labels == prepared.labels and len(gated.hips) == 1


def test_a_gate_without_a_field_head_leaves_the_halves_unused(tmp_path):
    gate = Gate(
        load_task_model(write_random_task_card(tmp_path, GATE_TASKS, input_size=32, thresholds={"region": HIP_ALWAYS}))
    )
    gated = gate.apply(untagged())
    assert not gate.reads_field and gated.pelvis_probability is None
    assert [(hip.side, hip.view) for hip in gated.hips] == [(Side.UNKNOWN, View.UNKNOWN)]
