"""Audio input: read any file soundfile reads, mix to mono, resample to 16 kHz, validate.

Everything in wav2small works on float32 mono signals at :data:`wav2small.SAMPLE_RATE` (16 kHz):

* multi-channel audio is mixed down with the mean over channels (logged at DEBUG);
* other sample rates are resampled with soxr (``"HQ"`` quality); upsampling from below 16 kHz logs
  a WARNING, since the missing high band cannot be recovered;
* every problem raises :class:`AudioError`, whose message names the file and the problem
  (missing, empty, corrupt, truncated, no samples, an implausible header sample rate,
  NaN/Inf samples, offset past the end).

In-memory signals follow the soundfile convention: shape ``(samples,)`` or ``(samples, channels)``.
Long files can be streamed window by window in bounded memory with :func:`iter_windows`.
"""

from __future__ import annotations

import logging
import math
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import soundfile as sf
import soxr

from wav2small import SAMPLE_RATE
from wav2small.errors import NonFiniteError, UserError

logger = logging.getLogger(__name__)

#: soxr quality preset used for every resampling.
RESAMPLE_QUALITY = "HQ"
#: Seconds of audio read from disk at a time by :func:`iter_windows`.
BLOCK_SECONDS = 10.0
#: Plausible native sample rates (Hz). A header outside this range is a lie or a damaged file:
#: 400 KB of 16-bit samples "at 1 Hz" would otherwise plan 55 hours of audio.
MIN_SAMPLE_RATE = 1000
MAX_SAMPLE_RATE = 768_000
#: Formats whose RIFF header is checked for truncation (libsndfile silently shortens those).
_RIFF_FORMATS = ("WAV", "WAVEX")
#: Placeholder data sizes that streaming writers leave in a WAV header.
_UNKNOWN_DATA_SIZES = (0, 0xFFFFFFFF)


class AudioError(UserError):
    """Audio that cannot be used; the message names the file and the problem (a user error)."""


class NonFiniteAudioError(AudioError, NonFiniteError):
    """NaN/Inf samples, or samples too large to be audio (they overflow float32 once squared)."""


@dataclass(frozen=True)
class AudioInfo:
    """What the header of a validated audio file says.

    Attributes:
        path: the file.
        sample_rate: native sample rate in Hz.
        channels: number of channels.
        frames: number of samples per channel.
        duration: length in seconds (``frames / sample_rate``).
        format: container, e.g. ``"WAV"``, ``"FLAC"``, ``"OGG"``.
        subtype: sample encoding, e.g. ``"PCM_16"``, ``"FLOAT"``, ``"VORBIS"``.
    """

    path: str
    sample_rate: int
    channels: int
    frames: int
    duration: float
    format: str = ""
    subtype: str = ""


# --- validation -----------------------------------------------------------------------------
#: Largest |sample| accepted (full scale is 1; beyond this is not audio, and squaring it for
#: the models' log-mel or normalisation statistics overflows float32).
MAX_ABS_SAMPLE = 1e4
_FAST_SUM_SQUARES = MAX_ABS_SAMPLE**2 / 4  # validate(): Σx² up to this puts every |x| ≤ M/2


def validate(signal: np.ndarray, name: str = "<array>") -> np.ndarray:
    """Check that a signal has samples, all finite and within ±:data:`MAX_ABS_SAMPLE`.

    Args:
        signal: audio samples, any shape.
        name: file name (or label) used in the error message.

    Returns:
        The same ``signal``, so the call can be chained.

    Raises:
        AudioError: if the signal is empty, contains NaN or Inf, or samples beyond
            ±:data:`MAX_ABS_SAMPLE`.
    """
    kind = signal.dtype.kind
    if (
        kind == "f"
        and signal.ndim == 1
        and signal.size
        and float(signal.dot(signal)) <= _FAST_SUM_SQUARES  # float(): a float16 limit is inf
    ):
        return signal  # one BLAS call (a live stream checks every 20 ms; ndarray.dot costs a
        # third of np.vdot's ≈ 1.5 µs there): Σx² is NaN/Inf if a sample is, and Σx² ≤ M²/4
        # puts every |x| ≤ M/2, far from any rounding doubt
    if signal.size == 0:
        raise AudioError(f"{name}: has no samples")
    if kind in "iub":  # PCM is finite and bounded
        return signal
    flat = signal.ravel()
    if kind == "f" and float(flat.dot(flat)) <= _FAST_SUM_SQUARES:
        return signal  # the same for other shapes
    peak = float(np.abs(signal).max()) if kind == "f" else math.nan
    if not peak <= MAX_ABS_SAMPLE and not np.isfinite(signal).all():
        raise NonFiniteAudioError(f"{name}: contains NaN or Inf samples")
    if peak > MAX_ABS_SAMPLE:
        raise NonFiniteAudioError(
            f"{name}: samples up to {peak:.3g} (full scale is 1; more than "
            f"{MAX_ABS_SAMPLE:g} is not audio)"
        )
    return signal


def _check_path(path: str) -> None:
    if not os.path.exists(path):
        raise AudioError(f"{path}: file does not exist")
    if os.path.isdir(path):
        raise AudioError(f"{path}: is a directory, not an audio file")
    if os.path.getsize(path) == 0:
        raise AudioError(f"{path}: file is empty (0 bytes)")


def _open(path: str) -> sf.SoundFile:
    _check_path(path)
    try:
        return sf.SoundFile(path)
    except sf.LibsndfileError as e:
        raise AudioError(
            f"{path}: not a readable audio file (corrupt or unsupported format): {e.error_string}"
        ) from e


def _check_riff_data_size(path: str) -> None:
    """Raise if a WAV header promises more audio data than the file holds.

    libsndfile quietly reports the frames that are present, so a WAV cut short (an interrupted
    copy or download) would otherwise read as a shorter, valid file.
    """
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        magic = f.read(4)
        if magic not in (b"RIFF", b"RIFX"):
            return
        endian = "<" if magic == b"RIFF" else ">"
        f.seek(12)
        while True:
            header = f.read(8)
            if len(header) < 8:
                return
            chunk_id, chunk_size = header[:4], struct.unpack(endian + "I", header[4:])[0]
            if chunk_id == b"data":
                present = size - f.tell()
                if chunk_size not in _UNKNOWN_DATA_SIZES and present < chunk_size:
                    raise AudioError(
                        f"{path}: file is truncated: its header declares {chunk_size} bytes of "
                        f"audio data but only {present} are present"
                    )
                return
            f.seek(chunk_size + chunk_size % 2, os.SEEK_CUR)


def _info(f: sf.SoundFile, path: str) -> AudioInfo:
    if f.format in _RIFF_FORMATS:
        _check_riff_data_size(path)
    if f.frames <= 0:
        raise AudioError(f"{path}: has no samples")
    if not MIN_SAMPLE_RATE <= f.samplerate <= MAX_SAMPLE_RATE:
        raise AudioError(
            f"{path}: implausible sample rate {f.samplerate} Hz in the header (expected "
            f"{MIN_SAMPLE_RATE}-{MAX_SAMPLE_RATE} Hz; {f.frames} frames would be "
            f"{f.frames / f.samplerate / 3600:.1f} h): a damaged or mislabelled file"
        )
    return AudioInfo(
        path, f.samplerate, f.channels, f.frames, f.frames / f.samplerate, f.format, f.subtype
    )


def audio_info(path: str | os.PathLike) -> AudioInfo:
    """Read and validate the header of an audio file without decoding its samples.

    Args:
        path: audio file (anything soundfile reads: WAV, FLAC, OGG, ...).

    Returns:
        The file's :class:`AudioInfo`.

    Raises:
        AudioError: if the file is missing, empty, corrupt, truncated (WAV) or has no samples.
            NaN/Inf samples are only found when the samples are read.
    """
    path = os.fspath(path)
    with _open(path) as f:
        return _info(f, path)


# --- conversion -----------------------------------------------------------------------------
def _as_float32(signal: np.ndarray, name: str) -> np.ndarray:
    if signal.dtype.kind == "f":
        return signal.astype(np.float32, copy=False)
    if signal.dtype.kind == "i":  # full-scale PCM, as soundfile scales it
        return (signal / float(2 ** (8 * signal.dtype.itemsize - 1))).astype(np.float32)
    raise AudioError(f"{name}: unsupported sample type {signal.dtype} (use float or signed int)")


def _mono(signal: np.ndarray, name: str) -> np.ndarray:
    if signal.ndim == 1:
        return signal
    if signal.ndim != 2:
        raise AudioError(
            f"{name}: expected shape (samples,) or (samples, channels), got {signal.shape}"
        )
    samples, channels = signal.shape
    if channels > samples:
        raise AudioError(
            f"{name}: shape {signal.shape} looks like (channels, samples); "
            "pass (samples, channels), e.g. signal.T"
        )
    if channels == 1:
        return signal[:, 0]
    logger.debug("%s: mixed %d channels down to mono (mean)", name, channels)
    return signal.mean(axis=1, dtype=np.float32)


def _warn_upsampling(name: str, sample_rate: int, target: int) -> None:
    if sample_rate < target:
        logger.warning(
            "%s: upsampling from %d Hz to %d Hz; there is no content above %g Hz",
            name,
            sample_rate,
            target,
            sample_rate / 2,
        )


def _convert(signal: np.ndarray, sample_rate: int, target: int, name: str) -> np.ndarray:
    signal = _mono(_as_float32(validate(np.asarray(signal), name), name), name)
    if sample_rate <= 0:
        raise AudioError(f"{name}: invalid sample rate {sample_rate}")
    if sample_rate != target:
        _warn_upsampling(name, sample_rate, target)
        signal = soxr.resample(signal, sample_rate, target, quality=RESAMPLE_QUALITY)
        if signal.size == 0:
            raise AudioError(f"{name}: too short to resample from {sample_rate} Hz")
    return np.ascontiguousarray(signal, dtype=np.float32)


def to_mono_16k(signal: np.ndarray, sample_rate: int, *, name: str = "<array>") -> np.ndarray:
    """Turn an in-memory signal into float32 mono at 16 kHz.

    Args:
        signal: samples of shape ``(samples,)`` or ``(samples, channels)`` (soundfile's
            convention, *not* torch's ``(channels, samples)``). Float values are taken as they
            are (full scale is ±1); signed integer PCM is scaled to ±1.
        sample_rate: sample rate of ``signal`` in Hz.
        name: label used in log and error messages.

    Returns:
        1-D float32 array at :data:`wav2small.SAMPLE_RATE`.

    Raises:
        AudioError: if the signal is empty, has NaN/Inf, or has an unusable shape or dtype.
    """
    return _convert(signal, sample_rate, SAMPLE_RATE, name)


# --- reading --------------------------------------------------------------------------------
def _read(f: sf.SoundFile, frames: int, path: str) -> np.ndarray:
    try:
        data = f.read(frames, dtype="float32", always_2d=True)
    except sf.LibsndfileError as e:
        raise AudioError(
            f"{path}: could not be decoded (corrupt or truncated): {e.error_string}"
        ) from e
    if len(data) < frames:
        raise AudioError(
            f"{path}: file is truncated or corrupt: expected {frames} frames, "
            f"could read only {len(data)}"
        )
    return data


def _window_frames(info: AudioInfo, offset: float, duration: float | None) -> tuple[int, int]:
    if offset < 0:
        raise AudioError(f"{info.path}: offset must be >= 0, got {offset}")
    if duration is not None and duration <= 0:
        raise AudioError(f"{info.path}: duration must be > 0, got {duration}")
    start = round(offset * info.sample_rate)
    if start >= info.frames:
        raise AudioError(
            f"{info.path}: offset {offset:.3f} s is at or beyond the end of the "
            f"file ({info.duration:.3f} s)"
        )
    stop = info.frames if duration is None else start + round(duration * info.sample_rate)
    return start, min(max(stop, start + 1), info.frames)


def read_audio(
    path: str | os.PathLike,
    *,
    offset: float = 0.0,
    duration: float | None = None,
    sample_rate: int = SAMPLE_RATE,
) -> np.ndarray:
    """Read an audio file (or a window of it) as float32 mono at ``sample_rate``.

    Only the requested window is decoded: the file is opened, seeked to ``offset`` and read for
    ``duration`` seconds. A window that runs past the end of the file is cut at the end.

    Args:
        path: audio file; anything soundfile reads (WAV, FLAC, OGG, ...; 8/16/24/32-bit PCM,
            32/64-bit float).
        offset: start of the window in seconds.
        duration: length of the window in seconds; ``None`` reads to the end.
        sample_rate: output sample rate (default 16 kHz).

    Returns:
        1-D float32 array.

    Raises:
        AudioError: missing, empty, corrupt or truncated file, no samples, NaN/Inf samples,
            offset beyond the end.
    """
    path = os.fspath(path)
    with _open(path) as f:
        info = _info(f, path)
        start, stop = _window_frames(info, offset, duration)
        if start:
            f.seek(start)
        data = _read(f, stop - start, path)
    return _convert(data, info.sample_rate, sample_rate, path)


def _stream(path: str, sample_rate: int, block_seconds: float) -> Iterator[np.ndarray]:
    """Yield the file as consecutive mono chunks at ``sample_rate``, one disk block at a time."""
    with _open(path) as f:
        info = _info(f, path)
        if info.channels > 1:
            logger.debug("%s: mixing %d channels down to mono (mean)", path, info.channels)
        _warn_upsampling(path, info.sample_rate, sample_rate)
        block = max(1, round(block_seconds * info.sample_rate))
        resampler = None
        if info.sample_rate != sample_rate:
            resampler = soxr.ResampleStream(
                info.sample_rate, sample_rate, 1, dtype="float32", quality=RESAMPLE_QUALITY
            )
        done = 0
        while done < info.frames:
            data = _read(f, min(block, info.frames - done), path)
            done += len(data)
            mono = validate(data, path).mean(axis=1, dtype=np.float32)
            if resampler is not None:
                mono = resampler.resample_chunk(mono, last=done >= info.frames)
            yield mono


def iter_blocks(
    path: str | os.PathLike,
    *,
    block_seconds: float = BLOCK_SECONDS,
    sample_rate: int = SAMPLE_RATE,
) -> Iterator[np.ndarray]:
    """Stream a file as consecutive float32 mono blocks at ``sample_rate`` (bounded memory).

    Each disk block of ``block_seconds`` is mixed to mono and resampled as a stream (soxr
    ``ResampleStream``), so the concatenated blocks equal the resampled file.

    Raises:
        AudioError: as :func:`read_audio` (file problems at call time, NaN/Inf when read).
    """
    path = os.fspath(path)
    if block_seconds <= 0:
        raise ValueError(f"block_seconds must be > 0, got {block_seconds}")
    audio_info(path)  # file errors surface here, not at the first next()
    return _stream(path, sample_rate, block_seconds)


def iter_windows(
    path: str | os.PathLike,
    *,
    win: float,
    hop: float,
    sample_rate: int = SAMPLE_RATE,
    block_seconds: float = BLOCK_SECONDS,
) -> Iterator[tuple[float, float, np.ndarray]]:
    """Stream fixed-length windows over a long file in bounded memory.

    The file is decoded ``block_seconds`` at a time, mixed to mono and resampled as a stream
    (identical to resampling the whole file at once), so memory stays at about
    ``win + hop + block_seconds`` seconds of audio whatever the file's length.

    Windows start at ``0, hop, 2*hop, ...`` (in samples at ``sample_rate``). Tail handling:
    a window is yielded full-length while it fits; the first window that would pass the end of
    the file is yielded *shorter* (it holds the remaining samples) and is the last one. So a file
    shorter than ``win`` gives exactly one window with the whole file, windows never repeat the
    same tail, and with ``hop <= win`` every sample is in at least one window.

    Args:
        path: audio file.
        win: window length in seconds.
        hop: distance between window starts in seconds.
        sample_rate: output sample rate (default 16 kHz).
        block_seconds: seconds read from disk at a time.

    Returns:
        An iterator of ``(start_s, end_s, samples)``: window start and end in seconds and the
        float32 mono samples (``end_s - start_s`` seconds of them).

    Raises:
        AudioError: as :func:`read_audio`, at call time for file problems; NaN/Inf samples
            are found (and raised from the iterator) when their block is read.
        ValueError: if ``win``, ``hop`` or ``block_seconds`` is not positive.
    """
    path = os.fspath(path)
    if win <= 0 or hop <= 0 or block_seconds <= 0:
        raise ValueError(
            f"win, hop and block_seconds must be > 0, got {win}, {hop}, {block_seconds}"
        )
    audio_info(path)  # file errors surface here, not at the first next()
    win_n, hop_n = max(1, round(win * sample_rate)), max(1, round(hop * sample_rate))
    windows = _windows(_stream(path, sample_rate, block_seconds), win_n, hop_n)
    return ((start / sample_rate, end / sample_rate, w) for start, end, w in windows)


def _windows(
    chunks: Iterator[np.ndarray], win_n: int, hop_n: int
) -> Iterator[tuple[int, int, np.ndarray]]:
    """Cut a stream of chunks into windows; sample indices are absolute (see iter_windows)."""
    buf, first, start, exhausted = np.zeros(0, np.float32), 0, 0, False
    while True:
        have = first + len(buf)  # samples seen so far
        if not exhausted and have <= start + win_n:  # need one sample past the window
            chunk = next(chunks, None)
            if chunk is None:
                exhausted = True
            else:
                buf = np.concatenate([buf, chunk])
            continue
        if start >= have:
            return
        end = min(start + win_n, have)
        yield start, end, buf[start - first : end - first].copy()
        if exhausted and end == have:
            return
        start += hop_n
        drop = min(start - first, len(buf))
        buf, first = buf[drop:], first + drop
