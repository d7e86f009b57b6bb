"""Benchmark of the built-in corpus generator (``wav2small synth``).

Prints (1) generation speed in clips per minute with ``--jobs`` workers (SYNTH.md reference:
>= 3,000 clips/min with 2 workers for 3-6 s clips) and CPU time per clip, and (2) a learnability
check: ridge regression on simple utterance-level acoustic features computed by
:func:`wav2small.synth.acoustic_correlates`, trained on the ``train`` split and scored by CCC on
the ``test`` split.  Arousal must be clearly learnable; valence must stay near chance for the
utterance-level functionals (it lives in the F0 contour, smile and roughness) - if it is easy,
the mapping leaks; if arousal is not learnable, the mapping is broken.

Run: ``.venv/bin/python benchmarks/bench_synth.py [--train 400 --test 200 --jobs 2]``.
"""

from __future__ import annotations

import argparse
import csv
import math
import resource
import sys
import tempfile
import time
import wave
from pathlib import Path

import numpy as np

from wav2small import LABELS
from wav2small.metrics import ccc
from wav2small.synth import CONTROLS, acoustic_correlates, generate

#: Utterance-level functionals without the F0 contour.
FUNCTIONALS = (
    "rms_db", "level_sd_db", "log_f0", "f0_iqr_st", "voiced_frac", "harmonicity",
    "syllable_rate", "silence_frac", "tilt_db", "centroid_hz", "zcr", "am_4_7hz",
)  # fmt: skip
CONTOUR = ("f0_slope",)
ALPHAS = (0.01, 0.1, 1.0, 10.0, 100.0, 1000.0)
FOLDS = 5


def _read_wav(path: Path) -> np.ndarray:
    with wave.open(str(path), "rb") as w:
        return np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")


def _load(csv_path: Path) -> tuple[list[dict], np.ndarray, np.ndarray, np.ndarray]:
    """Rows, acoustic features (dict per clip), gold labels, true labels."""
    with csv_path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    feats = []
    for row in rows:
        c = acoustic_correlates(_read_wav(csv_path.parent / row["file"]))
        c["log_f0"] = math.log(c["f0_median"]) if math.isfinite(c["f0_median"]) else math.nan
        feats.append(c)
    gold = np.array([[float(r[k]) for k in LABELS] for r in rows])
    true = np.array([[float(r[f"{k}_true"]) for k in LABELS] for r in rows])
    return rows, np.array(feats, dtype=object), gold, true


def _matrix(feats: np.ndarray, names: tuple[str, ...]) -> np.ndarray:
    return np.array([[f[k] for k in names] for f in feats], dtype=np.float64)


def _ridge_fit(x: np.ndarray, y: np.ndarray, alpha: float) -> tuple[np.ndarray, ...]:
    mu, sd = np.nanmean(x, axis=0), np.nanstd(x, axis=0) + 1e-9
    z = np.nan_to_num((x - mu) / sd)
    ym = y.mean(axis=0)
    w = np.linalg.solve(z.T @ z + alpha * np.eye(z.shape[1]), z.T @ (y - ym))
    return mu, sd, w, ym


def _ridge_predict(model: tuple[np.ndarray, ...], x: np.ndarray) -> np.ndarray:
    mu, sd, w, ym = model
    return np.nan_to_num((x - mu) / sd) @ w + ym


def _ridge_cv(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, ...]:
    """Ridge with alpha chosen per output by k-fold CV (mean CCC) on the training set."""
    folds = np.arange(len(x)) % FOLDS
    best = []
    for j in range(y.shape[1]):
        scores = []
        for alpha in ALPHAS:
            pred = np.empty(len(x))
            for k in range(FOLDS):
                model = _ridge_fit(x[folds != k], y[folds != k, j : j + 1], alpha)
                pred[folds == k] = _ridge_predict(model, x[folds == k])[:, 0]
            scores.append(ccc(pred, y[:, j]))
        best.append(ALPHAS[int(np.nanargmax(scores))])
    models = [_ridge_fit(x, y[:, j : j + 1], a) for j, a in enumerate(best)]
    return tuple(models)


def _score(train_x, train_y, test_x, test_gold, test_true) -> tuple[np.ndarray, np.ndarray]:
    models = _ridge_cv(train_x, train_y)
    pred = np.column_stack([_ridge_predict(m, test_x)[:, 0] for m in models])
    return np.asarray(ccc(pred, test_gold)), np.asarray(ccc(pred, test_true))


def _speed(out: Path, args: argparse.Namespace) -> dict[str, Path]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    paths = {
        split: generate(split, n, out, seed=args.seed, jobs=args.jobs, progress=True)
        for split, n in (("train", args.train), ("test", args.test))
    }
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    n = args.train + args.test
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    mean_s = np.mean(
        [float(r["duration"]) for p in paths.values() for r in csv.DictReader(p.open())]
    )
    mb = sum(f.stat().st_size for f in out.rglob("*.wav")) / 1e6
    print(f"\n== speed ({args.jobs} jobs, {n} clips, mean {mean_s:.2f} s/clip)")
    print(f"clips/min            {n / wall * 60:8.0f}   (wall {wall:.1f} s)")
    print(f"CPU per clip         {cpu / n * 1000:8.1f} ms (workers, all processes)")
    print(f"disk per 1,000 clips {mb / n * 1000:8.0f} MB")
    try:
        load = Path("/proc/loadavg").read_text().split()[0]
        print(f"machine load average {load:>8s}   (other work on the machine slows the wall clock)")
    except OSError:
        pass
    return paths


def _learnability(paths: dict[str, Path], args: argparse.Namespace) -> None:
    _, tr_f, tr_gold, _ = _load(paths["train"])
    te_rows, te_f, te_gold, te_true = _load(paths["test"])
    tr_rows = list(csv.DictReader(paths["train"].open()))
    sets = {
        "functionals": (_matrix(tr_f, FUNCTIONALS), _matrix(te_f, FUNCTIONALS)),
        "functionals + F0 contour": (
            _matrix(tr_f, FUNCTIONALS + CONTOUR),
            _matrix(te_f, FUNCTIONALS + CONTOUR),
        ),
        "hidden controls (ceiling)": (
            np.array([[float(r[k]) for k in CONTROLS] for r in tr_rows]),
            np.array([[float(r[k]) for k in CONTROLS] for r in te_rows]),
        ),
    }
    print(f"\n== learnability: ridge on {args.train} train clips -> CCC on {args.test} test clips")
    print(f"{'features':28s} {'vs gold A / D / V':>22s}   {'vs truth A / D / V':>22s}")
    for name, (x_tr, x_te) in sets.items():
        c_gold, c_true = _score(x_tr, tr_gold, x_te, te_gold, te_true)
        fmt = " / ".join(f"{v:.2f}" for v in c_gold), " / ".join(f"{v:.2f}" for v in c_true)
        print(f"{name:28s} {fmt[0]:>22s}   {fmt[1]:>22s}")
    print(
        "(gold = mean of 5 simulated raters; A must be clearly learnable, V near 0 for functionals)"
    )


def main(argv: list[str] | None = None) -> int:
    """Generate a corpus, print clips/min and the learnability CCC table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=400, help="train clips (default 400)")
    parser.add_argument("--test", type=int, default=200, help="test clips (default 200)")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="keep the corpus in this folder")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="w2s-bench-synth-") as tmp:
        out = Path(args.out) if args.out else Path(tmp)
        if args.out and any(out.glob("*.csv")):
            print(f"note: {out} already holds a corpus; finished clips are reused (speed is off)")
        paths = _speed(out, args)
        _learnability(paths, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
