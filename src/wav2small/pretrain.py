"""Self-supervised pretraining of a small wav2vec2-layout backbone on unlabelled audio.

No pretrained wav2vec2/WavLM weights can be downloaded on these machines, so the
self-distillation study (:mod:`wav2small.selfdistill`) needs a backbone of our own that has
learned something. ``wav2small pretrain`` (:func:`pretrain`) trains one HuBERT-style and writes
it in the public Hugging Face layout, so it loads like a hub backbone
(``transformers.AutoModel.from_pretrained(folder)``, ``--backbone FOLDER``).

**Targets** (HuBERT's first iteration, Hsu et al. 2021, with hand-made features): every 20 ms
frame of the (per-utterance normalised) audio is described by the synthetic-world teacher's
front end (:meth:`wav2small.teachers.SynthTeacher.features_raw`, no trained weights: 128
log-mel bands and a pitch-salience vector with its F0 and voicing, 64 ms windows). Each group
of channels (:data:`TARGET_GROUPS`) is standardised and clustered by k-means into a
*codebook*: ``mel`` (spectral envelope, formants, breath, level within the utterance) and
``pitch`` (F0 and voicing: on the built-in corpus valence lives in the F0 contour). A frame's
targets are its cluster numbers.

**Task**: spans of ``mask_length`` frames starting at a ``mask_prob`` share of the frames are
replaced by the model's learned mask embedding (``masked_spec_embed``, as transformers'
SpecAugment), and one linear head per codebook predicts the clusters of the masked frames from
the last layer (cross-entropy, mean over codebooks). The heads are dropped at the end: only the
``Wav2Vec2Model`` is saved.

**Backbone** (:data:`BACKBONE_FIELDS`): wav2vec2 layout with layer-norm convolutions and
pre-LN ("stable layer norm") transformer layers — hidden 128, 8 layers, 4 heads, FFN 512, a
7-layer conv encoder of 32–128 channels (20 ms frames), 1.87M parameters, no dropout or
LayerDrop, ``mask_time_prob`` 0.05 for fine-tuning as the hub configs.

**Run folder**: ``config.yaml``, ``targets.safetensors`` (codebook centroids, feature
statistics and every clip's codes, reused on resume), ``last.ckpt`` (model, heads, optimiser,
schedule and random states: ``--resume`` continues bit for bit, refusing changed settings),
``metrics.csv`` (loss and masked-frame accuracy per codebook), ``summary.json`` and
``backbone/``: ``config.json``, ``model.safetensors``, ``preprocessor_config.json`` and
``pretrain.json`` (the recipe and final figures). ``make backbone`` copies that folder to the
package asset ``backbone-synth`` (:data:`BACKBONE_ASSET`).
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from wav2small import SAMPLE_RATE
from wav2small.config import PRETRAIN_TARGETS, PretrainConfig
from wav2small.errors import UserError
from wav2small.inputs import atomic_write
from wav2small.runs import (
    LAST_CHECKPOINT,
    METRICS_FILE,
    check_loss,
    lr_lambda,
    open_run,
    run_lock,
    write_atomic,
    write_json,
    write_summary,
)

logger = logging.getLogger(__name__)

#: Package asset of the shipped backbone (``make backbone``).
BACKBONE_ASSET = "backbone-synth"
TARGETS_FILE = "targets.safetensors"
BACKBONE_DIR = "backbone"
RECIPE_FILE = "pretrain.json"
#: Samples per encoder frame (the conv encoder's total stride) and the target front end's hop.
FRAME_HOP = 320
#: Ignored target.
IGNORE = -100
#: The shipped backbone's transformers ``Wav2Vec2Config`` fields.
BACKBONE_FIELDS: dict[str, Any] = {
    "hidden_size": 128, "num_hidden_layers": 8, "num_attention_heads": 4,
    "intermediate_size": 512, "conv_dim": [32, 64, 128, 128, 128, 128, 128],
    "conv_kernel": [10, 3, 3, 3, 3, 2, 2], "conv_stride": [5, 2, 2, 2, 2, 2, 2],
    "conv_bias": True, "feat_extract_norm": "layer", "do_stable_layer_norm": True,
    "num_conv_pos_embeddings": 32, "num_conv_pos_embedding_groups": 8,
    "hidden_dropout": 0.0, "attention_dropout": 0.0, "activation_dropout": 0.0,
    "feat_proj_dropout": 0.0, "final_dropout": 0.0, "layerdrop": 0.0,
    "mask_time_prob": 0.05, "mask_time_length": 10,
}  # fmt: skip
#: ``preprocessor_config.json`` (``Wav2Vec2FeatureExtractor``): 16 kHz, per-utterance norm.
FEATURE_EXTRACTOR: dict[str, Any] = {
    "feature_size": 1, "sampling_rate": SAMPLE_RATE, "padding_value": 0.0,
    "do_normalize": True, "return_attention_mask": True,
}  # fmt: skip
#: Target groups (channels of ``SynthTeacher.features_raw`` clustered into one codebook each).
TARGET_GROUPS = PRETRAIN_TARGETS


# --- targets ------------------------------------------------------------------------------------
def target_front_end():
    """The feature front end of the targets (a fresh ``SynthTeacher``; its weights are unused)."""
    from wav2small.teachers import SynthTeacher

    return SynthTeacher().eval()


def group_slices(front_end) -> dict[str, slice]:
    """Channels of each target group in ``front_end.features_raw``'s output."""
    n_mels = int(front_end.n_mels)
    return {"mel": slice(0, n_mels), "pitch": slice(n_mels, None)}


def kmeans(
    x: torch.Tensor, k: int, *, iters: int = 30, seed: int = 0, chunk: int = 65536
) -> torch.Tensor:
    """Lloyd's k-means: (k, dim) centroids of the rows of ``x`` (float32).

    Starts from ``k`` distinct rows drawn with ``seed``; an emptied cluster is moved to the row
    farthest from its centroid.

    Raises:
        UserError: fewer rows than clusters.
    """
    x = x.float()
    if len(x) < k:
        raise UserError(f"k-means needs at least {k} frames, got {len(x)}: give more audio")
    gen = torch.Generator().manual_seed(seed)
    centroids = x[torch.randperm(len(x), generator=gen)[:k]].clone()
    for _ in range(iters):
        codes, dist = assign(x, centroids, chunk=chunk, with_distance=True)
        counts = torch.bincount(codes, minlength=k)
        sums = torch.zeros_like(centroids).index_add_(0, codes, x)
        new = sums / counts.clamp(min=1)[:, None].float()
        empty = torch.nonzero(counts == 0).flatten()
        if len(empty):
            new[empty] = x[dist.topk(len(empty)).indices]
        if torch.equal(new, centroids):
            break
        centroids = new
    return centroids


def assign(
    x: torch.Tensor, centroids: torch.Tensor, *, chunk: int = 65536, with_distance: bool = False
):
    """Nearest centroid of every row (int64), and optionally its squared distance."""
    codes, dists = [], []
    c2 = (centroids * centroids).sum(1)
    for s in range(0, len(x), chunk):
        part = x[s : s + chunk].float()
        d = (part * part).sum(1, keepdim=True) - 2 * part @ centroids.T + c2[None, :]
        best = d.min(1)
        codes.append(best.indices)
        dists.append(best.values)
    codes_t = torch.cat(codes) if codes else torch.zeros(0, dtype=torch.long)
    if with_distance:
        return codes_t, torch.cat(dists) if dists else torch.zeros(0)
    return codes_t


@dataclass
class Targets:
    """Cluster targets of a corpus.

    Attributes:
        codes: per clip, (frames, codebooks) int64 codes of the target front end's frames.
        names: codebook names, in column order.
        centroids: name → (clusters, dim) centroids in standardised feature space.
        mean: per-channel mean of the raw features (all groups).
        std: per-channel standard deviation.
    """

    codes: list[torch.Tensor]
    names: tuple[str, ...]
    centroids: dict[str, torch.Tensor]
    mean: torch.Tensor
    std: torch.Tensor

    def save(self, path: str | os.PathLike) -> None:
        """Write everything to one safetensors file (atomically)."""
        from safetensors.torch import save_file

        lengths = torch.tensor([len(c) for c in self.codes], dtype=torch.long)
        state = {
            "codes": torch.cat(self.codes).to(torch.int16).contiguous(),
            "lengths": lengths,
            "mean": self.mean.contiguous(),
            "std": self.std.contiguous(),
        }
        state |= {f"centroids.{k}": v.contiguous() for k, v in self.centroids.items()}
        with atomic_write(path) as tmp:
            save_file(state, str(tmp), metadata={"names": ",".join(self.names)})

    @classmethod
    def load(cls, path: str | os.PathLike) -> Targets:
        """Read what :meth:`save` wrote."""
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            names = tuple(f.metadata()["names"].split(","))
            state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open API
        codes = list(state["codes"].long().split(state["lengths"].tolist()))
        centroids = {k: state[f"centroids.{k}"] for k in names}
        return cls(codes, names, centroids, state["mean"], state["std"])


@torch.no_grad()
def fit_targets(
    waves: list[np.ndarray],
    codebooks: dict[str, int],
    *,
    kmeans_frames: int = 100_000,
    kmeans_iters: int = 30,
    seed: int = 0,
    progress: bool = False,
) -> Targets:
    """Features of every clip, one k-means codebook per group, every frame's codes.

    Args:
        waves: float32 16 kHz clips (normalised per utterance here, as the backbone's input).
        codebooks: group name (:data:`TARGET_GROUPS`) → clusters.
        kmeans_frames: frames sampled (seeded) to fit each codebook.
        kmeans_iters: Lloyd iterations.
        seed: seed of the frame sample and the k-means start.
        progress: progress bar over the clips.
    """
    from tqdm.auto import tqdm

    from wav2small.ops import prenorm
    from wav2small.teacher_train import compute_features, feature_stats

    front = target_front_end()
    feats: list[torch.Tensor] = []
    chunk = 256
    for s in tqdm(range(0, len(waves), chunk), desc="target features", disable=not progress):
        normed = [
            prenorm(torch.from_numpy(w)[None].float())[0].numpy() for w in waves[s : s + chunk]
        ]
        feats.extend(compute_features(front, normed))
    mean, std = feature_stats(feats)
    gen = torch.Generator().manual_seed(seed)
    total = sum(len(f) for f in feats)
    pick = torch.randperm(total, generator=gen)[: min(kmeans_frames, total)]
    flat = torch.cat(feats)
    sample = (flat[pick].float() - mean) / std
    slices = group_slices(front)
    names = tuple(codebooks)
    centroids = {
        name: kmeans(
            sample[:, slices[name]], int(codebooks[name]), iters=kmeans_iters, seed=seed + i
        )
        for i, name in enumerate(names)
    }
    codes = torch.stack(
        [
            assign((flat[:, slices[n]].float() - mean[slices[n]]) / std[slices[n]], centroids[n])
            for n in names
        ],
        dim=1,
    )
    return Targets(list(codes.split([len(f) for f in feats])), names, centroids, mean, std)


def frame_targets(codes: torch.Tensor, first: int, n_frames: int, valid: int) -> torch.Tensor:
    """Targets of ``n_frames`` encoder frames starting at global frame ``first``.

    Encoder frame ``g`` (samples ``320 g … 320 g + 400``, centre ``320 g + 200``) takes the
    codes of target frame ``g − 1`` (64 ms window, centre ``320 (g − 1) + 512``: 8 samples
    apart). Frames without a target frame, and frames at or after ``valid``, are :data:`IGNORE`.
    """
    out = torch.full((n_frames, codes.shape[1]), IGNORE, dtype=torch.long)
    g = torch.arange(first, first + n_frames) - 1
    ok = (g >= 0) & (g < len(codes)) & (torch.arange(n_frames) < valid)
    out[ok] = codes[g[ok]]
    return out


def span_mask(
    frames: torch.Tensor, size: int, *, prob: float, length: int, gen: torch.Generator
) -> torch.Tensor:
    """(batch, size) bool mask of spans of ``length`` frames (transformers' SpecAugment rule).

    Per row with ``n`` valid frames, ``int(prob · n / length + u)`` spans (u uniform in [0, 1),
    at least one) start at distinct frames drawn without replacement; spans may overlap and never
    cover padding.
    """
    mask = torch.zeros(len(frames), size, dtype=torch.bool)
    for row, n in enumerate(frames.tolist()):
        span = min(length, n)
        starts_max = n - span + 1
        u = float(torch.rand((), generator=gen))
        count = max(1, min(starts_max, int(prob * n / length + u)))
        starts = torch.randperm(starts_max, generator=gen)[:count]
        idx = (starts[:, None] + torch.arange(span)[None, :]).flatten()
        mask[row, idx] = True
    return mask


# --- the model ----------------------------------------------------------------------------------
def build_backbone(fields: dict[str, Any] | None = None, *, seed: int = 0) -> nn.Module:
    """A randomly initialised ``Wav2Vec2Model``: :data:`BACKBONE_FIELDS` updated by ``fields``."""
    from wav2small.models.exits import build_backbone as build

    torch.manual_seed(seed)
    return build("wav2vec2", {**BACKBONE_FIELDS, **(fields or {})})


class MaskedPredictor(nn.Module):
    """A backbone and one linear head per codebook over its last layer (pretraining only)."""

    def __init__(self, backbone: nn.Module, codebooks: dict[str, int]) -> None:
        super().__init__()
        if not float(backbone.config.mask_time_prob) > 0:
            raise UserError("the backbone needs mask_time_prob > 0 (its mask embedding)")
        self.backbone = backbone
        hidden = int(backbone.config.hidden_size)
        self.heads = nn.ModuleDict({k: nn.Linear(hidden, int(v)) for k, v in codebooks.items()})

    def frames(self, lengths: torch.Tensor) -> torch.Tensor:
        """Encoder frames of ``lengths`` samples."""
        return self.backbone._get_feat_extract_output_lengths(lengths).to(torch.long)

    def forward(
        self, wave: torch.Tensor, lengths: torch.Tensor, mask: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """(batch, samples) audio, lengths, (batch, frames) mask → codebook → logits per frame."""
        from wav2small.ops import prenorm, time_mask

        attn = time_mask(lengths, wave.shape[1]).long()
        hidden = self.backbone(
            prenorm(wave, lengths), attention_mask=attn, mask_time_indices=mask
        ).last_hidden_state
        return {k: head(hidden) for k, head in self.heads.items()}


def masked_loss(
    logits: dict[str, torch.Tensor],
    targets: torch.Tensor,
    mask: torch.Tensor,
    *,
    unmasked_weight: float = 0.0,
) -> dict[str, torch.Tensor]:
    """Cross-entropy per codebook on masked frames (+ weighted on unmasked ones), and accuracies.

    Args:
        logits: codebook → (batch, frames, clusters), codebooks in the column order of targets.
        targets: (batch, frames, codebooks) codes, :data:`IGNORE` where there is none.
        mask: (batch, frames) masked frames.
        unmasked_weight: weight of the unmasked frames' cross-entropy (HuBERT's 1 − α; 0: masked
            frames only, as HuBERT).

    Returns:
        ``loss`` (mean over codebooks of masked + weighted unmasked terms), and per codebook
        ``loss_<name>``/``acc_<name>`` on masked frames and, with a weight, ``unmasked_<name>``.
    """
    terms: dict[str, torch.Tensor] = {}
    losses = []
    for j, (name, lg) in enumerate(logits.items()):
        t = targets[..., j]
        keep = mask & (t != IGNORE)
        pred = lg[keep]
        loss = F.cross_entropy(pred, t[keep])
        terms[f"loss_{name}"] = loss
        terms[f"acc_{name}"] = (pred.argmax(-1) == t[keep]).float().mean().detach()
        if unmasked_weight:
            seen = ~mask & (t != IGNORE)
            terms[f"unmasked_{name}"] = F.cross_entropy(lg[seen], t[seen])
            loss = loss + unmasked_weight * terms[f"unmasked_{name}"]
        losses.append(loss)
    terms["loss"] = torch.stack(losses).mean()
    return terms


# --- data ---------------------------------------------------------------------------------------
def read_clips(
    sources: tuple[str, ...] | list[str], *, on_error: str = "raise", progress: bool = False
) -> tuple[list[str], list[np.ndarray], list[tuple[str, str]]]:
    """Every clip of the sources as float32 16 kHz (``on_error="skip"``: skip and report).

    Returns:
        ``(paths, waves, skipped (path, reason))``.
    """
    from tqdm.auto import tqdm

    from wav2small.audio import AudioError, read_audio
    from wav2small.data import load_manifest
    from wav2small.runs import check_wave

    paths: list[str] = []
    for source in sources:
        paths += load_manifest(source, on_error=on_error)["path"].tolist()
    keep, waves, skipped = [], [], []
    for p in tqdm(paths, desc="read audio", disable=not progress):
        try:
            wave = check_wave(read_audio(p), p)
            if len(wave) < 1024:  # one target frame
                raise UserError(f"{p}: {len(wave)} samples, shorter than 64 ms")
        except (AudioError, UserError) as e:
            if on_error == "raise":
                raise
            skipped.append((p, str(e)))
            continue
        keep.append(p)
        waves.append(wave)
    if not waves:
        raise UserError("no usable audio in " + ", ".join(map(str, sources)))
    return keep, waves, skipped


def make_batch(
    waves: list[np.ndarray],
    codes: list[torch.Tensor],
    idx: list[int],
    *,
    crop: int,
    frames_of,
    gen: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Crops of ``crop`` samples starting on the 20 ms frame grid, their lengths and targets.

    Returns:
        (batch, crop) audio (zero-padded), (batch,) lengths, (batch, frames, codebooks) targets.
    """
    wave = torch.zeros(len(idx), crop)
    lengths = torch.zeros(len(idx), dtype=torch.long)
    n_frames = int(frames_of(torch.tensor([crop]))[0])
    targets = []
    for row, i in enumerate(idx):
        w = waves[i]
        slots = max(0, (len(w) - crop) // FRAME_HOP)
        first = int(torch.randint(0, slots + 1, (), generator=gen))
        piece = w[first * FRAME_HOP : first * FRAME_HOP + crop]
        wave[row, : len(piece)] = torch.from_numpy(piece)
        lengths[row] = len(piece)
        valid = int(frames_of(torch.tensor([len(piece)]))[0])
        targets.append(frame_targets(codes[i], first, n_frames, valid))
    return wave, lengths, torch.stack(targets)


# --- saving -------------------------------------------------------------------------------------
def save_backbone(
    backbone: nn.Module, folder: str | os.PathLike, *, recipe: dict[str, Any] | None = None
) -> Path:
    """Write a backbone in the Hugging Face layout (replacing ``folder`` as a whole).

    ``config.json`` + ``model.safetensors`` (``save_pretrained``), ``preprocessor_config.json``
    (:data:`FEATURE_EXTRACTOR`) and, with ``recipe``, ``pretrain.json``.

    Raises:
        NonFiniteError: a NaN/Inf weight (nothing is written).
    """
    from transformers import Wav2Vec2FeatureExtractor

    from wav2small.models import check_finite_state

    folder = Path(folder)
    check_finite_state(backbone.state_dict(), f"backbone for {folder}")
    tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    backbone.save_pretrained(tmp, safe_serialization=True)
    Wav2Vec2FeatureExtractor(**FEATURE_EXTRACTOR).save_pretrained(tmp)
    if recipe is not None:
        write_json(tmp / RECIPE_FILE, recipe)
    old = folder.with_name(f".{folder.name}.old-{os.getpid()}")
    if folder.exists():
        folder.rename(old)
    tmp.rename(folder)
    shutil.rmtree(old, ignore_errors=True)
    return folder


def backbone_asset() -> Path:
    """Folder of the shipped backbone (package asset :data:`BACKBONE_ASSET`)."""
    from importlib.resources import files

    return Path(str(files("wav2small") / "assets" / BACKBONE_ASSET))


def _save_state(
    path: Path, model, optimizer, scheduler, gen, order: list[int], step: int, elapsed: float
) -> None:
    blob = {
        "order": torch.tensor(order, dtype=torch.long),
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "torch_rng": torch.get_rng_state(),
        "gen_rng": gen.get_state(),
        "step": step,
        "elapsed": elapsed,
    }
    with atomic_write(path) as tmp:
        torch.save(blob, tmp)


# --- training -----------------------------------------------------------------------------------
@dataclass
class PretrainResult:
    """What :func:`pretrain` returns.

    Attributes:
        out: run folder.
        backbone: the saved backbone folder (Hugging Face layout).
        steps: optimiser steps done.
        seconds: training wall time (all sessions of a resumed run).
        final: mean of the last logged values (loss and accuracy per codebook).
    """

    out: Path
    backbone: Path
    steps: int
    seconds: float
    final: dict[str, float]


def pretrain(cfg: PretrainConfig) -> PretrainResult:
    """Pretrain a backbone by masked prediction of cluster targets (see the module docstring).

    Raises:
        UserError: bad settings or audio, a changed configuration on resume, a non-finite loss.
    """
    import pandas as pd
    from tqdm.auto import tqdm

    cfg.validate()
    run_dir, ckpt = open_run(cfg)
    started = time.perf_counter()
    paths, waves, skipped = read_clips(cfg.audio, on_error=cfg.on_error, progress=cfg.progress)
    if skipped:
        from wav2small.runs import write_skipped

        write_skipped(run_dir, skipped)
    targets_path = run_dir / TARGETS_FILE
    if ckpt is not None and targets_path.is_file():
        targets = Targets.load(targets_path)
        if len(targets.codes) != len(waves):
            raise UserError(
                f"{targets_path}: made for {len(targets.codes)} clips, not {len(waves)}"
            )
    else:
        targets = fit_targets(
            waves,
            dict(cfg.codebooks),
            kmeans_frames=cfg.kmeans_frames,
            kmeans_iters=cfg.kmeans_iters,
            seed=cfg.seed,
            progress=cfg.progress,
        )
        targets.save(targets_path)
    target_seconds = time.perf_counter() - started
    torch.manual_seed(cfg.seed)
    model = MaskedPredictor(build_backbone(cfg.model, seed=cfg.seed), dict(cfg.codebooks))
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=cfg.lr, betas=(0.9, 0.98), eps=1e-6, weight_decay=cfg.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_lambda(cfg.warmup_steps, cfg.max_steps)
    )
    gen = torch.Generator().manual_seed(cfg.seed)
    step, elapsed, history, order = 0, 0.0, [], []
    if ckpt is not None:
        blob = torch.load(ckpt, weights_only=True)
        model.load_state_dict(blob["model"])
        optimizer.load_state_dict(blob["optimizer"])
        scheduler.load_state_dict(blob["scheduler"])
        torch.set_rng_state(blob["torch_rng"])
        gen.set_state(blob["gen_rng"])
        step, elapsed = int(blob["step"]), float(blob["elapsed"])
        order = blob["order"].tolist()  # the rest of the current pass over the clips
        if (run_dir / METRICS_FILE).is_file():
            history = pd.read_csv(run_dir / METRICS_FILE).to_dict("records")
            history = [h for h in history if h["step"] <= step]
        logger.info("resuming %s at step %d", run_dir, step)
    crop = int(round(cfg.crop_seconds * SAMPLE_RATE))
    model.train()
    t0 = time.perf_counter() - elapsed
    window: list[dict[str, float]] = []
    bar = tqdm(total=cfg.max_steps, initial=step, desc="pretrain", disable=not cfg.progress)
    while step < cfg.max_steps:
        if len(order) < cfg.batch_size:  # one permutation per pass (drawn from the run's generator)
            order += torch.randperm(len(waves), generator=gen).tolist()
        idx, order = order[: cfg.batch_size], order[cfg.batch_size :]
        wave, lengths, tgt = make_batch(
            waves, targets.codes, idx, crop=crop, frames_of=model.frames, gen=gen
        )
        frames = model.frames(lengths)
        mask = span_mask(frames, tgt.shape[1], prob=cfg.mask_prob, length=cfg.mask_length, gen=gen)
        terms = masked_loss(
            model(wave, lengths, mask), tgt, mask, unmasked_weight=cfg.unmasked_weight
        )
        check_loss(terms["loss"], step=step, files=[paths[i] for i in idx], lr=cfg.lr)
        optimizer.zero_grad(set_to_none=True)
        terms["loss"].backward()
        if cfg.grad_clip:
            nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        scheduler.step()
        step += 1
        bar.update(1)
        window.append({k: float(v.detach()) for k, v in terms.items()})
        if step % cfg.log_every == 0 or step == cfg.max_steps:
            row = {k: float(np.mean([w[k] for w in window])) for k in window[0]}
            row |= {"step": step, "lr": scheduler.get_last_lr()[0]}
            row["seconds"] = time.perf_counter() - t0
            history.append(row)
            window = []
            bar.set_postfix(loss=f"{row['loss']:.3f}")
        if step % cfg.save_every == 0 or step == cfg.max_steps:
            _save_state(
                run_dir / LAST_CHECKPOINT,
                model,
                optimizer,
                scheduler,
                gen,
                order,
                step,
                time.perf_counter() - t0,
            )
            _write_metrics(run_dir, history)
    bar.close()
    seconds = time.perf_counter() - t0
    _write_metrics(run_dir, history)
    final = _final(history)
    recipe = {
        "recipe": "HuBERT-style masked prediction of k-means codes (wav2small pretrain)",
        "config": cfg.to_dict(),
        "clips": len(waves),
        "audio_hours": sum(len(w) for w in waves) / SAMPLE_RATE / 3600,
        "steps": step,
        "train_seconds": seconds,
        "target_seconds": target_seconds,
        "parameters": sum(p.numel() for p in model.backbone.parameters()),
        "final": final,
        "torch_threads": torch.get_num_threads(),
    }
    folder = save_backbone(model.backbone, run_dir / BACKBONE_DIR, recipe=recipe)
    write_summary(run_dir, recipe)
    return PretrainResult(run_dir, folder, step, seconds, final)


def _write_metrics(run_dir: Path, history: list[dict]) -> None:
    import pandas as pd

    if history:
        write_atomic(run_dir / METRICS_FILE, pd.DataFrame(history).to_csv(index=False))


def _final(history: list[dict], last: int = 5) -> dict[str, float]:
    """Mean of the last ``last`` logged rows (loss and accuracies)."""
    rows = history[-last:]
    if not rows:
        return {}
    keys = [k for k in rows[0] if k.startswith(("loss", "acc"))]
    return {k: float(np.mean([r[k] for r in rows])) for k in keys}


def pretrain_cli(args) -> int:
    """``wav2small pretrain`` entry point (defaults ← ``--config`` ← flags ← ``--set``)."""
    from wav2small.config import from_cli

    cfg = from_cli(PretrainConfig, args)
    with run_lock(cfg.out):
        result = pretrain(cfg)
    figures = " ".join(f"{k} {v:.3f}" for k, v in result.final.items())
    print(
        f"{result.backbone}: {result.steps} steps in {result.seconds / 60:.1f} min; "
        f"last steps: {figures}"
    )
    return 0
