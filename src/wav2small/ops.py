"""Shared tensor ops of every model (students, teachers, exits): masks, normalisation, pooling.

One place for what the front end, the teachers and the early-exit models all need: a boolean
time mask from lengths, per-utterance normalisation that ignores padding, a masked mean over
time, and the receptive field of a strided conv stack. torch only; no package imports, so any
module can use it without import cycles.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

#: Per-utterance normalisation epsilon (Wav2Vec2FeatureExtractor with do_normalize=True).
NORM_EPS = 1e-7


def time_mask(lengths: torch.Tensor, size: int) -> torch.Tensor:
    """Boolean (batch, size) mask, True where the index is below each row's length."""
    return torch.arange(size, device=lengths.device)[None, :] < lengths[:, None]


def prenorm(
    signal: torch.Tensor, lengths: torch.Tensor | None = None, eps: float = NORM_EPS
) -> torch.Tensor:
    """Per-utterance normalisation ``(x − μ) / sqrt(mean((x − μ)²) + eps)`` (Dawn, Wav2Small).

    Args:
        signal: (batch, samples) float waveforms.
        lengths: optional (batch,) valid sample counts; padding is excluded from the statistics
            and set to zero in the output.
        eps: added to the variance.
    """
    if lengths is None:
        signal = signal - signal.mean(1, keepdim=True)
        var = (signal * signal).mean(1, keepdim=True)
        return signal / torch.sqrt(var + eps)
    mask = time_mask(lengths, signal.shape[1]).to(signal.dtype)
    n = lengths.to(signal.dtype)[:, None]
    signal = (signal - (signal * mask).sum(1, keepdim=True) / n) * mask
    var = (signal * signal).sum(1, keepdim=True) / n
    return signal / torch.sqrt(var + eps)


def masked_mean(x: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
    """Mean over time of (batch, time, dim) within each row's length (all frames when None)."""
    if lengths is None:
        return x.mean(dim=1)
    m = time_mask(lengths, x.shape[1]).to(x.dtype)[..., None]
    return (x * m).sum(1) / lengths.to(x.dtype)[:, None].clamp(min=1)


def receptive_field(kernels: Sequence[int], strides: Sequence[int]) -> int:
    """Samples needed for one output frame of a strided conv stack."""
    field, jump = 1, 1
    for k, s in zip(kernels, strides, strict=True):
        field += (k - 1) * jump
        jump *= s
    return field


__all__ = ["NORM_EPS", "masked_mean", "prenorm", "receptive_field", "time_mask"]
