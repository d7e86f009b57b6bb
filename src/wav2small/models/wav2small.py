"""The Wav2Small family (Kounadis-Bastian et al., arXiv 2408.13920).

Layout (../shared/SPEC.md §1.2, following the released ``audeering/wav2small`` code, whose state
dict keys these module names reproduce):

    waveform ─ prenorm ─ DFT-conv power spectrum ─ 26 log-mel ─ (batch, 1, frames, 26)
      ─ 3 × [Conv3×3 → BN → ReLU] at 500 frames/s ─ MaxPool(3, stride 2) → 250 tokens/s
      ─ 4 × [Conv3×3 → BN → ReLU] ─ attention pooling over time (``lin`` · softmax_t(``sof``))
      ─ [pooled (C×13) ; Gram (C×C)] ─ Linear → arousal, dominance, valence

``stem`` is the channel count of the three full-rate blocks, ``width`` that of the four token-rate
blocks (the released design uses 13 for both). Padding-aware: given ``lengths``, every feature
map is zeroed past each clip's end before the next convolution (exactly what that clip's own
zero padding would see), and the softmax ignores padded tokens, so a clip's output does not
depend on the batch it is in.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from wav2small.frontend import (
    HOP,
    N_MELS,
    LogmelFilterBank,
    Spectrogram,
    check_length,
    num_frames,
    prenorm,
    time_mask,
)

POOLED_MELS = (N_MELS + 1) // 2  # mel bins after the stride-2 max-pool (26 → 13)


@dataclass(frozen=True)
class Wav2SmallConfig:
    """Hyper-parameters of one Wav2Small model.

    Attributes:
        stem: channels of the three blocks before the max-pool (full frame rate, 500 frames/s).
        width: channels of the four blocks after it (250 tokens/s).
        head: hidden units of an optional ReLU layer between the pooled features and the output
            Linear (0: none, as released). Head parameters run once per clip, not per token.
        n_outputs: regression outputs (3: arousal, dominance, valence).
    """

    stem: int = 13
    width: int = 13
    head: int = 0
    n_outputs: int = 3


class Conv(nn.Module):
    """Conv2d 3×3 (no bias) → BatchNorm → ReLU."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)
        self.norm = nn.BatchNorm2d(c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.norm(self.conv(x)))


class Vgg7(nn.Module):
    """Front end, VGG7 trunk and attention/Gram pooling: waveform → flat feature vector."""

    def __init__(self, cfg: Wav2SmallConfig) -> None:
        super().__init__()
        s, w = cfg.stem, cfg.width
        self.spectrogram_extractor = Spectrogram()
        self.logmel_extractor = LogmelFilterBank()
        self.l1, self.l2, self.l3 = Conv(1, s), Conv(s, s), Conv(s, s)
        self.maxpool_A = nn.MaxPool2d(3, stride=2, padding=1)
        self.l4, self.l5, self.l6, self.l7 = Conv(s, w), Conv(w, w), Conv(w, w), Conv(w, w)
        self.lin = nn.Conv2d(w, w, 1)
        self.sof = nn.Conv2d(w, w, 1)
        self.n_features = w * POOLED_MELS + w * w  # pooled map (w × 13) + Gram (w × w)

    def forward(self, signal: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        check_length(signal)
        x = self.logmel_extractor(self.spectrogram_extractor(prenorm(signal, lengths)))
        frames = None if lengths is None else num_frames(lengths)
        for block in (self.l1, self.l2, self.l3):
            x = block(_mask(x, frames))
        x = self.maxpool_A(_mask(x, frames))
        tokens = None if frames is None else torch.div(frames + 1, 2, rounding_mode="floor")
        for block in (self.l4, self.l5, self.l6, self.l7):
            x = block(_mask(x, tokens))
        scores = self.sof(x)
        if tokens is not None:
            pad = ~time_mask(tokens, x.shape[2])[:, None, :, None]
            scores = scores.masked_fill(pad, float("-inf"))
        x = (self.lin(x) * scores.softmax(2)).sum(2)  # (batch, w, 13)
        x = torch.cat([x, torch.bmm(x, x.transpose(1, 2))], 2)
        return x.flatten(1)


def _mask(x: torch.Tensor, frames: torch.Tensor | None) -> torch.Tensor:
    """Zero a (batch, C, time, mel) map past each clip's valid frames."""
    if frames is None:
        return x
    return x * time_mask(frames, x.shape[2])[:, None, :, None].to(x.dtype)


class Wav2Small(nn.Module):
    """Wav2Small: 16 kHz waveform (batch, samples) → (batch, 3) arousal, dominance, valence.

    Args:
        cfg: the model's hyper-parameters.

    The forward takes optional ``lengths`` (batch,) of valid samples for padded batches. Any input
    of at least 64 samples works (0.1 s gives 25 tokens); outputs are unbounded regression values
    (≈ [0, 1] once trained on such targets).
    """

    def __init__(self, cfg: Wav2SmallConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg or Wav2SmallConfig()
        self.vgg7 = Vgg7(self.cfg)
        n_in = self.vgg7.n_features
        if self.cfg.head:
            self.hidden = nn.Linear(n_in, self.cfg.head)
            n_in = self.cfg.head
        self.adv = nn.Linear(n_in, self.cfg.n_outputs)

    def forward(self, signal: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        x = self.vgg7(signal, lengths)
        if self.cfg.head:
            x = torch.relu(self.hidden(x))
        return self.adv(x)

    def config_dict(self) -> dict:
        """Constructor arguments, for checkpoints."""
        return asdict(self.cfg)

    @staticmethod
    def tokens_per_second() -> float:
        """Rate of the token sequence after the max-pool (16000 / 32 / 2 = 250)."""
        return 16000 / HOP / 2
