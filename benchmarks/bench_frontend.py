"""Front-end study for wav2small-paper: input variants × training budget → CCC and ms per 5 s.

Builds (or reuses) a small built-in corpus (pool + test), caches the shipped teacher's labels
once, distils each variant with the demo's recipe (cached whole-clip targets, CCC + MSE, one
torch thread per run, two runs at a time), scores every student on the test split against gold
and against the teacher, and times each fp32 and int8 ONNX export in ONNX Runtime (1 thread,
5 s, interleaved in one loop). Writes ``results.json``/``table.md`` under ``--out`` and, unless
``--no-docs``, the table into docs/DISTILL.md between the ``frontend-study`` markers. Finished
runs under ``--out`` are reused (a rerun resumes each run from its last checkpoint). Not part
of ``make bench``: the default runs are ≈ 50 min of one-thread training (two at a time).

    python benchmarks/bench_frontend.py [--runs dil27:1000 long:1000:3 trend:1000:whole ...]
    python benchmarks/bench_frontend.py --variants dil27 salience --steps 1000 2000
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

from wav2small import LABELS
from wav2small.models import PAPER_CONFIG, register_model
from wav2small.models.wav2small import Wav2Small, Wav2SmallConfig

ROOT = Path(__file__).resolve().parents[1]
PAPER = dict(frontend="pitch", width=68, pool=30, dilations=(1, 2, 4, 8))
SALIENCE = dict(frontend="pitch", width=63, pool=30, dilations=(1, 3, 9, 27), pitch_bins=48)
LONG = SALIENCE | dict(width=53, dilations=(1, 3, 9, 27, 81, 243))
#: The preset as it was measured in session 4 (trend pooling read linearly by the head, width
#: 68; no level or subharmonic row).
TREND = replace(PAPER_CONFIG, level=False, shr_fft=0, width=68, trend_gram=False)
#: name → (model config, what it tests). Registered at import so spawned workers see them.
VARIANTS: dict[str, tuple[Wav2SmallConfig, str]] = {
    "released": (
        Wav2SmallConfig(stem=13, width=16, head=128),
        "released input: n_fft 64 / hop 32, 26 mels, VGG7 at 500 frames/s, 128-unit head",
    ),
    "pitch-utterance": (
        Wav2SmallConfig(**PAPER, norm="utterance"),
        "pitch image (31 bins 62–1000 Hz from a 32 ms window + 12 mels to 8 kHz), hop 64, "
        "time-conv trunk at 250 frames/s; per-utterance normalisation",
    ),
    "pitch-local": (
        Wav2SmallConfig(**PAPER, norm="local", norm_frames=125),
        "the same with local normalisation (dB minus its mean over ±0.5 s)",
    ),
    "dil27": (
        replace(TREND, trend=0),
        "the former wav2small-paper preset: local normalisation, dilations 1, 3, 9, 27 (±164 ms)",
    ),
    "salience": (
        Wav2SmallConfig(**SALIENCE, norm="local", norm_frames=125),
        "+ a frozen pitch-salience layer (subharmonic summation onto 48 log-spaced pitches "
        "55–440 Hz, soft-argmax F0, voicing) as 50 more trunk inputs; width 63",
    ),
    "salience-norm2s": (
        Wav2SmallConfig(**SALIENCE, norm="local", norm_frames=500),
        "the same with a wider local normalisation (±2 s)",
    ),
    "long": (
        Wav2SmallConfig(**LONG, norm="local", norm_frames=125),
        "salience + two more dilated layers (dilations 1 … 243: each token sees ±1.46 s of "
        "trunk context, an utterance-scale F0 trend); width 53",
    ),
    "trend": (
        TREND,
        "dil27 + trend pooling (the slope over the clip of an 8-channel 1×1 map: "
        "order-aware, utterance-level; the corpus's valence is an utterance-scale F0 ramp)",
    ),
    "long64": (
        replace(TREND, n_fft=1024, width=65),
        "trend with a 64 ms low-band window (61 DFT bins 15.6 Hz apart, 62–1000 Hz: a "
        "period-doubled, 'rough' voice's subharmonics resolved); width 65, 72,890 parameters",
    ),
    "level": (
        replace(TREND, level=True),
        "trend + the level row (the local mean level that the normalisation removes): the "
        "preset of session 10",
    ),
    "shr": (
        replace(TREND, level=True, shr_fft=PAPER_CONFIG.shr_fft),
        "level + a subharmonic-to-harmonic row from a 64 ms band: the preset of sessions 11-13 "
        "(the trend read linearly by the head)",
    ),
    "paper": (
        PAPER_CONFIG,
        "the wav2small-paper preset: shr with the trend inside the head's Gram (products of each "
        "slope with the pooled features), width 67 (session 14)",
    ),
    "salience-trend": (
        Wav2SmallConfig(**SALIENCE, norm="local", norm_frames=125, trend=PAPER_CONFIG.trend),
        "salience + trend pooling (8 channels); width 63",
    ),
}
#: The study's (variant, steps) runs: what ``python benchmarks/bench_frontend.py`` reproduces.
DEFAULT_RUNS = [
    "dil27:1000",
    "salience:1000",
    "salience-norm2s:1000",
    "long:1000:3",
    "salience:2000",
    "salience-norm2s:2000",
    "trend:1000",
    "salience-trend:1000",
    "trend:2000",
    "dil27:1000:4",
    "trend:1000:4",
    "trend:1000:whole",
]
for _name, (_cfg, _) in VARIANTS.items():
    register_model(f"wav2small-study-{_name}", lambda c=_cfg: Wav2Small(c))


def _corpus(out: Path, n_pool: int, n_test: int, seed: int) -> dict[str, Path]:
    """Pool + test splits and the teacher's cached labels of both (reused when present)."""
    from wav2small.labels import label
    from wav2small.synth import generate
    from wav2small.teachers import load_teacher

    data = out / "corpus"
    paths = {}
    for split, n in (("pool", n_pool), ("test", n_test)):
        csv = data / f"{split}.csv"
        paths[split] = csv if csv.is_file() else generate(split, n, data, seed=seed, progress=True)
    teacher = None
    for split in ("pool", "test"):
        target = out / f"{split}_labels.parquet"
        if not target.is_file():
            teacher = teacher or load_teacher("synth")
            # the pool's embeddings: the FULL plan distils with embedding hints
            label(teacher, paths[split], target, teacher_name="synth", embeddings=split == "pool")
        paths[f"{split}_labels"] = target
    return paths


def _ms_per_5s(models: dict[str, Path], out: Path, repeats: int) -> dict[str, float]:
    """fp32 and int8 ONNX Runtime ms per 5 s (1 thread), interleaved in one loop."""
    import numpy as np

    from wav2small.bench import session
    from wav2small.export import export
    from wav2small.models import load_model

    sessions = {}
    for name, weights in models.items():
        report = export(load_model(weights), out / "onnx" / name, int8=True, gate_int8=False)
        sessions[f"{name} fp32"] = session(report.fp32_path)
        sessions[f"{name} int8"] = session(report.int8_path)
        sessions[f"{name} int8 KB"] = report.int8_bytes / 1024
    x = np.random.default_rng(0).normal(0, 0.1, (1, 80_000)).astype(np.float32)
    runs = {k: s for k, s in sessions.items() if not k.endswith("KB")}
    times: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(3):
        for s in runs.values():
            s.run(None, {"signal": x})
    for _ in range(repeats):
        for k, s in runs.items():
            t0 = time.perf_counter()
            s.run(None, {"signal": x})
            times[k].append(1000 * (time.perf_counter() - t0))
    result = {k: statistics.median(v) for k, v in times.items()}
    result |= {k: v for k, v in sessions.items() if k.endswith("KB")}
    return result


def main(argv: list[str] | None = None) -> int:
    from wav2small.demo import FULL, train_in_parallel
    from wav2small.evaluate import evaluate

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "bench_frontend")
    ap.add_argument(
        "--runs",
        nargs="+",
        default=DEFAULT_RUNS,
        metavar="VARIANT:STEPS[:CROP]",
        help="runs to train and score; CROP: seconds, or 'whole' for whole clips (each batch "
        f"padded to its longest) (default: the study's, {' '.join(DEFAULT_RUNS)})",
    )
    ap.add_argument(
        "--variants",
        nargs="+",
        choices=list(VARIANTS),
        help="instead of --runs: every variant × every --steps",
    )
    ap.add_argument("--steps", type=int, nargs="+", default=[FULL.distill_steps])
    ap.add_argument(
        "--crop-seconds",
        type=float,
        default=2.0,
        help="crop of runs that name none (default 2 s, the study's; the demo now trains on "
        "whole clips: 'VARIANT:STEPS:whole')",
    )
    ap.add_argument("--n-pool", type=int, default=FULL.n_pool)
    ap.add_argument("--n-test", type=int, default=FULL.n_test)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--seed", type=int, default=0, help="seed of the corpus (and of the runs)")
    ap.add_argument(
        "--seeds", type=int, nargs="+", help="train every run with each of these (default: --seed)"
    )
    ap.add_argument("--no-ms", action="store_true", help="skip the ONNX export and timing")
    ap.add_argument("--no-docs", action="store_true", help="do not update docs/DISTILL.md")
    args = ap.parse_args(argv)

    args.out.mkdir(parents=True, exist_ok=True)
    data = _corpus(args.out, args.n_pool, args.n_test, args.seed)
    plan = replace(FULL, crop_seconds=args.crop_seconds)
    if args.variants:
        runs = [(v, s, args.crop_seconds) for s in args.steps for v in args.variants]
    else:
        runs = [_parse_run(r, ap, args.crop_seconds) for r in args.runs]
    jobs, names = [], []
    for (variant, steps, crop), seed in itertools.product(runs, args.seeds or [args.seed]):
        cut = "whole" if crop is None else f"{crop:g}s"
        name = f"{variant} · {steps} steps · {'whole clips' if crop is None else f'{crop:g} s'}"
        name += f" · seed {seed}" if seed else ""
        # seed 0 keeps the study's former folder names (finished runs are reused)
        run = args.out / "runs" / (f"{variant}-{steps}-{cut}" + (f"-seed{seed}" if seed else ""))
        jobs.append(
            {
                "mode": "distill",
                "csv": data["pool"],
                "out": run,
                "plan": replace(plan, distill_steps=steps, crop_seconds=crop),
                "seed": seed,
                "teacher": "synth",
                "student": f"wav2small-study-{variant}",
                "labels": data["pool_labels"],
            }
        )
        names.append(name)
    t0 = time.perf_counter()
    train_in_parallel(jobs, workers=args.workers, foreground=False)
    train_s = time.perf_counter() - t0
    weights = {n: Path(j["out"]) / "best.safetensors" for n, j in zip(names, jobs, strict=True)}
    ev = evaluate(weights, data["test"], teacher=data["test_labels"])
    nan = float("nan")
    ms = (
        {f"{n} {k}": nan for n in names for k in ("fp32", "int8", "int8 KB")}
        if args.no_ms
        else _ms_per_5s(weights, args.out, args.repeats)
    )
    rows = []
    for n in names:
        gold, vs_t = ev.ccc(n, "gold"), ev.ccc(n, "teacher")
        teacher = ev.ccc("teacher", "gold")
        rows.append(
            {"variant": n}
            | {f"{k} gold": gold[k] for k in LABELS}
            | {f"{k} ×teacher": gold[k] / teacher[k] for k in LABELS}
            | {f"{k} vs teacher": vs_t[k] for k in LABELS}
            | {
                "fp32 ms/5 s": ms[f"{n} fp32"],
                "int8 ms/5 s": ms[f"{n} int8"],
                "int8 KB": ms[f"{n} int8 KB"],
            }
        )
    teacher = ev.ccc("teacher", "gold")
    result = {"teacher gold": teacher, "rows": rows, "train_seconds": train_s, "args": vars(args)}
    (args.out / "results.json").write_text(json.dumps(result, indent=2, default=str))
    table = _table(rows, teacher)
    (args.out / "table.md").write_text(table)
    print(table)
    if not args.no_docs:
        _write_docs(table)
    return 0


def _parse_run(
    text: str, ap: argparse.ArgumentParser, crop: float
) -> tuple[str, int, float | None]:
    """``"variant:steps[:crop seconds | whole]"`` → (variant, steps, crop; None: whole clips),
    or a one-line usage error."""
    parts = text.split(":")
    try:
        variant, steps = parts[0], int(parts[1])
        whole = len(parts) == 3 and parts[2] == "whole"
        crop = None if whole else float(parts[2]) if len(parts) == 3 else crop
        ok = variant in VARIANTS and steps >= 1 and (whole or crop > 0) and len(parts) <= 3
    except (IndexError, ValueError):
        ok = False
    if not ok:
        ap.error(
            f"--runs {text!r}: expected VARIANT:STEPS[:CROP] (CROP seconds or 'whole') with "
            f"VARIANT one of {list(VARIANTS)}"
        )
    return variant, steps, crop


def _table(rows: list[dict], teacher: dict) -> str:
    cols = list(rows[0])
    head = "| " + " | ".join(cols) + " |\n|" + "---|" * len(cols) + "\n"
    lines = [
        "| "
        + " | ".join(f"{r[c]:.3f}" if isinstance(r[c], float) else str(r[c]) for c in cols)
        + " |"
        for r in rows
    ]
    t = " / ".join(f"{teacher[k]:.3f}" for k in LABELS)
    return f"Teacher CCC vs gold (A / D / V): {t}\n\n" + head + "\n".join(lines) + "\n"


def _write_docs(table: str) -> None:
    doc = ROOT / "docs" / "DISTILL.md"
    text = doc.read_text()
    start, end = "<!-- frontend-study:start -->", "<!-- frontend-study:end -->"
    if start not in text:
        raise SystemExit(f"{doc}: no {start} marker")
    before, rest = text.split(start, 1)
    after = rest.split(end, 1)[1]
    doc.write_text(before + start + "\n" + table + end + after)
    print(f"wrote the table into {doc}")


if __name__ == "__main__":
    sys.exit(main())
