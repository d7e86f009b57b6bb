"""``wav2small train-teacher``: train a teacher on labelled audio with the CCC loss.

By default it trains the synthetic-world teacher (:class:`~wav2small.models.teacher.SynthTeacher`)
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
  :func:`~wav2small.models.teacher.load_teacher` reads. ``out/checkpoint/`` holds the last epoch
  (weights as safetensors; optimizer, scheduler and random-generator states in ``state.pt``, read
  back with ``torch.load(weights_only=True)``), so ``resume=True`` continues exactly where the
  run stopped — a resumed run gives the same weights as an uninterrupted one.

A plain loop rather than Lightning: Lightning checkpoints are pickles, and the loop is short.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from wav2small import LABELS, SAMPLE_RATE

logger = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoint"
METRICS_FILE = "metrics.csv"
CONFIG_FILE = "train_config.json"
#: Frames of log-mel computed per batch during feature extraction (bounded memory).
_FEATURE_BATCH_SECONDS = 120.0


@dataclass
class TrainConfig:
    """Settings of one ``train-teacher`` run (saved as ``train_config.json`` in ``out``).

    Attributes:
        data: labelled CSV (file, arousal, dominance, valence).
        out: output folder.
        val: validation CSV; default: hold out ``val_fraction`` of ``data``.
        val_fraction: hold-out fraction when ``val`` is not given.
        init: teacher to fine-tune (name or path); default: a new SynthTeacher.
        model: SynthTeacher config overrides (new teachers only).
        epochs: training epochs.
        max_minutes: stop (after an epoch) when the run has taken this long; ``None``: no limit.
        batch_size: clips per step.
        lr: peak learning rate (AdamW, linear warm-up for ``warmup_epochs`` then cosine decay).
        warmup_epochs: linear warm-up length.
        weight_decay: AdamW weight decay.
        mse_weight: weight of an MSE term added to the CCC loss.
        crop_seconds: random training crops of this length (``None``: whole clips, the default:
            on the built-in corpus valence needs the pitch contour from the first word to the last).
        gain_db: random gain of ±``gain_db`` dB per training clip (default 0: on the built-in
            corpus the level carries arousal and the channel already varies the gain).
        seed: seeds the split, the initial weights, shuffling and augmentation.
        threads: torch threads (0: leave torch's default).
        resume: continue from ``out/checkpoint`` if it exists.
        progress: show a progress bar.
    """

    data: str
    out: str
    val: str | None = None
    val_fraction: float = 0.05
    init: str | None = None
    model: dict[str, Any] = field(default_factory=dict)
    epochs: int = 15
    max_minutes: float | None = None
    batch_size: int = 32
    lr: float = 3e-3
    warmup_epochs: float = 1.0
    weight_decay: float = 1e-2
    mse_weight: float = 0.0
    crop_seconds: float | None = None
    gain_db: float = 0.0
    seed: int = 0
    threads: int = 0
    resume: bool = False
    progress: bool = True


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
    path = Path(csv_path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such labelled CSV")
    table = pd.read_csv(path)
    missing = [c for c in ("file", *LABELS) if c not in table.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; it has {list(table.columns)}")
    if table.empty:
        raise ValueError(f"{path}: no rows")
    targets = table[list(LABELS)].to_numpy(np.float32)
    bad = ~np.isfinite(targets).all(1)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise ValueError(f"{path}: row {row} ({table['file'].iloc[row]}) has a missing label")
    files = [
        f if os.path.isabs(f) or os.path.exists(f) else str(path.parent / f)
        for f in table["file"].astype(str)
    ]
    return files, targets


def load_waves(files: list[str], *, progress: bool = False) -> list[np.ndarray]:
    """Read every file as float32 mono 16 kHz (AudioError names a bad file)."""
    from tqdm.auto import tqdm

    from wav2small.audio import read_audio

    return [read_audio(f) for f in tqdm(files, desc="read audio", disable=not progress)]


def _split(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    if not 0 < fraction < 1:
        raise ValueError(f"val_fraction must be in (0, 1), got {fraction}")
    order = np.random.default_rng(seed).permutation(n)
    n_val = max(1, int(round(n * fraction)))
    if n - n_val < 2:
        raise ValueError(f"{n} labelled clips are too few to hold out a validation set")
    return np.sort(order[n_val:]), np.sort(order[:n_val])


@torch.no_grad()
def compute_features(model, waves: list[np.ndarray]) -> list[torch.Tensor]:
    """Raw features (frames, channels) float16 per clip (``model.features_raw``), in batches."""
    from wav2small.models.teacher import pad_batch

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
    model, files: list[str], *, progress: bool = False, chunk: int = 256
) -> list[torch.Tensor]:
    """:func:`compute_features` of audio files, read ``chunk`` files at a time."""
    from tqdm.auto import tqdm

    from wav2small.audio import read_audio

    out: list[torch.Tensor] = []
    with tqdm(total=len(files), desc="log-mel", disable=not progress) as bar:
        for s in range(0, len(files), chunk):
            waves = [read_audio(f) for f in files[s : s + chunk]]
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
    from wav2small.models.teacher import pad_batch

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
    """Eval-mode predictions on whole clips (the teacher batches by length itself)."""
    from wav2small.models.teacher import pad_batch

    model.eval()
    wave, lengths = pad_batch([torch.from_numpy(w) for w in waves])
    return model(wave, lengths).numpy()


# --- checkpoints --------------------------------------------------------------------------------
def _lr_factor(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def _save_checkpoint(folder: Path, model, optimizer, scheduler, gen, state: dict) -> None:
    from wav2small.models.teacher import save_teacher

    save_teacher(model, folder)
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
    tmp = folder / "state.pt.tmp"
    torch.save(blob, tmp)
    os.replace(tmp, folder / "state.pt")


def _write_metrics(out: Path, history: list[dict]) -> pd.DataFrame:
    table = pd.DataFrame(history)
    tmp = out / (METRICS_FILE + ".tmp")
    table.to_csv(tmp, index=False)
    os.replace(tmp, out / METRICS_FILE)
    return table


def _ccc(pred: np.ndarray, gold: np.ndarray) -> np.ndarray:
    from wav2small.metrics import ccc

    return np.asarray(ccc(pred, gold), dtype=np.float64)


# --- training ------------------------------------------------------------------------------------
def _build_model(cfg: TrainConfig):
    from wav2small.models.teacher import SynthTeacher, load_teacher

    torch.manual_seed(cfg.seed)
    if cfg.init:
        model = load_teacher(cfg.init)
        if cfg.model:
            raise ValueError("model overrides apply to new teachers only, not with init")
        return model, False
    return SynthTeacher(cfg.model), True


def train_teacher(cfg: TrainConfig) -> TrainResult:
    """Train (or fine-tune) a teacher; see the module docstring.

    Returns:
        A :class:`TrainResult`; the best teacher is in ``cfg.out``.

    Raises:
        FileNotFoundError / ValueError: bad data (the file or row is named).
        AudioError: an unreadable audio file (named).
    """
    from tqdm.auto import tqdm

    from wav2small.metrics import ccc_loss
    from wav2small.models.teacher import SynthTeacher, load_teacher, save_teacher

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    ckpt = out / CHECKPOINT_DIR
    resuming = cfg.resume and (ckpt / "state.pt").is_file()
    t_start = time.perf_counter()

    files, targets = read_labelled(cfg.data)
    if cfg.val:
        train_files, train_y = files, targets
        val_files, val_y = read_labelled(cfg.val)
    else:
        tr, va = _split(len(files), cfg.val_fraction, cfg.seed)
        train_files, train_y = [files[i] for i in tr], targets[tr]
        val_files, val_y = [files[i] for i in va], targets[va]
    model, fresh = (load_teacher(ckpt), False) if resuming else _build_model(cfg)
    features = isinstance(model, SynthTeacher)
    if features:  # stream files → log-mels; the waveforms are not kept
        train_x = features_from_files(model, train_files, progress=cfg.progress)
        val_x = features_from_files(model, val_files, progress=cfg.progress)
        if fresh:
            mean, std = feature_stats(train_x)
            model.feat_mean.copy_(mean)
            model.feat_std.copy_(std)
    else:
        train_x = load_waves(train_files, progress=cfg.progress)
        val_x = load_waves(val_files, progress=cfg.progress)
    _write_json(out / CONFIG_FILE, dataclasses.asdict(cfg))

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = math.ceil(len(train_files) / cfg.batch_size)
    total = steps_per_epoch * cfg.epochs
    warmup = int(cfg.warmup_epochs * steps_per_epoch)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: _lr_factor(step, total, warmup)
    )
    gen = torch.Generator().manual_seed(cfg.seed)
    state = {"epoch": 0, "step": 0, "best_epoch": 0, "best_score": -math.inf, "elapsed": 0.0}
    history: list[dict] = []
    if resuming:
        blob = torch.load(ckpt / "state.pt", map_location="cpu", weights_only=True)
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
        val = _ccc(pred, val_y)
        score = float(np.nanmean(val)) if np.isfinite(val).any() else float("nan")
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
        if score > state["best_score"] or not state["best_epoch"]:  # NaN: too few val clips
            state["best_score"], state["best_epoch"] = score, state["epoch"]
            save_teacher(model, out)
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


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def evaluate_teacher(teacher, csv_path: str | os.PathLike) -> dict[str, float]:
    """CCC per dimension of a teacher against the labels of a CSV (whole clips)."""
    files, gold = read_labelled(csv_path)
    pred = predict_waves(teacher, load_waves(files))
    return dict(zip(LABELS, map(float, _ccc(pred, gold)), strict=True))


def train_teacher_cli(args) -> int:
    """``wav2small train-teacher`` entry point."""
    model = json.loads(args.model) if args.model else {}
    cfg = TrainConfig(
        data=args.data,
        out=args.out,
        val=args.val,
        val_fraction=args.val_fraction,
        init=args.init,
        model=model,
        epochs=args.epochs,
        max_minutes=args.max_minutes,
        batch_size=args.batch_size,
        lr=args.lr,
        crop_seconds=args.crop_seconds or None,
        gain_db=args.gain_db,
        seed=args.seed,
        threads=args.threads,
        resume=args.resume,
        mse_weight=args.mse_weight,
    )
    result = train_teacher(cfg)
    print(
        f"{result.out}: best epoch {result.best_epoch}, validation CCC "
        + " / ".join(f"{k[0].upper()} {v:.3f}" for k, v in result.best_ccc.items())
    )
    if args.test:
        from wav2small.models.teacher import load_teacher

        test = evaluate_teacher(load_teacher(result.out), args.test)
        _write_json(result.out / "test_ccc.json", test)
        print("test CCC " + " / ".join(f"{k[0].upper()} {v:.3f}" for k, v in test.items()))
    return 0
