"""Procedural speech-like signals: deterministic per seed, finite, right length, voiced."""

from __future__ import annotations

import numpy as np
import pytest

from wav2small import SAMPLE_RATE
from wav2small.signals import pseudo_speech, pseudo_speech_set


def test_same_seed_same_clip_other_seed_other_clip():
    a = pseudo_speech(1.5, rng=np.random.default_rng(3))
    b = pseudo_speech(1.5, rng=np.random.default_rng(3))
    c = pseudo_speech(1.5, rng=np.random.default_rng(4))
    assert np.array_equal(a, b)
    assert a.shape == c.shape and not np.allclose(a, c)


@pytest.mark.parametrize("seconds, rate", [(1.0, SAMPLE_RATE), (0.73, SAMPLE_RATE), (2.0, 8000)])
def test_length_rate_dtype_and_level(seconds, rate):
    x = pseudo_speech(seconds, rng=np.random.default_rng(0), sample_rate=rate)
    assert x.dtype == np.float32 and x.ndim == 1
    assert len(x) == round(seconds * rate)
    assert np.isfinite(x).all()
    assert abs(float(np.abs(x).max()) - 0.5) < 1e-3  # peak-normalised to 0.5
    assert float(np.sqrt(np.mean(x**2))) > 0.02  # not silence


def test_set_is_reproducible_and_durations_lie_in_range():
    clips = pseudo_speech_set(6, seed=11, seconds=(0.5, 1.5))
    again = pseudo_speech_set(6, seed=11, seconds=(0.5, 1.5))
    other = pseudo_speech_set(6, seed=12, seconds=(0.5, 1.5))
    assert len(clips) == 6
    assert all(np.array_equal(x, y) for x, y in zip(clips, again, strict=True))
    assert [len(x) for x in clips] != [len(x) for x in other]
    for x in clips:
        assert 0.5 * SAMPLE_RATE <= len(x) <= 1.5 * SAMPLE_RATE and np.isfinite(x).all()


def test_clips_are_voiced_with_a_speech_like_pitch():
    """The autocorrelation peaks at a period of a 90–240 Hz voice (±4 semitones of glide)."""
    for seed in range(4):
        x = pseudo_speech(2.0, rng=np.random.default_rng(seed)).astype(np.float64)
        centre = min(max(int(np.argmax(np.abs(x))), 512), len(x) - 512)  # inside a syllable
        frame = x[centre - 512 : centre + 512]
        ac = np.correlate(frame, frame, "full")[len(frame) - 1 :]
        lo, hi = SAMPLE_RATE // 320, SAMPLE_RATE // 60
        lag = lo + int(np.argmax(ac[lo:hi]))
        assert 60 <= SAMPLE_RATE / lag <= 320
        assert ac[lag] > 0.3 * ac[0]
