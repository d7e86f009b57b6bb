"""MobileNet students (SPEC §1.3): timm MobileNetV4/V3 on a pitch-resolving spectrogram image.

The paper distils its teacher into four MobileNets as well as Wav2Small; which four is open, and
we follow the plausible reading V4-Small, V4-Medium, V4-Large and V3-Large. Each is timm's
network with ``in_chans=1``, ``num_classes=3`` and random weights (ImageNet weights would need a
model hub and do not fit a one-channel spectrogram).

Input image (ours, [open] in the paper): the released 26-band image leaves ONE band after the
networks' 32× down-sampling and resolves no harmonic of a voice, and MobileNets on it barely
learned (docs/RESULTS.md). They read the pitch-resolving image of wav2small-paper, widened for a
2-D network: :class:`wav2small.frontend.PitchLogSpec` with 31 DFT bins 62–1000 Hz of a 32 ms
window plus 34 mel bands 1–8 kHz of a 16 ms window = 65 rows, at hop 128 (125 frames/s, ≈ 4
tokens/s after 32×), locally normalised (:class:`~wav2small.frontend.LocalNorm`, ±0.5 s:
gain-invariant) and divided by a fixed 20 dB. :class:`MobileNetConfig` holds these settings, the
stem's stride and an optional trend head; it is stored in every checkpoint and rebuilt from it
(the stride has no weights: a checkpoint rebuilt from today's preset would load silently wrong).
:data:`DEFAULT_CONFIG` is the choice of every preset (:data:`PRESET_CONFIGS` would list
exceptions; a study overrides it): a stem of stride 1 along frequency (5 frequency columns at the
end instead of 3; harmonics stay 31 Hz apart through the stem) and a trend head. Distilled with
the demo's recipe (2,000 steps of whole clips), MobileNetV3-L scored test valence 0.03 vs gold
with timm's stem and no trend head, −0.03 with the trend head alone and 0.44 with both (0.74×
the teacher); MobileNetV4-S has read this image since session 6 (valence 0.40–0.43 at 2,000
steps); V4-M learned valence with it at half that budget (0.27), V4-L was not measured (its
step costs ≈ 13× V4-S's). docs/DISTILL.md ("MobileNet students") has the measurements and the
commands that reproduce them.

Recipe: a MobileNet needs more unlabelled audio than Wav2Small. From the demo's 2,000-clip pool
MobileNetV4-S kept 0.65–0.80× of its teacher's test valence; from 8,000 clips, with the same
3,000 steps, 0.86× and 0.91× (two seeds, shipped int8), and more steps on the small pool had not
helped (docs/DISTILL.md, "Session 16").

Head: timm's 3-output classifier (uniform in ±1/√3 over 1,280 features) made an untrained
MobileNet predict with a spread of ≈ 7 on labels of spread 0.25; distilled for 300 steps,
MobileNetV4-S then scored CCC ≈ 0 on every dimension. The head now starts with tiny weights and
its biases at 0.5 (:func:`init_head`); the architectures are timm's, unchanged: 2,496,291
(V4-S), 8,437,779 (V4-M), 31,313,275 (V4-L) and 4,205,587 (V3-L) parameters, plus the trend
head's 7,715. Measured in docs/DISTILL.md ("MobileNet students").

BatchNorm: trained on the batch statistics of 8 clips, MobileNetV4-S learned to rely on them and
blew up on single clips at inference (|arousal| up to 68); ``distill``/``train`` therefore freeze
a MobileNet's BatchNorm statistics after 15 % of the steps by default (``freeze_bn_step``), which
took its test CCC vs gold from 0.493 / 0.570 / 0.219 to 0.670 / 0.713 / 0.398 at 2,000 steps of
whole clips with embedding hints (docs/DISTILL.md, "Session 9").

Padding: with ``lengths`` the local normalisation ignores the padding; the network itself sees
the padded image, so unlike Wav2Small a clip's output depends slightly on the batch it is padded
into. Cropped training batches are cut to one length (see :mod:`wav2small.data`) and evaluation
runs full utterances one at a time, so neither pads; whole-clip training (``crop_seconds`` 0, the
demo's FULL plan) pads each length-bucketed batch to its longest clip, which the network sees.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from wav2small import SAMPLE_RATE
from wav2small.frontend import LocalNorm, PitchLogSpec
from wav2small.models.wav2small import trend_pool

#: Preset name → timm architecture.
TIMM_ARCHS: dict[str, str] = {
    "mobilenetv4-small": "mobilenetv4_conv_small",
    "mobilenetv4-medium": "mobilenetv4_conv_medium",
    "mobilenetv4-large": "mobilenetv4_conv_large",
    "mobilenetv3-large": "mobilenetv3_large_100",
}
N_OUTPUTS = 3
#: The MobileNets' image: hop (samples), high-band window and mel bands, local-norm half window
#: (frames) and the fixed dB scale of the normalised image.
HOP = 128
N_FFT_HIGH = 256
N_MELS_HIGH = 34
NORM_FRAMES = 62
IMAGE_STD = 20.0
#: The regression head's start: zero-mean weights this small and every bias at the centre of
#: the [0, 1] label range. timm initialises a 3-output classifier uniform in ±1/√3 over 1,280
#: features, so an untrained MobileNet predicted A/D/V with a spread of ≈ 7 (train mode) on
#: targets whose spread is 0.25, and the first hundred steps went into shrinking it.
HEAD_INIT_STD = 1e-3
OUTPUT_BIAS = 0.5


@dataclass(frozen=True)
class MobileNetConfig:
    """The spectrogram image a MobileNet reads, and the stride of its stem.

    Attributes:
        hop: samples between frames (16 kHz).
        n_fft: window of the low band's DFT bins (samples at 16 kHz); bins ``n_fft``/16 kHz apart.
        low_fmax: top of the low band (Hz); mel bands cover ``low_fmax``–8 kHz.
        n_fft_high: window of the mel bands.
        n_mels: mel bands above ``low_fmax``.
        norm_frames: half window of the local normalisation (frames).
        stem_stride: (time, frequency) stride of the first convolution (timm's is (2, 2)).
        trend: channels of a trend head (0: none): a 1×1 map of the last feature map whose
            slope over time (:func:`wav2small.models.wav2small.trend_pool`, of the map's mean
            over frequency) a linear layer adds to the output, so an utterance-scale ramp (e.g.
            F0 rising) reaches the output through an otherwise order-invariant average pooling.
        level: one more image row, the local mean level that the normalisation subtracts (dB
            above :data:`~wav2small.frontend.LEVEL_REF_DB`, on the image's scale): the model
            hears absolute loudness and is no longer gain-invariant.
    """

    hop: int = HOP
    n_fft: int = 512
    low_fmax: float = 1000.0
    n_fft_high: int = N_FFT_HIGH
    n_mels: int = N_MELS_HIGH
    norm_frames: int = NORM_FRAMES
    stem_stride: tuple[int, int] = (2, 2)
    trend: int = 0
    level: bool = False


#: The image and head every MobileNet preset reads (docs/DISTILL.md, "MobileNet students").
DEFAULT_CONFIG = MobileNetConfig(stem_stride=(2, 1), trend=8)
#: Presets that read another image or head than :data:`DEFAULT_CONFIG` (measured choices).
PRESET_CONFIGS: dict[str, MobileNetConfig] = {}


def preset_config(name: str) -> MobileNetConfig:
    """The :class:`MobileNetConfig` of preset ``name``."""
    return PRESET_CONFIGS.get(name, DEFAULT_CONFIG)


class MobileNetStudent(nn.Module):
    """Waveform (batch, samples) → log-mel image → timm MobileNet → (batch, 3) A/D/V.

    Args:
        arch: a timm architecture name, e.g. ``"mobilenetv4_conv_small"``.
        n_outputs: regression outputs (3: arousal, dominance, valence).
    """

    def __init__(
        self, arch: str, *, n_outputs: int = N_OUTPUTS, image: MobileNetConfig | None = None
    ) -> None:
        super().__init__()
        import timm

        self.arch = arch
        self.n_outputs = n_outputs
        self.image = image = image or DEFAULT_CONFIG
        self.frontend = PitchLogSpec(
            hop=image.hop,
            n_fft=image.n_fft,
            low_fmax=image.low_fmax,
            n_fft_high=image.n_fft_high,
            n_mels=image.n_mels,
        )
        self.local_norm = LocalNorm(image.norm_frames)
        self.backbone = timm.create_model(arch, pretrained=False, in_chans=1, num_classes=n_outputs)
        self.backbone.conv_stem.stride = tuple(image.stem_stride)
        init_head(self.backbone.get_classifier())
        if image.trend:
            self.trd = nn.Conv2d(self.backbone.num_features, image.trend, 1)
            self.trend_head = nn.Linear(image.trend, n_outputs)
            init_head(self.trend_head, bias=0.0)
        else:
            self.trd = self.trend_head = None

    def forward(self, signal: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """Predict arousal, dominance, valence.

        Args:
            signal: (batch, samples) 16 kHz float waveforms (at least 541 samples).
            lengths: optional (batch,) valid samples, for zero-padded batches.

        Returns:
            (batch, 3) unbounded regression outputs.
        """
        features = self._features(signal, lengths)
        out = self.backbone.forward_head(features)
        return out if self.trd is None else out + self.trend_head(self.trend(features))

    def _features(self, signal: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
        frames = None if lengths is None else self.frontend.frames(lengths)
        image = self.local_norm(self.frontend(signal), frames, level_row=self.image.level)
        image = image / IMAGE_STD
        return self.backbone.forward_features(image[:, None])  # (batch, C, time, freq)

    def forward_embedding(
        self, signal: torch.Tensor, lengths: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """A/D/V and the pooled vector the classifier reads (with the trend slopes, if any).

        Training only (embedding hints, :mod:`wav2small.train`).
        """
        features = self._features(signal, lengths)
        out = self.backbone.forward_head(features)
        emb = self.backbone.forward_head(features, pre_logits=True)
        if self.trd is None:
            return out, emb
        trend = self.trend(features)
        return out + self.trend_head(trend), torch.cat([emb, trend], 1)

    def trend(self, features: torch.Tensor) -> torch.Tensor:
        """Slopes over time (batch, trend) of the ``trd`` map of a (batch, C, time, freq) map."""
        return trend_pool(self.trd(features).mean(3, keepdim=True))[..., 0]

    def tokens_per_second(self) -> float:
        """Time steps per second of the backbone's last feature map (after its down-sampling)."""
        return self._feature_shape(10 * SAMPLE_RATE // self.image.hop)[0] / 10

    def _feature_shape(self, frames: int) -> tuple[int, int]:
        """(time, frequency) size of the last feature map of an image of ``frames`` frames."""
        stem = self.backbone.conv_stem.weight  # on "meta" for a shapes-only model
        bands = self.frontend.n_bands + int(self.image.level)
        image = torch.zeros(1, stem.shape[1], frames, bands, device=stem.device)
        training = self.backbone.training
        with torch.no_grad():
            shape = self.backbone.eval().forward_features(image).shape[2:]
        self.backbone.train(training)
        return shape[0], shape[1]

    def config_dict(self) -> dict:
        """Constructor arguments, for checkpoints."""
        return {"arch": self.arch, "n_outputs": self.n_outputs, "image": asdict(self.image)}


def init_head(head: nn.Linear, *, bias: float = OUTPUT_BIAS) -> None:
    """Start a regression head near the labels: tiny weights, biases at ``bias``."""
    with torch.no_grad():
        head.weight.normal_(0.0, HEAD_INIT_STD)
        head.bias.fill_(bias)


def create_mobilenet(name: str) -> MobileNetStudent:
    """Build a MobileNet student by preset name (a key of :data:`TIMM_ARCHS`).

    Raises:
        ValueError: unknown name.
    """
    if name not in TIMM_ARCHS:
        raise ValueError(f"unknown MobileNet preset {name!r}; choose from {', '.join(TIMM_ARCHS)}")
    return MobileNetStudent(TIMM_ARCHS[name], image=preset_config(name))
