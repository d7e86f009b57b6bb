"""Labelling throughput of the Dawn architecture: ONNX Runtime (ONNX teacher) vs torch.

Builds the full-size Dawn architecture (wav2vec2-large-robust pruned to 12 layers, random
weights: never third-party weights), exports it in audEERING's published ONNX layout with
:func:`wav2small.teachers.onnx.export_dawn_onnx`, then labels the same WAV folder with
``wav2small.labels.label`` end to end (read, batch, teacher, Parquet) through the torch teacher
and the ONNX teacher, interleaved round by round on the same number of threads. Prints the
median audio seconds per wall second of each and their ratio, plus the largest difference
between the two label tables.

Usage::

    python benchmarks/bench_onnx_teacher.py                  # 6 × 4 s clips, 3 rounds, 1 thread
    python benchmarks/bench_onnx_teacher.py --threads 2 --rounds 5
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    import numpy as np
    import pandas as pd
    import soundfile as sf
    import torch

    from wav2small import LABELS, SAMPLE_RATE
    from wav2small.labels import label
    from wav2small.signals import pseudo_speech
    from wav2small.teachers import DAWN_ARCHITECTURE, Wav2Vec2Teacher
    from wav2small.teachers.onnx import OnnxTeacher, export_dawn_onnx

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        rng = np.random.default_rng(0)
        audio = tmp / "audio"
        audio.mkdir()
        for i in range(args.clips):
            sf.write(audio / f"{i:03d}.wav", pseudo_speech(args.seconds, rng=rng), SAMPLE_RATE)
        teacher = Wav2Vec2Teacher(dict(DAWN_ARCHITECTURE)).eval()
        n_params = sum(p.numel() for p in teacher.parameters())
        export_dawn_onnx(teacher, tmp / "dawn-onnx")
        size = (tmp / "dawn-onnx" / "model.onnx").stat().st_size
        onnx_teacher = OnnxTeacher(tmp / "dawn-onnx", threads=args.threads)
        speeds: dict[str, list[float]] = {"torch": [], "onnx": []}
        tables = {}
        for r in range(args.rounds):
            for name, t in (("torch", teacher), ("onnx", onnx_teacher)):
                out = tmp / f"{name}-{r}.parquet"
                result = label(t, audio, out, progress=False, teacher_name=name)
                speeds[name].append(result.speed)
                tables[name] = pd.read_parquet(out)[list(LABELS)].to_numpy()
        diff = float(np.abs(tables["torch"] - tables["onnx"]).max())
    med = {k: statistics.median(v) for k, v in speeds.items()}
    print(
        f"Dawn architecture: {n_params / 1e6:.1f} M parameters, ONNX {size / 1e6:.0f} MB; "
        f"{args.clips} × {args.seconds:g} s clips, {args.threads} thread(s), {args.rounds} rounds"
    )
    for name in ("torch", "onnx"):
        runs = ", ".join(f"{v:.2f}" for v in speeds[name])
        print(f"  {name:5s} median {med[name]:.2f} audio-s/s  (rounds: {runs})")
    print(f"  onnx / torch throughput: {med['onnx'] / med['torch']:.2f}x")
    print(f"  max |torch − onnx| over the label tables: {diff:.2e}")


if __name__ == "__main__":
    main()
