"""Simple acoustic correlates of the controls (tests, the learnability benchmark)."""

from __future__ import annotations

import math

import numpy as np

from wav2small import SAMPLE_RATE
from wav2small.synth.render import _frame_power


# --- analysis: simple acoustic correlates (tests, learnability benchmark) ---------------------
def _frames(x: np.ndarray, frame: int, hop: int) -> np.ndarray:
    if len(x) < frame:
        x = np.pad(x, (0, frame - len(x)))
    return np.lib.stride_tricks.sliding_window_view(x, frame)[::hop]


def f0_track(x: np.ndarray, sr: int = SAMPLE_RATE) -> tuple[np.ndarray, np.ndarray]:
    """Autocorrelation F0 track (40 ms frames, 10 ms hop, 60-450 Hz).

    Returns:
        ``(f0, strength)`` per frame: F0 in Hz (NaN when unvoiced) and the normalised
        autocorrelation peak (a periodicity / harmonicity measure).
    """
    x = np.asarray(x, dtype=np.float64)
    frame, hop = int(0.04 * sr), int(0.01 * sr)
    fr = _frames(x, frame, hop)
    fr = fr - fr.mean(axis=1, keepdims=True)
    win = np.hanning(frame)
    nfft = 1 << int(math.ceil(math.log2(2 * frame)))
    ac = np.fft.irfft(np.abs(np.fft.rfft(fr * win, nfft)) ** 2, nfft)[:, :frame]
    wac = np.fft.irfft(np.abs(np.fft.rfft(win, nfft)) ** 2, nfft)[:frame]
    r = ac / (ac[:, :1] + 1e-20) / (wac / wac[0])
    lo, hi = int(sr / 450), int(sr / 60)
    seg = r[:, lo : hi + 1]
    is_peak = (seg[:, 1:-1] > seg[:, :-2]) & (seg[:, 1:-1] >= seg[:, 2:])
    good = is_peak & (seg[:, 1:-1] >= 0.85 * seg.max(axis=1, keepdims=True))
    k = np.argmax(good, axis=1) + 1
    rows = np.arange(len(seg))
    a, b, c = seg[rows, k - 1], seg[rows, k], seg[rows, k + 1]
    shift = np.clip(0.5 * (a - c) / (a - 2 * b + c - 1e-12), -0.5, 0.5)
    f0 = sr / (lo + k + shift)
    power = np.mean(fr**2, axis=1) + 1e-20
    voiced = good.any(axis=1) & (b > 0.5) & (power > power.max() * 10 ** (-35 / 10))
    return np.where(voiced, f0, np.nan), np.where(voiced, b, 0.0)


def _f0_measures(x: np.ndarray, sr: int) -> dict[str, float]:
    f0, strength = f0_track(x, sr)
    voiced = ~np.isnan(f0)
    out = {"voiced_frac": float(voiced.mean())}
    if voiced.sum() < 3:
        return out | {"f0_median": math.nan, "f0_iqr_st": 0.0, "f0_slope": 0.0, "harmonicity": 0.0}
    st = 12 * np.log2(f0[voiced] / np.median(f0[voiced]))
    t = np.flatnonzero(voiced) * 0.01
    keep = np.abs(st) < 12  # drop octave errors
    slope = np.polyfit(t[keep], st[keep], 1)[0] if keep.sum() >= 3 else 0.0
    q75, q25 = np.percentile(st, [75, 25])
    return out | {
        "f0_median": float(np.median(f0[voiced])),
        "f0_iqr_st": float(q75 - q25),
        "f0_slope": float(slope),
        "harmonicity": float(strength[voiced].mean()),
    }


def _spectral_measures(x: np.ndarray, sr: int) -> dict[str, float]:
    spec = np.abs(np.fft.rfft(_frames(x, 512, 256) * np.hanning(512), axis=1)) ** 2
    freqs = np.fft.rfftfreq(512, 1 / sr)
    total = spec.sum(axis=1) + 1e-20
    loud = total > total.max() * 10 ** (-35 / 10)
    high, low = spec[loud][:, freqs >= 1000].sum(), spec[loud][:, freqs < 1000].sum()
    signs = np.signbit(x[np.abs(x) > 1e-4])
    return {
        "tilt_db": float(10 * np.log10((high + 1e-20) / (low + 1e-20))),
        "centroid_hz": float(np.mean((spec[loud] @ freqs) / total[loud])),
        "zcr": float(np.mean(signs[1:] != signs[:-1])) if signs.size > 1 else 0.0,
    }


def _envelope_measures(db: np.ndarray, span: slice, span_s: float) -> dict[str, float]:
    """Syllable rate (peaks of the smoothed 10 ms energy envelope) and 4-7 Hz modulation."""
    env = np.convolve(db, np.ones(5) / 5, mode="same")
    is_peak = (env[1:-1] > env[:-2]) & (env[1:-1] >= env[2:]) & (env[1:-1] > db.max() - 25)
    peaks = np.flatnonzero(is_peak)
    kept = [q for i, q in enumerate(peaks) if i == 0 or q - peaks[i - 1] >= 8]
    amp = 10 ** (db[span] / 20)
    mod = np.abs(np.fft.rfft(amp - amp.mean())) ** 2
    mf = np.fft.rfftfreq(len(amp), 0.01)
    share = mod[(mf >= 4) & (mf <= 7)].sum() / (mod[(mf >= 1) & (mf <= 20)].sum() + 1e-20)
    return {"syllable_rate": len(kept) / max(span_s, 1e-3), "am_4_7hz": float(share)}


def acoustic_correlates(x: np.ndarray, sr: int = SAMPLE_RATE) -> dict[str, float]:
    """Utterance-level acoustic measures of a clip (int16, or float in [-1, 1]).

    Keys: ``rms_db`` (active-speech level, dBFS), ``level_sd_db``, ``f0_median`` (Hz),
    ``f0_iqr_st``, ``f0_slope`` (semitones/s over the utterance), ``voiced_frac``,
    ``harmonicity`` (mean autocorrelation peak of voiced frames), ``syllable_rate``
    (energy peaks per second of speech), ``silence_frac`` (pauses inside the speech span),
    ``speech_s`` (first to last active frame, seconds), ``tilt_db`` (energy above 1 kHz minus
    below, active frames), ``centroid_hz``, ``zcr``, ``am_4_7hz`` (share of the energy
    envelope's modulation at 4-7 Hz) and ``duration``.  Used by the tests and the learnability
    benchmark; a diagnostic, not a feature extractor for models.
    """
    arr = np.asarray(x)
    x = arr.astype(np.float64) / (32768.0 if arr.dtype.kind in "iu" else 1.0)
    hop = sr // 100
    p = _frame_power(x, hop)
    db = 10 * np.log10(p)
    active = db > db.max() - 35
    idx = np.flatnonzero(active)
    span = slice(idx[0], idx[-1] + 1)
    span_s = (idx[-1] + 1 - idx[0]) * hop / sr
    out: dict[str, float] = {
        "rms_db": float(10 * np.log10(p[active].mean())),
        "level_sd_db": float(np.std(db[active])),
        "silence_frac": float(1.0 - active[span].mean()),
        "speech_s": span_s,
        "duration": len(x) / sr,
    }
    out.update(_f0_measures(x, sr))
    out.update(_spectral_measures(x, sr))
    out.update(_envelope_measures(db, span, span_s))
    return out


def control_correlations(values: np.ndarray, controls: np.ndarray) -> np.ndarray:
    """Pearson r of every output column with every hidden control of the built-in corpus.

    What a model's valence *follows*: the corpus makes each label a known mix of ten controls
    (docs/SYNTH.md, ``CONTROLS``), so r(predicted valence, ``rough``) near the gold labels' own r
    means the model hears roughness, and near 0 that it does not. A diagnostic for evaluation
    (``cues.csv``), not a score.

    Args:
        values: (n, d) predictions or labels.
        controls: (n, k) the clips' control values (the CSV's ``f0 … tremor`` columns).

    Returns:
        (d, k) correlations; NaN where a column is constant (no correlation is defined).

    Raises:
        ValueError: shapes that do not pair clips, or non-finite values.
    """
    y = np.asarray(values, dtype=np.float64)
    u = np.asarray(controls, dtype=np.float64)
    if y.ndim != 2 or u.ndim != 2 or len(y) != len(u) or len(y) < 2:
        raise ValueError(
            f"need (n, d) values and (n, k) controls, n >= 2; got {y.shape}, {u.shape}"
        )
    if not (np.isfinite(y).all() and np.isfinite(u).all()):
        raise ValueError("control correlations need finite values and controls")
    y = y - y.mean(0)
    u = u - u.mean(0)
    norm = np.sqrt((y * y).sum(0))[:, None] * np.sqrt((u * u).sum(0))[None, :]
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (y.T @ u) / norm
    return np.where(norm > 0, r, np.nan)
