"""Prediction benchmark: real-time factor, files/s, peak RSS by file length, stream vs offline.

    python benchmarks/bench_predict.py [--model model.int8.onnx] [--clips 1000] [--hours 1]
                                       [--json out.json]

Without ``--model`` the *untrained* ``wav2small-paper`` preset is exported (fp32 + static int8)
into a temporary folder: speed and memory do not depend on the weights. Figures:

1. real-time factor (compute seconds per audio second) of the model on ``--threads`` ONNX
   Runtime threads, for 5 s and 10 s inputs (median of repeated calls, after a warm-up);
2. files per second over ``--clips`` short procedural clips (1–4 s, 16-bit WAV) written to a
   temporary folder: ``Predictor.predict(folder)`` end to end (listing, decoding, model);
3. memory of ``wav2small.load(model).predict(file)`` for a 5 s, a 10 min and a ``--hours`` file,
   each in a fresh process that first starts an ONNX Runtime session on the model (ONNX
   Runtime's own first-session cost, ≈ 8.5 MB whatever the model, is not the model's): the peak
   RSS (kernel ``VmHWM``, reset through ``/proc/self/clear_refs``) above that process, for
   ``load`` + ``predict`` and for ``predict`` alone. Target: ≤ 9 MB, the same for every length.
4. timelines and streams at a 4 ms step (every token): CPU seconds of the offline token timeline
   (the signal at once), of a stream fed 20 ms chunks (``push_array``, then ``close_array``),
   and of one offline whole-file pass (``predict``) over the same 60 s, interleaved in one run
   (process time, medians of ``STREAM_ROUNDS``), with the ratios, the stream's stated latency
   (the default ``chunk_tokens``: 6 receptive fields) and its max
   difference from the offline timeline. Target: stream ≤ 1.5× one whole-file pass, equal to the
   offline timeline within 1e-4. The same stream with other ``chunk_tokens`` (multiples of the
   receptive field, :data:`STREAM_FIELD_MULTIPLES`) gives the latency-vs-CPU trade-off. An
   utterance-normalised model is given the signal's statistics; a local-normalisation model
   needs none.

``--json`` also writes these figures to a file (``make bench`` passes one to bench_results.py,
which puts them in docs/RESULTS.md's targets table).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

from wav2small import SAMPLE_RATE
from wav2small.bench import stream_ratio
from wav2small.infer import Predictor
from wav2small.inputs import write_text
from wav2small.signals import pseudo_speech, pseudo_speech_set

RTF_SECONDS = (5.0, 10.0)
MIN_TIMING_SECONDS = 2.0
CLIP_SECONDS = (1.0, 4.0)
LONG_BLOCK_SECONDS = 60.0
#: Interleaved rounds of the stream-vs-offline timing (medians; per-round ratios swing ±0.3 on a
#: loaded machine, so more than a handful).
STREAM_ROUNDS = 9
#: Tokens per trunk call of the streams timed besides the default, in receptive fields.
STREAM_FIELD_MULTIPLES = (2, 4, 6, 8)


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
    left = round(hours * 3600 * SAMPLE_RATE)
    block = pseudo_speech(LONG_BLOCK_SECONDS, rng=rng)
    with sf.SoundFile(path, "w", SAMPLE_RATE, 1, "PCM_16") as f:
        while left > 0:  # one block, rescaled: writing an hour stays fast
            n = min(left, len(block))
            f.write(block[:n] * rng.uniform(0.5, 1.0))
            left -= n


def _stream_line(r: dict) -> str:
    one = stream_ratio(r)
    trade = "; ".join(
        f"{t['chunk tokens']} tokens: {stream_ratio(r, t):.2f}× one pass, latency "
        f"{t['latency']:.2f} s"
        for t in r.get("trade-off", [])
    )
    return (
        f"timeline at a 4 ms step over {r['seconds']:g} s ({r['rows']} rows), CPU s (median of "
        f"{r.get('rounds', 3)} interleaved): offline {r['offline timeline']:.3f}, stream of 20 ms "
        f"chunks {r['stream']:.3f}, one offline whole-file pass {r['one pass']:.3f}; "
        f"stream ÷ one pass {one:.2f} (median of the rounds' ratios; ≤ 1.5: "
        f"{'MET' if one <= 1.5 else 'NOT MET'}), "
        f"stream ÷ offline timeline {r['stream'] / r['offline timeline']:.2f}; stream RTF "
        f"{r['stream'] / r['seconds']:.4f}; latency ≤ {r['latency']:.2f} s "
        f"({r.get('chunk tokens', '?')} tokens per trunk call); max |stream − offline| "
        f"{r['max diff']:.1e}" + (f"; other chunk sizes: {trade}" if trade else "")
    )


RSS_CODE = r"""
import json, sys
import numpy as np
import wav2small
import wav2small.infer  # the package's imports (pandas, soundfile, soxr) are not working memory
from wav2small.backends import onnx_session

def kb(key):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key))

def reset():
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # VmHWM := VmRSS
    return kb("VmRSS:")

model, path, threads = sys.argv[1], sys.argv[2], int(sys.argv[3])
first = onnx_session(model, threads=threads)
first.run(None, {first.get_inputs()[0].name: np.zeros((1, 16000), np.float32)})
base = reset()
p = wav2small.load(model, threads=threads)
loaded = reset()
frame = p.predict(path, progress=False)
peak = kb("VmHWM:")
assert frame.notna().all().all() and len(frame) == 1
print(json.dumps({"load_predict": (peak - base) / 1024 + (loaded - base) / 1024 * 0,
                  "load": (loaded - base) / 1024, "predict": (peak - loaded) / 1024,
                  "torch": "torch" in sys.modules}))
"""


def predict_rss(model: Path, path: Path, threads: int) -> dict:
    """Peak-RSS increase (MB) of load + predict of ``path`` above a started ONNX Runtime session."""
    out = subprocess.run(
        [sys.executable, "-c", RSS_CODE, str(model), str(path), str(threads)],
        capture_output=True,
        text=True,
        check=True,
    )
    r = json.loads(out.stdout.strip().splitlines()[-1])
    r["load_predict"] = r["load"] + r["predict"]
    return r


def _run_stream(p: Predictor, x: np.ndarray, norm, chunk_tokens: int | None) -> tuple:
    """(CPU s, rows (n, 3), stream) of a stream fed ``x`` in 20 ms pushes, then closed."""
    stream = p.stream(step=0.004, context=4.0, norm=norm, chunk_tokens=chunk_tokens)
    t = time.process_time()
    rows = [stream.push_array(x[i : i + 320])[1] for i in range(0, len(x), 320)]
    rows.append(stream.close_array()[1])
    return time.process_time() - t, np.concatenate(rows), stream


def stream_vs_offline(model: Path, seconds: float = 60.0, threads: int = 1) -> dict:
    """CPU seconds of a 4 ms-step timeline offline, as a stream of 20 ms chunks (default and
    other ``chunk_tokens``), and one whole-file pass, interleaved."""
    from wav2small.infer import TokenTimelineStream
    from wav2small.tokens import signal_stats

    p = Predictor(model, threads=threads)
    x = pseudo_speech(seconds, rng=np.random.default_rng(2))
    norm = signal_stats([x]) if p.staged is not None and p.staged.norm == "utterance" else None
    p.predict((x, SAMPLE_RATE), progress=False)  # warm-up
    field = p.staged.context_tokens if p.staged is not None else 0
    default = getattr(p.stream(step=0.004, context=4.0, norm=norm), "_runner", None)
    others = [
        m * field
        for m in STREAM_FIELD_MULTIPLES
        if field and m * field != getattr(default, "chunk_tokens", None)
    ]
    cpu: dict = {"offline timeline": [], "stream": [], "one pass": [], **{c: [] for c in others}}
    latency = {}
    for _ in range(STREAM_ROUNDS):  # interleaved
        t = time.process_time()
        offline = TokenTimelineStream(p.staged, step=0.004, context=4.0, norm=norm)
        offline._feed(x)  # the offline timeline: the whole signal at once
        offline._finish()
        offline = offline._take_arrays()[1]
        cpu["offline timeline"].append(time.process_time() - t)
        t, streamed, stream = _run_stream(p, x, norm, None)
        cpu["stream"].append(t)
        t = time.process_time()
        p.predict((x, SAMPLE_RATE), progress=False)
        cpu["one pass"].append(time.process_time() - t)
        for c in others:
            t, _, other = _run_stream(p, x, norm, c)
            cpu[c].append(t)
            latency[c] = other.latency
    diff = (
        float(np.abs(streamed - offline).max()) if len(streamed) == len(offline) else float("nan")
    )
    med = {k: statistics.median(v) for k, v in cpu.items()}

    def per_one_pass(key) -> float:  # median of the rounds' ratios: a load that drifts between
        # rounds moves a round's stream and one pass alike (they run back to back)
        return statistics.median(a / b for a, b in zip(cpu[key], cpu["one pass"], strict=True))

    trade = [
        {"chunk tokens": c, "stream": med.pop(c), "÷ one pass": per_one_pass(c), "latency": lat}
        for c, lat in latency.items()
    ]
    runner = getattr(stream, "_runner", None)
    return {
        **med,
        "stream ÷ one pass": per_one_pass("stream"),
        "offline ÷ one pass": per_one_pass("offline timeline"),
        "rows": len(offline),
        "max diff": diff,
        "latency": getattr(stream, "latency", float("nan")),
        "chunk tokens": None if runner is None else runner.chunk_tokens,
        "seconds": seconds,
        "rounds": STREAM_ROUNDS,
        "trade-off": trade,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="ONNX model (default: export untrained wav2small-paper)")
    parser.add_argument("--clips", type=int, default=1000, help="short clips for files/s")
    parser.add_argument("--hours", type=float, default=1.0, help="length of the long file")
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads")
    parser.add_argument("--workers", type=int, default=1, help="files processed concurrently")
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
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

        stream = stream_vs_offline(model, threads=args.threads)
        lines.append(_stream_line(stream))
        print(lines[-1], flush=True)
        figures: dict = {
            "command": f"python benchmarks/bench_predict.py --clips {args.clips} "
            f"--hours {args.hours:g} --threads {args.threads}",
            "model": str(args.model or "untrained wav2small-paper, int8"),
            "stream": stream,
            "rss": {},
        }

        for label, hours in (
            ("5 s", 5 / 3600),
            ("10 min", 1 / 6),
            (f"{args.hours:g} h", args.hours),
        ):
            path = tmp / f"long_{label.replace(' ', '')}.wav"
            t = time.perf_counter()
            write_long(path, hours)
            r = predict_rss(model, path, args.threads)
            figures["rss"][label] = r
            lines.append(
                f"peak RSS above a started ONNX Runtime session, {label} file: load + predict "
                f"{r['load_predict']:.1f} MB (load {r['load']:.1f}, predict {r['predict']:.1f}); "
                f"≤ 9 MB: {'MET' if r['load_predict'] <= 9 else 'NOT MET'}; torch imported: "
                f"{r['torch']} ({time.perf_counter() - t:.0f} s)"
            )
            print(lines[-1], flush=True)
            path.unlink()
    print("\n## summary\n" + "\n".join(f"- {line}" for line in lines))
    if args.json:
        write_text(args.json, json.dumps(figures, indent=2))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
