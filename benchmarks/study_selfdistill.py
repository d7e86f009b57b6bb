"""Self-distillation study on the shipped pretrained backbone: seeds, label regimes, ONNX latency.

Issue 18 (deliverables 2 and 3), run apart from ``make bench`` (hours of CPU; ``make bench``
keeps ``bench_selfdistill.py``). On ``backbone-synth`` (8 layers, exits after layers 2, 4, 6)
the same command trains self-distillation (exits) and plain fine-tuning (no exits) with the same
seed, data and steps, for every cell of the grid:

* task ``classes`` (UAR of the 5 ``emotion`` classes): seeds ``--seeds`` x label fractions
  ``--fractions`` (1.0 = every ``train`` clip; 0.1 = a class-stratified 10 % subset drawn with
  the run's seed, the same subset for both methods);
* task ``adv`` (CCC of arousal, dominance, valence; fusion is classes-only): the cells in
  ``--adv-cells`` (default seed 0, full labels).

Every head (each exit, ``deepest``, ``fusion``) is scored on the whole ``test`` split (new
speakers and texts) through :func:`wav2small.selfdistill.evaluate_exits`. Training keeps the
last weights (no validation split: the cosine schedule ends at 0, and a held-out 10 % of a 10 %
subset would be a handful of clips). Latency: each head of the seed-0 classes model exported with
:func:`wav2small.selfdistill.export_exit` (``wav2small export --exit k``) and timed with ONNX
Runtime, one thread, one 5 s clip, interleaved rounds (median).

Resumable: ``OUT/scores.csv`` gets one block of rows per finished run, written atomically; a run
already there is skipped, a trained but unscored run is only scored, an interrupted run resumes
from its ``last.ckpt``. Progress goes to stdout (run it with ``> OUT/study.log``).

Outputs: ``OUT/scores.csv`` (per run and head), ``OUT/summary.csv`` (mean, sd, n over seeds),
``OUT/paired.csv`` (per seed: self-distillation head minus plain fine-tuning), ``OUT/latency.csv``,
``OUT/results.md`` and ``OUT/accuracy_vs_ms.png``.

Run: ``nice -n 10 .venv/bin/python benchmarks/study_selfdistill.py --corpus DIR --out DIR``
(``--report-only`` rebuilds the tables and plot from ``scores.csv`` and ``latency.csv``;
``--publish`` copies them to ``docs/results/selfdistill-study/`` and
``docs/img/selfdistill_study_uar_vs_ms.png``, which docs/RESULTS.md quotes; backbone-synth only).

Random-init control: the same recipe with ``--backbone`` a random-init twin of backbone-synth
(same config; ``bench_backbone.random_twin``) and ``--no-latency`` (same graphs, nothing new to
time); ``--pretrained-scores`` the pretrained study's ``scores.csv`` then also writes
``OUT/pretraining.{csv,md}``: per seed, method and head, pretrained minus random-init.
Two pretrainings compared: ``--backbone`` the other one and ``--baseline-scores`` the first
study's ``scores.csv`` (``--names supervised,self-supervised``) write ``OUT/versus.{csv,md}``:
this study minus that one.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

METHODS = {"self-distillation": True, "fine-tuning": False}
KEY = ["task", "fraction", "seed", "method"]
METRICS = {
    "classes": ["uar", "accuracy"],
    "adv": ["ccc_arousal", "ccc_dominance", "ccc_valence", "ccc_mean"],
}
N_CLASSES = 5


# --- pure functions (tested in tests/test_study_selfdistill.py) -------------------------------
def run_name(task: str, fraction: float, seed: int, method: str) -> str:
    """Folder name of one run, e.g. ``classes-f0.1-s2-self-distillation``."""
    return f"{task}-f{fraction:g}-s{seed}-{method}"


def grid(
    seeds: list[int], fractions: list[float], adv_cells: list[tuple[int, float]]
) -> list[dict]:
    """Every run of the study, in the order they run: classes cells (seed-major, so a stopped
    study has whole seeds), then the A/D/V cells; both methods per cell, back to back."""
    cells = [("classes", f, s) for s in seeds for f in fractions]
    cells += [("adv", f, s) for s, f in adv_cells]
    return [
        {"task": t, "fraction": f, "seed": s, "method": m} for t, f, s in cells for m in METHODS
    ]


def done_runs(scores: pd.DataFrame | None) -> set[tuple]:
    """The runs whose scores are already in ``scores`` (key: task, fraction, seed, method)."""
    if scores is None or scores.empty:
        return set()
    return {
        (str(t), float(f), int(s), str(m))
        for t, f, s, m in scores[KEY].drop_duplicates().itertuples(index=False)
    }


def todo(runs: list[dict], scores: pd.DataFrame | None) -> list[dict]:
    """The runs of ``runs`` not yet scored (resumability)."""
    done = done_runs(scores)
    return [
        r
        for r in runs
        if (r["task"], float(r["fraction"]), int(r["seed"]), r["method"]) not in done
    ]


def summarise(scores: pd.DataFrame) -> pd.DataFrame:
    """Mean, sd (ddof 1; NaN for one seed) and n seeds per task, fraction, method, head, metric."""
    long = scores.melt(
        id_vars=[*KEY, "exit"],
        value_vars=[c for c in sum(METRICS.values(), []) if c in scores.columns],
        var_name="metric",
    ).dropna(subset=["value"])
    out = (
        long.groupby(["task", "fraction", "method", "exit", "metric"], sort=False)["value"]
        .agg(mean="mean", sd="std", n="count")
        .reset_index()
    )
    return out


def paired(scores: pd.DataFrame, *, baseline_exit: str = "deepest") -> pd.DataFrame:
    """Per task, fraction, seed and self-distillation head: its score minus plain fine-tuning's
    (``baseline_exit``) in the same seed and data. Only seeds where both runs exist."""
    metrics = [c for c in sum(METRICS.values(), []) if c in scores.columns]
    sd = scores[scores.method == "self-distillation"]
    ft = scores[(scores.method == "fine-tuning") & (scores.exit == baseline_exit)]
    both = sd.merge(ft, on=["task", "fraction", "seed"], suffixes=("", "_ft"))
    rows = both[["task", "fraction", "seed", "exit"]].copy()
    for m in metrics:
        rows[m] = both[m] - both[m + "_ft"]
    return rows.dropna(axis=1, how="all").reset_index(drop=True)


def paired_summary(diffs: pd.DataFrame) -> pd.DataFrame:
    """Mean, sd, n and the count of seeds with a positive difference, per task/fraction/head
    (and per method when ``diffs`` has a ``method`` column, as :func:`versus` gives)."""
    metrics = [c for c in sum(METRICS.values(), []) if c in diffs.columns]
    by = ["task", "fraction", *(["method"] if "method" in diffs.columns else []), "exit"]
    long = diffs.melt(id_vars=[*by, "seed"], value_vars=metrics, var_name="metric").dropna(
        subset=["value"]
    )
    return (
        long.groupby([*by, "metric"], sort=False)["value"]
        .agg(mean="mean", sd="std", n="count", positive=lambda v: int((v > 0).sum()))
        .reset_index()
    )


def versus(scores: pd.DataFrame, control: pd.DataFrame) -> pd.DataFrame:
    """Per task, fraction, seed, method and head: ``scores`` minus ``control`` (the same grid
    and recipe on another backbone, e.g. pretrained minus its random-init twin). Only runs
    present in both."""
    metrics = [c for c in sum(METRICS.values(), []) if c in scores.columns and c in control]
    on = [*KEY, "exit"]
    both = scores.merge(control[[*on, *metrics]], on=on, suffixes=("", "_control"))
    rows = both[on].copy()
    for m in metrics:
        rows[m] = both[m] - both[m + "_control"]
    return rows.dropna(axis=1, how="all").reset_index(drop=True)


def stratified_subset(labels: pd.Series, fraction: float, seed: int) -> np.ndarray:
    """Sorted row positions of a class-stratified ``fraction`` of ``labels`` (at least one per
    class), drawn with ``seed``."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    rng = np.random.default_rng(seed)
    keep = []
    for _, rows in sorted(labels.groupby(labels).indices.items()):
        k = max(1, round(fraction * len(rows)))
        keep.extend(rng.choice(rows, size=k, replace=False).tolist())
    return np.sort(np.asarray(keep, dtype=np.int64))


def append_scores(path: Path, block: pd.DataFrame) -> pd.DataFrame:
    """Add one run's rows to ``path`` (atomically) and return the whole table."""
    old = pd.read_csv(path) if path.exists() else None
    table = block if old is None else pd.concat([old, block], ignore_index=True)
    tmp = path.with_name(path.name + ".tmp")
    table.to_csv(tmp, index=False)
    os.replace(tmp, path)
    return table


def fmt(mean: float, sd: float, n: int) -> str:
    """``0.412 ± 0.013`` (``± –`` with one seed), plus ``(n=2)`` when fewer than 3 seeds."""
    spread = "–" if n < 2 or not np.isfinite(sd) else f"{sd:.3f}"
    return f"{mean:.3f} ± {spread}" + (f" (n={n})" if n < 3 else "")


# --- training and scoring ---------------------------------------------------------------------
def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--corpus", required=True, help="folder with train.csv and test.csv")
    p.add_argument("--out", default="runs/study_selfdistill")
    p.add_argument("--backbone", default="backbone-synth")
    p.add_argument("--exits", default="2,4,6")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--fractions", default="1,0.1", help="label fractions of train")
    p.add_argument("--adv-cells", default="0:1", help="A/D/V cells seed:fraction,...; '' none")
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--crop-seconds", type=float, default=1.5)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--warmup-steps", type=float, default=0.05)
    p.add_argument("--repeats", type=int, default=20, help="timed ONNX runs per head")
    p.add_argument(
        "--no-latency",
        action="store_true",
        help="skip the ONNX export and timing (e.g. a control with the same architecture)",
    )
    p.add_argument("--only", default="", help="run only these run names (comma separated)")
    p.add_argument(
        "--pretrained-scores",
        default="",
        help="scores.csv of the same recipe on the pretrained backbone (this study being its "
        "random-init control): also writes pretraining.{csv,md}, pretrained minus this per seed",
    )
    p.add_argument(
        "--baseline-scores",
        default="",
        help="scores.csv of the same recipe on another backbone: also writes versus.{csv,md}, "
        "this study minus that one per seed (e.g. supervised minus self-supervised pretraining)",
    )
    p.add_argument(
        "--names",
        default="this study,baseline",
        help="the two backbones' names in versus.md: THIS,BASELINE",
    )
    p.add_argument("--report-only", action="store_true")
    p.add_argument(
        "--publish",
        action="store_true",
        help="also copy the table and plot to docs/ (what docs/RESULTS.md quotes)",
    )
    return p.parse_args(argv)


def subset_csv(args, out: Path, fraction: float, seed: int) -> Path:
    """The training CSV of a label fraction (written once per fraction and seed)."""
    train = Path(args.corpus) / "train.csv"
    if fraction == 1:
        return train
    table = pd.read_csv(train)
    keep = stratified_subset(table["emotion"], fraction, seed)
    path = Path(args.corpus) / f"train-f{fraction:g}-s{seed}.csv"  # next to the audio it names
    if not path.exists():
        tmp = path.with_name(path.name + ".tmp")
        table.iloc[keep].to_csv(tmp, index=False)
        os.replace(tmp, path)
    return path


def train_and_score(args, out: Path, run: dict) -> pd.DataFrame:
    """Train one run (or resume / reuse it) and score every head on the test split."""
    from wav2small.config import SelfDistillConfig
    from wav2small.models.exits import load_exits_model
    from wav2small.selfdistill import fit_selfdistill

    folder = out / "runs" / run_name(**run)
    weights = folder / "best.safetensors"
    t0 = time.perf_counter()
    if not (folder / "summary.json").exists() or not weights.exists():
        exits = tuple(int(e) for e in args.exits.split(",")) if METHODS[run["method"]] else ()
        cfg = SelfDistillConfig(
            backbone=args.backbone,
            data=str(subset_csv(args, out, run["fraction"], run["seed"])),
            task=run["task"],
            exits=exits,
            out=str(folder),
            max_steps=args.steps,
            batch_size=args.batch_size,
            crop_seconds=args.crop_seconds,
            lr=args.lr,
            warmup_steps=args.warmup_steps,
            scheduler="cosine",
            val_fraction=0.0,
            seed=run["seed"],
            threads=1,
            progress=False,
            resume=True,
        )
        fit_selfdistill(cfg)
    train_s = time.perf_counter() - t0
    table = score_heads(load_exits_model(weights), Path(args.corpus) / "test.csv")
    for i, k in enumerate(KEY):
        table.insert(i, k, run[k])
    table["train_s"] = round(train_s, 1)
    table["eval_s"] = round(time.perf_counter() - t0 - train_s, 1)
    return table


def score_heads(model, test_csv: Path, *, batch_size: int = 8) -> pd.DataFrame:
    """Every head's scores on whole test clips from one padded-batch pass per batch.

    The validation path of training (``_all_heads``: ``forward_all`` plus margin fusion), with
    clips batched by length. It equals :func:`wav2small.selfdistill.evaluate_exits` (each
    exit's truncated model run clip by clip; tested in tests/test_selfdistill.py) at a fifth of
    the cost: the study scores 16 models on 700 clips.
    """
    import torch
    from torch.utils.data import DataLoader

    from wav2small.data import UtteranceDataset, load_manifest, pad_collate
    from wav2small.selfdistill import _all_heads, exit_names, head_scores, targets_of

    table = load_manifest(test_csv)
    target = targets_of(
        table, task=model.config.task, classes=model.config.classes, name=str(test_csv)
    )
    order = np.argsort(table["duration"].to_numpy(), kind="stable")
    loader = DataLoader(
        UtteranceDataset(table.iloc[order].reset_index(drop=True)),
        batch_size=batch_size,
        collate_fn=pad_collate,
    )
    parts: dict[str, list] = {}
    model = model.eval()
    with torch.inference_mode():
        for batch in loader:
            for head, pred in _all_heads(model, batch["wave"], batch["lengths"]).items():
                parts.setdefault(head, []).append(pred.double().numpy())
    scores = head_scores(
        {h: np.concatenate(v) for h, v in parts.items()}, target[order], task=model.config.task
    )
    rows = []
    for name in exit_names(model):
        row = {
            "exit": str(name),
            "layers": model.depth(name),
            "params": model.parameters_used(name),
        }
        rows.append({**row, **scores[str(name)], "n": len(target)})
    return pd.DataFrame(rows)


def latency(args, out: Path) -> pd.DataFrame:
    """ONNX Runtime ms per 5 s (1 thread) of every head of the seed-0 full-label classes model
    and of the fine-tuned model, exported through ``export_exit``, timed in interleaved rounds."""
    import statistics

    from wav2small import SAMPLE_RATE
    from wav2small.bench import session
    from wav2small.models.exits import load_exits_model
    from wav2small.selfdistill import exit_names, export_exit

    heads = []
    for method in METHODS:
        weights = out / "runs" / run_name("classes", 1.0, 0, method) / "best.safetensors"
        model = load_exits_model(weights)
        for e in exit_names(model):
            path = out / "onnx" / f"{method}-{e}.onnx"
            if not path.exists():
                export_exit(model, path, exit=e)
            heads.append((method, str(e), model.depth(e), model.parameters_used(e), path))
    x = np.random.default_rng(0).normal(0, 0.1, (1, 5 * SAMPLE_RATE)).astype(np.float32)
    sessions = [session(h[-1], threads=1) for h in heads]
    times: list[list[float]] = [[] for _ in heads]
    for round_ in range(3 + args.repeats):
        for i, sess in enumerate(sessions):
            t0 = time.perf_counter()
            sess.run(None, {"signal": x})
            if round_ >= 3:
                times[i].append(1000 * (time.perf_counter() - t0))
    return pd.DataFrame(
        [
            {
                "method": m,
                "exit": e,
                "layers": layers,
                "params": params,
                "onnx_bytes": path.stat().st_size,
                "ms_per_5s": statistics.median(t),
            }
            for (m, e, layers, params, path), t in zip(heads, times, strict=True)
        ]
    )


def wants_latency(args, out: Path) -> bool:
    """Whether to export and time the heads now: not with ``--no-latency``, and only once the
    seed-0 full-label classes runs of both methods are trained."""
    first = [run_name("classes", 1.0, 0, m) for m in METHODS]
    return not args.no_latency and all(
        (out / "runs" / f / "best.safetensors").exists() for f in first
    )


# --- report -----------------------------------------------------------------------------------
def head_order(exits: list[str]) -> list[str]:
    return sorted(
        set(exits), key=lambda e: (0, int(e)) if e.isdigit() else (1, 0 if e == "deepest" else 1)
    )


def report(args, out: Path, scores: pd.DataFrame, lat: pd.DataFrame | None) -> str:
    """Write summary.csv, paired.csv, results.md and the plot; return the markdown."""
    summary, diffs = summarise(scores), paired(scores)
    psum = paired_summary(diffs) if not diffs.empty else pd.DataFrame()
    summary.to_csv(out / "summary.csv", index=False)
    diffs.to_csv(out / "paired.csv", index=False)
    ms = {} if lat is None else {(r.method, r.exit): r.ms_per_5s for r in lat.itertuples()}
    lines = [
        f"{args.backbone}, exits {args.exits}, {args.steps} steps x {args.batch_size} crops of "
        f"{args.crop_seconds:g} s, Adam lr {args.lr:g} (warm-up {args.warmup_steps:g}, cosine), "
        f"last weights; test clips {int(scores['n'].iloc[0])}. mean ± sd over seeds (n=seeds "
        "when fewer than 3); Δ = self-distillation head − plain fine-tuning (deepest), same seed "
        "and data: mean ± sd, and seeds with Δ > 0.",
        "",
    ]
    for task in [t for t in ("classes", "adv") if t in set(scores.task)]:
        metric = "uar" if task == "classes" else "ccc_mean"
        cols = ["uar"] if task == "classes" else METRICS["adv"]
        for fraction in sorted(set(scores[scores.task == task].fraction), reverse=True):
            lines.append(f"**{task}, {fraction:.0%} of the train labels**")
            lines.append("")
            head = "| method | head | layers | ms per 5 s (ORT) | " + " | ".join(cols)
            lines.append(head + f" | Δ {metric} vs FT | Δ > 0 |")
            lines.append("|" + "---|" * (len(cols) + 6))
            cell = summary[(summary.task == task) & (summary.fraction == fraction)]
            layers = scores.set_index(["method", "exit"])["layers"].to_dict()
            for method in METHODS:
                for e in head_order(cell[cell.method == method].exit.tolist()):
                    got = cell[(cell.method == method) & (cell.exit == e)].set_index("metric")
                    vals = [
                        fmt(got.at[c, "mean"], got.at[c, "sd"], int(got.at[c, "n"]))
                        if c in got.index
                        else "–"
                        for c in cols
                    ]
                    delta, pos = "", ""
                    if method == "self-distillation" and not psum.empty:
                        d = psum[
                            (psum.task == task)
                            & (psum.fraction == fraction)
                            & (psum.exit == e)
                            & (psum.metric == metric)
                        ]
                        if len(d):
                            d = d.iloc[0]
                            delta = f"{d['mean']:+.3f} ± " + (
                                f"{d['sd']:.3f}" if d["n"] > 1 else "–"
                            )
                            pos = f"{int(d['positive'])}/{int(d['n'])}"
                    t = ms.get((method, e))
                    lines.append(
                        f"| {method} | {e} | {layers.get((method, e), '')} | "
                        + (f"{t:.1f}" if t is not None else "–")
                        + " | "
                        + " | ".join(vals)
                        + f" | {delta} | {pos} |"
                    )
            lines.append("")
    md = "\n".join(lines)
    (out / "results.md").write_text(md + "\n")
    if lat is not None:
        plot(summary, lat, out / "accuracy_vs_ms.png", lines[0])
    if args.publish:
        import shutil

        docs = Path(__file__).resolve().parents[1] / "docs"
        (docs / "results" / "selfdistill-study").mkdir(parents=True, exist_ok=True)
        for name in ("results.md", "summary.csv", "paired.csv", "latency.csv", "scores.csv"):
            if (out / name).exists():
                shutil.copyfile(out / name, docs / "results" / "selfdistill-study" / name)
        if lat is not None:
            shutil.copyfile(
                out / "accuracy_vs_ms.png", docs / "img" / "selfdistill_study_uar_vs_ms.png"
            )
    return md


def pretraining_table(
    control: pd.DataFrame,
    pretrained: pd.DataFrame,
    *,
    names: tuple[str, str] = ("pretrained", "random init"),
) -> str:
    """Markdown: per task, label fraction, method and head, the ``pretrained`` and the ``control``
    score (mean ± sd over the seeds both have) and their per-seed difference (mean ± sd, seeds
    with ``pretrained`` ahead). ``names``: what the two columns are called (the random-init
    control by default; e.g. ("supervised", "self-supervised") for two pretrainings)."""
    first, second = names
    diffs = versus(pretrained, control)
    if diffs.empty:
        raise ValueError("the pretrained scores share no run (task, fraction, seed, method)")
    psum = paired_summary(diffs)
    lines = []
    for task in [t for t in ("classes", "adv") if t in set(diffs.task)]:
        metric = "uar" if task == "classes" else "ccc_mean"
        for fraction in sorted(set(diffs[diffs.task == task].fraction), reverse=True):
            cell = diffs[(diffs.task == task) & (diffs.fraction == fraction)]
            lines += [
                f"**{task}, {fraction:.0%} of the train labels, {metric}**",
                "",
                f"| method | head | {first} | {second} | Δ {first} − {second} | Δ > 0 |",
                "|---|---|---|---|---|---|",
            ]
            for method in METHODS:
                for e in head_order(cell[cell.method == method].exit.tolist()):
                    runs = cell[(cell.method == method) & (cell.exit == e)][KEY + ["exit"]]
                    vals = [t.merge(runs, on=[*KEY, "exit"])[metric] for t in (pretrained, control)]
                    d = psum[
                        (psum.task == task)
                        & (psum.fraction == fraction)
                        & (psum.method == method)
                        & (psum.exit == e)
                        & (psum.metric == metric)
                    ].iloc[0]
                    spread = f"{d['sd']:.3f}" if d["n"] > 1 else "–"
                    lines.append(
                        f"| {method} | {e} | "
                        + " | ".join(fmt(v.mean(), v.std(), len(v)) for v in vals)
                        + f" | {d['mean']:+.3f} ± {spread} | {int(d['positive'])}/{int(d['n'])} |"
                    )
            lines.append("")
    return "\n".join(lines)


def write_comparison(stem: Path, first: pd.DataFrame, second: pd.DataFrame, **table_kwargs) -> str:
    """``stem.csv`` (per seed, ``first`` minus ``second``, :func:`versus`) and ``stem.md``
    (:func:`pretraining_table`); returns the markdown."""
    versus(first, second).to_csv(stem.with_suffix(".csv"), index=False)
    md = pretraining_table(second, first, **table_kwargs)
    stem.with_suffix(".md").write_text(md + "\n")
    return md


def plot(summary: pd.DataFrame, lat: pd.DataFrame, path: Path, note: str) -> None:
    """UAR (mean ± sd over seeds) vs ONNX ms per 5 s; one line per label fraction."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    ms = {(r.method, r.exit): r.ms_per_5s for r in lat.itertuples()}
    s = summary[(summary.task == "classes") & (summary.metric == "uar")]
    for fraction, colour in zip(sorted(set(s.fraction), reverse=True), ("C0", "C1"), strict=False):
        cell = s[s.fraction == fraction]
        sd = cell[cell.method == "self-distillation"]
        order = [e for e in head_order(sd.exit.tolist()) if e != "fusion"]
        rows = sd.set_index("exit").loc[order]
        x = [ms[("self-distillation", e)] for e in order]
        ax.errorbar(
            x,
            rows["mean"],
            yerr=rows["sd"].fillna(0),
            fmt="o-",
            color=colour,
            capsize=3,
            label=f"self-distillation, {fraction:.0%} labels",
        )
        for e, xi, yi in zip(order, x, rows["mean"], strict=True):
            ax.annotate(e, (xi, yi), textcoords="offset points", xytext=(4, -10), fontsize=7)
        fu = sd[sd.exit == "fusion"]
        if len(fu):
            ax.errorbar(
                [ms[("self-distillation", "fusion")]],
                fu["mean"],
                yerr=fu["sd"].fillna(0),
                fmt="*",
                markersize=11,
                color=colour,
                capsize=3,
            )
        ft = cell[(cell.method == "fine-tuning") & (cell.exit == "deepest")]
        if len(ft):
            ax.errorbar(
                [ms[("fine-tuning", "deepest")]],
                ft["mean"],
                yerr=ft["sd"].fillna(0),
                fmt="s",
                markersize=8,
                mfc="none",
                color=colour,
                capsize=3,
                label=f"plain fine-tuning, {fraction:.0%} labels",
            )
    ax.axhline(1 / N_CLASSES, color="grey", linestyle=":", label="chance (1/5)")
    ax.set_xlabel("ms per 5 s clip (ONNX Runtime, 1 thread); ★ = fusion")
    ax.set_ylabel("UAR, 5 classes (mean ± sd over seeds)")
    ax.set_title(note[:110] + ("…" if len(note) > 110 else ""), fontsize=7)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=120)
    os.replace(tmp, path)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.publish and args.backbone != "backbone-synth":
        print(
            "error: --publish overwrites the backbone-synth study in docs/; "
            f"not for --backbone {args.backbone}",
            file=sys.stderr,
        )
        return 2
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "study.json").write_text(json.dumps(vars(args), indent=1) + "\n")
    scores_path, lat_path = out / "scores.csv", out / "latency.csv"
    scores = pd.read_csv(scores_path) if scores_path.exists() else None
    adv = [(int(c.split(":")[0]), float(c.split(":")[1])) for c in args.adv_cells.split(",") if c]
    runs = grid(
        [int(s) for s in args.seeds.split(",")], [float(f) for f in args.fractions.split(",")], adv
    )
    if args.only:
        runs = [r for r in runs if run_name(**r) in args.only.split(",")]
    if not args.report_only:
        pending = todo(runs, scores)
        print(f"{len(runs)} runs, {len(runs) - len(pending)} already scored", flush=True)
        for i, run in enumerate(pending):
            t0 = time.perf_counter()
            print(
                f"[{time.strftime('%H:%M:%S')}] {i + 1}/{len(pending)} {run_name(**run)}",
                flush=True,
            )
            block = train_and_score(args, out, run)
            scores = append_scores(scores_path, block)
            key = "uar" if run["task"] == "classes" else "ccc_mean"
            heads = ", ".join(f"{e} {v:.3f}" for e, v in zip(block.exit, block[key], strict=True))
            print(f"   {key}: {heads}  ({time.perf_counter() - t0:.0f} s)", flush=True)
        if wants_latency(args, out):
            lat = latency(args, out)
            lat.to_csv(lat_path, index=False)
            print(lat.to_string(index=False), flush=True)
    lat = pd.read_csv(lat_path, dtype={"exit": str}) if lat_path.exists() else None
    if scores is not None and len(scores):
        scores["exit"] = scores["exit"].astype(str)
        print(report(args, out, scores, lat))
        if args.pretrained_scores:  # this study is the random-init control
            pre = pd.read_csv(args.pretrained_scores, dtype={"exit": str})
            print(write_comparison(out / "pretraining", pre, scores))
        if args.baseline_scores:
            base = pd.read_csv(args.baseline_scores, dtype={"exit": str})
            this, _, that = args.names.partition(",")
            print(write_comparison(out / "versus", scores, base, names=(this, that or "baseline")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
