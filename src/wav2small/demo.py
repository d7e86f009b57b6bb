"""The end-to-end job on the built-in corpus (``make demo`` / ``wav2small demo``).

Stages, each with progress, all artefacts in one run folder:

1. synthesise train / pool / test / test-ood splits of the built-in corpus;
2. load the small synthetic-world teacher (a package asset; ``make teacher`` rebuilds it);
3. the teacher labels the unlabelled pool once (``pool_labels.parquet``: its whole-clip outputs);
4. distil ``wav2small-paper`` on the pool's audio with those targets only and, at the same time
   in a second process, train the same student on the labelled train split's rater-mean labels
   (the baseline) with the same recipe; one torch thread each;
5. export both students to ONNX fp32 + int8 with the parity gate; measure size, RAM, speed;
6. score what ships: the exported int8 files (the fp32 file where int8 failed its gate) on test
   and test-ood through :class:`wav2small.infer.Predictor` — the one inference path of
   ``wav2small predict`` — against gold, truth and the teacher, whose own outputs come from the
   one teacher-inference helper (as in ``wav2small label``); the model cards get these scores;
7. predict the A/D/V timeline of a long example file with the int8 student;
8. print the paper-style table and write report.md with plots.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from wav2small import LABELS, SAMPLE_RATE
from wav2small.config import DemoOptions

log = logging.getLogger(__name__)

STUDENT = "wav2small-paper"
TEACHER = DemoOptions.teacher


@dataclass(frozen=True)
class DemoPlan:
    """Sizes of one demo run."""

    n_train: int
    n_pool: int
    n_test: int
    n_ood: int
    distill_steps: int
    train_steps: int
    batch_size: int
    crop_seconds: float | None  # None: whole clips, each batch padded to its longest
    lr: float
    long_file_clips: int
    mse_weight: float = 1.0  # CCC loss + MSE: without it a student's outputs can blow up early
    # embedding hints (distilled student only): its pooled features also regress the teacher's
    # embedding, stored with the pool's labels (docs/DISTILL.md, "Embedding hints")
    hint_weight: float = 3.0


# Budgets: FULL ≤ 15 min and QUICK ≤ 3 min on 2 cores. Training runs on ONE thread: on a shared
# 2-core machine a second torch thread makes steps 3-14× slower whenever another job runs.
# FULL trains on whole clips (each batch padded to its longest, clips batched by length): the
# corpus's valence is an utterance-scale F0 ramp, and a crop cannot show what its whole-clip
# label describes. TimeConv's Conv1d path halved the step, which pays for whole clips at the
# former 2,000 × 2 s steps' time; measured (docs/DISTILL.md): test valence 0.145 → 0.327.
# 3,000 steps each (session 14; the two students train in parallel, so the baseline's equal budget
# costs no wall time): with the trend read inside the Gram, test valence 0.486 / 0.489 at 2,000
# steps → 0.510 / 0.516 at 3,000 (two seeds); `make demo` 12.9 min idle (9.2 at 2,000).
FULL = DemoPlan(
    n_train=1000,
    n_pool=2000,
    n_test=300,
    n_ood=200,
    distill_steps=3000,
    train_steps=3000,
    batch_size=8,
    crop_seconds=None,
    lr=2e-3,
    long_file_clips=16,
)
QUICK = DemoPlan(
    n_train=160,
    n_pool=320,
    n_test=80,
    n_ood=60,
    distill_steps=200,
    train_steps=200,
    batch_size=8,
    crop_seconds=2.0,
    lr=2e-3,
    long_file_clips=6,
)


class _Stages:
    """Prints numbered stage headers with elapsed time."""

    def __init__(self, total: int) -> None:
        self.total, self.n, self.t0 = total, 0, time.perf_counter()

    def __call__(self, title: str) -> None:
        self.n += 1
        print(
            f"\n[{self.n}/{self.total}] {title}  (t = {time.perf_counter() - self.t0:.0f} s)",
            flush=True,
        )


def _synthesise(out: Path, plan: DemoPlan, seed: int, jobs: int) -> dict[str, Path]:
    from wav2small.synth import generate

    sizes = {
        "train": plan.n_train,
        "pool": plan.n_pool,
        "test": plan.n_test,
        "test-ood": plan.n_ood,
    }
    return {
        split: generate(split, n, out, seed=seed, jobs=jobs, progress=True)
        for split, n in sizes.items()
    }


def train_student(
    mode: str,
    csv: Path,
    out: Path,
    plan: DemoPlan,
    *,
    seed: int,
    teacher: str,
    student: str = STUDENT,
    labels: Path | None = None,
    progress: bool = True,
    log_file: Path | None = None,
):
    """Distil (``mode="distill"``, from ``csv``'s audio) or train on ``csv``'s gold labels with
    the plan's recipe; a rerun continues from the run folder's last checkpoint.

    Distillation uses ``labels`` (the teacher's cached outputs from ``wav2small label``) when
    given, else runs ``teacher`` on every crop.

    With ``log_file``, this process's output (fd 1 and 2) goes there: for a worker process.
    """
    import torch

    from wav2small.train import fit, resolve_config

    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        sink = open(log_file, "a", encoding="utf-8")  # noqa: SIM115 - lives as long as the worker
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
    torch.set_num_threads(1)
    steps = plan.distill_steps if mode == "distill" else plan.train_steps
    settings = {
        "mode": mode,
        "student": student,
        "out": str(out),
        "seed": seed,
        "max_steps": steps,
        "batch_size": plan.batch_size,
        "crop_seconds": plan.crop_seconds or 0,  # 0: whole clips (None would mean "default")
        "lr": plan.lr,
        "mse_weight": plan.mse_weight,
        "num_workers": 0,
        "warmup_steps": max(1, steps // 20),
        "val_fraction": 0.05,
        "val_every": max(1, steps // 4),
        "progress": progress,
        "resume": "last" if (out / "last.ckpt").is_file() else None,  # a rerun continues
    }
    if mode == "distill":
        settings |= {"teacher": teacher, "audio": str(csv)}
        if labels is not None:
            settings |= {"targets": "cached", "labels": str(labels)}
            settings |= {"hint_weight": plan.hint_weight}
    else:
        settings |= {"data": str(csv)}
    return fit(resolve_config(settings))


def train_in_parallel(jobs: list[dict], *, workers: int, foreground: bool = True) -> list:
    """Run :func:`train_student` for each keyword set in up to ``workers`` processes of one
    thread each; results in the order of ``jobs``.

    With ``foreground``, the first job runs in this process with its progress bar and the others
    in ``workers - 1`` spawned processes; without, all run in ``workers`` spawned processes and
    a line is printed per finished run (in the order of ``jobs``). A spawned run logs to
    ``<out>.log``.
    """
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    if workers <= 1 or len(jobs) == 1:
        return [train_student(**job) for job in jobs]
    here = jobs[:1] if foreground else []
    away = jobs[len(here) :]
    ctx = mp.get_context("spawn")
    with ProcessPoolExecutor(workers - len(here), mp_context=ctx) as pool:
        futures = [
            pool.submit(train_student, **job, progress=False, log_file=Path(f"{job['out']}.log"))
            for job in away
        ]
        results = [train_student(**job) for job in here]
        for job, future in zip(away, futures, strict=True):
            results.append(future.result())
            if not foreground:
                print(f"  trained {job['out']} ({results[-1].global_step} steps)", flush=True)
        return results


def _train_teacher(train_csv: Path, out: Path, seed: int, minutes: float) -> Path:
    from wav2small.teacher_train import TrainConfig, train_teacher

    cfg = TrainConfig(
        data=str(train_csv),
        out=str(out),
        epochs=15,
        max_minutes=minutes,
        seed=seed,
        threads=1,
        resume=True,
    )
    result = train_teacher(cfg)
    print(
        f"teacher: best epoch {result.best_epoch}, validation CCC "
        + " / ".join(f"{v:.3f}" for v in result.best_ccc.values())
    )
    return result.out


def _long_file(test_csv: Path, out: Path, n_clips: int) -> Path:
    """Concatenate test clips (with 0.5 s gaps) into one long example file."""
    import soundfile as sf

    from wav2small.audio import read_audio
    from wav2small.inputs import atomic_write, read_manifest

    rows = read_manifest(test_csv).head(n_clips)
    gap = np.zeros(SAMPLE_RATE // 2, dtype=np.float32)
    parts = []
    for path in rows["path"]:
        parts += [read_audio(path), gap]

    with atomic_write(out) as tmp:
        sf.write(tmp, np.concatenate(parts), SAMPLE_RATE, subtype="PCM_16")
    return out


@dataclass
class Shipped:
    """One exported student: its table row (size, speed, gate), model, export report, card."""

    row: dict
    model: object
    report: object
    card: dict


def _export_student(
    name: str, weights: Path, out: Path, calibration: list[np.ndarray], card: dict
) -> Shipped:
    """Export ``weights`` to ``out`` (fp32 + int8, parity gate, a card without scores yet) and
    measure the shipped int8 file's size, RAM and speed."""
    from wav2small.bench import onnx_ms_per_clip, rss_increase_mb
    from wav2small.card import run_facts
    from wav2small.export import export
    from wav2small.models import count_parameters, load_model
    from wav2small.models.wav2small import Wav2Small

    model = load_model(weights)
    card = {"facts": run_facts(weights), **card}
    report = export(model, out, int8=True, calibration=calibration, card=card)
    print(report.summary())
    row = {
        "model": name,
        "params": count_parameters(model),
        "int8 KB": report.int8_bytes / 1024,
        "extra RAM MB": rss_increase_mb(report.int8_path)["total"],
        "tokens/s": model.tokens_per_second() if isinstance(model, Wav2Small) else float("nan"),
        "ms per 5 s": onnx_ms_per_clip(report.int8_path),
        "int8 vs fp32 CCC (min)": min(report.int8_ccc.values()),
        "parity gate": "passed" if report.passed else "FAILED",
        "int8": report.int8_path,
        # a model that failed its gate is renamed *.rejected: the timeline uses what passed
        "shipped": report.int8_path if report.passed else report.fp32_path,
    }
    return Shipped(row, model, report, card)


def score_shipped(
    shipped: dict[str, str | os.PathLike], data: str | os.PathLike, *, teacher, progress: bool
):
    """Evaluate the exported ONNX files ``shipped`` (name → file) on ``data``: their
    predictions are :meth:`wav2small.infer.Predictor.predict`'s (``wav2small predict``'s) for
    those very files; the teacher's come from its one inference helper.

    A file that failed its gate (``*.rejected``) is still scored as ONNX, so the table shows
    what the export produced; the table's ``parity gate`` column says it failed.
    """
    from wav2small.evaluate import evaluate
    from wav2small.infer import Predictor

    models = {name: Predictor(path, backend="onnx") for name, path in shipped.items()}
    return evaluate(models, data, teacher=teacher, progress=progress)


def _teacher_row(teacher) -> dict:
    import torch

    from wav2small.bench import median_ms
    from wav2small.models import count_parameters

    x = torch.from_numpy(
        np.random.default_rng(0).normal(0, 0.1, (1, 5 * SAMPLE_RATE)).astype(np.float32)
    )
    with torch.no_grad():
        ms = median_ms(lambda: teacher(x), repeats=10)
    return {
        "model": "teacher (torch)",
        "params": count_parameters(teacher, trainable=False),
        "int8 KB": float("nan"),
        "extra RAM MB": float("nan"),
        "tokens/s": float("nan"),
        "ms per 5 s": ms,
    }


def ccc_columns(ev, model: str) -> dict:
    """Table columns ``CCC A gold`` … (and ``CCC A teacher`` … for students) of one model."""
    gold = ev.ccc(model, "gold")
    row = {f"CCC {k[0].upper()} gold": gold[k] for k in LABELS}
    if model != "teacher":
        vs_t = ev.ccc(model, "teacher")
        row |= {f"CCC {k[0].upper()} teacher": vs_t[k] for k in LABELS}
    return row


def _card_metrics(evals: dict, model: str) -> dict[str, dict[str, float]]:
    return {
        f"{split} ({len(ev.files)} clips) · {ref}": ev.ccc(model, ref)
        for split, ev in evals.items()
        for ref in ("gold", "teacher")
    }


def _card_data(plan: DemoPlan, model: str) -> str:
    if model == "distilled":
        return (
            f"built-in synthetic corpus (espeak-ng, docs/SYNTH.md): {plan.n_pool} unlabelled "
            "pool clips, teacher outputs only"
        )
    return (
        f"built-in synthetic corpus (espeak-ng, docs/SYNTH.md): {plan.n_train} labelled train "
        "clips, rater-mean labels"
    )


def _table(rows: list[dict], columns: list[str]) -> str:
    def fmt(v):
        if isinstance(v, float):
            return "—" if np.isnan(v) else (f"{v:.3f}" if abs(v) < 10 else f"{v:.1f}")
        return str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(c, float("nan"))) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def run_demo(
    *,
    out: str | os.PathLike = DemoOptions.out,
    quick: bool = False,
    seed: int = DemoOptions.seed,
    jobs: int = DemoOptions.jobs,
    teacher: str = TEACHER,
    plan: DemoPlan | None = None,
    train_teacher_minutes: float | None = None,
) -> int:
    """Run the whole demo; returns a process exit code (0 when every gate passed).

    Args:
        out: run folder (reruns resume: finished clips and checkpoints are kept).
        quick: the small plan (≈ 3 minutes) instead of the full one.
        seed: the one seed of corpus, crops and weights.
        jobs: processes for corpus synthesis and for training the two students side by side.
        teacher: teacher name or folder (default: the built-in synthetic-world teacher).
        plan: sizes and budgets overriding ``quick`` (for tests and benchmarks).
        train_teacher_minutes: instead of loading ``teacher``, train a new synthetic-world
            teacher on the labelled train split for at most this many minutes (15 epochs at
            most) and distil from it. The shipped teacher had 12,000 clips and 25 minutes.
    """
    import torch

    from wav2small.infer import Predictor
    from wav2small.labels import label
    from wav2small.report import plot_size_vs_ccc, plot_timeline
    from wav2small.teachers import load_teacher

    torch.set_num_threads(1)
    plan = plan or (QUICK if quick else FULL)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    stage = _Stages(8)
    t_start = time.perf_counter()

    stage(
        f"synthesise the built-in corpus ({plan.n_train} train, {plan.n_pool} pool, "
        f"{plan.n_test} test, {plan.n_ood} test-ood clips)"
    )
    csv = _synthesise(out / "corpus", plan, seed, jobs)

    if train_teacher_minutes is None:
        stage(
            f"load the teacher '{teacher}'"
            + (" (package asset; `make teacher` rebuilds it)" if teacher == TEACHER else "")
        )
    else:
        stage(
            f"train a teacher on the {plan.n_train} labelled clips "
            f"(≤ {train_teacher_minutes:g} min, ≤ 15 epochs)"
        )
        teacher = str(_train_teacher(csv["train"], out / "teacher", seed, train_teacher_minutes))
    teacher_name, teacher = teacher, load_teacher(teacher)

    stage("the teacher labels the unlabelled pool once (its outputs are the students' targets)")
    labelled = label(
        teacher,
        csv["pool"],
        out / "pool_labels.parquet",
        teacher_name=teacher_name,
        embeddings=plan.hint_weight > 0,
    )
    print(f"{labelled.out}: {labelled.rows} clips ({labelled.speed:.0f} audio-s/s)")

    stage(
        f"train the students: distil {STUDENT} from the unlabelled pool (teacher outputs only, "
        f"{plan.distill_steps} steps) and train it on the labelled split's rater-mean labels "
        f"({plan.train_steps} steps)"
        + (" in a second process (log: labelled-only.log)" if jobs > 1 else "")
    )
    common = {"plan": plan, "seed": seed, "teacher": teacher_name}
    distilled, baseline = train_in_parallel(
        [
            {
                "mode": "distill",
                "csv": csv["pool"],
                "out": out / "distilled",
                "labels": out / "pool_labels.parquet",
                **common,
            },
            {"mode": "train", "csv": csv["train"], "out": out / "labelled-only", **common},
        ],
        workers=jobs,
    )

    stage("export int8 ONNX (parity gate), measure size, RAM and speed")
    from wav2small.export import load_calibration_clips, write_card_files
    from wav2small.inputs import read_manifest

    pool = read_manifest(csv["pool"]).head(96)  # 72 calibrate int8, 24 check its fidelity
    calibration = load_calibration_clips(pool["path"].tolist())
    models = {"distilled": distilled.weights, "labelled-only": baseline.weights}
    exported = {
        name: _export_student(
            name, weights, out / "export" / name, calibration, {"data": _card_data(plan, name)}
        )
        for name, weights in models.items()
    }

    stage(
        "score what ships: the exported ONNX students on test and test-ood through "
        "`wav2small predict`'s path (CCC vs gold, truth and teacher)"
    )
    shipped = {name: e.row["shipped"] for name, e in exported.items()}
    for name, path in shipped.items():
        print(f"{name}: {path}")
    evals = {}
    for split in ("test", "test-ood"):
        evals[split] = score_shipped(shipped, csv[split], teacher=teacher, progress=True)
        evals[split].save(out / "eval" / split)
        print(f"\n{split}:\n{evals[split].table()}")
    for name, e in exported.items():  # the cards get the shipped files' scores
        card = e.card | {"metrics": _card_metrics(evals, name)}
        write_card_files(e.model, out / "export" / name, report=e.report, card=card)
    rows = [_teacher_row(teacher) | ccc_columns(evals["test"], "teacher")]
    rows += [e.row | ccc_columns(evals["test"], name) for name, e in exported.items()]

    stage("predict the A/D/V timeline of a long example file with the int8 student")
    long_wav = _long_file(csv["test"], out / "long_example.wav", plan.long_file_clips)
    if rows[1]["shipped"] != rows[1]["int8"]:
        print(f"the int8 model failed its gate; the timeline uses {rows[1]['shipped']}")
    predictor = Predictor(rows[1]["shipped"], backend="onnx")
    timeline = predictor.timeline(long_wav, step=0.5, context=4.0)
    timeline.to_csv(out / "long_example_timeline.csv")
    plot_timeline(timeline, out / "timeline.png", title="long example, distilled int8 student")

    stage("report")
    columns = [
        "model",
        "params",
        "int8 KB",
        "extra RAM MB",
        "tokens/s",
        "ms per 5 s",
        "CCC A gold",
        "CCC D gold",
        "CCC V gold",
        "CCC A teacher",
        "CCC D teacher",
        "CCC V teacher",
        "int8 vs fp32 CCC (min)",
    ]
    table = _table(rows, columns)
    plot_size_vs_ccc(rows, out / "size_vs_ccc.png")
    minutes = (time.perf_counter() - t_start) / 60
    _write_report(out, plan, seed, table, evals, rows, minutes)
    print("\n" + table)
    print(f"\nAll artefacts in {out}/ (report.md). {minutes:.1f} min.")
    return 0 if all(r.get("parity gate", "passed") == "passed" for r in rows) else 1


def _cue_section(evals: dict) -> list[str]:
    """Report lines: which hidden controls each model's valence follows (r per control), per split
    (the corpus's label weights are in docs/SYNTH.md; all three dimensions in eval/*/cues.png)."""
    parts = []
    for split, ev in evals.items():
        if ev.cues is None:
            continue
        rows = ev.cues[ev.cues["dimension"] == "valence"].drop(columns="dimension")
        controls = list(rows.columns[1:])
        parts += [
            f"## What the models' valence follows on {split}",
            "",
            "Pearson r of predicted valence with each hidden control of the corpus (`gold`: the "
            "labels' own r). A student that copies its teacher hears the same cues; r near 0 "
            "where the teacher's is not means a cue the student has not learned.",
            "",
            "| model | " + " | ".join(controls) + " |",
            "|---|" + "---|" * len(controls),
        ]
        for _, row in rows.iterrows():
            cells = " | ".join(f"{row[c]:.2f}" for c in controls)
            parts.append(f"| {row['model']} | {cells} |")
        parts.append("")
    return parts


def _write_report(
    out: Path,
    plan: DemoPlan,
    seed: int,
    table: str,
    evals: dict,
    rows: list,
    minutes: float,
) -> None:
    from wav2small.data import crops_text

    command = {FULL: "make demo", QUICK: "make demo QUICK=1"}.get(plan, f"run_demo(plan={plan})")
    parts = [
        "# wav2small demo report",
        "",
        f"Command: `{command}` (seed {seed}); {minutes:.1f} minutes on this machine.",
        "",
        f"Corpus: {plan.n_train} labelled train clips, {plan.n_pool} unlabelled pool clips, "
        f"{plan.n_test} test, {plan.n_ood} test-ood (built-in synthetic corpus, docs/SYNTH.md).",
        f"Students: `{STUDENT}`; distilled for {plan.distill_steps} steps on the teacher's "
        f"outputs for the pool (labelled once, `pool_labels.parquet`), labelled-only for "
        f"{plan.train_steps} steps on rater-mean labels; batch {plan.batch_size} × "
        f"{crops_text(plan.crop_seconds)} (half of them mixed with noise at 5–30 dB SNR), AdamW "
        f"lr {plan.lr:g}, loss (1 − CCC) + {plan.mse_weight:g} · MSE"
        + (
            f" (+ {plan.hint_weight:g} · embedding hints for the distilled student)"
            if plan.hint_weight > 0
            else ""
        )
        + f"; seed {seed}.",
        "",
        "## Test split",
        "",
        table,
        "",
        "Students: every column describes the shipped int8 ONNX file (the fp32 file where int8 "
        "failed its gate): CCC from the predictions `wav2small predict` writes for it (whole "
        "clips, ONNX Runtime); int8 KB, extra RAM (peak-RSS increase of one run on 5 s in a "
        "fresh process) and ms per 5 s (onnxruntime, 1 thread, median of 20); int8 vs fp32 CCC "
        "(min over A/D/V) on 24 held-out pool clips. The teacher row is torch fp32 (its own "
        "outputs, as `wav2small label` computes them).",
        "",
    ]
    for split, ev in evals.items():
        parts += [f"## CCC on {split}", "", "```", ev.table(), "```", ""]
    parts += _cue_section(evals)
    parts += [
        "## Plots",
        "",
        "![size vs CCC](size_vs_ccc.png)",
        "",
        "![timeline](timeline.png)",
        "",
    ]
    for split in evals:
        for png in sorted((out / "eval" / split).glob("*.png")):
            parts.append(f"![{split} {png.stem}](eval/{split}/{png.name})")
    (out / "report.md").write_text("\n".join(parts) + "\n", encoding="utf-8")
    (out / "table.json").write_text(json.dumps(rows, indent=2, default=str), encoding="utf-8")
