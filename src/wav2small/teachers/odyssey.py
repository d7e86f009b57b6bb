"""WavLM-Odyssey: the MSP-Podcast baseline ``3loi/SER-Odyssey-Baseline-WavLM-Multi-Attributes``.

WavLM → attentive statistics pooling → EmotionRegression head; input ``(x − mean) / (std + 1e-6)``.
See :mod:`wav2small.teachers` for the layout and its sources.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import nn

from wav2small import LABELS
from wav2small.ops import receptive_field, time_mask
from wav2small.teachers.base import (
    ODYSSEY_STD_EPS,
    ODYSSEY_VAR_FLOOR,
    Teacher,
    TeacherError,
    _label_order,
)

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
        self.min_samples = receptive_field(cfg.conv_kernel, cfg.conv_stride)

    @property
    def embedding_dim(self) -> int:
        """Size of the attentive-statistics pooling output (mean ; std), the head's input."""
        return 2 * self.pool_model.sap_linear.in_features

    def forward_batch(self, wave: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return self.forward_batch_embedding(wave, lengths)[0]

    def forward_batch_embedding(
        self, wave: torch.Tensor, lengths: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """A/D/V and the ``pool_model`` output (the input of ``ser_model``)."""
        mask = time_mask(lengths, wave.shape[1])
        x = ((wave - self.mean) / (self.std + ODYSSEY_STD_EPS)) * mask.to(wave.dtype)
        with warnings.catch_warnings():  # WavLM mixes a bool padding mask with a float bias
            warnings.filterwarnings("ignore", message=".*mismatched key_padding_mask.*")
            hidden = self.ssl_model(x, attention_mask=mask.to(torch.long)).last_hidden_state
        frames = self.ssl_model._get_feat_extract_output_lengths(lengths)
        pooled = self.pool_model(hidden, frames)
        out = self.ser_model(pooled)
        return (out if self._order is None else out[:, self._order]), pooled

    def config_dict(self) -> dict[str, Any]:
        return dict(self._config)
