"""Ensembles: the mean of several teachers' outputs (the paper's Dawn + WavLM teacher).

Each member returns arousal, dominance, valence in that order (its own label reordering is
applied inside the member), so the members' rows are averaged as they are; the ensemble's
embedding is the members' embeddings concatenated in member order.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from wav2small import LABELS
from wav2small.teachers.base import ENSEMBLE_PREFIX, Teacher, lengths_from


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

    @property
    def embedding_dim(self) -> int | None:
        """Sum of the members' embedding sizes; None when a member gives none."""
        dims = [m.embedding_dim for m in self.members]
        return None if None in dims else sum(dims)

    def forward(
        self,
        wave: torch.Tensor,
        lengths: torch.Tensor | Sequence[int] | None = None,
        mask: torch.Tensor | None = None,
        *,
        embedding: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Mean of the members' A/D/V (clipped to [0, 1] with ``clip``); with ``embedding=True``
        also the members' embeddings concatenated in member order (never clipped)."""
        lengths = lengths_from(wave, lengths, mask)
        if embedding:
            missing = [m for m in self.members if m.embedding_dim is None]
            if missing:
                raise missing[0].no_embedding()
            pairs = [m(wave, lengths, embedding=True) for m in self.members]
            outs, embs = [p[0] for p in pairs], [p[1] for p in pairs]
        else:
            outs = [m(wave, lengths) for m in self.members]
        out = torch.stack(outs).mean(0)
        out = out.clamp(0.0, 1.0) if self.clip else out
        return (out, torch.cat(embs, dim=1)) if embedding else out

    def config_dict(self) -> dict[str, Any]:
        return {
            "model_type": "wav2small-ensemble",
            "architectures": ["EnsembleTeacher"],
            "members": [f"member-{i}" for i in range(len(self.members))],
            "member_names": [m.name for m in self.members],
            "clip": self.clip,
            "id2label": dict(enumerate(LABELS)),
        }
