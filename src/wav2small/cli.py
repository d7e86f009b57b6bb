"""The one command-line entry point: ``wav2small <subcommand> ...``.

Each subcommand has an ``_add_<name>`` function that declares its arguments and a ``_run_<name>``
function that imports what it needs lazily (so ``wav2small --help`` is instant).
"""

from __future__ import annotations

import argparse
import functools
import logging
import sys


# --- export ---------------------------------------------------------------------------------
def _add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export a checkpoint or preset to ONNX (fp32, optional int8)")
    p.add_argument("model", help="checkpoint file or preset name (see `wav2small models`)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--int8", action="store_true", help="also write a static-int8 model")
    p.add_argument(
        "--calibration",
        nargs="*",
        default=None,
        help="audio files/folders for int8 calibration (default: built-in signals)",
    )
    p.add_argument("--seed", type=int, default=0)


def _run_export(args: argparse.Namespace) -> int:
    from wav2small.export import export_cli

    return export_cli(args)


# --- models ---------------------------------------------------------------------------------
def _add_models(sub: argparse._SubParsersAction) -> None:
    sub.add_parser("models", help="list model presets")


def _run_models(args: argparse.Namespace) -> int:
    from wav2small.models import list_models

    print("\n".join(list_models()))
    return 0


# --- demo -----------------------------------------------------------------------------------
def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run the end-to-end demo on the built-in corpus")
    p.add_argument("--quick", action="store_true", help="smaller, faster run")
    p.add_argument("--out", default="runs/demo", help="run folder")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--jobs", type=int, default=2, help="processes (corpus synthesis; the two students)"
    )
    p.add_argument(
        "--teacher",
        default="synth",
        help="teacher name or folder (default: the built-in synthetic-world teacher)",
    )
    p.add_argument(
        "--train-teacher",
        type=float,
        metavar="MINUTES",
        help="train a new teacher on the labelled split for at most MINUTES instead of --teacher",
    )


def _run_demo(args: argparse.Namespace) -> int:
    from wav2small.demo import run_demo

    return run_demo(
        out=args.out,
        quick=args.quick,
        seed=args.seed,
        jobs=args.jobs,
        teacher=args.teacher,
        train_teacher_minutes=args.train_teacher,
    )


# --- synth ----------------------------------------------------------------------------------
def _add_synth(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("synth", help="generate the built-in synthetic A/D/V corpus (eSpeak NG)")
    p.add_argument("--split", required=True, choices=["train", "pool", "test", "test-ood"])
    p.add_argument("--n", type=int, required=True, help="number of clips")
    p.add_argument("--out", required=True, help="output folder (WAVs in OUT/SPLIT, OUT/SPLIT.csv)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--jobs", type=int, default=1, help="worker processes (default 1)")
    p.add_argument(
        "--raters",
        type=int,
        default=5,
        help="simulated raters per clip; 0 publishes the true labels (default 5)",
    )
    p.add_argument("--rater-bias", type=float, default=0.08, help="sd of rater bias (default 0.08)")
    p.add_argument(
        "--rater-noise", type=float, default=0.25, help="sd of rating noise (default 0.25)"
    )
    p.add_argument("--clean", action="store_true", help="no room, filters, noise or dither")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def _run_synth(args: argparse.Namespace) -> int:
    from wav2small.synth import generate

    csv_path = generate(
        args.split,
        args.n,
        args.out,
        seed=args.seed,
        jobs=args.jobs,
        raters=args.raters,
        rater_bias_sd=args.rater_bias,
        rater_noise_sd=args.rater_noise,
        clean=args.clean,
        progress=not args.no_progress,
    )
    print(csv_path)
    return 0


# --- label ----------------------------------------------------------------------------------
def _add_label(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("label", help="label audio with a teacher into a Parquet table (resumable)")
    p.add_argument(
        "--teacher",
        required=True,
        help="dawn, odyssey, ensemble, synth, a folder, a hub id, ensemble:A+B, or an "
        "audonnx/ONNX folder (model.onnx + model.yaml; runs on ONNX Runtime without torch)",
    )
    p.add_argument("--audio", required=True, help="folder, CSV (file[,start,end]) or audio file")
    p.add_argument("--out", required=True, help="output .parquet file")
    p.add_argument(
        "--batch-seconds",
        type=float,
        default=60.0,
        help="most padded audio per teacher call (default 60)",
    )
    p.add_argument("--shard-rows", type=int, default=256, help="rows per shard (default 256)")
    p.add_argument("--on-error", choices=["raise", "skip"], default="raise")
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--clip", action="store_true", help="clip ensemble outputs to [0, 1]")
    # Ray engine (wav2small.labels_ray; needs `pip install wav2small[scale]`)
    p.add_argument(
        "--engine",
        choices=["local", "ray"],
        default="local",
        help="local (this process) or ray (Ray Data: decode tasks + teacher actors)",
    )
    p.add_argument(
        "--address",
        default=None,
        help="ray: cluster address, e.g. auto (default: RAY_ADDRESS or a local Ray)",
    )
    p.add_argument("--workers", type=int, default=1, help="ray: teacher actors (default 1)")
    p.add_argument(
        "--num-gpus-per-worker",
        type=float,
        default=0.0,
        help="ray: GPUs per teacher actor; fractions share a GPU (default 0: CPU)",
    )
    p.add_argument(
        "--cpus-per-worker",
        type=float,
        default=1.0,
        help="ray: CPUs reserved per teacher actor (default 1)",
    )


def _run_label(args: argparse.Namespace) -> int:
    if args.engine == "ray":
        from wav2small.labels_ray import label_ray_cli

        return label_ray_cli(args)
    from wav2small.labels import label_cli

    return label_cli(args)


# --- train-teacher --------------------------------------------------------------------------
def _add_training_options(p: argparse.ArgumentParser, cls: type) -> None:
    """Options every trainer shares (``--config``, ``--set``, ``--on-error``, ``--resume``, ...)."""
    from wav2small.config import ON_ERROR, cli_default

    p.add_argument("--config", help="YAML file of settings (e.g. a run's config.yaml); flags win")
    p.add_argument(
        "--set",
        action="append",
        nargs="+",
        metavar="KEY=VALUE",
        help=f"any setting of {cls.__module__}.{cls.__name__}, e.g. lr=0.001 (repeatable; "
        "values are read as YAML and checked against the setting's type)",
    )
    p.add_argument(
        "--on-error",
        choices=ON_ERROR,
        help="raise at the first bad training file (unreadable, too short, non-finite), or skip "
        f"it and list it in OUT/skipped.csv (default {cli_default(cls, 'on_error')})",
    )
    p.add_argument(
        "--resume",
        nargs="?",
        const="last",
        help="continue the run in --out (or from PATH) with the same settings",
    )
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")


def _add_train_teacher(sub: argparse._SubParsersAction) -> None:
    from wav2small.config import TeacherConfig
    from wav2small.config import cli_default as default

    d = functools.partial(default, TeacherConfig)
    p = sub.add_parser("train-teacher", help="train (or fine-tune) a teacher with the CCC loss")
    p.add_argument("--data", help="labelled CSV: file, arousal, dominance, valence")
    p.add_argument("--out", help=f"output folder (Hugging Face layout; default {d('out')})")
    p.add_argument("--val", help="validation CSV (default: hold out --val-fraction of --data)")
    p.add_argument("--val-fraction", type=float, help=f"default {d('val_fraction')}")
    p.add_argument("--test", help="labelled CSV to score the best teacher on (test_ccc.json)")
    p.add_argument("--init", help="teacher to fine-tune (default: a new synthetic-world teacher)")
    p.add_argument("--model", help="JSON overrides of the new teacher's config")
    p.add_argument("--epochs", type=int, help=f"default {d('epochs')}")
    p.add_argument("--max-minutes", type=float, help="stop after this long (default: no limit)")
    p.add_argument("--batch-size", type=int, help=f"default {d('batch_size')}")
    p.add_argument("--lr", type=float, help=f"peak learning rate (default {d('lr')})")
    p.add_argument(
        "--crop-seconds",
        type=float,
        help="random training crops of this length (default 0: whole clips)",
    )
    p.add_argument("--gain-db", type=float, help="random gain of ± this many dB (default 0)")
    p.add_argument("--mse-weight", type=float, help="MSE added to the CCC loss (default 0)")
    p.add_argument("--seed", type=int, help=f"default {d('seed')}")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    _add_training_options(p, TeacherConfig)


def _run_train_teacher(args: argparse.Namespace) -> int:
    from wav2small.teacher_train import train_teacher_cli

    return train_teacher_cli(args)


# --- predict / plot-timeline ----------------------------------------------------------------
def _add_model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--backend",
        choices=["auto", "onnx", "torch"],
        default="auto",
        help="auto: ONNX Runtime for .onnx files (no torch), torch otherwise",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="ONNX Runtime intra-op threads (default 1); torch threads if given",
    )
    p.add_argument("--clip", action="store_true", help="clip outputs to [0, 1]")


def _add_predict(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="A/D/V of files/folders into a table (CSV/Parquet/JSON)")
    p.add_argument("model", help=".onnx file (torch-free), checkpoint or preset name (untrained)")
    p.add_argument("paths", nargs="+", help="audio files and/or folders (searched recursively)")
    p.add_argument(
        "--win",
        type=float,
        default=None,
        help="window length in seconds: one row per window (default: one per file)",
    )
    p.add_argument("--hop", type=float, default=None, help="window hop in seconds (default: win)")
    p.add_argument(
        "--timeline",
        type=float,
        default=None,
        metavar="STEP",
        help="one row every STEP seconds over the last --context seconds",
    )
    p.add_argument(
        "--context", type=float, default=4.0, help="timeline context in seconds (default 4)"
    )
    p.add_argument("--out", default=None, help="x.csv, x.parquet or x.json (default: print)")
    p.add_argument("--on-error", choices=["raise", "skip"], default="raise")
    p.add_argument("--workers", type=int, default=1, help="files processed concurrently")
    _add_model_options(p)


def _run_predict(args: argparse.Namespace) -> int:
    from wav2small.infer import predict_cli

    return predict_cli(args)


def _add_plot_timeline(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plot-timeline", help="draw the A/D/V timeline of a file to PNG")
    p.add_argument("model", help=".onnx file, checkpoint or preset name")
    p.add_argument("file", help="audio file")
    p.add_argument("--out", required=True, help="output .png")
    p.add_argument("--step", type=float, default=0.5, help="seconds between points (default 0.5)")
    p.add_argument(
        "--context", type=float, default=4.0, help="seconds behind each point (default 4)"
    )
    _add_model_options(p)


def _run_plot_timeline(args: argparse.Namespace) -> int:
    from wav2small.infer import plot_timeline_cli

    return plot_timeline_cli(args)


# --- selfdistill / selfdistill-eval / selfdistill-export ---------------------------------------
def _add_selfdistill(sub: argparse._SubParsersAction) -> None:
    from wav2small.config import SelfDistillConfig
    from wav2small.config import cli_default as default

    d = functools.partial(default, SelfDistillConfig)
    p = sub.add_parser(
        "selfdistill",
        help="fine-tune wav2vec2/WavLM with early exits that learn from the deepest head",
        description="Self-distillation (Ren et al. 2023). Plain fine-tuning: --exits none.",
    )
    p.add_argument(
        "--backbone",
        help="random:wav2vec2-small|wav2vec2-mini|wav2vec2-base|wavlm-small|... "
        f"(random init), a Hugging Face folder or a hub id (default {d('backbone')})",
    )
    p.add_argument("--data", help="labelled CSV (file + emotion or A/D/V)")
    p.add_argument("--val", help="validation CSV (default: hold out --val-fraction)")
    p.add_argument("--val-fraction", type=float, help=f"default {d('val_fraction')}")
    p.add_argument("--task", choices=["classes", "adv"], help=f"default {d('task')}")
    p.add_argument("--label-column", help=f"class column (default {d('label_column')})")
    p.add_argument(
        "--exits",
        help="layers followed by an exit (default "
        + ",".join(map(str, d("exits")))
        + "); 'none': plain fine-tuning",
    )
    p.add_argument("--out", help=f"run folder (default {d('out')})")
    p.add_argument("--epochs", type=int, help=f"passes over the data (default {d('epochs')})")
    p.add_argument("--max-steps", type=int, help="optimiser steps (overrides --epochs)")
    p.add_argument("--batch-size", type=int, help=f"default {d('batch_size')}")
    p.add_argument("--lr", type=float, help=f"Adam learning rate (default {d('lr')})")
    p.add_argument(
        "--warmup-steps", type=float, help="warm-up steps, or a fraction of the run if < 1"
    )
    p.add_argument(
        "--crop-seconds", type=float, help=f"longest training crop (default {d('crop_seconds')})"
    )
    p.add_argument("--temperature", type=float, help=f"KL temperature (default {d('temperature')})")
    for term in ("deepest", "exit", "kd", "feature"):
        p.add_argument(f"--w-{term}", type=float, help=f"weight of the {term} term (default 1)")
    p.add_argument("--feature-level", choices=["embedding", "linear"])
    p.add_argument(
        "--detach-teacher",
        action="store_true",
        default=None,
        help="no gradient through the deepest head in the kd/feature terms",
    )
    p.add_argument("--grad-clip", type=float)
    p.add_argument("--val-every", type=int, help="validate every N steps (default: per epoch)")
    p.add_argument("--seed", type=int)
    p.add_argument("--num-workers", type=int)
    p.add_argument("--accelerator", help="cpu, gpu or auto")
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's)")
    _add_training_options(p, SelfDistillConfig)


def _run_selfdistill(args: argparse.Namespace) -> int:
    from wav2small.selfdistill import selfdistill_cli

    return selfdistill_cli(args)


def _add_selfdistill_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "selfdistill-eval",
        help="per-exit UAR/CCC, ms per 5 s and parameters of an early-exit model",
    )
    p.add_argument("model", help="best.safetensors or a .ckpt of `wav2small selfdistill`")
    p.add_argument("--data", required=True, help="labelled CSV")
    p.add_argument(
        "--exit",
        nargs="*",
        default=None,
        help="exits to report: layer numbers, deepest, fusion (default: all)",
    )
    p.add_argument("--label-column", default="emotion")
    p.add_argument("--threads", type=int, default=1, help="threads of the latency figure")
    p.add_argument("--repeats", type=int, default=10, help="timed runs per exit (median)")
    p.add_argument("--no-latency", action="store_true")
    p.add_argument("--out", help="also write the table as CSV")
    p.add_argument("--no-progress", action="store_true")


def _run_selfdistill_eval(args: argparse.Namespace) -> int:
    from wav2small.selfdistill import selfdistill_eval_cli

    return selfdistill_eval_cli(args)


def _add_selfdistill_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "selfdistill-export", help="export an early-exit model, truncated at one exit, to ONNX"
    )
    p.add_argument("model", help="best.safetensors or a .ckpt of `wav2small selfdistill`")
    p.add_argument("--exit", required=True, help="layer number, deepest or fusion")
    p.add_argument("--out", required=True, help="output .onnx file")
    p.add_argument("--exporter", choices=["auto", "dynamo", "torchscript"], default="auto")


def _run_selfdistill_export(args: argparse.Namespace) -> int:
    from wav2small.selfdistill import selfdistill_export_cli

    return selfdistill_export_cli(args)


# --- distill / train / evaluate ---------------------------------------------------------------
def _add_student_options(p: argparse.ArgumentParser) -> None:
    from wav2small.config import StudentConfig
    from wav2small.config import cli_default as default

    d = functools.partial(default, StudentConfig)
    p.add_argument(
        "--student", help=f"student preset (see `wav2small models`; default {d('student')})"
    )
    p.add_argument("--val", help="validation CSV/folder (default: hold out val_fraction)")
    p.add_argument(
        "--val-target",
        choices=["auto", "gold", "teacher"],
        help="what validation CCC is measured against (default auto: teacher when "
        "distilling, gold when training)",
    )
    p.add_argument("--out", help=f"run folder (default {d('out')})")
    p.add_argument("--seed", type=int, help=f"default {d('seed')}")
    p.add_argument("--max-steps", type=int, help=f"optimiser steps (default {d('max_steps')})")
    p.add_argument("--batch-size", type=int, help=f"default {d('batch_size')}")
    p.add_argument("--lr", type=float, help=f"AdamW learning rate (default {d('lr')})")
    p.add_argument(
        "--num-workers", type=int, help=f"data-loader workers (default {d('num_workers')})"
    )
    p.add_argument("--accelerator", help=f"cpu, gpu or auto (default {d('accelerator')})")
    p.add_argument(
        "--devices",
        type=lambda v: int(v) if v.isdigit() else v,
        help=f"devices (processes with --strategy ddp); an int or auto (default {d('devices')})",
    )
    p.add_argument("--strategy", help="Lightning strategy: auto or ddp (gloo on CPU, NCCL on GPU)")
    _add_training_options(p, StudentConfig)


def _add_distill(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("distill", help="train a student on a teacher's outputs (no human labels)")
    p.add_argument("--teacher", help="teacher name or folder (online targets; validation)")
    p.add_argument("--audio", help="distillation audio: folder or CSV with a 'file' column")
    p.add_argument("--labels", help="cached teacher labels (.parquet from `wav2small label`)")
    p.add_argument(
        "--targets",
        choices=["online", "cached"],
        help="teacher on the same augmented crop (online, default) or cached labels",
    )
    _add_student_options(p)


def _run_distill(args: argparse.Namespace) -> int:
    from wav2small.train import train_cli

    return train_cli(args, mode="distill")


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a student on gold labels (the baseline)")
    p.add_argument("--data", help="labelled CSV: file, arousal, dominance, valence")
    p.add_argument("--teacher", help="teacher, only for --val-target teacher")
    _add_student_options(p)


def _run_train(args: argparse.Namespace) -> int:
    from wav2small.train import train_cli

    return train_cli(args, mode="train")


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="CCC of models vs gold labels and a teacher")
    p.add_argument(
        "models",
        nargs="+",
        metavar="MODEL",
        help=".ckpt, .safetensors, .onnx or run folder; several are compared",
    )
    p.add_argument("--data", required=True, help="CSV with 'file' (+ gold columns) or a folder")
    p.add_argument("--teacher", help="teacher name/folder, or its label table (.parquet)")
    p.add_argument("--json", help="write the metrics as JSON to this file")
    p.add_argument("--out", help="folder for metrics.csv/json, predictions.csv and PNG plots")
    p.add_argument("--no-plots", action="store_true", help="no PNG plots in --out")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")


def _run_evaluate(args: argparse.Namespace) -> int:
    from wav2small.evaluate import evaluate_cli

    return evaluate_cli(args)


def _add_serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="the browser page (model runs in the browser) on 127.0.0.1")
    p.add_argument("model", nargs="?", help=".onnx file or exported student folder / hub id")
    p.add_argument("--port", type=int, default=8017, help="port on 127.0.0.1 (default 8017)")


def _run_serve(args: argparse.Namespace) -> int:
    from wav2small.serve import serve_cli

    return serve_cli(args)


COMMANDS = [
    "export",
    "models",
    "demo",
    "label",
    "synth",
    "train-teacher",
    "predict",
    "plot-timeline",
    "selfdistill",
    "selfdistill-eval",
    "selfdistill-export",
    "distill",
    "train",
    "evaluate",
    "serve",
]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand."""
    parser = argparse.ArgumentParser(prog="wav2small", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        globals()[f"_add_{name.replace('-', '_')}"](sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    return globals()[f"_run_{args.command.replace('-', '_')}"](args) or 0


if __name__ == "__main__":
    sys.exit(main())
