"""Self-distillation with early exits (Ren et al., ICASSP 2023, arXiv 2210.14636; SPEC §2).

A wav2vec2/WavLM backbone is fine-tuned together with shallow exits (:mod:`wav2small.models.exits`)
that learn from the labels *and* from the deepest head. Then inference runs only up to the exit
a device can afford.

**Loss** (:func:`self_distillation_loss`; every weight defaults to 1, as in the authors' code)::

    L = w_deepest · task(deepest, y)
      + mean over exits e of [ w_exit · task(e, y) + w_kd · kd(e, deepest)
                               + w_feature · MSE(pooled feature e, pooled feature deepest) ]

* ``task="classes"``: task = cross-entropy; kd = ``KLDivLoss(log_softmax(e/T),
  softmax(deepest/T)) · T²`` ("KL(exit ‖ deepest)" as the paper's code names it: the exit's
  log-probabilities are the input and the deepest head's probabilities the target, i.e.
  mathematically KL(p_deepest ‖ p_exit), the usual distillation direction). The released code
  passes *probabilities* where torch expects log-probabilities; we use proper log-probabilities,
  with an optional temperature T (default 1).
* ``task="adv"`` (arousal, dominance, valence): task = Σ_d (1 − CCC_d) over the batch; kd = MSE
  between the exit's and the deepest head's outputs.
* As in the authors' code the deepest head is *not* detached in kd and feature terms (the
  deepest head also moves towards the exits); ``detach_teacher=True`` stops those gradients.

**Training** (:func:`fit_selfdistill`, ``wav2small selfdistill``): Lightning, Adam (lr 3e-5,
betas 0.9/0.999, eps 1e-8, no weight decay), batch 16, 20 epochs — the paper's values — on random
crops of the labelled clips (the authors tile/cut every clip to one fixed length; we crop to at
most ``crop_seconds`` and cut each batch to its shortest crop, see :mod:`wav2small.data`).
Validation on whole clips after every epoch (or every ``val_every`` steps) computes UAR
(classes) or mean CCC (A/D/V) per head; ``val/score``, the mean over all heads, picks
``best.ckpt``. The run folder also holds ``last.ckpt`` (``--resume`` continues from it),
``best.safetensors``, ``config.yaml``, ``metrics.csv`` and ``summary.json``. Plain fine-tuning
(the paper's baseline) is the same run with no exits.

**Evaluation** (:func:`evaluate_exits`): per exit (each layer, ``deepest``, ``fusion``) UAR or
CCC on whole clips, the median milliseconds for one 5 s clip with one thread (backbone truncated
after the exit), and the parameters used. **Export** (:func:`export_exit`): one exit to ONNX,
with a torch-vs-ONNX parity check.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from wav2small import LABELS, SAMPLE_RATE

logger = logging.getLogger(__name__)

#: The checkpoint-selecting metric: mean over heads of UAR (classes) or mean CCC (A/D/V).
MONITOR = "val/score"
CONFIG_FILE = "config.yaml"
BEST_WEIGHTS = "best.safetensors"
SUMMARY_FILE = "summary.json"
METRICS_FILE = "metrics.csv"
#: Label column of the synthetic corpus's categorical view (``wav2small.synth``).
DEFAULT_LABEL_COLUMN = "emotion"
#: Input lengths of the ONNX parity check (seconds) and its tolerance.
PARITY_SECONDS = (1.0, 4.0, 10.0)
PARITY_MAX_ABS = 1e-4
EXPORTERS = ("auto", "dynamo", "torchscript")
ONNX_INPUT = "signal"
#: Clip length of the latency figure (the paper family's "per 5 s").
LATENCY_SECONDS = 5.0


# --- loss -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LossWeights:
    """Weights of the loss terms (all 1 in the paper).

    Attributes:
        deepest: task loss of the deepest head.
        exit: task loss of the exits (mean over exits).
        kd: exit-vs-deepest output term (KL for classes, MSE for A/D/V).
        feature: MSE between the exit's and the deepest head's pooled features.
    """

    deepest: float = 1.0
    exit: float = 1.0
    kd: float = 1.0
    feature: float = 1.0


def kd_kl(student_logits, teacher_logits, *, temperature: float = 1.0):
    """``KLDivLoss(batchmean)(log_softmax(s/T), softmax(t/T)) · T²`` with log-space targets."""
    import torch.nn.functional as F

    t = float(temperature)
    if t <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    return F.kl_div(
        F.log_softmax(student_logits / t, dim=-1),
        F.log_softmax(teacher_logits / t, dim=-1),
        reduction="batchmean",
        log_target=True,
    ) * (t * t)


def task_loss(pred, target, *, task: str):
    """Cross-entropy (classes, integer targets) or Σ_d (1 − CCC_d) (A/D/V)."""
    import torch.nn.functional as F

    from wav2small.metrics import ccc_loss

    if task == "classes":
        return F.cross_entropy(pred, target)
    if task == "adv":
        return ccc_loss(pred, target, reduction="sum")
    raise ValueError(f"task must be 'classes' or 'adv', got {task!r}")


def self_distillation_loss(
    outputs,
    target,
    *,
    task: str,
    weights: LossWeights = LossWeights(),
    temperature: float = 1.0,
    detach_teacher: bool = False,
) -> dict[str, Any]:
    """The self-distillation loss and its terms.

    Args:
        outputs: :class:`wav2small.models.exits.ExitOutputs` of one batch.
        target: (batch,) class indices (classes) or (batch, 3) A/D/V (adv).
        task: ``"classes"`` or ``"adv"``.
        weights: term weights.
        temperature: softmax temperature of the KL term (classes only).
        detach_teacher: stop gradients through the deepest head in the kd and feature terms.

    Returns:
        Tensors ``total``, ``deepest`` and, when the model has exits, ``exit``, ``kd`` and
        ``feature`` (each term unweighted, averaged over exits; ``total`` weighted).
    """
    import torch
    import torch.nn.functional as F

    from wav2small.models.exits import DEEPEST

    deep, deep_feat = outputs.outputs[DEEPEST], outputs.features[DEEPEST]
    if detach_teacher:
        deep, deep_feat = deep.detach(), deep_feat.detach()
    terms = {"deepest": task_loss(outputs.outputs[DEEPEST], target, task=task)}
    total = weights.deepest * terms["deepest"]
    exits = outputs.exits
    if exits:

        def kd(e):
            if task == "classes":
                return kd_kl(outputs.outputs[e], deep, temperature=temperature)
            return F.mse_loss(outputs.outputs[e], deep)

        terms["exit"] = torch.stack(
            [task_loss(outputs.outputs[e], target, task=task) for e in exits]
        ).mean()
        terms["kd"] = torch.stack([kd(e) for e in exits]).mean()
        terms["feature"] = torch.stack(
            [F.mse_loss(outputs.features[e], deep_feat) for e in exits]
        ).mean()
        total = total + (
            weights.exit * terms["exit"]
            + weights.kd * terms["kd"]
            + weights.feature * terms["feature"]
        )
    terms["total"] = total
    return terms


# --- data -------------------------------------------------------------------------------------
def class_names(values: Sequence[str]) -> tuple[str, ...]:
    """Class order: the synthetic corpus's when the labels are its classes, else sorted."""
    from wav2small.synth import EMOTION_CLASSES

    present = {str(v) for v in values}
    if present <= set(EMOTION_CLASSES):
        return tuple(EMOTION_CLASSES)
    return tuple(sorted(present))


def targets_of(
    table,
    *,
    task: str,
    classes: Sequence[str] = (),
    label_column: str = DEFAULT_LABEL_COLUMN,
    name: str = "<table>",
) -> np.ndarray:
    """Targets of a manifest: class indices (int64) or (n, 3) A/D/V (float32).

    Raises:
        ValueError: missing/empty label column, or a class not in ``classes`` (names the file).
    """
    from wav2small.data import check_labels

    if task == "adv":
        check_labels(table, name)
        return table[list(LABELS)].to_numpy(dtype=np.float32)
    if label_column not in table.columns:
        raise ValueError(
            f"{name}: needs a '{label_column}' column for task 'classes'; "
            f"it has {list(table.columns)}"
        )
    column = table[label_column]
    if column.isna().any():
        raise ValueError(
            f"{name}: empty '{label_column}' for {table['file'][column.isna()].iloc[0]}"
        )
    index = {c: i for i, c in enumerate(classes)}
    unknown = [
        (f, v) for f, v in zip(table["file"], column.astype(str), strict=True) if v not in index
    ]
    if unknown:
        raise ValueError(
            f"{name}: {unknown[0][0]} has class {unknown[0][1]!r}, not one of "
            f"the model's classes {list(classes)}"
        )
    return np.array([index[v] for v in column.astype(str)], dtype=np.int64)


# --- configuration ----------------------------------------------------------------------------
@dataclass
class SelfDistillConfig:
    """Every setting of a self-distillation (or plain fine-tuning) run.

    Attributes:
        backbone: ``random:<preset>``, a folder or a hub id (see ``load_backbone``).
        data: labelled CSV (``file`` + ``emotion`` or ``arousal, dominance, valence``).
        val: validation CSV; default: hold out ``val_fraction`` of ``data``.
        val_fraction: share held out when ``val`` is not given.
        task: ``classes`` or ``adv``.
        label_column: class column (task classes).
        exits: layers followed by an exit; empty for plain fine-tuning.
        out: run folder.
        epochs: passes over the data (the paper: 20); ignored when ``max_steps`` > 0.
        max_steps: optimiser steps (0: use ``epochs``).
        batch_size: crops per step (the paper: 16).
        lr: Adam learning rate (the paper: 3e-5).
        warmup_steps: linear warm-up steps (the paper: none), constant afterwards.
        crop_seconds: longest random training crop.
        min_crop_seconds: shortest batch crop (shorter clips are zero-padded, with lengths).
        temperature: KL temperature (classes).
        w_deepest: weight of the deepest head's task loss.
        w_exit: weight of the exits' task loss.
        w_kd: weight of the exit-vs-deepest output term.
        w_feature: weight of the pooled-feature MSE.
        detach_teacher: stop gradients through the deepest head in the kd/feature terms.
        feature_level: ``embedding`` (H-dim) or ``linear`` (256-dim) pooled feature.
        grad_clip: gradient-norm clipping (0: off).
        val_every: validate every this many steps (0: every epoch).
        seed: the one seed (weights of random backbones and heads, split, crops).
        num_workers: data-loader workers.
        accelerator: Lightning accelerator.
        precision: Lightning precision.
        progress: progress bars.
        resume: ``last`` or a ``.ckpt`` path to continue from; empty: a fresh run.
    """

    backbone: str = "random:wav2vec2-small"
    data: str = ""
    val: str | None = None
    val_fraction: float = 0.1
    task: str = "classes"
    label_column: str = DEFAULT_LABEL_COLUMN
    exits: tuple[int, ...] = (3, 8, 10)
    out: str = "runs/selfdistill"
    epochs: int = 20
    max_steps: int = 0
    batch_size: int = 16
    lr: float = 3e-5
    warmup_steps: int = 0
    crop_seconds: float = 4.0
    min_crop_seconds: float = 1.0
    temperature: float = 1.0
    w_deepest: float = 1.0
    w_exit: float = 1.0
    w_kd: float = 1.0
    w_feature: float = 1.0
    detach_teacher: bool = False
    feature_level: str = "embedding"
    grad_clip: float = 0.0
    val_every: int = 0
    seed: int = 0
    num_workers: int = 0
    accelerator: str = "auto"
    precision: str = "32-true"
    progress: bool = True
    resume: str | None = None

    def weights(self) -> LossWeights:
        """The loss weights."""
        return LossWeights(self.w_deepest, self.w_exit, self.w_kd, self.w_feature)

    def validate(self) -> None:
        """Raise ValueError on settings that cannot work."""
        if self.task not in ("classes", "adv"):
            raise ValueError(f"task must be 'classes' or 'adv', got {self.task!r}")
        if not self.data:
            raise ValueError("no training data: set data (a labelled CSV)")
        if self.batch_size < 1 or self.lr <= 0 or self.temperature <= 0:
            raise ValueError("batch_size, lr and temperature must be positive")
        if self.max_steps <= 0 and self.epochs <= 0:
            raise ValueError("set epochs or max_steps to a positive number")

    def to_dict(self) -> dict[str, Any]:
        """Plain fields (for config.yaml and the checkpoint)."""
        out = dataclasses.asdict(self)
        out["exits"] = list(self.exits)
        return out


def save_config(cfg: SelfDistillConfig, path: str | os.PathLike) -> None:
    """Write the resolved configuration as YAML (atomically)."""
    import yaml

    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    os.replace(tmp, path)


# --- data loading -----------------------------------------------------------------------------
@dataclass
class RunData:
    """Manifests and targets of one run."""

    train: Any
    val: Any
    train_targets: np.ndarray
    val_targets: np.ndarray | None
    classes: tuple[str, ...]


def prepare_data(cfg: SelfDistillConfig) -> RunData:
    """Read the labelled CSV(s), pick the classes, split off validation clips."""
    from wav2small.data import load_manifest, split_manifest

    table = load_manifest(cfg.data)
    classes: tuple[str, ...] = ()
    if cfg.task == "classes":
        if cfg.label_column not in table.columns:
            raise ValueError(
                f"{cfg.data}: needs a '{cfg.label_column}' column for task "
                f"'classes'; it has {list(table.columns)}"
            )
        classes = class_names(table[cfg.label_column].dropna())
    if cfg.val:
        train, val = table, load_manifest(cfg.val)
    else:
        train, val = split_manifest(table, cfg.val_fraction, seed=cfg.seed)
    train_t = targets_of(
        train, task=cfg.task, classes=classes, label_column=cfg.label_column, name=cfg.data
    )
    val_t = (
        targets_of(
            val,
            task=cfg.task,
            classes=classes,
            label_column=cfg.label_column,
            name=cfg.val or cfg.data,
        )
        if len(val)
        else None
    )
    return RunData(train, val, train_t, val_t, classes)


class _Targets:
    """Wraps a batch from :func:`wav2small.data.collate` with this run's targets."""

    def __init__(self, collate, targets: np.ndarray) -> None:
        self.collate, self.targets = collate, targets

    def __call__(self, items):
        import torch

        batch = self.collate(items)
        batch["target"] = torch.from_numpy(self.targets[batch["index"].numpy()])
        return batch


def _loaders(cfg: SelfDistillConfig, data: RunData):
    from functools import partial

    from torch.utils.data import DataLoader

    from wav2small.data import CropDataset, SeededSampler, UtteranceDataset, collate, pad_collate

    train_set = CropDataset(data.train, crop_seconds=cfg.crop_seconds)
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
        collate_fn=_Targets(partial(collate, min_seconds=cfg.min_crop_seconds), data.train_targets),
        num_workers=workers,
        persistent_workers=workers > 0,
    )
    if data.val_targets is None:
        return train, None
    val = DataLoader(
        UtteranceDataset(data.val),
        batch_size=8,
        collate_fn=_Targets(pad_collate, data.val_targets),
        num_workers=0,
    )
    return train, val


# --- metrics per head -------------------------------------------------------------------------
def head_scores(outputs: dict, target: np.ndarray, *, task: str) -> dict[str, dict[str, float]]:
    """Per head: ``uar`` (and ``accuracy``) for classes, ``ccc_<label>`` and ``ccc_mean`` for A/D/V.

    Args:
        outputs: head name → (n, out) numpy outputs.
        target: (n,) class indices or (n, 3) A/D/V.
        task: ``classes`` or ``adv``.
    """
    from wav2small.metrics import ccc, uar

    scores = {}
    for head, pred in outputs.items():
        if task == "classes":
            labels = pred.argmax(axis=1)
            scores[str(head)] = {
                "uar": uar(labels, target),
                "accuracy": float(np.mean(labels == target)),
            }
        else:
            values = np.atleast_1d(ccc(pred, target))
            row = {f"ccc_{k}": float(v) for k, v in zip(LABELS, values, strict=True)}
            row["ccc_mean"] = float(np.nanmean(values)) if np.isfinite(values).any() else math.nan
            scores[str(head)] = row
    return scores


def _all_heads(model, wave, lengths) -> dict[str, Any]:
    """Every head's output for one batch, plus ``fusion`` (classes with exits)."""
    from wav2small.models.exits import fuse_by_margin

    out = model.forward_all(wave, lengths).outputs
    heads = {str(k): v for k, v in out.items()}
    if model.config.task == "classes" and model.exits:
        heads["fusion"] = fuse_by_margin([out[k] for k in model.exits])[0]
    return heads


# --- the Lightning module ---------------------------------------------------------------------
def build_module(model, cfg: SelfDistillConfig):
    """A LightningModule holding the early-exit model as ``.model``."""
    import lightning.pytorch as pl
    import torch

    from wav2small.models.exits import exits_info

    score_key = "uar" if cfg.task == "classes" else "ccc_mean"

    class SelfDistillModule(pl.LightningModule):
        """Self-distillation training; per-head validation."""

        def __init__(self) -> None:
            super().__init__()
            self.model = model
            self._val: dict[str, list] = {}
            self._val_index: list = []
            self.val_targets: np.ndarray | None = None
            self.history: list[dict[str, float]] = []
            self.start_step: int | None = None
            self.sampler = None  # the training SeededSampler, for an exact resume

        def on_load_checkpoint(self, checkpoint: dict) -> None:
            if self.sampler is not None and hasattr(self.sampler, "resume_at"):
                per_epoch = max(1, len(self.sampler) // cfg.batch_size)
                epoch, done = divmod(int(checkpoint["global_step"]), per_epoch)
                self.sampler.resume_at(epoch, done * cfg.batch_size)  # data go on from the step

        def on_train_start(self) -> None:
            self.start_step = int(self.global_step)

        def training_step(self, batch: dict, batch_idx: int):
            out = self.model.forward_all(batch["wave"], batch["lengths"])
            terms = self_distillation_loss(
                out,
                batch["target"],
                task=cfg.task,
                weights=cfg.weights(),
                temperature=cfg.temperature,
                detach_teacher=cfg.detach_teacher,
            )
            size = len(batch["wave"])
            for key, value in terms.items():
                self.log(f"train/{key}", value, prog_bar=key == "total", batch_size=size)
            return terms["total"]

        def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
            if self.global_step >= self.trainer.max_steps:
                self.trainer.should_stop = True  # makes Lightning validate at the final step

        def validation_step(self, batch: dict, batch_idx: int) -> None:
            for head, pred in _all_heads(self.model, batch["wave"], batch["lengths"]).items():
                self._val.setdefault(head, []).append(pred.float().cpu())
            self._val_index.append(batch["index"].cpu())

        def on_validation_epoch_end(self) -> None:
            if not self._val_index:
                return
            index = torch.cat(self._val_index).numpy()
            outputs = {h: torch.cat(v).numpy() for h, v in self._val.items()}
            self._val, self._val_index = {}, []
            scores = head_scores(outputs, self.val_targets[index], task=cfg.task)
            row = {f"val/{score_key}_{h}": s[score_key] for h, s in scores.items()}
            real = [s[score_key] for h, s in scores.items() if h != "fusion"]
            row[MONITOR] = float(np.nan_to_num(np.mean(real), nan=0.0))
            for key, value in row.items():
                self.log(key, value, prog_bar=key == MONITOR)
            self.history.append({"step": int(self.global_step), **row})

        def configure_optimizers(self):
            opt = torch.optim.Adam(
                self.model.parameters(), lr=cfg.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0
            )
            warm = cfg.warmup_steps
            sched = torch.optim.lr_scheduler.LambdaLR(
                opt, lambda step: min(1.0, (step + 1) / warm) if warm else 1.0
            )
            return {
                "optimizer": opt,
                "lr_scheduler": {"scheduler": sched, "interval": "step", "frequency": 1},
            }

        def on_save_checkpoint(self, checkpoint: dict) -> None:
            checkpoint["wav2small"] = exits_info(self.model)
            checkpoint["wav2small_config"] = json.dumps(cfg.to_dict())

    return SelfDistillModule()


# --- running ----------------------------------------------------------------------------------
@dataclass
class SelfDistillResult:
    """What :func:`fit_selfdistill` produced.

    Attributes:
        run_dir: the run folder.
        best_checkpoint: Lightning checkpoint with the best ``val/score`` (or the last one).
        last_checkpoint: checkpoint at the final step.
        weights: ``best.safetensors`` (load with ``wav2small.models.exits.load_exits_model``).
        global_step: optimiser steps done in total.
        start_step: step this session started from.
        best_score: best ``val/score`` (NaN without validation).
        history: validation rows of this session.
    """

    run_dir: Path
    best_checkpoint: Path
    last_checkpoint: Path
    weights: Path
    global_step: int
    start_step: int
    best_score: float
    history: list[dict[str, float]] = field(default_factory=list)


def _trainer(cfg: SelfDistillConfig, run_dir: Path, with_val: bool, steps_per_epoch: int):
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger

    checkpoint = ModelCheckpoint(
        dirpath=str(run_dir),
        filename="best",
        monitor=MONITOR if with_val else None,
        mode="max",
        save_top_k=1,
        save_last=True,
        auto_insert_metric_name=False,
        enable_version_counter=False,
    )
    steps = cfg.max_steps if cfg.max_steps > 0 else cfg.epochs * steps_per_epoch
    val_args: dict[str, Any] = {"limit_val_batches": 1.0 if with_val else 0}
    if with_val and cfg.val_every:
        val_args.update(
            val_check_interval=min(cfg.val_every, steps_per_epoch), check_val_every_n_epoch=None
        )
    trainer = pl.Trainer(
        default_root_dir=str(run_dir),
        max_steps=steps,
        max_epochs=-1,  # steps decide (resume)
        accelerator=cfg.accelerator,
        devices=1,
        precision=cfg.precision,
        callbacks=[checkpoint],
        logger=CSVLogger(save_dir=str(run_dir), name="logs"),
        log_every_n_steps=10,
        gradient_clip_val=cfg.grad_clip or None,
        enable_progress_bar=cfg.progress,
        enable_model_summary=cfg.progress,
        num_sanity_val_steps=0,
        use_distributed_sampler=False,
        **val_args,
    )
    return trainer, checkpoint


def build_model(cfg: SelfDistillConfig, classes: Sequence[str]):
    """The early-exit model of a run (backbone and heads from the run's seed)."""
    from wav2small.models.exits import create_exits_model

    return create_exits_model(
        cfg.backbone,
        task=cfg.task,
        classes=classes,
        exits=cfg.exits,
        feature_level=cfg.feature_level,
    )


def fit_selfdistill(cfg: SelfDistillConfig) -> SelfDistillResult:
    """Run (or resume) self-distillation as configured (plain fine-tuning without exits).

    Raises:
        ValueError: invalid configuration or data.
        FileNotFoundError: missing data or resume checkpoint.
    """
    import lightning.pytorch as pl

    from wav2small.models.exits import load_exits_model, save_exits_model

    cfg.validate()
    run_dir = Path(cfg.out)
    run_dir.mkdir(parents=True, exist_ok=True)
    from wav2small.train import resume_path

    ckpt_path = resume_path(cfg.resume, run_dir)
    started = time.time()
    data = prepare_data(cfg)
    save_config(cfg, run_dir / CONFIG_FILE)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    model = build_model(cfg, data.classes)
    module = build_module(model, cfg)
    module.val_targets = data.val_targets
    train_loader, val_loader = _loaders(cfg, data)
    module.sampler = train_loader.sampler
    trainer, checkpoint = _trainer(cfg, run_dir, val_loader is not None, len(train_loader))
    logger.info(
        "selfdistill %s, exits %s, task %s: %d training clips, %d validation clips",
        cfg.backbone,
        list(model.exits) or "none (plain fine-tuning)",
        cfg.task,
        len(data.train),
        len(data.val),
    )
    trainer.fit(module, train_loader, val_loader, ckpt_path=ckpt_path, weights_only=True)
    last = run_dir / "last.ckpt"
    trainer.save_checkpoint(str(last), weights_only=False)
    best = Path(checkpoint.best_model_path) if checkpoint.best_model_path else last
    score = checkpoint.best_model_score
    best_score = float(score) if score is not None else float("nan")
    save_exits_model(load_exits_model(best), run_dir / BEST_WEIGHTS)
    _merge_metrics(run_dir)
    result = SelfDistillResult(
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
    """Concatenate the per-session CSV logs into ``metrics.csv`` (resumed rows replace later)."""
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
    if frames:
        tmp = run_dir / (METRICS_FILE + ".tmp")
        pd.concat(frames, ignore_index=True).to_csv(tmp, index=False)
        os.replace(tmp, run_dir / METRICS_FILE)


def _write_summary(result: SelfDistillResult, cfg: SelfDistillConfig, seconds: float) -> None:
    summary = {
        "backbone": cfg.backbone,
        "task": cfg.task,
        "exits": list(cfg.exits),
        "global_step": result.global_step,
        "start_step": result.start_step,
        "best_val_score": result.best_score,
        "best_checkpoint": result.best_checkpoint.name,
        "weights": result.weights.name,
        "seconds": round(seconds, 1),
        "history": result.history,
    }
    tmp = result.run_dir / (SUMMARY_FILE + ".tmp")
    tmp.write_text(json.dumps(summary, indent=2, allow_nan=True))
    os.replace(tmp, result.run_dir / SUMMARY_FILE)


# --- evaluation -------------------------------------------------------------------------------
def exit_latencies_ms(
    model,
    exits: Sequence,
    *,
    seconds: float = LATENCY_SECONDS,
    threads: int = 1,
    repeats: int = 10,
    warmup: int = 2,
) -> dict[str, float]:
    """Median ms of one forward pass per exit on one ``seconds``-long clip (torch, CPU).

    The exits are timed in interleaved rounds (every exit once per round), so a burst of load
    from other processes on a shared machine hits all of them alike instead of one.
    """
    import torch

    from wav2small.models.exits import latency_input

    wave = latency_input(seconds)
    times: dict[str, list[float]] = {str(e): [] for e in exits}
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.inference_mode():
            for round_ in range(warmup + repeats):
                for exit in exits:  # noqa: A001
                    t0 = time.perf_counter()
                    model(wave, exit=exit)
                    if round_ >= warmup:
                        times[str(exit)].append(1000 * (time.perf_counter() - t0))
    finally:
        torch.set_num_threads(before)
    return {k: statistics.median(v) for k, v in times.items()}


def exit_latency_ms(model, exit, **kwargs) -> float:  # noqa: A002
    """Median ms of one forward pass at one exit (see :func:`exit_latencies_ms`)."""
    return exit_latencies_ms(model, [exit], **kwargs)[str(exit)]


def exit_names(model, requested: Sequence[str] | None = None) -> list:
    """The exits to report: every layer exit, ``deepest``, ``fusion`` (classes), or a choice."""
    from wav2small.models.exits import DEEPEST, FUSION, parse_exit

    if not requested or list(requested) == ["all"]:
        names: list = [*model.exits, DEEPEST]
        if model.config.task == "classes" and model.exits:
            names.append(FUSION)
        return names
    return [model.check_exit(parse_exit(r)) for r in requested]


def evaluate_exits(
    model,
    data: str | os.PathLike,
    *,
    exits: Sequence[str] | None = None,
    label_column: str = DEFAULT_LABEL_COLUMN,
    threads: int = 1,
    repeats: int = 10,
    batch_size: int = 8,
    latency: bool = True,
    progress: bool = True,
):
    """Per exit: UAR (classes) or CCC (A/D/V) on whole clips, ms per 5 s, parameters used.

    Scores come from one full pass per batch (every head; equal to truncated runs, as the
    tests check); latency runs the truncated backbone on one 5 s clip with ``threads`` threads.

    Args:
        model: an :class:`~wav2small.models.exits.EarlyExitModel`.
        data: labelled CSV.
        exits: exit names (``"3"``, ``"deepest"``, ``"fusion"``) or None/``["all"]`` for all.
        label_column: class column (task classes).
        threads: torch threads for the latency figure.
        repeats: timed runs per exit (median reported).
        batch_size: clips per scoring batch (padded, masked).
        latency: also measure latency.
        progress: progress bar.

    Returns:
        DataFrame, one row per exit: ``exit``, ``layers``, ``params``, ``ms_per_5s`` and the
        scores (``uar``, ``accuracy``; or ``ccc_arousal``, ``ccc_dominance``, ``ccc_valence``,
        ``ccc_mean``); ``n`` clips.
    """
    import pandas as pd
    import torch
    from tqdm import tqdm

    from wav2small.data import UtteranceDataset, load_manifest, pad_collate

    names = exit_names(model, exits)
    table = load_manifest(data)
    target = targets_of(
        table,
        task=model.config.task,
        classes=model.config.classes,
        label_column=label_column,
        name=str(data),
    )
    dataset = UtteranceDataset(table)
    model = model.eval()
    chunks: dict[str, list] = {}
    starts = range(0, len(dataset), batch_size)
    with torch.inference_mode():
        for start in tqdm(starts, desc="scoring", disable=not progress):
            batch = pad_collate(
                [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
            )
            for head, pred in _all_heads(model, batch["wave"], batch["lengths"]).items():
                chunks.setdefault(head, []).append(pred.float().numpy())
    outputs = {h: np.concatenate(v) for h, v in chunks.items()}
    scores = head_scores(outputs, target, task=model.config.task)
    ms = exit_latencies_ms(model, names, threads=threads, repeats=repeats) if latency else {}
    rows = []
    for name in names:
        rows.append(
            {
                "exit": str(name),
                "layers": model.depth(name),
                "params": model.parameters_used(name),
                "ms_per_5s": ms.get(str(name), math.nan),
                **scores[str(name)],
                "n": len(target),
            }
        )
    return pd.DataFrame(rows)


# --- export -----------------------------------------------------------------------------------
@dataclass
class ExitExportReport:
    """What :func:`export_exit` wrote and measured."""

    path: str
    bytes: int
    exit: str
    exporter: str
    max_abs_diff: dict[str, float] = field(default_factory=dict)
    passed: bool = True

    def summary(self) -> str:
        """Human-readable lines for the CLI."""
        lines = [
            f"onnx  {self.path}  {self.bytes / 1024:.1f} KB  (exit {self.exit}, "
            f"{self.exporter} exporter)"
        ]
        lines += [
            f"  parity vs torch, {k}: max |diff| = {v:.2e}" for k, v in self.max_abs_diff.items()
        ]
        lines.append("parity gate: " + ("PASSED" if self.passed else "FAILED"))
        return "\n".join(lines)


def _onnx_export(module, path: Path, output: str, exporter: str) -> None:
    import warnings

    import torch

    example = torch.zeros(2, SAMPLE_RATE).normal_(generator=torch.Generator().manual_seed(0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if exporter == "dynamo":
            dims = (
                {
                    0: torch.export.Dim("batch"),
                    1: torch.export.Dim("samples", min=module.model.min_samples),
                },
            )
            torch.onnx.export(
                module,
                (example,),
                str(path),
                input_names=[ONNX_INPUT],
                output_names=[output],
                dynamic_shapes=dims,
                dynamo=True,
                opset_version=18,
                verbose=False,
            )
        else:
            torch.onnx.export(
                module,
                (example,),
                str(path),
                input_names=[ONNX_INPUT],
                output_names=[output],
                dynamo=False,
                opset_version=17,
                dynamic_axes={ONNX_INPUT: {0: "batch", 1: "samples"}, output: {0: "batch"}},
            )


def export_exit(
    model,
    path: str | os.PathLike,
    *,
    exit="deepest",  # noqa: A002
    exporter: str = "auto",
    check: bool = True,
    seed: int = 0,
) -> ExitExportReport:
    """Export the model truncated at one exit to fp32 ONNX (input ``signal`` (batch, samples)).

    The output is ``logits`` (classes; names in the ``labels`` metadata) or ``adv``. Exporter:
    torch's dynamo exporter cannot decompose ``aten.gru`` when the time axis is derived from
    the input length (torch 2.14: "size of tensor a (H) must match b (3H)"), so exits and
    ``fusion`` need the TorchScript exporter (native ONNX GRU). ``auto`` uses it for every exit:
    it also exports ``deepest`` in about a second where dynamo takes about a minute for a tiny
    model on a busy 2-core machine; ``exporter="dynamo"`` remains available for ``deepest``.

    Args:
        model: an early-exit model.
        path: output ``.onnx`` (written atomically).
        exit: layer number, ``"deepest"`` or ``"fusion"``.
        exporter: ``auto``, ``dynamo`` or ``torchscript``.
        check: run the parity check (max |torch − ONNX| on 1, 4, 10 s inputs ≤ 1e-4).
        seed: seed of the parity inputs.
    """
    import tempfile

    import onnx

    from wav2small.export import _save_atomic, _set_metadata
    from wav2small.models.exits import DEEPEST, exits_info, parse_exit

    if exporter not in EXPORTERS:
        raise ValueError(f"exporter must be one of {EXPORTERS}, got {exporter!r}")
    exit = model.check_exit(parse_exit(exit))  # noqa: A001
    if exporter == "dynamo" and exit != DEEPEST:
        raise ValueError(
            f"exit {exit}: the dynamo exporter cannot export the exits' GRU "
            "(torch 2.14); use exporter='torchscript' or 'auto'"
        )
    if exporter == "auto":
        exporter = "torchscript"
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    output = "logits" if model.config.task == "classes" else "adv"
    module = model.eval().at_exit(exit).eval()
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp) / "model.onnx"
        _onnx_export(module, tmp_path, output, exporter)
        proto = onnx.load(str(tmp_path))
    facts = {
        **exits_info(model),
        "exit": str(exit),
        "layers": str(model.depth(exit)),
        "output": output,
        "exporter": exporter,
    }
    _set_metadata(proto, facts)
    _save_atomic(proto, path)
    report = ExitExportReport(str(path), path.stat().st_size, str(exit), exporter)
    if check:
        report.max_abs_diff = exit_parity(module, path, seed=seed)
        report.passed = max(report.max_abs_diff.values()) <= PARITY_MAX_ABS
    return report


def exit_parity(module, path: str | os.PathLike, *, seed: int = 0) -> dict[str, float]:
    """Max |torch − ONNX| on 1, 4 and 10 s speech-like inputs (batch of 2)."""
    import torch

    from wav2small.backends import onnx_session
    from wav2small.signals import pseudo_speech

    rng = np.random.default_rng(seed + 1000)
    sess = onnx_session(path)
    diffs = {}
    for seconds in PARITY_SECONDS:
        x = np.stack([pseudo_speech(seconds, rng=rng) for _ in range(2)])
        with torch.inference_mode():
            ref = module(torch.from_numpy(x)).numpy()
        got = sess.run(None, {ONNX_INPUT: x})[0]
        diffs[f"{seconds:g} s"] = float(np.abs(got - ref).max())
    return diffs


# --- command line -----------------------------------------------------------------------------
def load_config(path: str | os.PathLike) -> dict[str, Any]:
    """Settings from a YAML file (e.g. a run folder's ``config.yaml``).

    Raises:
        ValueError: unreadable YAML, not a mapping, or unknown keys (named).
    """
    import yaml

    try:
        values = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as e:
        raise ValueError(f"{path}: cannot read the YAML config: {e}") from e
    if not isinstance(values, dict):
        raise ValueError(f"{path}: expected a mapping of settings")
    fields = {f.name for f in dataclasses.fields(SelfDistillConfig)}
    unknown = sorted(set(values) - fields)
    if unknown:
        raise ValueError(f"{path}: unknown settings {unknown}")
    return values


def cli_config(args) -> SelfDistillConfig:
    """Defaults ← ``--config`` YAML ← explicit ``wav2small selfdistill`` flags."""
    from wav2small.models.exits import parse_exits

    values = load_config(args.config) if getattr(args, "config", None) else {}
    fields = {f.name for f in dataclasses.fields(SelfDistillConfig)}
    values.update({k: v for k, v in vars(args).items() if k in fields and v is not None})
    values["exits"] = parse_exits(values.get("exits", SelfDistillConfig.exits))
    if getattr(args, "no_progress", False):
        values["progress"] = False
    return SelfDistillConfig(**values)


def selfdistill_cli(args) -> int:
    """``wav2small selfdistill``: train, print where the results are."""
    if getattr(args, "threads", 0):
        import torch

        torch.set_num_threads(args.threads)
    cfg = cli_config(args)
    result = fit_selfdistill(cfg)
    print(f"run folder   {result.run_dir}")
    print(f"steps        {result.start_step} → {result.global_step}")
    print(f"best         {result.best_checkpoint.name}  {MONITOR} {result.best_score:.4f}")
    print(f"weights      {result.weights}")
    return 0


def selfdistill_eval_cli(args) -> int:
    """``wav2small selfdistill-eval``: the per-exit table (printed; CSV with ``--out``)."""
    from wav2small.models.exits import load_exits_model

    model = load_exits_model(args.model)
    table = evaluate_exits(
        model,
        args.data,
        exits=args.exit,
        label_column=args.label_column,
        threads=args.threads,
        repeats=args.repeats,
        latency=not args.no_latency,
        progress=not args.no_progress,
    )
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + ".tmp")
        table.to_csv(tmp, index=False)
        os.replace(tmp, out)
    return 0


def selfdistill_export_cli(args) -> int:
    """``wav2small selfdistill-export``: one exit to ONNX, with the parity gate."""
    from wav2small.models.exits import load_exits_model

    model = load_exits_model(args.model)
    report = export_exit(model, args.out, exit=args.exit, exporter=args.exporter)
    print(report.summary())
    return 0 if report.passed else 1
