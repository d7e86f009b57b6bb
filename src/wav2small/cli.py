"""The one command-line entry point: ``wav2small <subcommand> ...``.

Each subcommand has an ``_add_<name>`` function that declares its arguments and a ``_run_<name>``
function that imports what it needs lazily (so ``wav2small --help`` is instant).

Error contract (:func:`main`): a user error — a missing, empty, corrupt or non-finite file, a bad
manifest, a bad option value, an output locked by another writer — prints one line
``wav2small <command>: error: <file>: <problem>`` to stderr and exits with code 2, without a
traceback; any other failure prints one line too and exits with code 1. ``--debug`` shows the
traceback instead. Every log record is printed once.

Options shared by several subcommands are declared once (``_add_threads``, ``_add_jobs``,
``_add_progress``, ``_add_on_error``; the trainers' ``_add_training_options``) and mean the same
everywhere.
"""

from __future__ import annotations

import argparse
import functools
import logging
import sys
import traceback

#: Exit code of a user error (bad file, manifest, option value, locked output); argparse's too.
EXIT_USER_ERROR = 2
#: Exit code of any other failure.
EXIT_FAILURE = 1


# --- option types and shared option groups ---------------------------------------------------
def _number(kind: type, low: float, inclusive: bool):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a {kind.__name__}") from None
        if value != value or value in (float("inf"), float("-inf")):
            raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
        if value < low or (value == low and not inclusive):
            raise argparse.ArgumentTypeError(
                f"{text!r} must be {'≥' if inclusive else '>'} {kind(low)}"
            )
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


#: Option value types that reject bad values with one clear line (exit 2).
positive_int = _number(int, 1, True)
non_negative_int = _number(int, 0, True)
positive_float = _number(float, 0.0, False)
non_negative_float = _number(float, 0.0, True)


def _common(name: str):
    """The default of a shared option (:class:`wav2small.config.CommonOptions`)."""
    from wav2small.config import CommonOptions

    return getattr(CommonOptions, name)


def _shown(cls: type | None, name: str, what: str | None = None):
    """(argparse default, default shown in the help): a trainer's flags default to ``None``, so
    its YAML config and ``--set`` layers resolve them (:func:`wav2small.config.from_cli`), and
    the help shows the trainer dataclass's default; other commands use the shared one."""
    if cls is None:
        value = _common(name)
        return value, value
    from wav2small.config import cli_default

    return None, cli_default(cls, what or name)


def _add_threads(p: argparse.ArgumentParser, *, what: str = "") -> None:
    """``--threads N``: compute threads of this process (torch and ONNX Runtime intra-op)."""
    p.add_argument(
        "--threads",
        type=non_negative_int,
        default=_common("threads"),
        metavar="N",
        help="compute threads of this process (torch / ONNX Runtime intra-op; default: "
        + (what or "the library's: 1 for ONNX Runtime, torch's own for torch")
        + ")",
    )


def _add_jobs(
    p: argparse.ArgumentParser,
    *,
    what: str = "",
    default: int | None = None,
    cls=None,
    dest: str = "jobs",
) -> None:
    """``--jobs N``: parallel workers (processes or threads) over independent items.

    For the trainers (``cls``) it is the data-loader's worker processes (``num_workers``;
    ``--num-workers`` is the same option).
    """
    names = ("--jobs",)
    if cls is not None:
        names, dest = ("--jobs", "--num-workers"), "num_workers"
    value, shown = _shown(cls, "jobs", "num_workers")
    if default is not None:
        value = shown = default
    p.add_argument(
        *names,
        dest=dest,
        type=non_negative_int if cls is not None else positive_int,
        default=value,
        metavar="N",
        help=f"parallel workers over independent items{f' ({what})' if what else ''} "
        f"(default {shown})",
    )


def _add_progress(p: argparse.ArgumentParser, *, cls=None) -> None:
    """``--progress/--no-progress``: progress bars on stderr."""
    value, shown = _shown(cls, "progress")
    p.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=value,
        help=f"show progress bars on stderr (default: {'on' if shown else 'off'})",
    )


def _add_on_error(p: argparse.ArgumentParser, *, cls=None, report: str = "<out>.skipped.csv"):
    """``--on-error raise|skip``: stop at the first bad input, or skip and report it."""
    from wav2small.config import ON_ERROR

    value, shown = _shown(cls, "on_error")
    p.add_argument(
        "--on-error",
        choices=ON_ERROR,
        default=value,
        help=f"raise: stop at the first bad input; skip: skip it and list it in {report} "
        f"(exit 2 when nothing is left). Default {shown}",
    )


def _locked(*outs: str | None):
    """Hold :func:`wav2small.inputs.output_lock` on every given output (a second writer fails)."""
    from contextlib import ExitStack

    from wav2small.inputs import output_lock

    stack = ExitStack()
    try:
        for out in dict.fromkeys(o for o in outs if o):
            stack.enter_context(output_lock(out))
    except BaseException:
        stack.close()
        raise
    return stack


# --- export ---------------------------------------------------------------------------------
def _add_export_options(p: argparse.ArgumentParser, *, early_exit: bool = False) -> None:
    from wav2small.config import EXPORTERS

    p.add_argument(
        "model",
        help="checkpoint file or preset name (see `wav2small models`), or an early-exit model "
        "of `wav2small selfdistill`",
    )
    p.add_argument(
        "--out",
        required=True,
        help="output folder; for an early exit, an OUT ending in .onnx names the file itself",
    )
    p.add_argument("--int8", action="store_true", help="also write a static-int8 model")
    p.add_argument(
        "--calibration",
        nargs="*",
        default=None,
        help="audio files/folders for int8 calibration (default: built-in signals)",
    )
    p.add_argument(
        "--seed",
        type=int,
        default=_common("seed"),
        help=f"seed of untrained weights and test signals (default {_common('seed')})",
    )
    p.add_argument(
        "--exit",
        required=early_exit,
        help="early-exit models: the exit to export (layer number, deepest or fusion; "
        "default deepest)",
    )
    p.add_argument(
        "--test",
        help="early-exit models: labelled CSV to score the exported exit on; its model card "
        "states the score (the card always states the ONNX ms per 5 s)",
    )
    p.add_argument(
        "--backbone",
        action="store_true",
        help="early-exit models: write the fine-tuned backbone in the Hugging Face layout to "
        "OUT instead of ONNX (loads as `--backbone OUT`: supervised pretraining)",
    )
    p.add_argument(
        "--exporter",
        choices=EXPORTERS,
        default=EXPORTERS[0],
        help="early-exit models: ONNX exporter (auto: TorchScript, which exports the exits' GRU)",
    )
    _add_progress(p)


def _add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export a checkpoint or preset to ONNX (fp32, optional int8)")
    _add_export_options(p)


def _run_export(args: argparse.Namespace) -> int:
    from wav2small.export import export_cli

    with _locked(args.out):
        return export_cli(args)


# --- models ---------------------------------------------------------------------------------
def _add_models(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list model presets: parameters, int8 size, tokens/s")
    p.add_argument("--names", action="store_true", help="names only (no torch import)")


def models_table():
    """One row per preset: ``params`` (trainable, counted), ``int8_kb`` (estimate: one byte per
    parameter; the ONNX graph adds a few KB) and ``tokens_per_s`` (token rate of the pooled
    sequence, from the model; a MobileNet measures its feature map over 10 s).

    Models are built on torch's ``meta`` device (shapes only), so this is quick.
    """
    import pandas as pd
    import torch

    from wav2small.models import count_parameters, create_model, list_models

    rows = []
    for name in list_models():
        with torch.device("meta"):
            model = create_model(name)
        params = count_parameters(model)
        rate = float(model.tokens_per_second())
        rows.append(
            {"model": name, "params": params, "int8_kb": params / 1024, "tokens_per_s": rate}
        )
    return pd.DataFrame(rows).set_index("model")


def _run_models(args: argparse.Namespace) -> int:
    if args.names:
        from wav2small.models import list_models

        print("\n".join(list_models()))
        return 0
    table = models_table()
    print(f"{'model':<20} {'params':>11} {'≈int8 KB':>9} {'tokens/s':>9}")
    for name, row in table.iterrows():
        print(
            f"{name:<20} {int(row['params']):>11,} {row['int8_kb']:>9.0f} "
            f"{row['tokens_per_s']:>9.1f}"
        )
    print("≈int8 KB: one byte per parameter (the .onnx adds graph and scales; measure with export)")
    return 0


# --- demo -----------------------------------------------------------------------------------
def _add_demo(sub: argparse._SubParsersAction) -> None:
    from wav2small.config import DemoOptions as D

    p = sub.add_parser("demo", help="run the end-to-end demo on the built-in corpus")
    p.add_argument("--quick", action="store_true", help="smaller, faster run")
    p.add_argument("--out", default=D.out, help=f"run folder (default {D.out})")
    p.add_argument("--seed", type=int, default=D.seed, help=f"default {D.seed}")
    _add_jobs(p, default=D.jobs, what="processes: corpus synthesis, the two students")
    p.add_argument(
        "--teacher",
        default=D.teacher,
        help=f"teacher name or folder (default {D.teacher}: the built-in synthetic-world teacher)",
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
    from wav2small.config import SynthOptions as D

    p = sub.add_parser("synth", help="generate the built-in synthetic A/D/V corpus (eSpeak NG)")
    p.add_argument("--split", required=True, choices=["train", "pool", "test", "test-ood"])
    p.add_argument("--n", type=int, required=True, help="number of clips")
    p.add_argument("--out", required=True, help="output folder (WAVs in OUT/SPLIT, OUT/SPLIT.csv)")
    p.add_argument("--seed", type=int, default=_common("seed"), help=f"default {_common('seed')}")
    _add_jobs(p, what="processes")
    p.add_argument(
        "--raters",
        type=non_negative_int,
        default=D.raters,
        help=f"simulated raters per clip; 0 publishes the true labels (default {D.raters})",
    )
    p.add_argument(
        "--rater-bias",
        type=non_negative_float,
        default=D.rater_bias,
        help=f"sd of rater bias (default {D.rater_bias})",
    )
    p.add_argument(
        "--rater-noise",
        type=non_negative_float,
        default=D.rater_noise,
        help=f"sd of rating noise (default {D.rater_noise})",
    )
    p.add_argument("--clean", action="store_true", help="no room, filters, noise or dither")
    _add_progress(p)


def _run_synth(args: argparse.Namespace) -> int:
    from wav2small.synth import generate

    with _locked(args.out):
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
            progress=args.progress,
        )
    print(csv_path)
    return 0


# --- label ----------------------------------------------------------------------------------
def _add_label(sub: argparse._SubParsersAction) -> None:
    from wav2small.config import LabelOptions as D

    p = sub.add_parser("label", help="label audio with a teacher into a Parquet table (resumable)")
    p.add_argument(
        "--teacher",
        required=True,
        help="dawn, odyssey, ensemble, synth, a folder, a hub id, ensemble:A+B, or an "
        "audonnx/ONNX folder (model.onnx + model.yaml; runs on ONNX Runtime without torch)",
    )
    p.add_argument("--audio", required=True, help="folder, CSV (file[,start,end]) or audio file")
    p.add_argument(
        "--out",
        required=True,
        help="output .parquet file; a rerun resumes it (same teacher and settings only)",
    )
    p.add_argument(
        "--batch-seconds",
        type=positive_float,
        default=D.batch_seconds,
        help=f"most padded audio per teacher call (default {D.batch_seconds:g})",
    )
    p.add_argument(
        "--shard-rows",
        type=positive_int,
        default=D.shard_rows,
        help=f"rows per shard (default {D.shard_rows})",
    )
    _add_on_error(p)
    _add_threads(p)
    _add_progress(p)
    p.add_argument("--device", default="cpu")
    p.add_argument("--clip", action="store_true", help="clip ensemble outputs to [0, 1]")
    p.add_argument(
        "--embeddings",
        action="store_true",
        help="add a column 'embedding': the teacher's pooled embedding (the vector its head "
        "reads) per row, list of float32 (local engine only)",
    )
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
    _add_jobs(p, what="ray: teacher actors; the local engine runs one", dest="workers")
    p.add_argument("--workers", dest="workers", type=positive_int, help=argparse.SUPPRESS)
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
    if args.engine == "local" and args.workers > 1:
        logging.getLogger("wav2small.labels").warning(
            "--jobs %d applies to --engine ray; the local engine runs one teacher", args.workers
        )
    if args.engine == "ray":
        from wav2small.labels_ray import label_ray_cli

        return label_ray_cli(args)
    from wav2small.labels import label_cli

    return label_cli(args)


# --- train-teacher --------------------------------------------------------------------------
def _add_training_options(p: argparse.ArgumentParser, cls: type) -> None:
    """Options every trainer shares (``--config``, ``--set``, ``--resume``) and the shared
    groups (``--on-error``, ``--progress``, ``--threads``, ``--jobs``), their defaults read
    from the trainer's dataclass ``cls``."""
    from wav2small.config import fields

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
        "--resume",
        nargs="?",
        const="last",
        help="continue the run in --out (or from PATH) with the same settings",
    )
    _add_on_error(p, cls=cls, report="OUT/skipped.csv")
    _add_progress(p, cls=cls)
    _add_threads(p, what="torch's own")
    if "num_workers" in fields(cls):
        _add_jobs(p, cls=cls, what="data-loader processes")


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
    p.add_argument(
        "--max-minutes",
        type=float,
        help=f"stop after this long (default {d('max_minutes')}: no limit)",
    )
    p.add_argument("--batch-size", type=int, help=f"default {d('batch_size')}")
    p.add_argument("--lr", type=float, help=f"peak learning rate (default {d('lr')})")
    p.add_argument(
        "--crop-seconds",
        type=float,
        help=f"random training crops of this length; 0: whole clips (default {d('crop_seconds')}: "
        "whole clips)",
    )
    p.add_argument(
        "--gain-db", type=float, help=f"random gain of ± this many dB (default {d('gain_db')})"
    )
    p.add_argument(
        "--mse-weight", type=float, help=f"MSE added to the CCC loss (default {d('mse_weight')})"
    )
    p.add_argument("--seed", type=int, help=f"default {d('seed')}")
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
    _add_threads(p, what="default: 1 for ONNX Runtime, torch's own for torch")
    p.add_argument("--clip", action="store_true", help="clip outputs to [0, 1]")


def _add_predict(sub: argparse._SubParsersAction) -> None:
    from wav2small.config import TimelineOptions as T

    p = sub.add_parser("predict", help="A/D/V of files/folders into a table (CSV/Parquet/JSON)")
    p.add_argument("model", help=".onnx file (torch-free), checkpoint or preset name (untrained)")
    p.add_argument("paths", nargs="+", help="audio files and/or folders (searched recursively)")
    p.add_argument(
        "--win",
        type=positive_float,
        default=None,
        help="window length in seconds: one row per window (default: one per file)",
    )
    p.add_argument(
        "--hop", type=positive_float, default=None, help="window hop in seconds (default: win)"
    )
    p.add_argument(
        "--timeline",
        type=positive_float,
        default=None,
        metavar="STEP",
        help="one row every STEP seconds over the last --context seconds",
    )
    p.add_argument(
        "--context",
        type=positive_float,
        default=T.context,
        help=f"timeline context in seconds (default {T.context:g})",
    )
    p.add_argument("--out", default=None, help="x.csv, x.parquet or x.json (default: print)")
    _add_on_error(p)
    _add_jobs(p, what="files processed concurrently")
    p.add_argument("--workers", dest="jobs", type=positive_int, help=argparse.SUPPRESS)
    _add_progress(p)
    _add_model_options(p)


def _run_predict(args: argparse.Namespace) -> int:
    from wav2small.infer import predict_cli

    args.workers = args.jobs
    return predict_cli(args)


def _add_plot_timeline(sub: argparse._SubParsersAction) -> None:
    from wav2small.config import TimelineOptions as T

    p = sub.add_parser("plot-timeline", help="draw the A/D/V timeline of a file to PNG")
    p.add_argument("model", help=".onnx file, checkpoint or preset name")
    p.add_argument("file", help="audio file")
    p.add_argument("--out", required=True, help="output .png")
    p.add_argument(
        "--step",
        type=positive_float,
        default=T.step,
        help=f"seconds between points (default {T.step:g})",
    )
    p.add_argument(
        "--context",
        type=positive_float,
        default=T.context,
        help=f"seconds behind each point (default {T.context:g})",
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
    p.add_argument(
        "--max-steps",
        type=int,
        help=f"optimiser steps; > 0 overrides --epochs (default {d('max_steps')})",
    )
    p.add_argument("--batch-size", type=int, help=f"default {d('batch_size')}")
    p.add_argument("--lr", type=float, help=f"Adam learning rate (default {d('lr')})")
    p.add_argument(
        "--warmup-steps",
        type=float,
        help=f"warm-up steps, or a fraction of the run if < 1 (default {d('warmup_steps')})",
    )
    p.add_argument(
        "--crop-seconds",
        type=float,
        help=f"longest training crop; 0: whole clips (default {d('crop_seconds')})",
    )
    p.add_argument("--temperature", type=float, help=f"KL temperature (default {d('temperature')})")
    for term in ("deepest", "exit", "kd", "feature"):
        p.add_argument(
            f"--w-{term}", type=float, help=f"weight of the {term} term (default {d('w_' + term)})"
        )
    p.add_argument(
        "--feature-level",
        choices=["embedding", "linear"],
        help=f"pooled feature of the feature term (default {d('feature_level')})",
    )
    p.add_argument(
        "--detach-teacher",
        action="store_true",
        default=None,
        help="no gradient through the deepest head in the kd/feature terms",
    )
    p.add_argument(
        "--grad-clip", type=float, help=f"gradient-norm clipping, 0: off (default {d('grad_clip')})"
    )
    p.add_argument(
        "--val-every",
        type=int,
        help=f"validate every N steps, 0: per epoch (default {d('val_every')})",
    )
    p.add_argument(
        "--scheduler",
        choices=["constant", "cosine"],
        help=f"learning rate after warm-up (default {d('scheduler')})",
    )
    p.add_argument("--seed", type=int, help=f"default {d('seed')}")
    p.add_argument("--accelerator", help=f"cpu, gpu or auto (default {d('accelerator')})")
    _add_training_options(p, SelfDistillConfig)


def _run_selfdistill(args: argparse.Namespace) -> int:
    from wav2small.selfdistill import selfdistill_cli

    return selfdistill_cli(args)


def _add_pretrain(sub: argparse._SubParsersAction) -> None:
    from wav2small.config import PretrainConfig
    from wav2small.config import cli_default as default

    d = functools.partial(default, PretrainConfig)
    p = sub.add_parser(
        "pretrain",
        help="pretrain a small wav2vec2-layout backbone on unlabelled audio (HuBERT-style)",
        description="Masked prediction of k-means codes of log-mel and pitch frames; writes "
        "OUT/backbone in the Hugging Face layout (a --backbone for selfdistill).",
    )
    p.add_argument("--audio", nargs="+", help="CSVs with a file column, folders or audio files")
    p.add_argument("--out", help=f"run folder (default {d('out')})")
    p.add_argument("--max-steps", type=int, help=f"optimiser steps (default {d('max_steps')})")
    p.add_argument("--batch-size", type=int, help=f"default {d('batch_size')}")
    p.add_argument("--lr", type=float, help=f"peak AdamW learning rate (default {d('lr')})")
    p.add_argument(
        "--warmup-steps",
        type=float,
        help=f"warm-up steps, or a fraction of the run if < 1 (default {d('warmup_steps')})",
    )
    p.add_argument(
        "--crop-seconds", type=float, help=f"training crop length (default {d('crop_seconds')})"
    )
    p.add_argument("--seed", type=int, help=f"default {d('seed')}")
    _add_training_options(p, PretrainConfig)


def _run_pretrain(args: argparse.Namespace) -> int:
    from wav2small.pretrain import pretrain_cli

    return pretrain_cli(args)


def _add_selfdistill_eval(sub: argparse._SubParsersAction) -> None:
    from wav2small.config import DEFAULT_LABEL_COLUMN

    p = sub.add_parser(
        "selfdistill-eval",
        help="per-exit UAR/CCC, ms per 5 s and parameters of an early-exit model",
        description="Every exit runs as its own model through the Predictor, as `evaluate` "
        "runs a model (wav2small.selfdistill.exit_outputs); the table adds UAR (classes), "
        "latency and parameters per exit.",
    )
    p.add_argument("model", help="best.safetensors or a .ckpt of `wav2small selfdistill`")
    p.add_argument("--data", required=True, help="labelled CSV")
    p.add_argument(
        "--exit",
        nargs="*",
        default=None,
        help="exits to report: layer numbers, deepest, fusion (default: all)",
    )
    p.add_argument(
        "--label-column", default=DEFAULT_LABEL_COLUMN, help="class column (task classes)"
    )
    _add_threads(p, what="the library's; the latency figure uses 1 unless given")
    p.add_argument("--repeats", type=positive_int, default=10, help="timed runs per exit (median)")
    p.add_argument("--no-latency", action="store_true")
    p.add_argument("--out", help="also write the table as CSV")
    _add_progress(p)


def _run_selfdistill_eval(args: argparse.Namespace) -> int:
    from wav2small.selfdistill import selfdistill_eval_cli

    with _locked(args.out):
        return selfdistill_eval_cli(args)


def _add_selfdistill_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "selfdistill-export",
        help="alias of `export MODEL --exit K`: one exit of an early-exit model to ONNX",
        description="The same command as `wav2small export` with --exit required: the same "
        "ONNX writer and parity gate (a model that fails it is renamed <name>.rejected).",
    )
    _add_export_options(p, early_exit=True)


_run_selfdistill_export = _run_export


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
        help=f"what validation CCC is measured against (default {d('val_target')}: teacher when "
        "distilling, gold when training)",
    )
    p.add_argument("--out", help=f"run folder (default {d('out')})")
    p.add_argument("--seed", type=int, help=f"default {d('seed')}")
    p.add_argument("--max-steps", type=int, help=f"optimiser steps (default {d('max_steps')})")
    p.add_argument("--batch-size", type=int, help=f"default {d('batch_size')}")
    p.add_argument("--lr", type=float, help=f"AdamW learning rate (default {d('lr')})")
    p.add_argument("--accelerator", help=f"cpu, gpu or auto (default {d('accelerator')})")
    p.add_argument(
        "--devices",
        type=lambda v: int(v) if v.isdigit() else v,
        help=f"devices (processes with --strategy ddp); an int or auto (default {d('devices')})",
    )
    p.add_argument(
        "--strategy",
        help=f"Lightning strategy: auto or ddp (gloo on CPU, NCCL on GPU; default {d('strategy')})",
    )
    _add_training_options(p, StudentConfig)


def _add_distill(sub: argparse._SubParsersAction) -> None:
    from wav2small.config import StudentConfig, cli_default

    p = sub.add_parser("distill", help="train a student on a teacher's outputs (no human labels)")
    p.add_argument("--teacher", help="teacher name or folder (online targets; validation)")
    p.add_argument("--audio", help="distillation audio: folder or CSV with a 'file' column")
    p.add_argument("--labels", help="cached teacher labels (.parquet from `wav2small label`)")
    p.add_argument(
        "--targets",
        choices=["online", "cached"],
        help="teacher on the same augmented crop (online) or cached labels (default "
        f"{cli_default(StudentConfig, 'targets')})",
    )
    p.add_argument(
        "--hint-weight",
        type=float,
        help="weight of the embedding-hint loss: the student's pooled features predict the "
        "teacher's embedding (needs --labels from `wav2small label --embeddings`; default "
        f"{cli_default(StudentConfig, 'hint_weight')}: off)",
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
    _add_on_error(p)
    _add_progress(p)
    _add_threads(p)


def _run_evaluate(args: argparse.Namespace) -> int:
    from wav2small.evaluate import evaluate_cli

    with _locked(args.out, args.json):
        return evaluate_cli(args)


def _add_serve(sub: argparse._SubParsersAction) -> None:
    from wav2small.config import ServeOptions as D

    p = sub.add_parser("serve", help="the browser page (model runs in the browser) on 127.0.0.1")
    p.add_argument("model", nargs="?", help=".onnx file or exported student folder / hub id")
    p.add_argument("--port", type=int, default=D.port, help=f"port on 127.0.0.1 (default {D.port})")


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
    "pretrain",
    "selfdistill",
    "selfdistill-eval",
    "selfdistill-export",
    "distill",
    "train",
    "evaluate",
    "serve",
]


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``wav2small <command>: error: <problem>`` (exit 2)."""

    def error(self, message: str):
        self.exit(EXIT_USER_ERROR, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _global_options(p: argparse.ArgumentParser, *, top: bool) -> None:
    # Accepted before and after the subcommand; given after it, the value is not reset.
    default = False if top else argparse.SUPPRESS
    p.add_argument("-v", "--verbose", action="store_true", default=default, help="debug logging")
    p.add_argument(
        "--debug",
        action="store_true",
        default=default,
        help="show the Python traceback of an error",
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand."""
    parser = _Parser(prog="wav2small", description=__doc__.splitlines()[0])
    _global_options(parser, top=True)
    common = _Parser(add_help=False)
    _global_options(common, top=False)
    sub = parser.add_subparsers(dest="command", required=True)
    add_parser = sub.add_parser

    def add_with_common(name: str, **kwargs) -> argparse.ArgumentParser:
        return add_parser(name, parents=[common, *kwargs.pop("parents", [])], **kwargs)

    sub.add_parser = add_with_common
    for name in COMMANDS:
        globals()[f"_add_{name.replace('-', '_')}"](sub)
    return parser


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time (tests and tqdm replace it)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


class _Once(logging.Filter):
    """Drop records another handler on their way to the root already printed (Lightning's)."""

    def filter(self, record: logging.LogRecord) -> bool:
        logger = logging.getLogger(record.name)
        while logger is not None and logger is not logging.root:
            if any(isinstance(h, logging.StreamHandler) for h in logger.handlers):
                return False
            logger = logger.parent
        return True


def configure_logging(*, verbose: bool = False) -> logging.Handler:
    """One stderr handler on the root logger; every record is printed once.

    Libraries that attach their own console handler (Lightning adds one to the ``lightning``
    logger on import, and records still propagate to the root) would otherwise print each line
    twice: the root handler skips records such a handler has printed already.

    Returns:
        The handler (installed once; later calls only set the level).
    """
    root = logging.getLogger()
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    for handler in root.handlers:
        if getattr(handler, "_wav2small", False):
            return handler
    handler = _StderrHandler()
    handler._wav2small = True
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    handler.addFilter(_Once())
    root.addHandler(handler)
    return handler


def error_line(exc: BaseException) -> tuple[int, str]:
    """Exit code and one-line message of an exception that ended a command.

    User errors (exit 2): :class:`wav2small.errors.UserError` (bad audio, manifest, option,
    locked output, a teacher that cannot be loaded), ``ValueError`` (bad values) and ``OSError``
    (missing file, permission, full disk). Anything else is exit 1, named by its type.
    """
    from wav2small.errors import UserError

    message = str(exc)
    if isinstance(exc, OSError) and exc.filename and str(exc.filename) not in message:
        message = f"{exc.filename}: {exc.strerror or message}"
    message = " ".join(message.split()) or type(exc).__name__
    if isinstance(exc, UserError | ValueError | OSError):
        return EXIT_USER_ERROR, message
    return (
        EXIT_FAILURE,
        f"{type(exc).__name__}: {message} (a bug? rerun with --debug and report it)",
    )


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point: run one subcommand under the error contract.

    Returns:
        0 on success, 2 for a user error (one line on stderr), 1 for any other failure, or what
        the subcommand returned (e.g. 1 when a gate failed).
    """
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # --help (0) or a bad option: one line printed already (2)
        return e.code if isinstance(e.code, int) else EXIT_USER_ERROR
    configure_logging(verbose=args.verbose)
    if hasattr(args, "progress"):  # older consumers read no_progress (None: the trainer's config)
        args.no_progress = args.progress is False
    prog = f"wav2small {args.command}"
    try:
        return globals()[f"_run_{args.command.replace('-', '_')}"](args) or 0
    except KeyboardInterrupt:
        if args.debug:
            raise
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except SystemExit as e:
        if isinstance(e.code, int | None):
            raise
        if args.debug:
            traceback.print_exc()
        print(f"{prog}: error: {' '.join(str(e.code).split())}", file=sys.stderr)
        return EXIT_USER_ERROR
    except Exception as e:
        if args.debug:
            traceback.print_exc()
        code, message = error_line(e)
        print(f"{prog}: error: {message}", file=sys.stderr)
        return code


if __name__ == "__main__":
    sys.exit(main())
