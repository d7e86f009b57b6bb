"""Reports and plots (PNG via matplotlib's Agg canvas; no pyplot, no global backend switch)."""

from __future__ import annotations

import os
from pathlib import Path

from wav2small import LABELS

#: Line colours of arousal, dominance, valence in every plot.
ADV_COLOURS = ("#d62728", "#1f77b4", "#2ca02c")
TIMELINE_SIZE_INCHES = (10.0, 3.6)
TIMELINE_DPI = 120
#: y range used when every value lies in it (trained models output ≈ [0, 1]).
UNIT_RANGE = (-0.05, 1.05)


def plot_timeline(
    frame, out: str | os.PathLike, *, file: str | None = None, title: str | None = None
) -> Path:
    """Draw the arousal/dominance/valence timeline of one file to a PNG, atomically.

    Args:
        frame: a table indexed by ``(file, start, end)`` with the A/D/V columns, as returned by
            :meth:`wav2small.infer.Predictor.timeline` (or ``predict(win=..., hop=...)``); each
            value is drawn at its row's ``end`` time (the moment a live stream emits it).
        out: the PNG file.
        file: which file of ``frame`` to draw (default: the first).
        title: figure title (default: the file name).

    Returns:
        The PNG path.

    Raises:
        ValueError: an empty frame, or ``file`` not in it.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    files = frame.index.get_level_values("file")
    if len(frame) == 0:
        raise ValueError("nothing to plot: the timeline is empty")
    file = files[0] if file is None else file
    if file not in set(files):
        raise ValueError(f"{file}: not in the timeline (it has {sorted(set(files))[:5]}...)")
    rows = frame[files == file].dropna()
    if rows.empty:
        raise ValueError(f"{file}: no values to plot (the file was skipped)")
    t = rows.index.get_level_values("end").to_numpy()
    fig = Figure(figsize=TIMELINE_SIZE_INCHES, dpi=TIMELINE_DPI)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for label, colour in zip(LABELS, ADV_COLOURS, strict=True):
        ax.plot(
            t,
            rows[label].to_numpy(),
            color=colour,
            label=label,
            marker="." if len(t) < 60 else None,
        )
    ax.set_xlabel("time (s), end of each context window")
    ax.set_ylabel("value")
    ax.set_xlim(0, max(float(t.max()), 1e-3))
    values = rows[list(LABELS)].to_numpy()
    if values.min() >= UNIT_RANGE[0] and values.max() <= UNIT_RANGE[1]:
        ax.set_ylim(*UNIT_RANGE)  # trained models: keep the [0, 1] scale comparable across plots
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize="small", frameon=False)
    ax.set_title(title or str(file), fontsize="medium")
    fig.tight_layout()
    return _save_figure(fig, out)


# --- evaluation plots (wav2small.evaluate) --------------------------------------------------------
SCATTER_SIZE_INCHES = (11.0, 3.8)
BARS_SIZE_INCHES = (8.0, 4.0)
EVAL_DPI = 110


def _save_figure(fig, out: str | os.PathLike) -> Path:
    """Save an Agg figure to PNG under a temporary name, then rename."""
    from wav2small.inputs import atomic_write

    out = Path(out)
    with atomic_write(out) as tmp:
        fig.savefig(tmp, format="png")
    return out


def plot_scatter(
    pred, gold, out: str | os.PathLike, *, title: str = "", reference: str = "gold"
) -> Path:
    """Predicted against reference values, one panel per dimension, with the CCC in each title.

    Args:
        pred: (n, 3) predictions (arousal, dominance, valence).
        gold: (n, 3) reference values.
        out: the PNG file (written atomically).
        title: figure title.
        reference: name of the reference for the x axis.

    Returns:
        The PNG path.

    Raises:
        ValueError: shapes differ or are not (n, 3).
    """
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from wav2small.metrics import ccc

    pred, gold = np.asarray(pred, dtype=float), np.asarray(gold, dtype=float)
    if pred.shape != gold.shape or pred.ndim != 2 or pred.shape[1] != len(LABELS):
        raise ValueError(
            f"expected two (n, {len(LABELS)}) arrays, got {pred.shape} and {gold.shape}"
        )
    fig = Figure(figsize=SCATTER_SIZE_INCHES, dpi=EVAL_DPI)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(LABELS))
    for i, (ax, label, colour) in enumerate(zip(axes, LABELS, ADV_COLOURS, strict=True)):
        x, y = gold[:, i], pred[:, i]
        lo = float(min(x.min(), y.min(), 0.0))
        hi = float(max(x.max(), y.max(), 1.0))
        ax.plot([lo, hi], [lo, hi], color="0.6", lw=1, ls="--")
        ax.scatter(x, y, s=8, alpha=0.6, color=colour, edgecolors="none")
        ax.set_xlim(lo, hi)
        ax.set_ylim(lo, hi)
        ax.set_aspect("equal")
        ax.set_xlabel(f"{reference} {label}")
        ax.set_ylabel(f"predicted {label}")
        ax.set_title(f"{label}: CCC {ccc(y, x):.3f}", fontsize="medium")
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title, fontsize="medium")
    fig.tight_layout()
    return _save_figure(fig, out)


def plot_ccc_bars(metrics, out: str | os.PathLike, *, reference: str = "gold") -> Path:
    """Grouped bars: CCC per dimension (and mean) of several models against one reference.

    Args:
        metrics: a table with columns ``model, reference, arousal, dominance, valence, mean``
            (:attr:`wav2small.evaluate.Evaluation.metrics`).
        out: the PNG file (written atomically).
        reference: which reference's rows to draw.

    Returns:
        The PNG path.

    Raises:
        ValueError: no rows for ``reference``.
    """
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = metrics[metrics["reference"] == reference]
    if rows.empty:
        raise ValueError(f"no CCC rows against {reference!r} to plot")
    groups = [*LABELS, "mean"]
    models = rows["model"].tolist()
    width = 0.8 / len(models)
    fig = Figure(figsize=BARS_SIZE_INCHES, dpi=EVAL_DPI)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    x = np.arange(len(groups))
    for k, (_, row) in enumerate(rows.iterrows()):
        values = row[groups].to_numpy(dtype=float)
        bars = ax.bar(x + (k - (len(models) - 1) / 2) * width, values, width, label=row["model"])
        for bar, v in zip(bars, values, strict=True):
            if np.isfinite(v):
                ax.annotate(
                    f"{v:.2f}",
                    (bar.get_x() + bar.get_width() / 2, max(v, 0)),
                    ha="center",
                    va="bottom",
                    fontsize="x-small",
                )
    ax.set_xticks(x, groups)
    ax.set_ylabel(f"CCC vs {reference}")
    ax.set_ylim(min(0.0, float(np.nanmin(rows[groups].to_numpy(dtype=float))) - 0.05), 1.05)
    ax.axhline(0, color="0.3", lw=0.8)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize="small", frameon=False)
    ax.set_title(f"CCC against {reference}", fontsize="medium")
    fig.tight_layout()
    return _save_figure(fig, out)


def plot_cues(cues, out: str | os.PathLike) -> Path:
    """Heat maps (one per dimension): Pearson r of each model's outputs with each hidden control.

    Args:
        cues: :attr:`wav2small.evaluate.Evaluation.cues` (columns ``model, dimension`` and one
            per control).
        out: the PNG file (written atomically).

    Returns:
        The PNG path.

    Raises:
        ValueError: an empty table.
    """
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if cues is None or cues.empty:
        raise ValueError("no control correlations to plot")
    controls = [c for c in cues.columns if c not in ("model", "dimension")]
    models = list(dict.fromkeys(cues["model"]))
    fig = Figure(figsize=(3.0 + 1.1 * len(controls), 0.9 + 0.45 * len(models) * len(LABELS)))
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(LABELS), 1, squeeze=False)[:, 0]
    for ax, dim in zip(axes, LABELS, strict=True):
        rows = cues[cues["dimension"] == dim].set_index("model").reindex(models)
        r = rows[controls].to_numpy(dtype=float)
        image = ax.imshow(r, cmap="RdBu_r", vmin=-1, vmax=1, aspect="auto")
        for (i, j), v in np.ndenumerate(r):
            if np.isfinite(v):
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize="x-small")
        ax.set_yticks(range(len(models)), models, fontsize="small")
        ax.set_xticks(range(len(controls)), controls if ax is axes[-1] else [""] * len(controls))
        ax.set_title(f"{dim}: r with each hidden control", fontsize="small")
    fig.colorbar(image, ax=list(axes), shrink=0.6, label="Pearson r")
    return _save_figure(fig, out)


# --- model size vs accuracy (demo, benchmarks) ----------------------------------------------
SIZE_VS_CCC_INCHES = (6.0, 4.0)
SIZE_VS_CCC_DPI = 100


def plot_size_vs_ccc(rows: list[dict], out: str | os.PathLike) -> Path:
    """Scatter of parameters (log scale) against mean CCC vs gold, one point per model.

    Args:
        rows: dicts with ``model``, ``params`` and ``CCC A gold`` / ``CCC D gold`` /
            ``CCC V gold``.
        out: PNG path (written atomically).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=SIZE_VS_CCC_INCHES, dpi=SIZE_VS_CCC_DPI)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for row in rows:
        mean = sum(row[f"CCC {d} gold"] for d in "ADV") / 3
        ax.scatter(row["params"], mean, s=40)
        ax.annotate(
            row["model"],
            (row["params"], mean),
            textcoords="offset points",
            xytext=(5, 5),
            fontsize=8,
        )
    ax.set_xscale("log")
    ax.margins(x=0.2)  # room for the labels of the largest models
    ax.set_xlabel("parameters")
    ax.set_ylabel("mean CCC vs gold (A, D, V)")
    ax.set_title("model size vs accuracy")
    ax.grid(alpha=0.3)
    return _save_figure(fig, out)
