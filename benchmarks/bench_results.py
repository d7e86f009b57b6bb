"""The paper's table on the built-in corpus → docs/RESULTS.md (issue: end to end).

    .venv/bin/python benchmarks/bench_results.py [--quick] [--demo-dir runs/bench-demo]
                                                 [--no-pool-study] [--figures runs/bench]

1. every student preset: parameters, int8 ONNX size, onnxruntime ms per 5 s (1 thread, median),
   peak-RSS increase (untrained weights: size and speed do not depend on them);
2. the demo run (distilled vs labelled-only vs teacher; CCC on test and test-ood; int8 vs fp32),
   every student distilled with one budget, and (unless ``--no-pool-study``) rater noise × pool
   size;
3. the targets table, with the speed ratios to the Dawn-size ONNX teacher (interleaved) and the
   bounded-memory and stream figures that ``make bench`` measured earlier in the same run
   (bench_models.py and bench_predict.py write them as JSON into ``--figures``), and the wall
   time of every benchmark script (``timings.json``, written by run_all.py).

Everything is measured in this ``make bench`` run; RESULTS.md records the commands and seed.
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

from wav2small import LABELS
from wav2small.bench import onnx_ms_per_clip, rss_increase_mb, stream_ratio
from wav2small.data import crops_text
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


def _labels(teacher: str, csv: Path, out: Path) -> Path:
    """The teacher's outputs and embeddings (the FULL plan's hints) for every clip of ``csv``
    (cached; resumable)."""
    from wav2small.labels import label
    from wav2small.teachers import load_teacher

    if not out.is_file():
        label(load_teacher(teacher), csv, out, teacher_name=teacher, embeddings=True)
    return out


def _cells(values: dict[str, float]) -> str:
    return " / ".join(f"{values[k]:.3f}" for k in LABELS)


def all_students(demo_dir: Path, plan, seed: int, steps: int, workers: int) -> list[dict]:
    """Distil every student preset from the demo's pool with one budget, export each (int8 with
    the parity gate, as ``wav2small export``) and score the shipped file on test through
    ``wav2small predict``'s path."""
    from dataclasses import replace

    from wav2small.demo import TEACHER, ccc_columns, score_shipped, train_in_parallel
    from wav2small.export import load_calibration_clips
    from wav2small.inputs import read_manifest
    from wav2small.models import load_model

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
    # the demo's calibration: the pool's first 96 clips (72 calibrate int8, 24 check it)
    pool = read_manifest(corpus / "pool.csv").head(96)
    calibration = load_calibration_clips(pool["path"].tolist())
    shipped, gates = {}, {}
    for name, result in zip(by_cost, results, strict=True):
        report = export(
            load_model(result.weights),
            demo_dir / "students" / name / "export",
            int8=True,
            calibration=calibration,
        )
        print(report.summary(), flush=True)
        shipped[name] = report.int8_path if report.passed else report.fp32_path
        gates[name] = {
            "shipped file": Path(shipped[name]).name,
            "int8 vs fp32 CCC (min)": min(report.int8_ccc.values()),
        }
    ev = score_shipped(shipped, corpus / "test.csv", teacher=TEACHER, progress=True)
    rows = [{"model": name} | gates[name] | ccc_columns(ev, name) for name in sorted(shipped)]
    for row in rows:
        print(row, flush=True)
    return rows


def with_ratios(rows: list[dict], teacher: dict) -> list[dict]:
    """Rows with ``A × teacher`` … added: each CCC vs gold ÷ the teacher's (rows without CCC
    stay as they are)."""
    out = []
    for row in rows:
        ratios = {
            f"{d} × teacher": row[f"CCC {d} gold"] / teacher[f"CCC {d} gold"]
            for d in "ADV"
            if f"CCC {d} gold" in row
        }
        out.append(row | ratios)
    return out


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


#: The committed table and plot of the last seed study (benchmarks/study_selfdistill.py, hours of
#: CPU: not run by ``make bench``); RESULTS.md quotes them, labelled as such.
STUDY_TABLE = ROOT / "docs" / "results" / "selfdistill-study" / "results.md"
STUDY_PLOT = "img/selfdistill_study_uar_vs_ms.png"
#: The committed random-init control of that study (``study_selfdistill.py --pretrained-scores``).
CONTROL_TABLE = ROOT / "docs" / "results" / "selfdistill-control" / "pretraining.md"
#: The committed supervised-pretraining comparison (``study_selfdistill.py --baseline-scores``).
SUPERVISED_TABLE = ROOT / "docs" / "results" / "selfdistill-supervised" / "versus.md"


def study_section(
    table: Path = STUDY_TABLE, control: Path = CONTROL_TABLE, supervised: Path = SUPERVISED_TABLE
) -> list[str]:
    """The seed study's committed table and, when committed, its random-init control and the
    supervised-pretraining comparison (none measured by this ``make bench`` run), or nothing."""
    if not table.is_file():
        return []
    extra = []
    if control.is_file():
        extra = [
            "",
            "The same recipe on a random-init twin of the backbone (the control; docs/"
            'SELFDISTILL.md, "Does pretraining help the exits?"), committed as '
            f"`docs/results/selfdistill-control/{control.name}`:",
            "",
            control.read_text(encoding="utf-8").strip(),
        ]
    if supervised.is_file():
        extra += [
            "",
            "The same recipe on a backbone pretrained *supervised* (the same architecture and "
            "random init fine-tuned on the gold A/D/V of the same pool clips, `make "
            'backbone-supervised`; docs/SELFDISTILL.md, "Supervised or self-supervised '
            'pretraining?"), against backbone-synth, committed as '
            f"`docs/results/selfdistill-supervised/{supervised.name}`:",
            "",
            supervised.read_text(encoding="utf-8").strip(),
        ]
    return [
        "",
        "### Self-distillation study: three seeds, 10 % labels, A/D/V (not run by `make bench`)",
        "",
        "`python benchmarks/study_selfdistill.py` (docs/SELFDISTILL.md, \"The paper's claims on "
        'backbone-synth"); the table of its last run, committed as '
        "`docs/results/selfdistill-study/results.md`, is quoted here unchanged. Latency: ONNX "
        "Runtime, one thread.",
        "",
        table.read_text(encoding="utf-8").strip(),
        "",
        f"![UAR vs ms per 5 s, three seeds]({STUDY_PLOT})",
        *extra,
    ]


def _selfdistill_section(results_dir: Path) -> list[str]:
    """The self-distillation table of this ``make bench`` run (bench_selfdistill runs first),
    then the seed study's committed table (:func:`study_section`)."""
    folder = ROOT / "runs" / "bench_selfdistill"
    if not (folder / "results.md").is_file():
        return [
            "Not measured in this run: run `python benchmarks/bench_selfdistill.py` first.",
            *study_section(),
        ]
    _copy_plots(folder, results_dir / "selfdistill")
    return [
        "`python benchmarks/bench_selfdistill.py` (run by `make bench` before this script): "
        "self-distillation vs plain fine-tuning of the backbone named under the table (by "
        "default `backbone-synth`, pretrained on the corpus's unlabelled audio), 5 synthetic "
        "emotion classes, chance UAR 0.20, one seed; milliseconds for 5 s on one thread (torch), "
        "backbone truncated after the exit. Three seeds, 10 % labels, A/D/V and ONNX timings: "
        "the study in docs/SELFDISTILL.md (`benchmarks/study_selfdistill.py`).",
        "",
        (folder / "results.md").read_text(encoding="utf-8").strip(),
        "",
        "![accuracy vs ms](results/selfdistill/accuracy_vs_ms.png)",
        *study_section(),
    ]


def _backbone_section(results_dir: Path) -> list[str]:
    """The linear probe of the shipped pretrained backbone (bench_backbone runs first)."""
    folder = ROOT / "runs" / "bench_backbone"
    if not (folder / "results.md").is_file():
        return ["Not measured in this run: run `python benchmarks/bench_backbone.py` first."]
    _copy_plots(folder, results_dir / "backbone")
    return [
        "`python benchmarks/bench_backbone.py` (run by `make bench` before this script): the "
        "shipped `backbone-synth` (`wav2small pretrain`, docs/SELFDISTILL.md) against a "
        "random-init backbone of the same config; per encoder layer, frozen features averaged "
        "over time, ridge read-out of A/D/V (CCC) and of the 5 emotion classes (UAR, chance "
        "0.20), fit on synthetic train clips, scored on test clips.",
        "",
        (folder / "results.md").read_text(encoding="utf-8").strip(),
        "",
        "![probe per layer](results/backbone/probe.png)",
    ]


FIGURES = ROOT / "runs" / "bench"


def load_figures(folder: Path) -> dict[str, dict]:
    """The JSON figures earlier scripts of this ``make bench`` run wrote into ``folder``
    (``models``, ``predict``, ``timings``); a missing file is simply absent."""
    found = {}
    for name in ("models", "predict", "timings"):
        path = folder / f"{name}.json"
        if path.is_file():
            found[name] = json.loads(path.read_text(encoding="utf-8"))
    return found


def _row(target: str, measured: str, ok: bool | None) -> str:
    return f"| {target} | {measured} | {'—' if ok is None else _target(ok)} |"


def speed_rows(models: dict | None) -> list[str]:
    """Targets measured by bench_models.py: ratios to the Dawn-size ONNX teacher, int8 ÷ fp32."""
    if not models or "wav2small-paper" not in models["presets"]:
        return [
            _row(
                "≥ 200× the Dawn-size teacher; int8 no slower than fp32",
                "not measured in this run (bench_models.py)",
                None,
            )
        ]
    p = models["presets"]["wav2small-paper"]
    return [
        _row(
            "≥ 200× faster than the Dawn-size teacher (ONNX Runtime, 1 thread, interleaved)",
            f"int8 {p['teacher / int8']:,.0f}×, fp32 {p['teacher / fp32']:,.0f}× "
            f"(teacher {models['teacher ms']:,.0f} ms, int8 {p['int8 ms']:.2f} ms, "
            f"fp32 {p['fp32 ms']:.2f} ms per 5 s)",
            p["teacher / int8"] >= 200,
        ),
        _row(
            "int8 no slower than fp32",
            f"int8 ÷ fp32 = {p['int8 / fp32']:.2f}",
            p["int8 / fp32"] <= 1,
        ),
    ]


def memory_rows(predict: dict | None) -> list[str]:
    """Targets measured by bench_predict.py: bounded memory, no torch, streams."""
    if not predict:
        return [
            _row("bounded memory, streams", "not measured in this run (bench_predict.py)", None)
        ]
    rss = predict["rss"]
    worst = max(r["load_predict"] for r in rss.values())
    stream = predict["stream"]
    ratio = stream_ratio(stream)  # the issue: "within 1.5× of one offline pass"
    return [
        _row(
            "peak RSS of `load(int8).predict(file)` above a started ONNX Runtime ≤ 9 MB, "
            "whatever the length",
            ", ".join(f"{k} {r['load_predict']:.1f} MB" for k, r in rss.items()),
            worst <= 9,
        ),
        _row(
            "the ONNX path imports no torch",
            "torch imported: " + ("yes" if any(r["torch"] for r in rss.values()) else "no"),
            not any(r["torch"] for r in rss.values()),
        ),
        _row(
            "a stream of 20 ms chunks at a 4 ms step costs ≤ 1.5× one whole-file pass and "
            "equals the offline timeline within 1e-4",
            f"{ratio:.2f}× one pass ({stream['stream'] / stream['offline timeline']:.2f}× the "
            f"offline timeline), max abs. difference {stream['max diff']:.1e}, latency ≤ "
            f"{stream['latency']:.1f} s",
            ratio <= 1.5 and stream["max diff"] <= 1e-4,
        ),
    ]


def speed_memory_section(figures: dict) -> list[str]:
    """The speed/memory tables of bench_models.py and bench_predict.py, as measured."""
    lines = []
    models, predict = figures.get("models"), figures.get("predict")
    if models:
        lines += [
            f"`{models['command']} --json …` (`make bench`): ONNX Runtime, 1 thread, "
            f"{models['seconds']:g} s input; every round runs the Dawn-size teacher "
            f"(wav2vec2-large-robust-12, {models['teacher params']:,} parameters, random weights, "
            "exported to ONNX in this run) once and each student model "
            f"{models['student_repeats']} times, {models['rounds']} rounds: medians, so a busy "
            "machine slows all of them alike.",
            "",
            "| preset | int8 KB | fp32 ms | int8 ms | teacher ÷ fp32 | teacher ÷ int8 | "
            "int8 ÷ fp32 |",
            "|---|---|---|---|---|---|---|",
        ]
        for name, p in models["presets"].items():
            lines.append(
                f"| {name} | {p['int8 KB']:.1f} | {p['fp32 ms']:.2f} | {p['int8 ms']:.2f} | "
                f"{p['teacher / fp32']:,.0f}× | {p['teacher / int8']:,.0f}× | "
                f"{p['int8 / fp32']:.2f} |"
            )
        lines.append("")
    if predict:
        s = predict["stream"]
        lines += [
            f"`{predict['command']} --json …` (`make bench`), {predict['model']}: peak RSS "
            "(VmHWM) of `wav2small.load(model).predict(file)` in a fresh process, above an ONNX "
            "Runtime session it started first:",
            "",
            "| file | load + predict MB | load MB | predict MB | torch imported |",
            "|---|---|---|---|---|",
            *(
                f"| {k} | {r['load_predict']:.1f} | {r['load']:.1f} | {r['predict']:.1f} | "
                f"{'yes' if r['torch'] else 'no'} |"
                for k, r in predict["rss"].items()
            ),
            "",
            f"Timeline at a 4 ms step over {s['seconds']:g} s ({s['rows']} rows), process CPU "
            f"seconds, interleaved: offline {s['offline timeline']:.2f}, stream of 20 ms chunks "
            f"{s['stream']:.2f} ({s['stream'] / s['offline timeline']:.2f}× the offline "
            f"timeline, {stream_ratio(s):.2f}× one whole-file pass, the median of the rounds' "
            f"ratios); max |stream − "
            f"offline| {s['max diff']:.1e}; stated latency ≤ {s['latency']:.2f} s"
            + (f" ({s['chunk tokens']} tokens per trunk call)." if s.get("chunk tokens") else "."),
            "",
        ]
        if s.get("trade-off"):
            lines += [
                "Latency against CPU: the same stream with other tokens per trunk call "
                "(`chunk_tokens`; each call recomputes the receptive field as overlap):",
                "",
                "| tokens per trunk call | stated latency s | stream ÷ one pass |",
                "|---|---|---|",
                *(
                    f"| {t['chunk tokens']}{' (default)' if t.get('default') else ''} | "
                    f"{t['latency']:.2f} | {stream_ratio(s, t):.2f} |"
                    for t in sorted(
                        [
                            *s["trade-off"],
                            {
                                "chunk tokens": s.get("chunk tokens") or 0,
                                "latency": s["latency"],
                                "stream": s["stream"],
                                "÷ one pass": stream_ratio(s),
                                "default": True,
                            },
                        ],
                        key=lambda t: t["chunk tokens"],
                    )
                ),
                "",
            ]
    return lines or [
        "Not measured in this run: run `make bench` (bench_models.py and "
        "bench_predict.py with `--json`)."
    ]


def timings_section(timings: dict | None) -> list[str]:
    """Wall time of every script of this ``make bench`` run (run_all.py's timings.json)."""
    if not timings:
        return ["Not recorded: run through `make bench` (benchmarks/run_all.py)."]
    rows = [
        f"| {name} | {' '.join(t['args']) or '(defaults)'} | {t['seconds'] / 60:.1f}"
        + (" (earlier run) |" if t.get("earlier run") else " |")
        for name, t in timings["scripts"].items()
    ]
    return [
        "Wall time of each script of this `make bench` run (this script's own time is in the "
        "first paragraph), with the budget it ran with:",
        "",
        "| script | arguments | minutes |",
        "|---|---|---|",
        *rows,
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
    parser.add_argument(
        "--no-pool-study", action="store_true", help="skip rater noise × pool size (3 trainings)"
    )
    parser.add_argument("--workers", type=int, default=2, help="training processes")
    parser.add_argument("--figures", type=Path, default=FIGURES, help="JSON of earlier scripts")
    parser.add_argument("--out", default=str(ROOT / "docs" / "RESULTS.md"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    figures = load_figures(args.figures)

    with tempfile.TemporaryDirectory() as tmp:
        students = student_rows(Path(tmp))
    paper = next(r for r in students if r["model"] == "wav2small-paper")

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
    students = with_ratios(students, demo_rows[0])
    results_dir = Path(args.out).parent / "results"
    plot_size_vs_ccc(
        [r for r in students if "CCC A gold" in r] + [{**demo_rows[0], "model": "teacher"}],
        results_dir / "students_size_vs_ccc.png",
    )
    if args.no_pool_study:
        comparison = (
            "Not run in this `make bench` (budget: `--no-pool-study`); "
            "`python benchmarks/bench_results.py` without it adds this table (three more "
            "trainings, a 4× pool to synthesise and label)."
        )
    else:
        comparison = noise_and_pool(demo_dir, plan, args.seed, args.workers)

    command = (
        "python benchmarks/bench_results.py"
        + (" --quick" if args.quick else "")
        + (" --no-pool-study" if args.no_pool_study else "")
        + (f" --student-steps {args.student_steps}" if args.student_steps != 300 else "")
    )
    teacher_row = demo_rows[0]
    distilled = next(r for r in demo_rows if r["model"] == "distilled")
    ratio = {d: distilled[f"CCC {d} gold"] / teacher_row[f"CCC {d} gold"] for d in "ADV"}
    int8_ccc = distilled["int8 vs fp32 CCC (min)"]
    demo_ms = distilled["ms per 5 s"]
    models = figures.get("models")
    speed = (models or {}).get("presets", {}).get("wav2small-paper")
    parts = [
        "# Results",
        "",
        f"Made by `make bench` (benchmarks/run_all.py: every benchmark script, one after the "
        f"other, then `{command}`), seed {args.seed}, on {platform.machine()} with "
        f"{os.cpu_count()} cores, {time.strftime('%Y-%m-%d')}; this script "
        f"{(time.perf_counter() - t0) / 60:.1f} minutes. Timings: 1 thread, medians, one run: "
        "read ratios measured interleaved, not absolute values. Everything below is printed by "
        "the same `make bench` run"
        + (
            ", except the figures of the scripts marked (earlier run) in the last table "
            "(`run_all.py --only` re-ran the others; those figures are from the run before)."
            if any(
                t.get("earlier run")
                for t in (figures.get("timings") or {}).get("scripts", {}).values()
            )
            else "."
        ),
        "",
        "## Targets",
        "",
        "| target | measured | met |",
        "|---|---|---|",
        _row(
            "int8 wav2small-paper ≤ 120 KB", f"{paper['int8 KB']:.1f} KB", paper["int8 KB"] <= 120
        ),
        _row(
            "72K (± 2 %) parameters", f"{paper['params']:,}", abs(paper["params"] - 72000) <= 1440
        ),
        *speed_rows(models),
        _row(
            "≤ 9 ms per 5 s, 1 thread (the paper's figure on its CPU)",
            (f"{speed['int8 ms']:.1f} ms interleaved (untrained export); " if speed else "")
            + f"{demo_ms:.1f} ms (demo's distilled student, timed alone)",
            min(speed["int8 ms"] if speed else np.inf, demo_ms) <= 9,
        ),
        *memory_rows(figures.get("predict")),
        _row(
            "distilled ≥ 0.9× teacher CCC vs gold (A, D)",
            f"A {ratio['A']:.2f}×, D {ratio['D']:.2f}× (V {ratio['V']:.2f}×)",
            min(ratio["A"], ratio["D"]) >= 0.9,
        ),
        _row(
            "int8 vs fp32 CCC ≥ 0.99 (export gate: the worse of ONNX Runtime's default and "
            "BASIC levels)",
            f"{int8_ccc:.4f} (min over A/D/V)",
            int8_ccc >= 0.99,
        ),
        "",
        "## Speed and memory",
        "",
        *speed_memory_section(figures),
        "## The demo run: distilled vs labelled-only vs teacher",
        "",
        demo_report.split("## Test split", 1)[1].split("## Plots", 1)[0].strip(),
        "",
        "## Rater noise × pool size",
        "",
        f"`wav2small-paper`, the demo's recipe ({plan.distill_steps} steps of "
        f"{plan.batch_size} × {crops_text(plan.crop_seconds)}); {plan.n_train:,} labelled clips; "
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
        f"Size and speed: untrained exports (they do not depend on the weights), each timed "
        f"alone (not interleaved). CCC: each student distilled from the demo's "
        f"{plan.n_pool:,}-clip pool with cached teacher targets for {args.student_steps} steps "
        "(the same budget for all; the demo's wav2small-paper above had more), exported with "
        "the parity gate and scored as shipped (`shipped file`: int8 with 8-bit activations, "
        "`model.int8-a16.onnx` where only 16-bit activations passed the gate, fp32 where int8 "
        "failed it) through `wav2small predict`'s path on the test split; × teacher: CCC vs gold "
        "÷ the teacher's CCC vs gold.",
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
                "shipped file",
                "int8 vs fp32 CCC (min)",
                "CCC A gold",
                "CCC D gold",
                "CCC V gold",
                "A × teacher",
                "D × teacher",
                "V × teacher",
                "CCC A teacher",
                "CCC D teacher",
            ],
        ),
        "",
        "int8 RSS+ MB: peak-RSS increase of one 5 s run in a fresh process, ONNX Runtime's own "
        "first-session cost (≈ 8.5 MB) included; the bounded-memory figures above exclude it.",
        "",
        "![students: size vs CCC](results/students_size_vs_ccc.png)",
        "",
        "## The pretrained backbone: linear probe",
        "",
        *_backbone_section(results_dir),
        "",
        "## Self-distillation exits",
        "",
        *_selfdistill_section(results_dir),
        "",
        "## Time of each benchmark",
        "",
        *timings_section(figures.get("timings")),
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
        speed_text = (
            f"the Dawn-size teacher exported to ONNX takes {models['teacher ms']:,.0f} ms per 5 s "
            f"in ONNX Runtime on the same CPU and thread, timed interleaved: the int8 student "
            f"({speed['int8 ms']:.2f} ms) is {speed['teacher / int8']:,.0f}× faster, fp32 "
            f"{speed['teacher / fp32']:,.0f}×"
            if speed
            else "speed ratios: not measured in this run"
        )
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
                    f"{ratio['V']:.2f}; int8 vs fp32 CCC ≥ {int8_ccc:.4f}; {speed_text}.",
                ]
            )
        )
        print("updated README.md")
    return code


if __name__ == "__main__":
    raise SystemExit(main())
