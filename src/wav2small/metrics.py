"""Evaluation metrics: Lin's concordance correlation coefficient (CCC), the CCC loss, and UAR.

:func:`ccc` and :func:`uar` need only numpy; :func:`ccc_loss` imports torch when called.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

#: Added to the CCC loss denominator so that constant batches give a finite loss and gradient.
LOSS_EPS = 1e-8
_REDUCTIONS = ("sum", "mean", "none")


def _pair(pred, gold) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(pred, dtype=np.float64), np.asarray(gold, dtype=np.float64)
    if x.shape != y.shape:
        raise ValueError(f"pred and gold differ in shape: {x.shape} vs {y.shape}")
    if x.ndim not in (1, 2):
        raise ValueError(f"expected shape (n,) or (n, d), got {x.shape}")
    return x, y


def ccc(pred, gold) -> np.ndarray | float:
    """Lin's concordance correlation coefficient with population moments.

    ``CCC = 2 cov(x, y) / (var x + var y + (mean x - mean y)^2)``, computed per column.

    Conventions follow audEERING's ``audmetric.concordance_cc`` as of v1.4 (it computes
    ``2 a.b / (a.a + b.b + n (mean_x - mean_y)^2)`` on centred ``a``, ``b``; releases up to 1.1
    multiplied by Pearson's r instead and so gave NaN for a constant side):

    * fewer than 2 samples: NaN;
    * denominator 0 (both sides constant with equal means): NaN;
    * exactly one side constant: 0 (the covariance is 0);
    * NaN in the input gives NaN (no pairs are dropped).

    Args:
        pred: predictions, shape ``(n,)`` or ``(n, d)``.
        gold: gold labels, same shape.

    Returns:
        A float for 1-D input, an array of shape ``(d,)`` for 2-D input.

    Raises:
        ValueError: if the shapes differ or are not 1-D/2-D.
    """
    x, y = _pair(pred, gold)
    if len(x) < 2:
        out = np.full(x.shape[1:], np.nan)
    else:
        # Centre each side after subtracting its first value: a constant side becomes exact
        # zeros, so "constant" is detected exactly instead of through rounding noise.
        dx = (a := x - x[:1]) - a.mean(axis=0)
        dy = (b := y - y[:1]) - b.mean(axis=0)
        cov = (dx * dy).mean(axis=0)
        denom = (dx**2).mean(axis=0) + (dy**2).mean(axis=0) + (x.mean(0) - y.mean(0)) ** 2
        with np.errstate(invalid="ignore", divide="ignore"):
            out = np.where(denom > 0, 2 * cov / denom, np.nan)
    return float(out) if x.ndim == 1 else out


def ccc_loss(pred: torch.Tensor, gold: torch.Tensor, *, reduction: str = "sum") -> torch.Tensor:
    """Differentiable CCC loss: ``1 - CCC`` per dimension over the batch.

    A small epsilon (:data:`LOSS_EPS`) in the denominator keeps the loss and its gradient finite
    for constant batches (where :func:`ccc` would give NaN).

    Args:
        pred: predictions, shape ``(batch,)`` or ``(batch, d)``.
        gold: targets, same shape.
        reduction: ``"sum"`` over dimensions (the paper's ``sum_d (1 - CCC_d)``), ``"mean"``, or
            ``"none"`` for the per-dimension vector.

    Returns:
        Scalar tensor, or shape ``(d,)`` with ``reduction="none"``.

    Raises:
        ValueError: on a shape mismatch or an unknown reduction.
    """
    if pred.shape != gold.shape:
        raise ValueError(
            f"pred and gold differ in shape: {tuple(pred.shape)} vs {tuple(gold.shape)}"
        )
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    mx, my = pred.mean(dim=0), gold.mean(dim=0)
    dx, dy = pred - mx, gold - my
    denom = (dx**2).mean(dim=0) + (dy**2).mean(dim=0) + (mx - my) ** 2 + LOSS_EPS
    loss = 1 - 2 * (dx * dy).mean(dim=0) / denom
    if reduction == "none":
        return loss
    return loss.sum() if reduction == "sum" else loss.mean()


def uar(pred_labels, gold_labels) -> float:
    """Unweighted average recall: the mean over gold classes of each class's recall.

    Classes that occur only in ``pred_labels`` do not count. Empty input gives NaN.

    Args:
        pred_labels: predicted class labels, shape ``(n,)`` (any comparable values).
        gold_labels: gold class labels, shape ``(n,)``.

    Returns:
        UAR in ``[0, 1]``.

    Raises:
        ValueError: if the shapes differ.
    """
    pred, gold = np.asarray(pred_labels), np.asarray(gold_labels)
    if pred.shape != gold.shape:
        raise ValueError(f"pred and gold differ in shape: {pred.shape} vs {gold.shape}")
    if gold.size == 0:
        return float("nan")
    return float(np.mean([np.mean(pred[gold == c] == c) for c in np.unique(gold)]))
