"""Size and speed of each Wav2Small preset against a Dawn-size teacher, measured in one run.

    .venv/bin/python benchmarks/bench_models.py [--presets wav2small-paper wav2small-tiny]
                                                [--rounds 7] [--no-profile] [--json out.json]

1. Exports a **Dawn-size teacher** to ONNX (``teachers.onnx.export_dawn_onnx``): transformers
   ``Wav2Vec2Model`` with Dawn's public architecture (``teachers.DAWN_ARCHITECTURE``,
   12 × 1024, SPEC §1.1), random weights, per-utterance normalisation → mean over time → head.
2. Exports every preset (fp32 + static int8, untrained weights: speed does not depend on them).
3. Times all of them on the same 5 s input, ONNX Runtime, 1 intra-op thread, **interleaved**:
   every round runs the teacher once and each student model ``--student-repeats`` times, so a
   busy machine slows all of them alike. Prints medians and the ratios (teacher ÷ student fp32,
   teacher ÷ student int8, int8 ÷ fp32): the targets are ≥ 200× and int8 ≤ fp32.
4. An ONNX Runtime profile per student model: where the time goes, by op type.

Also printed: trainable parameters, ONNX parameters, file sizes, tokens/s, the peak-RSS increase
of one run in a fresh process (``wav2small.bench.rss_increase_mb``) and int8-vs-fp32 CCC.
``--json`` also writes the figures to a file (``make bench`` passes one to bench_results.py,
which puts them in docs/RESULTS.md's targets table).
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from wav2small import SAMPLE_RATE
from wav2small.bench import onnx_parameters, profile_by_op, rss_increase_mb, session
from wav2small.export import export
from wav2small.inputs import write_text
from wav2small.models import count_parameters, create_model
from wav2small.models.wav2small import Wav2Small

SECONDS = 5.0
TARGET_VS_TEACHER = 200.0


def export_dawn(folder: Path) -> tuple[Path, int]:
    """Export the Dawn-size teacher (random weights) to ONNX; returns (model.onnx, parameters)."""
    from wav2small import teachers as T
    from wav2small.teachers.onnx import export_dawn_onnx

    torch.manual_seed(0)
    teacher = T.Wav2Vec2Teacher(T.DAWN_ARCHITECTURE).eval()
    with torch.no_grad():
        folder = export_dawn_onnx(teacher, folder)
    return Path(folder) / "model.onnx", count_parameters(teacher, trainable=False)


def interleaved_ms(paths: dict[str, Path], *, rounds: int, student_repeats: int) -> dict:
    """Median ms per 5 s of each model, timed interleaved round by round (1 thread each)."""
    x = np.random.default_rng(0).normal(0, 0.1, (1, int(SECONDS * SAMPLE_RATE)))
    x = x.astype(np.float32)
    sessions = {k: session(p, threads=1) for k, p in paths.items()}
    for s in sessions.values():  # warm-up
        s.run(None, {"signal": x})
    times: dict[str, list[float]] = {k: [] for k in sessions}
    for _ in range(rounds):
        for k, s in sessions.items():
            for _ in range(1 if k == "teacher" else student_repeats):
                t = time.perf_counter()
                s.run(None, {"signal": x})
                times[k].append(time.perf_counter() - t)
    return {k: 1000 * statistics.median(v) for k, v in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["wav2small-paper", "wav2small-tiny"])
    parser.add_argument("--rounds", type=int, default=7, help="teacher runs (interleaved)")
    parser.add_argument("--student-repeats", type=int, default=5, help="student runs per round")
    parser.add_argument("--no-profile", action="store_true", help="skip the op-type profiles")
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        print("exporting the Dawn-size teacher (random weights) to ONNX ...", flush=True)
        dawn, dawn_params = export_dawn(tmp / "dawn")
        paths, rows = {"teacher": dawn}, []
        for name in args.presets:
            torch.manual_seed(0)
            model = create_model(name)
            report = export(model, tmp / name, int8=True, gate_int8=False)
            paths[f"{name} fp32"], paths[f"{name} int8"] = map(
                Path, (report.fp32_path, report.int8_path)
            )
            tokens = model.tokens_per_second() if isinstance(model, Wav2Small) else float("nan")
            rows.append(
                {
                    "preset": name,
                    "trainable": count_parameters(model),
                    **onnx_parameters(report.fp32_path),
                    "fp32 KB": report.fp32_bytes / 1024,
                    "int8 KB": report.int8_bytes / 1024,
                    "tokens/s": tokens,
                    **{
                        f"int8 RSS+ MB {k}": v for k, v in rss_increase_mb(report.int8_path).items()
                    },
                    "int8 CCC vs fp32 (min)": min(report.int8_ccc.values()),
                }
            )
        print(f"timing {len(paths)} models interleaved ({args.rounds} rounds) ...", flush=True)
        ms = interleaved_ms(paths, rounds=args.rounds, student_repeats=args.student_repeats)
        profiles = {} if args.no_profile else {k: profile_by_op(p) for k, p in paths.items()}

    _table(rows)
    print(
        f"\n## Speed, ONNX Runtime, 1 thread, {SECONDS:g} s input, interleaved in one run "
        f"(medians: teacher {args.rounds} runs, students {args.rounds * args.student_repeats})\n"
    )
    teacher = ms["teacher"]
    print(
        f"Dawn-size teacher ({dawn_params / 1e6:.0f} M parameters, random weights): "
        f"{teacher:.0f} ms per {SECONDS:g} s"
    )
    print("\n| preset | fp32 ms | int8 ms | teacher ÷ fp32 | teacher ÷ int8 | int8 ÷ fp32 |")
    print("|---|---|---|---|---|---|")
    for name in args.presets:
        f, q = ms[f"{name} fp32"], ms[f"{name} int8"]
        print(
            f"| {name} | {f:.2f} | {q:.2f} | {teacher / f:.0f}× | {teacher / q:.0f}× | "
            f"{q / f:.2f} |"
        )
    for name in args.presets:
        f, q = ms[f"{name} fp32"], ms[f"{name} int8"]
        best = max(teacher / f, teacher / q)
        print(
            f"{name}: ≥ {TARGET_VS_TEACHER:.0f}× the teacher: "
            f"{'MET' if best >= TARGET_VS_TEACHER else 'NOT MET'} ({best:.0f}×); "
            f"int8 no slower than fp32: {'MET' if q <= f else 'NOT MET'} ({q / f:.2f})"
        )
    for key, ops in profiles.items():
        if key == "teacher":
            continue
        total = sum(ops.values())
        top = ", ".join(f"{op} {100 * us / total:.0f}%" for op, us in list(ops.items())[:6])
        print(f"profile {key}: {total / 1000:.2f} ms of kernels: {top}")
    if args.json:
        _write_json(args, rows, ms, dawn_params)
    print(
        "\nint8 CCC vs fp32 is for untrained weights (near-constant outputs): see the export "
        "gate on trained models. Ratios, not absolute times, carry over between machines."
    )


def _write_json(args, rows: list[dict], ms: dict[str, float], dawn_params: int) -> None:
    """The figures of this run: the teacher's ms and, per preset, its row, ms and ratios."""
    teacher = ms["teacher"]
    presets = {}
    for row in rows:
        f, q = ms[f"{row['preset']} fp32"], ms[f"{row['preset']} int8"]
        presets[row["preset"]] = row | {
            "fp32 ms": f,
            "int8 ms": q,
            "teacher / fp32": teacher / f,
            "teacher / int8": teacher / q,
            "int8 / fp32": q / f,
        }
    figures = {
        "command": "python benchmarks/bench_models.py "
        f"--presets {' '.join(args.presets)} --rounds {args.rounds} "
        f"--student-repeats {args.student_repeats}",
        "seconds": SECONDS,
        "rounds": args.rounds,
        "student_repeats": args.student_repeats,
        "teacher ms": teacher,
        "teacher params": dawn_params,
        "presets": presets,
    }
    write_text(args.json, json.dumps(figures, indent=2))
    print(f"wrote {args.json}")


def _table(rows: list[dict]) -> None:
    keys = list(rows[0])
    print("| " + " | ".join(keys) + " |")
    print("|" + "---|" * len(keys))
    for row in rows:
        cells = (f"{v:.1f}" if isinstance(v, float) else str(v) for v in row.values())
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
