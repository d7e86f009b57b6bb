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
(or a ``.ckpt`` path) continues a run from its saved step. One ``seed`` fixes the initial
weights, the validation split, every crop and every augmentation.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import shutil
import time
import typing
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from wav2small import LABELS

logger = logging.getLogger(__name__)

MODES = ("distill", "train")
TARGETS = ("online", "cached", "gold")
VAL_TARGETS = ("auto", "gold", "teacher")
SCHEDULERS = ("cosine", "constant")
#: Metric that picks the best checkpoint (mean CCC over arousal, dominance, valence).
MONITOR = "val/ccc_mean"
CONFIG_FILE = "config.yaml"
#: Lightning warnings that say nothing about a wav2small run (config.yaml sits next to the
#: checkpoints; no validation set is a choice; short epochs; a torch-internal deprecation).
_HARMLESS_WARNINGS = (
    r"Checkpoint directory .* exists and is not empty",
    r"You defined a `validation_step` but have no `val_dataloader`",
    r"The number of training batches .* is smaller than the logging interval",
    r".*isinstance\(treespec, LeafSpec\)",
)
BEST_WEIGHTS = "best.safetensors"
SUMMARY_FILE = "summary.json"
METRICS_FILE = "metrics.csv"


@dataclass
class TrainConfig:
    """Every setting of a run; filled from these defaults ← a YAML file ← command-line overrides.

    Attributes:
        mode: ``distill`` (teacher targets) or ``train`` (gold labels).
        student: a preset of :func:`wav2small.list_models`.
        teacher: teacher name or folder (see ``wav2small.models.teacher.load_teacher``); needed
            for online targets and for validation against the teacher.
        audio: distillation audio: a folder, a CSV with a ``file`` column, or an audio file.
        data: labelled CSV (``file, arousal, dominance, valence``) for ``train`` mode.
        labels: cached teacher labels (Parquet from ``wav2small label``) for ``targets: cached``.
        targets: ``online`` or ``cached`` (distill); ``gold`` (train; set automatically).
        val: validation clips (CSV or folder); default: hold out ``val_fraction`` of the data.
        val_fraction: share of the training clips held out when ``val`` is not given (0: none).
        val_target: ``gold``, ``teacher``, or ``auto`` (teacher when distilling, gold otherwise).
        out: run folder.
        seed: the one seed of the run.
        crop_seconds: longest random crop; batches are cut to their shortest crop.
        min_crop_seconds: shortest batch crop; shorter clips are zero-padded (with lengths).
        batch_size: crops per step.
        num_workers: data-loader worker processes.
        aug_ratio: probability of mixing a crop with another clip or noise ("augmentation ratio").
        aug_mix_clip: of the mixed crops, the share mixed with another clip (else noise);
            default 0.5 with online targets (the teacher labels the mixture) and 0 with cached
            or gold targets (a whole-clip label is wrong for a crop mixed with another clip).
        snr_low: lowest mixing SNR in dB.
        snr_high: highest mixing SNR in dB.
        noise_dir: folder of noise recordings (default: generated white/pink/brown noise).
        gain_db: random gain ±dB (no-op for the students' normalised input; see data.Augment).
        shift_prob: probability of a circular time shift.
        shift_seconds: largest time shift.
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.
        warmup_steps: linear warm-up steps.
        scheduler: ``cosine`` (decay to 0 at ``max_steps``) or ``constant`` after warm-up.
        max_steps: optimiser steps of the whole run.
        mse_weight: weight of an added MSE term (0: CCC loss only).
        grad_clip: gradient-norm clipping (0: off).
        val_every: validate every this many steps (0: once per pass over the data).
        log_every: log training metrics every this many steps.
        accelerator: Lightning accelerator (``cpu``, ``gpu``, ``auto``).
        devices: Lightning devices (an int or ``auto``).
        strategy: Lightning strategy: ``auto``, or ``ddp`` (one process per device; gloo on CPU,
            NCCL on GPU; each process takes every ``devices``-th crop, so ``batch_size`` is per
            process). See docs/SCALING.md.
        precision: Lightning precision (``32-true``, ``bf16-mixed``, ...).
        deterministic: ask torch for deterministic algorithms.
        progress: show progress bars.
        resume: ``last`` (the run folder's last.ckpt), a ``.ckpt`` path, or empty.
    """

    mode: str = "distill"
    student: str = "wav2small-paper"
    teacher: str | None = None
    audio: str | None = None
    data: str | None = None
    labels: str | None = None
    targets: str = "online"
    val: str | None = None
    val_fraction: float = 0.1
    val_target: str = "auto"
    out: str = "runs/distill"
    seed: int = 0
    crop_seconds: float = 4.0
    min_crop_seconds: float = 1.0
    batch_size: int = 16
    num_workers: int = 2
    aug_ratio: float = 0.5
    aug_mix_clip: float | None = None
    snr_low: float = 5.0
    snr_high: float = 30.0
    noise_dir: str | None = None
    gain_db: float = 0.0
    shift_prob: float = 0.0
    shift_seconds: float = 0.5
    lr: float = 2e-3
    weight_decay: float = 0.01
    warmup_steps: int = 100
    scheduler: str = "cosine"
    max_steps: int = 3000
    mse_weight: float = 0.0
    grad_clip: float = 0.0
    val_every: int = 0
    log_every: int = 10
    accelerator: str = "auto"
    devices: Any = 1
    strategy: str = "auto"
    precision: str = "32-true"
    deterministic: bool = False
    progress: bool = True
    resume: str | None = None

    def validate(self) -> TrainConfig:
        """Check the settings and fill ``targets``/``val_target``; return self.

        Raises:
            ValueError: an inconsistent or invalid setting (the message names it).
        """
        _check_choice("mode", self.mode, MODES)
        _check_choice("targets", self.targets, TARGETS)
        _check_choice("val_target", self.val_target, VAL_TARGETS)
        _check_choice("scheduler", self.scheduler, SCHEDULERS)
        if self.mode == "train":
            if not self.data:
                raise ValueError("train mode needs `data`: a labelled CSV (--data)")
            self.targets = "gold"
        else:
            if not self.audio:
                raise ValueError("distill mode needs `audio`: a folder or CSV of clips (--audio)")
            if self.targets == "gold":
                raise ValueError("distill mode learns teacher targets: targets online or cached")
            if self.targets == "online" and not self.teacher:
                raise ValueError("online distillation needs a teacher (--teacher)")
            if self.targets == "cached" and not self.labels:
                raise ValueError(
                    "cached targets need a label table from `wav2small label` (--labels)"
                )
        if self.val_target == "auto":
            self.val_target = "teacher" if self.mode == "distill" else "gold"
        if self.aug_mix_clip is None:
            self.aug_mix_clip = 0.5 if self.targets == "online" else 0.0
        positive = ("batch_size", "max_steps", "log_every", "lr")
        for key in positive:
            if not getattr(self, key) > 0:
                raise ValueError(f"{key} must be > 0, got {getattr(self, key)}")
        if self.batch_size < 2:
            raise ValueError("batch_size must be >= 2: the CCC loss needs a batch")
        if self.crop_seconds is not None and self.crop_seconds <= 0:
            raise ValueError(f"crop_seconds must be > 0, got {self.crop_seconds}")
        for key in (
            "num_workers",
            "warmup_steps",
            "mse_weight",
            "grad_clip",
            "val_every",
            "min_crop_seconds",
            "weight_decay",
        ):
            if getattr(self, key) < 0:
                raise ValueError(f"{key} must be >= 0, got {getattr(self, key)}")
        self.augment()  # checks the augmentation ranges
        return self

    def augment(self):
        """The :class:`wav2small.data.Augment` these settings describe."""
        from wav2small.data import Augment

        return Augment(
            ratio=self.aug_ratio,
            mix_clip_prob=self.aug_mix_clip,
            snr_db=(self.snr_low, self.snr_high),
            noise_dir=self.noise_dir,
            gain_db=self.gain_db,
            shift_prob=self.shift_prob,
            shift_seconds=self.shift_seconds,
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (YAML-serialisable)."""
        return dataclasses.asdict(self)


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}; got {value!r}")


# --- configuration: dataclass ← YAML ← CLI ---------------------------------------------------
def config_fields() -> dict[str, Any]:
    """Field name → type hint of :class:`TrainConfig`."""
    return typing.get_type_hints(TrainConfig)


_NULLS = ("null", "None", "none", "~", "")


def _coerce(key: str, value: Any, hint: Any) -> Any:
    optional = type(None) in typing.get_args(hint)
    if value is None or (optional and isinstance(value, str) and value.strip() in _NULLS):
        return None
    args = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
    if hint is Any:
        return value
    target = args[0]
    if isinstance(value, str) and target is not str:
        import yaml

        value = yaml.safe_load(value)
        if value is None:
            return None
    try:
        if target is bool:
            if isinstance(value, str):
                raise ValueError
            return bool(value)
        if target is int and isinstance(value, float) and not value.is_integer():
            raise ValueError
        return target(value)
    except (TypeError, ValueError):
        raise ValueError(f"config `{key}`: expected {target.__name__}, got {value!r}") from None


def load_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """Read a YAML config file into a dict.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not YAML, or not a mapping.
    """
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such config file")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of settings, got {type(data).__name__}")
    return data


def resolve_config(*layers: dict[str, Any] | None) -> TrainConfig:
    """Merge setting layers over the defaults (later layers win; ``None`` values are skipped).

    Raises:
        ValueError: an unknown setting or a value of the wrong type.
    """
    hints = config_fields()
    merged: dict[str, Any] = {}
    for layer in layers:
        for key, value in (layer or {}).items():
            key = key.replace("-", "_")
            if key not in hints:
                raise ValueError(f"unknown setting {key!r}; valid settings: {', '.join(hints)}")
            if value is not None:
                merged[key] = _coerce(key, value, hints[key])
    return TrainConfig(**merged)


def parse_overrides(pairs: list[str] | None) -> dict[str, str]:
    """``["key=value", ...]`` → dict (values parsed later with the field's type).

    Raises:
        ValueError: a pair without ``=``.
    """
    out = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--set expects key=value, got {pair!r}")
        out[key.strip()] = value.strip()
    return out


def save_config(config: TrainConfig, path: str | os.PathLike) -> None:
    """Write the resolved configuration as YAML (atomically)."""
    import yaml

    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(yaml.safe_dump(config.to_dict(), sort_keys=False), encoding="utf-8")
    os.replace(tmp, path)


# --- data -------------------------------------------------------------------------------------
@dataclass
class RunData:
    """Manifests and targets of one run."""

    train: Any  # pd.DataFrame
    val: Any  # pd.DataFrame (may be empty)
    val_targets: np.ndarray | None = None


def teacher_outputs(teacher, manifest, *, progress: bool = False) -> np.ndarray:
    """The teacher's A/D/V for every clip of ``manifest`` on the full utterance → (n, 3)."""
    import torch

    from wav2small.audio import read_audio
    from wav2small.data import _progress

    device = next(teacher.parameters(), torch.zeros(0)).device
    rows = []
    with torch.no_grad():
        for path in _progress(manifest["path"].tolist(), progress, "teacher on validation"):
            wave = torch.from_numpy(read_audio(path))[None].to(device)
            rows.append(teacher(wave).float().cpu().numpy()[0])
    return np.stack(rows).astype(np.float32)


def prepare_data(cfg: TrainConfig, teacher=None) -> RunData:
    """Load the manifests, split off validation, attach the targets.

    Raises:
        ValueError: missing labels, or a validation target that cannot be computed.
    """
    from wav2small.data import attach_labels, check_labels, load_manifest, split_manifest

    source = cfg.data if cfg.mode == "train" else cfg.audio
    manifest = load_manifest(source, require_labels=cfg.mode == "train", progress=cfg.progress)
    if cfg.targets == "cached":
        manifest = attach_labels(manifest, cfg.labels)
    if cfg.val:
        train, val = manifest, load_manifest(cfg.val, progress=cfg.progress)
    else:
        train, val = split_manifest(manifest, cfg.val_fraction, seed=cfg.seed)
    if cfg.targets == "online":  # the pool's own label columns must not leak into training
        train = train.drop(columns=[c for c in LABELS if c in train.columns])
    data = RunData(train, val)
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
    return data


def _labelled_by(manifest, labels) -> bool:
    from wav2small.data import attach_labels

    try:
        attach_labels(manifest, labels)
    except ValueError:
        return False
    return True


# --- the Lightning module ---------------------------------------------------------------------
def _lightning():
    import lightning.pytorch as pl

    return pl


def build_module(model, cfg: TrainConfig, teacher=None):
    """A LightningModule holding the student as ``.model`` (and the teacher outside its graph)."""
    pl = _lightning()
    import torch
    import torch.nn.functional as F

    from wav2small.metrics import ccc, ccc_loss
    from wav2small.models import model_info

    class StudentModule(pl.LightningModule):
        """Student training: CCC loss on teacher (online/cached) or gold targets."""

        def __init__(self) -> None:
            super().__init__()
            self.model = model
            self.cfg = cfg
            self._teacher = [teacher]  # a list: not a sub-module (not trained, not saved)
            if teacher is not None:
                teacher.eval().requires_grad_(False)
            self._val_pred: list[torch.Tensor] = []
            self._val_index: list[torch.Tensor] = []
            self.val_targets: np.ndarray | None = None
            self.start_step: int | None = None
            self.history: list[dict[str, float]] = []
            self.sampler = None  # the training SeededSampler (set by fit)

        @property
        def teacher(self):
            return self._teacher[0]

        def on_fit_start(self) -> None:
            if self.teacher is not None:
                self.teacher.to(self.device).eval()

        def on_train_start(self) -> None:
            self.start_step = int(self.global_step)

        def targets(self, batch: dict) -> torch.Tensor:
            if self.cfg.targets == "online":
                with torch.no_grad():
                    return self.teacher(batch["wave"], batch["lengths"]).float()
            return batch["target"].to(self.device)

        def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
            target = self.targets(batch)
            pred = self.model(batch["wave"], batch["lengths"])
            per_dim = ccc_loss(pred, target, reduction="none")
            loss = per_dim.sum()
            if self.cfg.mse_weight > 0:
                loss = loss + self.cfg.mse_weight * F.mse_loss(pred, target)
            size = len(pred)
            self.log("train/loss", loss, prog_bar=True, batch_size=size)
            for label, value in zip(LABELS, per_dim, strict=True):
                self.log(f"train/ccc_{label}", 1 - value, batch_size=size)
            return loss

        def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
            if self.global_step >= self.cfg.max_steps:
                self.trainer.should_stop = True  # makes Lightning validate at the final step

        def validation_step(self, batch: dict, batch_idx: int) -> None:
            self._val_pred.append(self.model(batch["wave"], batch["lengths"]).float().cpu())
            self._val_index.append(batch["index"].cpu())

        def on_validation_epoch_end(self) -> None:
            if not self._val_pred:
                return
            pred = torch.cat(self._val_pred).numpy()
            index = torch.cat(self._val_index).numpy()
            self._val_pred, self._val_index = [], []
            values = np.atleast_1d(ccc(pred, self.val_targets[index]))
            values = np.nan_to_num(values, nan=0.0)
            row = {f"val/ccc_{k}": float(v) for k, v in zip(LABELS, values, strict=True)}
            row[MONITOR] = float(values.mean())
            for key, value in row.items():
                # sync_dist: every DDP rank validates all clips; ranks agree on the value
                self.log(key, value, prog_bar=key == MONITOR, sync_dist=True)
            self.history.append({"step": int(self.global_step), **row})

        def configure_optimizers(self):
            params = [p for p in self.model.parameters() if p.requires_grad]
            opt = torch.optim.AdamW(params, lr=self.cfg.lr, weight_decay=self.cfg.weight_decay)
            sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(self.cfg))
            return {
                "optimizer": opt,
                "lr_scheduler": {"scheduler": sched, "interval": "step", "frequency": 1},
            }

        def on_load_checkpoint(self, checkpoint: dict) -> None:
            # set here too: resuming a finished run starts no training (no on_train_start)
            self.start_step = int(checkpoint["global_step"])
            if self.sampler is not None:  # exact resume: the data continue at the saved step
                per_epoch = len(self.sampler) // self.cfg.batch_size
                epoch, done = divmod(int(checkpoint["global_step"]), per_epoch)
                self.sampler.resume_at(epoch, done * self.cfg.batch_size)

        def on_save_checkpoint(self, checkpoint: dict) -> None:
            checkpoint["wav2small"] = model_info(self.model)
            checkpoint["wav2small_config"] = json.dumps(self.cfg.to_dict())

    return StudentModule()


def lr_lambda(cfg: TrainConfig):
    """Learning-rate factor per step: linear warm-up, then cosine decay (or constant)."""
    warm, total, cosine = cfg.warmup_steps, cfg.max_steps, cfg.scheduler == "cosine"

    def factor(step: int) -> float:
        if warm and step < warm:
            return (step + 1) / warm
        if not cosine:
            return 1.0
        progress = min(1.0, (step - warm) / max(1, total - warm))
        return 0.5 * (1 + math.cos(math.pi * progress))

    return factor


# --- running ----------------------------------------------------------------------------------
@dataclass
class TrainResult:
    """What :func:`fit` produced.

    Attributes:
        run_dir: the run folder.
        best_checkpoint: Lightning checkpoint of the best validation CCC (or the last one).
        last_checkpoint: checkpoint at the final step.
        weights: ``best.safetensors`` (loadable with ``wav2small.models.load_model``).
        global_step: optimiser steps done in total.
        start_step: the step this session started from (0, or the resumed step).
        best_score: best mean validation CCC (NaN without validation).
        history: validation rows ``{"step", "val/ccc_<label>", "val/ccc_mean"}`` of this session.
    """

    run_dir: Path
    best_checkpoint: Path
    last_checkpoint: Path
    weights: Path
    global_step: int
    start_step: int
    best_score: float
    history: list[dict[str, float]] = field(default_factory=list)


def resume_path(resume: str | None, run_dir: Path) -> str | None:
    """The checkpoint to resume from: ``last`` (the run folder's last.ckpt), a path, or none."""
    if not resume:
        return None
    path = run_dir / "last.ckpt" if resume == "last" else Path(resume)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no checkpoint to resume from")
    return str(path)


def _loggers(run_dir: Path) -> list:
    from lightning.pytorch.loggers import CSVLogger

    loggers = [CSVLogger(save_dir=str(run_dir), name="logs")]
    try:  # TensorBoard only when it is installed (it is not a dependency)
        import tensorboard  # noqa: F401
        from lightning.pytorch.loggers import TensorBoardLogger

        loggers.append(TensorBoardLogger(save_dir=str(run_dir), name="tensorboard"))
    except ImportError:
        pass
    return loggers


def _loaders(cfg: TrainConfig, data: RunData):
    from functools import partial

    from torch.utils.data import DataLoader

    from wav2small.data import CropDataset, SeededSampler, UtteranceDataset, collate, pad_collate

    train_set = CropDataset(
        data.train,
        crop_seconds=cfg.crop_seconds,
        augment=cfg.augment(),
        with_targets=cfg.targets != "online",
    )
    if len(train_set) < cfg.batch_size:
        raise ValueError(
            f"{len(train_set)} training clips are fewer than one batch "
            f"({cfg.batch_size}); lower batch_size"
        )
    workers = cfg.num_workers
    train = DataLoader(
        train_set,
        batch_size=cfg.batch_size,
        drop_last=True,
        sampler=SeededSampler(len(train_set), seed=cfg.seed),
        collate_fn=partial(collate, min_seconds=cfg.min_crop_seconds),
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


def _trainer(cfg: TrainConfig, run_dir: Path, with_val: bool):
    pl = _lightning()
    from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint

    # with validation: best.ckpt by the mean CCC, saved after each validation; without: only
    # last.ckpt (fit() copies the final one to best.ckpt)
    checkpoint = ModelCheckpoint(
        dirpath=str(run_dir),
        filename="best",
        monitor=MONITOR if with_val else None,
        mode="max",
        save_top_k=1 if with_val else 0,
        save_last=True,
        auto_insert_metric_name=False,
        enable_version_counter=False,
        save_on_train_epoch_end=False if with_val else None,
    )
    val_args: dict[str, Any] = {"limit_val_batches": 1.0 if with_val else 0}
    if with_val and cfg.val_every:
        val_args.update(val_check_interval=cfg.val_every, check_val_every_n_epoch=None)
    trainer = pl.Trainer(
        default_root_dir=str(run_dir),
        max_steps=cfg.max_steps,
        max_epochs=-1,
        accelerator=cfg.accelerator,
        devices=cfg.devices,
        strategy=cfg.strategy,
        precision=cfg.precision,
        callbacks=[checkpoint, LearningRateMonitor(logging_interval="step")],
        logger=_loggers(run_dir),
        log_every_n_steps=cfg.log_every,
        gradient_clip_val=cfg.grad_clip or None,
        deterministic=cfg.deterministic,
        enable_progress_bar=cfg.progress,
        enable_model_summary=cfg.progress,
        num_sanity_val_steps=0,
        use_distributed_sampler=False,
        **val_args,
    )
    return trainer, checkpoint


def fit(cfg: TrainConfig) -> TrainResult:
    """Run (or resume) one training run as configured; see the module docstring.

    Returns:
        The :class:`TrainResult`.

    Raises:
        ValueError: invalid configuration or data.
        FileNotFoundError: missing data, labels or resume checkpoint.
    """
    pl = _lightning()
    from wav2small.models import create_model, load_model, save_model

    cfg.validate()
    run_dir = Path(cfg.out)
    run_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path = resume_path(cfg.resume, run_dir)
    if ckpt_path is None and (run_dir / "last.ckpt").exists():
        logger.warning(
            "%s holds an earlier run; starting afresh and overwriting its checkpoints "
            "(use --resume last to continue it)",
            run_dir,
        )
    started = time.time()
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    teacher = None
    if cfg.teacher and (cfg.targets == "online" or cfg.val_target == "teacher"):
        from wav2small.models.teacher import load_teacher

        teacher = load_teacher(cfg.teacher)
    data = prepare_data(cfg, teacher if cfg.val_target == "teacher" else None)
    save_config(cfg, run_dir / CONFIG_FILE)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)  # same init whatever came before
    model = create_model(cfg.student)
    module = build_module(model, cfg, teacher if cfg.targets == "online" else None)
    module.val_targets = data.val_targets
    train_loader, val_loader = _loaders(cfg, data)
    trainer, checkpoint = _trainer(cfg, run_dir, val_loader is not None)
    sampler = train_loader.sampler  # each DDP rank takes its share of every epoch
    sampler.rank, sampler.world_size = trainer.global_rank, trainer.world_size
    module.sampler = sampler
    if len(sampler) < cfg.batch_size:
        raise ValueError(
            f"{len(data.train)} training clips over {trainer.world_size} processes leave "
            f"{len(sampler)} per process, fewer than one batch ({cfg.batch_size}); lower batch_size"
        )
    logger.info(
        "%s %s: %d training clips, %d validation clips (targets %s, validation vs %s)",
        cfg.mode,
        cfg.student,
        len(data.train),
        len(data.val),
        cfg.targets,
        cfg.val_target if val_loader is not None else "none",
    )
    with warnings.catch_warnings():
        for pattern in _HARMLESS_WARNINGS:
            warnings.filterwarnings("ignore", message=pattern)
        # weights_only: a resumed checkpoint is read with torch.load(weights_only=True)
        trainer.fit(module, train_loader, val_loader, ckpt_path=ckpt_path, weights_only=True)
    last = run_dir / "last.ckpt"
    # the final step whatever the validation schedule (full state, so it can be resumed)
    trainer.save_checkpoint(str(last), weights_only=False)
    if not trainer.is_global_zero:  # DDP: rank 0 writes the run's files
        return TrainResult(
            run_dir,
            run_dir / "best.ckpt",
            last,
            run_dir / BEST_WEIGHTS,
            int(trainer.global_step),
            int(module.start_step or 0),
            float("nan"),
            module.history,
        )
    best = run_dir / "best.ckpt"
    if val_loader is None or not checkpoint.best_model_path:
        shutil.copyfile(last, run_dir / "best.ckpt.tmp")
        os.replace(run_dir / "best.ckpt.tmp", best)
    else:
        best = Path(checkpoint.best_model_path)
    best_model = load_model(best)
    score = checkpoint.best_model_score
    best_score = float(score) if score is not None else float("nan")
    save_model(
        best_model,
        run_dir / BEST_WEIGHTS,
        extra={
            "val_ccc_mean": f"{best_score:.6f}",
            "mode": cfg.mode,
            "targets": cfg.targets,
            "teacher": str(cfg.teacher or ""),
        },
    )
    _merge_metrics(run_dir)
    result = TrainResult(
        run_dir,
        best,
        last,
        run_dir / BEST_WEIGHTS,
        int(trainer.global_step),
        int(module.start_step or 0),
        best_score,
        module.history,
    )
    _write_summary(result, cfg, time.time() - started)
    return result


def _merge_metrics(run_dir: Path) -> None:
    """Concatenate the per-session CSV logs into ``metrics.csv`` (a resumed session's rows
    replace the earlier session's rows from the resumed step on)."""
    import pandas as pd

    versions = sorted(
        (run_dir / "logs").glob("version_*/metrics.csv"),
        key=lambda p: int(p.parent.name.split("_")[-1]),
    )
    frames = []
    for path in versions:
        try:
            frame = pd.read_csv(path)
        except (pd.errors.EmptyDataError, OSError):
            continue
        if frames and "step" in frame and len(frame):
            first = frame["step"].min()
            frames = [f[f["step"] < first] if "step" in f else f for f in frames]
        frames.append(frame)
    if not frames:
        return
    tmp = run_dir / (METRICS_FILE + ".tmp")
    pd.concat(frames, ignore_index=True).to_csv(tmp, index=False)
    os.replace(tmp, run_dir / METRICS_FILE)


def _write_summary(result: TrainResult, cfg: TrainConfig, seconds: float) -> None:
    summary = {
        "mode": cfg.mode,
        "student": cfg.student,
        "targets": cfg.targets,
        "teacher": cfg.teacher,
        "global_step": result.global_step,
        "start_step": result.start_step,
        "best_val_ccc_mean": result.best_score,
        "val_target": cfg.val_target,
        "best_checkpoint": result.best_checkpoint.name,
        "weights": result.weights.name,
        "seconds": round(seconds, 1),
        "history": result.history,
    }
    tmp = result.run_dir / (SUMMARY_FILE + ".tmp")
    tmp.write_text(json.dumps(summary, indent=2, allow_nan=True))
    os.replace(tmp, result.run_dir / SUMMARY_FILE)


# --- command line -----------------------------------------------------------------------------
#: CLI flags shared by ``distill`` and ``train`` → config keys (flag dest names).
CLI_KEYS = (
    "student",
    "teacher",
    "audio",
    "data",
    "labels",
    "targets",
    "val",
    "out",
    "seed",
    "max_steps",
    "batch_size",
    "lr",
    "resume",
    "num_workers",
    "val_target",
    "accelerator",
    "devices",
    "strategy",
)


def cli_config(args, *, mode: str) -> TrainConfig:
    """Resolve defaults ← ``--config`` YAML ← explicit flags ← ``--set key=value``."""
    base = load_yaml(args.config) if getattr(args, "config", None) else {}
    flags = {k: getattr(args, k) for k in CLI_KEYS if getattr(args, k, None) is not None}
    if getattr(args, "no_progress", False):
        flags["progress"] = False
    return resolve_config(base, {"mode": mode}, flags, parse_overrides(getattr(args, "set", None)))


def train_cli(args, *, mode: str) -> int:
    """``wav2small distill|train``: run, print where the results are."""
    cfg = cli_config(args, mode=mode)
    if mode == "distill" and getattr(args, "labels", None) and args.targets is None:
        cfg.targets = "cached"  # --labels means the cached labels (the teacher then validates)
    result = fit(cfg)
    from lightning.pytorch.utilities import rank_zero_only

    if rank_zero_only.rank != 0:  # DDP: the other ranks are quiet
        return 0
    print(f"run folder   {result.run_dir}")
    print(f"steps        {result.start_step} → {result.global_step}")
    print(
        f"best         {result.best_checkpoint.name}  val CCC mean {result.best_score:.4f} "
        f"(vs {cfg.val_target})"
    )
    print(f"weights      {result.weights}")
    return 0
