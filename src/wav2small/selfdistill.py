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
from wav2small.config import DEFAULT_LABEL_COLUMN, SelfDistillConfig
from wav2small.errors import UserError
from wav2small.export import EXPORTERS, PARITY_MAX_ABS, PARITY_SECONDS, ExportReport  # noqa: F401
from wav2small.inputs import atomic_write
from wav2small.runs import BEST_WEIGHTS, CONFIG_FILE, METRICS_FILE, SUMMARY_FILE, RunResult

logger = logging.getLogger(__name__)

#: The checkpoint-selecting metric: mean over heads of UAR (classes) or mean CCC (A/D/V).
MONITOR = "val/score"
__all__ = [
    "BEST_WEIGHTS",
    "CONFIG_FILE",
    "DEFAULT_LABEL_COLUMN",
    "METRICS_FILE",
    "SUMMARY_FILE",
    "SelfDistillConfig",
]
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


# --- configuration (wav2small.config) ---------------------------------------------------------
def save_config(cfg: SelfDistillConfig, path: str | os.PathLike) -> None:
    """Write the resolved configuration as YAML (atomically)."""
    from wav2small.config import save_config as save

    save(cfg, path)


# --- data loading -----------------------------------------------------------------------------
@dataclass
class RunData:
    """Manifests and targets of one run (``skipped``: ``(file, reason)`` of left-out clips)."""

    train: Any
    val: Any
    train_targets: np.ndarray
    val_targets: np.ndarray | None
    classes: tuple[str, ...]
    skipped: list[tuple[str, str]] = field(default_factory=list)


def drop_short(data: RunData, cfg: SelfDistillConfig, shortest: int) -> RunData:
    """Reject (or with ``on_error: skip`` leave out, listed) clips shorter than ``shortest``."""
    from wav2small.runs import usable_clips

    parts = {}
    for split, table, targets, name in (
        ("train", data.train, data.train_targets, cfg.data),
        ("val", data.val, data.val_targets, cfg.val or cfg.data),
    ):
        if table.empty:
            parts[split] = (table, targets)
            continue
        keep = np.round(table["duration"].to_numpy(np.float64) * SAMPLE_RATE) >= shortest
        _, skipped = usable_clips(table, shortest=shortest, on_error=cfg.on_error, name=name)
        data.skipped += skipped
        parts[split] = (
            table[keep].reset_index(drop=True),
            None if targets is None else targets[keep],
        )
    (data.train, data.train_targets), (data.val, data.val_targets) = parts["train"], parts["val"]
    return data


def prepare_data(cfg: SelfDistillConfig) -> RunData:
    """Read the labelled CSV(s), pick the classes, split off validation clips."""
    from wav2small.data import load_manifest, split_manifest

    table = load_manifest(cfg.data, on_error=cfg.on_error, progress=cfg.progress)
    classes: tuple[str, ...] = ()
    if cfg.task == "classes":
        if cfg.label_column not in table.columns:
            raise ValueError(
                f"{cfg.data}: needs a '{cfg.label_column}' column for task "
                f"'classes'; it has {list(table.columns)}"
            )
        classes = class_names(table[cfg.label_column].dropna())
    if cfg.val:
        train, val = table, load_manifest(cfg.val, on_error=cfg.on_error)
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
    from torch.utils.data import DataLoader

    from wav2small.data import (
        CropDataset,
        UtteranceDataset,
        pad_collate,
        train_collate,
        train_sampler,
    )

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
        sampler=train_sampler(train_set, seed=cfg.seed, batch_size=cfg.batch_size),
        collate_fn=_Targets(
            train_collate(cfg.crop_seconds, cfg.min_crop_seconds), data.train_targets
        ),
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
    from wav2small.runs import mean_score

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
            row["ccc_mean"] = mean_score(values)  # the one NaN policy (wav2small.runs)
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
    import torch

    from wav2small.models.exits import exits_info
    from wav2small.runs import lightning_module, mean_score

    score_key = "uar" if cfg.task == "classes" else "ccc_mean"

    class SelfDistillModule(lightning_module()):
        """Self-distillation training; per-head validation."""

        def __init__(self) -> None:
            super().__init__(cfg)
            self.model = model
            self._val: dict[str, list] = {}
            self._val_index: list = []
            self.val_targets: np.ndarray | None = None

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
            self.checked(terms["total"], batch)
            size = len(batch["wave"])
            for key, value in terms.items():
                self.log(f"train/{key}", value, prog_bar=key == "total", batch_size=size)
            return terms["total"]

        def validation_step(self, batch: dict, batch_idx: int) -> None:
            for head, pred in _all_heads(self.model, batch["wave"], batch["lengths"]).items():
                pred = self.check_outputs(pred.float(), batch, f"validation, head {head}")
                self._val.setdefault(head, []).append(pred.cpu())
            self._val_index.append(batch["index"].cpu())

        def on_validation_epoch_end(self) -> None:
            if not self._val_index:
                return
            index = torch.cat(self._val_index).numpy()
            outputs = {h: torch.cat(v).numpy() for h, v in self._val.items()}
            self._val, self._val_index = {}, []
            scores = head_scores(outputs, self.val_targets[index], task=cfg.task)
            row = {f"val/{score_key}_{h}": s[score_key] for h, s in scores.items()}
            # the one NaN policy: undefined heads are left out; none defined → NaN, never 0
            row[MONITOR] = mean_score([s[score_key] for h, s in scores.items() if h != "fusion"])
            for key, value in row.items():
                self.log(key, value, prog_bar=key == MONITOR)
            self.history.append({"step": int(self.global_step), **row})

        def optimizer(self):
            return torch.optim.Adam(
                self.model.parameters(), lr=cfg.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0
            )

        def on_save_checkpoint(self, checkpoint: dict) -> None:
            checkpoint["wav2small"] = exits_info(self.model)
            checkpoint["wav2small_config"] = json.dumps(cfg.to_dict())

    return SelfDistillModule()


#: What :func:`fit_selfdistill` returns (the shared :class:`wav2small.runs.RunResult`).
SelfDistillResult = RunResult


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
        UserError: invalid configuration or data (a ``ValueError``).
        NonFiniteError: a non-finite label, loss or weight (the run stops).
        FileNotFoundError: missing data or resume checkpoint.
    """
    import lightning.pytorch as pl

    from wav2small.models.exits import load_exits_model, save_exits_model
    from wav2small.runs import min_samples, open_run, run_lightning, write_skipped

    cfg.validate()
    started = time.time()
    run_dir, ckpt_path = open_run(cfg)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    data = prepare_data(cfg)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    model = build_model(cfg, data.classes)
    data = drop_short(data, cfg, min_samples(model))
    write_skipped(run_dir, data.skipped)
    module = build_module(model, cfg)
    module.attach(data)
    train_loader, val_loader = _loaders(cfg, data)
    logger.info(
        "selfdistill %s, exits %s, task %s: %d training clips, %d validation clips",
        cfg.backbone,
        list(model.exits) or "none (plain fine-tuning)",
        cfg.task,
        len(data.train),
        len(data.val),
    )

    def save_best(best: Path, score: float) -> None:
        from wav2small.models import check_finite_state

        best_model = load_exits_model(best)
        check_finite_state(best_model.state_dict(), str(best))
        save_exits_model(best_model, run_dir / BEST_WEIGHTS)

    steps = cfg.max_steps if cfg.max_steps > 0 else cfg.epochs * len(train_loader)
    return run_lightning(
        cfg,
        module,
        train_loader,
        val_loader,
        run_dir=run_dir,
        ckpt_path=ckpt_path,
        monitor=MONITOR,
        max_steps=steps,
        save_best=save_best,
        summary={
            "backbone": cfg.backbone,
            "task": cfg.task,
            "exits": list(cfg.exits),
            "skipped": len(data.skipped),
        },
        score_key="best_val_score",
        started=started,
    )


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


def exit_outputs(
    model,
    paths: Sequence[str | os.PathLike],
    exits: Sequence,
    *,
    threads: int | None = None,
    progress: bool = False,
) -> dict[str, np.ndarray]:
    """Each exit's outputs for whole files, through the one inference path.

    Every exit runs as its own model (:meth:`EarlyExitModel.at_exit`: the backbone truncated
    after it) through :func:`wav2small.evaluate.predict` — a
    :class:`~wav2small.infer.Predictor` over a :class:`~wav2small.backends.TorchBackend`, joined
    by file — so a clip is scored exactly as ``predict`` and ``evaluate`` run a model (files
    longer than 20 s as the length-weighted mean over equal pieces, NaN/Inf refused naming the
    file).

    Returns:
        exit name → (n, outputs) float64 in ``paths`` order (class logits or A/D/V).
    """
    from wav2small.evaluate import predict

    model = model.eval()
    return {
        str(e): predict(
            model.at_exit(e), paths, threads=threads, progress=progress, name=f"exit {e}"
        )
        for e in exits
    }


def evaluate_exits(
    model,
    data: str | os.PathLike,
    *,
    exits: Sequence[str] | None = None,
    label_column: str = DEFAULT_LABEL_COLUMN,
    threads: int | None = None,
    repeats: int = 10,
    latency: bool = True,
    progress: bool = True,
):
    """Per exit: UAR (classes) or CCC (A/D/V) on whole clips, ms per 5 s, parameters used.

    Scores come from :func:`exit_outputs` (each exit run through the Predictor, as ``evaluate``
    runs a model); latency runs the truncated backbone on one 5 s clip with ``threads``
    threads.

    Args:
        model: an :class:`~wav2small.models.exits.EarlyExitModel`.
        data: labelled CSV (paths relative to it, :func:`wav2small.inputs.read_manifest`).
        exits: exit names (``"3"``, ``"deepest"``, ``"fusion"``) or None/``["all"]`` for all.
        label_column: class column (task classes).
        threads: torch threads for scoring and for the latency figure (``None``: torch's own
            for scoring, 1 for the latency figure).
        repeats: timed runs per exit (median reported).
        latency: also measure latency.
        progress: progress bar.

    Returns:
        DataFrame, one row per exit: ``exit``, ``layers``, ``params``, ``ms_per_5s`` and the
        scores (``uar``, ``accuracy``; or ``ccc_arousal``, ``ccc_dominance``, ``ccc_valence``,
        ``ccc_mean``); ``n`` clips.
    """
    import pandas as pd

    from wav2small.data import load_manifest

    names = exit_names(model, exits)
    table = load_manifest(data)
    target = targets_of(
        table,
        task=model.config.task,
        classes=model.config.classes,
        label_column=label_column,
        name=str(data),
    )
    outputs = exit_outputs(model, table["path"].tolist(), names, threads=threads, progress=progress)
    scores = head_scores(outputs, target, task=model.config.task)
    ms = exit_latencies_ms(model, names, threads=threads or 1, repeats=repeats) if latency else {}
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
class ExitExportReport(ExportReport):
    """What :func:`export_exit` wrote and measured: an :class:`wav2small.export.ExportReport`
    (the fp32 file and its parity gate) plus the exit and the exporter used."""

    exit: str = ""
    exporter: str = ""

    @property
    def path(self) -> str:
        """The ONNX file (``<name>.rejected`` when it failed its gate)."""
        return self.fp32_path

    @property
    def bytes(self) -> int:
        """Its size in bytes."""
        return self.fp32_bytes

    def summary(self) -> str:
        """Human-readable lines for the CLI."""
        return super().summary() + f"\n(exit {self.exit}, {self.exporter} exporter)"


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

    Written by :func:`wav2small.export.export_onnx` and gated by
    :func:`wav2small.export.parity_gate` (max |torch − ONNX| on 1, 4, 10 s inputs ≤ 1e-4,
    relative above 1), exactly as ``wav2small export`` does for students: a file that fails
    its gate is renamed ``<name>.rejected``. The output is ``logits`` (classes; names in the
    ``labels`` metadata) or ``adv``. Exporter: torch's dynamo exporter cannot decompose
    ``aten.gru`` when the time axis is derived from the input length (torch 2.14: "size of
    tensor a (H) must match b (3H)"), so exits and ``fusion`` need the TorchScript exporter
    (native ONNX GRU). ``auto`` uses it for every exit: it also exports ``deepest`` in about a
    second where dynamo takes about a minute for a tiny model on a busy 2-core machine;
    ``exporter="dynamo"`` remains available for ``deepest``.

    Args:
        model: an early-exit model.
        path: output ``.onnx`` (written atomically).
        exit: layer number, ``"deepest"`` or ``"fusion"``.
        exporter: ``auto``, ``dynamo`` or ``torchscript``.
        check: run the parity gate.
        seed: seed of the parity inputs.
    """
    from wav2small.export import export_onnx, parity_gate, reject_failed
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
    facts = {
        **exits_info(model),
        "exit": str(exit),
        "layers": str(model.depth(exit)),
        "output": output,
        "exporter": exporter,
    }
    export_onnx(
        module,
        path,
        metadata=facts,
        exporter=exporter,
        output=output,
        min_samples=model.min_samples,
    )
    report = ExitExportReport(str(path), path.stat().st_size, exit=str(exit), exporter=exporter)
    if check:
        reject_failed(report, parity_ok=parity_gate(module, path, report, seed=seed))
    return report


# --- command line -----------------------------------------------------------------------------
def load_config(path: str | os.PathLike) -> dict[str, Any]:
    """Settings from a YAML file (e.g. a run folder's ``config.yaml``).

    Raises:
        UserError: unreadable YAML, not a mapping, or unknown keys (named).
    """
    from wav2small.config import fields, load_yaml

    values = load_yaml(path)
    unknown = sorted(set(values) - set(fields(SelfDistillConfig)))
    if unknown:
        raise UserError(f"{path}: unknown settings {unknown}")
    return values


def cli_config(args) -> SelfDistillConfig:
    """Defaults ← ``--config`` YAML ← explicit ``wav2small selfdistill`` flags ← ``--set``."""
    from wav2small.config import from_cli

    if getattr(args, "config", None):
        load_config(args.config)  # names unknown settings with the file
    return from_cli(SelfDistillConfig, args)


def selfdistill_cli(args) -> int:
    """``wav2small selfdistill``: train, print where the results are."""
    from wav2small.runs import format_score, run_lock

    cfg = cli_config(args)
    with run_lock(cfg.out):
        result = fit_selfdistill(cfg)
    print(f"run folder   {result.run_dir}")
    print(f"steps        {result.start_step} → {result.global_step}")
    print(
        f"best         {result.best_checkpoint.name}  {MONITOR} {format_score(result.best_score)}"
    )
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
        progress=args.progress,
    )
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    if args.out:
        with atomic_write(args.out) as tmp:
            table.to_csv(tmp, index=False)
    return 0


def is_early_exit_checkpoint(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a saved early-exit model (``wav2small selfdistill``'s weights)."""
    from wav2small.models import read_checkpoint
    from wav2small.models.exits import PRESET

    if not Path(path).is_file() or Path(path).suffix not in (".safetensors", ".ckpt"):
        return False
    try:
        return read_checkpoint(path)[0].get("preset") == PRESET
    except ValueError:
        return False


def selfdistill_export_cli(args) -> int:
    """``wav2small export EARLY_EXIT_MODEL --exit K --out OUT`` (alias: ``selfdistill-export``).

    One exit to fp32 ONNX through export's writer and parity gate (:func:`export_exit`). ``OUT``
    is the output folder (``OUT/model.onnx`` and ``OUT/export_report.json``, as for students), or
    the ``.onnx`` file itself when it ends in ``.onnx``. int8 is not offered for early exits.
    """
    import json
    from dataclasses import asdict

    from wav2small.inputs import write_text
    from wav2small.models.exits import DEEPEST, load_exits_model

    if getattr(args, "int8", False):
        raise UserError(f"{args.model}: --int8 is not available for early-exit models (fp32 only)")
    if getattr(args, "backbone", False):
        if getattr(args, "test", None) or args.exit is not None:
            raise UserError(
                f"{args.model}: --backbone writes the whole backbone (no --exit/--test)"
            )
        folder = save_finetuned_backbone(args.model, args.out)
        print(f"{folder}: the fine-tuned backbone in the Hugging Face layout (--backbone {folder})")
        return 0
    model = load_exits_model(args.model)
    out = Path(args.out)
    folder = out.suffix.lower() != ".onnx"
    report = export_exit(
        model,
        out / "model.onnx" if folder else out,
        exit=args.exit or DEEPEST,
        exporter=args.exporter,
        seed=getattr(args, "seed", 0),
    )
    if folder:
        write_text(out / "export_report.json", json.dumps(asdict(report), indent=2))
        card = write_exit_card(model, report, weights=args.model, test=getattr(args, "test", None))
        print(f"model card: {card}")
    elif getattr(args, "test", None):
        raise UserError(f"{out}: --test writes a model card, which needs a folder --out")
    print(report.summary())
    return 0 if report.passed else 1


def save_finetuned_backbone(weights: str | os.PathLike, folder: str | os.PathLike) -> Path:
    """The backbone of a fine-tuned early-exit model, in the Hugging Face layout.

    Supervised pretraining: fine-tune a backbone on labels (``wav2small selfdistill --exits
    none``), then hand its backbone to another run as ``--backbone FOLDER``, exactly like a hub
    backbone. The heads are dropped. ``pretrain.json`` records where the weights came from and,
    when it sits beside them, the run's ``config.yaml`` (``wav2small export MODEL --backbone``).

    Args:
        weights: ``best.safetensors``/``last.ckpt`` of a ``wav2small selfdistill`` run.
        folder: output folder (``config.json``, ``model.safetensors``,
            ``preprocessor_config.json``, ``pretrain.json``), replaced as a whole.

    Returns:
        The folder.

    Raises:
        ExitsError: not an early-exit model, or its weights do not fit.
    """
    from wav2small.models.exits import load_exits_model
    from wav2small.pretrain import save_backbone

    model = load_exits_model(weights)
    run_config = Path(weights).with_name("config.yaml")
    recipe = {
        "recipe": "supervised: the backbone of a fine-tuned early-exit model "
        "(wav2small export MODEL --backbone)",
        "weights": str(weights),
        "task": model.config.task,
        "labels": list(model.config.labels),
        "exits": list(model.exits),
        "run_config": load_config(run_config) if run_config.is_file() else None,
        "parameters": sum(p.numel() for p in model.backbone.parameters()),
    }
    return save_backbone(model.backbone, folder, recipe=recipe)


def write_exit_card(
    model,
    report: ExitExportReport,
    *,
    weights: str | os.PathLike | None = None,
    test: str | os.PathLike | None = None,
    repeats: int = 20,
) -> Path:
    """Measure an exported exit and write ``MODEL_CARD.md`` next to its ONNX file.

    The card (:func:`wav2small.card.exit_model_card`) states the ONNX Runtime milliseconds per
    5 s clip (one thread, median of ``repeats``, measured on the written file when it passed its
    gate) and, with ``test`` (a labelled CSV), the exit's scores from :func:`evaluate_exits`.

    Args:
        model: the exported early-exit model.
        report: :func:`export_exit`'s report.
        weights: the checkpoint, for the training facts of its run folder.
        test: labelled CSV to score the exit on.
        repeats: timed runs.

    Returns:
        The card's path.
    """
    from wav2small.bench import onnx_ms_per_clip
    from wav2small.card import exit_model_card, run_facts, write_model_card

    ms = (
        onnx_ms_per_clip(report.path, seconds=LATENCY_SECONDS, threads=1, repeats=repeats)
        if report.passed
        else None
    )
    scores = None
    if test:
        row = evaluate_exits(model, test, exits=[report.exit], latency=False, progress=False)
        scores = row.iloc[0].to_dict()
    facts = run_facts(weights) if weights else None
    text = exit_model_card(
        model=model, report=report, ms_per_5s=ms, scores=scores, test=str(test), facts=facts
    )
    return write_model_card(Path(report.path).parent, text)
