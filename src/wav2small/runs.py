"""The run folder and the training scaffold shared by ``distill``/``train``, ``train-teacher`` and
``selfdistill``; each trainer keeps only its model and its loss.

* **Run folder** (:func:`open_run`): the resolved ``config.yaml`` is written next to the
  outputs; a resumed run (``resume``) refuses a configuration that differs from the saved one in
  anything but :attr:`~wav2small.config.RunConfig.RESUME_FREE` (more steps, other workers, ...).
  ``summary.json`` (:func:`write_summary`), ``metrics.csv`` merged over sessions
  (:func:`merge_metrics`) and ``skipped.csv`` (:func:`write_skipped`) complete it.
* **Split** (:func:`split_indices`): one seeded hold-out rule for every trainer.
* **Schedule** (:func:`lr_factor`): linear warm-up then cosine decay (or constant). The warm-up
  is a fraction of the run when below 1, else a number of steps; either way at most a tenth of
  the run (:func:`warmup_length`), so a 100-step run is not all warm-up.
* **Validation score** (:func:`mean_score`): the one NaN policy. A dimension (or head) whose
  CCC is undefined (fewer than two clips, or both sides constant) is left out of the mean; when
  none is defined the score is NaN — never 0 — and is printed as ``undefined``; a NaN score
  never becomes the best checkpoint. Non-finite *predictions* are an error, not a score.
* **Finite numbers** (issue 16): :func:`check_wave`, :func:`check_targets`, :func:`check_loss`
  raise :class:`~wav2small.errors.NonFiniteError` naming the file, the row or the step;
  :func:`usable_clips` drops (``on_error: skip``) or rejects clips too short for the model.
* **Lightning glue** (:func:`lightning_module`, :func:`run_lightning`): the trainer, checkpoints
  (``best.ckpt``, ``last.ckpt``), loggers, resume, the step limit, train mode, the per-step loss
  check; used by ``distill``/``train`` and ``selfdistill``.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import shutil
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from wav2small import SAMPLE_RATE
from wav2small.audio import MAX_ABS_SAMPLE
from wav2small.errors import NonFiniteError, UserError
from wav2small.inputs import atomic_write

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.yaml"
SUMMARY_FILE = "summary.json"
METRICS_FILE = "metrics.csv"
SKIPPED_FILE = "skipped.csv"
BEST_WEIGHTS = "best.safetensors"
LAST_CHECKPOINT = "last.ckpt"
BEST_CHECKPOINT = "best.ckpt"
#: Largest warm-up as a share of the run.
MAX_WARMUP_SHARE = 0.1
#: Lightning warnings that say nothing about a wav2small run.
_HARMLESS_WARNINGS = (
    r"Checkpoint directory .* exists and is not empty",
    r"You defined a `validation_step` but have no `val_dataloader`",
    r"The number of training batches .* is smaller than the logging interval",
    r".*isinstance\(treespec, LeafSpec\)",
)


# --- files ------------------------------------------------------------------------------------
def write_atomic(path: str | os.PathLike, text: str) -> None:
    """Write text through a unique temporary file in the same folder, then rename."""
    from wav2small.inputs import write_text

    write_text(path, text)


def write_json(path: str | os.PathLike, data: dict) -> None:
    """JSON (NaN allowed, written as NaN) through :func:`write_atomic`."""
    write_atomic(path, json.dumps(data, indent=2, allow_nan=True, default=str) + "\n")


def resume_path(resume: Any, run_dir: Path, name: str = LAST_CHECKPOINT) -> Path | None:
    """The checkpoint to resume from: ``last`` (the run folder's ``name``), a path, ``True``
    (the run folder's ``name`` if it exists, else a fresh start), or ``None`` when not resuming.

    Raises:
        FileNotFoundError: the checkpoint does not exist.
    """
    if not resume:
        return None
    path = run_dir / name if resume is True or resume == "last" else Path(resume)
    if resume is True and not path.exists():  # "continue if there is something to continue"
        return None
    if not path.exists():
        raise FileNotFoundError(f"{path}: no checkpoint to resume from")
    return path


def check_resumed_config(cfg: Any, run_dir: Path) -> None:
    """Refuse to resume ``run_dir`` with settings other than the ones it started with.

    Raises:
        UserError: the saved ``config.yaml`` differs (the settings are named).
    """
    from wav2small.config import load_yaml

    saved_path = run_dir / CONFIG_FILE
    if not saved_path.is_file():
        return
    saved = load_yaml(saved_path)
    now = cfg.to_dict()
    free = type(cfg).RESUME_FREE
    changed = [k for k in now if k not in free and k in saved and saved[k] != now[k]]
    if changed:
        diffs = ", ".join(f"{k}: {saved[k]!r} → {now[k]!r}" for k in changed)
        raise UserError(
            f"{saved_path}: the run was started with other settings ({diffs}); resume it "
            "with its own settings or start a new run in another folder"
        )


def run_lock(out: str | os.PathLike) -> Any:
    """Hold :func:`wav2small.inputs.output_lock` on a run folder for the whole run, so a second
    trainer writing the same ``--out`` fails at once (issue 16). DDP worker ranks started by
    Lightning (``LOCAL_RANK``/``RANK`` ≠ 0) take no lock: their rank-0 process holds it.
    """
    from contextlib import nullcontext

    from wav2small.inputs import output_lock

    if os.environ.get("LOCAL_RANK", "0") != "0" or os.environ.get("RANK", "0") != "0":
        return nullcontext()
    return output_lock(out)


def open_run(cfg: Any, *, checkpoint: str = LAST_CHECKPOINT) -> tuple[Path, Path | None]:
    """Create the run folder, find the resume checkpoint, check and write ``config.yaml``, and
    set the run's torch threads (``threads``: ``None``/0 leaves torch's default).

    Returns:
        ``(run_dir, resume checkpoint or None)``.

    Raises:
        FileNotFoundError: ``resume`` names a missing checkpoint.
        UserError: a resumed run whose settings changed.
    """
    from wav2small.config import save_config

    if getattr(cfg, "threads", None):
        import torch

        torch.set_num_threads(cfg.threads)
    run_dir = Path(cfg.out)
    run_dir.mkdir(parents=True, exist_ok=True)
    ckpt = resume_path(cfg.resume, run_dir, checkpoint)
    if ckpt is not None:
        check_resumed_config(cfg, run_dir)
    elif (run_dir / checkpoint).exists():
        logger.warning(
            "%s holds an earlier run; starting afresh and overwriting it "
            "(use --resume to continue it)",
            run_dir,
        )
    save_config(cfg, run_dir / CONFIG_FILE)
    return run_dir, ckpt


def merge_metrics(run_dir: Path) -> None:
    """Concatenate the per-session CSV logs (``logs/version_*``) into ``metrics.csv``; a resumed
    session's rows replace the earlier sessions' rows from the resumed step on."""
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
        write_atomic(
            run_dir / METRICS_FILE, pd.concat(frames, ignore_index=True).to_csv(index=False)
        )


def write_summary(run_dir: Path, summary: dict[str, Any]) -> None:
    """``summary.json`` of a run."""
    write_json(run_dir / SUMMARY_FILE, summary)


def write_skipped(run_dir: Path, skipped: Sequence[tuple[str, str]]) -> None:
    """``skipped.csv`` (file, reason) of the clips a run left out; nothing when none was."""
    import pandas as pd

    path = run_dir / SKIPPED_FILE
    if skipped:
        table = pd.DataFrame(list(skipped), columns=["file", "reason"])
        write_atomic(path, table.to_csv(index=False))
        logger.warning(
            "skipped %d bad training file(s), listed in %s; e.g. %s",
            len(skipped),
            path,
            skipped[0][1],
        )
    else:
        path.unlink(missing_ok=True)


# --- split, schedule, score -------------------------------------------------------------------
def split_indices(n: int, fraction: float, *, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded hold-out: ``(train, val)`` sorted row indices; ``val`` empty when fraction is 0.

    Raises:
        UserError: fraction outside [0, 1), or nothing left to train on.
    """
    if not 0 <= fraction < 1:
        raise UserError(f"validation fraction must be in [0, 1), got {fraction}")
    n_val = int(round(fraction * n))
    n_val = max(n_val, 1) if fraction > 0 else 0
    if n_val >= n:
        raise UserError(f"cannot hold out {n_val} of {n} clips for validation")
    order = np.random.default_rng([seed, 7]).permutation(n)
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def warmup_length(warmup: float, total: int) -> int:
    """Warm-up steps: ``warmup`` × total when below 1, else ``warmup`` steps; at most
    :data:`MAX_WARMUP_SHARE` of the run."""
    steps = warmup * total if warmup < 1 else warmup
    cap = int(MAX_WARMUP_SHARE * total)
    if steps > cap:
        logger.info(
            "warm-up of %g steps capped to %d (a tenth of the %d-step run)", steps, cap, total
        )
    return int(round(min(steps, cap)))


def lr_factor(step: int, *, warmup: int, total: int, schedule: str = "cosine") -> float:
    """Learning-rate factor at ``step``: linear warm-up over ``warmup`` steps, then cosine decay
    to 0 at ``total`` (``schedule="cosine"``) or constant."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.5 * (1 + math.cos(math.pi * progress))


def lr_lambda(warmup: float, total: int, schedule: str = "cosine") -> Callable[[int], float]:
    """:func:`lr_factor` as a function of the step (for ``torch.optim.lr_scheduler.LambdaLR``)."""
    return functools.partial(
        lr_factor, warmup=warmup_length(warmup, total), total=total, schedule=schedule
    )


def mean_score(values: Sequence[float] | np.ndarray) -> float:
    """Mean of the defined (finite) scores; NaN when none is defined — never 0."""
    values = np.asarray(values, dtype=np.float64)
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else math.nan


def format_score(value: float) -> str:
    """``0.1234``, or ``undefined`` for NaN (too few or constant validation clips)."""
    return f"{value:.4f}" if math.isfinite(value) else "undefined (NaN: no defined CCC)"


# --- finite inputs and losses -----------------------------------------------------------------
def check_wave(wave: np.ndarray, name: str) -> np.ndarray:
    """Raise unless every sample is finite and within ±:data:`MAX_ABS_SAMPLE`; return ``wave``.

    Raises:
        NonFiniteError: names the file and the problem.
    """
    if not np.isfinite(wave).all():
        raise NonFiniteError(f"{name}: contains NaN or Inf samples")
    peak = float(np.abs(wave).max()) if wave.size else 0.0
    if peak > MAX_ABS_SAMPLE:
        raise NonFiniteError(
            f"{name}: samples up to {peak:.3g} (full scale is 1; more than "
            f"{MAX_ABS_SAMPLE:g} is not audio)"
        )
    return wave


def check_targets(targets: np.ndarray, files: Sequence[str], name: str) -> np.ndarray:
    """Raise unless every target row is finite; return ``targets``.

    Raises:
        NonFiniteError: ``name: row i (file) has a non-finite label``.
    """
    targets = np.asarray(targets)
    if targets.dtype.kind == "f":
        bad = ~np.isfinite(targets.reshape(len(targets), -1)).all(1)
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise NonFiniteError(
                f"{name}: row {row} ({files[row]}) has a non-finite label "
                f"{targets[row].tolist()} ({int(bad.sum())} such rows)"
            )
    return targets


def check_loss(loss: Any, *, step: int, files: Sequence[str] = (), lr: float | None = None) -> None:
    """Stop the run at a non-finite loss.

    Raises:
        NonFiniteError: names the step, the batch's first files and the learning rate.
    """
    value = float(loss.detach()) if hasattr(loss, "detach") else float(loss)
    if math.isfinite(value):
        return
    batch = f" (batch: {', '.join(files[:4])}{', ...' if len(files) > 4 else ''})" if files else ""
    hint = (
        f"; the run diverged or an input is bad: try a lower learning rate than {lr:g}"
        if lr
        else ""
    )
    raise NonFiniteError(f"training loss is {value} at step {step}{batch}{hint}")


def min_samples(model: Any) -> int:
    """Shortest clip (samples) ``model`` gives a defined output for (at least one frame)."""
    from wav2small.frontend import N_FFT

    return int(getattr(model, "min_samples", 0) or N_FFT)


def usable_clips(
    manifest: Any, *, shortest: int, on_error: str, name: str
) -> tuple[Any, list[tuple[str, str]]]:
    """Drop (``on_error="skip"``) or reject clips shorter than ``shortest`` samples.

    Returns:
        ``(manifest of the usable clips, [(file, reason), ...] of the skipped ones)``.

    Raises:
        UserError: a too-short clip with ``on_error="raise"``, or no clip left.
    """
    samples = np.round(manifest["duration"].to_numpy(dtype=np.float64) * SAMPLE_RATE)
    short = samples < shortest
    skipped = [
        (str(f), f"{f}: {int(n)} samples, shorter than the model's shortest input ({shortest})")
        for f, n in zip(manifest["file"][short], samples[short], strict=True)
    ]
    if skipped and on_error == "raise":
        raise UserError(
            f"{name}: {skipped[0][1]}; remove it or skip it (--on-error skip) "
            f"({len(skipped)} such clips)"
        )
    kept = manifest[~short].reset_index(drop=True)
    if kept.empty:
        raise UserError(f"{name}: no usable clips left after skipping bad ones")
    return kept, skipped


# --- Lightning --------------------------------------------------------------------------------
@dataclass
class RunResult:
    """What a Lightning run (:func:`run_lightning`) produced.

    Attributes:
        run_dir: the run folder.
        best_checkpoint: Lightning checkpoint of the best validation score (or the last one).
        last_checkpoint: checkpoint at the final step.
        weights: ``best.safetensors``.
        global_step: optimiser steps done in total.
        start_step: the step this session started from (0, or the resumed step).
        best_score: best validation score (NaN without validation or without a defined score).
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


@functools.cache
def lightning_module() -> type:
    """The LightningModule base of the Lightning trainers (imports Lightning on first call).

    Subclasses set ``self.model`` and define ``training_step`` (calling :meth:`checked` on the
    loss), ``optimizer()`` and the validation hooks. The base keeps ``cfg``, ``history``,
    ``start_step``, the training ``sampler`` (exact resume) and ``train_paths`` (file names in
    errors); stops at ``max_steps`` (so Lightning validates at the final step); and schedules the
    learning rate with :func:`lr_lambda`.
    """
    import lightning.pytorch as pl

    class RunModule(pl.LightningModule):
        def __init__(self, cfg: Any) -> None:
            super().__init__()
            self.cfg = cfg
            self.history: list[dict[str, float]] = []
            self.start_step: int | None = None
            self.sampler = None
            self.train_paths: list[str] = []
            self.val_paths: list[str] = []

        def attach(self, data: Any) -> None:
            """Take a run's data (``train``/``val`` manifests, ``val_targets``): validation
            targets, and the file names that error messages quote."""
            self.val_targets = data.val_targets
            self.train_paths = data.train["file"].tolist()
            self.val_paths = data.val["file"].tolist()

        def on_train_start(self) -> None:
            self.start_step = int(self.global_step)

        def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
            if self.global_step >= self.trainer.max_steps:
                self.trainer.should_stop = True  # makes Lightning validate at the final step

        def on_load_checkpoint(self, checkpoint: dict) -> None:
            # set here too: resuming a finished run starts no training (no on_train_start)
            self.start_step = int(checkpoint["global_step"])
            if self.sampler is not None:  # exact resume: the data continue at the saved step
                per_epoch = max(1, len(self.sampler) // self.cfg.batch_size)
                epoch, done = divmod(int(checkpoint["global_step"]), per_epoch)
                self.sampler.resume_at(epoch, done * self.cfg.batch_size)

        def batch_files(self, batch: dict, paths: Sequence[str] | None = None) -> list[str]:
            paths = self.train_paths if paths is None else paths
            if not paths or "index" not in batch:
                return []
            return [str(paths[i]) for i in batch["index"].tolist()]

        def checked(self, loss, batch: dict):
            """``loss``, after checking it is finite (else :class:`NonFiniteError`)."""
            check_loss(
                loss, step=int(self.global_step), files=self.batch_files(batch), lr=self.cfg.lr
            )
            return loss

        def check_outputs(self, pred, batch: dict, what: str = "validation"):
            """Raise when a model output is not finite, naming the clip."""
            import torch

            bad = ~torch.isfinite(pred.reshape(len(pred), -1)).all(1)
            if bool(bad.any()):
                files = self.batch_files(batch, self.val_paths) or ["?"]
                row = int(bad.nonzero()[0, 0])
                raise NonFiniteError(
                    f"{what}: the model's output is not finite for "
                    f"{files[min(row, len(files) - 1)]} at step {int(self.global_step)}; "
                    f"the weights diverged (try a lower learning rate than {self.cfg.lr:g}) "
                    "or the clip is bad"
                )
            return pred

        def optimizer(self):
            raise NotImplementedError

        def configure_optimizers(self):
            import torch

            opt = self.optimizer()
            factor = lr_lambda(
                self.cfg.warmup_steps,
                int(self.trainer.max_steps),
                getattr(self.cfg, "scheduler", "constant"),
            )
            sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
            return {
                "optimizer": opt,
                "lr_scheduler": {"scheduler": sched, "interval": "step", "frequency": 1},
            }

    return RunModule


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


def make_trainer(
    cfg: Any, run_dir: Path, *, monitor: str, max_steps: int, with_val: bool, steps_per_epoch: int
):
    """The Lightning ``Trainer`` and its ``ModelCheckpoint`` for a run.

    With validation, ``best.ckpt`` holds the best ``monitor`` value (saved after each
    validation); without, only ``last.ckpt`` is kept (and copied to ``best.ckpt`` at the end).
    """
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint

    checkpoint = ModelCheckpoint(
        dirpath=str(run_dir),
        filename="best",
        monitor=monitor if with_val else None,
        mode="max",
        save_top_k=1 if with_val else 0,
        save_last=True,
        auto_insert_metric_name=False,
        enable_version_counter=False,
        save_on_train_epoch_end=False if with_val else None,
    )
    val_args: dict[str, Any] = {"limit_val_batches": 1.0 if with_val else 0}
    if with_val and cfg.val_every:
        val_args.update(
            val_check_interval=min(cfg.val_every, max(1, steps_per_epoch)),
            check_val_every_n_epoch=None,
        )
    trainer = pl.Trainer(
        default_root_dir=str(run_dir),
        max_steps=max_steps,
        max_epochs=-1,  # steps decide (resume)
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


def run_lightning(
    cfg: Any,
    module: Any,
    train_loader: Any,
    val_loader: Any,
    *,
    run_dir: Path,
    ckpt_path: Path | None,
    monitor: str,
    max_steps: int,
    save_best: Callable[[Path, float], None],
    summary: dict[str, Any],
    score_key: str = "best_score",
    started: float | None = None,
) -> RunResult:
    """Fit ``module`` and complete the run folder (``last.ckpt``, ``best.ckpt``,
    ``best.safetensors`` via ``save_best(best_checkpoint, best_score)``, ``metrics.csv``,
    ``summary.json`` = ``summary`` + the result).

    Raises:
        UserError: fewer clips per process than one batch.
        NonFiniteError: a non-finite loss or output stopped the run.
    """
    started = time.time() if started is None else started
    trainer, checkpoint = make_trainer(
        cfg,
        run_dir,
        monitor=monitor,
        max_steps=max_steps,
        with_val=val_loader is not None,
        steps_per_epoch=len(train_loader),
    )
    sampler = train_loader.sampler  # each DDP rank takes its share of every epoch
    if hasattr(sampler, "rank"):
        sampler.rank, sampler.world_size = trainer.global_rank, trainer.world_size
    module.sampler = sampler
    if len(sampler) < cfg.batch_size:
        raise UserError(
            f"{len(train_loader.dataset)} training clips over {trainer.world_size} processes "
            f"leave {len(sampler)} per process, fewer than one batch ({cfg.batch_size}); "
            "lower batch_size"
        )
    module.train()  # pretrained backbones come in eval mode: train dropout/LayerDrop too
    with warnings.catch_warnings():
        for pattern in _HARMLESS_WARNINGS:
            warnings.filterwarnings("ignore", message=pattern)
        # weights_only: a resumed checkpoint is read with torch.load(weights_only=True)
        trainer.fit(
            module,
            train_loader,
            val_loader,
            ckpt_path=None if ckpt_path is None else str(ckpt_path),
            weights_only=True,
        )
    last = run_dir / LAST_CHECKPOINT
    # the final step whatever the validation schedule (full state, so it can be resumed)
    trainer.save_checkpoint(str(last), weights_only=False)
    result = RunResult(
        run_dir,
        run_dir / BEST_CHECKPOINT,
        last,
        run_dir / BEST_WEIGHTS,
        int(trainer.global_step),
        int(module.start_step or 0),
        math.nan,
        module.history,
    )
    if not trainer.is_global_zero:  # DDP: rank 0 writes the run's files
        return result
    if val_loader is None or not checkpoint.best_model_path:
        with atomic_write(result.best_checkpoint) as tmp:
            shutil.copyfile(last, tmp)
    else:
        result.best_checkpoint = Path(checkpoint.best_model_path)
    score = checkpoint.best_model_score  # Lightning stores a NaN score as -inf: both undefined
    score = math.nan if score is None else float(score)
    result.best_score = score if math.isfinite(score) else math.nan
    save_best(result.best_checkpoint, result.best_score)
    merge_metrics(run_dir)
    write_summary(
        run_dir,
        {
            **summary,
            "global_step": result.global_step,
            "start_step": result.start_step,
            score_key: result.best_score,
            "best_checkpoint": result.best_checkpoint.name,
            "weights": result.weights.name,
            "seconds": round(time.time() - started, 1),
            "history": result.history,
        },
    )
    return result
