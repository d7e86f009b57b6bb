"""Label model and raters: controls → A/D/V, simulated disagreeing raters, emotion classes."""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from wav2small import LABELS
from wav2small.synth.constants import (
    _RATER_PANEL_KEY,
    CONTROL_CLIP,
    CONTROLS,
    DEFAULT_RATER_BIAS_SD,
    DEFAULT_RATER_NOISE_SD,
    DEFAULT_RATERS,
    EMOTION_CLASSES,
    NEUTRAL_RADIUS,
    WEIGHTS,
)


# --- label model and raters -----------------------------------------------------------------
def sample_controls(rng: np.random.Generator, n: int | None = None) -> np.ndarray:
    """Draw controls u ~ N(0, 1) clipped to +-2.5: shape (10,) or (n, 10)."""
    shape = (len(CONTROLS),) if n is None else (n, len(CONTROLS))
    return np.clip(rng.standard_normal(shape), -CONTROL_CLIP, CONTROL_CLIP)


def _phi(z: np.ndarray) -> np.ndarray:
    erf = np.frompyfunc(math.erf, 1, 1)
    return 0.5 * (1.0 + erf(np.asarray(z, dtype=np.float64) / math.sqrt(2.0)).astype(np.float64))


def labels_from_controls(controls: np.ndarray) -> np.ndarray:
    """True labels y_j = Phi(w_j . u / |w_j|), shape (..., 3) in LABELS order, each in (0, 1)."""
    u = np.asarray(controls, dtype=np.float64)
    if u.shape[-1] != len(CONTROLS):
        raise ValueError(f"controls must have {len(CONTROLS)} columns ({CONTROLS}), got {u.shape}")
    w = WEIGHTS / np.linalg.norm(WEIGHTS, axis=1, keepdims=True)
    return _phi(u @ w.T)


def rater_biases(seed: int, n_raters: int, bias_sd: float) -> np.ndarray:
    """Per-rater, per-dimension biases b_r ~ N(0, bias_sd) of the corpus' rater panel, (R, 3)."""
    return _rater_biases(int(seed), int(n_raters), float(bias_sd)).copy()


@lru_cache(maxsize=16)
def _rater_biases(seed: int, n_raters: int, bias_sd: float) -> np.ndarray:
    rng = np.random.default_rng([seed, _RATER_PANEL_KEY])
    return bias_sd * rng.standard_normal((n_raters, len(LABELS)))


def simulate_raters(
    y_true: np.ndarray, biases: np.ndarray, noise: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Scores of simulated raters and their mean (the published gold label).

    Rater r scores clip i as clip(y_i + b_r + e_ri, 0, 1).

    Args:
        y_true: true labels, (n, 3).
        biases: per-rater biases, (R, 3) (see :func:`rater_biases`).
        noise: per-clip, per-rater noise e_ri, (n, R, 3) (already scaled by its sd).

    Returns:
        ``(gold, scores)``: gold (n, 3) is the rater mean, or ``y_true`` itself when R = 0;
        scores is (n, R, 3).
    """
    y = np.asarray(y_true, dtype=np.float64)
    b, e = np.asarray(biases, dtype=np.float64), np.asarray(noise, dtype=np.float64)
    if e.shape != (y.shape[0], b.shape[0], y.shape[1]):
        raise ValueError(f"noise must be (n, R, 3) = {(y.shape[0], b.shape[0], 3)}, got {e.shape}")
    scores = np.clip(y[:, None, :] + b[None] + e, 0.0, 1.0)
    gold = y.copy() if b.shape[0] == 0 else scores.mean(axis=1)
    return gold, scores


@dataclass(frozen=True)
class RaterPanel:
    """Simulated annotators: ``n_raters`` (0 publishes the true labels), bias and noise sd."""

    n_raters: int = DEFAULT_RATERS
    bias_sd: float = DEFAULT_RATER_BIAS_SD
    noise_sd: float = DEFAULT_RATER_NOISE_SD

    def __post_init__(self) -> None:
        if self.n_raters < 0 or self.bias_sd < 0 or self.noise_sd < 0:
            raise ValueError(f"rater settings must be >= 0, got {self}")


# --- categorical view -------------------------------------------------------------------------
def emotion_class(arousal: float | np.ndarray, valence: float | np.ndarray) -> str | np.ndarray:
    """Map (arousal, valence) in [0, 1] to one of :data:`EMOTION_CLASSES`.

    ``neutral`` inside a disc of radius 0.25 around (0.5, 0.5) (about 20 % of uniform labels);
    otherwise the quadrant: ``happy`` (A >= .5, V >= .5), ``angry`` (A >= .5, V < .5),
    ``sad`` (A < .5, V < .5), ``calm`` (A < .5, V >= .5).
    """
    a, v = np.asarray(arousal, dtype=np.float64), np.asarray(valence, dtype=np.float64)
    high_a, high_v = a >= 0.5, v >= 0.5
    quadrant = np.where(high_a, np.where(high_v, 1, 2), np.where(high_v, 4, 3))
    idx = np.where(np.hypot(a - 0.5, v - 0.5) < NEUTRAL_RADIUS, 0, quadrant)
    if np.ndim(idx) == 0:
        return EMOTION_CLASSES[int(idx)]
    return np.asarray(EMOTION_CLASSES, dtype=object)[idx]
