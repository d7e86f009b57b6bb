"""Teacher labelling throughput (audio seconds per wall second) and peak memory.

Runs ``wav2small.labels.label`` end to end (read WAV files, batch by length, teacher forward,
write Parquet) for the small synthetic-world teacher (the shipped asset if present, else the same
architecture with random weights) and for the full-size Dawn architecture (wav2vec2-large-robust,
12 layers, random weights), with 1 and 2 torch threads. Each case runs in its own process, so
its peak RSS (``ru_maxrss``) is its own.

Usage::

    python benchmarks/bench_teacher.py            # 24 × 4 s clips (small), 8 × 4 s (Dawn)
    python benchmarks/bench_teacher.py --quick    # fewer clips
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CLIP_SECONDS = 4.0
CASES = (("small", 24), ("dawn", 8))
THREADS = (1, 2)


def _teacher(kind: str):
    import torch

    from wav2small import teachers as T

    torch.manual_seed(0)
    if kind == "small":
        try:
            return T.load_teacher("synth"), "synth asset"
        except T.TeacherError:
            return T.SynthTeacher().eval(), "SynthTeacher, random weights"
    return T.Wav2Vec2Teacher(T.DAWN_ARCHITECTURE).eval(), "Dawn architecture, random weights"


def run_case(kind: str, threads: int, clips: int) -> dict:
    """One measurement in this process: build the teacher, label ``clips`` WAVs, report."""
    import resource

    import soundfile as sf
    import torch

    from wav2small import SAMPLE_RATE
    from wav2small.labels import label
    from wav2small.signals import pseudo_speech_set

    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    teacher, what = _teacher(kind)
    load_s = time.perf_counter() - t0
    params = sum(p.numel() for p in teacher.parameters())
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "audio"
        folder.mkdir()
        for i, clip in enumerate(
            pseudo_speech_set(clips, seed=0, seconds=(CLIP_SECONDS, CLIP_SECONDS))
        ):
            sf.write(folder / f"{i:03d}.wav", clip, SAMPLE_RATE, subtype="PCM_16")
        label(
            teacher,
            folder,
            Path(tmp) / "warm.parquet",
            progress=False,  # warm-up
            batch_seconds=2 * CLIP_SECONDS,
        )
        result = label(
            teacher,
            folder,
            Path(tmp) / "labels.parquet",
            progress=False,
            batch_seconds=4 * CLIP_SECONDS,
        )
    return {
        "teacher": what,
        "params": params,
        "threads": threads,
        "audio_s": round(result.audio_seconds, 1),
        "wall_s": round(result.wall_seconds, 2),
        "audio_s_per_s": round(result.speed, 2),
        "load_s": round(load_s, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a quarter of the clips")
    parser.add_argument("--case", help=argparse.SUPPRESS)  # kind:threads:clips, child process
    args = parser.parse_args(argv)
    if args.case:
        kind, threads, clips = args.case.split(":")
        print(json.dumps(run_case(kind, int(threads), int(clips))))
        return 0
    rows = []
    for kind, clips in CASES:
        clips = max(2, clips // 4) if args.quick else clips
        for threads in THREADS:
            env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
            out = subprocess.run(
                [sys.executable, __file__, "--case", f"{kind}:{threads}:{clips}"],
                env=env,
                check=True,
                capture_output=True,
                text=True,
            ).stdout
            rows.append(json.loads(out.strip().splitlines()[-1]))
            print(json.dumps(rows[-1]), flush=True)
    print("\n| teacher | params | threads | audio-s/s | peak RSS MB |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['teacher']} | {r['params'] / 1e6:.2f}M | {r['threads']} | "
            f"{r['audio_s_per_s']} | {r['peak_rss_mb']} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
