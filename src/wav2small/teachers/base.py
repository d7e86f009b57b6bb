"""The teacher base class, shared constants, errors and checkpoint weights I/O.

Every teacher is a :class:`Teacher`: ``forward(wave, lengths=None, mask=None) -> (batch, 3)``
arousal, dominance, valence, padding-invariant, with long clips cut into equal windows of at
most :data:`WINDOW_SECONDS` whose outputs are averaged (see :mod:`wav2small.teachers`).
``forward(..., embedding=True)`` also returns the pooled vector the teacher's head reads
(windows averaged the same way), for students trained to predict it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from wav2small import LABELS, SAMPLE_RATE
from wav2small.errors import UserError

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

    Subclasses implement :meth:`forward_batch` for clips no longer than :attr:`window_seconds`;
    those that expose their pooled embedding implement :meth:`forward_batch_embedding` (and
    :attr:`embedding_dim`) and return its first element from :meth:`forward_batch`.

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

    @property
    def embedding_dim(self) -> int | None:
        """Size D of the pooled embedding its head reads (``forward(..., embedding=True)``);
        None when this teacher gives none."""
        return None

    def forward(
        self,
        wave: torch.Tensor,
        lengths: torch.Tensor | Sequence[int] | None = None,
        mask: torch.Tensor | None = None,
        *,
        embedding: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Predict A/D/V (and optionally the pooled embedding) for a batch of 16 kHz waveforms.

        Args:
            wave: (batch, samples) float waveforms, zero-padded on the right.
            lengths: (batch,) valid samples per clip (default: all of them).
            mask: alternative to ``lengths``: (batch, samples), nonzero on valid samples.
            embedding: also return the pooled vector the teacher's head reads.

        Returns:
            (batch, 3) float tensor: arousal, dominance, valence; with ``embedding=True`` the
            tuple ``(adv, emb)`` with emb (batch, :attr:`embedding_dim`). A clip cut into
            windows gets the mean of its windows' A/D/V and the mean of their embeddings.

        Raises:
            TeacherError: ``embedding=True`` for a teacher that gives no embedding.
        """
        lengths = lengths_from(wave, lengths, mask)
        if embedding and self.embedding_dim is None:
            raise self.no_embedding()
        win = int(round(self.window_seconds * SAMPLE_RATE))
        pieces: list[torch.Tensor] = []
        owner: list[int] = []
        for i, n in enumerate(lengths.tolist()):
            k = max(1, math.ceil(n / win))
            size = math.ceil(n / k)
            for j in range(k):
                pieces.append(wave[i, j * size : min(n, (j + 1) * size)])
                owner.append(i)
        outs = self._forward_pieces(pieces, embedding=embedding)
        if len(pieces) != wave.shape[0]:
            outs = tuple(_window_mean(out, owner, wave.shape[0]) for out in outs)
        return outs if embedding else outs[0]

    def _forward_pieces(
        self, pieces: list[torch.Tensor], *, embedding: bool = False
    ) -> tuple[torch.Tensor, ...]:
        """Run 1-D clips in length-sorted sub-batches of bounded padded size; original order out.

        Returns:
            ``(adv,)``, or ``(adv, emb)`` with ``embedding=True``.
        """
        budget = int(self.max_batch_seconds * SAMPLE_RATE)
        order = sorted(range(len(pieces)), key=lambda i: len(pieces[i]))
        outputs: dict[int, tuple[torch.Tensor, ...]] = {}
        group: list[int] = []
        for i in order + [-1]:
            longest = max(len(pieces[i]), self.min_samples) if i >= 0 else 0
            if group and (i < 0 or longest * (len(group) + 1) > budget):
                wave, lengths = pad_batch([pieces[g] for g in group], min_length=self.min_samples)
                lengths = lengths.clamp(min=self.min_samples).to(wave.device)
                if embedding:
                    result = self.forward_batch_embedding(wave, lengths)
                else:
                    result = (self.forward_batch(wave, lengths),)
                for j, g in enumerate(group):
                    outputs[g] = tuple(r[j] for r in result)
                group = []
            if i >= 0:
                group.append(i)
        n_out = 2 if embedding else 1
        return tuple(torch.stack([outputs[i][k] for i in range(len(pieces))]) for k in range(n_out))

    def forward_batch(self, wave: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """(batch, samples) padded clips, each ≤ one window, with (batch,) lengths → (batch, 3)."""
        raise NotImplementedError

    def forward_batch_embedding(
        self, wave: torch.Tensor, lengths: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """As :meth:`forward_batch`, plus the embedding: ``(adv (batch, 3), emb (batch, D))``.

        Raises:
            TeacherError: this teacher gives no embedding (the base class).
        """
        raise self.no_embedding()

    def no_embedding(self) -> TeacherError:
        """The one-line error for ``embedding=True`` on a teacher without an embedding."""
        return TeacherError(
            f"teacher {self.name!r} ({type(self).__name__}) gives no embedding; "
            "use a synth, Dawn, Odyssey or ensemble teacher, or label without embeddings"
        )

    def config_dict(self) -> dict[str, Any]:
        """The ``config.json`` contents that rebuild this teacher."""
        raise NotImplementedError

    def export_state_dict(self) -> dict[str, torch.Tensor]:
        """State dict under the checkpoint's public key names."""
        return {_to_legacy_key(k): v for k, v in self.state_dict().items()}


def _window_mean(out: torch.Tensor, owner: list[int], n: int) -> torch.Tensor:
    """Mean of the (pieces, …) rows ``out`` per clip: row ``j`` belongs to clip ``owner[j]``."""
    index = torch.tensor(owner, device=out.device)
    total = out.new_zeros(n, *out.shape[1:]).index_add_(0, index, out)
    count = torch.bincount(index, minlength=n).to(out.dtype)
    return total / count[:, None]


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
