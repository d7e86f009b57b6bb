"""Tests for wav2small.audio: formats, mixdown, resampling, windows, streaming and every error."""

from __future__ import annotations

import logging
import tracemalloc

import numpy as np
import pytest
import soundfile as sf

from wav2small import SAMPLE_RATE
from wav2small.audio import (
    AudioError,
    audio_info,
    iter_windows,
    read_audio,
    to_mono_16k,
    validate,
)

RNG = np.random.default_rng(0)


def sine(freq: float, sr: int, seconds: float, amp: float = 0.5) -> np.ndarray:
    t = np.arange(round(sr * seconds)) / sr
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def write(path, data, sr=SAMPLE_RATE, **kwargs):
    sf.write(path, data, sr, **kwargs)
    return path


def peak_hz(x: np.ndarray, sr: int) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.fft.rfftfreq(len(x), 1 / sr)[spectrum.argmax()])


@pytest.fixture
def wav16k(tmp_path):
    """2 s of noise at 16 kHz, float WAV (exact round trip)."""
    x = RNG.uniform(-0.5, 0.5, 2 * SAMPLE_RATE).astype(np.float32)
    return write(tmp_path / "a.wav", x, subtype="FLOAT"), x


# --- errors: each names the file and the problem -------------------------------------------
@pytest.fixture
def truncated_wav(tmp_path):
    full = write(tmp_path / "full.wav", sine(440, SAMPLE_RATE, 1.0), subtype="PCM_16")
    data = full.read_bytes()
    cut = tmp_path / "cut.wav"
    cut.write_bytes(data[: len(data) // 2])
    return cut


def test_missing_file(tmp_path):
    with pytest.raises(AudioError, match=r"nope\.wav: file does not exist"):
        read_audio(tmp_path / "nope.wav")


def test_zero_byte_file(tmp_path):
    (tmp_path / "empty.wav").write_bytes(b"")
    with pytest.raises(AudioError, match=r"empty\.wav: file is empty \(0 bytes\)"):
        read_audio(tmp_path / "empty.wav")


def test_directory(tmp_path):
    with pytest.raises(AudioError, match="is a directory"):
        read_audio(tmp_path)


def test_random_bytes(tmp_path):
    (tmp_path / "noise.wav").write_bytes(RNG.integers(0, 256, 4000, dtype=np.uint8).tobytes())
    with pytest.raises(AudioError, match=r"noise\.wav: not a readable audio file"):
        read_audio(tmp_path / "noise.wav")


def test_bad_header(tmp_path):
    good = write(tmp_path / "good.wav", sine(440, SAMPLE_RATE, 0.5)).read_bytes()
    (tmp_path / "hdr.wav").write_bytes(good[:30])  # cut inside the header: no data chunk
    with pytest.raises(AudioError, match=r"hdr\.wav: not a readable audio file"):
        read_audio(tmp_path / "hdr.wav")


def test_truncated_wav(truncated_wav):
    for call in (read_audio, audio_info, lambda p: list(iter_windows(p, win=0.1, hop=0.1))):
        with pytest.raises(AudioError, match=r"cut\.wav: file is truncated"):
            call(truncated_wav)


def test_truncated_flac(tmp_path):
    x = RNG.uniform(-0.5, 0.5, SAMPLE_RATE).astype(np.float32)
    data = write(tmp_path / "full.flac", x).read_bytes()
    (tmp_path / "cut.flac").write_bytes(data[: len(data) // 2])
    with pytest.raises(AudioError, match=r"cut\.flac: .*(corrupt|truncated)"):
        read_audio(tmp_path / "cut.flac")


def test_streaming_wav_header_is_not_truncation(tmp_path):
    """Writers that stream leave 0xFFFFFFFF as the data size; that is not a truncated file."""
    path = write(tmp_path / "s.wav", sine(440, SAMPLE_RATE, 0.5), subtype="PCM_16")
    data = bytearray(path.read_bytes())
    pos = data.index(b"data") + 4
    data[pos : pos + 4] = b"\xff\xff\xff\xff"
    path.write_bytes(bytes(data))
    assert len(read_audio(path)) == SAMPLE_RATE // 2


def test_no_samples(tmp_path):
    path = write(tmp_path / "zero.wav", np.zeros((0, 1), np.float32))
    with pytest.raises(AudioError, match=r"zero\.wav: has no samples"):
        read_audio(path)
    with pytest.raises(AudioError, match="has no samples"):
        audio_info(path)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_inf_samples(tmp_path, bad):
    x = sine(440, SAMPLE_RATE, 0.5)
    x[100] = bad
    path = write(tmp_path / "nan.wav", x, subtype="FLOAT")
    with pytest.raises(AudioError, match=r"nan\.wav: contains NaN or Inf samples"):
        read_audio(path)
    with pytest.raises(AudioError, match="contains NaN or Inf"):
        list(iter_windows(path, win=0.1, hop=0.1))


def test_offset_beyond_end(wav16k):
    path, _ = wav16k
    with pytest.raises(AudioError, match=r"a\.wav: offset 2\.000 s is at or beyond the end"):
        read_audio(path, offset=2.0)
    with pytest.raises(AudioError, match="offset must be >= 0"):
        read_audio(path, offset=-1.0)
    with pytest.raises(AudioError, match="duration must be > 0"):
        read_audio(path, duration=0)


def test_validate_arrays():
    with pytest.raises(AudioError, match="clip: has no samples"):
        validate(np.zeros(0, np.float32), "clip")
    with pytest.raises(AudioError, match="clip: contains NaN or Inf samples"):
        validate(np.array([0.0, np.nan]), "clip")
    x = np.zeros(3, np.float32)
    assert validate(x, "clip") is x


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf, 2e4, -1.5e4])
def test_validate_finds_one_bad_sample_anywhere(dtype, bad):
    """Non-finite or absurd samples are refused in every float type, wherever they are (a
    live stream checks each 20 ms chunk with one reduction; no sample may slip through)."""
    for where in (0, 159, 319):
        x = np.full(320, 0.5, np.float32)
        x[where] = bad
        x = x.astype(dtype)
        match = "samples up to" if np.isfinite(x[where]) else "contains NaN or Inf"
        with pytest.raises(AudioError, match=match):
            validate(x, "clip")
    edge = np.full(320, 1e4, np.float32)  # the largest accepted peak, and its negative
    edge[::2] *= -1
    assert validate(edge, "clip") is edge
    assert validate(np.full((160, 2), 0.9), "clip").shape == (160, 2)


def test_to_mono_16k_bad_arrays():
    with pytest.raises(AudioError, match="looks like \\(channels, samples\\)"):
        to_mono_16k(np.zeros((2, 16000), np.float32), SAMPLE_RATE, name="x")
    with pytest.raises(AudioError, match="expected shape"):
        to_mono_16k(np.zeros((4, 2, 2), np.float32), SAMPLE_RATE)
    with pytest.raises(AudioError, match="<array>: has no samples"):
        to_mono_16k(np.zeros(0, np.float32), SAMPLE_RATE)
    with pytest.raises(AudioError, match="unsupported sample type"):
        to_mono_16k(np.zeros(10, np.uint8), SAMPLE_RATE)


# --- formats --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name, subtype, atol",
    [
        ("x.wav", "PCM_U8", 1 / 100),
        ("x.wav", "PCM_16", 1e-4),
        ("x.wav", "PCM_24", 1e-6),
        ("x.wav", "PCM_32", 1e-8),
        ("x.wav", "FLOAT", 0),
        ("x.wav", "DOUBLE", 0),
        ("x.flac", "PCM_16", 1e-4),
        ("x.flac", "PCM_24", 1e-6),
        ("x.ogg", "VORBIS", 0.05),
    ],
)
def test_format_round_trip(tmp_path, name, subtype, atol):
    x = sine(440, SAMPLE_RATE, 1.0)
    path = write(tmp_path / name, x, subtype=subtype)
    y = read_audio(path)
    assert y.dtype == np.float32 and y.ndim == 1 and len(y) == len(x)
    np.testing.assert_allclose(y, x, atol=atol)


def test_audio_info(tmp_path):
    path = write(tmp_path / "s.flac", np.zeros((22050, 2), np.float32), sr=44100)
    info = audio_info(path)
    assert (info.path, info.sample_rate, info.channels, info.frames) == (str(path), 44100, 2, 22050)
    assert info.duration == pytest.approx(0.5) and info.format == "FLAC"


# --- mixdown and resampling -----------------------------------------------------------------
def test_stereo_mixdown_is_mean(tmp_path, caplog):
    left, right = sine(440, SAMPLE_RATE, 0.5), RNG.uniform(-0.4, 0.4, 8000).astype(np.float32)
    path = write(tmp_path / "st.wav", np.stack([left, right], axis=1), subtype="FLOAT")
    with caplog.at_level(logging.DEBUG, logger="wav2small.audio"):
        y = read_audio(path)
    np.testing.assert_allclose(y, (left + right) / 2, atol=1e-7)
    assert "mixed 2 channels" in caplog.text and "st.wav" in caplog.text


def test_in_memory_input():
    stereo = np.stack([np.full(100, 0.2), np.full(100, 0.6)], axis=1)
    np.testing.assert_allclose(to_mono_16k(stereo, SAMPLE_RATE), 0.4, atol=1e-7)
    pcm = np.full(50, 16384, np.int16)
    np.testing.assert_allclose(to_mono_16k(pcm, SAMPLE_RATE), 0.5)
    y = to_mono_16k(sine(1000, 8000, 1.0).astype(np.float64), 8000)
    assert y.dtype == np.float32 and len(y) == SAMPLE_RATE


@pytest.mark.parametrize("sr", [44100, 8000])
def test_resampling_keeps_length_and_frequency(tmp_path, sr):
    x = sine(1000, sr, 1.5)
    y = read_audio(write(tmp_path / "r.wav", x, sr=sr, subtype="FLOAT"))
    assert len(y) == round(len(x) * SAMPLE_RATE / sr)
    assert peak_hz(y, SAMPLE_RATE) == pytest.approx(1000, abs=2)
    assert np.sqrt(np.mean(y[1000:-1000] ** 2)) == pytest.approx(0.5 / np.sqrt(2), rel=0.01)


def test_upsampling_warns(tmp_path, caplog):
    low = write(tmp_path / "low.wav", sine(440, 8000, 0.5), sr=8000)
    high = write(tmp_path / "high.wav", sine(440, 44100, 0.5), sr=44100)
    with caplog.at_level(logging.WARNING, logger="wav2small.audio"):
        read_audio(high)
        assert not caplog.records
        read_audio(low)
    assert [r.levelno for r in caplog.records] == [logging.WARNING]
    assert "low.wav: upsampling from 8000 Hz" in caplog.text


# --- windows --------------------------------------------------------------------------------
def test_window_read_equals_slice(wav16k):
    path, x = wav16k
    full = read_audio(path)
    np.testing.assert_array_equal(full, x)
    np.testing.assert_array_equal(read_audio(path, offset=0.5, duration=0.25), full[8000:12000])
    np.testing.assert_array_equal(read_audio(path, offset=1.5, duration=9.0), full[24000:])


def test_window_read_resampled_matches_middle_of_slice(tmp_path):
    path = write(tmp_path / "h.wav", sine(440, 44100, 2.0), sr=44100, subtype="FLOAT")
    full, win = read_audio(path), read_audio(path, offset=0.5, duration=0.25)
    assert len(win) == 4000
    np.testing.assert_allclose(win[200:-200], full[8200:11800], atol=1e-5)


def test_iter_windows_concatenate_to_full_read(tmp_path):
    x = np.stack([sine(300, 44100, 3.3), sine(700, 44100, 3.3)], axis=1)
    path = write(tmp_path / "long.wav", x, sr=44100, subtype="FLOAT")
    windows = list(iter_windows(path, win=0.5, hop=0.5, block_seconds=0.7))
    full = read_audio(path)
    np.testing.assert_allclose(np.concatenate([w for _, _, w in windows]), full, atol=1e-6)
    assert [s for s, _, _ in windows] == pytest.approx([0.5 * k for k in range(7)])
    assert windows[-1][1] == pytest.approx(len(full) / SAMPLE_RATE)
    assert all(len(w) == round((e - s) * SAMPLE_RATE) for s, e, w in windows)


def test_iter_windows_overlap_and_tail(wav16k):
    path, x = wav16k  # 2.0 s
    windows = list(iter_windows(path, win=0.75, hop=0.5, block_seconds=0.3))
    assert [(s, e) for s, e, _ in windows] == [(0, 0.75), (0.5, 1.25), (1.0, 1.75), (1.5, 2.0)]
    for s, e, w in windows:
        np.testing.assert_array_equal(w, x[round(s * SAMPLE_RATE) : round(e * SAMPLE_RATE)])


def test_iter_windows_exact_fit_and_short_file(wav16k):
    path, x = wav16k
    assert [(s, e) for s, e, _ in iter_windows(path, win=1.0, hop=0.5)] == [
        (0, 1.0),
        (0.5, 1.5),
        (1.0, 2.0),
    ]  # no redundant tail window after one ending at 2.0
    [(s, e, w)] = iter_windows(path, win=5.0, hop=1.0)
    assert (s, e) == (0, 2.0) and np.array_equal(w, x)
    with pytest.raises(ValueError, match="must be > 0"):
        iter_windows(path, win=1.0, hop=0)


def test_iter_windows_file_errors_are_eager(tmp_path):
    with pytest.raises(AudioError, match=r"gone\.wav: file does not exist"):
        iter_windows(tmp_path / "gone.wav", win=1.0, hop=1.0)  # no next() needed


def test_iter_windows_bounded_memory(tmp_path):
    minutes = 10
    x = (0.3 * RNG.standard_normal(minutes * 60 * SAMPLE_RATE)).clip(-1, 1).astype(np.float32)
    path = write(tmp_path / "ten_min.wav", x, subtype="PCM_16")
    file_bytes, decoded_bytes = path.stat().st_size, x.nbytes
    del x
    tracemalloc.start()
    try:
        total = sum(len(w) for _, _, w in iter_windows(path, win=4.0, hop=4.0, block_seconds=5))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert total == minutes * 60 * SAMPLE_RATE
    assert peak < file_bytes / 8 and peak < decoded_bytes / 16  # ~19 MB file, ~38 MB decoded
