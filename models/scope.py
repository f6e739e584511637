"""Scope and routing: whether an image is drafted, and by the pack of which body region, from its tags and the
gate's reading.

The tags (:func:`predraft.models.views.classify_view`: ``tag_region`` and the ``region`` it names) and the body-part
gate (a task model's ``region`` head, thresholds from its card) decide together, among the regions the installed
packs read (``readable``; predraft.models.pack):

- tags say hip/pelvis/femur: the hip, unless the gate rules the hip out (p(hip) below the hip's threshold, fitted
  where hip-or-not sensitivity and specificity balance): then the region it reads as most probable, flagged
  "tags disagree", when a pack reads it and it is at or above that region's threshold, else out of scope with a
  reason naming both;
- no body-part tags: the gate decides; the most probable readable region read at or above its threshold is
  drafted, flagged "no body-part tags" (for the hip, the same balanced threshold: tags that say hip and tags
  that say nothing are decided alike);
- tags name another limb region: a readable region the gate reads as its top class at or above that class's
  threshold, flagged "tags disagree" when it is not the tags' own (overruling tags that name a region takes the
  gate's top reading, not merely a hip probability above the balanced point); else the tags' region when a pack
  reads it and the gate reads no other region so; else out of scope;
- tags name a region outside the skeleton the gate knows (chest, abdomen, skull, spine): out of scope,
  never overridden (the gate has seen no such image); the gate does not run.

A region no installed pack reads is out of scope with that reason. With the hip pack alone these are the rules
of the hip: hips drafted, everything else out of scope. The hip class is ``hip``; region names are the gate
card's, so a later pack can add a knee class and its threshold without a change here.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from enum import StrEnum

from predraft.models.taskcard import TaskCard
from predraft.models.views import HIP_REGION, TagRegion, ViewResult

GATE_TASK = "region"
GATE_CLASS = HIP_REGION
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
    REQUESTED = "drafted on request"  # a radiologist asked for it to be drafted with a chosen pack


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

    def rules_out(self, region: str = GATE_CLASS) -> tuple[str, float] | None:
        """When ``region``'s probability is below its threshold (the gate reads the image as not that region):
        the most probable other region and its probability; else None."""
        if self.is_sure(region):
            return None
        name = max((name for name in self.probabilities if name != region), key=lambda key: self.probabilities[key])
        return name, self.probabilities[name]

    def reads_as(self, regions: Collection[str]) -> str | None:
        """The gate's top class when it is among ``regions`` and at or above its threshold, else None: a reading
        strong enough to overrule tags that name another region."""
        name = self.top[0]
        return name if name in regions and self.is_sure(name) else None

    def is_sure(self, region: str) -> bool:
        """Whether ``region``'s probability is at or above its threshold."""
        return self.probabilities[region] >= self.thresholds[region]

    def confident(self, regions: Collection[str]) -> str | None:
        """The most probable of ``regions`` read at or above its threshold, if any."""
        sure = [(p, name) for name, p in self.probabilities.items() if name in regions and p >= self.thresholds[name]]
        return max(sure)[1] if sure else None

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
    #: In scope: the gate's region class whose pack reads the image (``hip``, ``shoulder``...).
    region: str | None = None


def _regions_words(readable: Collection[str]) -> str:
    """``a hip or pelvis``, ``a hip or pelvis or a shoulder``: the regions the installed packs read."""
    return " or ".join(f"a {REGION_WORDS.get(name, name)}" for name in sorted(readable, key=_hip_first))


def _hip_first(name: str) -> tuple[bool, str]:
    return (name != GATE_CLASS, name)


def decide_scope(
    tags: ViewResult,
    reading: GateReading | None,
    readable: Collection[str] = (GATE_CLASS,),
    gate_alone: Collection[str] | None = None,
) -> ScopeDecision:
    """Scope of one image by the rules above, and the region whose pack reads it. ``readable`` are the regions
    the installed packs read (the gate's class names); ``gate_alone`` those of them the gate may choose without or
    against the tags (default: all; a pack says ``gate_alone = false`` to read only images whose tags name its
    region). ``reading`` may be None only when the tags say ``outside``."""
    body_part = tags.body_part or "unstated"
    words = _regions_words(readable)
    alone = set(readable if gate_alone is None else gate_alone) & set(readable)
    if tags.tag_region is TagRegion.OUTSIDE:
        return ScopeDecision(
            False,
            f"body part {body_part} is not {words} ({tags.scope_rule}); the body-part gate does not overrule it",
        )
    if reading is None:
        raise ValueError(f"tags say {tags.tag_region.value}: scope needs the gate's reading")
    said = tags.region
    if tags.tag_region is TagRegion.HIP:
        ruled_out = reading.rules_out(said or GATE_CLASS)
        if ruled_out is not None:
            where = body_part if tags.body_part else f"{tags.scope_rule} names the hip"
            reads = f"tags say {where}, the image reads as {reading.describe(ruled_out[0])}"
            if ruled_out[0] in alone and reading.is_sure(ruled_out[0]):
                return ScopeDecision(True, reads, ScopeFlag.TAGS_DISAGREE, ruled_out[0])
            return ScopeDecision(False, reads)
        if GATE_CLASS in readable:
            return ScopeDecision(True, "", region=GATE_CLASS)
        return ScopeDecision(False, f"no installed pack reads a {REGION_WORDS[GATE_CLASS]}")
    if tags.tag_region is TagRegion.NONE:
        sure = reading.confident(alone)
        if sure is not None:
            return ScopeDecision(
                True, f"{ScopeFlag.UNTAGGED}; the image reads as {reading.describe(sure)}", ScopeFlag.UNTAGGED, sure
            )
        return ScopeDecision(
            False, f"{ScopeFlag.UNTAGGED}, and the image does not read as {words} (reads as {reading.describe()})"
        )
    # another limb region by the tags
    overruling = reading.reads_as(alone)
    if overruling is not None and overruling != said:
        return ScopeDecision(
            True,
            f"tags say {body_part}, the image reads as {reading.describe(overruling)}",
            ScopeFlag.TAGS_DISAGREE,
            overruling,
        )
    if said is not None and said in readable and reading.reads_as(set(reading.probabilities) - {said}) is None:
        return ScopeDecision(True, "", region=said)
    return ScopeDecision(
        False,
        f"body part {body_part} is not {words} ({tags.scope_rule}); the image reads as {reading.describe()}",
    )
