"""Rendering one planned clip with eSpeak NG plus the channel (runs in a fresh process)."""

from __future__ import annotations

import hashlib
import io
import math
import os
import wave
from pathlib import Path

import numpy as np

from wav2small import SAMPLE_RATE
from wav2small.synth.constants import (
    DITHER_DBFS,
    EFFORT_DB_PER_U,
    LEVEL_DBFS,
    SHELF_HZ,
    TREMOR_DEPTH,
)
from wav2small.synth.plan import ClipPlan, Nuisance


# --- rendering (runs in a fresh process) ------------------------------------------------------
def _frame_power(x: np.ndarray, frame: int) -> np.ndarray:
    n = len(x) // frame
    seg = x[: n * frame].reshape(n, frame)
    return np.einsum("ij,ij->i", seg, seg, dtype=np.float64) / frame + 1e-20


def _active_rms(x: np.ndarray, *, floor_db: float = 40.0) -> float:
    """RMS over 20 ms frames within ``floor_db`` of the loudest frame (active speech)."""
    p = _frame_power(x, SAMPLE_RATE // 50)
    act = p > p.max() * 10 ** (-floor_db / 10)
    return float(np.sqrt(p[act].mean()))


def _trim(x: np.ndarray, *, floor_db: float = 50.0) -> np.ndarray:
    frame = SAMPLE_RATE // 100
    p = _frame_power(x, frame)
    idx = np.flatnonzero(p > p.max() * 10 ** (-floor_db / 10))
    return x[idx[0] * frame : (idx[-1] + 1) * frame]


def _fast_len(n: int) -> int:
    """Smallest 2^a 3^b 5^c >= n (pocketfft is slow on lengths with large prime factors)."""
    best = 1 << int(math.ceil(math.log2(max(n, 1))))
    p5 = 1
    while p5 < best:
        p35 = p5
        while p35 < best:
            m = p35 << max(0, int(math.ceil(math.log2(n / p35))))
            best = min(best, m)
            p35 *= 3
        p5 *= 5
    return best


def _shaped_noise(kind: str, n: int, rng: np.random.Generator) -> np.ndarray:
    """Unit-free float32 noise: white, pink (1/f power), brown (1/f^2 power) or mains hum."""
    if kind == "hum":  # 50 or 60 Hz and 5 harmonics: one period (of 3 for 60 Hz), tiled
        mains, period = (50.0, 320) if rng.random() < 0.5 else (60.0, 800)
        t = np.arange(period) / SAMPLE_RATE
        cycle = sum(
            np.sin(2 * np.pi * mains * k * t + rng.uniform(0, 2 * np.pi)) / k for k in range(1, 7)
        )
        hum = np.tile(cycle.astype(np.float32), n // period + 1)[:n]
        hum += 0.05 * rng.standard_normal(n, dtype=np.float32)
        return hum
    if kind == "white":
        return rng.standard_normal(n, dtype=np.float32)
    m = _fast_len(n)  # coloured noise: a random spectrum shaped by f^-1/2 or f^-1
    f = np.maximum(np.fft.rfftfreq(m, 1 / SAMPLE_RATE).astype(np.float32), 20.0)
    spec = rng.standard_normal(len(f), dtype=np.float32) + 1j * rng.standard_normal(
        len(f), dtype=np.float32
    )
    spec *= f**-0.5 if kind == "pink" else 1 / f
    return np.fft.irfft(spec, m)[:n]


def _room(nz: Nuisance, rng: np.random.Generator) -> np.ndarray:
    """Exponential-decay impulse response: a unit direct path plus a noise tail at DRR."""
    m = int(nz.rt60_s * SAMPLE_RATE)
    t = np.arange(1, m, dtype=np.float32) / SAMPLE_RATE
    tail = rng.standard_normal(m - 1, dtype=np.float32) * np.exp(-6.908 * t / nz.rt60_s)
    tail *= math.sqrt(10 ** (-nz.drr_db / 10) / float(np.sum(tail.astype(np.float64) ** 2)))
    return np.concatenate([np.ones(1, np.float32), tail])


def _filter_response(nz: Nuisance, f: np.ndarray) -> np.ndarray:
    """Zero-phase magnitude: Butterworth-shaped high-pass (4th order), low-pass (6th), shelf."""
    h = np.ones_like(f)
    f = np.maximum(f, 1.0)  # float32: (200 Hz / 1 Hz)^8 still fits
    if nz.highpass_hz > 0:
        h /= np.sqrt(1 + (nz.highpass_hz / f) ** 8)
    if nz.lowpass_hz > 0:
        h /= np.sqrt(1 + (f / nz.lowpass_hz) ** 12)
    if nz.shelf_db != 0:
        above = 1 / np.sqrt(1 + (SHELF_HZ / f) ** 4)
        h *= 1 + (10 ** (nz.shelf_db / 20) - 1) * above
    return h


def _channel(x: np.ndarray, nz: Nuisance, rng: np.random.Generator) -> np.ndarray:
    """Room, high-/low-pass and shelf (one FFT filter), then gain, noise and dither (float32)."""
    n = len(x)
    rir = _room(nz, rng) if nz.rt60_s > 0 else None
    nfft = _fast_len(n + (0 if rir is None else len(rir)))
    spec = np.fft.rfft(x, nfft)
    spec *= _filter_response(nz, np.fft.rfftfreq(nfft, 1 / SAMPLE_RATE).astype(np.float32))
    if rir is not None:
        spec *= np.fft.rfft(rir, nfft)
    y = np.fft.irfft(spec, nfft)[:n]
    y *= 10 ** (nz.gain_db / 20)
    if nz.noise != "none":
        noise = _shaped_noise(nz.noise, n, rng)
        level = _active_rms(y) / 10 ** (nz.snr_db / 20)
        noise *= level / (float(np.sqrt(np.mean(noise.astype(np.float64) ** 2))) + 1e-20)
        y += noise
    dither = rng.random(n, dtype=np.float32)  # rectangular dither, RMS = DITHER_DBFS
    dither -= 0.5
    dither *= math.sqrt(12) * 10 ** (DITHER_DBFS / 20)
    y += dither
    return y


def render_plan(plan: ClipPlan, data_dir: str | os.PathLike) -> np.ndarray:
    """Render one planned clip to int16 samples at 16 kHz.

    Must run in a process that has never synthesised (see :func:`render`); ``data_dir`` comes
    from :func:`wav2small.synth.espeak.make_data_dir`.
    """
    import soxr

    from wav2small.synth.espeak import NATIVE_RATE, Engine

    raw = Engine(data_dir).synthesize(
        plan.ssml, language=plan.language, variant=plan.variant, rate=plan.wpm,
        seed=plan.espeak_seed,
    )  # fmt: skip
    if raw.size == 0 or not np.any(raw):
        raise RuntimeError(f"eSpeak NG produced no audio for {plan.split} clip {plan.index}")
    x = _trim(soxr.resample(raw.astype(np.float32) / 32768, NATIVE_RATE, SAMPLE_RATE))
    nz, u = plan.nuisance, plan.controls
    phase = np.arange(len(x), dtype=np.float32) * np.float32(2 * np.pi * nz.tremor_hz / SAMPLE_RATE)
    tremolo = np.sin(phase + np.float32(nz.tremor_phase))
    tremolo *= TREMOR_DEPTH * 2.0 ** (0.9 * u[9])
    tremolo += 1
    x *= tremolo
    x *= 10 ** ((LEVEL_DBFS + EFFORT_DB_PER_U * u[3]) / 20) / _active_rms(x)
    lead, trail = (round(s * SAMPLE_RATE) for s in (nz.lead_s, nz.trail_s))
    x = np.concatenate([np.zeros(lead, np.float32), x, np.zeros(trail, np.float32)])
    if not plan.clean:
        x = _channel(x, nz, np.random.default_rng(nz.seed))
    np.clip(x, -1.0, 32767 / 32768, out=x)
    x *= 32768
    return np.round(x).astype(np.int16)


def samples_hash(samples: np.ndarray) -> str:
    """Hash of int16 samples (first 16 hex digits of SHA-256 of the little-endian bytes)."""
    return hashlib.sha256(np.asarray(samples, dtype="<i2").tobytes()).hexdigest()[:16]


def _wav_bytes(samples: np.ndarray) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SAMPLE_RATE)
        w.writeframes(np.asarray(samples, dtype="<i2").tobytes())
    return buf.getvalue()


def _atomic_write(path: Path, data: bytes) -> None:
    from wav2small.inputs import write_bytes

    write_bytes(path, data)
