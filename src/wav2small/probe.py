"""Linear probes of a frozen backbone: what each layer's mean-pooled features already hold.

A pretrained backbone has learned something when a *linear* read-out of its frozen features
predicts the task better than the same read-out of a randomly initialised backbone of the same
shape (:func:`probe_backbone`). For every encoder layer ``k`` (transformers'
``hidden_states[k]``, exactly what an early exit after layer ``k`` sees, computed through
:meth:`wav2small.models.exits.EarlyExitModel.layer_outputs`) the clip's frames are averaged over
time; then

* **A/D/V**: ridge regression on the standardised features → CCC per dimension on the test clips;
* **classes** (the corpus's ``emotion`` column): a ridge classifier (one-hot targets, each clip
  weighted by 1 / its class's count, arg-max) → UAR on the test clips.

The ridge penalty of each read-out is chosen from :data:`ALPHAS` by 5-fold cross-validation on
the training clips only (mean CCC, resp. UAR). Everything is closed form and deterministic.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from wav2small import LABELS
from wav2small.config import DEFAULT_LABEL_COLUMN

#: Ridge penalties tried (on standardised features, relative to the number of clips).
ALPHAS = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)
FOLDS = 5
#: Pooling over time of :func:`layer_features`.
POOLINGS = ("mean", "mean+std")
#: Most padded audio (seconds) per backbone call when extracting features.
BATCH_SECONDS = 64.0


@torch.no_grad()
def layer_features(
    backbone: str | os.PathLike | nn.Module,
    files: Sequence[str],
    *,
    pooling: str = "mean",
    progress: bool = False,
) -> np.ndarray:
    """Every encoder layer's output pooled over each clip's frames, frozen (eval mode).

    Args:
        backbone: a spec for :func:`wav2small.models.exits.load_backbone` or a module.
        files: audio files (read at 16 kHz mono).
        pooling: ``"mean"`` → (clips, layers, hidden), what the exits' heads average; or
            ``"mean+std"`` → (clips, layers, 2 · hidden): the mean, then the standard deviation
            over time (statistics pooling: how a feature moves within the clip).
        progress: progress bar.
    """
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
    from tqdm.auto import tqdm

    from wav2small.audio import read_audio
    from wav2small.models.exits import create_exits_model
    from wav2small.ops import masked_mean
    from wav2small.runs import check_wave
    from wav2small.teachers import pad_batch

    model = create_exits_model(backbone, task="adv", exits=()).eval()
    waves = [check_wave(read_audio(f), f) for f in files]
    hidden = int(model.backbone.config.hidden_size)
    out = np.zeros((len(files), model.num_layers, hidden * (2 if pooling == "mean+std" else 1)))
    order = sorted(range(len(waves)), key=lambda i: len(waves[i]))
    budget = int(BATCH_SECONDS * 16000)
    start = 0
    with tqdm(total=len(files), desc="probe features", disable=not progress) as bar:
        while start < len(order):
            stop = start + 1
            while stop < len(order) and len(waves[order[stop]]) * (stop - start + 1) <= budget:
                stop += 1
            idx = order[start:stop]
            wave, lengths = pad_batch([torch.from_numpy(waves[i]) for i in idx])
            for k, states, frames in model.layer_outputs(wave, lengths):
                mean = masked_mean(states, frames)
                out[idx, k - 1, :hidden] = mean.double().numpy()
                if pooling == "mean+std":
                    var = masked_mean((states - mean[:, None]) ** 2, frames)
                    out[idx, k - 1, hidden:] = var.clamp(min=0).sqrt().double().numpy()
            bar.update(len(idx))
            start = stop
    if not np.isfinite(out).all():
        raise ValueError("the backbone gave non-finite features")
    return out


def _standardise(train: np.ndarray, *others: np.ndarray) -> list[np.ndarray]:
    mean, std = train.mean(0), train.std(0)
    std = np.where(std > 1e-8, std, 1.0)
    return [(x - mean) / std for x in (train, *others)]


def ridge(
    x: np.ndarray, y: np.ndarray, alpha: float, weights: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Weighted ridge regression ``y ≈ x W + b`` (intercept not penalised); → (W, b).

    ``alpha`` is scaled by the total weight (the number of clips when unweighted).
    """
    w = np.ones(len(x)) if weights is None else np.asarray(weights, dtype=np.float64)
    w = w / w.mean()
    xm = (w[:, None] * x).sum(0) / w.sum()
    ym = (w[:, None] * y).sum(0) / w.sum()
    xc, yc = x - xm, y - ym
    gram = xc.T @ (w[:, None] * xc) + alpha * w.sum() * np.eye(x.shape[1])
    coef = np.linalg.solve(gram, xc.T @ (w[:, None] * yc))
    return coef, ym - xm @ coef


def _folds(n: int, k: int, seed: int = 0) -> list[np.ndarray]:
    return np.array_split(np.random.default_rng(seed).permutation(n), k)


def _fit_predict(kind: str, xtr, ytr, xte, alpha: float, n_classes: int) -> np.ndarray:
    if kind == "adv":
        coef, b = ridge(xtr, ytr, alpha)
        return xte @ coef + b
    onehot = np.eye(n_classes)[ytr]
    weights = 1.0 / np.bincount(ytr, minlength=n_classes)[ytr]
    coef, b = ridge(xtr, onehot, alpha, weights)
    return (xte @ coef + b).argmax(1)


def _score(kind: str, pred: np.ndarray, gold: np.ndarray) -> float:
    from wav2small.metrics import ccc, uar

    if kind == "adv":
        return float(np.nanmean(np.asarray(ccc(pred, gold), dtype=np.float64)))
    return float(uar(pred, gold))


def fit_probe(
    kind: str,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    *,
    n_classes: int = 0,
    alphas: Sequence[float] = ALPHAS,
    folds: int = FOLDS,
) -> tuple[np.ndarray, float]:
    """Choose the ridge penalty by cross-validation on the training clips, refit, predict.

    Args:
        kind: ``"adv"`` ((n, 3) float targets) or ``"classes"`` (int class indices).
        x_train: (n, dim) features; x_test: (m, dim).
        y_train: targets of the training clips.
        n_classes: number of classes (``kind="classes"``).
        alphas: penalties tried.
        folds: cross-validation folds.

    Returns:
        (test predictions, chosen alpha).
    """
    x_train, x_test = _standardise(x_train, x_test)
    best, best_alpha = -np.inf, alphas[0]
    parts = _folds(len(x_train), folds)
    for alpha in alphas:
        scores = []
        for i, held in enumerate(parts):
            fit = np.concatenate([p for j, p in enumerate(parts) if j != i])
            pred = _fit_predict(kind, x_train[fit], y_train[fit], x_train[held], alpha, n_classes)
            scores.append(_score(kind, pred, y_train[held]))
        score = float(np.mean(scores))
        if score > best:
            best, best_alpha = score, alpha
    return _fit_predict(kind, x_train, y_train, x_test, best_alpha, n_classes), best_alpha


def probe_layers(
    train_features: np.ndarray,
    test_features: np.ndarray,
    train_table: pd.DataFrame,
    test_table: pd.DataFrame,
    *,
    label_column: str = DEFAULT_LABEL_COLUMN,
) -> pd.DataFrame:
    """One row per layer: CCC of A/D/V, their mean, and UAR of ``label_column`` on the test clips.

    Args:
        train_features: (clips, layers, dim) from :func:`layer_features`; test_features alike.
        train_table: the training manifest (``arousal, dominance, valence`` and the class
            column), in the order of ``train_features``; test_table alike.
        label_column: class column.
    """
    from wav2small.metrics import ccc, uar
    from wav2small.selfdistill import class_names, targets_of

    classes = class_names(train_table[label_column].astype(str))
    adv_tr = targets_of(train_table, task="adv", name="train")
    adv_te = targets_of(test_table, task="adv", name="test")
    cls_tr = targets_of(train_table, task="classes", classes=classes, label_column=label_column)
    cls_te = targets_of(test_table, task="classes", classes=classes, label_column=label_column)
    rows = []
    for k in range(train_features.shape[1]):
        xtr, xte = train_features[:, k], test_features[:, k]
        pred, alpha_adv = fit_probe("adv", xtr, adv_tr, xte)
        cccs = np.asarray(ccc(pred, adv_te), dtype=np.float64)
        labels, alpha_cls = fit_probe("classes", xtr, cls_tr, xte, n_classes=len(classes))
        rows.append(
            {"layer": k + 1}
            | {f"ccc_{d}": float(c) for d, c in zip(LABELS, cccs, strict=True)}
            | {"ccc_mean": float(np.nanmean(cccs)), "uar": float(uar(labels, cls_te))}
            | {"alpha_adv": alpha_adv, "alpha_classes": alpha_cls}
        )
    return pd.DataFrame(rows)


def probe_poolings(
    train_features: np.ndarray,
    test_features: np.ndarray,
    train_table: pd.DataFrame,
    test_table: pd.DataFrame,
    *,
    poolings: Sequence[str] = ("mean",),
    label_column: str = DEFAULT_LABEL_COLUMN,
) -> pd.DataFrame:
    """:func:`probe_layers` for each pooling, from ``"mean+std"`` features (or ``"mean"`` ones
    when only the mean is asked); the table has a ``pooling`` column."""
    results = []
    for pooling in poolings:
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        dim = train_features.shape[2]
        if pooling == "mean" and "mean+std" in poolings:
            dim //= 2  # the mean is the first half of mean+std features
        table = probe_layers(
            train_features[..., :dim],
            test_features[..., :dim],
            train_table,
            test_table,
            label_column=label_column,
        )
        table.insert(1, "pooling", pooling)
        results.append(table)
    return pd.concat(results, ignore_index=True)


def probe_backbone(
    backbone: str | os.PathLike | nn.Module,
    train_csv: str | os.PathLike,
    test_csv: str | os.PathLike,
    *,
    label_column: str = DEFAULT_LABEL_COLUMN,
    poolings: Sequence[str] = ("mean",),
    progress: bool = False,
) -> pd.DataFrame:
    """:func:`probe_poolings` of a backbone's frozen features on two labelled manifests (one
    backbone pass per clip serves every pooling)."""
    from wav2small.inputs import read_manifest

    tables = [read_manifest(p) for p in (train_csv, test_csv)]
    pooling = "mean+std" if "mean+std" in poolings else "mean"
    feats = [
        layer_features(backbone, t["path"].tolist(), pooling=pooling, progress=progress)
        for t in tables
    ]
    return probe_poolings(*feats, *tables, poolings=poolings, label_column=label_column)
