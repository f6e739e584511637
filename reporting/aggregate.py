"""Aggregation of per-image probabilities into one finding per hip.

Rule (first version): for each side, average the calibrated class probabilities of every image of
that side, each view weighted equally. The side is *indeterminate* when the averaged top-class
probability is below the model card's threshold for that class (``class_thresholds``, else the global
``threshold``), or when the images' own top classes disagree.
A side seen on no image is not reported. Images whose side is unknown are reported as a hip of
unstated side, never merged into a named side.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from models.taxonomy import HardwareClass, Side, View

_SIDE_ORDER = {Side.RIGHT: 0, Side.LEFT: 1, Side.UNKNOWN: 2}


@dataclass(frozen=True)
class HipObservation:
    """The probabilities one image gives for one hip."""

    sop_instance_uid: str
    side: Side
    view: View
    probabilities: Mapping[HardwareClass, float]

    def __post_init__(self) -> None:
        if not self.probabilities:
            raise ValueError(f"observation of {self.sop_instance_uid} has no probabilities")
        object.__setattr__(self, "side", Side(self.side))
        object.__setattr__(self, "view", View(self.view))
        object.__setattr__(self, "probabilities",
                           {HardwareClass(key): float(value) for key, value in self.probabilities.items()})

    @property
    def top_class(self) -> HardwareClass:
        return max(self.probabilities, key=lambda key: self.probabilities[key])


@dataclass(frozen=True)
class SideFinding:
    """What the draft says of one hip. ``hardware`` is None when the side is indeterminate."""

    side: Side
    hardware: HardwareClass | None
    probability: float
    probabilities: Mapping[HardwareClass, float]
    views: tuple[View, ...]
    sop_instance_uids: tuple[str, ...]
    reason: str

    @property
    def indeterminate(self) -> bool:
        return self.hardware is None

    @property
    def top_class(self) -> HardwareClass:
        return max(self.probabilities, key=lambda key: self.probabilities[key])


def aggregate(observations: Iterable[HipObservation], *, threshold: float,
              class_thresholds: Mapping[HardwareClass, float] | None = None) -> list[SideFinding]:
    """One finding per side seen, right before left before unstated. ``class_thresholds`` overrides
    ``threshold`` for the classes it names."""
    thresholds = {HardwareClass(key): value for key, value in (class_thresholds or {}).items()}
    for name, value in [("threshold", threshold), *((f"class_thresholds[{k}]", v) for k, v in thresholds.items())]:
        if not 0 < value < 1:
            raise ValueError(f"{name} {value} must lie strictly between 0 and 1")
    by_side: dict[Side, list[HipObservation]] = defaultdict(list)
    for observation in observations:
        by_side[observation.side].append(observation)
    return [_side_finding(side, by_side[side], threshold, thresholds)
            for side in sorted(by_side, key=_SIDE_ORDER.get)]


def _side_finding(side: Side, observations: Sequence[HipObservation], default_threshold: float,
                  class_thresholds: Mapping[HardwareClass, float]) -> SideFinding:
    classes = list(observations[0].probabilities)
    mean = {key: sum(o.probabilities.get(key, 0.0) for o in observations) / len(observations) for key in classes}
    top = max(mean, key=lambda key: mean[key])
    tops = {o.top_class for o in observations}
    if len(tops) > 1:
        hardware, reason = None, "views disagree (" + ", ".join(sorted(t.value for t in tops)) + ")"
    elif mean[top] < (threshold := class_thresholds.get(top, default_threshold)):
        hardware, reason = None, f"confidence {mean[top]:.2f} below the model's threshold {threshold:.2f}"
    else:
        hardware, reason = top, f"mean probability {mean[top]:.2f} over {len(observations)} image(s)"
    views = tuple(dict.fromkeys(o.view for o in observations))
    uids = tuple(dict.fromkeys(o.sop_instance_uid for o in observations))
    return SideFinding(side, hardware, mean[top], mean, views, uids, reason)
