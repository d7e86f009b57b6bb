"""Teachers: large A/D/V regressors used as annotators (SPEC §1.1) and a small synthetic-world one.

Every teacher is a :class:`Teacher` — a ``torch.nn.Module`` that maps a batch of 16 kHz float
waveforms ``(batch, samples)`` (plus optional ``lengths`` or a ``mask``) to ``(batch, 3)``
arousal, dominance, valence. Shared behaviour lives in the base class:

* **padding invariance** — each clip's output does not depend on the batch it sits in: the
  transformer teachers use attention masks (their feature extractors use per-frame layer norm),
  group-norm wav2vec2 variants run clip by clip, the synthetic teacher masks every layer;
* **long audio** — a clip longer than ``window_seconds`` (20 s) is cut into equal windows of at
  most that length whose outputs are averaged, so a 10-minute file never builds a 10-minute
  attention matrix; windows are run in sub-batches of at most ``max_batch_seconds`` of padded audio.

Checkpoint layouts (all read by :func:`load_teacher`, written by :func:`save_teacher`):

* **Dawn** — ``audeering/wav2vec2-large-robust-12-ft-emotion-msp-dim``: ``config.json``
  (architecture ``Wav2Vec2ForSpeechClassification``, id2label arousal/dominance/valence) and
  ``model.safetensors`` or ``pytorch_model.bin`` with keys ``wav2vec2.*``, ``classifier.dense.*``,
  ``classifier.out_proj.*``. The model card's code: per-utterance normalisation (Wav2Vec2Processor,
  ``(x − mean) / sqrt(var + 1e-7)``), ``Wav2Vec2Model``, mean of ``last_hidden_state`` over time,
  ``dense`` → tanh → ``out_proj``.
* **WavLM-Odyssey** — ``3loi/SER-Odyssey-Baseline-WavLM-Multi-Attributes``: ``config.json``
  with ``model_type`` "ser", ``ssl_type`` "microsoft/wavlm-large", ``hidden_size``,
  ``num_hidden_layers``, ``num_attention_heads``, ``classifier_hidden_layers``,
  ``classifier_dropout_prob``, ``num_classes``, ``mean``, ``std``, ``sampling_rate``; weights
  ``ssl_model.*`` (WavLM), ``pool_model.sap_linear.*``, ``pool_model.attention``,
  ``ser_model.fc.0.0.*`` (Linear), ``ser_model.fc.0.1.*`` (LayerNorm), ``ser_model.out.0.*``.
  Input ``(x − mean) / (std + 1e-6)``.
  Sources: the repository's ``config.json`` (commits 45e6e02 and e0676f5 on huggingface.co) and
  ``pipeline_utils.py``, whose pooling/head are the Odyssey 2024 challenge baseline's
  ``net/pooling.py`` (``AttentiveStatisticsPooling``) and ``net/ser.py`` (``EmotionRegression``)
  in github.com/msplabresearch/MSP-Podcast_Challenge; usage from the model card (``mean``/``std``
  from the config, an all-ones mask). The WavLM backbone config is not in the repository (it is
  ``microsoft/wavlm-large``'s); we carry those values in :data:`WAVLM_LARGE`. An optional
  ``ssl_config`` dict in ``config.json`` (our extension) overrides them, for small test models.
* **Ensemble** — ``ensemble:A+B``: the mean of the members' outputs (SPEC: the paper's teacher;
  equal weights are our reading), optionally clipped to [0, 1]. Saved as a folder with
  ``config.json`` (``model_type`` "wav2small-ensemble") and one sub-folder per member.
* **Synthetic-world teacher** — ``model_type`` "wav2small-synth-teacher": a log-mel CNN + GRU
  (see :class:`SynthTeacher`), trained here by ``wav2small train-teacher`` and shipped as the
  package asset ``teacher-synth`` (alias ``synth``).

Weights are read from safetensors, or from ``pytorch_model.bin`` with ``weights_only=True``
(never unpickled). Names that are not local folders are Hugging Face hub ids, resolved through
huggingface_hub's cache (``local_files_only`` when ``HF_HUB_OFFLINE`` is set or the hub cannot be
reached); when that fails the error names the id.
"""

from __future__ import annotations

import json
import logging
import math
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from wav2small import LABELS, SAMPLE_RATE
from wav2small.backends import teacher_predict, teacher_predict_files  # noqa: F401 (here too)
from wav2small.errors import UserError

logger = logging.getLogger(__name__)

DAWN_ID = "audeering/wav2vec2-large-robust-12-ft-emotion-msp-dim"
ODYSSEY_ID = "3loi/SER-Odyssey-Baseline-WavLM-Multi-Attributes"
ENSEMBLE_PREFIX = "ensemble:"
#: Package asset folder of the shipped synthetic-world teacher.
SYNTH_ASSET = "teacher-synth"
#: Short names accepted by :func:`load_teacher`.
ALIASES = {
    "dawn": DAWN_ID,
    "odyssey": ODYSSEY_ID,
    "ensemble": f"{ENSEMBLE_PREFIX}{DAWN_ID}+{ODYSSEY_ID}",
    "synth": SYNTH_ASSET,
}
CONFIG_FILE = "config.json"
SAFETENSORS_FILE = "model.safetensors"
BIN_FILE = "pytorch_model.bin"
#: Longest window a teacher sees at once; longer clips are split and the windows averaged.
WINDOW_SECONDS = 20.0
#: Most padded audio (seconds) in one forward pass of the backbone.
MAX_BATCH_SECONDS = 64.0
#: Dawn's per-utterance normalisation epsilon (Wav2Vec2FeatureExtractor, do_normalize=True).
DAWN_NORM_EPS = 1e-7
#: Odyssey's normalisation epsilon: ``(x - mean) / (std + 1e-6)`` (model card).
ODYSSEY_STD_EPS = 1e-6
#: Odyssey's attentive-statistics floor on the variance (net/pooling.py).
ODYSSEY_VAR_FLOOR = 1e-5
#: Parameters that exist only for pre-training/fine-tuning masks; tolerated when absent or extra.
_OPTIONAL_KEYS = ("masked_spec_embed",)
#: Legacy torch weight-norm names (checkpoints from transformers < 4.3x) ↔ parametrizations.
_LEGACY_WEIGHT_NORM = {
    ".weight_g": ".parametrizations.weight.original0",
    ".weight_v": ".parametrizations.weight.original1",
}

# microsoft/wavlm-large config.json (the Odyssey model's `ssl_type`): the backbone fields.
WAVLM_LARGE: dict[str, Any] = {
    "hidden_size": 1024,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "intermediate_size": 4096,
    "hidden_act": "gelu",
    "layer_norm_eps": 1e-5,
    "conv_dim": [512] * 7,
    "conv_kernel": [10, 3, 3, 3, 3, 2, 2],
    "conv_stride": [5, 2, 2, 2, 2, 2, 2],
    "conv_bias": False,
    "feat_extract_norm": "layer",
    "feat_extract_activation": "gelu",
    "do_stable_layer_norm": True,
    "num_conv_pos_embeddings": 128,
    "num_conv_pos_embedding_groups": 16,
    "num_buckets": 320,
    "max_bucket_distance": 800,
    "mask_time_prob": 0.075,
    "hidden_dropout": 0.1,
    "attention_dropout": 0.1,
    "activation_dropout": 0.0,
    "feat_proj_dropout": 0.1,
    "layerdrop": 0.1,
}

# Architecture fields of Dawn's public config.json (wav2vec2-large-robust pruned to 12 layers), for
# building the full-size model with random weights (benchmarks). Never ship its weights.
DAWN_ARCHITECTURE: dict[str, Any] = {
    "architectures": ["Wav2Vec2ForSpeechClassification"],
    "model_type": "wav2vec2",
    "hidden_size": 1024,
    "num_hidden_layers": 12,
    "num_attention_heads": 16,
    "intermediate_size": 4096,
    "conv_dim": [512] * 7,
    "conv_kernel": [10, 3, 3, 3, 3, 2, 2],
    "conv_stride": [5, 2, 2, 2, 2, 2, 2],
    "conv_bias": True,
    "feat_extract_norm": "layer",
    "do_stable_layer_norm": True,
    "num_conv_pos_embeddings": 128,
    "num_conv_pos_embedding_groups": 16,
    "final_dropout": 0.1,
    "vocab_size": None,
    "id2label": {"0": "arousal", "1": "dominance", "2": "valence"},
    "label2id": {"arousal": 0, "dominance": 1, "valence": 2},
}


class TeacherError(UserError, RuntimeError):
    """A teacher that cannot be found or loaded; the message names it and the problem."""


# --- base class -----------------------------------------------------------------------------
def lengths_from(
    wave: torch.Tensor,
    lengths: torch.Tensor | Sequence[int] | None = None,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Valid sample counts (batch,) from ``lengths``, a (batch, samples) mask, or neither."""
    if wave.dim() != 2:
        raise ValueError(f"teacher input must be (batch, samples), got shape {tuple(wave.shape)}")
    if lengths is None and mask is not None:
        lengths = mask.to(torch.long).sum(1)
    if lengths is None:
        return torch.full((wave.shape[0],), wave.shape[1], dtype=torch.long, device=wave.device)
    lengths = torch.as_tensor(lengths, dtype=torch.long, device=wave.device)
    if lengths.shape != (wave.shape[0],):
        raise ValueError(f"lengths must have shape ({wave.shape[0]},), got {tuple(lengths.shape)}")
    if (lengths < 1).any() or (lengths > wave.shape[1]).any():
        raise ValueError(f"lengths must lie in [1, {wave.shape[1]}], got {lengths.tolist()}")
    return lengths


def time_mask(lengths: torch.Tensor, size: int) -> torch.Tensor:
    """Boolean (batch, size) mask, True below each length."""
    return torch.arange(size, device=lengths.device)[None, :] < lengths[:, None]


def pad_batch(
    clips: Sequence[torch.Tensor], *, min_length: int = 1
) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad 1-D clips with zeros: (batch, max_len) tensor and (batch,) lengths."""
    lengths = torch.tensor([max(len(c), 1) for c in clips], dtype=torch.long)
    out = clips[0].new_zeros(len(clips), max(int(lengths.max()), min_length))
    for i, c in enumerate(clips):
        out[i, : len(c)] = c
    return out, lengths


class Teacher(nn.Module):
    """Base class: ``forward(wave, lengths=None, mask=None) -> (batch, 3)`` A/D/V.

    Subclasses implement :meth:`forward_batch` for clips no longer than :attr:`window_seconds`.

    Attributes:
        name: teacher id written into label tables (the name or path it was loaded from).
        window_seconds: longest window seen at once.
        max_batch_seconds: most padded audio per backbone call.
        min_samples: shortest input the backbone accepts; shorter clips are zero-padded to it.
    """

    labels = LABELS
    window_seconds = WINDOW_SECONDS
    max_batch_seconds = MAX_BATCH_SECONDS
    min_samples = 1

    def __init__(self) -> None:
        super().__init__()
        self.name = type(self).__name__

    def forward(
        self,
        wave: torch.Tensor,
        lengths: torch.Tensor | Sequence[int] | None = None,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Predict A/D/V for a batch of 16 kHz waveforms.

        Args:
            wave: (batch, samples) float waveforms, zero-padded on the right.
            lengths: (batch,) valid samples per clip (default: all of them).
            mask: alternative to ``lengths``: (batch, samples), nonzero on valid samples.

        Returns:
            (batch, 3) float tensor: arousal, dominance, valence.
        """
        lengths = lengths_from(wave, lengths, mask)
        win = int(round(self.window_seconds * SAMPLE_RATE))
        pieces: list[torch.Tensor] = []
        owner: list[int] = []
        for i, n in enumerate(lengths.tolist()):
            k = max(1, math.ceil(n / win))
            size = math.ceil(n / k)
            for j in range(k):
                pieces.append(wave[i, j * size : min(n, (j + 1) * size)])
                owner.append(i)
        out = self._forward_pieces(pieces)
        if len(pieces) == wave.shape[0]:
            return out
        index = torch.tensor(owner, device=out.device)
        total = out.new_zeros(wave.shape[0], out.shape[1]).index_add_(0, index, out)
        count = torch.bincount(index, minlength=wave.shape[0]).to(out.dtype)
        return total / count[:, None]

    def _forward_pieces(self, pieces: list[torch.Tensor]) -> torch.Tensor:
        """Run 1-D clips in length-sorted sub-batches of bounded padded size; original order out."""
        budget = int(self.max_batch_seconds * SAMPLE_RATE)
        order = sorted(range(len(pieces)), key=lambda i: len(pieces[i]))
        outputs: dict[int, torch.Tensor] = {}
        group: list[int] = []
        for i in order + [-1]:
            longest = max(len(pieces[i]), self.min_samples) if i >= 0 else 0
            if group and (i < 0 or longest * (len(group) + 1) > budget):
                wave, lengths = pad_batch([pieces[g] for g in group], min_length=self.min_samples)
                lengths = lengths.clamp(min=self.min_samples).to(wave.device)
                for g, row in zip(group, self.forward_batch(wave, lengths), strict=True):
                    outputs[g] = row
                group = []
            if i >= 0:
                group.append(i)
        return torch.stack([outputs[i] for i in range(len(pieces))])

    def forward_batch(self, wave: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """(batch, samples) padded clips, each ≤ one window, with (batch,) lengths → (batch, 3)."""
        raise NotImplementedError

    def config_dict(self) -> dict[str, Any]:
        """The ``config.json`` contents that rebuild this teacher."""
        raise NotImplementedError

    def export_state_dict(self) -> dict[str, torch.Tensor]:
        """State dict under the checkpoint's public key names."""
        return {_to_legacy_key(k): v for k, v in self.state_dict().items()}


def _label_order(config: dict[str, Any], n_out: int, where: str) -> list[int] | None:
    """Output indices that give arousal, dominance, valence, from ``id2label`` (None: as is)."""
    id2label = config.get("id2label") or {}
    names = {str(v).lower(): int(k) for k, v in id2label.items()}
    if all(label in names for label in LABELS):
        order = [names[label] for label in LABELS]
        return None if order == list(range(len(LABELS))) and n_out == len(LABELS) else order
    if n_out != len(LABELS):
        raise TeacherError(
            f"{where}: {n_out} outputs without arousal/dominance/valence labels in "
            "id2label; cannot tell which output is which"
        )
    return None


# --- Dawn: wav2vec2 + regression head ------------------------------------------------------
class RegressionHead(nn.Module):
    """audEERING's head: dropout → dense → tanh → dropout → out_proj (model card)."""

    def __init__(self, hidden: int, n_out: int, dropout: float) -> None:
        super().__init__()
        self.dense = nn.Linear(hidden, hidden)
        self.dropout = nn.Dropout(dropout)
        self.out_proj = nn.Linear(hidden, n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.tanh(self.dense(self.dropout(x)))
        return self.out_proj(self.dropout(x))


def normalise_per_utterance(
    wave: torch.Tensor, lengths: torch.Tensor, eps: float = DAWN_NORM_EPS
) -> torch.Tensor:
    """``(x − mean) / sqrt(var + eps)`` over each clip's valid samples; padding stays zero."""
    mask = time_mask(lengths, wave.shape[1]).to(wave.dtype)
    n = lengths.to(wave.dtype)[:, None]
    centred = (wave - (wave * mask).sum(1, keepdim=True) / n) * mask
    var = (centred * centred).sum(1, keepdim=True) / n
    return centred / torch.sqrt(var + eps)


def masked_mean(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Mean over time of (batch, time, dim) within each length."""
    m = time_mask(lengths, x.shape[1]).to(x.dtype)[..., None]
    return (x * m).sum(1) / lengths.to(x.dtype)[:, None].clamp(min=1)


class Wav2Vec2Teacher(Teacher):
    """Dawn layout: ``Wav2Vec2Model`` → mean over time → :class:`RegressionHead`."""

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        from transformers import Wav2Vec2Config, Wav2Vec2Model

        self._config = dict(config)
        cfg = Wav2Vec2Config.from_dict(self._config)
        n_out = len(self._config.get("id2label") or {}) or len(LABELS)
        self.wav2vec2 = Wav2Vec2Model(cfg)
        self.classifier = RegressionHead(cfg.hidden_size, n_out, float(cfg.final_dropout))
        self._order = _label_order(self._config, n_out, "wav2vec2 teacher")
        self._layer_norm = cfg.feat_extract_norm == "layer"
        self.min_samples = _receptive_field(cfg.conv_kernel, cfg.conv_stride)

    def forward_batch(self, wave: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        x = normalise_per_utterance(wave, lengths)
        if self._layer_norm:
            mask = time_mask(lengths, x.shape[1]).to(torch.long)
            hidden = self.wav2vec2(x, attention_mask=mask).last_hidden_state
            frames = self.wav2vec2._get_feat_extract_output_lengths(lengths)
            pooled = masked_mean(hidden, frames)
        else:  # group-norm feature extractors normalise over time: padding would leak in
            pooled = torch.cat(
                [
                    self.wav2vec2(x[i : i + 1, : int(n)]).last_hidden_state.mean(1)
                    for i, n in enumerate(lengths.tolist())
                ]
            )
        out = self.classifier(pooled)
        return out if self._order is None else out[:, self._order]

    def config_dict(self) -> dict[str, Any]:
        return dict(self._config)


def _receptive_field(kernels: Sequence[int], strides: Sequence[int]) -> int:
    """Samples needed for one output frame of a strided conv stack."""
    field, jump = 1, 1
    for k, s in zip(kernels, strides, strict=True):
        field += (k - 1) * jump
        jump *= s
    return field


# --- WavLM-Odyssey ---------------------------------------------------------------------------
class AttentiveStatisticsPooling(nn.Module):
    """Attentive statistics pooling (Okabe et al. 2018) as in the Odyssey baseline's net/pooling.py.

    ``h = tanh(sap_linear(x))``, ``w = softmax_t(h · attention)``, output
    ``[Σ w x ; sqrt(max(Σ w x² − (Σ w x)², 1e-5))]``. The original loops over clips and keeps
    the first ``floor((samples − 1) / 320) + 1`` frames, which is never fewer than the frames the
    conv stack produces, so for an unpadded clip it pools all of them; here padded frames are
    masked out instead, which gives the same numbers for every clip in a padded batch.
    """

    def __init__(self, input_size: int) -> None:
        super().__init__()
        self.sap_linear = nn.Linear(input_size, input_size)
        self.attention = nn.Parameter(torch.empty(input_size, 1).normal_(0, 1))

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.sap_linear(x))
        logits = torch.matmul(h, self.attention).squeeze(2)
        logits = logits.masked_fill(~time_mask(lengths, x.shape[1]), float("-inf"))
        w = torch.softmax(logits, dim=1)[..., None]
        mu = (x * w).sum(1)
        rh = torch.sqrt((((x * x) * w).sum(1) - mu * mu).clamp(min=ODYSSEY_VAR_FLOOR))
        return torch.cat([mu, rh], dim=1)


class EmotionRegression(nn.Module):
    """Odyssey head (net/ser.py): [Linear → LayerNorm → ReLU → Dropout] × layers → Linear."""

    def __init__(
        self,
        input_dim: int,
        hidden_dim: int,
        num_layers: int,
        output_dim: int,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()

        def block(i: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Linear(i, hidden_dim), nn.LayerNorm(hidden_dim), nn.ReLU(), nn.Dropout(dropout)
            )

        self.fc = nn.ModuleList(
            [block(input_dim)] + [block(hidden_dim) for _ in range(num_layers - 1)]
        )
        self.out = nn.Sequential(nn.Linear(hidden_dim, output_dim))
        self.inp_drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp_drop(x)
        for fc in self.fc:
            h = fc(h)
        return self.out(h)


def wavlm_config(
    config: dict[str, Any], *, conv_bias: bool | None = None, masked_spec_embed: bool | None = None
) -> Any:
    """The WavLM backbone config of an Odyssey-layout ``config.json``.

    microsoft/wavlm-large values, with ``hidden_size``/``num_hidden_layers``/``num_attention_heads``
    from the Odyssey config and any ``ssl_config`` overrides; ``conv_bias`` and whether the
    checkpoint carries ``masked_spec_embed`` are taken from the weights when known.
    """
    from transformers import WavLMConfig

    ssl_type = config.get("ssl_type", "microsoft/wavlm-large")
    if ssl_type != "microsoft/wavlm-large" and "ssl_config" not in config:
        raise TeacherError(
            f"Odyssey-layout teacher with ssl_type {ssl_type!r}: only "
            "microsoft/wavlm-large is known offline; add an 'ssl_config' dict "
            "to config.json with the backbone's fields"
        )
    fields = dict(WAVLM_LARGE)
    for key in ("hidden_size", "num_hidden_layers", "num_attention_heads"):
        if key in config:
            fields[key] = config[key]
    if "intermediate_size" not in (config.get("ssl_config") or {}):
        fields["intermediate_size"] = 4 * int(fields["hidden_size"])
    fields.update(config.get("ssl_config") or {})
    if conv_bias is not None:
        fields["conv_bias"] = conv_bias
    if masked_spec_embed is not None and not masked_spec_embed:
        fields["mask_time_prob"] = 0.0
    return WavLMConfig(**fields)


class WavLMTeacher(Teacher):
    """WavLM-Odyssey layout: WavLM → attentive statistics pooling → :class:`EmotionRegression`."""

    def __init__(
        self,
        config: dict[str, Any],
        *,
        conv_bias: bool | None = None,
        masked_spec_embed: bool | None = None,
    ) -> None:
        super().__init__()
        from transformers import WavLMModel

        self._config = dict(config)
        cfg = wavlm_config(self._config, conv_bias=conv_bias, masked_spec_embed=masked_spec_embed)
        hidden = int(self._config.get("hidden_size", cfg.hidden_size))
        n_out = int(self._config.get("num_classes", len(LABELS)))
        self.ssl_model = WavLMModel(cfg)
        self.pool_model = AttentiveStatisticsPooling(hidden)
        self.ser_model = EmotionRegression(
            hidden * 2,
            hidden,
            int(self._config.get("classifier_hidden_layers", 1)),
            n_out,
            dropout=float(self._config.get("classifier_dropout_prob", 0.5)),
        )
        self.mean = float(self._config.get("mean", 0.0))
        self.std = float(self._config.get("std", 1.0))
        self._order = _label_order(self._config, n_out, "WavLM-Odyssey teacher")
        self.min_samples = _receptive_field(cfg.conv_kernel, cfg.conv_stride)

    def forward_batch(self, wave: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        mask = time_mask(lengths, wave.shape[1])
        x = ((wave - self.mean) / (self.std + ODYSSEY_STD_EPS)) * mask.to(wave.dtype)
        with warnings.catch_warnings():  # WavLM mixes a bool padding mask with a float bias
            warnings.filterwarnings("ignore", message=".*mismatched key_padding_mask.*")
            hidden = self.ssl_model(x, attention_mask=mask.to(torch.long)).last_hidden_state
        frames = self.ssl_model._get_feat_extract_output_lengths(lengths)
        out = self.ser_model(self.pool_model(hidden, frames))
        return out if self._order is None else out[:, self._order]

    def config_dict(self) -> dict[str, Any]:
        return dict(self._config)


# --- ensemble --------------------------------------------------------------------------------
class EnsembleTeacher(Teacher):
    """Mean of the members' outputs (the paper's Dawn + WavLM teacher); optional clip to [0, 1]."""

    def __init__(self, members: Sequence[Teacher], *, clip: bool = False) -> None:
        super().__init__()
        if len(members) < 2:
            raise ValueError("an ensemble needs at least two members")
        self.members = nn.ModuleList(members)
        self.clip = clip
        self.name = ENSEMBLE_PREFIX + "+".join(m.name for m in members)

    def forward(
        self,
        wave: torch.Tensor,
        lengths: torch.Tensor | Sequence[int] | None = None,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        lengths = lengths_from(wave, lengths, mask)
        out = torch.stack([m(wave, lengths) for m in self.members]).mean(0)
        return out.clamp(0.0, 1.0) if self.clip else out

    def config_dict(self) -> dict[str, Any]:
        return {
            "model_type": "wav2small-ensemble",
            "architectures": ["EnsembleTeacher"],
            "members": [f"member-{i}" for i in range(len(self.members))],
            "member_names": [m.name for m in self.members],
            "clip": self.clip,
            "id2label": dict(enumerate(LABELS)),
        }


# --- the synthetic-world teacher ---------------------------------------------------------------
SYNTH_DEFAULTS: dict[str, Any] = {
    "win": 1024,  # 64 ms analysis window: resolves the low harmonics
    "hop": 320,  # 20 ms (50 frames/s)
    "n_mels": 128,
    "fmin": 50.0,
    "fmax": 8000.0,
    "pitch_bins": 48,  # autocorrelation pitch salience, log-spaced over pitch_range
    "pitch_range": [55.0, 440.0],
    "f0_track": True,  # add two channels: salience-peak F0 (octaves) and its height (voicing)
    "pitch_conv": 0,  # >0: a 2-D conv stem with this many channels on the salience map
    "channels": [128, 128, 128],  # temporal convolutions (kernel 5, dilations 1, 2, 4)
    "time_pool": 2,  # after the first convolution
    "gru_hidden": 64,
    "dropout": 0.3,
}
#: Pitch-track preference for higher candidates, in salience per octave (cf. Praat's octave cost).
OCTAVE_COST = 0.05
#: Zero-padded FFT size: twice the window, so the autocorrelation is linear, not circular.
_FFT_FACTOR = 2


def reverse_padded(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Reverse each (batch, time, …) sequence within its length; padding stays in place."""
    t = torch.arange(x.shape[1], device=x.device)[None, :]
    idx = lengths[:, None] - 1 - t
    idx = torch.where(idx >= 0, idx, t)
    return torch.gather(x, 1, idx[..., None].expand_as(x))


class SynthTeacher(Teacher):
    """Log-mel + pitch-salience features → temporal CNN → bidirectional GRU (≈0.3M parameters).

    Why this design: on the built-in corpus arousal and dominance are carried by level, tilt,
    rate and pitch, and valence by the F0 contour, "smile" formants, roughness and tremor
    (SYNTH.md). Each 64 ms frame (50 frames/s) gives 128 log-mel bands (envelope, level,
    formants, breath) and a pitch-salience vector: the frame's normalised autocorrelation
    (Boersma's window-corrected method) read at ``pitch_bins`` log-spaced pitches, where a change
    of F0 is a shift along the vector and its peak height is the periodicity. Dilated temporal
    convolutions and a GRU then model how these move over the utterance (the contour, tremor,
    pauses); attention and mean pooling give the utterance vector. Everything is dense 1-D work,
    which CPUs do fast: a 2-D CNN over the 128-band image gave similar accuracy per epoch but was
    several times slower to train on two shared cores.

    The log-mel keeps the absolute level (loudness carries arousal and dominance). Padding
    invariance: frames are uncentred (frames that touch padding are dropped), every layer's
    output is zeroed beyond its valid length (so convolutions see the same zeros as at an
    unpadded edge), and the backward GRU runs on each sequence reversed within its length.
    """

    def __init__(self, config: dict[str, Any] | None = None) -> None:
        super().__init__()
        from wav2small.frontend import mel_filterbank

        config = dict(config or {})
        if "n_fft" in config:  # the first release's name for the analysis window
            config.setdefault("win", config.pop("n_fft"))
        cfg = {**SYNTH_DEFAULTS, **config}
        cfg["model_type"] = "wav2small-synth-teacher"
        cfg["architectures"] = ["SynthTeacher"]
        cfg["id2label"] = {str(i): label for i, label in enumerate(LABELS)}
        self._config = cfg
        self.win, self.hop = int(cfg["win"]), int(cfg["hop"])
        self.n_fft = _FFT_FACTOR * self.win
        self.min_samples = self.win
        self.n_mels, n_pitch = int(cfg["n_mels"]), int(cfg["pitch_bins"])
        mel = mel_filterbank(
            n_fft=self.n_fft, n_mels=self.n_mels, fmin=float(cfg["fmin"]), fmax=float(cfg["fmax"])
        )
        self.register_buffer("mel", torch.from_numpy(mel), persistent=False)
        window = torch.hann_window(self.win)
        self.register_buffer("window", window, persistent=False)
        # window autocorrelation r_w(τ)/r_w(0), for Boersma's correction
        spec = torch.fft.rfft(window, n=self.n_fft)
        r_w = torch.fft.irfft(spec.real**2 + spec.imag**2, n=self.n_fft)[: self.win]
        self.register_buffer("window_ac", r_w / r_w[0], persistent=False)
        low, high = (float(f) for f in cfg["pitch_range"])
        freqs = low * (high / low) ** torch.linspace(0, 1, n_pitch, dtype=torch.float64)
        lags = (SAMPLE_RATE / freqs).float()
        self.register_buffer("pitch_lags", lags, persistent=False)
        self.f0_track = bool(cfg["f0_track"])
        n_feat = self.n_mels + n_pitch + (2 if self.f0_track else 0)
        self.register_buffer("feat_mean", torch.zeros(n_feat))
        self.register_buffer("feat_std", torch.ones(n_feat))
        self.n_pitch, self.pitch_conv = n_pitch, int(cfg["pitch_conv"])
        c_in = n_feat
        if self.pitch_conv:
            c = self.pitch_conv
            self.pitch_stem = nn.ModuleList(
                [
                    nn.Sequential(
                        nn.Conv2d(cin, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU()
                    )
                    for cin in (1, c)
                ]
            )
            c_in += c * (n_pitch // 2)
        convs = []
        for i, c_out in enumerate(cfg["channels"]):
            d = 2**i
            convs.append(
                nn.Sequential(
                    nn.Conv1d(c_in, int(c_out), 5, padding=2 * d, dilation=d, bias=False),
                    nn.BatchNorm1d(int(c_out)),
                    nn.ReLU(),
                )
            )
            c_in = int(c_out)
        self.convs = nn.ModuleList(convs)
        self.time_pool = int(cfg["time_pool"])
        hidden = int(cfg["gru_hidden"])
        self.gru_fwd = nn.GRU(c_in, hidden, batch_first=True)
        self.gru_bwd = nn.GRU(c_in, hidden, batch_first=True)
        self.attn = nn.Linear(2 * hidden, 1)
        self.dropout = nn.Dropout(float(cfg["dropout"]))
        self.head = nn.Linear(4 * hidden, len(LABELS))

    @property
    def level_channels(self) -> int:
        """The first this-many feature channels are in dB (a gain change shifts them)."""
        return self.n_mels

    def features_raw(
        self, wave: torch.Tensor, lengths: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Unstandardised features (batch, frames, n_mels + pitch_bins) and valid frame counts.

        Channels: log-mel in dB, the pitch salience (normalised autocorrelation in [-1, 1]) and,
        with ``f0_track``, the salience peak's F0 (octaves above the lowest pitch) and height.
        """
        frames = torch.div(lengths - self.win, self.hop, rounding_mode="floor") + 1
        if wave.shape[1] < self.win:
            wave = F.pad(wave, (0, self.win - wave.shape[1]))
        x = wave.unfold(1, self.win, self.hop) * self.window  # (batch, frames, win)
        spec = torch.fft.rfft(x, n=self.n_fft)
        power = spec.real**2 + spec.imag**2  # (batch, frames, n_fft // 2 + 1)
        logmel = 10 * torch.log10(torch.matmul(power, self.mel.T).clamp(min=1e-10))
        ac = torch.fft.irfft(power, n=self.n_fft)[..., : self.win]
        ac = ac / ac[..., :1].clamp(min=1e-10) / self.window_ac.clamp(min=1e-3)
        lo = self.pitch_lags.floor().long()
        frac = self.pitch_lags - lo
        salience = (ac[..., lo] * (1 - frac) + ac[..., lo + 1] * frac).clamp(-1.0, 1.0)
        parts = [logmel, salience]
        if self.f0_track:
            parts += list(self._f0(salience))
        return torch.cat(parts, dim=2), frames

    def _f0(self, salience: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Salience peak: log2 F0 above the lowest pitch (parabolic interpolation) and height."""
        n = salience.shape[-1]
        # Praat's octave cost: among near-equal peaks (the period and its multiples) prefer the
        # highest pitch, so the track does not jump an octave down.
        low, high = (float(f) for f in self._config["pitch_range"])
        octaves_per_bin = math.log2(high / low) / max(1, n - 1)
        ramp = torch.arange(n, device=salience.device, dtype=salience.dtype) * octaves_per_bin
        i = (salience + OCTAVE_COST * ramp).argmax(-1, keepdim=True)
        peak = salience.gather(-1, i)
        left = salience.gather(-1, (i - 1).clamp(min=0))
        right = salience.gather(-1, (i + 1).clamp(max=n - 1))
        curve = left - 2 * peak + right
        shift = torch.where(curve < -1e-6, 0.5 * (left - right) / curve.clamp(max=-1e-6), 0.0)
        octaves = (i + shift.clamp(-0.5, 0.5)) * octaves_per_bin
        return octaves, peak

    def standardise(self, feats: torch.Tensor) -> torch.Tensor:
        """Fixed per-channel standardisation (statistics of the training set, stored as buffers)."""
        return (feats - self.feat_mean) / self.feat_std

    def forward_batch(self, wave: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        feats, frames = self.features_raw(wave, lengths)
        return self.forward_features(self.standardise(feats), frames)

    def forward_features(self, feats: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
        """(batch, frames, channels) standardised features with valid frame counts → (batch, 3)."""
        x = feats.transpose(1, 2) * time_mask(frames, feats.shape[1])[:, None, :].to(feats.dtype)
        if self.pitch_conv:
            x = torch.cat([x, self._pitch_stem(x, frames)], dim=1)
        for i, conv in enumerate(self.convs):
            x = conv(x)
            if i == 0 and self.time_pool > 1:
                x = F.max_pool1d(x, self.time_pool)
                frames = torch.div(frames, self.time_pool, rounding_mode="floor")
            x = x * time_mask(frames, x.shape[2])[:, None, :].to(x.dtype)
        frames = frames.clamp(min=1)
        x = self.dropout(x.transpose(1, 2))
        forward, _ = self.gru_fwd(x)
        backward, _ = self.gru_bwd(reverse_padded(x, frames))
        h = torch.cat([forward, reverse_padded(backward, frames)], dim=2)
        t = h.shape[1]
        logits = self.attn(h).squeeze(2).masked_fill(~time_mask(frames, t), float("-inf"))
        w = torch.softmax(logits, dim=1)[..., None]
        pooled = torch.cat([(h * w).sum(1), masked_mean(h, frames)], dim=1)
        return self.head(self.dropout(pooled))

    def _pitch_stem(self, x: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
        """2-D convolutions over (time × pitch) of the salience map → (batch, channels, time)."""
        mask = time_mask(frames, x.shape[2])[:, None, :, None].to(x.dtype)
        p = x[:, self.n_mels : self.n_mels + self.n_pitch].transpose(1, 2)[:, None]
        for i, block in enumerate(self.pitch_stem):
            p = block(p)
            if i == len(self.pitch_stem) - 1:
                p = F.max_pool2d(p, (1, 2))
            p = p * mask
        b, c, t, f = p.shape
        return p.permute(0, 1, 3, 2).reshape(b, c * f, t)

    def config_dict(self) -> dict[str, Any]:
        return dict(self._config)


# --- weights ------------------------------------------------------------------------------------
def _from_legacy_key(key: str) -> str:
    for old, new in _LEGACY_WEIGHT_NORM.items():
        if key.endswith(old):
            return key[: -len(old)] + new
    return key


def _to_legacy_key(key: str) -> str:
    for old, new in _LEGACY_WEIGHT_NORM.items():
        if key.endswith(new):
            return key[: -len(new)] + old
    return key


def read_weights(folder: Path) -> dict[str, torch.Tensor]:
    """Tensors of ``model.safetensors`` (preferred) or ``pytorch_model.bin`` (weights_only)."""
    st, binary = folder / SAFETENSORS_FILE, folder / BIN_FILE
    try:
        if st.is_file():
            from safetensors.torch import load_file

            return load_file(str(st))
        if binary.is_file():
            state = torch.load(binary, map_location="cpu", weights_only=True)
            if not isinstance(state, dict):
                raise TeacherError(f"{binary}: expected a state dict, got {type(state).__name__}")
            return state
    except TeacherError:
        raise
    except Exception as e:  # corrupt file, unsafe pickle, ...
        raise TeacherError(f"{folder}: cannot read the weights: {e}") from e
    raise TeacherError(f"{folder}: no {SAFETENSORS_FILE} or {BIN_FILE}")


def load_weights(model: nn.Module, state: dict[str, torch.Tensor], where: str) -> None:
    """Load a checkpoint state dict strictly (legacy weight-norm names accepted).

    Raises:
        TeacherError: missing or unexpected keys, or shape mismatches, listed by name.
    """
    state = {_from_legacy_key(k): v for k, v in state.items()}
    own = model.state_dict()
    optional = [k for k in set(state) ^ set(own) if k.split(".")[-1] in _OPTIONAL_KEYS]
    for key in optional:
        state.pop(key, None)
    missing = sorted(set(own) - set(state) - set(optional))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or shapes:

        def show(keys: list[str]) -> str:
            return ", ".join(keys[:8]) + (f" … (+{len(keys) - 8})" if len(keys) > 8 else "")

        problems = [
            f"missing keys: {show(missing)}" if missing else "",
            f"unexpected keys: {show(unexpected)}" if unexpected else "",
            "shape mismatch: "
            + show([f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in shapes])
            if shapes
            else "",
        ]
        raise TeacherError(
            f"{where}: weights do not fit the config: " + "; ".join(p for p in problems if p)
        )
    model.load_state_dict(state, strict=False)


# --- resolving names ---------------------------------------------------------------------------
def _hub_offline() -> bool:
    value = os.environ.get("HF_HUB_OFFLINE", "").strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    try:
        from huggingface_hub import constants

        return bool(constants.HF_HUB_OFFLINE)
    except Exception:  # pragma: no cover - very old huggingface_hub
        return False


def _snapshot(repo_id: str, patterns: list[str], local_only: bool) -> Path:
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(repo_id, allow_patterns=patterns, local_files_only=local_only))


def resolve_hub(repo_id: str) -> Path:
    """Local folder of a hub model (config + safetensors, else pytorch_model.bin), via the cache.

    Raises:
        TeacherError: the id is neither cached nor downloadable (offline, unknown id, ...).
    """
    offline = _hub_offline()
    errors: list[str] = []
    for local_only in [True] if offline else [False, True]:
        try:
            folder = _snapshot(repo_id, ["*.json", SAFETENSORS_FILE], local_only)
            if not (folder / SAFETENSORS_FILE).is_file():
                folder = _snapshot(repo_id, ["*.json", BIN_FILE], local_only)
            if (folder / CONFIG_FILE).is_file():
                return folder
            errors.append(f"{folder} has no {CONFIG_FILE}")
        except Exception as e:  # offline, unknown repo, HTTP errors, ...
            errors.append(f"{type(e).__name__}: {e}".splitlines()[0])
    how = "HF_HUB_OFFLINE is set" if offline else "the hub could not be reached"
    raise TeacherError(
        f"teacher {repo_id!r}: not a local folder and not in the Hugging Face cache, and {how}. "
        f"Fetch it on a machine with internet (`huggingface-cli download {repo_id}`) and copy the "
        f"cache, or pass the path of a local copy. ({'; '.join(errors)[:300]})"
    )


def _asset_folder(name: str) -> Path:
    from importlib.resources import files

    return Path(str(files("wav2small") / "assets" / name))


def _looks_like_hub_id(name: str) -> bool:
    parts = name.split("/")
    return (
        len(parts) == 2
        and all(parts)
        and not name.startswith((".", "~"))
        and not os.path.isabs(name)
    )


def resolve(name_or_path: str | os.PathLike) -> Path:
    """Folder holding a teacher checkpoint: a local folder, a package asset, or a hub id."""
    name = os.fspath(name_or_path)
    name = ALIASES.get(name, name)
    if name == SYNTH_ASSET:
        folder = _asset_folder(SYNTH_ASSET)
        if not (folder / CONFIG_FILE).is_file():
            raise TeacherError(
                f"the built-in teacher asset {folder} is missing; rebuild it with `make teacher`"
            )
        return folder
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir():
            raise TeacherError(
                f"{path}: a teacher is a folder with {CONFIG_FILE} and weights, not a file"
            )
        if not (path / CONFIG_FILE).is_file():
            raise TeacherError(f"{path}: no {CONFIG_FILE} in this folder")
        return path
    if _looks_like_hub_id(name):
        return resolve_hub(name)
    raise TeacherError(f"teacher {name!r}: no such folder, and not a Hugging Face id (org/name)")


def _read_config(folder: Path) -> dict[str, Any]:
    try:
        config = json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise TeacherError(f"{folder / CONFIG_FILE}: cannot read the config: {e}") from e
    if not isinstance(config, dict):
        raise TeacherError(f"{folder / CONFIG_FILE}: expected a JSON object")
    return config


def teacher_kind(config: dict[str, Any]) -> str:
    """'dawn', 'odyssey', 'ensemble' or 'synth' from a ``config.json``; '' when unknown."""
    arch = " ".join(config.get("architectures") or [])
    model_type = config.get("model_type", "")
    if model_type == "wav2small-ensemble":
        return "ensemble"
    if model_type == "wav2small-synth-teacher":
        return "synth"
    if model_type == "ser" or "SERModel" in arch:
        return "odyssey"
    if model_type == "wav2vec2" or "Wav2Vec2" in arch:
        return "dawn"
    return ""


def _build(folder: Path, config: dict[str, Any], state: dict[str, torch.Tensor]) -> Teacher:
    kind = teacher_kind(config)
    if kind == "dawn":
        return Wav2Vec2Teacher(config)
    if kind == "odyssey":
        conv_bias = any(k.endswith("feature_extractor.conv_layers.0.conv.bias") for k in state)
        masked = any(k.endswith("masked_spec_embed") for k in state)
        return WavLMTeacher(config, conv_bias=conv_bias, masked_spec_embed=masked)
    if kind == "synth":
        return SynthTeacher(config)
    raise TeacherError(
        f"{folder / CONFIG_FILE}: unknown teacher layout (model_type {config.get('model_type')!r}, "
        f"architectures {config.get('architectures')!r}); expected Dawn (wav2vec2), WavLM-Odyssey "
        "(ser), a wav2small ensemble or the synthetic-world teacher"
    )


def _load_folder(folder: Path, label: str) -> Teacher:
    config = _read_config(folder)
    if teacher_kind(config) == "ensemble":
        members = [_load_folder(folder / sub, f"{label}/{sub}") for sub in config["members"]]
        for member, name in zip(members, config.get("member_names") or [], strict=False):
            member.name = name
        teacher: Teacher = EnsembleTeacher(members, clip=bool(config.get("clip", False)))
        teacher.name = label
        return teacher
    state = read_weights(folder)
    teacher = _build(folder, config, state)
    load_weights(teacher, state, str(folder))
    teacher.name = label
    return teacher


def load_teacher(
    name_or_path: str | os.PathLike, *, device: str | torch.device = "cpu", clip: bool = False
) -> Teacher:
    """Load a teacher by alias, local folder, Hugging Face id, or ``ensemble:A+B``.

    Args:
        name_or_path: ``dawn``, ``odyssey``, ``ensemble`` (Dawn + Odyssey), ``synth`` (the shipped
            synthetic-world teacher), a folder in any supported layout, a hub id, or
            ``ensemble:A+B[+C…]`` of any of these.
        device: where to put the model.
        clip: for ensembles, clip the averaged outputs to [0, 1].

    Returns:
        The teacher in eval mode: ``teacher(wave, lengths=None) -> (batch, 3)`` A/D/V.

    Raises:
        TeacherError: unknown name, missing/corrupt files, weights that do not fit the config,
            or a hub id that cannot be resolved offline (the message names it).
    """
    name = os.fspath(name_or_path)
    full = ALIASES.get(name, name)
    if full.startswith(ENSEMBLE_PREFIX):
        parts = [p for p in full[len(ENSEMBLE_PREFIX) :].split("+") if p]
        if len(parts) < 2:
            raise TeacherError(f"{name!r}: an ensemble needs two or more members, 'ensemble:A+B'")
        teacher: Teacher = EnsembleTeacher([load_teacher(p) for p in parts], clip=clip)
    else:
        teacher = _load_folder(resolve(full), name)
    teacher.name = name
    return teacher.to(device).eval()


def _write_atomic(path: Path, write) -> None:
    from wav2small.inputs import atomic_write

    with atomic_write(path) as tmp:
        write(tmp)


def save_teacher(model: Teacher, path: str | os.PathLike) -> Path:
    """Save a teacher in its Hugging Face layout (``config.json`` + ``model.safetensors``).

    The folder reloads with :func:`load_teacher`; Dawn and Odyssey checkpoints keep their public
    key names. Each file is written under a temporary name and renamed.

    Returns:
        The folder.
    """
    from safetensors.torch import save_file

    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    config = model.config_dict()
    if isinstance(model, EnsembleTeacher):
        for sub, member in zip(config["members"], model.members, strict=True):
            save_teacher(member, folder / sub)
    else:
        state = {
            k: v.detach().to("cpu").contiguous().clone()
            for k, v in model.export_state_dict().items()
        }
        _write_atomic(
            folder / SAFETENSORS_FILE,
            lambda tmp: save_file(state, str(tmp), metadata={"format": "pt"}),
        )
    text = json.dumps(config, indent=2, sort_keys=True) + "\n"
    _write_atomic(folder / CONFIG_FILE, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    return folder
