"""The Wav2Small family (Kounadis-Bastian et al., arXiv 2408.13920).

Layout (../shared/SPEC.md §1.2, following the released ``audeering/wav2small`` code, whose state
dict keys these module names reproduce):

    waveform ─ prenorm ─ DFT-conv power spectrum ─ 26 log-mel ─ (batch, 1, frames, 26)
      ─ 3 × [Conv3×3 → BN → ReLU] at 500 frames/s ─ MaxPool(3, stride 2) → 250 tokens/s
      ─ 4 × [Conv3×3 → BN → ReLU] ─ attention pooling over time (``lin`` · softmax_t(``sof``))
      ─ [pooled (C×13) ; Gram (C×C)] ─ Linear → arousal, dominance, valence

``stem`` is the channel count of the three full-rate blocks, ``width`` that of the four token-rate
blocks (the released design uses 13 for both). ``wav2small-tiny`` is exactly that design.

``frontend="pitch"`` (``wav2small-paper``, :class:`PitchNet`) replaces it with an input that
resolves the harmonics of a voice and a trunk that runs at the token rate::

    waveform ─ [prenorm] ─ PitchLogSpec: 31 DFT bins 62–1000 Hz of a 32 ms window (4× decimated)
      + 12 mels 1–8 kHz of a 4 ms window, hop 64 ─ dB ─ [LocalNorm] ─ (batch, 43, frames, 1)
      [+ PitchSalience of the 31 low rows: 48 pitch candidates 55–440 Hz, soft-argmax F0,
      voicing ─ 50 more rows]
      ─ Conv(3×1) rows → W ─ dilated Conv(3×1) W → W per ``dilations`` at 250 frames/s
      ─ lin, sof (1×1, W → P) ─ attention pooling ─ [pooled (P) ; Gram (P×P)] ─ Linear → A/D/V
      [+ trd (1×1, W → K) ─ trend pooling (slope over the clip) ─ K more head inputs, or with
      ``trend_gram`` q = [pooled ; trend] and the head reads [q ; Gram(q)]]

(docs/DISTILL.md, "Front-end study", says why.) Padding-aware: given ``lengths``, every feature
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
    LocalNorm,
    LogmelFilterBank,
    PitchLogSpec,
    PitchSalience,
    Spectrogram,
    Subharmonic,
    check_length,
    num_frames,
)
from wav2small.ops import NORM_EPS, prenorm, time_mask

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
        frontend: ``"released"`` (n_fft 64, 26 log-mels at 500 frames/s, VGG7 trunk: the
            fields below are unused) or ``"pitch"`` (:class:`~wav2small.frontend.PitchLogSpec`
            at ``hop``, a dilated time-convolution trunk of ``width`` channels: :class:`PitchNet`).
        norm: ``"utterance"`` (zero mean, unit RMS waveform) or ``"local"`` (dB image minus its
            mean over ``2·norm_frames + 1`` frames: :class:`~wav2small.frontend.LocalNorm`).
        n_fft, hop, decimate, low_fmin, low_fmax, n_fft_high, n_mels, fmax: the pitch front end.
        dilations: one 3-tap time convolution per entry after the first, with that dilation.
        pool: channels of the ``lin``/``sof`` attention maps of the pitch trunk.
        pitch_bins, pitch_fmin, pitch_fmax: with ``pitch_bins`` > 0, the pitch trunk also reads
            a frozen :class:`~wav2small.frontend.PitchSalience` of the low band at that many
            log-spaced candidates ``pitch_fmin``–``pitch_fmax`` Hz, plus its soft-argmax F0 and
            voicing rows (``pitch_bins + 2`` more input channels).
        trend: with ``trend`` > 0 (pitch trunk only), a 1×1 map ``trd`` of that many channels
            whose slope over the valid tokens (:func:`trend_pool`) the head also reads: an
            order-aware, utterance-level pooling ("later tokens are higher"), exactly computable
            online from running sums (``tokens.OnlinePool``, ``tokens.WindowPool``).
        trend_gram: with ``trend`` > 0, the trend poolings join the pooled vector before the
            Gram: the head reads ``[q ; q·qᵀ]`` with ``q = [pooled ; trend]`` instead of
            ``[pooled ; Gram(pooled) ; trend]``, so it can weigh a slope by the clip's other
            pooled features (its F0 level and span, its voice) and by the other slopes.
            The trend, its online sums and the staged graph's inputs are unchanged.
        level: with ``norm="local"``, one more input row: the local mean level that the
            normalisation subtracts, in dB above :data:`~wav2small.frontend.LEVEL_REF_DB`
            (``LocalNorm(level_row=True)``). The model then hears absolute loudness (a teacher
            that keeps level, like the built-in one, uses it for arousal and dominance) and is
            no longer gain-invariant; tokens still depend on ±``norm_frames`` frames only.
        shr_fft, shr_decimate, shr_fmax: with ``shr_fft`` > 0 (pitch front end), one more
            input row: the subharmonic-to-harmonic ratio (:class:`~wav2small.frontend.Subharmonic`)
            of a third band, DFT bins ``low_fmin``–``shr_fmax`` of a ``shr_fft``-sample window
            on a ``shr_decimate``× decimated signal. Per frame and gain-invariant; it makes
            a rough voice (weaker alternate glottal cycles) audible to the trunk.
    """

    stem: int = 13
    width: int = 13
    head: int = 0
    n_outputs: int = 3
    frontend: str = "released"
    norm: str = "utterance"
    norm_frames: int = 125
    n_fft: int = 512
    hop: int = 64
    decimate: int = 4
    low_fmin: float = 60.0
    low_fmax: float = 1000.0
    n_fft_high: int = 64
    n_mels: int = 12
    fmax: float = 8000.0
    dilations: tuple[int, ...] = (1, 2, 4, 8)
    pool: int = 30
    pitch_bins: int = 0
    pitch_fmin: float = 55.0
    pitch_fmax: float = 440.0
    trend: int = 0
    trend_gram: bool = False
    level: bool = False
    shr_fft: int = 0
    shr_decimate: int = 8
    shr_fmax: float = 600.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "dilations", tuple(self.dilations))
        if self.frontend not in ("released", "pitch"):
            raise ValueError(f"frontend must be 'released' or 'pitch', not {self.frontend!r}")
        if self.norm not in ("utterance", "local"):
            raise ValueError(f"norm must be 'utterance' or 'local', not {self.norm!r}")
        if self.frontend == "released" and self.norm != "utterance":
            raise ValueError("the released front end uses norm='utterance'")
        if self.frontend == "released" and self.pitch_bins:
            raise ValueError("pitch_bins needs frontend='pitch'")
        if self.frontend == "released" and self.trend:
            raise ValueError("trend needs frontend='pitch'")
        if self.trend_gram and not self.trend:
            raise ValueError("trend_gram needs trend > 0")
        if self.level and self.norm != "local":
            raise ValueError("level needs norm='local'")
        if self.frontend == "released" and self.shr_fft:
            raise ValueError("shr_fft needs frontend='pitch'")


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

    def frames(self, lengths: torch.Tensor) -> torch.Tensor:
        """Valid frames of ``lengths`` samples."""
        return num_frames(lengths)

    def frames_to_tokens(self, frames: torch.Tensor) -> torch.Tensor:
        """Valid tokens of ``frames`` valid frames."""
        return frames_to_tokens(frames)

    def frame_geometry(self) -> tuple[int, int]:
        """(window, hop) of the front end's frames, in samples."""
        conv = self.spectrogram_extractor.conv_real
        return conv.kernel_size[0], conv.stride[0]

    def pooled_shape(self) -> tuple[int, int]:
        """(C, F') of the pooled map."""
        return self.lin.out_channels, POOLED_MELS

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


class TimeConv(nn.Module):
    """Conv2d (3, 1) over time (no bias, given dilation) → BatchNorm → ReLU on (batch, C, T, 1).

    A 2-D convolution with a 1-wide kernel rather than a Conv1d: ONNX export gives a 4-D ``Conv``
    that the int8 quantiser treats as a trunk layer (rank-3 weights are the frozen front end).
    Outside ONNX export it runs as a Conv1d (:func:`conv_time`; a wav2small-paper step on
    8 × 2 s: ≈ 0.3 → 0.14 s on one thread).
    """

    def __init__(self, c_in: int, c_out: int, dilation: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(
            c_in, c_out, (3, 1), padding=(dilation, 0), dilation=(dilation, 1), bias=False
        )
        self.norm = nn.BatchNorm2d(c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.norm(conv_time(self.conv, x)))


def conv_time(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """``conv(x)`` for a (k, 1) Conv2d on (batch, C, T, 1), run as a Conv1d outside ONNX export.

    The same weights and outputs; PyTorch's CPU kernels train a (3, 1) Conv2d ≈ 3× slower than
    the Conv1d, and a 1×1 one falls back to a slow backward. The export keeps the 4-D ``Conv``
    that the int8 quantiser treats as a trunk layer.
    """
    if torch.onnx.is_in_onnx_export():
        return conv(x)
    w = conv.weight[..., 0]
    y = nn.functional.conv1d(
        x[..., 0], w, conv.bias, conv.stride[0], conv.padding[0], conv.dilation[0]
    )
    return y[..., None]


class PitchNet(nn.Module):
    """The pitch-resolving design: waveform → flat feature vector, in four stages.

    ``features``: normalisation + :class:`~wav2small.frontend.PitchLogSpec` → dB image
    (batch, bands, frames, 1) at 250 frames/s, with ``pitch_bins`` > 0 plus the rows of a frozen
    :class:`~wav2small.frontend.PitchSalience` (computed per frame from the un-normalised low
    band: gain-invariant by itself); ``trunk``: a 3-tap time convolution from all rows
    to ``width`` channels, then one dilated 3-tap convolution per ``dilations`` entry (every
    frame sees the whole spectrum, so a layer can match harmonic templates: pitch);
    ``lin``/``sof``: 1×1 maps to ``pool`` channels (batch, pool, tokens, 1); pooling
    Σ_t lin·softmax_t(sof) and its Gram (outer product, the F' = 1 case of the released Gram).
    Each trunk layer costs its parameter count in MACs per token: ≈ 65K MAC × 250 tokens/s.
    """

    def __init__(self, cfg: Wav2SmallConfig) -> None:
        super().__init__()
        self.spec = PitchLogSpec(
            n_fft=cfg.n_fft,
            hop=cfg.hop,
            decimate=cfg.decimate,
            low_fmin=cfg.low_fmin,
            low_fmax=cfg.low_fmax,
            n_fft_high=cfg.n_fft_high,
            n_mels=cfg.n_mels,
            fmax=cfg.fmax,
            shr_fft=cfg.shr_fft,
            shr_decimate=cfg.shr_decimate,
            shr_fmax=cfg.shr_fmax,
        )
        self.local_norm = LocalNorm(cfg.norm_frames) if cfg.norm == "local" else None
        self.salience = None
        self.subharmonic = Subharmonic(self.spec.shr_hz) if cfg.shr_fft else None
        n_in = self.spec.n_bands + int(cfg.level) + int(cfg.shr_fft > 0)
        self.level = cfg.level
        if cfg.pitch_bins:
            self.salience = PitchSalience(
                self.spec.low_hz, n_pitches=cfg.pitch_bins, fmin=cfg.pitch_fmin, fmax=cfg.pitch_fmax
            )
            n_in += self.salience.n_rows
        w = cfg.width
        self.l0 = TimeConv(n_in, w)
        self.blocks = nn.ModuleList(TimeConv(w, w, d) for d in cfg.dilations)
        self.lin = nn.Conv2d(w, cfg.pool, 1)
        self.sof = nn.Conv2d(w, cfg.pool, 1)
        self.trd = nn.Conv2d(w, cfg.trend, 1) if cfg.trend else None
        self.n_trend = cfg.trend
        self.trend_gram = cfg.trend_gram
        q = cfg.pool + cfg.trend if cfg.trend_gram else cfg.pool
        self.n_features = q + q * q + (0 if cfg.trend_gram else cfg.trend)

    def frames(self, lengths: torch.Tensor) -> torch.Tensor:
        """Valid frames (= tokens) of ``lengths`` samples."""
        return self.spec.frames(lengths)

    def frames_to_tokens(self, frames: torch.Tensor) -> torch.Tensor:
        """Valid tokens of ``frames`` valid frames (the same: one token per frame)."""
        return frames

    def frame_geometry(self) -> tuple[int, int]:
        """(window, hop) of the front end's frames, in samples."""
        return self.spec.span, self.spec.hop

    def pooled_shape(self) -> tuple[int, int]:
        """(C, F') of the pooled map."""
        return self.lin.out_channels, 1

    # -- stages --
    def features(
        self,
        signal: torch.Tensor,
        lengths: torch.Tensor | None = None,
        norm: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Normalisation + front end: (batch, samples) → dB image (batch, bands, frames, 1).

        ``norm`` (batch or 1, 2) = (mean, scale) replaces the per-utterance statistics of an
        ``"utterance"`` model; a ``"local"`` model ignores it (it needs no statistics).
        """
        if self.local_norm is not None:
            frames = None if lengths is None else self.frames(lengths)
            raw = self.spec(signal)
            image = self.local_norm(raw[..., : self.spec.n_bands], frames, level_row=self.level)
        else:
            x = prenorm(signal, lengths) if norm is None else (signal - norm[:, :1]) / norm[:, 1:]
            raw = self.spec(x)
            image = raw[..., : self.spec.n_bands]
        # per frame and gain-invariant: after any normalisation
        if self.salience is not None:
            image = torch.cat([image, self.salience(raw[..., : self.spec.n_low])], 2)
        if self.subharmonic is not None:
            image = torch.cat([image, self.subharmonic(raw[..., self.spec.n_bands :])], 2)
        return image.transpose(1, 2)[..., None]

    def trunk(self, image: torch.Tensor, frames: torch.Tensor | None = None) -> torch.Tensor:
        """(batch, bands, T, 1) → token map (batch, width, T, 1), zero past each clip's frames."""
        x = self.l0(_mask(image, frames))
        for block in self.blocks:
            x = block(_mask(x, frames))
        return x

    def token_maps(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-token attention maps ``lin``, ``sof``: each (batch, pool, tokens, 1)."""
        return conv_time(self.lin, x), conv_time(self.sof, x)

    def trunk_layers(self) -> list[nn.Module]:
        """Time-axis layers after the framing, in order (for the receptive field): the local
        normalisation's box filter, then the trunk's convolutions."""
        norm = [] if self.local_norm is None else [self.local_norm.box]
        return [*norm, self.l0.conv, *[b.conv for b in self.blocks]]

    def trend_map(self, x: torch.Tensor) -> torch.Tensor | None:
        """The per-token ``trd`` map (batch, trend, tokens, 1) of a token map, or None."""
        return None if self.trd is None else conv_time(self.trd, x)

    def forward(self, signal: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        frames = None if lengths is None else self.frames(lengths)
        x = self.trunk(self.features(signal, lengths), frames)
        lin, sof = self.token_maps(x)
        pooled = attention_pool(lin, sof, frames)
        trend = None if self.trd is None else trend_pool(self.trend_map(x), frames)[..., 0]
        q, rest = gram_input(pooled, trend, trend_gram=self.trend_gram)
        x = pooled_features(q)
        return x if rest is None else torch.cat([x, rest], 1)


def gram_input(
    pooled: torch.Tensor, trend: torch.Tensor | None, *, trend_gram: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(pooled, trend) as the head's Gram sees them: with ``trend_gram`` the trend rows join the
    pooled map, (batch, C + K, 1), and no trend is left over."""
    if trend_gram and trend is not None:
        return torch.cat([pooled, trend[..., None]], 1), None
    return pooled, trend


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


#: Added to the variance of the token index (tokens²) in :func:`trend_pool`: a one-token input
#: gets trend 0 instead of 0 / 0, and longer inputs are hardly affected (variance ≥ 52 at 25).
TREND_EPS = 1.0


def trend_pool(x: torch.Tensor, tokens: torch.Tensor | None = None) -> torch.Tensor:
    """Length-free slope of a map over the token axis: (batch, C, T, F') → (batch, C, F').

    ``trend = cov(x, t) / sqrt(var(t) + TREND_EPS)`` over the valid tokens (``t`` the token
    index). A ramp from −a to +a over the clip gives ≈ 2a/√12 whatever its length; a constant
    map gives 0; reversing time negates it. From running sums over ``n`` tokens ``t0 …``:
    ``(Σx·(t − t0) − Σx·(n − 1)/2) / n / sqrt((n² − 1)/12 + TREND_EPS)``, which chunked and
    windowed inference accumulate (``tokens.trend_of_sums``).
    """
    size = x.shape[2]
    t = torch.arange(size, dtype=x.dtype, device=x.device)[None, None, :, None]
    w = torch.ones_like(x[:, :1, :, :1])
    if tokens is not None:
        w = w * time_mask(tokens, size)[:, None, :, None].to(x.dtype)
    w = w / w.sum(2, keepdim=True)
    tc = t - (w * t).sum(2, keepdim=True)  # centred token index
    var = (w * tc * tc).sum(2, keepdim=True)
    return (w * x * tc).sum(2) / torch.sqrt(var[:, :, 0] + TREND_EPS)


def pooled_features(pooled: torch.Tensor) -> torch.Tensor:
    """[pooled ; Gram(pooled)] flattened: (batch, C, F') → (batch, C·F' + C·C)."""
    x = torch.cat([pooled, torch.bmm(pooled, pooled.transpose(1, 2))], 2)
    return x.flatten(1)


def pooled_linear(
    linear: nn.Linear, pooled: torch.Tensor, trend: torch.Tensor | None = None
) -> torch.Tensor:
    """``linear([pooled_features(pooled) ; trend])`` for F' = 1, without forming the features.

    Row ``c`` of the features is ``p_c · q`` with ``q = [1, p_0 … p_{C−1}]``, so output ``o`` is
    ``Σ_c p_c · (W_o,c · q)``: one (batch, 1 + C) × (1 + C, O·C) product and a weighted sum.
    The same MACs as the Linear on the (batch, C·(1 + C)) features, but a timeline, which runs
    the head for every token, no longer writes and reads those features: ONNX Runtime spent
    ≈ 4 µs per row on the Gram's batched MatMul and two Concats, against ≈ 1 µs now.
    """
    c = pooled.shape[1]
    p = pooled.flatten(1)  # (batch, C): a reshape (indexing the last axis copies)
    q = torch.cat([torch.ones_like(p[:, :1]), p], 1)  # (batch, 1 + C)
    n = c * (c + 1)
    z = nn.functional.linear(q, linear.weight[:, :n].reshape(-1, c + 1))  # (batch, O·C)
    out = (z.reshape(-1, linear.out_features, c) * p[:, None, :]).sum(2)
    if trend is not None:
        out = out + nn.functional.linear(trend, linear.weight[:, n:])
    return out + linear.bias


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
    #: Set per instance from the config.
    norm = "utterance"

    def __init__(self, cfg: Wav2SmallConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg or Wav2SmallConfig()
        self.norm = self.cfg.norm
        if self.cfg.frontend == "pitch":
            self.net = PitchNet(self.cfg)
        else:
            self.vgg7 = Vgg7(self.cfg)
        n_in = self.body.n_features
        if self.cfg.head:
            self.hidden = nn.Linear(n_in, self.cfg.head)
            n_in = self.cfg.head
        self.adv = nn.Linear(n_in, self.cfg.n_outputs)

    @property
    def body(self) -> Vgg7 | PitchNet:
        """Front end, trunk and attention maps (:class:`Vgg7` or :class:`PitchNet`)."""
        return self.net if self.cfg.frontend == "pitch" else self.vgg7

    # -- stages --
    def features(
        self,
        signal: torch.Tensor,
        lengths: torch.Tensor | None = None,
        norm: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Stage 1: waveform → image (see :meth:`Vgg7.features`, :meth:`PitchNet.features`)."""
        return self.body.features(signal, lengths, norm)

    def trunk(self, image: torch.Tensor, frames: torch.Tensor | None = None) -> torch.Tensor:
        """Stage 2: image → token map (batch, C, tokens, F')."""
        return self.body.trunk(image, frames)

    def token_maps(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Stage 3: per-token attention maps (lin, sof)."""
        return self.body.token_maps(x)

    def trend_map(self, x: torch.Tensor) -> torch.Tensor | None:
        """Stage 3b: the per-token ``trd`` map (batch, trend, tokens, 1) of a trend model, or
        None (see :func:`trend_pool`)."""
        return self.net.trend_map(x) if self.cfg.trend else None

    def tokens(
        self, signal: torch.Tensor, norm: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Stages 1–3 on unpadded input: waveform → (lin, sof), each (batch, C, tokens, F')."""
        return self.token_maps(self.trunk(self.features(signal, None, norm)))

    def head(self, pooled: torch.Tensor, trend: torch.Tensor | None = None) -> torch.Tensor:
        """Stage 5: pooled map (batch, C, F') [and trend (batch, K)] → [pooled ; Gram ; trend]
        (``trend_gram``: ``[q ; Gram(q)]``, ``q = [pooled ; trend]``) → MLP → (batch, n_outputs)."""
        pooled, trend = gram_input(pooled, trend, trend_gram=self.cfg.trend_gram)
        first = self.hidden if self.cfg.head else self.adv
        if pooled.shape[2] == 1:  # the pitch trunk: without forming the Gram
            x = pooled_linear(first, pooled, trend)
        else:
            x = pooled_features(pooled)
            x = first(x if trend is None else torch.cat([x, trend], 1))
        return self.adv(torch.relu(x)) if self.cfg.head else x

    def forward(self, signal: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        return self.head(*self.pool(signal, lengths))

    def pool(
        self, signal: torch.Tensor, lengths: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Stages 1–4: the pooled map (batch, C, F') and the trend (batch, K) or ``None``."""
        frames = None if lengths is None else self.body.frames(lengths)
        x = self.trunk(self.features(signal, lengths), frames)
        lin, sof = self.token_maps(x)
        tokens = None if frames is None else self.body.frames_to_tokens(frames)
        trd = self.trend_map(x)
        trend = None if trd is None else trend_pool(trd, tokens)[..., 0]
        return attention_pool(lin, sof, tokens), trend

    def forward_embedding(
        self, signal: torch.Tensor, lengths: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """A/D/V and the vector the head reads, ``[pooled ; Gram(pooled) ; trend]`` (batch, E;
        ``trend_gram``: ``[q ; Gram(q)]``).

        Training only (embedding hints, :mod:`wav2small.train`); export runs :meth:`forward`,
        which never forms the Gram features of an F' = 1 trunk.
        """
        pooled, trend = self.pool(signal, lengths)
        q, rest = gram_input(pooled, trend, trend_gram=self.cfg.trend_gram)
        x = pooled_features(q)
        return self.head(pooled, trend), x if rest is None else torch.cat([x, rest], 1)

    # -- geometry --
    def frame_geometry(self) -> tuple[int, int]:
        """(window, hop) of the front end's frames, in samples."""
        return self.body.frame_geometry()

    def pooled_shape(self) -> tuple[int, int]:
        """(C, F') of the pooled map that :meth:`head` takes."""
        return self.body.pooled_shape()

    def token_samples(self) -> int:
        """Samples per token (64: hop 32 then a stride-2 pool, or hop 64)."""
        stride, _, _ = time_receptive_field(self.body.trunk_layers())
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
        stride, left, right = time_receptive_field(self.body.trunk_layers())
        # token t ↔ frames t·stride − left … t·stride + right;
        # frame j ↔ samples [j·hop, j·hop + window)
        return left * hop, right * hop + window

    def num_tokens(self, n_samples: int) -> int:
        """Tokens of an unpadded input of ``n_samples`` samples."""
        window, hop = self.frame_geometry()
        frames = (n_samples - window) // hop + 1
        stride, _, _ = time_receptive_field(self.body.trunk_layers())
        return -(-frames // stride)

    def config_dict(self) -> dict:
        """Constructor arguments, for checkpoints."""
        return asdict(self.cfg)


class StagedExport(nn.Module):
    """The ONNX export form of a Wav2Small model: one graph, usable plain or stage by stage.

    ``forward(signal, norm, pooled[, trend]) → (adv, lin, sof[, trd])`` (no ``norm`` for a
    local-normalisation model; ``trend``/``trd`` only for a trend model). Exported with ``norm``,
    ``pooled`` and ``trend`` as *optional* inputs (ONNX inputs with a default initializer; ONNX
    Runtime lists only ``signal`` as required), so ``model.onnx`` stays a plain signal → A/D/V
    model:

    * ``norm`` (batch or 1, 2) = (mean, scale): the normalisation statistics to use instead of
      the input's own; default NaN = the input's own (one pass). Chunked inference passes the
      whole file's. Only for ``norm == "utterance"`` models.
    * ``pooled`` (P, C, F'): extra pooled maps whose head outputs are appended after the
      signal's rows (default: 0 rows). The head of an online pooling runs through it on a
      64-sample dummy signal.
    * ``trend`` (P, K): a trend model's trend poolings of those P rows (default: 0 rows).
    * outputs ``lin`` and ``sof`` (batch, C, tokens, F'): the per-token attention maps; a trend
      model's ``trd`` (batch, K, tokens, 1): the per-token map whose slope is the trend.
    """

    def __init__(self, model: Wav2Small) -> None:
        super().__init__()
        self.model = model

    @property
    def utterance_norm(self) -> bool:
        """Whether the model normalises per utterance (then the graph has the ``norm`` input)."""
        return getattr(self.model, "norm", "utterance") == "utterance"

    @property
    def n_trend(self) -> int:
        """Channels of the trend pooling (0: not a trend model)."""
        return getattr(self.model.cfg, "trend", 0)

    def pooled_shape(self) -> tuple[int, int]:
        """(C, F') of the pooled map the head takes."""
        if hasattr(self.model, "pooled_shape"):
            return tuple(self.model.pooled_shape())
        return self.model.cfg.width, POOLED_MELS

    def forward(
        self,
        signal: torch.Tensor,
        first: torch.Tensor,
        second: torch.Tensor | None = None,
        third: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, ...]:
        """``(signal, [norm,] pooled[, trend])``: ``norm`` for utterance-normalised models,
        ``trend`` for trend models."""
        check_length(signal)
        extra = [first, second, third]
        norm = extra.pop(0) if self.utterance_norm else None
        pooled = extra.pop(0)
        if norm is not None:
            mean = signal.mean(1, keepdim=True)
            centred = signal - mean
            scale = torch.sqrt((centred * centred).mean(1, keepdim=True) + NORM_EPS)
            mean = torch.where(torch.isnan(norm[:, :1]), mean, norm[:, :1])
            scale = torch.where(torch.isnan(norm[:, 1:]), scale, norm[:, 1:])
            norm = torch.cat([mean, scale], 1)
        x = self.model.trunk(self.model.features(signal, None, norm))
        lin, sof = self.model.token_maps(x)
        pooled = torch.cat([attention_pool(lin, sof), pooled], 0)
        if not self.n_trend:
            return self.model.head(pooled), lin, sof
        trd = self.model.trend_map(x)
        trend = torch.cat([trend_pool(trd)[..., 0], extra.pop(0)], 0)
        return self.model.head(pooled, trend), lin, sof, trd

    def example_inputs(self) -> tuple[torch.Tensor, ...]:
        """Inputs for tracing: 2 × 1 s of noise, (NaN statistics,) 2 extra pooled maps (and
        trends)."""
        g = torch.Generator().manual_seed(0)
        signal = torch.zeros(2, SAMPLE_RATE).normal_(generator=g)
        pooled = torch.zeros(2, *self.pooled_shape()).normal_(generator=g)
        out = [signal, torch.full((1, 2), float("nan"))] if self.utterance_norm else [signal]
        out.append(pooled)
        if self.n_trend:
            out.append(torch.zeros(2, self.n_trend).normal_(generator=g))
        return tuple(out)

    def defaults(self) -> dict[str, torch.Tensor]:
        """Default values of the optional inputs (stored as initializers)."""
        from wav2small.export import NORM_INPUT, POOLED_INPUT, TREND_INPUT

        out = {POOLED_INPUT: torch.zeros(0, *self.pooled_shape())}
        if self.n_trend:
            out[TREND_INPUT] = torch.zeros(0, self.n_trend)
        if self.utterance_norm:
            out[NORM_INPUT] = torch.full((1, 2), float("nan"))
        return out
