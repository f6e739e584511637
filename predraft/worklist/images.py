"""Thumbnails and Grad-CAM overlays of the hips of a study, cached as PNG files under the var dir.

A thumbnail is the hip exactly as the classifier saw it, through the same pixel pipeline
(:func:`predraft.models.prepare.prepare_file`: VOI, MONOCHROME1 inversion, collimation crop, the AP pelvis split,
letterbox), letterboxed to :data:`THUMBNAIL_SIZE` instead of the model's input size. An overlay is
:func:`predraft.models.gradcam.gradcam_overlay` of the configured model on the hip at the model's input size, drawn at
the thumbnail's size, so the two line up when the page toggles between them.

Files: ``<var_dir>/cache/web/thumbnails/<SOP Instance UID>/<side>-w<VOI index>-<size>.png`` and
``<var_dir>/cache/web/gradcam/<SOP Instance UID>/<side>-<class>-<first 16 hex of the weights' sha256>-w<VOI
index>-<size>.png``: a new model or window makes new files. Each is written to a temporary name and renamed,
so a reader never sees half a file. The PNGs hold pixels only, nothing about the patient. The web process
reads the spool, so it runs on the spool host (as ``predraft serve`` does).
"""

from __future__ import annotations

import io
import os
import tempfile
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from predraft.core.settings import Settings
from predraft.models.card import ModelCard, load_card
from predraft.models.taxonomy import Side

if TYPE_CHECKING:
    from predraft.models.factory import Classifier

THUMBNAIL_SIZE = 256


class ImageUnavailable(LookupError):
    """The hip cannot be shown: the instance has no such side, or its pixels cannot be prepared."""


class HipImages:
    """Cached thumbnails and overlays for one deployment (one per web process)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.root = settings.var_dir / "cache" / "web"
        self._classifiers: dict[Path, Classifier] = {}
        self._classifier_lock = threading.Lock()

    # --- public ------------------------------------------------------------------------------------------

    def thumbnail(self, *, spool_path: str, sop_instance_uid: str, side: str) -> Path:
        """The PNG file of the hip ``side`` of the instance, made on first request."""
        side_value = _side(side)
        target = (
            self.root
            / "thumbnails"
            / _safe(sop_instance_uid)
            / f"{side_value.value}-w{self.settings.model.voi_window_index}-{THUMBNAIL_SIZE}.png"
        )
        if target.is_file():
            return target
        pixels = self._hip(spool_path, side_value, THUMBNAIL_SIZE)
        return _write_atomically(target, _png(pixels))

    def overlay(self, *, spool_path: str, sop_instance_uid: str, side: str, hardware: str, pack: str) -> Path:
        """The PNG file of the Grad-CAM overlay of class ``hardware`` of the model of ``pack`` (the pack that read
        the image) on the hip, made on first request."""
        side_value = _side(side)
        card_path = self._card_path(pack)
        card = self.card(card_path)
        classes = list(card.classes)
        if hardware not in classes:
            raise ImageUnavailable(f"class {hardware!r} is not among the classes of {card.display_name}")
        target = (
            self.root
            / "gradcam"
            / _safe(sop_instance_uid)
            / f"{side_value.value}-{hardware}-{card.weights_sha256[:16]}-w{self.settings.model.voi_window_index}"
            f"-{THUMBNAIL_SIZE}.png"
        )
        if target.is_file():
            return target
        from predraft.models.gradcam import gradcam_overlay  # here, not at the top: torch; `predraft web`
        # imports this module at start-up (through predraft.worklist.context), and only an overlay needs it

        pixels = self._hip(spool_path, side_value, card.input_size)
        data = gradcam_overlay(self.classifier(card_path), pixels, classes.index(hardware), size=THUMBNAIL_SIZE)
        return _write_atomically(target, data)

    def _card_path(self, pack: str) -> Path:
        try:
            return self.settings.model.packs()[pack].card_path
        except KeyError as exc:
            raise ImageUnavailable(f"the pack {pack!r} that read this image is no longer installed") from exc

    def card(self, card_path: Path) -> ModelCard:
        if card_path in self._classifiers:
            return self._classifiers[card_path].card
        return load_card(card_path, verify_weights=False)[0]

    def classifier(self, card_path: Path) -> Classifier:
        """The model of ``card_path``, loaded on its first overlay (Grad-CAM calls on it are serialised by
        predraft.models.gradcam.network_lock)."""
        with self._classifier_lock:
            if card_path not in self._classifiers:
                from predraft.models.factory import load_classifier  # here, not at the top: torch and timm,
                # for the first overlay (`predraft web` imports this module at start-up)

                self._classifiers[card_path] = load_classifier(card_path, self.settings.model.device)
            return self._classifiers[card_path]

    # --- helpers -----------------------------------------------------------------------------------------

    def _hip(self, spool_path: str, side: Side, size: int) -> np.ndarray:
        from predraft.models.prepare import prepare_file  # here, not at the top: scipy, OpenCV, the decoders;
        # `predraft web` imports this module at start-up, and only the first thumbnail needs them

        try:
            # a side asked of an image whose tags name none: the gate may have drafted it from its halves
            prepared = prepare_file(
                Path(spool_path),
                input_size=size,
                voi_window_index=self.settings.model.voi_window_index,
                with_halves=side is not Side.UNKNOWN,
            )
        except Exception as exc:  # any pipeline failure means the same here: nothing to show
            raise ImageUnavailable(f"the image cannot be prepared: {type(exc).__name__}: {exc}") from exc
        for hip in (*prepared.hips, *prepared.halves):
            if hip.side is side:
                return hip.pixels
        raise ImageUnavailable(f"the image shows no {side.value} hip")


def _side(value: str) -> Side:
    try:
        return Side(value)
    except ValueError as exc:
        raise ImageUnavailable(f"side {value!r} is not one of {', '.join(s.value for s in Side)}") from exc


def _safe(uid: str) -> str:
    if not uid or any(char not in "0123456789." for char in uid):
        raise ImageUnavailable(f"{uid!r} is not a DICOM UID")
    return uid


def _png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels)).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def _write_atomically(target: Path, data: bytes) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(dir=target.parent, prefix=".", suffix=".part")
    try:
        with os.fdopen(descriptor, "wb") as file:
            file.write(data)
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return target
