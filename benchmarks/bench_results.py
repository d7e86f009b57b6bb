"""The paper's table on the built-in corpus → docs/RESULTS.md (issue: end to end).

    .venv/bin/python benchmarks/bench_results.py [--quick] [--demo-dir runs/bench-demo]

1. every student preset: parameters, int8 ONNX size, onnxruntime ms per 5 s (1 thread, median),
   peak-RSS increase (untrained weights: size and speed do not depend on them);
2. the full-size Dawn architecture (wav2vec2-large-robust-12, random weights) on the same CPU and
   thread count → the speed ratio to int8 Wav2Small;
3. the demo run (distilled vs labelled-only vs teacher; CCC on test and test-ood; int8 vs fp32).

Everything is measured in this run; RESULTS.md records the command and seed.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from wav2small import LABELS, SAMPLE_RATE
from wav2small.bench import median_ms, onnx_ms_per_clip, rss_increase_mb
from wav2small.export import export
from wav2small.models import count_parameters, create_model, list_models

ROOT = Path(__file__).resolve().parents[1]


def student_rows(out: Path) -> list[dict]:
    rows = []
    for name in list_models():
        torch.manual_seed(0)
        model = create_model(name)
        report = export(model, out / name, int8=True, gate_int8=False)
        rows.append(
            {
                "model": name,
                "params": count_parameters(model),
                "fp32 KB": report.fp32_bytes / 1024,
                "int8 KB": report.int8_bytes / 1024,
                "int8 ms per 5 s": onnx_ms_per_clip(report.int8_path),
                "fp32 ms per 5 s": onnx_ms_per_clip(report.fp32_path),
                "int8 RSS+ MB": rss_increase_mb(report.int8_path)["total"],
            }
        )
        print(rows[-1], flush=True)
    return rows


def dawn_ms_per_5s() -> tuple[float, int]:
    from wav2small import teachers as T

    model = T.Wav2Vec2Teacher(T.DAWN_ARCHITECTURE).eval()
    x = torch.from_numpy(
        np.random.default_rng(0).normal(0, 0.1, (1, 5 * SAMPLE_RATE)).astype(np.float32)
    )
    with torch.no_grad():
        ms = median_ms(lambda: model(x), repeats=5, warmup=1)
    return ms, count_parameters(model, trainable=False)


def _labels(teacher: str, csv: Path, out: Path) -> Path:
    """The teacher's outputs for every clip of ``csv`` (cached; resumable)."""
    from wav2small.labels import label
    from wav2small.teachers import load_teacher

    if not out.is_file():
        label(load_teacher(teacher), csv, out, teacher_name=teacher)
    return out


def _cells(values: dict[str, float]) -> str:
    return " / ".join(f"{values[k]:.3f}" for k in LABELS)


def all_students(demo_dir: Path, plan, seed: int, steps: int, workers: int) -> list[dict]:
    """Distil every student preset from the demo's pool with one budget; CCC on test."""
    from dataclasses import replace

    from wav2small.demo import TEACHER, ccc_columns, train_in_parallel
    from wav2small.evaluate import evaluate

    corpus = demo_dir / "corpus"
    labels = _labels(TEACHER, corpus / "pool.csv", demo_dir / "pool_labels.parquet")  # the demo's
    budget = replace(plan, distill_steps=steps)
    by_cost = sorted(list_models(), key=lambda n: -count_parameters(create_model(n)))
    jobs = [
        {
            "mode": "distill",
            "csv": corpus / "pool.csv",
            "out": demo_dir / "students" / name,
            "plan": budget,
            "seed": seed,
            "teacher": TEACHER,
            "student": name,
            "labels": labels,
        }
        for name in by_cost
    ]
    print(f"distilling {len(jobs)} students, {steps} steps each, {workers} processes", flush=True)
    results = train_in_parallel(jobs, workers=workers, foreground=False)
    models = {name: r.weights for name, r in zip(by_cost, results, strict=True)}
    ev = evaluate(models, corpus / "test.csv", teacher=TEACHER, progress=True)
    rows = [{"model": name} | ccc_columns(ev, name) for name in sorted(models)]
    for row in rows:
        print(row, flush=True)
    return rows


def noise_and_pool(demo_dir: Path, plan, seed: int, workers: int) -> str:
    """Distilled vs labelled-only at two rater-noise levels and two pool sizes (1× and 4× the
    labelled set; the demo's own pool is 2×).

    Rater noise: the corpus's default panel (5 raters, gold = their mean) and none
    (``wav2small synth --raters 0``: gold = the true labels). The audio does not depend on the
    panel, so the noise-free labelled set is the demo's train split with its ``*_true`` columns
    as gold, and the noise-free test reference is the test split's truth.
    """
    import pandas as pd

    from wav2small.demo import TEACHER, train_in_parallel
    from wav2small.evaluate import evaluate
    from wav2small.synth import generate

    corpus, n = demo_dir / "corpus", plan.n_train
    big = generate("pool", 4 * n, demo_dir / "corpus-pool", seed=seed, jobs=2, progress=True)
    one = big.with_name("pool-1x.csv")
    pd.read_csv(big).head(n).to_csv(one, index=False)
    clean = corpus / "train-raters0.csv"
    train = pd.read_csv(corpus / "train.csv")
    for k in LABELS:
        train[k] = train[f"{k}_true"]
    train.to_csv(clean, index=False)
    labels = _labels(TEACHER, big, big.with_name("pool_labels.parquet"))
    common = {"plan": plan, "seed": seed, "teacher": TEACHER}
    runs = {
        "distilled, pool 1×": {"mode": "distill", "csv": one, "labels": labels},
        "distilled, pool 4×": {"mode": "distill", "csv": big, "labels": labels},
        "labelled-only, no rater noise": {"mode": "train", "csv": clean},
    }
    jobs = [
        job | common | {"out": demo_dir / "compare" / name.replace(", ", "-").replace(" ", "_")}
        for name, job in runs.items()
    ]
    results = train_in_parallel(jobs, workers=workers, foreground=False)
    models = {name: r.weights for name, r in zip(runs, results, strict=True)}
    models["distilled, pool 2×"] = demo_dir / "distilled" / "best.safetensors"
    models["labelled-only"] = demo_dir / "labelled-only" / "best.safetensors"
    ev = evaluate(models, corpus / "test.csv", teacher=TEACHER, progress=True)
    columns = ["labelled-only", "distilled, pool 1×", "distilled, pool 2×", "distilled, pool 4×"]
    lines = [
        "| rater noise (training labels · test reference) | teacher | "
        + " | ".join(columns)
        + " |",
        "|---" * (len(columns) + 2) + "|",
    ]
    for noise, ref, baseline in (
        ("5 raters, default (rater mean · test gold)", "gold", "labelled-only"),
        ("none, `--raters 0` (truth · test truth)", "truth", "labelled-only, no rater noise"),
    ):
        cells = [ev.ccc("teacher", ref)] + [
            ev.ccc(baseline if c == "labelled-only" else c, ref) for c in columns
        ]
        lines.append(f"| {noise} | " + " | ".join(_cells(c) for c in cells) + " |")
    text = "\n".join(lines)
    print(text, flush=True)
    return text


def table(rows: list[dict], columns: list[str]) -> str:
    def fmt(v):
        if isinstance(v, float):
            return "—" if np.isnan(v) else (f"{v:.3f}" if abs(v) < 10 else f"{v:,.1f}")
        return f"{v:,}" if isinstance(v, int) else str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(c, float("nan"))) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def _copy_plots(demo_dir: Path, dest: Path) -> None:
    """Copy the demo's PNGs next to RESULTS.md (runs/ is not versioned)."""
    import shutil

    for png in demo_dir.rglob("*.png"):
        target = dest / png.relative_to(demo_dir)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(png, target)


def _target(ok: bool) -> str:
    return "yes" if ok else "no"


def _selfdistill_section(results_dir: Path) -> list[str]:
    """The self-distillation table of this ``make bench`` run (bench_selfdistill runs first)."""
    folder = ROOT / "runs" / "bench_selfdistill"
    if not (folder / "results.md").is_file():
        return ["Not measured in this run: run `python benchmarks/bench_selfdistill.py` first."]
    _copy_plots(folder, results_dir / "selfdistill")
    return [
        "`python benchmarks/bench_selfdistill.py` (run by `make bench` before this script): "
        "exits of a randomly initialised wav2vec2-style backbone (no pretrained weights exist "
        "offline), 5 synthetic emotion classes, chance UAR 0.20, one seed; milliseconds for "
        "5 s on one thread, backbone truncated after the exit. See docs/SELFDISTILL.md.",
        "",
        (folder / "results.md").read_text(encoding="utf-8").strip(),
        "",
        "![accuracy vs ms](results/selfdistill/accuracy_vs_ms.png)",
    ]


README_START = "<!-- results:start (written by benchmarks/bench_results.py) -->"
README_END = "<!-- results:end -->"


def update_readme(block: str, readme: Path = ROOT / "README.md") -> None:
    """Replace the results block of the README (between its markers) by ``block``."""
    text = readme.read_text(encoding="utf-8")
    head, rest = text.split(README_START, 1)
    _, tail = rest.split(README_END, 1)
    tmp = readme.with_suffix(".md.tmp")
    tmp.write_text(f"{head}{README_START}\n{block}\n{README_END}{tail}", encoding="utf-8")
    os.replace(tmp, readme)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the quick demo plan")
    parser.add_argument("--demo-dir", default=str(ROOT / "runs" / "bench-demo"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--student-steps", type=int, default=300, help="distillation steps of every student"
    )
    parser.add_argument("--workers", type=int, default=2, help="training processes")
    parser.add_argument("--out", default=str(ROOT / "docs" / "RESULTS.md"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(1)
    t0 = time.perf_counter()

    with tempfile.TemporaryDirectory() as tmp:
        students = student_rows(Path(tmp))
    dawn_ms, dawn_params = dawn_ms_per_5s()
    paper = next(r for r in students if r["model"] == "wav2small-paper")
    speedup = dawn_ms / paper["int8 ms per 5 s"]
    print(f"Dawn-size teacher: {dawn_ms:.0f} ms per 5 s; int8 paper student {speedup:.0f}× faster")

    from wav2small.demo import FULL, QUICK, run_demo
    from wav2small.report import plot_size_vs_ccc

    plan = QUICK if args.quick else FULL
    demo_dir = Path(args.demo_dir)
    code = run_demo(out=demo_dir, quick=args.quick, seed=args.seed, jobs=args.workers)
    demo_rows = json.loads((demo_dir / "table.json").read_text())
    demo_report = (demo_dir / "report.md").read_text()

    trained = {
        r["model"]: r
        for r in all_students(demo_dir, plan, args.seed, args.student_steps, args.workers)
    }
    for row in students:
        row |= trained.get(row["model"], {})
    results_dir = Path(args.out).parent / "results"
    plot_size_vs_ccc(
        [r for r in students if "CCC A gold" in r] + [{**demo_rows[0], "model": "teacher"}],
        results_dir / "students_size_vs_ccc.png",
    )
    comparison = noise_and_pool(demo_dir, plan, args.seed, args.workers)

    command = f"python benchmarks/bench_results.py{' --quick' if args.quick else ''}"
    teacher_row = demo_rows[0]
    distilled = next(r for r in demo_rows if r["model"] == "distilled")
    ratio = {d: distilled[f"CCC {d} gold"] / teacher_row[f"CCC {d} gold"] for d in "ADV"}
    int8_ccc = distilled["int8 vs fp32 CCC (min)"]
    demo_ms = distilled["ms per 5 s"]
    parts = [
        "# Results",
        "",
        f"Made by `{command}` (`make bench`, which runs the other benchmarks first), seed "
        f"{args.seed}, on {platform.machine()} with {os.cpu_count()} cores, "
        f"{time.strftime('%Y-%m-%d')}; {(time.perf_counter() - t0) / 60:.1f} minutes. "
        "Timings: 1 thread, medians, one run on a shared machine: read ratios, not absolute "
        "values. Everything below is printed by the same run.",
        "",
        "## Targets",
        "",
        "| target | measured | met |",
        "|---|---|---|",
        f"| int8 wav2small-paper ≤ 120 KB | {paper['int8 KB']:.1f} KB | "
        f"{_target(paper['int8 KB'] <= 120)} |",
        f"| 72K (± 2 %) parameters | {paper['params']:,} | "
        f"{_target(abs(paper['params'] - 72000) <= 1440)} |",
        f"| ≥ 200× faster than the Dawn-size teacher (1 thread) | {speedup:,.0f}× | "
        f"{_target(speedup >= 200)} |",
        f"| ≤ 9 ms per 5 s, 1 thread | {paper['int8 ms per 5 s']:.1f} ms (untrained export); "
        f"{demo_ms:.1f} ms (demo's distilled student) | "
        f"{_target(min(paper['int8 ms per 5 s'], demo_ms) <= 9)} |",
        f"| RSS increase ≤ 9 MB for 5 s | {paper['int8 RSS+ MB']:.1f} MB | "
        f"{_target(paper['int8 RSS+ MB'] <= 9)} |",
        f"| distilled ≥ 0.9× teacher CCC vs gold (A, D) | A {ratio['A']:.2f}×, D "
        f"{ratio['D']:.2f}× (V {ratio['V']:.2f}×) | "
        f"{_target(min(ratio['A'], ratio['D']) >= 0.9)} |",
        f"| int8 vs fp32 CCC ≥ 0.99 | {int8_ccc:.4f} (min over A/D/V) | "
        f"{_target(int8_ccc >= 0.99)} |",
        "",
        "## The demo run: distilled vs labelled-only vs teacher",
        "",
        demo_report.split("## Test split", 1)[1].split("## Plots", 1)[0].strip(),
        "",
        "## Rater noise × pool size",
        "",
        f"`wav2small-paper`, the demo's recipe ({plan.distill_steps} steps of "
        f"{plan.batch_size} × {plan.crop_seconds:g} s crops); {plan.n_train:,} labelled clips; "
        "pools of unlabelled clips 1×, 2× (the demo's) and 4× that; CCC on the "
        f"{plan.n_test}-clip test split, A / D / V. The distilled students never see a label "
        "(the shipped teacher learned from labels with the default rater noise), so only the "
        "labelled-only column is retrained without rater noise; the reference changes with the "
        "row. All runs have the same number of steps, so a larger pool means fewer passes over "
        "each clip, not more training.",
        "",
        comparison,
        "",
        "## Every student",
        "",
        f"Size and speed: untrained exports (they do not depend on the weights). CCC: each "
        f"student distilled from the demo's {plan.n_pool:,}-clip pool with cached teacher "
        f"targets for {args.student_steps} steps (the same budget for all; the demo's "
        "wav2small-paper above had more), on the test split.",
        "",
        table(
            students,
            [
                "model",
                "params",
                "fp32 KB",
                "int8 KB",
                "int8 ms per 5 s",
                "fp32 ms per 5 s",
                "int8 RSS+ MB",
                "CCC A gold",
                "CCC D gold",
                "CCC V gold",
                "CCC A teacher",
                "CCC D teacher",
            ],
        ),
        "",
        f"Full-size Dawn architecture (wav2vec2-large-robust-12, {dawn_params:,} params, random "
        f"weights), torch, 1 thread: **{dawn_ms:,.0f} ms per 5 s** → int8 `wav2small-paper` is "
        f"**{speedup:,.0f}× faster** on the same CPU and thread count.",
        "",
        "![students: size vs CCC](results/students_size_vs_ccc.png)",
        "",
        "## Self-distillation exits",
        "",
        *_selfdistill_section(results_dir),
        "",
        "## Plots of the demo run",
        "",
        demo_report.split("## Plots", 1)[1].strip().replace("](", "](results/"),
        "",
    ]
    _copy_plots(demo_dir, results_dir)
    out = Path(args.out)
    tmp = out.with_suffix(".md.tmp")
    text = "\n".join(parts)
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, out)
    print("\n" + text)
    print(f"wrote {out}")
    if not args.quick and out == ROOT / "docs" / "RESULTS.md":
        update_readme(
            "\n".join(
                [
                    f"`make bench`, {time.strftime('%Y-%m-%d')}, seed {args.seed}; test split of "
                    f"the built-in corpus ({plan.n_test} clips), CCC vs gold; students int8 ONNX, "
                    "teacher torch, 1 thread. "
                    "Full tables, targets met and missed, and plots: docs/RESULTS.md.",
                    "",
                    table(
                        demo_rows,
                        ["model", "params", "int8 KB", "ms per 5 s", "CCC A gold", "CCC D gold"]
                        + ["CCC V gold"],
                    ),
                    "",
                    f"Distilled ÷ teacher: A {ratio['A']:.2f}, D {ratio['D']:.2f}, V "
                    f"{ratio['V']:.2f}; int8 vs fp32 CCC ≥ {int8_ccc:.4f}; the full-size Dawn "
                    f"architecture takes {dawn_ms:,.0f} ms per 5 s on the same CPU and thread "
                    f"({speedup:,.0f}× the int8 student's {paper['int8 ms per 5 s']:.1f} ms).",
                ]
            )
        )
        print("updated README.md")
    return code


if __name__ == "__main__":
    raise SystemExit(main())
