"""Model-size and speed figures for each Wav2Small preset (issue: foundation).

Prints, per preset: trainable parameters, parameters counted in the ONNX graph, fp32 and int8
ONNX bytes, tokens/s, onnxruntime ms per 5 s (1 thread, median of 20), and the peak-RSS increase
of running the int8 model once on 5 s in a fresh process (onnxruntime session alone, and
session + one run; CPU memory arena off).

    .venv/bin/python benchmarks/bench_models.py [--presets wav2small-paper wav2small-tiny]

Weights are untrained (sizes and speed do not depend on them).
"""

from __future__ import annotations

import argparse
import logging
import tempfile
from pathlib import Path

import torch

from wav2small.bench import onnx_ms_per_clip, onnx_parameters, rss_increase_mb
from wav2small.export import export
from wav2small.models import count_parameters, create_model
from wav2small.models.wav2small import Wav2Small


def measure(name: str, out: Path) -> dict:
    torch.manual_seed(0)
    model = create_model(name)
    report = export(model, out / name, int8=True, gate_int8=False)
    tokens = model.tokens_per_second() if isinstance(model, Wav2Small) else float("nan")
    return {
        "preset": name,
        "trainable": count_parameters(model),
        **onnx_parameters(report.fp32_path),
        "fp32 KB": report.fp32_bytes / 1024,
        "int8 KB": report.int8_bytes / 1024,
        "tokens/s": tokens,
        "fp32 ms/5s": onnx_ms_per_clip(report.fp32_path),
        "int8 ms/5s": onnx_ms_per_clip(report.int8_path),
        **{f"int8 RSS+ MB {k}": v for k, v in rss_increase_mb(report.int8_path).items()},
        "int8 CCC vs fp32 (min)": min(report.int8_ccc.values()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["wav2small-paper", "wav2small-tiny"])
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        rows = [measure(name, Path(tmp)) for name in args.presets]
    keys = list(rows[0])
    print("| " + " | ".join(keys) + " |")
    print("|" + "---|" * len(keys))
    for row in rows:
        print(
            "| "
            + " | ".join(f"{v:.1f}" if isinstance(v, float) else str(v) for v in row.values())
            + " |"
        )
    print(
        "\nint8 CCC vs fp32 is for untrained weights (near-constant outputs): see the export "
        "gate on trained models. Timings: 1 thread, median of 20, this machine, this run."
    )


if __name__ == "__main__":
    main()
