"""Labelling throughput: the local engine vs Ray Data (1 and 2 teacher actors) on this machine.

For each teacher (the small synthetic-world teacher and the full-size Dawn architecture, random
weights) a folder of 4 s WAV clips is labelled by

* ``local``: :func:`wav2small.labels.label` in one process (torch threads 1 and 2);
* ``ray``: :func:`wav2small.labels_ray.label_ray` on a local Ray with as many CPUs as the machine
  has, with 1 actor and with 2 actors (one torch thread each; decode tasks share the CPUs).

Figures: ``wall_s`` and ``audio_s_per_s`` of the whole call (after the teacher is built and Ray is
up; ``ray_init_s`` is Ray's own start); ``cpu_per_audio_s`` (local: process CPU seconds per audio
second, less sensitive to other users of the machine than wall time); ``startup_s`` (Ray: wall
time of a one-batch job, i.e. actor start-up + teacher loading + one batch); ``load`` (1-minute
load average after the case: the machine is shared, read every figure against it). A last
part measures decoding alone (:func:`wav2small.labels_ray.decode_group`,
the Ray decode task) in audio seconds per CPU second for 16 kHz PCM WAV and 44.1 kHz stereo FLAC
(mix-down + soxr resampling).

Usage::

    nice python benchmarks/bench_scale.py             # 48 × 4 s (small), 16 × 4 s (Dawn)
    nice python benchmarks/bench_scale.py --quick     # a quarter of the clips, small only
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CLIP_SECONDS = 4.0
CLIPS = {"small": 48, "dawn": 16}
BATCH_SECONDS = 4 * CLIP_SECONDS
DECODE_CLIPS = 32


def _make_teacher(kind: str, folder: Path) -> Path:
    import torch

    from wav2small import teachers as T

    torch.manual_seed(0)
    if kind == "small":
        model = T.SynthTeacher().eval()
    else:
        model = T.Wav2Vec2Teacher(T.DAWN_ARCHITECTURE).eval()
    return T.save_teacher(model, folder / f"teacher-{kind}")


def _make_corpus(folder: Path, clips: int, *, rate: int = 16000, stereo: bool = False) -> Path:
    import numpy as np
    import soundfile as sf
    import soxr

    from wav2small import SAMPLE_RATE
    from wav2small.signals import pseudo_speech_set

    audio = folder / f"audio-{rate}-{'stereo' if stereo else 'mono'}"
    audio.mkdir(exist_ok=True)
    for i, clip in enumerate(pseudo_speech_set(clips, seed=0, seconds=(CLIP_SECONDS,) * 2)):
        if rate == SAMPLE_RATE:
            sf.write(audio / f"{i:03d}.wav", clip, SAMPLE_RATE, subtype="PCM_16")
            continue
        clip = soxr.resample(clip, SAMPLE_RATE, rate)
        sf.write(audio / f"{i:03d}.flac", np.stack([clip, 0.5 * clip], axis=1), rate)
    return audio


def _first_batch(audio: Path) -> list[str]:
    files = sorted(str(p) for p in audio.iterdir())
    return files[: int(BATCH_SECONDS // CLIP_SECONDS)]


def run_local(kind: str, clips: int) -> list[dict]:
    import torch

    from wav2small.labels import label
    from wav2small.teachers import load_teacher

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        teacher = load_teacher(_make_teacher(kind, tmp))
        audio = _make_corpus(tmp, clips)
        label(teacher, _first_batch(audio)[:1], tmp / "warm.parquet", progress=False)
        for threads in (1, 2):
            torch.set_num_threads(threads)
            cpu = time.process_time()
            result = label(
                teacher,
                audio,
                tmp / f"local-{threads}.parquet",
                batch_seconds=BATCH_SECONDS,
                progress=False,
            )
            cpu = time.process_time() - cpu
            rows.append(
                {
                    "engine": "local",
                    "teacher": kind,
                    "workers": 1,
                    "threads": threads,
                    "audio_s": round(result.audio_seconds, 1),
                    "wall_s": round(result.wall_seconds, 2),
                    "audio_s_per_s": round(result.speed, 2),
                    "cpu_per_audio_s": round(cpu / result.audio_seconds, 4),
                    "load": round(os.getloadavg()[0], 1),
                }
            )
    return rows


def run_ray(kind: str, clips: int) -> list[dict]:
    import ray

    from wav2small.labels_ray import DEFAULT_DECODE_CPUS, label_ray

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        teacher = _make_teacher(kind, tmp)
        audio = _make_corpus(tmp, clips)
        t0 = time.perf_counter()
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
        init_s = round(time.perf_counter() - t0, 1)
        cpus = float(os.cpu_count() or 1)
        for workers in (1, 2):
            options = {
                "workers": workers,
                "cpus_per_worker": min(1.0, (cpus - DEFAULT_DECODE_CPUS) / workers),
                "threads": 1,
                "batch_seconds": BATCH_SECONDS,
                "progress": False,
            }
            one, full = (
                label_ray(str(teacher), src, tmp / f"ray-{workers}-{i}.parquet", **options)
                for i, src in enumerate((_first_batch(audio), audio))
            )
            rows.append(
                {
                    "engine": "ray",
                    "teacher": kind,
                    "workers": workers,
                    "threads": 1,
                    "ray_init_s": init_s,
                    "audio_s": round(full.audio_seconds, 1),
                    "wall_s": round(full.wall_seconds, 2),
                    "audio_s_per_s": round(full.speed, 2),
                    "startup_s": round(one.wall_seconds, 1),
                    "load": round(os.getloadavg()[0], 1),
                }
            )
        ray.shutdown()
    return rows


def run_decode(clips: int) -> list[dict]:
    from wav2small.labels import Segment, batches, probe
    from wav2small.labels_ray import _group_row, decode_group

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for rate, stereo, what in (
            (16000, False, "16 kHz mono PCM16 WAV"),
            (44100, True, "44.1 kHz stereo FLAC"),
        ):
            audio = _make_corpus(Path(tmp), clips, rate=rate, stereo=stereo)
            segments, _ = probe([Segment(str(p), str(p)) for p in sorted(audio.iterdir())])
            groups = [_group_row(g) for g in batches(segments, BATCH_SECONDS)]
            decode_group(groups[0])  # warm-up
            cpu = time.process_time()
            for group in groups:
                decode_group(group)
            cpu = time.process_time() - cpu
            seconds = sum(s.duration for s in segments)
            rows.append(
                {
                    "engine": "decode",
                    "input": what,
                    "audio_s": round(seconds, 1),
                    "audio_s_per_cpu_s": round(seconds / cpu, 1),
                }
            )
    return rows


def _child(case: str) -> list[dict]:
    out = subprocess.run(
        [sys.executable, __file__, "--case", case],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def _table(rows: list[dict]) -> None:
    print(
        "| teacher | engine | actors × threads | audio s | wall s | audio-s/s | "
        "CPU s per audio s | one-batch job s | load |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        if r["engine"] == "decode":
            continue
        print(
            f"| {r['teacher']} | {r['engine']} | {r['workers']} × {r['threads']} | "
            f"{r['audio_s']} | {r['wall_s']} | {r['audio_s_per_s']} | "
            f"{r.get('cpu_per_audio_s', '')} | {r.get('startup_s', '')} | "
            f"{r['load']} |"
        )
    print("\n| decode input | audio-s per CPU-s |\n|---|---|")
    for r in rows:
        if r["engine"] == "decode":
            print(f"| {r['input']} | {r['audio_s_per_cpu_s']} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a quarter of the clips, small only")
    parser.add_argument("--case", help=argparse.SUPPRESS)  # engine:kind:clips, child process
    args = parser.parse_args(argv)
    if args.case:
        engine, kind, clips = args.case.split(":")
        if engine == "decode":
            rows = run_decode(int(clips))
        else:
            rows = (run_local if engine == "local" else run_ray)(kind, int(clips))
        print(json.dumps(rows))
        return 0
    rows = []
    engines = ["local", "ray"]
    if importlib.util.find_spec("ray") is None:
        print("Ray is not installed (pip install 'wav2small[scale]'): local engine only")
        engines = ["local"]
    for kind in ["small"] if args.quick else list(CLIPS):
        clips = max(8, CLIPS[kind] // 4) if args.quick else CLIPS[kind]
        for engine in engines:
            for row in _child(f"{engine}:{kind}:{clips}"):
                rows.append(row)
                print(json.dumps(row), flush=True)
    for row in _child(f"decode:-:{DECODE_CLIPS // 4 if args.quick else DECODE_CLIPS}"):
        rows.append(row)
        print(json.dumps(row), flush=True)
    print(f"\n{os.cpu_count()} CPUs, 1-min load average {os.getloadavg()[0]:.1f} at the end\n")
    _table(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
