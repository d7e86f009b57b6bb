"""Ensembles: the mean of several teachers' outputs (the paper's Dawn + WavLM teacher)."""

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
