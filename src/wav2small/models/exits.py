"""Early-exit (self-distillation) wrapper around a transformers wav2vec2 or WavLM backbone.

Ren et al., "Fast Yet Effective Speech Emotion Recognition with Self-distillation" (ICASSP 2023,
arXiv 2210.14636; SPEC §2) fine-tune a wav2vec 2.0 backbone together with shallow *exits* on
intermediate transformer layers. At inference the backbone is run only up to the chosen exit.

Layout (the authors' code, ``main/models_pytorch.py``, ``Wav2vec2DistillRNNnew`` with GRU):

* exit after layer ``k`` (default ``k`` in 3, 8, 10): GRU(H→H) → LayerNorm → SELU → mean over
  time → Linear(H, 256) → Linear(256, out), fed by the output of encoder layer ``k``
  (``hidden_states[k]`` of transformers);
* deepest head: mean over time of the backbone's ``last_hidden_state`` → Linear(H, 256) →
  Linear(256, out);
* the *pooled feature* of each head, matched by the feature loss, is the H-dim mean over time
  (``feature_level="embedding"``, the authors' run script) or the 256-dim first linear
  (``"linear"``).

``out`` is the number of classes (``task="classes"``: logits) or 3 (``task="adv"``: arousal,
dominance, valence, raw regressor values).

Truncated inference: :meth:`EarlyExitModel.forward` with ``exit=k`` runs the convolutional
feature encoder, the feature projection, the positional convolution and layers ``1..k`` only,
mirroring ``Wav2Vec2Encoder[StableLayerNorm]`` and ``WavLMEncoder[StableLayerNorm]``
of transformers (for the post-LN variants the encoder layer norm sits before layer 1; for the
stable-layer-norm variants it sits after the last layer and is used by the deepest head only).
``exit="fusion"`` runs up to the deepest *exit* and picks, per sample, the exit whose softmax has
the largest top-1 − top-2 margin (ties: the shallower exit), as the authors' ``fusion_pred`` does
over the exits (it compares raw logits; we compare probabilities, as the paper describes).
Fusion is defined for classes only: A/D/V regressors have no class margin, so it raises there.

Padding: ``lengths`` (valid samples per clip) masks attention as transformers does; padded frames
are excluded from every mean over time, and the exits' GRUs are unidirectional, so each clip's
output does not depend on the batch it sits in. Group-norm feature encoders (wav2vec2-base)
normalise over time, so with padding the convolutional encoder is run clip by clip.

Backbones: a local folder or hub id in Hugging Face layout (``Wav2Vec2Model``/``WavLMModel``,
also the Dawn checkpoint, whose ``wav2vec2.*`` weights load as the backbone, and the
WavLM-Odyssey layout via :mod:`wav2small.teachers`), ``backbone-synth`` (our own backbone
pretrained on the built-in corpus, :mod:`wav2small.pretrain`; no third-party pretrained weights
are available offline), or ``random:<preset>`` for a randomly initialised backbone of a known
shape (:data:`RANDOM_BACKBONES`).
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from wav2small import LABELS, SAMPLE_RATE
from wav2small.ops import masked_mean, prenorm, receptive_field, time_mask

#: Exits of the paper's default configuration (after encoder layers 3, 8 and 10).
DEFAULT_EXITS = (3, 8, 10)
#: Width of the first linear layer of every head (Linear(H, 256) → Linear(256, out)).
HEAD_DIM = 256
TASKS = ("classes", "adv")
FEATURE_LEVELS = ("embedding", "linear")
DEEPEST = "deepest"
FUSION = "fusion"
RANDOM_PREFIX = "random:"
#: ``preset`` written into checkpoints and ONNX metadata of early-exit models.
PRESET = "early-exit"
_BACKBONE_TYPES = ("wav2vec2", "wavlm")

_CONV7 = {"conv_kernel": [10, 3, 3, 3, 3, 2, 2], "conv_stride": [5, 2, 2, 2, 2, 2, 2]}
_NO_AUGMENT = {"mask_time_prob": 0.0, "layerdrop": 0.0}

#: Randomly initialised backbones: ``random:<name>`` → (model type, config fields).
#: ``*-base`` have the full wav2vec2-base / WavLM-base shapes; ``*-small`` (hidden 256, 12
#: layers, 4 heads, 128-channel conv encoder) is the CPU benchmark's backbone; ``*-tiny``
#: (hidden 32, 4 layers) is for tests. Small and tiny have no SpecAugment and no LayerDrop.
RANDOM_BACKBONES: dict[str, tuple[str, dict[str, Any]]] = {
    "wav2vec2-base": ("wav2vec2", {}),
    "wavlm-base": ("wavlm", {}),
    "wav2vec2-small": ("wav2vec2", {
        **_CONV7, **_NO_AUGMENT, "hidden_size": 256, "num_hidden_layers": 12,
        "num_attention_heads": 4, "intermediate_size": 1024, "conv_dim": [128] * 7,
        "num_conv_pos_embeddings": 64, "num_conv_pos_embedding_groups": 16,
    }),
    "wav2vec2-mini": ("wav2vec2", {
        **_CONV7, **_NO_AUGMENT, "hidden_size": 128, "num_hidden_layers": 12,
        "num_attention_heads": 4, "intermediate_size": 512, "conv_dim": [64] * 7,
        "num_conv_pos_embeddings": 32, "num_conv_pos_embedding_groups": 8,
    }),
    "wavlm-small": ("wavlm", {
        **_CONV7, **_NO_AUGMENT, "hidden_size": 256, "num_hidden_layers": 12,
        "num_attention_heads": 4, "intermediate_size": 1024, "conv_dim": [128] * 7,
        "num_conv_pos_embeddings": 64, "num_conv_pos_embedding_groups": 16,
    }),
    "wav2vec2-tiny": ("wav2vec2", {
        **_CONV7, **_NO_AUGMENT, "hidden_size": 32, "num_hidden_layers": 4,
        "num_attention_heads": 2, "intermediate_size": 64, "conv_dim": [32] * 7,
        "num_conv_pos_embeddings": 16, "num_conv_pos_embedding_groups": 4,
        "feat_extract_norm": "layer",
    }),
    "wavlm-tiny": ("wavlm", {
        **_CONV7, **_NO_AUGMENT, "hidden_size": 32, "num_hidden_layers": 4,
        "num_attention_heads": 2, "intermediate_size": 64, "conv_dim": [32] * 7,
        "num_conv_pos_embeddings": 16, "num_conv_pos_embedding_groups": 4,
        "feat_extract_norm": "layer", "num_buckets": 32, "max_bucket_distance": 64,
    }),
}  # fmt: skip


class ExitsError(ValueError):
    """An early-exit model that cannot be built, loaded or run as asked."""


# --- backbones ------------------------------------------------------------------------------
def backbone_config(model_type: str, fields: dict[str, Any] | None = None):
    """A transformers ``Wav2Vec2Config`` / ``WavLMConfig`` from plain fields."""
    from transformers import Wav2Vec2Config, WavLMConfig

    if model_type not in _BACKBONE_TYPES:
        raise ExitsError(f"backbone type must be one of {_BACKBONE_TYPES}, got {model_type!r}")
    cls = Wav2Vec2Config if model_type == "wav2vec2" else WavLMConfig
    return cls(**(fields or {}))


def build_backbone(model_type: str, fields: dict[str, Any] | None = None) -> nn.Module:
    """A randomly initialised ``Wav2Vec2Model`` or ``WavLMModel``."""
    from transformers import Wav2Vec2Model, WavLMModel

    config = backbone_config(model_type, fields)
    cls = Wav2Vec2Model if model_type == "wav2vec2" else WavLMModel
    return cls(config)


def load_backbone(spec: str | os.PathLike) -> nn.Module:
    """Load a backbone by ``random:<preset>``, local folder or Hugging Face id.

    Args:
        spec: ``random:<name>`` (see :data:`RANDOM_BACKBONES`), ``backbone-synth`` (the shipped
            backbone pretrained on the built-in corpus, :mod:`wav2small.pretrain`), a folder in
            Hugging Face layout
            (``model_type`` wav2vec2 or wavlm; extra head weights such as Dawn's ``classifier.*``
            are ignored), a WavLM-Odyssey folder (``model_type`` "ser"), or a hub id (resolved
            offline from the local cache when ``HF_HUB_OFFLINE`` is set).

    Raises:
        ExitsError: unknown preset, unreadable folder, or a model that is not wav2vec2/WavLM.
    """
    spec = os.fspath(spec)
    if spec.startswith(RANDOM_PREFIX):
        name = spec[len(RANDOM_PREFIX) :]
        if name not in RANDOM_BACKBONES:
            raise ExitsError(
                f"{spec!r}: unknown random backbone; choose from "
                + ", ".join(RANDOM_PREFIX + k for k in RANDOM_BACKBONES)
            )
        model_type, fields = RANDOM_BACKBONES[name]
        return build_backbone(model_type, fields)
    from wav2small.pretrain import BACKBONE_ASSET, backbone_asset

    if spec == BACKBONE_ASSET and not Path(spec).exists():
        spec = str(backbone_asset())  # the shipped backbone (`wav2small pretrain`)
    folder = Path(spec)
    if folder.is_dir() and (folder / "config.json").is_file():
        try:
            config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise ExitsError(f"{folder / 'config.json'}: cannot read the config: {e}") from e
        if config.get("model_type") == "ser":  # WavLM-Odyssey layout: take its WavLM
            from wav2small.teachers import load_teacher

            return load_teacher(folder).ssl_model
    elif not folder.exists() and spec.count("/") != 1:
        raise ExitsError(f"backbone {spec!r}: no such folder, not random:<preset>, not a hub id")
    return _auto_backbone(spec)


def _auto_backbone(spec: str) -> nn.Module:
    from transformers import AutoModel

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = AutoModel.from_pretrained(spec)
    except Exception as e:  # noqa: BLE001 - transformers raises many types; name the spec
        raise ExitsError(f"backbone {spec!r}: cannot load it with transformers: {e}") from e
    if _model_type(model) not in _BACKBONE_TYPES:
        raise ExitsError(
            f"backbone {spec!r}: {type(model).__name__} is not a wav2vec2 or WavLM model"
        )
    return model


def _model_type(backbone: nn.Module) -> str:
    return str(getattr(getattr(backbone, "config", None), "model_type", ""))


# --- heads ----------------------------------------------------------------------------------
#: Old name of :func:`wav2small.ops.time_mask` (True for the first ``frames[i]`` frames).
frame_mask = time_mask


class ExitHead(nn.Module):
    """GRU(H→H) → LayerNorm → SELU → mean over time → Linear(H, 256) → Linear(256, out)."""

    def __init__(self, hidden: int, n_out: int, head_dim: int = HEAD_DIM) -> None:
        super().__init__()
        self.gru = nn.GRU(hidden, hidden, batch_first=True)
        self.norm = nn.LayerNorm(hidden)
        self.linear = nn.Linear(hidden, head_dim)
        self.classifier = nn.Linear(head_dim, n_out)

    def forward(
        self, hidden: torch.Tensor, frames: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(batch, time, H) → (output, H-dim pooled, 256-dim linear feature)."""
        x, _ = self.gru(hidden)  # unidirectional: valid frames never see the padding
        pooled = masked_mean(F.selu(self.norm(x)), frames)
        lin = self.linear(pooled)
        return self.classifier(lin), pooled, lin


class DeepestHead(nn.Module):
    """Mean over time → Linear(H, 256) → Linear(256, out)."""

    def __init__(self, hidden: int, n_out: int, head_dim: int = HEAD_DIM) -> None:
        super().__init__()
        self.linear = nn.Linear(hidden, head_dim)
        self.classifier = nn.Linear(head_dim, n_out)

    def forward(
        self, hidden: torch.Tensor, frames: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(batch, time, H) → (output, H-dim pooled, 256-dim linear feature)."""
        pooled = masked_mean(hidden, frames)
        lin = self.linear(pooled)
        return self.classifier(lin), pooled, lin


def fuse_by_margin(logits: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sample, the logits of the head whose softmax has the largest top-1 − top-2 margin.

    Args:
        logits: one (batch, classes) tensor per exit, shallowest first (classes ≥ 2).

    Returns:
        (batch, classes) fused logits and the (batch,) index of the chosen head; ties go to
        the shallower head.
    """
    stacked = torch.stack(list(logits))  # (E, B, C)
    if stacked.shape[-1] < 2:
        raise ExitsError("fusion needs at least two classes")
    top2 = stacked.softmax(dim=-1).topk(2, dim=-1).values
    margin = top2[..., 0] - top2[..., 1]  # (E, B)
    choice = margin.argmax(dim=0)  # first maximum → shallowest on ties
    fused = stacked.gather(0, choice[None, :, None].expand(1, *stacked.shape[1:]))[0]
    return fused, choice


# --- the model ------------------------------------------------------------------------------
@dataclass
class ExitsConfig:
    """Everything that rebuilds an :class:`EarlyExitModel` (weights aside).

    Attributes:
        task: ``"classes"`` (logits over ``classes``) or ``"adv"`` (arousal, dominance, valence).
        classes: class names in output order (``task="classes"``); ignored for ``"adv"``.
        exits: encoder layers followed by an exit, each in ``1 .. num_layers − 1``; empty for
            plain fine-tuning (deepest head only).
        head_dim: width of the heads' first linear layer.
        feature_level: pooled feature matched by the feature loss: ``"embedding"`` (H-dim mean
            over time, the authors' default) or ``"linear"`` (256-dim).
        normalize: per-utterance zero-mean unit-variance input (Wav2Vec2FeatureExtractor).
        backbone_type: ``"wav2vec2"`` or ``"wavlm"``.
        backbone_config: the backbone's transformers config as a dict.
        backbone_name: where the backbone came from (informative).
    """

    task: str = "classes"
    classes: tuple[str, ...] = ()
    exits: tuple[int, ...] = DEFAULT_EXITS
    head_dim: int = HEAD_DIM
    feature_level: str = "embedding"
    normalize: bool = True
    backbone_type: str = "wav2vec2"
    backbone_config: dict[str, Any] = field(default_factory=dict)
    backbone_name: str = ""

    def __post_init__(self) -> None:
        self.classes = tuple(str(c) for c in self.classes)
        self.exits = tuple(sorted({int(e) for e in self.exits}))
        if self.task not in TASKS:
            raise ExitsError(f"task must be one of {TASKS}, got {self.task!r}")
        if self.task == "classes" and len(self.classes) < 2:
            raise ExitsError(f"task 'classes' needs at least two class names, got {self.classes}")
        if self.feature_level not in FEATURE_LEVELS:
            raise ExitsError(
                f"feature_level must be one of {FEATURE_LEVELS}, got {self.feature_level!r}"
            )

    @property
    def n_out(self) -> int:
        """Outputs per head."""
        return len(self.classes) if self.task == "classes" else len(LABELS)

    @property
    def labels(self) -> tuple[str, ...]:
        """Names of the outputs, in order."""
        return self.classes if self.task == "classes" else LABELS


ExitKey = int | str


class EarlyExitModel(nn.Module):
    """A wav2vec2/WavLM backbone with exit heads after chosen layers and a deepest head.

    Call ``model(wave, lengths=None, exit=...)`` → (batch, out): logits (classes) or A/D/V.
    ``exit`` is a layer number from :attr:`exits`, ``"deepest"`` (default) or ``"fusion"``.
    Training uses :meth:`forward_all` (every head in one pass).
    """

    preset = PRESET

    def __init__(self, config: ExitsConfig, backbone: nn.Module | None = None) -> None:
        super().__init__()
        if backbone is None:
            backbone = build_backbone(config.backbone_type, config.backbone_config)
        kind = _model_type(backbone)
        if kind not in _BACKBONE_TYPES:
            raise ExitsError(f"backbone must be a wav2vec2 or WavLM model, got {kind!r}")
        if getattr(backbone.config, "add_adapter", False):
            raise ExitsError("backbones with an adapter (add_adapter=True) are not supported")
        config.backbone_type = kind
        config.backbone_config = _config_fields(backbone.config)
        n_layers = int(backbone.config.num_hidden_layers)
        bad = [e for e in config.exits if not 1 <= e < n_layers]
        if bad:
            raise ExitsError(
                f"exits {bad} out of range: a {n_layers}-layer backbone allows exits "
                f"1..{n_layers - 1} (layer {n_layers} is the deepest head)"
            )
        self.config = config
        self.backbone = backbone
        hidden = int(backbone.config.hidden_size)
        self.exit_heads = nn.ModuleDict(
            {str(k): ExitHead(hidden, config.n_out, config.head_dim) for k in config.exits}
        )
        self.deepest = DeepestHead(hidden, config.n_out, config.head_dim)
        self._group_norm = backbone.config.feat_extract_norm == "group"
        self.min_samples = receptive_field(backbone.config.conv_kernel, backbone.config.conv_stride)

    # --- facts ---------------------------------------------------------------------------
    @property
    def num_layers(self) -> int:
        """Encoder layers of the backbone."""
        return len(self.backbone.encoder.layers)

    @property
    def exits(self) -> tuple[int, ...]:
        """Layers followed by an exit, shallowest first."""
        return self.config.exits

    @property
    def stable_layer_norm(self) -> bool:
        """Whether the backbone is a pre-LN ("stable layer norm") variant."""
        return bool(self.backbone.config.do_stable_layer_norm)

    def config_dict(self) -> dict[str, Any]:
        """The :class:`ExitsConfig` as a JSON-able dict."""
        return asdict(self.config)

    def frames(self, lengths: torch.Tensor) -> torch.Tensor:
        """Encoder frames produced by ``lengths`` samples."""
        return self.backbone._get_feat_extract_output_lengths(lengths).to(torch.long)

    def check_exit(self, exit: ExitKey) -> ExitKey:  # noqa: A002 - the paper's word
        """Validate an exit: a layer in :attr:`exits`, ``"deepest"`` or ``"fusion"``."""
        if isinstance(exit, str) and exit.isdigit():
            exit = int(exit)  # noqa: A001
        if exit == DEEPEST:
            return exit
        if exit == FUSION:
            if self.config.task != "classes":
                raise ExitsError(
                    "exit 'fusion' picks the exit with the largest class-probability margin and "
                    "is defined for task 'classes' only; for A/D/V choose a layer or 'deepest'"
                )
            if not self.exits:
                raise ExitsError("exit 'fusion' needs a model with exits; this one has none")
            return exit
        if isinstance(exit, int) and not isinstance(exit, bool) and exit in self.exits:
            return exit
        raise ExitsError(
            f"unknown exit {exit!r}; this model has exits {list(self.exits)}, "
            f"'{DEEPEST}' and '{FUSION}'"
        )

    def depth(self, exit: ExitKey) -> int:  # noqa: A002
        """Encoder layers computed for ``exit``."""
        exit = self.check_exit(exit)  # noqa: A001
        if exit == DEEPEST:
            return self.num_layers
        return max(self.exits) if exit == FUSION else int(exit)

    def parameters_used(self, exit: ExitKey) -> int:  # noqa: A002
        """Parameters that inference at ``exit`` touches (SpecAugment's embedding excluded)."""
        exit = self.check_exit(exit)  # noqa: A001
        bb, enc = self.backbone, self.backbone.encoder
        modules: list[nn.Module] = [bb.feature_extractor, bb.feature_projection, enc.pos_conv_embed]
        modules += list(enc.layers[: self.depth(exit)])
        if not self.stable_layer_norm or exit == DEEPEST:
            modules.append(enc.layer_norm)
        if exit == DEEPEST:
            modules.append(self.deepest)
        elif exit == FUSION:
            modules += list(self.exit_heads.values())
        else:
            modules.append(self.exit_heads[str(exit)])
        return sum(p.numel() for m in modules for p in m.parameters())

    # --- backbone pieces -------------------------------------------------------------------
    def _normalise(self, wave: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
        """Per-utterance normalisation over each clip's valid samples (padding → 0)."""
        if not self.config.normalize:
            if lengths is None:
                return wave
            return wave * time_mask(lengths, wave.shape[1]).to(wave.dtype)
        return prenorm(wave, lengths)

    def _conv_features(self, wave: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
        """(batch, samples) → (batch, frames, conv_dim); group norm runs clip by clip if padded."""
        extractor = self.backbone.feature_extractor
        if lengths is None or not self._group_norm or bool((lengths == wave.shape[1]).all()):
            return extractor(wave).transpose(1, 2)
        rows = [
            extractor(wave[i : i + 1, : int(n)]).transpose(1, 2)[0]
            for i, n in enumerate(lengths.tolist())
        ]
        return nn.utils.rnn.pad_sequence(rows, batch_first=True)

    def _prepare(
        self, wave: torch.Tensor, lengths: torch.Tensor | Sequence[int] | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Pad to the receptive field, check shapes; → (wave, lengths or None)."""
        if wave.dim() != 2:
            raise ExitsError(f"input must be (batch, samples), got shape {tuple(wave.shape)}")
        if lengths is not None:
            lengths = torch.as_tensor(lengths, dtype=torch.long, device=wave.device)
            if lengths.shape != (wave.shape[0],):
                raise ExitsError(
                    f"lengths must have shape ({wave.shape[0]},), got {tuple(lengths.shape)}"
                )
            if (lengths < 1).any() or (lengths > wave.shape[1]).any():
                raise ExitsError(
                    f"lengths must lie in [1, {wave.shape[1]}], got {lengths.tolist()}"
                )
        if wave.shape[1] < self.min_samples:
            wave = F.pad(wave, (0, self.min_samples - wave.shape[1]))
            if lengths is None:
                lengths = torch.full((wave.shape[0],), self.min_samples, device=wave.device)
        if lengths is not None:
            lengths = lengths.clamp(min=self.min_samples)
        return wave, lengths

    def layer_outputs(
        self,
        wave: torch.Tensor,
        lengths: torch.Tensor | Sequence[int] | None = None,
        *,
        depth: int | None = None,
    ) -> Iterator[tuple[int, torch.Tensor, torch.Tensor | None]]:
        """Run the backbone layer by layer, stopping after ``depth`` layers.

        Yields ``(k, hidden, frames)`` after each encoder layer ``k`` = 1 .. depth: ``hidden`` is
        (batch, time, H), equal to transformers' ``hidden_states[k]``; ``frames`` the valid
        frames per clip (None without ``lengths``). Layers after ``depth`` are never computed.
        """
        depth = self.num_layers if depth is None else depth
        if not 1 <= depth <= self.num_layers:
            raise ExitsError(f"depth must lie in 1..{self.num_layers}, got {depth}")
        wave, lengths = self._prepare(wave, lengths)
        bb, enc = self.backbone, self.backbone.encoder
        features = self._conv_features(self._normalise(wave, lengths), lengths)
        hidden = bb.feature_projection(features)[0]
        frames = fmask = None
        if lengths is not None:
            frames = self.frames(lengths)
            fmask = time_mask(frames, hidden.shape[1])
        if self.training:
            hidden = bb._mask_hidden_states(hidden, attention_mask=fmask)
        if fmask is not None:  # padded frames enter the positional convolution as zeros
            hidden = hidden * fmask[..., None].to(hidden.dtype)
        hidden = hidden + enc.pos_conv_embed(hidden)
        if not self.stable_layer_norm:
            hidden = enc.layer_norm(hidden)
        hidden = enc.dropout(hidden)
        yield from self._layers(hidden, fmask, frames, depth)

    def _layers(
        self,
        hidden: torch.Tensor,
        fmask: torch.Tensor | None,
        frames: torch.Tensor | None,
        depth: int,
    ) -> Iterator[tuple[int, torch.Tensor, torch.Tensor | None]]:
        enc, wavlm = self.backbone.encoder, self.config.backbone_type == "wavlm"
        if wavlm:
            attn, bias = fmask, None
        else:
            from transformers.masking_utils import create_bidirectional_mask

            attn = create_bidirectional_mask(
                config=self.backbone.config, inputs_embeds=hidden, attention_mask=fmask
            )
        layerdrop = float(self.backbone.config.layerdrop) if self.training else 0.0
        for i, layer in enumerate(enc.layers[:depth]):
            # LayerDrop as transformers: any layer for wav2vec2, never the first for WavLM
            if layerdrop > 0 and (i > 0 or not wavlm) and torch.rand([]) < layerdrop:
                yield i + 1, hidden, frames
                continue
            if wavlm:
                hidden, bias = self._wavlm_layer(layer, hidden, attn, bias, i)
            else:
                hidden = layer(hidden, attention_mask=attn)
            yield i + 1, hidden, frames

    def _wavlm_layer(self, layer, hidden, attn, bias, index):
        extra = {} if self.stable_layer_norm else {"index": index}
        with warnings.catch_warnings():  # WavLM mixes a bool padding mask with a float bias
            warnings.filterwarnings("ignore", message=".*mismatched key_padding_mask.*")
            return layer(hidden, attention_mask=attn, position_bias=bias, **extra)

    def hidden_state(
        self,
        wave: torch.Tensor,
        lengths: torch.Tensor | Sequence[int] | None = None,
        *,
        layer: int,
    ) -> torch.Tensor:
        """Output of encoder layer ``layer`` (transformers' ``hidden_states[layer]``), truncated."""
        return _last(self.layer_outputs(wave, lengths, depth=layer))[1]

    # --- heads -----------------------------------------------------------------------------
    def _feature(self, pooled: torch.Tensor, lin: torch.Tensor) -> torch.Tensor:
        return pooled if self.config.feature_level == "embedding" else lin

    def forward_all(
        self, wave: torch.Tensor, lengths: torch.Tensor | Sequence[int] | None = None
    ) -> ExitOutputs:
        """Every head in one full pass (training and per-exit evaluation)."""
        outputs: dict[ExitKey, torch.Tensor] = {}
        features: dict[ExitKey, torch.Tensor] = {}
        for k, hidden, frames in self.layer_outputs(wave, lengths):
            if k in self.exits:
                out, pooled, lin = self.exit_heads[str(k)](hidden, frames)
                outputs[k], features[k] = out, self._feature(pooled, lin)
        if self.stable_layer_norm:
            hidden = self.backbone.encoder.layer_norm(hidden)
        out, pooled, lin = self.deepest(hidden, frames)
        outputs[DEEPEST], features[DEEPEST] = out, self._feature(pooled, lin)
        return ExitOutputs(outputs, features)

    def forward(
        self,
        wave: torch.Tensor,
        lengths: torch.Tensor | Sequence[int] | None = None,
        *,
        exit: ExitKey = DEEPEST,  # noqa: A002
    ) -> torch.Tensor:
        """Predict with the backbone truncated after ``exit``.

        Args:
            wave: (batch, samples) 16 kHz float waveforms, zero-padded on the right.
            lengths: (batch,) valid samples per clip (default: all).
            exit: a layer from :attr:`exits`, ``"deepest"`` or ``"fusion"`` (classes only).

        Returns:
            (batch, out) logits (classes) or arousal, dominance, valence (adv).
        """
        exit = self.check_exit(exit)  # noqa: A001
        if exit == FUSION:
            return self.fusion(wave, lengths)[0]
        k, hidden, frames = _last(self.layer_outputs(wave, lengths, depth=self.depth(exit)))
        if exit != DEEPEST:
            return self.exit_heads[str(k)](hidden, frames)[0]
        if self.stable_layer_norm:
            hidden = self.backbone.encoder.layer_norm(hidden)
        return self.deepest(hidden, frames)[0]

    def fusion(
        self, wave: torch.Tensor, lengths: torch.Tensor | Sequence[int] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Fused logits and the chosen exit layer per sample (runs up to the deepest exit)."""
        self.check_exit(FUSION)
        logits = []
        for k, hidden, frames in self.layer_outputs(wave, lengths, depth=max(self.exits)):
            if k in self.exits:
                logits.append(self.exit_heads[str(k)](hidden, frames)[0])
        fused, index = fuse_by_margin(logits)
        return fused, torch.as_tensor(self.exits, device=index.device)[index]

    def at_exit(self, exit: ExitKey) -> nn.Module:  # noqa: A002
        """A module ``wave → outputs`` fixed to one exit (for ONNX export and benchmarks)."""
        return _AtExit(self, self.check_exit(exit))


@dataclass
class ExitOutputs:
    """What :meth:`EarlyExitModel.forward_all` returns.

    Attributes:
        outputs: head → (batch, out) logits or A/D/V; keys are exit layers and ``"deepest"``.
        features: head → (batch, dim) pooled feature (``feature_level``), same keys.
    """

    outputs: dict[ExitKey, torch.Tensor]
    features: dict[ExitKey, torch.Tensor]

    @property
    def exits(self) -> list[int]:
        """Exit layers present (shallowest first), without the deepest head."""
        return sorted(k for k in self.outputs if k != DEEPEST)


class _AtExit(nn.Module):
    def __init__(self, model: EarlyExitModel, exit: ExitKey) -> None:  # noqa: A002
        super().__init__()
        self.model, self.exit = model, exit
        self.preset = PRESET
        self.labels = tuple(model.config.labels)  # output names (classes or A/D/V)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        return self.model(wave, exit=self.exit)

    def config_dict(self) -> dict[str, Any]:
        return {**self.model.config_dict(), "exit": self.exit}


def _last(items: Iterator[tuple[int, torch.Tensor, torch.Tensor | None]]):
    """The last item of a non-empty iterator."""
    item = None
    for item in items:  # noqa: B007 - only the last one is wanted
        pass
    return item


def _config_fields(config) -> dict[str, Any]:
    """A transformers config as plain JSON-able fields (without transformers' bookkeeping)."""
    fields = json.loads(config.to_json_string(use_diff=False))
    for key in (
        "transformers_version",
        "architectures",
        "_name_or_path",
        "model_type",
        "torch_dtype",
        "dtype",
        "id2label",
        "label2id",
    ):
        fields.pop(key, None)
    return fields


# --- building, saving, loading ----------------------------------------------------------------
def create_exits_model(
    backbone: str | os.PathLike | nn.Module,
    *,
    task: str = "classes",
    classes: Sequence[str] = (),
    exits: Sequence[int] = DEFAULT_EXITS,
    head_dim: int = HEAD_DIM,
    feature_level: str = "embedding",
    normalize: bool = True,
) -> EarlyExitModel:
    """Wrap a backbone (spec for :func:`load_backbone`, or a module) with exit heads.

    Args:
        backbone: ``random:<preset>``, folder, hub id, or a ``Wav2Vec2Model``/``WavLMModel``.
        task: ``"classes"`` or ``"adv"``.
        classes: class names (task "classes").
        exits: layers followed by an exit (empty: plain fine-tuning, deepest head only).
        head_dim: width of the heads' first linear layer (256 in the paper).
        feature_level: ``"embedding"`` or ``"linear"`` (see :class:`ExitsConfig`).
        normalize: per-utterance input normalisation.
    """
    name = "" if isinstance(backbone, nn.Module) else os.fspath(backbone)
    module = backbone if isinstance(backbone, nn.Module) else load_backbone(backbone)
    config = ExitsConfig(
        task=task,
        classes=tuple(classes),
        exits=tuple(exits),
        head_dim=head_dim,
        feature_level=feature_level,
        normalize=normalize,
        backbone_name=name,
    )
    return EarlyExitModel(config, module)


def exits_info(model: EarlyExitModel) -> dict[str, str]:
    """Facts stored with a saved or exported early-exit model (all strings)."""
    from wav2small import __version__

    return {
        "preset": PRESET,
        "config": json.dumps(model.config_dict(), sort_keys=True),
        "labels": ",".join(model.config.labels),
        "task": model.config.task,
        "exits": ",".join(map(str, model.exits)),
        "sample_rate": str(SAMPLE_RATE),
        "wav2small_version": __version__,
    }


def model_from_info(info: dict[str, str], where: str = "<info>") -> EarlyExitModel:
    """Rebuild an (untrained) early-exit model from :func:`exits_info` facts."""
    if info.get("preset") != PRESET:
        raise ExitsError(f"{where}: not an early-exit model (preset {info.get('preset')!r})")
    try:
        fields = json.loads(info["config"])
    except (KeyError, json.JSONDecodeError) as e:
        raise ExitsError(f"{where}: no readable early-exit config in its metadata") from e
    return EarlyExitModel(ExitsConfig(**fields))


def save_exits_model(model: EarlyExitModel, path: str | os.PathLike) -> Path:
    """Write weights + config to a safetensors file (atomically)."""
    from safetensors.torch import save_file

    path = Path(path)
    from wav2small.inputs import atomic_write

    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    with atomic_write(path) as tmp:
        save_file(state, str(tmp), metadata=exits_info(model))
    return path


def load_exits_model(path: str | os.PathLike) -> EarlyExitModel:
    """Load an early-exit model from ``.safetensors`` or a ``wav2small selfdistill`` ``.ckpt``.

    Raises:
        FileNotFoundError: no such file.
        ExitsError: not an early-exit checkpoint, weights that do not fit (names, shapes,
            dtypes), NaN/Inf weights or an absurd config (refused before allocating).
    """
    from wav2small.models import check_built_state, read_checkpoint

    try:
        info, state = read_checkpoint(path)
        # name, shape, dtype, finite, size: checked on a meta-device build before allocating
        check_built_state(path, lambda: model_from_info(info, str(path)), state)
    except ValueError as e:
        raise ExitsError(str(e)) from e
    model = model_from_info(info, str(path))
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise ExitsError(f"{path}: weights do not fit the stored config: {e}") from e
    return model.eval()


def parse_exits(text: str | Sequence[int] | None) -> tuple[int, ...]:
    """``"3,8,10"`` → (3, 8, 10); ``""``, ``"none"`` or None → () (plain fine-tuning)."""
    if text is None:
        return ()
    if not isinstance(text, str):
        return tuple(int(t) for t in text)
    text = text.strip().lower()
    if text in ("", "none"):
        return ()
    try:
        return tuple(int(t) for t in text.replace(" ", "").split(",") if t)
    except ValueError as e:
        raise ExitsError(f"exits must be comma-separated layer numbers, got {text!r}") from e


def parse_exit(text: str | int) -> ExitKey:
    """``"8"`` → 8; ``"deepest"``/``"fusion"`` as they are."""
    if isinstance(text, int):
        return text
    text = text.strip().lower()
    if text in (DEEPEST, FUSION):
        return text
    if text.isdigit():
        return int(text)
    raise ExitsError(f"exit must be a layer number, '{DEEPEST}' or '{FUSION}', got {text!r}")


def latency_input(seconds: float = 5.0) -> torch.Tensor:
    """A deterministic (1, samples) speech-like test input."""
    g = torch.Generator().manual_seed(0)
    n = int(round(seconds * SAMPLE_RATE))
    t = torch.arange(n) / SAMPLE_RATE
    tone = torch.sin(2 * math.pi * 140 * t) * (0.5 + 0.5 * torch.sin(2 * math.pi * 3 * t))
    return (0.1 * tone + 0.01 * torch.randn(n, generator=g))[None, :].float()
