"""Temperature scaling: calibrated probabilities from a network's logits (Guo et al., 2017).

Fit one temperature T on validation logits by minimising the negative log-likelihood of
``softmax(logits / T)``, measure the expected calibration error before and after, and store T in a new
model card beside the same weights (:func:`write_calibrated_card`); :class:`predraft.models.factory.Classifier`
divides the logits by the card's temperature.

The NLL is convex in the inverse temperature 1/T, so a golden-section search over log(1/T) within
bounds finds its minimum without an optimiser library (numpy only, float64, deterministic).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from predraft.models.card import ModelCard, load_card, write_card

#: Temperatures searched by :func:`fit_temperature`.
TEMPERATURE_BOUNDS = (0.05, 20.0)
_GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0


def _check_logits_labels(logits: object, labels: object, *, scores: str = "logits") -> tuple[np.ndarray, np.ndarray]:
    try:
        values = np.asarray(logits, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{scores} must be an array of numbers: {exc}") from exc
    if values.ndim != 2 or values.shape[0] < 1 or values.shape[1] < 2:
        raise ValueError(
            f"{scores} must be a 2-D array (samples, classes) with at least two classes, got shape {values.shape}"
        )
    if not np.isfinite(values).all():
        raise ValueError(f"{scores} hold {int((~np.isfinite(values)).sum())} non-finite value(s)")
    targets = np.asarray(labels)
    if targets.dtype == np.bool_ or not np.issubdtype(targets.dtype, np.integer):
        raise TypeError(f"labels must be integer class indices, not {targets.dtype}")
    if targets.shape != (values.shape[0],):
        raise ValueError(
            f"labels of shape {targets.shape} do not match {scores} of shape {values.shape}: "
            f"expected ({values.shape[0]},)"
        )
    if targets.min() < 0 or targets.max() >= values.shape[1]:
        raise ValueError(f"labels must lie in [0, {values.shape[1] - 1}], got {targets.min()}..{targets.max()}")
    return values, targets.astype(np.intp)


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """``softmax(logits / temperature)`` over the last axis, in float64."""
    if not temperature > 0 or not math.isfinite(temperature):
        raise ValueError(f"temperature {temperature} must be a positive finite number")
    return np.exp(_log_softmax(np.atleast_2d(np.asarray(logits, dtype=np.float64)) / temperature))


def negative_log_likelihood(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """Mean NLL of ``labels`` under ``softmax(logits / temperature)``."""
    values, targets = _check_logits_labels(logits, labels)
    return _nll(values, targets, 1.0 / temperature)


def _nll(values: np.ndarray, targets: np.ndarray, inverse_temperature: float) -> float:
    log_probs = _log_softmax(values * inverse_temperature)
    return float(-log_probs[np.arange(len(targets)), targets].mean())


def fit_temperature(
    logits: np.ndarray, labels: np.ndarray, *, bounds: tuple[float, float] = TEMPERATURE_BOUNDS, tolerance: float = 1e-5
) -> float:
    """The temperature T in ``bounds`` that minimises the NLL of ``labels`` under ``softmax(logits / T)``.

    ``logits``: (N, C) validation logits (not probabilities); ``labels``: (N,) integer class indices.
    T > 1 softens an over-confident network, T < 1 sharpens an under-confident one.
    """
    values, targets = _check_logits_labels(logits, labels)
    low_t, high_t = bounds
    if not 0 < low_t < high_t or not math.isfinite(high_t):
        raise ValueError(f"bounds {bounds} must be two increasing positive temperatures")
    # Search u = log(1/T); the NLL is convex in 1/T, hence unimodal in u.
    low, high = -math.log(high_t), -math.log(low_t)
    a, b = high - _GOLDEN * (high - low), low + _GOLDEN * (high - low)
    fa, fb = _nll(values, targets, math.exp(a)), _nll(values, targets, math.exp(b))
    while high - low > tolerance:
        if fa <= fb:
            high, b, fb = b, a, fa
            a = high - _GOLDEN * (high - low)
            fa = _nll(values, targets, math.exp(a))
        else:
            low, a, fa = a, b, fb
            b = low + _GOLDEN * (high - low)
            fb = _nll(values, targets, math.exp(b))
    return float(math.exp(-(low + high) / 2.0))


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = 15) -> float:
    """Expected calibration error of the top class: sum over equal-width confidence bins (lo, hi] of
    the bin's share of samples times |accuracy - mean confidence| in it."""
    if isinstance(bins, bool) or not isinstance(bins, int):
        raise TypeError(f"bins must be an int, not {type(bins).__name__}")
    if bins < 1:
        raise ValueError(f"bins {bins} must be at least 1")
    values, targets = _check_logits_labels(probs, labels, scores="probs")
    if values.min() < 0 or values.max() > 1 or not np.allclose(values.sum(axis=1), 1.0, atol=1e-3):
        raise ValueError("probs must be probabilities: each row in [0, 1], summing to 1")
    confidence = values.max(axis=1)
    correct = values.argmax(axis=1) == targets
    which = np.clip(np.ceil(confidence * bins).astype(np.intp) - 1, 0, bins - 1)
    error = 0.0
    for index in range(bins):
        members = which == index
        if members.any():
            error += members.mean() * abs(correct[members].mean() - confidence[members].mean())
    return float(error)


def write_calibrated_card(card_path: Path, out_path: Path, *, temperature: float, version: str | None = None) -> Path:
    """Write a new card at ``out_path``: ``card_path``'s card with ``temperature``, same weights and sha256.

    The source card must load with its weights verified. The new card points at the same weights file
    (relative to its own folder) and gets ``version`` (default: the old one with ``+T<temperature>``), so
    drafts made with it are told apart. Refuses to overwrite the source card or any existing file.
    """
    card_path, out_path = Path(card_path), Path(out_path)
    if isinstance(temperature, bool) or not isinstance(temperature, int | float):
        raise TypeError(f"temperature must be a number, not {type(temperature).__name__}")
    if not temperature > 0 or not math.isfinite(temperature):
        raise ValueError(f"temperature {temperature} must be a positive finite number")
    card, weights_path = load_card(card_path)
    if out_path.exists():
        raise FileExistsError(f"out_path {out_path} exists; a calibrated card is written to a new file")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    weights = os.path.relpath(weights_path, out_path.parent.resolve())
    data = card.model_dump(mode="json") | {
        "temperature": float(temperature),
        "weights": Path(weights).as_posix(),
        "version": version if version is not None else f"{card.version}+T{temperature:.3f}",
    }
    write_card(ModelCard.model_validate(data), out_path)
    load_card(out_path)  # the new card finds its weights and their sha256 matches
    return out_path
