"""MobileNet students (SPEC §1.3): timm MobileNetV4/V3 on the Wav2Small log-mel image.

The paper distils its teacher into four MobileNets as well as Wav2Small; which four is open, and
we follow the plausible reading V4-Small, V4-Medium, V4-Large and V3-Large. Each is timm's
network with ``in_chans=1``, ``num_classes=3`` and random weights (ImageNet weights would need a
model hub and do not fit a one-channel spectrogram), fed the *same* front end as Wav2Small
(:class:`wav2small.frontend.LogMel`: prenorm → DFT-conv power → 26 Slaney log-mels, 500 frames/s),
read as a (frames × 26) one-channel image after a fixed standardisation of its dB values. After
the network's 32× down-sampling that gives the ≈16 tokens/s quoted for MobileNetV4-S.

Padding: with ``lengths`` the per-utterance normalisation ignores the padding (which stays
zero, i.e. the −100 dB floor of the log-mel); the network itself sees the padded image, so unlike
Wav2Small a clip's output depends slightly on the batch it is padded into. The training loop
crops every batch to one length (see :mod:`wav2small.data`) and evaluation runs full utterances
one at a time, so neither pads.
"""

from __future__ import annotations

import torch
from torch import nn

from wav2small.frontend import LogMel

#: Preset name → timm architecture.
TIMM_ARCHS: dict[str, str] = {
    "mobilenetv4-small": "mobilenetv4_conv_small",
    "mobilenetv4-medium": "mobilenetv4_conv_medium",
    "mobilenetv4-large": "mobilenetv4_conv_large",
    "mobilenetv3-large": "mobilenetv3_large_100",
}
N_OUTPUTS = 3
#: Fixed standardisation of the log-mel image (dB). After prenorm the image of speech-like audio
#: has mean ≈ −34 dB and std ≈ 19 dB (measured on wav2small.signals clips); mapping it to ≈ N(0, 1)
#: keeps the first convolution and the untrained outputs in a sane range.
IMAGE_MEAN = -35.0
IMAGE_STD = 20.0


class MobileNetStudent(nn.Module):
    """Waveform (batch, samples) → log-mel image → timm MobileNet → (batch, 3) A/D/V.

    Args:
        arch: a timm architecture name, e.g. ``"mobilenetv4_conv_small"``.
        n_outputs: regression outputs (3: arousal, dominance, valence).
    """

    def __init__(self, arch: str, *, n_outputs: int = N_OUTPUTS) -> None:
        super().__init__()
        import timm

        self.arch = arch
        self.n_outputs = n_outputs
        self.frontend = LogMel()
        self.backbone = timm.create_model(arch, pretrained=False, in_chans=1, num_classes=n_outputs)

    def forward(self, signal: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """Predict arousal, dominance, valence.

        Args:
            signal: (batch, samples) 16 kHz float waveforms (at least 64 samples).
            lengths: optional (batch,) valid samples, for zero-padded batches.

        Returns:
            (batch, 3) unbounded regression outputs.
        """
        image = (self.frontend(signal, lengths) - IMAGE_MEAN) / IMAGE_STD
        return self.backbone(image)

    def config_dict(self) -> dict:
        """Constructor arguments, for checkpoints."""
        return {"arch": self.arch, "n_outputs": self.n_outputs}


def create_mobilenet(name: str) -> MobileNetStudent:
    """Build a MobileNet student by preset name (a key of :data:`TIMM_ARCHS`).

    Raises:
        ValueError: unknown name.
    """
    if name not in TIMM_ARCHS:
        raise ValueError(f"unknown MobileNet preset {name!r}; choose from {', '.join(TIMM_ARCHS)}")
    return MobileNetStudent(TIMM_ARCHS[name])
