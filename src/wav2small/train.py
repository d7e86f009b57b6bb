"""Training loops (PyTorch Lightning): distillation from a teacher and the gold-label baseline.

Two modes share one loop (:func:`fit`):

* ``distill`` — the student learns the teacher's outputs only (SPEC §1.4). Targets are either
  **online** (the default): the frozen teacher, in eval mode and under ``no_grad``, labels the
  *same augmented crop* the student sees; or **cached**: clean whole-file labels written by
  ``wav2small label``.
* ``train`` — the baseline the paper argues against: the same student and loop on the gold
  (rater-mean) labels of a labelled CSV.

Loss ``Σ_d (1 − CCC_d)`` over the batch (+ ``mse_weight`` · MSE); AdamW with linear warm-up and
cosine decay. Validation on *full utterances* computes CCC per dimension; the best checkpoint is
chosen by the mean CCC. In ``distill`` mode validation compares with the teacher (no human labels
at all, the point of the method) unless ``val_target: gold``; in ``train`` mode with the gold
labels. A final validation runs at the last step.

A run folder holds ``config.yaml`` (the resolved configuration), ``best.ckpt``, ``last.ckpt``,
``best.safetensors`` (the best student, for ``wav2small export``/``evaluate``), ``metrics.csv``
(all sessions merged; per-session logs under ``logs/``) and ``summary.json``. ``resume: last``
(or a ``.ckpt`` path) continues a run from its saved step (with the same settings). One ``seed``
fixes the initial weights, the validation split, every crop and every augmentation. The run
folder, split, schedule, NaN policy and Lightning glue are :mod:`wav2small.runs`; the settings
:mod:`wav2small.config` (:class:`TrainConfig` is :class:`wav2small.config.StudentConfig`).

Nothing silently wrong: clips too short for the student (or teacher) are rejected by name, or
left out with ``on_error: skip`` (which also reads every clip first and leaves out unreadable or
non-finite ones, listed in ``skipped.csv``); non-finite labels, teacher outputs, losses and
weights stop the run with :class:`wav2small.errors.NonFiniteError` naming the file or step.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from wav2small import LABELS, SAMPLE_RATE
from wav2small.config import MODES, SCHEDULERS, TARGETS, VAL_TARGETS, load_yaml, parse_overrides
from wav2small.config import StudentConfig as TrainConfig
from wav2small.runs import (
    BEST_WEIGHTS,
    CONFIG_FILE,
    METRICS_FILE,
    SUMMARY_FILE,
    RunResult,
    check_targets,
    format_score,
    mean_score,
    open_run,
    resume_path,
    run_lightning,
)

logger = logging.getLogger(__name__)

__all__ = [
    "BEST_WEIGHTS",
    "CONFIG_FILE",
    "METRICS_FILE",
    "MODES",
    "MONITOR",
    "SCHEDULERS",
    "SUMMARY_FILE",
    "TARGETS",
    "VAL_TARGETS",
    "RunData",
    "TrainConfig",
    "TrainResult",
    "build_module",
    "cli_config",
    "config_fields",
    "fit",
    "load_yaml",
    "lr_lambda",
    "parse_overrides",
    "prepare_data",
    "resolve_config",
    "resume_path",
    "save_config",
    "teacher_outputs",
    "train_cli",
]

#: Metric that picks the best checkpoint (mean CCC over arousal, dominance, valence).
MONITOR = "val/ccc_mean"
#: What :func:`fit` returns (the shared :class:`wav2small.runs.RunResult`).
TrainResult = RunResult


# --- configuration: dataclass ← YAML ← CLI (wav2small.config) ---------------------------------
def config_fields() -> dict[str, Any]:
    """Field name → type hint of :class:`TrainConfig`."""
    from wav2small.config import fields

    return fields(TrainConfig)


def resolve_config(*layers: dict[str, Any] | None) -> TrainConfig:
    """Merge setting layers over the defaults (later layers win; ``None`` values are skipped).

    Raises:
        UserError: an unknown setting or a value of the wrong type.
    """
    from wav2small.config import resolve

    return resolve(TrainConfig, *layers)


def save_config(config: TrainConfig, path: str | os.PathLike) -> None:
    """Write the resolved configuration as YAML (atomically)."""
    from wav2small.config import save_config as save

    save(config, path)


# --- data -------------------------------------------------------------------------------------
@dataclass
class RunData:
    """Manifests and targets of one run (``skipped``: ``(file, reason)`` of left-out clips)."""

    train: Any  # pd.DataFrame
    val: Any  # pd.DataFrame (may be empty)
    val_targets: np.ndarray | None = None
    skipped: list[tuple[str, str]] | None = None
    hints: np.ndarray | None = None  # (n train clips, D) teacher embeddings (hint_weight > 0)


def teacher_outputs(teacher, manifest, *, progress: bool = False) -> np.ndarray:
    """The teacher's A/D/V for every clip of ``manifest`` on the full utterance → (n, 3).

    Raises:
        NonFiniteError: a non-finite teacher output (the clip is named).
    """
    from wav2small.backends import teacher_predict_files

    paths = manifest["path"].tolist()
    return teacher_predict_files(teacher, paths, progress=progress, desc="teacher on validation")


def _scan(manifest, cfg: TrainConfig, name: str):
    """Read every clip once (``on_error: skip``): drop unreadable or non-finite ones."""
    from wav2small.audio import AudioError, read_audio
    from wav2small.data import _progress
    from wav2small.runs import check_wave

    keep, skipped = [], []
    for i, path in enumerate(_progress(manifest["path"].tolist(), cfg.progress, "checking audio")):
        try:
            check_wave(read_audio(path), path)
            keep.append(i)
        except (AudioError, ValueError) as e:
            skipped.append((str(manifest["file"].iloc[i]), str(e)))
    if not keep:
        from wav2small.errors import UserError

        raise UserError(f"{name}: no usable clips ({skipped[0][1]}, ...)")
    return manifest.iloc[keep].reset_index(drop=True), skipped


def prepare_data(cfg: TrainConfig, teacher=None, *, shortest: int = 0) -> RunData:
    """Load the manifests, drop or reject bad clips, split off validation, attach the targets.

    Clips shorter than ``shortest`` samples (the model's shortest input) are rejected, or with
    ``on_error: skip`` left out with every unreadable or non-finite file (listed in
    ``RunData.skipped``).

    Raises:
        UserError: missing or non-finite labels, a clip too short for the model, or a validation
            target that cannot be computed.
    """
    from wav2small.data import attach_labels, check_labels, load_manifest
    from wav2small.runs import split_indices, usable_clips

    skip = cfg.on_error == "skip"
    source = cfg.data if cfg.mode == "train" else cfg.audio
    manifest = load_manifest(
        source, require_labels=cfg.mode == "train", on_error=cfg.on_error, progress=cfg.progress
    )
    manifest, skipped = usable_clips(
        manifest, shortest=shortest, on_error=cfg.on_error, name=str(source)
    )
    if skip:
        manifest, bad = _scan(manifest, cfg, str(source))
        skipped += bad
    if cfg.targets == "cached":
        manifest = attach_labels(manifest, cfg.labels)
        check_labels(manifest, str(cfg.labels))
    if cfg.val:
        train, val = manifest, load_manifest(cfg.val, progress=cfg.progress)
        val, short = usable_clips(val, shortest=shortest, on_error=cfg.on_error, name=cfg.val)
        skipped += short
    else:
        tr, va = split_indices(len(manifest), cfg.val_fraction, seed=cfg.seed)
        train = manifest.iloc[tr].reset_index(drop=True)
        val = manifest.iloc[va].reset_index(drop=True)
    if cfg.targets == "online":  # the pool's own label columns must not leak into training
        train = train.drop(columns=[c for c in LABELS if c in train.columns])
    data = RunData(train, val, skipped=skipped)
    if cfg.hint_weight > 0:
        from wav2small.data import attach_hints

        data.hints = attach_hints(train, cfg.labels)
    if val.empty:
        return data
    if cfg.val_target == "gold":
        if cfg.val is None and cfg.targets == "cached":
            raise ValueError(
                "val_target gold needs a labelled validation CSV (--val) when the "
                "training labels are cached teacher labels"
            )
        check_labels(val, str(cfg.val or source))
        data.val_targets = val[list(LABELS)].to_numpy(np.float32)
    elif cfg.targets == "cached" and (cfg.val is None or _labelled_by(val, cfg.labels)):
        data.val_targets = attach_labels(val, cfg.labels)[list(LABELS)].to_numpy(np.float32)
    elif teacher is not None:
        data.val_targets = teacher_outputs(teacher, val, progress=cfg.progress)
    else:
        raise ValueError("validation against the teacher needs --teacher (or val_target gold)")
    check_targets(data.val_targets, val["file"].tolist(), str(cfg.val or source))
    return data


def _labelled_by(manifest, labels) -> bool:
    from wav2small.data import attach_labels

    try:
        attach_labels(manifest, labels)
    except ValueError:
        return False
    return True


# --- the Lightning module ---------------------------------------------------------------------
def build_module(model, cfg: TrainConfig, teacher=None):
    """A LightningModule holding the student as ``.model`` (and the teacher outside its graph)."""
    import torch
    import torch.nn.functional as F

    from wav2small.metrics import ccc, ccc_loss
    from wav2small.models import model_info
    from wav2small.runs import NonFiniteError, lightning_module

    class StudentModule(lightning_module()):
        """Student training: CCC loss on teacher (online/cached) or gold targets."""

        def __init__(self) -> None:
            super().__init__(cfg)
            self.model = model
            self._teacher = [teacher]  # a list: not a sub-module (not trained, not saved)
            if teacher is not None:
                teacher.eval().requires_grad_(False)
            self._val_pred: list[torch.Tensor] = []
            self._val_index: list[torch.Tensor] = []
            self.val_targets: np.ndarray | None = None

        @property
        def teacher(self):
            return self._teacher[0]

        def on_fit_start(self) -> None:
            if self.teacher is not None:
                self.teacher.to(self.device).eval()

        def targets(self, batch: dict) -> torch.Tensor:
            if self.cfg.targets == "online":
                with torch.no_grad():
                    target = self.teacher(batch["wave"], batch["lengths"]).float()
                if not bool(torch.isfinite(target).all()):
                    raise NonFiniteError(
                        "the teacher's output is not finite for a crop of "
                        + ", ".join(self.batch_files(batch)[:4])
                    )
                return target
            return batch["target"].to(self.device)

        def attach(self, data) -> None:
            super().attach(data)
            if self.cfg.hint_weight > 0:
                self._hint_head(data.hints)

        def _hint_head(self, hints: np.ndarray) -> None:
            """The training-only map student features → standardised teacher embedding."""
            if not hasattr(self.model, "forward_embedding"):
                from wav2small.errors import UserError

                raise UserError(f"{self.cfg.student}: this student has no embedding hints")
            was_training = self.model.training
            with torch.no_grad():  # the size of the student's feature vector
                self.model.eval()
                _, feats = self.model.forward_embedding(torch.zeros(1, SAMPLE_RATE))
            self.model.train(was_training)
            self.hint_proj = torch.nn.Linear(feats.shape[1], hints.shape[1])
            mean, std = hints.mean(0), hints.std(0)
            self.register_buffer("hint_mean", torch.from_numpy(mean).float())
            self.register_buffer("hint_std", torch.from_numpy(np.maximum(std, 1e-6)).float())

        def on_train_batch_start(self, batch: dict, batch_idx: int) -> None:
            if self.cfg.freeze_bn_step and self.global_step >= self.cfg.freeze_bn_step:
                for m in self.model.modules():  # Lightning sets train() again after validation
                    if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                        m.eval()

        def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
            target = self.targets(batch)
            if self.cfg.hint_weight > 0:
                pred, feats = self.model.forward_embedding(batch["wave"], batch["lengths"])
            else:
                pred = self.model(batch["wave"], batch["lengths"])
            per_dim = ccc_loss(pred, target, reduction="none")
            loss = per_dim.sum()
            if self.cfg.mse_weight > 0:
                loss = loss + self.cfg.mse_weight * F.mse_loss(pred, target)
            size = len(pred)
            if self.cfg.hint_weight > 0:
                goal = (batch["hint"].to(feats) - self.hint_mean) / self.hint_std
                hint = F.mse_loss(self.hint_proj(feats), goal)
                loss = loss + self.cfg.hint_weight * hint
                self.log("train/hint", hint, batch_size=size)
            self.checked(loss, batch)
            self.log("train/loss", loss, prog_bar=True, batch_size=size)
            for label, value in zip(LABELS, per_dim, strict=True):
                self.log(f"train/ccc_{label}", 1 - value, batch_size=size)
            return loss

        def validation_step(self, batch: dict, batch_idx: int) -> None:
            pred = self.model(batch["wave"], batch["lengths"]).float()
            self._val_pred.append(self.check_outputs(pred, batch).cpu())
            self._val_index.append(batch["index"].cpu())

        def on_validation_epoch_end(self) -> None:
            if not self._val_pred:
                return
            pred = torch.cat(self._val_pred).numpy()
            index = torch.cat(self._val_index).numpy()
            self._val_pred, self._val_index = [], []
            values = np.atleast_1d(ccc(pred, self.val_targets[index]))
            row = {f"val/ccc_{k}": float(v) for k, v in zip(LABELS, values, strict=True)}
            row[MONITOR] = mean_score(values)  # NaN when no CCC is defined, never 0
            for key, value in row.items():
                # sync_dist: every DDP rank validates all clips; ranks agree on the value
                self.log(key, value, prog_bar=key == MONITOR, sync_dist=True)
            self.history.append({"step": int(self.global_step), **row})

        def optimizer(self):
            params = [p for p in self.parameters() if p.requires_grad]  # student + hint map
            return torch.optim.AdamW(params, lr=self.cfg.lr, weight_decay=self.cfg.weight_decay)

        def on_save_checkpoint(self, checkpoint: dict) -> None:
            checkpoint["wav2small"] = model_info(self.model)
            checkpoint["wav2small_config"] = json.dumps(self.cfg.to_dict())

    return StudentModule()


def lr_lambda(cfg: TrainConfig):
    """Learning-rate factor per step: linear warm-up, then cosine decay (or constant); see
    :func:`wav2small.runs.lr_lambda`."""
    from wav2small.runs import lr_lambda as schedule

    return schedule(cfg.warmup_steps, cfg.max_steps, cfg.scheduler)


# --- running ----------------------------------------------------------------------------------
def _loaders(cfg: TrainConfig, data: RunData):
    from torch.utils.data import DataLoader

    from wav2small.data import (
        CropDataset,
        UtteranceDataset,
        pad_collate,
        train_collate,
        train_sampler,
    )
    from wav2small.errors import UserError

    train_set = CropDataset(
        data.train,
        crop_seconds=cfg.crop_seconds,
        augment=cfg.augment(),
        with_targets=cfg.targets != "online",
        hints=data.hints,
    )
    if len(train_set) < cfg.batch_size:
        raise UserError(
            f"{len(train_set)} training clips are fewer than one batch "
            f"({cfg.batch_size}); lower batch_size"
        )
    if train_set.targets is not None:
        check_targets(train_set.targets, data.train["file"].tolist(), "training targets")
    workers = cfg.num_workers
    train = DataLoader(
        train_set,
        batch_size=cfg.batch_size,
        drop_last=True,
        sampler=train_sampler(train_set, seed=cfg.seed, batch_size=cfg.batch_size),
        collate_fn=train_collate(cfg.crop_seconds, cfg.min_crop_seconds),
        num_workers=workers,
        persistent_workers=workers > 0,
    )
    if data.val_targets is None:
        return train, None
    val = DataLoader(
        UtteranceDataset(data.val, data.val_targets),
        batch_size=1,
        collate_fn=pad_collate,
        num_workers=0,
    )
    return train, val


def fit(cfg: TrainConfig) -> TrainResult:
    """Run (or resume) one training run as configured; see the module docstring.

    Returns:
        The :class:`TrainResult`.

    Raises:
        UserError: invalid configuration or data (a ``ValueError``).
        NonFiniteError: a non-finite input, target, loss or weight (the run stops).
        FileNotFoundError: missing data, labels or resume checkpoint.
    """
    import time

    import lightning.pytorch as pl

    from wav2small.models import create_model, load_model, save_model
    from wav2small.runs import min_samples, write_skipped

    cfg.validate()
    started = time.time()
    run_dir, ckpt_path = open_run(cfg)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    teacher = None
    if cfg.teacher and (cfg.targets == "online" or cfg.val_target == "teacher"):
        from wav2small.teachers import load_teacher

        teacher = load_teacher(cfg.teacher)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)  # same init whatever came before
    model = create_model(cfg.student)
    shortest = max(min_samples(model), min_samples(teacher) if teacher is not None else 0)
    data = prepare_data(cfg, teacher if cfg.val_target == "teacher" else None, shortest=shortest)
    write_skipped(run_dir, data.skipped or [])
    module = build_module(model, cfg, teacher if cfg.targets == "online" else None)
    module.attach(data)
    train_loader, val_loader = _loaders(cfg, data)
    logger.info(
        "%s %s: %d training clips, %d validation clips (targets %s, validation vs %s)",
        cfg.mode,
        cfg.student,
        len(data.train),
        len(data.val),
        cfg.targets,
        cfg.val_target if val_loader is not None else "none",
    )

    def save_best(best: Path, score: float) -> None:
        save_model(
            load_model(best),
            run_dir / BEST_WEIGHTS,
            extra={
                "val_ccc_mean": f"{score:.6f}",
                "mode": cfg.mode,
                "targets": cfg.targets,
                "teacher": str(cfg.teacher or ""),
            },
        )

    summary = {
        "mode": cfg.mode,
        "student": cfg.student,
        "targets": cfg.targets,
        "teacher": cfg.teacher,
        "val_target": cfg.val_target,
        "skipped": len(data.skipped or []),
    }
    result = run_lightning(
        cfg,
        module,
        train_loader,
        val_loader,
        run_dir=run_dir,
        ckpt_path=ckpt_path,
        monitor=MONITOR,
        max_steps=cfg.max_steps,
        save_best=save_best,
        summary=summary,
        score_key="best_val_ccc_mean",
        started=started,
    )
    return result


# --- command line -----------------------------------------------------------------------------
def cli_config(args, *, mode: str) -> TrainConfig:
    """Resolve defaults ← ``--config`` YAML ← explicit flags ← every ``--set key=value``."""
    from wav2small.config import from_cli

    cfg = from_cli(TrainConfig, args, {"mode": mode})
    if (
        mode == "distill"
        and getattr(args, "labels", None)
        and getattr(args, "targets", None) is None
    ):
        cfg.targets = "cached"  # --labels means the cached labels (the teacher then validates)
    return cfg


def train_cli(args, *, mode: str) -> int:
    """``wav2small distill|train``: run, print where the results are."""
    from wav2small.runs import run_lock

    cfg = cli_config(args, mode=mode)
    with run_lock(cfg.out):
        result = fit(cfg)
    from lightning.pytorch.utilities import rank_zero_only

    if rank_zero_only.rank != 0:  # DDP: the other ranks are quiet
        return 0
    print(f"run folder   {result.run_dir}")
    print(f"steps        {result.start_step} → {result.global_step}")
    print(
        f"best         {result.best_checkpoint.name}  val CCC mean "
        f"{format_score(result.best_score)} (vs {cfg.val_target})"
    )
    print(f"weights      {result.weights}")
    return 0
