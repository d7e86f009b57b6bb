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

from wav2small import SAMPLE_RATE
from wav2small.frontend import (
    N_MELS,
    NORM_EPS,
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
    """Front end, VGG7 trunk and attention/Gram pooling: waveform → flat feature vector.

    The forward is the composition of explicit stages (used one by one for chunked and online
    inference, see :class:`Wav2Small`): :meth:`features` → :meth:`trunk` → :meth:`token_maps`
    → :func:`attention_pool` → :func:`pooled_features`.
    """

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

    # -- stages --
    def features(
        self,
        signal: torch.Tensor,
        lengths: torch.Tensor | None = None,
        norm: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Normalisation + front end: (batch, samples) → log-mel image (batch, 1, frames, mels).

        ``norm`` (batch or 1, 2) = (mean, scale) replaces the per-utterance statistics (the
        whole file's, for chunked inference); ``scale`` is ``sqrt(variance + 1e-7)``.
        """
        check_length(signal)
        x = prenorm(signal, lengths) if norm is None else (signal - norm[:, :1]) / norm[:, 1:]
        return self.logmel_extractor(self.spectrogram_extractor(x))

    def trunk(self, image: torch.Tensor, frames: torch.Tensor | None = None) -> torch.Tensor:
        """Convolutions: image (batch, 1, frames, mels) → token map (batch, C, tokens, F')."""
        x = image
        for block in (self.l1, self.l2, self.l3):
            x = block(_mask(x, frames))
        x = self.maxpool_A(_mask(x, frames))
        tokens = None if frames is None else frames_to_tokens(frames)
        for block in (self.l4, self.l5, self.l6, self.l7):
            x = block(_mask(x, tokens))
        return x

    def token_maps(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-token attention maps ``lin``, ``sof``: each (batch, C, tokens, F')."""
        return self.lin(x), self.sof(x)

    def trunk_layers(self) -> list[nn.Module]:
        """The trunk's time-axis layers in order (Conv2d / MaxPool2d), for the receptive field."""
        convs = [b.conv for b in (self.l1, self.l2, self.l3)]
        return [*convs, self.maxpool_A, *[b.conv for b in (self.l4, self.l5, self.l6, self.l7)]]

    def forward(self, signal: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        frames = None if lengths is None else num_frames(lengths)
        x = self.trunk(self.features(signal, lengths), frames)
        lin, sof = self.token_maps(x)
        tokens = None if frames is None else frames_to_tokens(frames)
        return pooled_features(attention_pool(lin, sof, tokens))


def frames_to_tokens(frames: torch.Tensor) -> torch.Tensor:
    """Valid tokens after the stride-2 max-pool (padding 1) of ``frames`` valid frames."""
    return torch.div(frames + 1, 2, rounding_mode="floor")


def attention_pool(
    lin: torch.Tensor, sof: torch.Tensor, tokens: torch.Tensor | None = None
) -> torch.Tensor:
    """``sum_t lin · softmax_t(sof)`` over the token axis: (batch, C, T, F') → (batch, C, F').

    With ``tokens`` (batch,) the padded tokens are ignored. It can be accumulated over chunks of
    tokens exactly (running max and sums), which chunked inference does in numpy.
    """
    if tokens is not None:
        pad = ~time_mask(tokens, sof.shape[2])[:, None, :, None]
        sof = sof.masked_fill(pad, float("-inf"))
    return (lin * sof.softmax(2)).sum(2)


def pooled_features(pooled: torch.Tensor) -> torch.Tensor:
    """[pooled ; Gram(pooled)] flattened: (batch, C, F') → (batch, C·F' + C·C)."""
    x = torch.cat([pooled, torch.bmm(pooled, pooled.transpose(1, 2))], 2)
    return x.flatten(1)


def _mask(x: torch.Tensor, frames: torch.Tensor | None) -> torch.Tensor:
    """Zero a (batch, C, time, mel) map past each clip's valid frames."""
    if frames is None:
        return x
    return x * time_mask(frames, x.shape[2])[:, None, :, None].to(x.dtype)


def time_receptive_field(layers: list[nn.Module]) -> tuple[int, int, int]:
    """(stride, left, right) of a stack of Conv2d/MaxPool2d layers along the time axis (dim 2).

    Output index ``i`` depends on input indices ``i·stride − left … i·stride + right``
    (inclusive), ``stride`` being the product of the layers' time strides.
    """
    lo, hi = 0, 0  # input range of output index 0, composed from the last layer backwards
    for layer in reversed(layers):
        k, s, p, d = (
            _pair(getattr(layer, a))[0] for a in ("kernel_size", "stride", "padding", "dilation")
        )
        lo, hi = lo * s - p, hi * s - p + d * (k - 1)
    stride = 1
    for layer in layers:
        stride *= _pair(layer.stride)[0]
    return stride, -lo, hi


def _pair(v) -> tuple[int, int]:
    return tuple(v) if isinstance(v, tuple | list) else (v, v)


class Wav2Small(nn.Module):
    """Wav2Small: 16 kHz waveform (batch, samples) → (batch, 3) arousal, dominance, valence.

    Args:
        cfg: the model's hyper-parameters.

    The forward takes optional ``lengths`` (batch,) of valid samples for padded batches. Any input
    of at least 64 samples works (0.1 s gives 25 tokens); outputs are unbounded regression values
    (≈ [0, 1] once trained on such targets).

    Stages (``forward`` is exactly their composition)::

        features(signal, lengths, norm) → trunk(image, frames) → token_maps(x) → (lin, sof)
        → attention_pool(lin, sof, tokens) → head(pooled) → (batch, 3)

    Token ``t`` covers samples ``[t·S, (t+1)·S)`` with ``S = token_samples()`` and depends only
    on samples ``[t·S − left, t·S + right)``, ``(left, right) = receptive_field()`` (with fixed
    normalisation statistics, see ``features``): so the trunk can run chunk by chunk with that
    overlap, and the softmax pooling can be accumulated online (running max and sums).
    """

    #: Normalisation of the input: "utterance" (whole-input mean/RMS; chunked inference needs
    #: the whole file's statistics first) or "local" (tokens depend on nearby samples only).
    norm = "utterance"

    def __init__(self, cfg: Wav2SmallConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg or Wav2SmallConfig()
        self.vgg7 = Vgg7(self.cfg)
        n_in = self.vgg7.n_features
        if self.cfg.head:
            self.hidden = nn.Linear(n_in, self.cfg.head)
            n_in = self.cfg.head
        self.adv = nn.Linear(n_in, self.cfg.n_outputs)

    # -- stages --
    def features(
        self,
        signal: torch.Tensor,
        lengths: torch.Tensor | None = None,
        norm: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Stage 1: waveform → log-mel image (see :meth:`Vgg7.features`)."""
        return self.vgg7.features(signal, lengths, norm)

    def trunk(self, image: torch.Tensor, frames: torch.Tensor | None = None) -> torch.Tensor:
        """Stage 2: image → token map (batch, C, tokens, F')."""
        return self.vgg7.trunk(image, frames)

    def token_maps(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Stage 3: per-token attention maps (lin, sof)."""
        return self.vgg7.token_maps(x)

    def tokens(
        self, signal: torch.Tensor, norm: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Stages 1–3 on unpadded input: waveform → (lin, sof), each (batch, C, tokens, F')."""
        return self.token_maps(self.trunk(self.features(signal, None, norm)))

    def head(self, pooled: torch.Tensor) -> torch.Tensor:
        """Stage 5: pooled map (batch, C, F') → [pooled ; Gram] → MLP → (batch, n_outputs)."""
        x = pooled_features(pooled)
        if self.cfg.head:
            x = torch.relu(self.hidden(x))
        return self.adv(x)

    def forward(self, signal: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        frames = None if lengths is None else num_frames(lengths)
        lin, sof = self.token_maps(self.trunk(self.features(signal, lengths), frames))
        tokens = None if frames is None else frames_to_tokens(frames)
        return self.head(attention_pool(lin, sof, tokens))

    # -- geometry --
    def frame_geometry(self) -> tuple[int, int]:
        """(window, hop) of the front end's frames, in samples."""
        conv = self.vgg7.spectrogram_extractor.conv_real
        return conv.kernel_size[0], conv.stride[0]

    def token_samples(self) -> int:
        """Samples per token (64: hop 32, then a stride-2 pool)."""
        stride, _, _ = time_receptive_field(self.vgg7.trunk_layers())
        return self.frame_geometry()[1] * stride

    def tokens_per_second(self) -> float:
        """Rate of the token sequence (16000 / 64 = 250)."""
        return SAMPLE_RATE / self.token_samples()

    def receptive_field(self) -> tuple[int, int]:
        """(left, right) samples: token ``t`` depends only on samples ``[t·S − left, t·S + right)``.

        Computed from the layers (frame window/hop, then each trunk layer's kernel, stride,
        padding and dilation along time), for fixed normalisation statistics.
        """
        window, hop = self.frame_geometry()
        stride, left, right = time_receptive_field(self.vgg7.trunk_layers())
        # token t ↔ frames t·stride − left … t·stride + right;
        # frame j ↔ samples [j·hop, j·hop + window)
        return left * hop, right * hop + window

    def num_tokens(self, n_samples: int) -> int:
        """Tokens of an unpadded input of ``n_samples`` samples."""
        window, hop = self.frame_geometry()
        frames = (n_samples - window) // hop + 1
        stride, _, _ = time_receptive_field(self.vgg7.trunk_layers())
        return -(-frames // stride)

    def config_dict(self) -> dict:
        """Constructor arguments, for checkpoints."""
        return asdict(self.cfg)


class StagedExport(nn.Module):
    """The ONNX export form of a Wav2Small model: one graph, usable plain or stage by stage.

    ``forward(signal, norm, pooled) → (adv, lin, sof)`` (no ``norm`` for a local-normalisation
    model). Exported with ``norm`` and ``pooled`` as *optional* inputs (ONNX inputs with a
    default initializer; ONNX Runtime lists only ``signal`` as required), so ``model.onnx``
    stays a plain signal → A/D/V model:

    * ``norm`` (batch or 1, 2) = (mean, scale): the normalisation statistics to use instead of
      the input's own; default NaN = the input's own (one pass). Chunked inference passes the
      whole file's. Only for ``norm == "utterance"`` models.
    * ``pooled`` (P, C, F'): extra pooled maps whose head outputs are appended after the
      signal's rows (default: 0 rows). The head of an online pooling runs through it on a
      64-sample dummy signal.
    * outputs ``lin`` and ``sof`` (batch, C, tokens, F'): the per-token attention maps.
    """

    def __init__(self, model: Wav2Small) -> None:
        super().__init__()
        self.model = model

    @property
    def utterance_norm(self) -> bool:
        """Whether the model normalises per utterance (then the graph has the ``norm`` input)."""
        return getattr(self.model, "norm", "utterance") == "utterance"

    def pooled_shape(self) -> tuple[int, int]:
        """(C, F') of the pooled map the head takes."""
        if hasattr(self.model, "pooled_shape"):
            return tuple(self.model.pooled_shape())
        return self.model.cfg.width, POOLED_MELS

    def forward(
        self, signal: torch.Tensor, first: torch.Tensor, second: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(signal, norm, pooled)`` for utterance-normalised models, ``(signal, pooled)`` else."""
        check_length(signal)
        if self.utterance_norm:
            norm, pooled = first, second
            mean = signal.mean(1, keepdim=True)
            centred = signal - mean
            scale = torch.sqrt((centred * centred).mean(1, keepdim=True) + NORM_EPS)
            mean = torch.where(torch.isnan(norm[:, :1]), mean, norm[:, :1])
            scale = torch.where(torch.isnan(norm[:, 1:]), scale, norm[:, 1:])
            lin, sof = self.model.tokens(signal, torch.cat([mean, scale], 1))
        else:
            pooled = first
            lin, sof = self.model.tokens(signal)
        pooled = torch.cat([attention_pool(lin, sof), pooled], 0)
        return self.model.head(pooled), lin, sof

    def example_inputs(self) -> tuple[torch.Tensor, ...]:
        """Inputs for tracing: 2 × 1 s of noise, (NaN statistics,) 2 extra pooled maps."""
        g = torch.Generator().manual_seed(0)
        signal = torch.zeros(2, SAMPLE_RATE).normal_(generator=g)
        pooled = torch.zeros(2, *self.pooled_shape()).normal_(generator=g)
        if self.utterance_norm:
            return signal, torch.full((1, 2), float("nan")), pooled
        return signal, pooled

    def defaults(self) -> dict[str, torch.Tensor]:
        """Default values of the optional inputs (stored as initializers)."""
        from wav2small.export import NORM_INPUT, POOLED_INPUT

        out = {POOLED_INPUT: torch.zeros(0, *self.pooled_shape())}
        if self.utterance_norm:
            out[NORM_INPUT] = torch.full((1, 2), float("nan"))
        return out
