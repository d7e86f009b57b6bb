"""Self-distillation benchmark: per-exit accuracy vs latency against plain fine-tuning.

The paper's comparison (Ren et al. 2023, SPEC §2) on the built-in synthetic corpus: the same
backbone is trained twice with the same command, seed, data and steps — once with exits
(self-distillation) and once with no exits (plain fine-tuning, the baseline). Each exit is then
scored on the synthetic ``test`` split (new speakers and texts): UAR of the 5-class ``emotion``
column, milliseconds for one 5 s clip (torch, one thread, backbone truncated after the exit,
median) and parameters used.

The default backbone is ``backbone-synth``, the shipped backbone pretrained self-supervised on
the corpus's unlabelled ``pool`` split (``wav2small pretrain``; 8 layers, hidden 128, 1.87M
parameters), with exits after layers 2, 4 and 6 and the recipe of the seed study
(``benchmarks/study_selfdistill.py``, docs/SELFDISTILL.md): 300 steps of 8 crops of 1.5 s, Adam
lr 3e-4 with 5 % warm-up and cosine decay, no validation split (the last weights). One seed
here: the spread over seeds and the 10 %-label regime are the study's. ``--backbone
random:wav2vec2-mini --exits 3,8,10 --steps 1000 --lr 5e-4 --warmup-steps 100 --scheduler
constant`` is the earlier random-init run (docs/SELFDISTILL.md). The two runs train side by
side, one thread each, so they see the same machine conditions; latency is measured afterwards,
alone, with one thread.

Writes ``OUT/results.csv``, ``OUT/results.md`` (the table) and ``OUT/accuracy_vs_ms.png``.

Run: ``nice .venv/bin/python benchmarks/bench_selfdistill.py [--steps 300 --train 480 ...]``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

RUNS = {"self-distillation": "2,4,6", "fine-tuning": "none"}
N_CLASSES = 5  # the synthetic corpus's emotion classes


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/bench_selfdistill")
    p.add_argument("--backbone", default="backbone-synth")
    p.add_argument("--exits", default="2,4,6")
    p.add_argument("--train", type=int, default=480, help="synthetic train clips")
    p.add_argument("--test", type=int, default=300, help="synthetic test clips")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--crop-seconds", type=float, default=1.5)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--warmup-steps", type=float, default=0.05, help="steps, or a fraction if < 1")
    p.add_argument("--scheduler", choices=["cosine", "constant"], default="cosine")
    p.add_argument(
        "--val-fraction",
        type=float,
        default=0.0,
        help="held-out train share picking the best checkpoint; 0: the last weights",
    )
    p.add_argument("--repeats", type=int, default=10, help="timed runs per exit")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--jobs", type=int, default=2, help="corpus generation workers")
    p.add_argument(
        "--eval-only",
        action="store_true",
        help="re-measure the existing runs in OUT (no corpus generation, no training)",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="smoke test: tiny backbone, exits 1,2,3, 24 steps, few clips",
    )
    args = p.parse_args()
    if args.quick:
        args.backbone, args.exits, args.steps, args.train, args.test = (
            "random:wav2vec2-tiny",
            "1,2,3",
            24,
            64,
            32,
        )
        args.warmup_steps = 4
    RUNS["self-distillation"] = args.exits
    return args


def corpus(args, root: Path) -> tuple[Path, Path]:
    """Generate (or reuse) the synthetic train and test splits."""
    from wav2small.synth import generate

    paths = []
    for split, n in (("train", args.train), ("test", args.test)):
        t0 = time.perf_counter()
        paths.append(generate(split, n, root, seed=args.seed, jobs=args.jobs, progress=False))
        print(f"corpus {split}: {n} clips in {time.perf_counter() - t0:.0f} s", flush=True)
    return paths[0], paths[1]


def train_both(args, train_csv: Path, out: Path) -> dict[str, Path]:
    """Both runs side by side (one thread each); returns run folders."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    procs, folders = {}, {}
    for name, exits in RUNS.items():
        folder = out / name
        folders[name] = folder
        cmd = [
            sys.executable,
            "-m",
            "wav2small.cli",
            "selfdistill",
            "--backbone",
            args.backbone,
            "--data",
            str(train_csv),
            "--task",
            "classes",
            "--exits",
            exits,
            "--out",
            str(folder),
            "--max-steps",
            str(args.steps),
            "--batch-size",
            str(args.batch_size),
            "--crop-seconds",
            str(args.crop_seconds),
            "--lr",
            str(args.lr),
            "--warmup-steps",
            str(args.warmup_steps),
            "--scheduler",
            args.scheduler,
            "--val-fraction",
            str(args.val_fraction),
            "--seed",
            str(args.seed),
            "--threads",
            "1",
            "--no-progress",
        ]
        folder.mkdir(parents=True, exist_ok=True)
        log = (folder / "train.log").open("w")
        procs[name] = (subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT), log)
        print("$ " + " ".join(cmd[2:]), flush=True)
    for name, (proc, log) in procs.items():
        code = proc.wait()
        log.close()
        if code:
            sys.exit(f"{name} training failed (exit {code}); see {folders[name] / 'train.log'}")
    return folders


def evaluate(folders: dict[str, Path], test_csv: Path, repeats: int) -> pd.DataFrame:
    from wav2small.models.exits import load_exits_model
    from wav2small.selfdistill import evaluate_exits

    tables = []
    for name, folder in folders.items():
        model = load_exits_model(folder / "best.safetensors")
        table = evaluate_exits(model, test_csv, repeats=repeats, threads=1, progress=False)
        table.insert(0, "method", name)
        tables.append(table)
    return pd.concat(tables, ignore_index=True)


def markdown(table: pd.DataFrame) -> str:
    lines = [
        "| method | exit | layers | params (M) | ms per 5 s | UAR | accuracy |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in table.itertuples():
        lines.append(
            f"| {r.method} | {r.exit} | {r.layers} | {r.params / 1e6:.2f} | "
            f"{r.ms_per_5s:.0f} | {r.uar:.3f} | {r.accuracy:.3f} |"
        )
    return "\n".join(lines)


def plot(table: pd.DataFrame, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    sd = table[table.method == "self-distillation"]
    layers = sd[sd.exit != "fusion"]
    ax.plot(layers.ms_per_5s, layers.uar, "o-", label="self-distillation exits")
    for r in sd.itertuples():
        ax.annotate(r.exit, (r.ms_per_5s, r.uar), textcoords="offset points", xytext=(4, 4))
    fusion = sd[sd.exit == "fusion"]
    ax.plot(fusion.ms_per_5s, fusion.uar, "*", markersize=12, label="self-distillation fusion")
    base = table[table.method == "fine-tuning"]
    ax.plot(base.ms_per_5s, base.uar, "s", markersize=9, label="plain fine-tuning (deepest)")
    ax.axhline(1 / N_CLASSES, color="grey", linestyle=":", label="chance (1/5)")
    ax.set_xlabel("ms per 5 s clip (torch, 1 CPU thread)")
    ax.set_ylabel("UAR (5 classes, synthetic test split)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=120)
    os.replace(tmp, path)


def main() -> int:
    args = parse_args()
    out = Path(args.out)
    started = time.perf_counter()
    if args.eval_only:
        test_csv, folders = out / "corpus" / "test.csv", {name: out / name for name in RUNS}
    else:
        train_csv, test_csv = corpus(args, out / "corpus")
        t0 = time.perf_counter()
        folders = train_both(args, train_csv, out)
        print(f"training (both runs in parallel): {time.perf_counter() - t0:.0f} s", flush=True)
    table = evaluate(folders, test_csv, args.repeats)
    tmp = out / "results.csv.tmp"
    table.to_csv(tmp, index=False)
    os.replace(tmp, out / "results.csv")
    md = markdown(table)
    init = "random init" if args.backbone.startswith("random:") else "pretrained"
    best = "best on validation" if args.val_fraction else "last weights"
    note = (
        f"{args.backbone} ({init}), exits {args.exits}, {args.steps} steps x {args.batch_size} "
        f"crops of {args.crop_seconds:g} s, Adam lr {args.lr:g} ({args.scheduler}), {best}, "
        f"seed {args.seed}, synthetic corpus {args.train} train / "
        f"{args.test} test clips (corpus seed {args.seed}); "
        + ("re-measured (--eval-only) " if args.eval_only else "")
        + f"total {time.perf_counter() - started:.0f} s"
    )
    (out / "results.md").write_text(md + "\n\n" + note + "\n")
    plot(table, out / "accuracy_vs_ms.png", f"{args.backbone}, {args.steps} steps")
    print(md)
    print(note)
    print(f"table {out / 'results.md'}, plot {out / 'accuracy_vs_ms.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
