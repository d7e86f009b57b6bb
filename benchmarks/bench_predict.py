"""Prediction benchmark: real-time factor, files per second, peak RSS on a one-hour file.

    python benchmarks/bench_predict.py [--model model.int8.onnx] [--clips 1000] [--hours 1]

Without ``--model`` the *untrained* ``wav2small-paper`` preset is exported (fp32 + static int8)
into a temporary folder: speed and memory do not depend on the weights. Figures:

1. real-time factor (compute seconds per audio second) of the model on ``--threads`` ONNX
   Runtime threads, for 5 s and 10 s inputs (median of repeated calls, after a warm-up);
2. files per second over ``--clips`` short procedural clips (1–4 s, 16-bit WAV) written to a
   temporary folder: ``Predictor.predict(folder)`` end to end (listing, decoding, model);
3. peak RSS predicting a ``--hours`` long file (streamed to disk in blocks), measured in a fresh
   subprocess, for one row per file (20 s pieces; and 5 s pieces) and for 5 s windows. The peak
   is the kernel's ``VmHWM`` of that process (``/proc/self/status``): on Linux
   ``getrusage(RUSAGE_SELF).ru_maxrss`` of a child also counts the parent's RSS at fork time
   (it survives the exec), so it cannot be smaller than this benchmark's own footprint; it is
   the fallback where /proc is missing.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np
import soundfile as sf

from wav2small import SAMPLE_RATE
from wav2small.infer import Predictor
from wav2small.signals import pseudo_speech, pseudo_speech_set

RTF_SECONDS = (5.0, 10.0)
MIN_TIMING_SECONDS = 2.0
CLIP_SECONDS = (1.0, 4.0)
LONG_BLOCK_SECONDS = 60.0
# (label, Predictor kwargs, predict call) for the one-hour file
LONG_MODES = (
    ("one row, 20 s pieces", "", "predict(path)"),
    ("one row, 5 s pieces", "max_seconds=5.0", "predict(path)"),
    ("5 s windows", "", "predict(path, win=5.0)"),
)


def export_untrained(out_dir: Path) -> Path:
    """Export the untrained wav2small-paper preset (fp32 + int8) and return the int8 path."""
    import torch

    from wav2small.export import export
    from wav2small.models import create_model

    torch.manual_seed(0)
    torch.set_num_threads(1)
    print("exporting the UNTRAINED wav2small-paper preset (speed/memory only) ...", flush=True)
    report = export(create_model("wav2small-paper"), out_dir, int8=True, gate_int8=False)
    print(report.summary())
    return Path(report.int8_path)


def real_time_factor(predictor: Predictor, seconds: float) -> float:
    """Median compute seconds per audio second of one call on ``seconds`` of audio."""
    x = pseudo_speech(seconds, rng=np.random.default_rng(0))
    predictor(x)  # warm-up
    times: list[float] = []
    while sum(times) < MIN_TIMING_SECONDS or len(times) < 5:
        t = time.perf_counter()
        predictor(x)
        times.append(time.perf_counter() - t)
    return statistics.median(times) / seconds


def files_per_second(predictor: Predictor, n: int, folder: Path, workers: int) -> tuple:
    """Write ``n`` clips to ``folder`` and time predicting all of them."""
    clips = pseudo_speech_set(n, seed=0, seconds=CLIP_SECONDS)
    for i, clip in enumerate(clips):
        sf.write(folder / f"clip{i:05d}.wav", clip, SAMPLE_RATE, subtype="PCM_16")
    audio = sum(len(c) for c in clips) / SAMPLE_RATE
    t = time.perf_counter()
    frame = predictor.predict(folder, num_workers=workers, progress=False)
    wall = time.perf_counter() - t
    assert len(frame) == n and frame.notna().all().all()
    return n / wall, audio / wall, wall, audio


def write_long(path: Path, hours: float) -> None:
    """Stream ``hours`` of procedural speech to a 16-bit WAV, one block at a time."""
    rng = np.random.default_rng(1)
    blocks = round(hours * 3600 / LONG_BLOCK_SECONDS)
    with sf.SoundFile(path, "w", SAMPLE_RATE, 1, "PCM_16") as f:
        for _ in range(blocks):
            f.write(pseudo_speech(LONG_BLOCK_SECONDS, rng=rng))


PEAK_RSS_CODE = (
    "def peak_rss_mb():\n"
    "    try:\n"
    "        with open('/proc/self/status') as f:\n"
    "            return next(int(l.split()[1]) for l in f if l.startswith('VmHWM')) / 1024\n"
    "    except (OSError, StopIteration):\n"
    "        import resource\n"
    "        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024\n"
)


def peak_rss(model: Path, path: Path, threads: int, kwargs: str, call: str) -> dict:
    """Peak RSS (MB) before and after predicting ``path``, in a fresh interpreter."""
    code = PEAK_RSS_CODE + textwrap.dedent(f"""
        import sys, time
        import wav2small
        p = wav2small.load({str(model)!r}, threads={threads}, {kwargs})
        path = {str(path)!r}
        before = peak_rss_mb()
        t = time.perf_counter()
        frame = p.{call}
        wall = time.perf_counter() - t
        after = peak_rss_mb()
        assert frame.notna().all().all()
        print(before, after, wall, len(frame), "torch" in sys.modules)
    """)
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    before, after, wall = map(float, out[:3])
    return {
        "before": before,
        "peak": after,
        "wall": wall,
        "rows": int(out[3]),
        "torch": out[4] == "True",
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="ONNX model (default: export untrained wav2small-paper)")
    parser.add_argument("--clips", type=int, default=1000, help="short clips for files/s")
    parser.add_argument("--hours", type=float, default=1.0, help="length of the long file")
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads")
    parser.add_argument("--workers", type=int, default=1, help="files processed concurrently")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="bench_predict_") as tmp:
        tmp = Path(tmp)
        model = Path(args.model) if args.model else export_untrained(tmp / "model")
        predictor = Predictor(model, threads=args.threads)
        lines = [
            f"model: {model.name} ({model.stat().st_size / 1024:.1f} KB), "
            f"{args.threads} thread(s), cpu count {os.cpu_count()}"
        ]
        for seconds in RTF_SECONDS:
            rtf = real_time_factor(predictor, seconds)
            lines.append(
                f"real-time factor, {seconds:g} s input: {rtf:.4f} "
                f"({1000 * rtf * 10:.1f} ms per 10 s of audio, {1 / rtf:.0f}x real time)"
            )
        fp32 = model.with_name("model.onnx")
        if fp32 != model and fp32.exists():  # the fp32 sibling, for comparison
            rtf = real_time_factor(Predictor(fp32, threads=args.threads), RTF_SECONDS[0])
            lines.append(f"fp32 {fp32.name}, {RTF_SECONDS[0]:g} s input: RTF {rtf:.4f}")
        print(*lines[1:], sep="\n", flush=True)

        (tmp / "clips").mkdir()
        fps, aps, wall, audio = files_per_second(predictor, args.clips, tmp / "clips", args.workers)
        lines.append(
            f"files/s over {args.clips} clips ({audio:.0f} s of audio, "
            f"{args.workers} worker(s)): {fps:.1f} files/s, {aps:.0f} audio-s/s, "
            f"{wall:.1f} s wall"
        )
        print(lines[-1], flush=True)

        long = tmp / "long.wav"
        t = time.perf_counter()
        write_long(long, args.hours)
        print(f"wrote {args.hours:g} h test file in {time.perf_counter() - t:.0f} s", flush=True)
        for label, kwargs, call in LONG_MODES:
            r = peak_rss(model, long, args.threads, kwargs, call)
            lines.append(
                f"{args.hours:g} h file, {label}: peak RSS {r['peak']:.0f} MB "
                f"(after loading {r['before']:.0f} MB), {r['rows']} row(s), {r['wall']:.0f} s "
                f"wall (RTF {r['wall'] / (args.hours * 3600):.4f}), torch imported: {r['torch']}"
            )
            print(lines[-1], flush=True)
    print("\n## summary\n" + "\n".join(f"- {line}" for line in lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
