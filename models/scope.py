"""Scope: whether an image is a hip or pelvis radiograph predraft drafts, from its tags and the gate's reading.

The tags (:func:`predraft.models.views.classify_view`, ``tag_region``) and the body-part gate (a task model's
``region`` head, thresholds from its card) decide together:

- tags say hip/pelvis/femur: in scope, unless the gate is confident of another region (its probability at
  or above that region's threshold): then out of scope, with a reason naming both;
- no body-part tags: the gate decides; an image it reads as hip at or above the hip threshold is in scope,
  flagged "no body-part tags";
- tags name another limb region: out of scope, unless the gate reads a hip at or above the hip threshold:
  then in scope, flagged "tags disagree";
- tags name a region outside the skeleton the gate knows (chest, abdomen, skull, spine): out of scope,
  never overridden (the gate has seen no such image); the gate does not run.

The hip class is the card's ``gate_class`` (``hip``); region names are the card's, so a later pack can add
a knee class and its threshold without a change here.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from predraft.models.taskcard import TaskCard
from predraft.models.views import TagRegion, ViewResult

GATE_TASK = "region"
GATE_CLASS = "hip"
HARDWARE_TASK = "hardware"
HARDWARE_PRESENT = "present"
#: The optional head that reads whether a hip image is an AP pelvis (both hips, one each side of the midline).
FIELD_TASK = "field"
FIELD_PELVIS = "pelvis"

#: How a region class reads in a reason; a class not named here reads as its own name.
REGION_WORDS = {"hip": "hip or pelvis", "shoulder": "shoulder", "hand": "hand or wrist", "leg": "leg, knee or ankle"}


class ScopeFlag(StrEnum):
    """Why an in-scope image deserves the radiologist's eye although it is drafted."""

    UNTAGGED = "no body-part tags"
    TAGS_DISAGREE = "tags disagree"
    VIEW_FROM_IMAGE = "view read from the image"  # hip tags without a view; the gate read an AP pelvis


@dataclass(frozen=True)
class GateReading:
    """The gate's region probabilities for one image, and the card's thresholds for acting on them."""

    probabilities: dict[str, float]
    thresholds: dict[str, float]

    def __post_init__(self) -> None:
        if GATE_CLASS not in self.probabilities:
            raise ValueError(f"a gate reading needs the class {GATE_CLASS!r}, got {sorted(self.probabilities)}")
        missing = [name for name in self.probabilities if name not in self.thresholds]
        if missing:
            raise ValueError(f"no threshold for the gate class(es) {missing}")

    @property
    def top(self) -> tuple[str, float]:
        name = max(self.probabilities, key=lambda key: self.probabilities[key])
        return name, self.probabilities[name]

    def confident_other(self) -> tuple[str, float] | None:
        """The most probable non-hip region at or above its threshold, if any."""
        sure = [
            (p, name) for name, p in self.probabilities.items() if name != GATE_CLASS and p >= self.thresholds[name]
        ]
        return (max(sure)[1], max(sure)[0]) if sure else None

    @property
    def reads_hip(self) -> bool:
        return self.probabilities[GATE_CLASS] >= self.thresholds[GATE_CLASS]

    def describe(self, name: str | None = None) -> str:
        name = name or self.top[0]
        return f"{REGION_WORDS.get(name, name)}, {self.probabilities[name]:.2f}"


def check_gate_card(card: TaskCard) -> None:
    """Raise ValueError unless ``card`` has the tasks the service acts on: ``region`` with a ``hip`` class, and
    ``hardware`` with a ``present`` class (the hardware check of every hip)."""
    if GATE_CLASS not in card.tasks.get(GATE_TASK, ()):
        raise ValueError(f"{card.display_name} has no {GATE_TASK!r} task with a {GATE_CLASS!r} class")
    if HARDWARE_PRESENT not in card.tasks.get(HARDWARE_TASK, ()):
        raise ValueError(f"{card.display_name} has no {HARDWARE_TASK!r} task with a {HARDWARE_PRESENT!r} class")


@dataclass(frozen=True)
class ScopeDecision:
    in_scope: bool
    reason: str  # out of scope: why (the instance's error text); in scope: what the flag means, or ""
    flag: ScopeFlag | None = None


def decide_scope(tags: ViewResult, reading: GateReading | None) -> ScopeDecision:
    """Scope of one image by the rules above. ``reading`` may be None only when the tags say ``outside``."""
    body_part = tags.body_part or "unstated"
    if tags.tag_region is TagRegion.OUTSIDE:
        return ScopeDecision(
            False,
            f"body part {body_part} is not a hip or pelvis ({tags.scope_rule}); "
            "the body-part gate does not overrule it",
        )
    if reading is None:
        raise ValueError(f"tags say {tags.tag_region.value}: scope needs the gate's reading")
    if tags.tag_region is TagRegion.HIP:
        other = reading.confident_other()
        if other is not None:
            said = body_part if tags.body_part else f"{tags.scope_rule} names the hip"
            return ScopeDecision(False, f"tags say {said}, the image reads as {reading.describe(other[0])}")
        return ScopeDecision(True, "")
    if tags.tag_region is TagRegion.NONE:
        if reading.reads_hip:
            return ScopeDecision(
                True, f"no body-part tags; the image reads as {reading.describe(GATE_CLASS)}", ScopeFlag.UNTAGGED
            )
        return ScopeDecision(
            False, f"no body-part tags, and the image does not read as a hip or pelvis (reads as {reading.describe()})"
        )
    if reading.reads_hip:  # another limb region by the tags
        return ScopeDecision(
            True, f"tags say {body_part}, the image reads as {reading.describe(GATE_CLASS)}", ScopeFlag.TAGS_DISAGREE
        )
    return ScopeDecision(
        False,
        f"body part {body_part} is not a hip or pelvis ({tags.scope_rule}); the image reads as {reading.describe()}",
    )
