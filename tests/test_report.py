"""Plots: PNGs of the documented size, drawn from prediction tables, written atomically."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from wav2small import LABELS
from wav2small import report as R


def png_size(path) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk."""
    data = path.read_bytes()[:24]
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def timeline(files=("a.wav", "b.wav"), n=20, hop=0.25, nan_rows=()) -> pd.DataFrame:
    rows, values = [], []
    for k, f in enumerate(files):
        for i in range(n):
            rows.append((f, i * hop, i * hop + 1.0))
            t = i / n
            values.append([0.2 + 0.6 * t, 0.5 + 0.1 * k, 0.8 - 0.6 * t])
    frame = pd.DataFrame(
        values,
        index=pd.MultiIndex.from_tuples(rows, names=["file", "start", "end"]),
        columns=list(LABELS),
    )
    for i in nan_rows:
        frame.iloc[i] = np.nan
    return frame


def colour_pixels(path, hex_colour: str, tol: float = 0.06) -> int:
    """Pixels within ``tol`` of a colour (RGB in [0, 1])."""
    from matplotlib.image import imread

    rgb = np.array([int(hex_colour[i : i + 2], 16) / 255 for i in (1, 3, 5)])
    image = imread(path)[..., :3]
    return int((np.abs(image - rgb).max(-1) < tol).sum())


def test_timeline_png_has_the_documented_size_and_one_line_per_dimension(tmp_path):
    out = R.plot_timeline(timeline(), tmp_path / "plots" / "t.png", file="b.wav")
    w, h = (round(s * R.TIMELINE_DPI) for s in R.TIMELINE_SIZE_INCHES)
    assert out == tmp_path / "plots" / "t.png" and png_size(out) == (w, h)
    for colour in R.ADV_COLOURS:  # arousal, dominance and valence are all drawn
        assert colour_pixels(out, colour) > 200
    assert [p.name for p in out.parent.iterdir()] == ["t.png"]  # no temporary files left


def test_timeline_draws_the_chosen_file_only(tmp_path):
    """A file whose values are all NaN except in another file cannot be drawn."""
    frame = timeline(nan_rows=range(20))  # a.wav skipped
    with pytest.raises(ValueError, match="a.wav: no values to plot"):
        R.plot_timeline(frame, tmp_path / "a.png", file="a.wav")
    R.plot_timeline(frame, tmp_path / "b.png", file="b.wav")
    with pytest.raises(ValueError, match="nothing to plot"):
        R.plot_timeline(frame.iloc[:0], tmp_path / "c.png")
    assert not (tmp_path / "a.png").exists() and not (tmp_path / "c.png").exists()


def test_scatter_bars_and_size_plots_have_their_sizes(tmp_path):
    rng = np.random.default_rng(0)
    gold = rng.uniform(0, 1, (50, 3))
    out = R.plot_scatter(gold + rng.normal(0, 0.1, gold.shape), gold, tmp_path / "s.png")
    assert png_size(out) == tuple(round(s * R.EVAL_DPI) for s in R.SCATTER_SIZE_INCHES)
    metrics = pd.DataFrame(
        [
            {"model": m, "reference": "gold", **dict(zip(LABELS, v, strict=True)), "mean": 0.5}
            for m, v in (("tiny", (0.4, 0.5, 0.2)), ("paper", (0.7, 0.6, 0.5)))
        ]
    )
    out = R.plot_ccc_bars(metrics, tmp_path / "b.png")
    assert png_size(out) == tuple(round(s * R.EVAL_DPI) for s in R.BARS_SIZE_INCHES)
    rows = [{"model": "tiny", "params": 9_000, "CCC A gold": 0.5, "CCC D gold": 0.4,
             "CCC V gold": 0.2}, {"model": "paper", "params": 72_000, "CCC A gold": 0.7,
             "CCC D gold": 0.6, "CCC V gold": 0.5}]  # fmt: skip
    out = R.plot_size_vs_ccc(rows, tmp_path / "z.png")
    assert png_size(out) == tuple(round(s * R.SIZE_VS_CCC_DPI) for s in R.SIZE_VS_CCC_INCHES)


def test_plots_never_touch_pyplot_or_the_global_backend(tmp_path):
    code = textwrap.dedent(
        f"""
        import sys
        from test_report import timeline
        from wav2small import report
        report.plot_timeline(timeline(), {str(tmp_path / "t.png")!r})
        row = {{"model": "m", "params": 10, "CCC A gold": 0.1, "CCC D gold": 0.2,
               "CCC V gold": 0.3}}
        report.plot_size_vs_ccc([row], {str(tmp_path / "z.png")!r})
        print("matplotlib.pyplot" in sys.modules)
        """
    )
    import wav2small

    src = str(Path(wav2small.__file__).parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), src])}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
