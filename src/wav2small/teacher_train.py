"""``wav2small train-teacher``: train a teacher on labelled audio with the CCC loss.

By default it trains the synthetic-world teacher (:class:`~wav2small.teachers.SynthTeacher`)
from scratch; ``init`` fine-tunes any loadable teacher instead (Dawn, Odyssey, a folder, …).

* Data: a CSV with ``file`` (relative paths are taken from the CSV's folder) and ``arousal``,
  ``dominance``, ``valence`` columns. Validation: ``val`` (another CSV) or a seeded hold-out of
  ``val_fraction`` of the data.
* SynthTeacher runs on log-mels computed once per clip (the front end is fixed); training
  augments them exactly as the waveform would be: random crops (aligned to the hop) and random
  gain (a dB offset). Other teachers train on waveform crops.
* Loss ``Σ_d (1 − CCC_d)`` over the batch (+ optional MSE), AdamW, cosine learning rate.
  Validation CCC per dimension on full clips after every epoch, written to ``metrics.csv``.
* The best epoch (mean validation CCC) is saved to ``out`` in the Hugging Face layout
  :func:`~wav2small.teachers.load_teacher` reads. ``out/checkpoint/`` holds the last epoch
  (weights as safetensors; optimizer, scheduler and random-generator states in ``state.pt``, read
  back with ``torch.load(weights_only=True)``), so ``resume=True`` continues exactly where the
  run stopped — a resumed run gives the same weights as an uninterrupted one — and refuses
  changed settings (the resolved ``config.yaml`` is written to ``out``).
* The run folder, split, schedule and NaN policy are :mod:`wav2small.runs`; the settings
  :class:`wav2small.config.TeacherConfig` (alias :class:`TrainConfig`). Clips too short for the
  teacher, non-finite or absurd audio and labels are rejected by name (or left out with
  ``on_error: skip``, listed in ``skipped.csv``); a non-finite loss stops the run with
  :class:`wav2small.errors.NonFiniteError`, and non-finite weights are never saved.

A plain loop rather than Lightning: Lightning checkpoints are pickles, and the loop is short.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from wav2small import LABELS, SAMPLE_RATE
from wav2small.config import TeacherConfig
from wav2small.errors import UserError
from wav2small.inputs import atomic_write
from wav2small.runs import (
    CONFIG_FILE,
    METRICS_FILE,
    check_loss,
    check_targets,
    check_wave,
    lr_factor,
    mean_score,
    open_run,
    run_lock,
    split_indices,
    warmup_length,
    write_atomic,
    write_json,
    write_skipped,
)

logger = logging.getLogger(__name__)

__all__ = ["CONFIG_FILE", "METRICS_FILE", "TrainConfig", "TrainResult", "train_teacher"]

CHECKPOINT_DIR = "checkpoint"
#: Frames of log-mel computed per batch during feature extraction (bounded memory).
_FEATURE_BATCH_SECONDS = 120.0
#: The settings of a run (:class:`wav2small.config.TeacherConfig`).
TrainConfig = TeacherConfig


@dataclass
class TrainResult:
    """Outcome: the saved teacher folder, its epoch and validation CCC, the per-epoch history."""

    out: Path
    best_epoch: int
    best_ccc: dict[str, float]
    history: pd.DataFrame


# --- data --------------------------------------------------------------------------------------
def read_labelled(csv_path: str | os.PathLike) -> tuple[list[str], np.ndarray]:
    """Audio paths and (n, 3) A/D/V targets from a labelled CSV.

    Raises:
        FileNotFoundError: no such CSV.
        ValueError: missing columns, no rows, or non-finite labels (the row is named).
    """
    from wav2small.inputs import read_manifest

    path = Path(csv_path)
    table = read_manifest(path, required=("file", *LABELS))  # paths relative to the CSV
    targets = table[list(LABELS)].to_numpy(np.float32)
    bad = ~np.isfinite(targets).all(1)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise UserError(
            f"{path}: row {row} ({table['file'].iloc[row]}) has a missing label "
            f"(empty, NaN or Inf: {targets[row].tolist()})"
        )
    files = table["path"].tolist()
    return files, targets


def load_waves(files: list[str], *, progress: bool = False) -> list[np.ndarray]:
    """Read every file as float32 mono 16 kHz (AudioError names a bad file)."""
    from tqdm.auto import tqdm

    from wav2small.audio import read_audio

    return [
        check_wave(read_audio(f), f) for f in tqdm(files, desc="read audio", disable=not progress)
    ]


def usable(
    files: list[str], *, shortest: int, on_error: str, progress: bool = False
) -> tuple[list[int], list[tuple[str, str]]]:
    """Read every file once: indices of the usable ones and ``(file, reason)`` of the others.

    A file is unusable when it cannot be read, has non-finite or absurd samples, or is shorter
    than ``shortest`` samples. With ``on_error="raise"`` the first one raises.

    Raises:
        AudioError / NonFiniteError / UserError: the file and the problem (``on_error="raise"``).
    """
    from tqdm.auto import tqdm

    from wav2small.audio import AudioError, read_audio

    keep, skipped = [], []
    for i, f in enumerate(tqdm(files, desc="check audio", disable=not progress)):
        try:
            n = len(check_wave(read_audio(f), f))
            if n < shortest:
                raise UserError(
                    f"{f}: {n} samples, shorter than the teacher's shortest input ({shortest}); "
                    "remove it or skip it (--on-error skip)"
                )
            keep.append(i)
        except (AudioError, UserError) as e:
            if on_error == "raise":
                raise
            skipped.append((f, str(e)))
    return keep, skipped


@torch.no_grad()
def compute_features(model, waves: list[np.ndarray]) -> list[torch.Tensor]:
    """Raw features (frames, channels) float16 per clip (``model.features_raw``), in batches."""
    from wav2small.teachers import pad_batch

    out: list[torch.Tensor | None] = [None] * len(waves)
    order = sorted(range(len(waves)), key=lambda i: len(waves[i]))
    budget = int(_FEATURE_BATCH_SECONDS * SAMPLE_RATE)
    start = 0
    while start < len(order):
        stop = start + 1
        while stop < len(order) and len(waves[order[stop]]) * (stop - start + 1) <= budget:
            stop += 1
        idx = order[start:stop]
        wave, lengths = pad_batch(
            [torch.from_numpy(waves[i]) for i in idx], min_length=model.min_samples
        )
        feats, frames = model.features_raw(wave, lengths.clamp(min=model.min_samples))
        for i, f, n in zip(idx, feats, frames.tolist(), strict=True):
            out[i] = f[:n].to(torch.float16).clone()
        start = stop
    return out  # type: ignore[return-value]


def features_from_files(
    model, files: list[str], *, progress: bool = False, chunk: int = 256, shortest: int = 0
) -> list[torch.Tensor]:
    """:func:`compute_features` of audio files, read ``chunk`` files at a time.

    Raises:
        UserError: a file shorter than ``shortest`` samples (named).
        NonFiniteError: non-finite or absurd samples (named).
    """
    from tqdm.auto import tqdm

    from wav2small.audio import read_audio

    out: list[torch.Tensor] = []
    with tqdm(total=len(files), desc="log-mel", disable=not progress) as bar:
        for s in range(0, len(files), chunk):
            waves = [check_wave(read_audio(f), f) for f in files[s : s + chunk]]
            for f, w in zip(files[s : s + chunk], waves, strict=True):
                if len(w) < shortest:
                    raise UserError(
                        f"{f}: {len(w)} samples, shorter than the teacher's shortest input "
                        f"({shortest}); remove it or skip it (--on-error skip)"
                    )
            out.extend(compute_features(model, waves))
            bar.update(len(waves))
    return out


def feature_stats(feats: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-band mean and standard deviation over all frames."""
    total = torch.cat([f.float() for f in feats])
    return total.mean(0), total.std(0).clamp(min=1e-3)


# --- batches -------------------------------------------------------------------------------------
def _pad_frames(items: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    frames = torch.tensor([len(x) for x in items])
    out = torch.zeros(len(items), int(frames.max()), items[0].shape[1])
    for i, x in enumerate(items):
        out[i, : len(x)] = x.float()
    return out, frames


def _feature_batch(model, feats, idx, cfg: TrainConfig, gen: torch.Generator):
    """Random crop + gain, then standardise: (batch, frames, mels) and frame counts."""
    crop = None if cfg.crop_seconds is None else int(cfg.crop_seconds * SAMPLE_RATE / model.hop)
    items = []
    for i in idx:
        x = feats[i]
        if crop is not None and len(x) > crop:
            start = int(torch.randint(0, len(x) - crop + 1, (1,), generator=gen))
            x = x[start : start + crop]
        x = x.to(torch.float32, copy=True)
        x[:, : model.level_channels] += (torch.rand((), generator=gen) * 2 - 1) * cfg.gain_db
        items.append(x)
    x, frames = _pad_frames(items)
    return model.standardise(x), frames


def _wave_batch(waves, idx, cfg: TrainConfig, gen: torch.Generator):
    from wav2small.teachers import pad_batch

    crop = None if cfg.crop_seconds is None else int(cfg.crop_seconds * SAMPLE_RATE)
    items = []
    for i in idx:
        x = torch.from_numpy(waves[i])
        if crop is not None and len(x) > crop:
            start = int(torch.randint(0, len(x) - crop + 1, (1,), generator=gen))
            x = x[start : start + crop]
        gain = 10 ** (((torch.rand((), generator=gen) * 2 - 1) * cfg.gain_db) / 20)
        items.append(x * gain)
    return pad_batch(items)


@torch.no_grad()
def predict_features(model, feats: list[torch.Tensor], batch_size: int = 64) -> np.ndarray:
    """Eval-mode predictions on whole clips from stored dB log-mels."""
    model.eval()
    order = sorted(range(len(feats)), key=lambda i: len(feats[i]))
    out = np.zeros((len(feats), len(LABELS)), np.float32)
    for s in range(0, len(order), batch_size):
        idx = order[s : s + batch_size]
        x, frames = _pad_frames([feats[i] for i in idx])
        out[idx] = model.forward_features(model.standardise(x), frames).numpy()
    return out


@torch.no_grad()
def predict_waves(model, waves: list[np.ndarray]) -> np.ndarray:
    """Eval-mode predictions on whole clips (:func:`~wav2small.backends.teacher_predict`)."""
    from wav2small.backends import teacher_predict

    model.eval()
    return teacher_predict(model, waves)


# --- checkpoints --------------------------------------------------------------------------------
def _save_checkpoint(folder: Path, model, optimizer, scheduler, gen, state: dict) -> None:
    save_checked(model, folder)
    blob = {
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "torch_rng": torch.get_rng_state(),
        "gen_rng": gen.get_state(),
        "epoch": state["epoch"],
        "step": state["step"],
        "best_epoch": state["best_epoch"],
        "best_score": state["best_score"],
        "elapsed": state["elapsed"],
    }
    with atomic_write(folder / "state.pt") as tmp:
        torch.save(blob, tmp)


def save_checked(model, folder: Path) -> None:
    """``save_teacher`` after checking every weight is finite.

    Raises:
        NonFiniteError: a NaN/Inf weight (named); nothing is written.
    """
    from wav2small.models import check_finite_state
    from wav2small.teachers import save_teacher

    check_finite_state(model.state_dict(), f"teacher for {folder}")
    save_teacher(model, folder)


def _write_metrics(out: Path, history: list[dict]) -> pd.DataFrame:
    table = pd.DataFrame(history)
    write_atomic(out / METRICS_FILE, table.to_csv(index=False))
    return table


def _ccc(pred: np.ndarray, gold: np.ndarray) -> np.ndarray:
    from wav2small.metrics import ccc

    return np.asarray(ccc(pred, gold), dtype=np.float64)


# --- training ------------------------------------------------------------------------------------
def _build_model(cfg: TrainConfig):
    from wav2small.teachers import SynthTeacher, load_teacher

    torch.manual_seed(cfg.seed)
    if cfg.init:
        return load_teacher(cfg.init), False
    return SynthTeacher(cfg.model), True


def train_teacher(cfg: TrainConfig) -> TrainResult:
    """Train (or fine-tune) a teacher; see the module docstring.

    Returns:
        A :class:`TrainResult`; the best teacher is in ``cfg.out``.

    Raises:
        FileNotFoundError / UserError: bad data or settings (the file, row or setting is named).
        AudioError: an unreadable audio file (named).
        NonFiniteError: non-finite audio, labels, loss or weights (the run stops).
    """
    from tqdm.auto import tqdm

    from wav2small.metrics import ccc_loss
    from wav2small.teachers import SynthTeacher, load_teacher

    cfg.validate()
    t_start = time.perf_counter()
    out, state_path = open_run(cfg, checkpoint=f"{CHECKPOINT_DIR}/state.pt")
    ckpt = out / CHECKPOINT_DIR
    resuming = state_path is not None

    files, targets = read_labelled(cfg.data)
    if cfg.val:
        train_files, train_y = files, targets
        val_files, val_y = read_labelled(cfg.val)
    else:
        if cfg.val_fraction <= 0:
            raise UserError("train-teacher validates every epoch: set val_fraction > 0 or val")
        tr, va = split_indices(len(files), cfg.val_fraction, seed=cfg.seed)
        train_files, train_y = [files[i] for i in tr], targets[tr]
        val_files, val_y = [files[i] for i in va], targets[va]
    model, fresh = (load_teacher(state_path.parent), False) if resuming else _build_model(cfg)
    shortest = int(getattr(model, "min_samples", 1) or 1)
    if cfg.on_error == "skip":  # read every clip once; leave out the bad ones (listed)
        keep, skipped = usable(train_files, shortest=shortest, on_error="skip")
        train_files, train_y = [train_files[i] for i in keep], train_y[keep]
        keep, bad = usable(val_files, shortest=shortest, on_error="skip")
        val_files, val_y = [val_files[i] for i in keep], val_y[keep]
        write_skipped(out, skipped + bad)
        if len(train_files) < 2 or not val_files:
            raise UserError(f"{cfg.data}: too few usable clips left after skipping bad ones")
    features = isinstance(model, SynthTeacher)
    if features:  # stream files → log-mels; the waveforms are not kept
        train_x = features_from_files(model, train_files, progress=cfg.progress, shortest=shortest)
        val_x = features_from_files(model, val_files, progress=cfg.progress, shortest=shortest)
        _check_frames(train_x + val_x, train_files + val_files, model)
        if fresh:
            mean, std = feature_stats(train_x)
            model.feat_mean.copy_(mean)
            model.feat_std.copy_(std)
    else:
        train_x = load_waves(train_files, progress=cfg.progress)
        val_x = load_waves(val_files, progress=cfg.progress)
        for f, w in zip(train_files + val_files, train_x + val_x, strict=True):
            if len(w) < shortest:
                raise UserError(
                    f"{f}: {len(w)} samples, shorter than the teacher's shortest input "
                    f"({shortest}); remove it or skip it (--on-error skip)"
                )

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = math.ceil(len(train_files) / cfg.batch_size)
    total = steps_per_epoch * cfg.epochs
    warmup = warmup_length(int(cfg.warmup_epochs * steps_per_epoch), total)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, warmup=warmup, total=total)
    )
    gen = torch.Generator().manual_seed(cfg.seed)
    state = {"epoch": 0, "step": 0, "best_epoch": 0, "best_score": -math.inf, "elapsed": 0.0}
    history: list[dict] = []
    if resuming:
        blob = torch.load(state_path, map_location="cpu", weights_only=True)
        optimizer.load_state_dict(blob["optimizer"])
        scheduler.load_state_dict(blob["scheduler"])
        torch.set_rng_state(blob["torch_rng"])
        gen.set_state(blob["gen_rng"])
        state = {k: blob[k] for k in state}
        if (out / METRICS_FILE).is_file():
            history = pd.read_csv(out / METRICS_FILE).to_dict("records")[: state["epoch"]]
        logger.info("resuming %s after epoch %d", out, state["epoch"])
    y_train = torch.from_numpy(train_y)
    run_start = time.perf_counter() - state["elapsed"]
    bar = tqdm(
        total=total,
        initial=state["step"],
        desc="train-teacher",
        disable=not cfg.progress,
        dynamic_ncols=True,
    )
    while state["epoch"] < cfg.epochs:
        model.train()
        losses = []
        order = torch.randperm(len(train_files), generator=gen)
        for s in range(0, len(order), cfg.batch_size):
            idx = order[s : s + cfg.batch_size].tolist()
            if features:
                x, frames = _feature_batch(model, train_x, idx, cfg, gen)
                pred = model.forward_features(x, frames)
            else:
                wave, lengths = _wave_batch(train_x, idx, cfg, gen)
                pred = model.forward_batch(wave, lengths)
            y = y_train[idx]
            loss = ccc_loss(pred, y) + cfg.mse_weight * F.mse_loss(pred, y)
            check_loss(loss, step=state["step"], files=[train_files[i] for i in idx], lr=cfg.lr)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 5.0)
            optimizer.step()
            scheduler.step()
            losses.append(float(loss.detach()))
            state["step"] += 1
            bar.update(1)
        state["epoch"] += 1
        pred = predict_features(model, val_x) if features else predict_waves(model, val_x)
        check_targets(pred, val_files, f"the teacher's validation output (epoch {state['epoch']})")
        val = _ccc(pred, val_y)
        score = mean_score(val)  # NaN when no CCC is defined (e.g. one validation clip)
        state["elapsed"] = time.perf_counter() - run_start
        row = {
            "epoch": state["epoch"],
            "train_loss": float(np.mean(losses)),
            **{f"val_ccc_{k}": float(v) for k, v in zip(LABELS, val, strict=True)},
            "val_ccc_mean": score,
            "lr": scheduler.get_last_lr()[0],
            "elapsed_s": round(state["elapsed"], 1),
        }
        history.append(row)
        bar.set_postfix(loss=f"{row['train_loss']:.3f}", val="/".join(f"{v:.2f}" for v in val))
        if score > state["best_score"] or not state["best_epoch"]:  # NaN is never better
            state["best_score"], state["best_epoch"] = score, state["epoch"]
            save_checked(model, out)
        _write_metrics(out, history)
        _save_checkpoint(ckpt, model, optimizer, scheduler, gen, state)
        if cfg.max_minutes is not None and state["elapsed"] > 60 * cfg.max_minutes:
            logger.info(
                "time limit of %.1f min reached after epoch %d", cfg.max_minutes, state["epoch"]
            )
            break
    bar.close()
    table = _write_metrics(out, history)
    best = table[table["epoch"] == state["best_epoch"]].iloc[0]
    logger.info(
        "train-teacher: best epoch %d, val CCC %s (%.0f s)",
        state["best_epoch"],
        "/".join(f"{best[f'val_ccc_{k}']:.3f}" for k in LABELS),
        time.perf_counter() - t_start,
    )
    return TrainResult(
        out, int(state["best_epoch"]), {k: float(best[f"val_ccc_{k}"]) for k in LABELS}, table
    )


def _check_frames(feats: list[torch.Tensor], files: list[str], model) -> None:
    for f, x in zip(files, feats, strict=True):
        if len(x) < 1:
            raise UserError(
                f"{f}: too short for the teacher (no analysis frame of {model.win} samples); "
                "remove it or skip it (--on-error skip)"
            )
        if not bool(torch.isfinite(x).all()):
            from wav2small.errors import NonFiniteError

            raise NonFiniteError(f"{f}: its log-mel features are not finite")


def evaluate_teacher(teacher, csv_path: str | os.PathLike) -> dict[str, float]:
    """CCC per dimension of a teacher against the labels of a CSV (whole clips)."""
    from wav2small.backends import teacher_predict_files

    files, gold = read_labelled(csv_path)
    pred = teacher_predict_files(teacher.eval(), files)
    return dict(zip(LABELS, map(float, _ccc(pred, gold)), strict=True))


def train_teacher_cli(args) -> int:
    """``wav2small train-teacher`` entry point (defaults ← ``--config`` ← flags ← ``--set``)."""
    from wav2small.config import from_cli

    cfg = from_cli(TrainConfig, args)  # --crop-seconds 0: whole clips (RunConfig.check_common)
    with run_lock(cfg.out):
        result = train_teacher(cfg)
    print(
        f"{result.out}: best epoch {result.best_epoch}, validation CCC "
        + " / ".join(f"{k[0].upper()} {v:.3f}" for k, v in result.best_ccc.items())
    )
    if args.test:
        from wav2small.teachers import load_teacher

        test = evaluate_teacher(load_teacher(result.out), args.test)
        write_json(result.out / "test_ccc.json", test)
        print("test CCC " + " / ".join(f"{k[0].upper()} {v:.3f}" for k, v in test.items()))
    return 0
