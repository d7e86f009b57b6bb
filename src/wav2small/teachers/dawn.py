"""Dawn: audEERING's wav2vec2-large-robust-12 A/D/V regressor (the model card's layout).

``config.json`` (``Wav2Vec2ForSpeechClassification``) + weights ``wav2vec2.*``,
``classifier.dense.*``, ``classifier.out_proj.*``: per-utterance normalisation, Wav2Vec2Model,
mean of ``last_hidden_state`` over time, dense → tanh → out_proj.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from wav2small import LABELS
from wav2small.ops import masked_mean, prenorm, receptive_field, time_mask
from wav2small.teachers.base import DAWN_NORM_EPS, Teacher, _label_order

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


def normalise_per_utterance(
    wave: torch.Tensor, lengths: torch.Tensor, eps: float = DAWN_NORM_EPS
) -> torch.Tensor:
    """``(x − mean) / sqrt(var + eps)`` over each clip's valid samples; padding stays zero."""
    return prenorm(wave, lengths, eps)


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
        self.min_samples = receptive_field(cfg.conv_kernel, cfg.conv_stride)

    @property
    def embedding_dim(self) -> int:
        """Size of the classifier's input: the masked mean of the last hidden state."""
        return self.classifier.dense.in_features

    def forward_batch(self, wave: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return self.forward_batch_embedding(wave, lengths)[0]

    def forward_batch_embedding(
        self, wave: torch.Tensor, lengths: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """A/D/V and the pooled last hidden state (audonnx's ``hidden_states``)."""
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
        return (out if self._order is None else out[:, self._order]), pooled

    def config_dict(self) -> dict[str, Any]:
        return dict(self._config)
