"""MobileNet students at one small budget: CCC vs gold and teacher, and the prediction scale.

    .venv/bin/python benchmarks/bench_mobilenets.py --corpus runs/bench-demo/corpus \\
        --pool-labels runs/bench-demo/pool_labels.parquet --test-labels test_labels.parquet \\
        [--steps 300] [--students mobilenetv4-small mobilenetv3-large] [--out runs/bench_mobilenets]
        [--crop-seconds 2] [--lr 2e-3] [--image stem_stride=2,2 trend=0 level=1] [--tag NAME]

Each student is distilled with :func:`wav2small.demo.train_student` (the FULL plan with
``--steps``, ``--crop-seconds`` and ``--lr``: by default 8 × 2 s crops, lr 2e-3, CCC + MSE, the
recipe of docs/DISTILL.md's MobileNet tables; FULL itself now trains on whole clips)
on the cached teacher labels of ``corpus/pool.csv`` (the ``wav2small distill --labels`` path),
one at a time on one thread, then scored on ``corpus/test.csv``. ``--image`` overrides fields of
each preset's :class:`wav2small.models.mobilenet.MobileNetConfig` for a study. The table also
gives the seconds per training step (inflated on a shared machine). docs/DISTILL.md ("MobileNet
students") holds a run's table.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import fields, replace
from pathlib import Path

import torch

from wav2small import LABELS
from wav2small.models import mobilenet
from wav2small.models.mobilenet import TIMM_ARCHS


def parse_image(items: list[str]) -> dict:
    """``["hop=256", "stem_stride=2,1"]`` → the :class:`MobileNetConfig` fields to replace."""
    types = {f.name: f.type for f in fields(mobilenet.MobileNetConfig)}
    changes = {}
    for item in items:
        key, _, value = item.partition("=")
        if key not in types:
            raise SystemExit(f"--image: unknown field {key!r}; choose from {', '.join(types)}")
        if "tuple" in str(types[key]):
            changes[key] = tuple(int(v) for v in value.split(","))
        elif "bool" in str(types[key]):
            changes[key] = value.lower() in ("1", "true", "yes")
        else:
            changes[key] = float(value) if "float" in str(types[key]) else int(value)
    return changes


def measure(student: str, args) -> dict:
    """Distil ``student`` and score it; one row of the table."""
    from wav2small.demo import FULL, train_student
    from wav2small.evaluate import evaluate

    corpus = Path(args.corpus)
    plan = replace(
        FULL,
        distill_steps=args.steps,
        crop_seconds=args.crop_seconds or None,
        lr=args.lr,
    )
    out = Path(args.out) / (f"{student}-{args.tag}" if args.tag else student)
    started = time.perf_counter()
    result = train_student(
        "distill",
        corpus / "pool.csv",
        out,
        plan,
        seed=args.seed,
        teacher="synth",
        student=student,
        labels=Path(args.pool_labels),
        progress=False,
    )
    seconds = (time.perf_counter() - started) / max(1, result.global_step - result.start_step)
    ev = evaluate({student: result.weights}, corpus / "test.csv", teacher=args.test_labels)
    m = ev.metrics[ev.metrics.model == student].set_index("reference")
    pred = ev.predictions[student]

    def cells(values) -> str:
        return " / ".join(f"{v:.3f}" for v in values)

    return {
        "student": student + (f" ({args.tag})" if args.tag else ""),
        "vs gold": cells(m.loc["gold", list(LABELS)]),
        "vs teacher": cells(m.loc["teacher", list(LABELS)]),
        "prediction mean": cells(pred.mean(0)),
        "prediction std": cells(pred.std(0)),
        "s/step": f"{seconds:.2f}",
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", required=True, help="folder with pool.csv and test.csv")
    parser.add_argument("--pool-labels", required=True, help="`wav2small label` of pool.csv")
    parser.add_argument("--test-labels", required=True, help="the teacher's test labels")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--crop-seconds", type=float, default=2.0, help="0: whole clips")
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--students", nargs="+", default=list(TIMM_ARCHS))
    parser.add_argument("--image", nargs="*", default=[], help="MobileNetConfig field=value")
    parser.add_argument("--tag", default="", help="suffix of the run folder and row name")
    parser.add_argument("--out", default="runs/bench_mobilenets")
    args = parser.parse_args()
    torch.set_num_threads(1)
    changes = parse_image(args.image)
    for name in args.students:  # each preset's own config with the study's changes
        mobilenet.PRESET_CONFIGS[name] = replace(mobilenet.preset_config(name), **changes)
    rows = [measure(name, args) for name in args.students]
    columns = list(rows[0])
    print("| " + " | ".join(columns) + " |\n|" + "---|" * len(columns))
    for row in rows:
        print("| " + " | ".join(row[c] for c in columns) + " |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
