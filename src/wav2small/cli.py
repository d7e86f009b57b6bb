"""The one command-line entry point: ``wav2small <subcommand> ...``.

Each subcommand has an ``_add_<name>`` function that declares its arguments and a ``_run_<name>``
function that imports what it needs lazily (so ``wav2small --help`` is instant).
"""

from __future__ import annotations

import argparse
import logging
import sys


# --- export ---------------------------------------------------------------------------------
def _add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export a checkpoint or preset to ONNX (fp32, optional int8)")
    p.add_argument("model", help="checkpoint file or preset name (see `wav2small models`)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--int8", action="store_true", help="also write a static-int8 model")
    p.add_argument("--calibration", nargs="*", default=None,
                   help="audio files/folders for int8 calibration (default: built-in signals)")
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


def _run_demo(args: argparse.Namespace) -> int:
    from wav2small.demo import run_demo

    return run_demo(out=args.out, quick=args.quick)


COMMANDS = ["export", "models", "demo"]


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
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    return globals()[f"_run_{args.command.replace('-', '_')}"](args) or 0


if __name__ == "__main__":
    sys.exit(main())
