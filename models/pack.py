"""Body-region packs: what one reader of one body region says, as data (docs/architecture.md, "Packs").

A pack is a folder::

    <name>/
        pack.toml           the contract below
        card.json           the model card (models/card.py), its classes the pack's, in the same order
        weights.safetensors the weights the card names (sha256 checked)
        templates/          optional: report templates that replace the base ones (reporting/templates/) by name

``pack.toml`` holds: ``name`` and ``version``; ``title`` (the pack as a person reads it); ``regions``, the
body-part gate's region classes it reads (``hip``, ``shoulder``...); ``gate_alone`` (default true), whether the
gate may send it images whose tags do not name its region; ``examination`` (the report's default
examination line) and ``statement`` (what the draft describes, and what it leaves to the radiologist);
``card``, the model card's path relative to the folder; ``views``, the views it accepts (:class:`View`);
``view_rules`` and ``framing``, the names of the code that finds an image's view and side (only ``hip``, the
rules of models/views.py) and turns its pixels into the model's inputs (models/framing.py: ``hip_halves`` or
``implant_crop``); ``no_finding``, the class that means nothing is there (what the metal check may contradict);
``[sides]``, how each side is named in the report; ``[indeterminate]``, the sentence and code of a side the
draft will not name; ``sr_title``, the code of the SR's title (LOINC 18748-4 Diagnostic Imaging Report unless
said); ``site``, the anatomic site of its findings (a code, for the AI results SR's Finding Site; optional);
``[aggregation]``, the pack's defaults for combining views (:class:`AggregationDefaults`);
and ``[[classes]]``, in the model's output order, each with its ``name``, short worklist ``label``, report
``sentence`` and SR ``code`` (SNOMED CT where one exists, else the private scheme ``99PREDRAFT``).

The bundled packs live in ``models/packs/``; a site adds its own by pointing ``PREDRAFT_PACKS_DIR`` at a folder
of pack folders. A site's pack comes before a bundled one for the regions both read (:func:`PackRegistry`).
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from predraft.models.card import ModelCard, ModelCardError, load_card
from predraft.models.framing import HIP_HALVES, Framing
from predraft.models.taxonomy import Side, View

#: The folder of the packs that ship with predraft.
BUNDLED_PACKS = Path(__file__).resolve().parent / "packs"
#: The pack whose model the demo drafts with, and which ``PREDRAFT_MODEL`` replaces the card of.
DEFAULT_PACK = "hip"
PACK_FILE = "pack.toml"
PRIVATE_SCHEME = "99PREDRAFT"

_NAME = r"^[a-z][a-z0-9_]*$"


class PackError(ValueError):
    """A pack that cannot be used; the message names the pack's folder and what is wrong."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PackCode(_Strict):
    """An SR code: value, coding scheme designator, meaning."""

    value: str = Field(min_length=1, max_length=16)
    scheme: str = Field(min_length=1, max_length=16)
    meaning: str = Field(min_length=1, max_length=64)


class PackClass(_Strict):
    """One class of the model: its name (as in the card), worklist label, report sentence and SR code."""

    name: str = Field(pattern=_NAME)
    label: str = Field(min_length=1)
    sentence: str = Field(min_length=1)
    code: PackCode


class Indeterminate(_Strict):
    """The sentence and SR code of a side the draft will not name; ``present_sentence``, when given, is said instead
    when the model's top class is not the pack's ``no_finding`` (an implant is there, its kind is not named)."""

    sentence: str = "Indeterminate, review."
    present_sentence: str | None = None
    code: PackCode = PackCode(value="INDET", scheme=PRIVATE_SCHEME, meaning="Indeterminate, review")


class SideNames(_Strict):
    """How the report names a finding of each side (``Right hip``)."""

    right: str = Field(min_length=1)
    left: str = Field(min_length=1)
    unknown: str = Field(min_length=1)

    def __getitem__(self, side: Side | str) -> str:
        return str(getattr(self, Side(side).value))


class AggregationDefaults(_Strict):
    """How a pack's views combine into one finding per side, before a site's settings override them
    (reporting/aggregate.py). ``hard_pairs`` are classes the model confuses most, given the smaller margin;
    ``without_metal`` are classes whose hardware may hold no metal, so "no metal" does not contradict them."""

    view_weights: dict[View, float] = Field(default_factory=dict)
    disagreement_margin: float = Field(0.25, ge=0, lt=1)
    hard_pair_margin: float = Field(0.15, ge=0, lt=1)
    hard_pairs: tuple[tuple[str, str], ...] = ()
    without_metal: tuple[str, ...] = ()

    @field_validator("view_weights")
    @classmethod
    def _positive(cls, value: dict[View, float]) -> dict[View, float]:
        bad = {view.value: weight for view, weight in value.items() if not weight > 0}
        if bad:
            raise ValueError(f"view weights must be positive: {bad}")
        return value


class Pack(_Strict):
    """A validated ``pack.toml``; :func:`load_pack` also checks its card and gives it its folder."""

    name: str = Field(pattern=_NAME)
    version: str = Field(min_length=1)
    title: str = Field(min_length=1)
    regions: tuple[str, ...] = Field(min_length=1)
    #: Whether the body-part gate may send this pack an image without body-part tags, or tagged as another
    #: region (predraft.models.scope); false: only images whose tags name its region.
    gate_alone: bool = True
    examination: str = Field(min_length=1)
    statement: str = Field(min_length=1)
    card: str = "card.json"
    views: tuple[View, ...] = Field(min_length=1)
    view_rules: Literal["hip"] = "hip"
    framing: Framing = HIP_HALVES
    no_finding: str
    sides: SideNames
    indeterminate: Indeterminate = Indeterminate()
    sr_title: PackCode = PackCode(value="18748-4", scheme="LN", meaning="Diagnostic Imaging Report")
    #: The anatomic site of the findings (the AI results SR's Finding Site, with the side as its laterality).
    site: PackCode | None = None
    aggregation: AggregationDefaults = AggregationDefaults()
    classes: tuple[PackClass, ...] = Field(min_length=2)

    @model_validator(mode="after")
    def _check_names(self) -> Pack:
        names = self.class_names
        if len(set(names)) != len(names):
            raise ValueError(f"class names repeat: {list(names)}")
        codes = [(c.code.scheme, c.code.value) for c in self.classes] + [
            (self.indeterminate.code.scheme, self.indeterminate.code.value)
        ]
        if len(set(codes)) != len(codes):
            raise ValueError("two classes (or a class and the indeterminate code) share an SR code")
        named = {
            "no_finding": [self.no_finding],
            "aggregation.hard_pairs": [name for pair in self.aggregation.hard_pairs for name in pair],
            "aggregation.without_metal": list(self.aggregation.without_metal),
        }
        for where, values in named.items():
            unknown = [value for value in values if value not in names]
            if unknown:
                raise ValueError(f"{where} names {unknown}, which are not among the classes {list(names)}")
        if any(len(set(pair)) != 2 for pair in self.aggregation.hard_pairs):
            raise ValueError("a hard pair must name two different classes")
        if len(set(self.regions)) != len(self.regions):
            raise ValueError(f"regions repeat: {list(self.regions)}")
        return self

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.classes)

    def pack_class(self, name: str) -> PackClass:
        for pack_class in self.classes:
            if pack_class.name == name:
                return pack_class
        raise KeyError(f"{name!r} is not a class of the pack {self.name} ({list(self.class_names)})")

    def sentence(self, name: str | None, top_class: str | None = None) -> str:
        """The report sentence of class ``name``; for None (indeterminate), the indeterminate sentence, or its
        ``present_sentence`` when ``top_class`` is not the no-finding class."""
        if name is not None:
            return self.pack_class(name).sentence
        present = self.indeterminate.present_sentence
        return present if present and top_class not in (None, self.no_finding) else self.indeterminate.sentence

    def code(self, name: str | None) -> PackCode:
        """The SR code of class ``name``; the indeterminate code for None."""
        return self.indeterminate.code if name is None else self.pack_class(name).code

    def label(self, name: str | None) -> str:
        return "Indeterminate" if name is None else self.pack_class(name).label


@dataclass(frozen=True)
class InstalledPack:
    """A pack with its folder and its card, as loaded and checked; ``site`` when a site installed it."""

    pack: Pack
    folder: Path
    card: ModelCard
    card_path: Path
    site: bool

    @property
    def name(self) -> str:
        return self.pack.name

    @property
    def templates(self) -> Path | None:
        folder = self.folder / "templates"
        return folder if folder.is_dir() else None


def read_pack(folder: Path) -> Pack:
    """The pack contract of ``folder`` (``pack.toml``), validated; PackError naming the folder otherwise."""
    path = Path(folder) / PACK_FILE
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError as exc:
        raise PackError(f"{folder} is not a pack: it has no {PACK_FILE}") from exc
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise PackError(f"{path} cannot be read: {exc}") from exc
    try:
        return Pack.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in error['loc']) or '(top level)'}: {error['msg']}" for error in exc.errors()
        )
        raise PackError(f"{path} is not a valid pack: {problems}") from exc


def load_pack(
    folder: Path, *, site: bool = False, card_path: Path | None = None, verify_weights: bool = True
) -> InstalledPack:
    """Read ``folder``'s pack and its card (``card_path`` replaces the pack's own: ``PREDRAFT_MODEL``), and check
    that they agree: the card's classes are the pack's, in order, and its accepted views are among the pack's.
    Raises PackError naming the folder and the first disagreement."""
    folder = Path(folder).resolve()
    pack = read_pack(folder)
    card_file = Path(card_path) if card_path is not None else folder / pack.card
    try:
        card, _ = load_card(card_file, verify_weights=verify_weights)
    except ModelCardError as exc:
        raise PackError(f"pack {pack.name} ({folder}): {exc}") from exc
    if tuple(card.classes) != pack.class_names:
        raise PackError(
            f"pack {pack.name} ({folder}): the card {card_file} has the classes {list(card.classes)}, "
            f"the pack {list(pack.class_names)}; they must be the same, in the same order"
        )
    outside = [view.value for view in card.accepted_views if view not in pack.views]
    if outside:
        raise PackError(f"pack {pack.name} ({folder}): the card accepts the views {outside}, which the pack does not")
    return InstalledPack(pack, folder, card, card_file, site)


def pack_folders(root: Path) -> list[Path]:
    """The pack folders directly under ``root`` (those holding a ``pack.toml``), by name."""
    if not root.is_dir():
        raise PackError(f"packs folder {root} is not a folder")
    return sorted(child for child in root.iterdir() if (child / PACK_FILE).is_file())


class PackRegistry:
    """The installed packs, and which one reads each region: a site's pack before the bundled one; between two
    packs of one origin, the first by name. Constructing it loads and checks every pack (PackError on the first
    that fails), so a service that starts has only usable packs."""

    def __init__(self, packs: Iterable[InstalledPack]) -> None:
        self.packs: tuple[InstalledPack, ...] = tuple(packs)
        names = [installed.name for installed in self.packs]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise PackError(f"two packs are named {repeated}: a pack's name must be unique")
        if not self.packs:
            raise PackError("no pack is installed")
        order = sorted(self.packs, key=lambda installed: (not installed.site, installed.name))
        self.by_region: dict[str, InstalledPack] = {}
        for installed in order:
            for region in installed.pack.regions:
                self.by_region.setdefault(region, installed)

    @property
    def gate_alone(self) -> set[str]:
        """The regions whose pack lets the gate choose it without or against the tags."""
        return {region for region, installed in self.by_region.items() if installed.pack.gate_alone}

    def __getitem__(self, name: str) -> InstalledPack:
        for installed in self.packs:
            if installed.name == name:
                return installed
        raise KeyError(f"no pack is named {name!r} (installed: {[p.name for p in self.packs]})")

    def for_region(self, region: str) -> InstalledPack | None:
        """The pack that reads ``region``, or None when no installed pack does."""
        return self.by_region.get(region)

    def shadowed(self) -> Mapping[str, list[str]]:
        """For each pack, the regions it names that another pack reads first."""
        return {
            installed.name: [r for r in installed.pack.regions if self.by_region[r] is not installed]
            for installed in self.packs
        }


def installed_packs(
    site_dir: Path | None = None, *, default_card: Path | None = None, verify_weights: bool = True
) -> PackRegistry:
    """The bundled packs and, when ``site_dir`` is given, a site's packs from its folder. ``default_card`` replaces
    the card of the bundled default pack (``hip``): the ``PREDRAFT_MODEL`` setting."""
    packs = [
        load_pack(
            folder,
            card_path=default_card if folder.name == DEFAULT_PACK else None,
            verify_weights=verify_weights,
        )
        for folder in pack_folders(BUNDLED_PACKS)
    ]
    if site_dir is not None:
        packs.extend(load_pack(folder, site=True, verify_weights=verify_weights) for folder in pack_folders(site_dir))
    bundled_names = {installed.name for installed in packs if not installed.site}
    clashing = [installed.name for installed in packs if installed.site and installed.name in bundled_names]
    if clashing:
        raise PackError(
            f"the site's packs {clashing} have the name of a bundled pack: give a site's pack a name of its own "
            "(it still comes first for the regions it reads)"
        )
    return PackRegistry(packs)


def bundled_pack(name: str = DEFAULT_PACK, *, verify_weights: bool = False) -> InstalledPack:
    """One bundled pack, loaded (its weights' sha256 checked only with ``verify_weights``)."""
    return load_pack(BUNDLED_PACKS / name, verify_weights=verify_weights)
