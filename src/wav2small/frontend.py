"""Exportable front end: per-utterance normalisation, DFT-convolution power spectrum, log-mel.

The spectrogram is two frozen ``Conv1d`` layers holding the real and imaginary DFT rows (no
``torch.stft``), so the whole model exports to any ONNX runtime. Defaults follow the released
Wav2Small code (``audeering/wav2small``): n_fft 64, hop 32, periodic Hann, no centring, 26 Slaney
mel bands, ``10·log10(max(x, 1e-10))``. Module and buffer names match that release so its state
dict keys line up.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from wav2small import SAMPLE_RATE

N_FFT = 64
HOP = 32
N_MELS = 26
NORM_EPS = 1e-7
AMIN = 1e-10


def prenorm(signal: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
    """Per-utterance normalisation (Dawn, Wav2Small): ``(x − μ) / sqrt(mean((x − μ)²) + 1e-7)``.

    Args:
        signal: (batch, samples) float waveforms.
        lengths: optional (batch,) valid sample counts; padding is excluded from the statistics
            and set to zero in the output.
    """
    if lengths is None:
        signal = signal - signal.mean(1, keepdim=True)
        var = (signal * signal).mean(1, keepdim=True)
        return signal / torch.sqrt(var + NORM_EPS)
    mask = time_mask(lengths, signal.shape[1]).to(signal.dtype)
    n = lengths.to(signal.dtype)[:, None]
    signal = (signal - (signal * mask).sum(1, keepdim=True) / n) * mask
    var = (signal * signal).sum(1, keepdim=True) / n
    return signal / torch.sqrt(var + NORM_EPS)


def time_mask(lengths: torch.Tensor, size: int) -> torch.Tensor:
    """Boolean (batch, size) mask, True where the index is below the length."""
    return torch.arange(size, device=lengths.device)[None, :] < lengths[:, None]


def num_frames(lengths: torch.Tensor, n_fft: int = N_FFT, hop: int = HOP) -> torch.Tensor:
    """Frames of a no-centring framing of ``lengths`` samples."""
    return torch.div(lengths - n_fft, hop, rounding_mode="floor") + 1


def check_length(signal: torch.Tensor, n_fft: int = N_FFT) -> None:
    """Raise ValueError when the input is shorter than one analysis frame."""
    if signal.shape[-1] < n_fft:
        raise ValueError(
            f"input of {signal.shape[-1]} samples is shorter than one frame "
            f"({n_fft} samples = {1000 * n_fft / SAMPLE_RATE:.0f} ms)"
        )


def hann_periodic(n: int) -> np.ndarray:
    """Periodic Hann window (``scipy.signal.get_window('hann', n, fftbins=True)``)."""
    return 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n) / n)


def _hz_to_mel(f: np.ndarray) -> np.ndarray:
    """Slaney mel scale: linear below 1 kHz, logarithmic above (as librosa, ``htk=False``)."""
    f = np.asarray(f, dtype=np.float64)
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, np.log(6.4) / 27.0
    return np.where(
        f >= min_log_hz, min_log_mel + np.log(np.maximum(f, 1e-12) / min_log_hz) / logstep, f / f_sp
    )


def _mel_to_hz(m: np.ndarray) -> np.ndarray:
    m = np.asarray(m, dtype=np.float64)
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, np.log(6.4) / 27.0
    return np.where(m >= min_log_mel, min_log_hz * np.exp(logstep * (m - min_log_mel)), f_sp * m)


def mel_filterbank(
    *,
    sample_rate: int = SAMPLE_RATE,
    n_fft: int = N_FFT,
    n_mels: int = N_MELS,
    fmin: float = 0.0,
    fmax: float | None = None,
) -> np.ndarray:
    """Slaney-normalised triangular mel filters, shape (n_mels, n_fft // 2 + 1).

    Equal to ``librosa.filters.mel(sr, n_fft, n_mels, fmin, fmax)`` (norm='slaney', htk=False).
    With n_fft 64 the lowest bands fall between FFT bins and are empty, as in the release.
    """
    fmax = sample_rate / 2 if fmax is None else fmax
    fft_freqs = np.linspace(0, sample_rate / 2, n_fft // 2 + 1)
    mel_f = _mel_to_hz(np.linspace(_hz_to_mel(fmin), _hz_to_mel(fmax), n_mels + 2))
    fdiff = np.diff(mel_f)
    ramps = mel_f[:, None] - fft_freqs[None, :]
    lower = -ramps[:-2] / fdiff[:-1, None]
    upper = ramps[2:] / fdiff[1:, None]
    weights = np.maximum(0, np.minimum(lower, upper))
    weights *= (2.0 / (mel_f[2:] - mel_f[:-2]))[:, None]
    return weights.astype(np.float32)


class Spectrogram(nn.Module):
    """Power spectrum as two frozen DFT convolutions: (batch, samples) → (batch, freq, frames)."""

    def __init__(self, n_fft: int = N_FFT, hop: int = HOP) -> None:
        super().__init__()
        n_bins = n_fft // 2 + 1
        k, n = np.meshgrid(np.arange(n_bins), np.arange(n_fft), indexing="ij")
        dft = np.exp(-2j * np.pi * k * n / n_fft) * hann_periodic(n_fft)[None, :]
        self.conv_real = nn.Conv1d(1, n_bins, n_fft, stride=hop, bias=False)
        self.conv_imag = nn.Conv1d(1, n_bins, n_fft, stride=hop, bias=False)
        with torch.no_grad():
            self.conv_real.weight.copy_(torch.from_numpy(dft.real[:, None, :].astype(np.float32)))
            self.conv_imag.weight.copy_(torch.from_numpy(dft.imag[:, None, :].astype(np.float32)))
        self.requires_grad_(False)

    def forward(self, signal: torch.Tensor) -> torch.Tensor:
        x = signal[:, None, :]
        return self.conv_real(x) ** 2 + self.conv_imag(x) ** 2


class LogmelFilterBank(nn.Module):
    """Mel projection and dB: (batch, freq, frames) → (batch, 1, frames, n_mels)."""

    def __init__(
        self, *, sample_rate: int = SAMPLE_RATE, n_fft: int = N_FFT, n_mels: int = N_MELS
    ) -> None:
        super().__init__()
        mel = mel_filterbank(sample_rate=sample_rate, n_fft=n_fft, n_mels=n_mels)
        self.register_buffer("melW", torch.from_numpy(mel.T.copy()))
        self.register_buffer("amin", torch.tensor([AMIN]))

    def forward(self, power: torch.Tensor) -> torch.Tensor:
        x = torch.matmul(power.transpose(1, 2)[:, None], self.melW)
        return 10 * torch.log10(torch.maximum(x, self.amin))


class LogMel(nn.Module):
    """The full front end: waveform (batch, samples) → log-mel image (batch, 1, frames, n_mels).

    With ``lengths`` the padding is excluded from the normalisation; frames that touch padding
    are not valid (see :func:`num_frames`) and callers mask them.
    """

    def __init__(self, *, n_fft: int = N_FFT, hop: int = HOP, n_mels: int = N_MELS) -> None:
        super().__init__()
        self.n_fft, self.hop, self.n_mels = n_fft, hop, n_mels
        self.spectrogram_extractor = Spectrogram(n_fft, hop)
        self.logmel_extractor = LogmelFilterBank(n_fft=n_fft, n_mels=n_mels)

    def forward(self, signal: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        check_length(signal, self.n_fft)
        x = prenorm(signal, lengths)
        return self.logmel_extractor(self.spectrogram_extractor(x))
