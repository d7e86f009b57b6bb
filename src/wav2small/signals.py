"""Procedural speech-like signals: a glottal pulse train through moving formants, with syllable
envelopes, pauses and noise. No eSpeak needed, so the runtime paths (export calibration,
benchmarks, tests) can always make audio. For labelled speech use :mod:`wav2small.synth`.
"""

from __future__ import annotations

import numpy as np
from scipy.signal import lfilter

from wav2small import SAMPLE_RATE

FORMANTS_HZ = ((700, 1200, 2600), (300, 2300, 3000), (500, 900, 2400), (400, 1800, 2700))


def _resonator(x: np.ndarray, freq: float, bandwidth: float, sr: int) -> np.ndarray:
    r = np.exp(-np.pi * bandwidth / sr)
    a = [1.0, -2 * r * np.cos(2 * np.pi * freq / sr), r * r]
    return lfilter([1 - r], a, x)


def pseudo_speech(
    seconds: float, *, rng: np.random.Generator, sample_rate: int = SAMPLE_RATE
) -> np.ndarray:
    """One float32 clip of speech-like audio (peak ≈ 0.5).

    Args:
        seconds: duration.
        rng: random generator (the clip is a deterministic function of its state).
        sample_rate: output rate.
    """
    n = int(round(seconds * sample_rate))
    t = np.arange(n) / sample_rate
    f0 = rng.uniform(90, 240) * 2 ** (rng.uniform(-4, 4) / 12 * np.sin(2 * np.pi * t / seconds))
    phase = np.cumsum(f0) / sample_rate
    source = (phase % 1.0) - 0.5  # sawtooth glottal source
    out = np.zeros(n)
    syllable = int(sample_rate / rng.uniform(3, 6))
    for start in range(0, n, syllable):
        seg = slice(start, min(n, start + syllable))
        vowel = FORMANTS_HZ[rng.integers(len(FORMANTS_HZ))]
        part = sum(
            _resonator(source[seg], f, 80 + 40 * i, sample_rate) for i, f in enumerate(vowel)
        )
        env = np.hanning(seg.stop - seg.start) * (rng.random() > 0.15)  # some pauses
        out[seg] = part * env
    out += rng.normal(0, 10 ** (-rng.uniform(20, 40) / 20), n) * np.std(out)
    return (0.5 * out / (np.max(np.abs(out)) + 1e-9)).astype(np.float32)


def pseudo_speech_set(
    count: int,
    *,
    seed: int,
    seconds: tuple[float, float] = (2.0, 6.0),
    sample_rate: int = SAMPLE_RATE,
) -> list[np.ndarray]:
    """``count`` clips of random duration within ``seconds``, reproducible from ``seed``."""
    rng = np.random.default_rng(seed)
    return [
        pseudo_speech(rng.uniform(*seconds), rng=rng, sample_rate=sample_rate) for _ in range(count)
    ]
