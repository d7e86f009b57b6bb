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

from wav2small import SAMPLE_RATE
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
    from wav2small.models import teacher as T

    model = T.Wav2Vec2Teacher(T.DAWN_ARCHITECTURE).eval()
    x = torch.from_numpy(
        np.random.default_rng(0).normal(0, 0.1, (1, 5 * SAMPLE_RATE)).astype(np.float32)
    )
    with torch.no_grad():
        ms = median_ms(lambda: model(x), repeats=5, warmup=1)
    return ms, count_parameters(model, trainable=False)


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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the quick demo plan")
    parser.add_argument("--demo-dir", default=str(ROOT / "runs" / "bench-demo"))
    parser.add_argument("--seed", type=int, default=0)
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

    from wav2small.demo import run_demo

    demo_dir = Path(args.demo_dir)
    code = run_demo(out=demo_dir, quick=args.quick, seed=args.seed)
    demo_rows = json.loads((demo_dir / "table.json").read_text())
    demo_report = (demo_dir / "report.md").read_text()

    command = f"python benchmarks/bench_results.py{' --quick' if args.quick else ''}"
    teacher_row = demo_rows[0]
    distilled = next(r for r in demo_rows if r["model"] == "distilled")
    ratio = {d: distilled[f"CCC {d} gold"] / teacher_row[f"CCC {d} gold"] for d in "ADV"}
    parts = [
        "# Results",
        "",
        f"Made by `{command}` (`make bench`), seed {args.seed}, on {platform.machine()} with "
        f"{os.cpu_count()} cores, {time.strftime('%Y-%m-%d')}; "
        f"{(time.perf_counter() - t0) / 60:.1f} minutes. Timings: 1 thread, medians, one run "
        "on a shared machine: read ratios, not absolute values.",
        "",
        "## Students (untrained weights: size, speed, memory)",
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
            ],
        ),
        "",
        f"Full-size Dawn architecture (wav2vec2-large-robust-12, {dawn_params:,} params, random "
        f"weights), torch, 1 thread: **{dawn_ms:,.0f} ms per 5 s** → int8 `wav2small-paper` is "
        f"**{dawn_ms / paper['int8 ms per 5 s']:,.0f}× faster** on the same CPU and thread "
        "count.",
        "",
        "## Targets",
        "",
        "| target | measured | met |",
        "|---|---|---|",
        f"| int8 wav2small-paper ≤ 120 KB | {paper['int8 KB']:.1f} KB | "
        f"{'yes' if paper['int8 KB'] <= 120 else 'no'} |",
        f"| ≤ 72K (± 2 %) parameters | {paper['params']:,} | "
        f"{'yes' if abs(paper['params'] - 72000) <= 1440 else 'no'} |",
        f"| ≥ 200× faster than Dawn | {dawn_ms / paper['int8 ms per 5 s']:,.0f}× | "
        f"{'yes' if dawn_ms / paper['int8 ms per 5 s'] >= 200 else 'no'} |",
        f"| ≤ 9 ms per 5 s, 1 thread | {paper['int8 ms per 5 s']:.1f} ms | "
        f"{'yes' if paper['int8 ms per 5 s'] <= 9 else 'no'} |",
        f"| RSS increase ≤ 9 MB for 5 s | {paper['int8 RSS+ MB']:.1f} MB | "
        f"{'yes' if paper['int8 RSS+ MB'] <= 9 else 'no'} |",
        f"| distilled ≥ 0.9× teacher CCC vs gold (A, D) | A {ratio['A']:.2f}×, D "
        f"{ratio['D']:.2f}× (V {ratio['V']:.2f}×) | "
        f"{'yes' if min(ratio['A'], ratio['D']) >= 0.9 else 'no'} |",
        f"| int8 vs fp32 CCC ≥ 0.99 | {distilled['int8 vs fp32 CCC (min)']:.4f} (min over "
        f"A/D/V) | {'yes' if distilled['int8 vs fp32 CCC (min)'] >= 0.99 else 'no'} |",
        "",
        "## The demo run (trained students)",
        "",
        demo_report.split("## Test split", 1)[1].replace("](", "](results/"),
    ]
    _copy_plots(demo_dir, Path(args.out).parent / "results")
    out = Path(args.out)
    tmp = out.with_suffix(".md.tmp")
    tmp.write_text("\n".join(parts), encoding="utf-8")
    os.replace(tmp, out)
    print(f"wrote {out}")
    return code


if __name__ == "__main__":
    raise SystemExit(main())
