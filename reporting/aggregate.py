"""Aggregation of per-image probabilities into one finding per side (a hip, a shoulder: a pack's region).

The rule's numbers and class pairs are the pack's defaults (``[aggregation]`` of its ``pack.toml``), which a
site's settings may override (:meth:`AggregationRule.from_pack`). The rule itself is the same for every pack.

The rule, in order, for each side seen (a side seen on no image is not reported; images whose side is
unknown are reported as a hip of unstated side, never merged into a named side):

1. Combine: the weighted mean of the calibrated class probabilities of every image of that side, each
   image weighted by its view (:attr:`AggregationRule.view_weights`; in the hip pack the cross-table lateral,
   which hides the native acetabulum, and unlabelled views count less).
2. Views disagree: an image whose own top class differs from the combined one, and prefers it over the
   combined class by more than the margin, makes the side indeterminate. The margin is
   :attr:`AggregationRule.disagreement_margin`, or the smaller :attr:`AggregationRule.hard_pair_margin`
   when the two classes are one of the pack's hard pairs (the hip's: THA vs hemiarthroplasty, post-infectious
   hip vs THA with additional fixation; docs/clinical.md).
3. Threshold: the combined top-class probability below the model card's threshold for that class
   (``class_thresholds``, else the global ``threshold``) is indeterminate.
4. Hard pair too close: when the combined top two classes are a hard pair, the top must lead by at
   least :attr:`AggregationRule.hard_pair_margin`.
5. Metal check: the model-free metal check (:mod:`predraft.models.metal`) disagreeing with the classifier (metal
   on any image of the side while the classifier says the pack's ``no_finding`` class, or no metal on any
   checked image while it names hardware that always holds metal: not one of the pack's ``without_metal``
   classes, such as a post-infectious hip, whose spacer or beads may be cement only) is indeterminate. Images
   not metal-checked (``metal`` None) take no part.

The first rule that applies gives the reason recorded with the finding.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from predraft.models.pack import Pack
from predraft.models.taxonomy import Side, View

_SIDE_ORDER: dict[Side, int] = {Side.RIGHT: 0, Side.LEFT: 1, Side.UNKNOWN: 2}

#: The weight of a view a pack's defaults and the site's settings do not name.
UNNAMED_VIEW_WEIGHT = 1.0


@dataclass(frozen=True)
class AggregationRule:
    """The tunable parts of the rule (see the module docstring); validated on construction. A pack gives its
    defaults (:meth:`from_pack`: ``[aggregation]`` of ``pack.toml``), a site's settings override them.

    ``hard_pairs`` are the class pairs the model confuses most (the hip's: THA/hemiarthroplasty,
    post-infectious/THA with fixation); ``without_metal`` the classes whose hardware may hold no metal;
    ``no_finding`` the class that says nothing is there (None: the metal check contradicts no class).
    """

    view_weights: Mapping[View, float] = field(default_factory=dict)
    disagreement_margin: float = 0.25
    hard_pair_margin: float = 0.15
    hard_pairs: frozenset[frozenset[str]] = frozenset()
    without_metal: frozenset[str] = frozenset()
    no_finding: str | None = None

    def __post_init__(self) -> None:
        weights = {View(view): float(weight) for view, weight in self.view_weights.items()}
        for view, weight in weights.items():
            if not weight > 0:
                raise ValueError(f"view weight of {view.value} is {weight}; weights must be positive")
        object.__setattr__(self, "view_weights", {view: weights.get(view, UNNAMED_VIEW_WEIGHT) for view in View})
        object.__setattr__(self, "hard_pairs", frozenset(frozenset(pair) for pair in self.hard_pairs))
        object.__setattr__(self, "without_metal", frozenset(self.without_metal))
        for name in ("disagreement_margin", "hard_pair_margin"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"{name} {getattr(self, name)} must lie in [0, 1)")

    @classmethod
    def from_pack(
        cls,
        pack: Pack,
        *,
        view_weights: Mapping[View, float] | None = None,
        disagreement_margin: float | None = None,
        hard_pair_margin: float | None = None,
    ) -> AggregationRule:
        """``pack``'s rule (its ``[aggregation]`` and ``no_finding``), with what a site's settings override (None, or
        a view not named: the pack's)."""
        defaults = pack.aggregation
        return cls(
            view_weights={**defaults.view_weights, **(view_weights or {})},
            disagreement_margin=defaults.disagreement_margin if disagreement_margin is None else disagreement_margin,
            hard_pair_margin=defaults.hard_pair_margin if hard_pair_margin is None else hard_pair_margin,
            hard_pairs=frozenset(frozenset(pair) for pair in defaults.hard_pairs),
            without_metal=frozenset(defaults.without_metal),
            no_finding=pack.no_finding,
        )

    def margin(self, first: str, second: str) -> float:
        return self.hard_pair_margin if frozenset({first, second}) in self.hard_pairs else self.disagreement_margin


@dataclass(frozen=True)
class HipObservation:
    """The probabilities one image gives for one hip."""

    sop_instance_uid: str
    side: Side
    view: View
    probabilities: Mapping[str, float]
    #: What the metal check saw on this image's hip: True, False, or None when it was not run.
    metal: bool | None = None

    def __post_init__(self) -> None:
        if not self.probabilities:
            raise ValueError(f"observation of {self.sop_instance_uid} has no probabilities")
        object.__setattr__(self, "side", Side(self.side))
        object.__setattr__(self, "view", View(self.view))
        object.__setattr__(self, "probabilities", {str(key): float(value) for key, value in self.probabilities.items()})

    @property
    def top_class(self) -> str:
        return max(self.probabilities, key=lambda key: self.probabilities[key])


@dataclass(frozen=True)
class SideFinding:
    """What the draft says of one hip. ``hardware`` is None when the side is indeterminate."""

    side: Side
    hardware: str | None
    probability: float
    probabilities: Mapping[str, float]
    views: tuple[View, ...]
    sop_instance_uids: tuple[str, ...]
    reason: str
    #: The metal check over the side's images: True if any saw metal, False if all checked saw none.
    metal: bool | None = None

    @property
    def indeterminate(self) -> bool:
        return self.hardware is None

    @property
    def top_class(self) -> str:
        return max(self.probabilities, key=lambda key: self.probabilities[key])


def aggregate(
    observations: Iterable[HipObservation],
    *,
    threshold: float,
    class_thresholds: Mapping[str, float] | None = None,
    rule: AggregationRule | None = None,
) -> list[SideFinding]:
    """One finding per side seen, right before left before unstated. ``class_thresholds`` overrides
    ``threshold`` for the classes it names; ``rule`` defaults to :class:`AggregationRule()`."""
    rule = rule or AggregationRule()
    thresholds = {str(key): value for key, value in (class_thresholds or {}).items()}
    for name, value in [("threshold", threshold), *((f"class_thresholds[{k}]", v) for k, v in thresholds.items())]:
        if not 0 < value < 1:
            raise ValueError(f"{name} {value} must lie strictly between 0 and 1")
    by_side: dict[Side, list[HipObservation]] = defaultdict(list)
    for observation in observations:
        by_side[observation.side].append(observation)
    return [
        _side_finding(side, by_side[side], threshold, thresholds, rule)
        for side in sorted(by_side, key=_SIDE_ORDER.__getitem__)
    ]


def _side_finding(
    side: Side,
    observations: Sequence[HipObservation],
    default_threshold: float,
    class_thresholds: Mapping[str, float],
    rule: AggregationRule,
) -> SideFinding:
    classes = list(dict.fromkeys(key for o in observations for key in o.probabilities))
    weights = [rule.view_weights[o.view] for o in observations]
    total = sum(weights)
    mean = {
        key: sum(w * o.probabilities.get(key, 0.0) for w, o in zip(weights, observations, strict=True)) / total
        for key in classes
    }
    ranked = sorted(classes, key=lambda key: mean[key], reverse=True)
    top = ranked[0]
    runner_up = ranked[1] if len(ranked) > 1 else None
    dissent = [
        o
        for o in observations
        if o.top_class != top
        and o.probabilities[o.top_class] - o.probabilities.get(top, 0.0) > rule.margin(o.top_class, top)
    ]
    checked = [o.metal for o in observations if o.metal is not None]
    metal = any(checked) if checked else None
    if dissent:
        tops = sorted({top, *(o.top_class for o in dissent)})
        hardware, reason = None, f"views disagree ({', '.join(tops)})"
    elif mean[top] < (threshold := class_thresholds.get(top, default_threshold)):
        hardware, reason = None, f"confidence {mean[top]:.2f} below the model's threshold {threshold:.2f}"
    elif (
        runner_up is not None
        and frozenset({top, runner_up}) in rule.hard_pairs
        and mean[top] - mean[runner_up] < rule.hard_pair_margin
    ):
        hardware, reason = (
            None,
            (f"{top} ({mean[top]:.2f}) and {runner_up} ({mean[runner_up]:.2f}) are too close to tell apart"),
        )
    elif rule.no_finding is not None and metal is True and top == rule.no_finding:
        hardware, reason = None, "the metal check sees metal where the model sees no hardware"
    elif rule.no_finding is not None and metal is False and top not in (rule.no_finding, *rule.without_metal):
        hardware, reason = None, f"the model sees {top} but the metal check sees no metal"
    else:
        hardware, reason = top, f"weighted mean probability {mean[top]:.2f} over {len(observations)} image(s)"
    views = tuple(dict.fromkeys(o.view for o in observations))
    uids = tuple(dict.fromkeys(o.sop_instance_uid for o in observations))
    return SideFinding(side, hardware, mean[top], mean, views, uids, reason, metal)
