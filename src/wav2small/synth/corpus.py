"""The corpus on disk: :func:`generate` writes WAV files and a CSV per split, resumably."""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
import wave
from pathlib import Path

import numpy as np

from wav2small import SAMPLE_RATE
from wav2small.synth.constants import (
    CSV_COLUMNS,
    DEFAULT_RATER_BIAS_SD,
    DEFAULT_RATER_NOISE_SD,
    DEFAULT_RATERS,
    GENERATOR_VERSION,
    SPLITS,
)
from wav2small.synth.labels import RaterPanel
from wav2small.synth.plan import _row, plan_clip
from wav2small.synth.pool import _check_jobs, _ClipJob, _pool_map
from wav2small.synth.render import _atomic_write, samples_hash


# --- files ------------------------------------------------------------------------------------
def _wav_meta(path: Path) -> dict | None:
    """Hash and length of a complete 16 kHz mono int16 WAV written by us, else None."""
    try:
        with wave.open(str(path), "rb") as w:
            if (w.getnchannels(), w.getsampwidth(), w.getframerate()) != (1, 2, SAMPLE_RATE):
                return None
            n = w.getnframes()
            frames = w.readframes(n)
    except (OSError, EOFError, wave.Error):
        return None
    if n == 0 or len(frames) != 2 * n:
        return None
    return {"hash": samples_hash(np.frombuffer(frames, dtype="<i2")), "samples": n}


def _previous_hashes(csv_path: Path) -> dict[str, str]:
    try:
        with csv_path.open(newline="", encoding="utf-8") as f:
            return {row["file"]: row["hash"] for row in csv.DictReader(f)}
    except (OSError, KeyError, csv.Error):
        return {}


def _write_csv(path: Path, rows: list[dict]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    _atomic_write(path, buf.getvalue().encode("utf-8"))


def _prepare_dir(wav_dir: Path, split: str, settings: dict) -> bool:
    """Create the clip folder; True if existing clips were made with the same settings."""
    wav_dir.mkdir(parents=True, exist_ok=True)
    settings_path = wav_dir / ".settings.json"
    try:
        same = json.loads(settings_path.read_text()) == settings
    except (OSError, ValueError):
        same = False
    if not same:  # clips of other settings must not be mistaken for finished ones later
        for stale in wav_dir.glob(f"{split}_[0-9][0-9][0-9][0-9][0-9][0-9].wav"):
            stale.unlink()
        _atomic_write(settings_path, json.dumps(settings, sort_keys=True).encode())
    return same


def generate(
    split: str,
    n: int,
    out: str | os.PathLike,
    *,
    seed: int = 0,
    jobs: int = 1,
    raters: int = DEFAULT_RATERS,
    rater_bias_sd: float = DEFAULT_RATER_BIAS_SD,
    rater_noise_sd: float = DEFAULT_RATER_NOISE_SD,
    clean: bool = False,
    progress: bool = True,
) -> Path:
    """Generate clips ``0 .. n-1`` of a split as WAV files plus a CSV of labels and metadata.

    Layout: ``out/<split>/<split>_000000.wav`` ... and ``out/<split>.csv`` (``file`` is relative
    to ``out``).  Resumable: valid clips already on disk (same seed, split and generator
    version; hash equal to the previous CSV's when there is one) are kept; new files are
    written under a temporary name and renamed, the CSV last.  The same seed gives identical
    files whatever ``jobs``.

    Args:
        split: one of :data:`SPLITS`.
        n: number of clips (>= 1).
        out: output folder.
        seed: corpus seed.
        jobs: worker processes.
        raters: simulated raters per clip; 0 publishes the true labels.
        rater_bias_sd: sd of each rater's bias.
        rater_noise_sd: sd of each rating's noise.
        clean: no channel nuisance (see :func:`plan_clip`).
        progress: show a progress bar.

    Returns:
        Path of the CSV.
    """
    from wav2small.synth.espeak import make_data_dir

    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose from {SPLITS}")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    _check_jobs(jobs)
    panel = RaterPanel(raters, rater_bias_sd, rater_noise_sd)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"{out}: --out must be a folder")
    wav_dir, csv_path = out / split, out / f"{split}.csv"
    settings = {"generator": GENERATOR_VERSION, "split": split, "seed": int(seed), "clean": clean}
    reuse = _prepare_dir(wav_dir, split, settings)
    previous = _previous_hashes(csv_path) if reuse else {}

    rows: dict[int, dict] = {}
    for i in range(n):  # resume: keep complete clips whose hash matches the previous CSV's
        name = f"{split}/{split}_{i:06d}.wav"
        meta = _wav_meta(out / name) if reuse else None
        if meta and previous.get(name, meta["hash"]) == meta["hash"]:
            rows[i] = _row(plan_clip(split, i, seed=seed, clean=clean, raters=panel), meta)
    todo = [i for i in range(n) if i not in rows]
    jobs_todo = [_ClipJob(split, i, int(seed), clean, panel, str(out)) for i in todo]
    with tempfile.TemporaryDirectory(prefix="w2s-espeak-") as tmp:
        data_dir = str(make_data_dir(tmp))
        tasks = [(job, data_dir) for job in jobs_todo]
        results = _pool_map(tasks, jobs, desc=f"synth {split}", progress=progress)
        for job, result in zip(jobs_todo, results, strict=True):
            rows[job.index] = json.loads(result)
    _write_csv(csv_path, [rows[i] for i in range(n)])
    return csv_path
