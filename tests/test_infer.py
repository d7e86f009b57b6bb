"""Tests for wav2small.infer (Predictor, windows, timeline stream), the predict/plot CLI and the
torch-free runtime path."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

import wav2small
from wav2small import LABELS, SAMPLE_RATE
from wav2small.audio import AudioError
from wav2small.infer import (
    INDEX,
    STREAM_CHUNK_TOKENS,
    STREAM_FIELD_MULTIPLE,
    OnnxBackend,
    Predictor,
    TimelineStream,
    TokenTimelineStream,
    _seconds,
    _seconds_array,
    read_table,
    timeline_bounds,
    window_bounds,
    write_table,
)

SR = SAMPLE_RATE
HEAD_GAIN = 100.0  # untrained outputs barely move (std ≈ 0.002); amplify so comparisons bite
PARITY = 1e-4 * HEAD_GAIN  # export's 1e-4 torch-vs-ONNX gate, scaled by the head gain
# Import blocker for the torch-free runtime tests (a sitecustomize on PYTHONPATH).
BLOCKER = """
import sys

class _Block:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in ("torch", "scipy"):
            raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)")
        return None

sys.meta_path.insert(0, _Block())
"""


def speechy(seconds: float, seed: int, sr: int = SR) -> np.ndarray:
    """Cheap speech-like audio: a gliding harmonic tone with a syllable envelope and noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(round(seconds * sr)) / sr
    f0 = rng.uniform(100, 220) * (1 + 0.2 * np.sin(2 * np.pi * rng.uniform(0.2, 1) * t))
    phase = 2 * np.pi * np.cumsum(f0) / sr
    x = sum(np.sin(k * phase) / k for k in range(1, 6))
    env = 0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(2, 6) * t) ** 2
    return (0.2 * x * env + rng.normal(0, 0.01, t.size)).astype(np.float32)


# --- fixtures -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A tiny Wav2Small with an amplified head: .safetensors, fp32 .onnx and int8 .onnx."""
    import torch

    from wav2small.export import export_onnx, quantize_int8
    from wav2small.models import create_model, save_model

    out = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    model = create_model("wav2small-tiny").eval()
    with torch.no_grad():
        model.adv.weight.mul_(HEAD_GAIN)
    save_model(model, out / "tiny.safetensors")
    export_onnx(model, out / "tiny.onnx")
    calibration = [speechy(2.0, seed) for seed in range(4)]
    quantize_int8(out / "tiny.onnx", out / "tiny.int8.onnx", calibration=calibration)
    return {
        "torch": out / "tiny.safetensors",
        "onnx": out / "tiny.onnx",
        "int8": out / "tiny.int8.onnx",
        "module": model,
    }


@pytest.fixture(scope="module")
def onnx_predictor(models):
    return Predictor(models["onnx"])


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Three clips: 16 kHz mono, 44.1 kHz stereo, 8 kHz FLAC in a sub-folder; and a text file."""
    root = tmp_path_factory.mktemp("clips")
    sf.write(root / "a.wav", speechy(1.5, 1), SR)
    stereo = np.stack([speechy(2.2, 2, 44100), speechy(2.2, 3, 44100)], axis=1)
    sf.write(root / "b.wav", stereo, 44100)
    (root / "sub").mkdir()
    sf.write(root / "sub" / "c.flac", speechy(0.9, 4, 8000), 8000)
    (root / "notes.txt").write_text("not audio")
    return root


@pytest.fixture
def bad_files(tmp_path):
    """One file per bad-input case, keyed by the words the error message must contain."""
    files = {}
    files["file does not exist"] = tmp_path / "missing.wav"
    (tmp_path / "empty.wav").write_bytes(b"")
    files["file is empty"] = tmp_path / "empty.wav"
    (tmp_path / "corrupt.wav").write_bytes(os.urandom(2000))
    files["not a readable audio file"] = tmp_path / "corrupt.wav"
    sf.write(tmp_path / "full.wav", speechy(1.0, 5), SR, subtype="PCM_16")
    data = (tmp_path / "full.wav").read_bytes()
    (tmp_path / "truncated.wav").write_bytes(data[: len(data) // 2])
    files["truncated"] = tmp_path / "truncated.wav"
    nan = speechy(1.0, 6)
    nan[100] = np.nan
    sf.write(tmp_path / "nan.wav", nan, SR, subtype="FLOAT")
    files["NaN or Inf"] = tmp_path / "nan.wav"
    sf.write(tmp_path / "short.wav", speechy(0.002, 7), SR)  # 32 samples < one 64-sample frame
    files["too short"] = tmp_path / "short.wav"
    return files


# --- the table ------------------------------------------------------------------------------
def test_predict_folder_one_row_per_file(onnx_predictor, folder):
    frame = onnx_predictor.predict(folder)
    assert list(frame.columns) == list(LABELS)
    assert frame.index.names == list(INDEX)
    files = [Path(f).name for f in frame.index.get_level_values("file")]
    assert files == ["a.wav", "b.wav", "c.flac"]  # sorted, recursive, audio only
    starts = frame.index.get_level_values("start")
    ends = frame.index.get_level_values("end")
    assert (starts == 0).all()
    np.testing.assert_allclose(ends, [1.5, 2.2, 0.9], atol=1e-3)
    assert np.isfinite(frame.to_numpy()).all()
    assert frame.to_numpy().std(axis=0).min() > 1e-3  # outputs depend on the input
    assert frame.attrs["skipped"] == {}


def test_predict_pairs_match_files(onnx_predictor, folder):
    x, sr = sf.read(folder / "b.wav", dtype="float32")
    from_file = onnx_predictor.predict(folder / "b.wav")
    from_pair = onnx_predictor.predict((x, sr))
    from_list = onnx_predictor.predict([folder / "a.wav", (x, sr)])
    assert from_pair.index[0] == ("<array 0>", 0.0, from_file.index[0][2])
    np.testing.assert_allclose(from_pair.to_numpy(), from_file.to_numpy(), atol=1e-6)
    assert list(from_list.index.get_level_values("file")) == [str(folder / "a.wav"), "<array 1>"]
    named = onnx_predictor.predict({"live": (x, sr)})
    assert named.index[0][0] == "live"


def test_torch_and_onnx_agree(models, folder):
    t, o = Predictor(models["torch"]), Predictor(models["onnx"])
    assert (t.backend.name, o.backend.name) == ("torch", "onnx")
    for kwargs in ({}, {"win": 0.5, "hop": 0.25}):
        ft, fo = t.predict(folder, **kwargs), o.predict(folder, **kwargs)
        pd.testing.assert_index_equal(ft.index, fo.index)
        assert np.abs(ft.to_numpy() - fo.to_numpy()).max() <= PARITY
    module = Predictor(models["module"])  # an in-memory torch module works too
    np.testing.assert_allclose(module.predict(folder).to_numpy(), t.predict(folder).to_numpy())


def test_int8_model_loads_and_tracks_fp32(models, folder):
    fp32 = Predictor(models["onnx"]).predict(folder, win=0.5, hop=0.5).to_numpy()
    int8 = Predictor(models["int8"]).predict(folder, win=0.5, hop=0.5).to_numpy()
    assert int8.shape == fp32.shape
    for d in range(len(LABELS)):  # same ranking of windows, not the same numbers
        assert np.corrcoef(int8[:, d], fp32[:, d])[0, 1] > 0.9


def test_windows_cover_file_with_hop(onnx_predictor, tmp_path):
    path = tmp_path / "x.wav"
    sf.write(path, speechy(3.3, 8), SR, subtype="FLOAT")
    frame = onnx_predictor.predict(path, win=1.0, hop=0.4)
    starts = frame.index.get_level_values("start").to_numpy()
    ends = frame.index.get_level_values("end").to_numpy()
    np.testing.assert_allclose(starts, np.arange(len(starts)) * 0.4, atol=1e-9)
    np.testing.assert_allclose(ends[:-1] - starts[:-1], 1.0)
    assert ends[-1] == pytest.approx(3.3) and ends[-2] < 3.3  # the last window is cut at the end
    assert len(frame) == 7  # starts 0 … 2.4; window 2.4–3.3 reaches the end
    # the same windows computed from memory, batched differently
    x = sf.read(path, dtype="float32")[0]
    by_hand = np.stack(
        [
            onnx_predictor(x[round(s * SR) : round(e * SR)])[0]
            for s, e in zip(starts, ends, strict=True)
        ]
    )
    np.testing.assert_allclose(frame.to_numpy(), by_hand, atol=1e-5)
    np.testing.assert_allclose(
        onnx_predictor.predict((x, SR), win=1.0, hop=0.4).to_numpy(), frame.to_numpy(), atol=1e-6
    )


def test_window_bounds_rules():
    assert window_bounds(1000, 400, 400) == [(0, 400), (400, 800), (800, 1000)]
    assert window_bounds(1000, 400, 200) == [(0, 400), (200, 600), (400, 800), (600, 1000)]
    assert window_bounds(300, 400, 200) == [(0, 300)]  # shorter than win: one window
    assert window_bounds(3 * SR + 10, SR, SR)[-1] == (2 * SR, 3 * SR)  # 10-sample tail dropped


def test_window_tail_shorter_than_a_frame_is_dropped(onnx_predictor, tmp_path):
    path = tmp_path / "x.wav"
    sf.write(path, np.concatenate([speechy(2.0, 9), speechy(0.002, 9)]), SR)  # + 32 samples
    frame = onnx_predictor.predict(path, win=1.0)
    assert list(frame.index.get_level_values("end")) == [1.0, 2.0]


def test_long_input_is_length_weighted_mean_of_pieces(models, tmp_path):
    """Models without token stages (torch, MobileNets) average equal pieces of a long file."""
    p = Predictor(models["torch"], max_seconds=1.0)
    x = speechy(2.5, 10)
    path = tmp_path / "x.wav"
    sf.write(path, x, SR, subtype="FLOAT")
    piece = 13334  # 40000 samples → 3 equal pieces of ceil(40000 / 3)
    parts = [x[s : s + piece] for s in range(0, len(x), piece)]
    expected = sum(len(q) * p(q)[0].astype(np.float64) for q in parts) / len(x)
    for source in (path, (x, SR)):
        frame = p.predict(source)
        assert frame.index[0][1:] == (0.0, 2.5)
        np.testing.assert_allclose(frame.to_numpy()[0], expected, atol=1e-5)
    whole = Predictor(models["torch"]).predict((x, SR)).to_numpy()[0]
    assert np.abs(whole - expected).max() > 1e-4  # it really is a different computation


@pytest.mark.parametrize("kind", ["onnx", "int8"])
def test_staged_onnx_predicts_long_input_in_one_exact_chunked_pass(models, tmp_path, kind):
    """A Wav2Small export runs chunk by chunk (2 s reads, 500-token trunk calls) and still
    gives the whole-input A/D/V of one pass over the whole signal (max |diff| ≤ 1e-4)."""
    p = Predictor(models[kind])
    assert p.staged is not None
    x = speechy(11.3, 10) + 0.01  # a DC offset: the whole-file mean matters
    path = tmp_path / "x.wav"
    sf.write(path, x, SR, subtype="FLOAT")
    one_pass = p.backend.session.run(["adv"], {"signal": x[None]})[0][0]
    # fp32: 1e-4 absolute. int8: 1e-4 relative to the amplified (×100) outputs: statistics
    # summed in float64 instead of the graph's float32 can move an 8-bit rounding step.
    tol = 1e-4 * (1 if kind == "onnx" else np.abs(one_pass).max())
    for source in (path, (x, SR)):
        frame = p.predict(source)
        assert frame.index[0][1:] == (0.0, 11.3)
        assert np.abs(frame.to_numpy()[0] - one_pass).max() <= tol
    loud_then_quiet = np.concatenate([x[: 5 * SR] * 20, x[5 * SR :]])
    whole = p.backend.session.run(["adv"], {"signal": loud_then_quiet[None]})[0][0]
    got = p.predict((loud_then_quiet, SR)).to_numpy()[0]
    assert np.abs(got - whole).max() <= tol  # statistics of the whole input, not per chunk


def test_clip_threads_and_workers(models, folder):
    p = Predictor(models["onnx"], threads=2)
    assert p.backend.session.get_session_options().intra_op_num_threads == 2
    assert Predictor(models["onnx"]).backend.session.get_session_options().intra_op_num_threads == 1
    raw = p.predict(folder)
    assert raw.to_numpy().max() > 1  # the amplified head leaves [0, 1]
    clipped = p.predict(folder, clip=True).to_numpy()
    np.testing.assert_array_equal(clipped, np.clip(raw.to_numpy(), 0, 1))
    pd.testing.assert_frame_equal(p.predict(folder, num_workers=3), raw)


def test_lazy_package_api(models):
    p = wav2small.load(models["onnx"])
    assert isinstance(p, wav2small.Predictor)
    assert p.metadata["labels"] == ",".join(LABELS)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        wav2small.nope  # noqa: B018


# --- timeline -------------------------------------------------------------------------------
def test_timeline_bounds_rules():
    assert timeline_bounds(1000, 300, 500) == [(0, 300), (100, 600), (400, 900), (500, 1000)]
    assert timeline_bounds(900, 300, 500)[-1] == (400, 900)  # no extra row at an exact end
    assert timeline_bounds(100, 300, 500) == [(0, 100)]  # shorter than one step


def _token_timeline(p, x, norm, step, context, chunks=None):
    """Rows of a TokenTimelineStream fed ``x`` whole (the offline form) or in ``chunks``."""
    from wav2small.infer import TokenTimelineStream

    stream = TokenTimelineStream(p.staged, step=step, context=context, norm=norm)
    for chunk in chunks or [x]:
        stream._feed(chunk)
    stream._finish()
    return stream._take()


def test_token_timeline_pools_the_whole_inputs_tokens_per_window(onnx_predictor):
    """Each row pools the whole input's tokens inside its window, then runs the head."""
    from wav2small.tokens import OnlinePool, signal_stats

    p = onnx_predictor
    x = speechy(3.1, 14)
    rows = _token_timeline(p, x, signal_stats([x]), 0.5, 1.0)
    _, lin, sof = p.backend.session.run(None, {"signal": x[None]})  # one pass: all tokens
    assert [r[2] for r in rows] == [0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.1]
    for _, start, end, row in rows:
        j0, j1 = round(start * SR) // 64, round(end * SR) // 64
        if end == rows[-1][2]:
            j1 = lin.shape[2]  # the last row takes every token up to the end
        pool = OnlinePool()
        pool.add(lin[0, :, j0:j1], sof[0, :, j0:j1])
        assert np.abs(p.staged.head(pool.pooled()[None])[0] - row).max() <= 1e-4


def test_token_stream_equals_offline_token_timeline(onnx_predictor):
    """Given the statistics, a stream computes each token once and equals the offline rows."""
    from wav2small.tokens import signal_stats

    x = speechy(5.3, 11)
    norm = signal_stats([x])
    offline = _token_timeline(onnx_predictor, x, norm, 0.004, 1.5)
    assert len(offline) == 1325  # a row every token (5.3 s / 4 ms), the last at the end
    rng = np.random.default_rng(0)
    stream = onnx_predictor.stream(step=0.004, context=1.5, norm=norm)
    assert stream.latency == pytest.approx((78 * 64 + 448 - 64) / SR)  # 6 × 13 tokens of field
    parts, i = [], 0
    while i < len(x):  # chunks from 1 sample to 0.7 s, as a sound card might deliver
        n = int(rng.choice([1, 37, 256, 320, 4000, 11200]))
        parts.append(stream.push(x[i : i + n]))
        i += n
        assert stream._pool.end - stream._pool.first <= (1.5 + 0.004 + 0.7) * 250 + 2 * 78
    parts.append(stream.close())
    streamed = pd.concat(parts)
    ends = streamed.index.get_level_values("end").to_numpy()
    np.testing.assert_allclose(ends, [r[2] for r in offline])
    assert np.abs(streamed.to_numpy() - np.stack([r[3] for r in offline])).max() <= 1e-4


def test_stream_without_statistics_reruns_each_window(onnx_predictor):
    """An utterance-normalised model's live stream (no statistics) re-runs every window."""
    x = speechy(5.3, 11)
    offline = [(s, e, onnx_predictor(x[s:e])[0]) for s, e in timeline_bounds(len(x), 4000, 24000)]
    stream = onnx_predictor.stream(step=0.25, context=1.5, name="<array 0>")
    assert type(stream) is TimelineStream
    rng = np.random.default_rng(0)
    parts, i = [], 0
    while i < len(x):  # chunks from 1 sample to 0.7 s, as a sound card might deliver
        n = int(rng.choice([1, 37, 256, 4000, 11200]))
        parts.append(stream.push(x[i : i + n]))
        i += n
        assert len(stream._buf) <= (1.5 + 0.25 + 0.7) * SR  # bounded: context + step + chunk
    parts.append(stream.close())
    streamed = pd.concat(parts)
    ends = streamed.index.get_level_values("end").to_numpy()
    np.testing.assert_allclose(ends, [e / SR for _, e, _ in offline])
    np.testing.assert_allclose(ends[:-1], 0.25 * np.arange(1, len(ends)))
    starts = streamed.index.get_level_values("start").to_numpy()
    np.testing.assert_allclose(starts, np.maximum(0, ends - 1.5), atol=1e-9)
    np.testing.assert_array_equal(streamed.to_numpy(), np.stack([y for _, _, y in offline]))


def test_stream_resamples_like_the_file_path(onnx_predictor, tmp_path):
    x = speechy(3.0, 12, sr=8000)
    path = tmp_path / "x8k.wav"
    sf.write(path, x, 8000, subtype="FLOAT")
    offline = onnx_predictor.timeline(path, step=0.5, context=1.0)
    stream = TimelineStream(onnx_predictor, step=0.5, context=1.0, sample_rate=8000)
    rows = [stream.push(x[i : i + 1000]) for i in range(0, len(x), 1000)] + [stream.close()]
    streamed = pd.concat(rows)
    np.testing.assert_allclose(
        streamed.index.get_level_values("end"), offline.index.get_level_values("end")
    )
    np.testing.assert_allclose(streamed.to_numpy(), offline.to_numpy(), atol=1e-3)


def test_stream_errors(onnx_predictor):
    stream = onnx_predictor.stream(step=0.5, context=1.0, name="mic")
    assert stream.push(np.zeros(0, np.float32)).empty
    with pytest.raises(AudioError, match="mic: contains NaN or Inf"):
        stream.push(np.array([0.0, np.nan], np.float32))
    stream.close()
    with pytest.raises(RuntimeError, match="mic: push\\(\\) after close\\(\\)"):
        stream.push(np.zeros(10, np.float32))
    with pytest.raises(ValueError, match="step and context must be at least 64 samples"):
        onnx_predictor.stream(step=0.001)
    with pytest.raises(ValueError, match="context must be a positive number"):
        onnx_predictor.stream(context=-1)


# --- bad input ------------------------------------------------------------------------------
def test_every_bad_file_raises_naming_file_and_problem(onnx_predictor, bad_files):
    for problem, path in bad_files.items():
        for kwargs in ({}, {"win": 0.5}):
            with pytest.raises(AudioError, match=problem) as err:
                onnx_predictor.predict(path, **kwargs)
            assert str(path) in str(err.value)
        with pytest.raises(AudioError, match=problem):
            onnx_predictor.timeline(path)


def test_skip_marks_bad_files_and_keeps_the_rest(onnx_predictor, bad_files, folder):
    good = onnx_predictor.predict(folder, win=0.5)
    inputs = [folder, *bad_files.values()]
    frame = onnx_predictor.predict(inputs, win=0.5, on_error="skip")
    assert set(frame.attrs["skipped"]) == {str(p) for p in bad_files.values()}
    for problem, path in bad_files.items():
        assert problem in frame.attrs["skipped"][str(path)]
        row = frame.xs(str(path), level="file")
        assert len(row) == 1 and row.isna().all().all()
    pd.testing.assert_frame_equal(frame.dropna(), good, check_index_type=False)


def test_bad_arguments(onnx_predictor, tmp_path, folder):
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(ValueError, match="empty_dir: no audio files"):
        onnx_predictor.predict(tmp_path / "empty_dir")
    with pytest.raises(TypeError, match="expected a path or an"):
        onnx_predictor.predict([np.zeros(100)])
    with pytest.raises(ValueError, match="hop needs win"):
        onnx_predictor.predict(folder, hop=1.0)
    with pytest.raises(ValueError, match="win must be a positive"):
        onnx_predictor.predict(folder, win=0)
    with pytest.raises(ValueError, match="on_error must be one of"):
        onnx_predictor.predict(folder, on_error="ignore")
    with pytest.raises(ValueError, match="nothing to predict"):
        onnx_predictor.predict([])
    with pytest.raises(AudioError, match="<array 0>: too short: 10 samples"):
        onnx_predictor.predict((np.zeros(10, np.float32), SR))


def test_bad_models(tmp_path, models):
    with pytest.raises(FileNotFoundError, match="nope.onnx: no such model file"):
        Predictor(tmp_path / "nope.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(ValueError, match="junk.onnx: not a loadable ONNX model"):
        Predictor(tmp_path / "junk.onnx")
    with pytest.raises(ValueError, match="backend must be one of"):
        Predictor(models["onnx"], backend="tflite")


def _with_metadata(src: Path, dst: Path, **facts: str) -> Path:
    import onnx

    proto = onnx.load(str(src))
    for entry in proto.metadata_props:
        if entry.key in facts:
            entry.value = facts[entry.key]
    onnx.save(proto, str(dst))
    return dst


def test_onnx_metadata_order_and_rate(models, tmp_path, folder):
    reference = Predictor(models["onnx"]).predict(folder)
    swapped = _with_metadata(
        models["onnx"], tmp_path / "swapped.onnx", labels="valence,arousal,dominance"
    )
    frame = Predictor(swapped).predict(folder)
    # the model's 1st output is now called valence, so it moves to the last column
    np.testing.assert_allclose(frame["valence"], reference["arousal"])
    np.testing.assert_allclose(frame["arousal"], reference["dominance"])
    wrong = _with_metadata(models["onnx"], tmp_path / "cats.onnx", labels="happy,sad,angry")
    with pytest.raises(ValueError, match="cats.onnx: model outputs"):
        OnnxBackend(wrong)
    rate = _with_metadata(models["onnx"], tmp_path / "8k.onnx", sample_rate="8000")
    with pytest.raises(ValueError, match="8k.onnx: model expects 8000 Hz"):
        OnnxBackend(rate)


# --- tables and CLI ---------------------------------------------------------------------------
@pytest.mark.parametrize("suffix", [".csv", ".parquet", ".json"])
def test_table_round_trip(onnx_predictor, folder, tmp_path, suffix):
    frame = onnx_predictor.predict(folder, win=1.0)
    out = write_table(frame, tmp_path / f"t{suffix}")
    assert not list(tmp_path.glob("*.tmp"))
    back = read_table(out)
    pd.testing.assert_index_equal(back.index, frame.index, exact=False)
    np.testing.assert_allclose(back.to_numpy(), frame.to_numpy(), rtol=1e-6)
    with pytest.raises(ValueError, match="unknown table format"):
        write_table(frame, tmp_path / "t.xlsx")


def test_cli_predict_folder_writes_csv(models, folder, tmp_path, capsys):
    from wav2small.cli import main

    out = tmp_path / "out.csv"
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"junk" * 100)
    assert (
        main(
            [
                "predict",
                str(models["onnx"]),
                str(folder),
                str(bad),
                "--out",
                str(out),
                "--on-error",
                "skip",
            ]
        )
        == 0
    )
    table = pd.read_csv(out)
    assert list(table.columns) == [*INDEX, *LABELS]
    assert len(table) == 4 and table.iloc[3].isna()[list(LABELS)].all()
    expected = Predictor(models["onnx"]).predict(folder)
    np.testing.assert_allclose(table.iloc[:3][list(LABELS)], expected.to_numpy(), rtol=1e-6)
    skipped = pd.read_csv(tmp_path / "out.skipped.csv")
    assert skipped["file"].tolist() == [str(bad)]
    assert "not a readable audio file" in capsys.readouterr().err

    assert main(["predict", str(models["onnx"]), str(folder / "a.wav"), "--win", "0.5"]) == 0
    printed = capsys.readouterr().out
    assert "arousal" in printed and printed.count("a.wav") == 1 and "1.5" in printed

    assert main(["predict", str(models["onnx"]), str(bad)]) == 2  # a user error: one line
    assert "bad.wav: not a readable" in capsys.readouterr().err


def test_cli_timeline_and_plot(models, folder, tmp_path):
    from wav2small.cli import main

    out = tmp_path / "tl.json"
    assert (
        main(
            [
                "predict",
                str(models["int8"]),
                str(folder / "b.wav"),
                "--timeline",
                "0.5",
                "--context",
                "1",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    table = read_table(out)
    np.testing.assert_allclose(table.index.get_level_values("end"), [0.5, 1.0, 1.5, 2.0, 2.2])
    png = tmp_path / "tl.png"
    assert (
        main(
            [
                "plot-timeline",
                str(models["onnx"]),
                str(folder / "b.wav"),
                "--out",
                str(png),
                "--step",
                "0.25",
            ]
        )
        == 0
    )
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    from wav2small.report import plot_timeline

    with pytest.raises(ValueError, match="nope.wav: not in the timeline"):
        plot_timeline(table, tmp_path / "x.png", file="nope.wav")


# --- torch-free runtime and memory --------------------------------------------------------------
def _run_without_torch(tmp_path: Path, code: str) -> str:
    """Run ``code`` in a fresh interpreter where importing torch or scipy fails."""
    site = tmp_path / "blocker"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(BLOCKER)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(site), *filter(None, [os.environ.get("PYTHONPATH")])]),
    }
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_runtime_path_imports_no_torch(models, folder, tmp_path):
    out = tmp_path / "rt.csv"
    stdout = _run_without_torch(
        tmp_path,
        f"""
        import sys
        try:
            import torch
        except ImportError:
            pass
        else:
            raise SystemExit("the blocker did not block torch")
        import wav2small
        from wav2small.cli import main
        p = wav2small.load({str(models["int8"])!r})
        frame = p.predict({str(folder)!r}, win=1.0)
        stream = p.stream(step=0.5, context=1.0)
        stream.push(frame.to_numpy().ravel().repeat(200).astype("float32"))
        stream.close()
        tokens = p.stream(step=0.004, context=1.0, norm=[0.0, 1.0])  # token reuse
        tokens.push(frame.to_numpy().ravel().repeat(200).astype("float32"))
        assert len(tokens.close()) >= 1
        argv = ["predict", {str(models["onnx"])!r}, {str(folder)!r}, "--out", {str(out)!r}]
        assert main(argv) == 0
        try:
            wav2small.load({str(models["torch"])!r})
        except ImportError as exc:
            print("torch checkpoint:", exc)
        print("loaded:", sorted(m for m in ("torch", "scipy") if m in sys.modules))
    """,
    )
    assert "loaded: []" in stdout
    assert "torch checkpoint: a torch checkpoint needs torch" in stdout
    expected = Predictor(models["onnx"]).predict(folder)
    np.testing.assert_allclose(read_table(out).to_numpy(), expected.to_numpy(), rtol=1e-6)


def _write_long(path: Path, minutes: float) -> None:
    """Stream a long 16-bit file to disk, 10 s at a time."""
    rng = np.random.default_rng(0)
    block = speechy(10.0, 13)
    with sf.SoundFile(path, "w", SR, 1, "PCM_16") as f:
        for _ in range(round(minutes * 6)):
            f.write(block * rng.uniform(0.5, 1.0))


def _peak_rss_mb(tmp_path: Path, model: Path, path: Path, call: str) -> tuple[float, float]:
    """Peak RSS (MB) of a fresh process after loading ``model`` and after ``call``.

    The kernel's VmHWM, not ``ru_maxrss``: a child's ``ru_maxrss`` starts at the RSS of its
    parent (this pytest process, with torch loaded), which would hide any growth.
    """
    out = _run_without_torch(
        tmp_path,
        f"""
        import wav2small

        def peak():
            with open("/proc/self/status") as f:
                return next(int(line.split()[1]) for line in f if line.startswith("VmHWM"))

        p = wav2small.load({str(model)!r})
        before = peak()
        frame = p.{call}
        after = peak()
        assert frame.notna().all().all() and len(frame) >= 1
        print(before / 1024, after / 1024)
    """,
    )
    before, after = map(float, out.split())
    return before, after


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
def test_long_file_bounded_memory(models, tmp_path):
    path = tmp_path / "long.wav"
    _write_long(path, minutes=3)
    # one pass over 3 minutes would need ≥ 0.7 GB (13 × 9 im2col rows × 90000 × 26 floats)
    before, after = _peak_rss_mb(tmp_path, models["onnx"], path, f"predict({str(path)!r})")
    assert after - before < 250, (before, after)


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
def test_ten_minute_file_bounded_memory(models, tmp_path):
    path = tmp_path / "long.wav"
    _write_long(path, minutes=10)
    for call in (
        f"predict({str(path)!r})",
        f"predict({str(path)!r}, win=5.0, hop=2.5)",
        f"timeline({str(path)!r}, step=2.0, context=4.0)",
    ):
        before, after = _peak_rss_mb(tmp_path, models["int8"], path, call)
        assert after - before < 250, (call, before, after)


# --- a trend model (Wav2SmallConfig.trend): online, windowed and int8 --------------------------
@pytest.fixture(scope="module")
def trend_models(tmp_path_factory):
    """A small pitch-trunk model with trend pooling read inside the Gram (``trend_gram``, as
    wav2small-paper), amplified head: fp32 and int8 exports."""
    import torch

    from wav2small.export import export_onnx, quantize_int8
    from wav2small.models.wav2small import Wav2Small, Wav2SmallConfig

    out = tmp_path_factory.mktemp("trend")
    torch.manual_seed(0)
    cfg = Wav2SmallConfig(
        frontend="pitch",
        norm="local",
        width=16,
        pool=8,
        dilations=(1, 3, 9),
        trend=4,
        trend_gram=True,
    )
    model = Wav2Small(cfg).train()
    with torch.no_grad():  # BatchNorm statistics that are not the identity
        for seed in range(3):
            model(torch.from_numpy(np.stack([speechy(1.0, 10 * seed + i) for i in range(4)])))
        model.adv.weight.mul_(HEAD_GAIN)
        # let the trend move the outputs: the trend entries of q = [pooled ; trend]
        model.adv.weight[:, cfg.pool : cfg.pool + cfg.trend].mul_(50.0)
    model.eval()
    export_onnx(model, out / "trend.onnx")
    calibration = [speechy(2.0, seed) for seed in range(8)]
    quantize_int8(out / "trend.onnx", out / "trend.int8.onnx", calibration=calibration)
    return {"onnx": out / "trend.onnx", "int8": out / "trend.int8.onnx", "module": model}


@pytest.mark.parametrize("kind", ["onnx", "int8"])
def test_trend_model_chunked_whole_file_equals_one_pass(trend_models, tmp_path, kind):
    """The trend pooling accumulated chunk by chunk (running sums) gives the one-pass A/D/V."""
    import torch

    p = Predictor(trend_models[kind])
    assert p.staged is not None and p.staged.trend_name == "trend"
    x = speechy(11.3, 21)
    path = tmp_path / "x.wav"
    sf.write(path, x, SR, subtype="FLOAT")
    one_pass = p.backend.session.run(["adv"], {"signal": x[None]})[0][0]
    tol = 1e-4 * (1 if kind == "onnx" else np.abs(one_pass).max())
    assert np.abs(p.predict(path).to_numpy()[0] - one_pass).max() <= tol
    if kind == "onnx":
        with torch.no_grad():
            ref = trend_models["module"](torch.from_numpy(x)[None]).numpy()[0]
        assert np.abs(one_pass - ref).max() <= PARITY
        # the trend matters: the time-reversed clip's trend is (about) negated
        flip = p.predict((x[::-1].copy(), SR)).to_numpy()[0]
        assert np.abs(flip - one_pass).max() > 1e-3


@pytest.mark.parametrize("chunk_tokens", [5, 64, None, 5000])
def test_stream_of_20ms_pushes_equals_the_timeline_and_keeps_its_stated_latency(
    trend_models, chunk_tokens
):
    """Whatever the tokens per trunk call, a stream fed 20 ms pushes gives the offline timeline
    (4 ms step: a row per token), and each row comes back within its stated latency."""
    p = Predictor(trend_models["onnx"])
    x = speechy(5.3, 31)
    offline = p.timeline((x, SR), step=0.004, context=1.0, progress=False)
    stream = p.stream(step=0.004, context=1.0, chunk_tokens=chunk_tokens)
    s, push = p.staged.token_samples, 320
    chunk = stream._runner.chunk_tokens
    default = TokenTimelineStream.default_chunk_tokens(p.staged)
    assert default >= max(STREAM_CHUNK_TOKENS, STREAM_FIELD_MULTIPLE * p.staged.context_tokens)
    assert chunk == (chunk_tokens or default)
    assert stream.latency == pytest.approx((chunk * s + p.staged.right - s) / SR)
    values, ends, delays, n = [], [], [], 0
    for i in range(0, len(x), push):
        bounds, v = stream.push_array(x[i : i + push])
        n += len(x[i : i + push])
        values.append(v)
        ends.append(bounds[:, 1])
        delays += list(n / SR - bounds[:, 1])  # seconds since the row's end
    last = stream.close()
    values.append(last.to_numpy())
    ends.append(last.index.get_level_values("end").to_numpy())
    np.testing.assert_array_equal(np.concatenate(ends), offline.index.get_level_values("end"))
    assert np.abs(np.concatenate(values) - offline.to_numpy()).max() <= 1e-4
    # a push returns every row it completes: the wait is the latency at most (plus the part of
    # the push after the sample that completed the row), and the first row of a trunk call waits
    # about that long
    assert max(delays, default=0.0) <= stream.latency + push / SR
    if (len(x) - p.staged.right) // s > chunk:  # at least one trunk call before the end
        assert max(delays) >= stream.latency - push / SR


def test_token_stream_push_array_checks_every_push(trend_models):
    """A token stream's push_array (most pushes complete no trunk call and return at once)
    still rejects bad samples, naming the stream, converts other dtypes and refuses pushes after
    close."""
    p = Predictor(trend_models["onnx"])
    stream = p.stream(step=0.004, context=1.0, name="mic")
    bounds, values = stream.push_array(np.zeros(320, np.float32))
    assert bounds.shape == (0, 2) and values.shape == (0, 3)
    with pytest.raises(AudioError, match="mic: contains NaN or Inf"):
        stream.push_array(np.array([0.0, np.nan], np.float32))
    with pytest.raises(AudioError, match="mic: samples up to 2e\\+04"):
        stream.push_array(np.full(10, 2e4, np.float32))
    x = speechy(3.0, 8)
    for i in range(0, len(x), 320):  # float64 pushes: the general path converts them
        stream.push_array(x[i : i + 320].astype(np.float64))
    assert stream.seconds == pytest.approx(3.02)
    stream.close()
    with pytest.raises(RuntimeError, match="mic: push\\(\\) after close\\(\\)"):
        stream.push_array(np.zeros(10, np.float32))


def test_token_stream_pushes_kept_aside_are_copied_checked_and_counted(trend_models):
    """Pushes that complete nothing are kept aside until one can: a caller reusing its buffer
    changes nothing, a bad push among them is refused and leaves the stream as it was, seconds
    counts them, and close_array returns the last rows: all rows equal the offline timeline."""
    p = Predictor(trend_models["onnx"])
    x = speechy(4.3, 12)
    offline = p.timeline((x, SR), step=0.004, context=1.0, progress=False)
    stream = p.stream(step=0.004, context=1.0, name="mic", chunk_tokens=64)
    buf = np.empty(320, np.float32)  # one buffer, overwritten before every push
    values, ends = [], []
    for i in range(0, len(x), 320):
        n = len(x[i : i + 320])
        buf[:n] = x[i : i + 320]
        bounds, v = stream.push_array(buf[:n])
        values.append(v)
        ends.append(bounds[:, 1])
        assert stream.seconds == pytest.approx((i + n) / SR)
        if i == 320 * 7:
            with pytest.raises(AudioError, match="mic: contains NaN or Inf"):
                stream.push_array(np.array([0.1, np.inf], np.float32))
            assert stream.seconds == pytest.approx((i + n) / SR)
    bounds, v = stream.close_array()
    values.append(v)
    ends.append(bounds[:, 1])
    np.testing.assert_array_equal(np.concatenate(ends), offline.index.get_level_values("end"))
    assert np.abs(np.concatenate(values) - offline.to_numpy()).max() <= 1e-4
    assert stream.close_array()[0].shape == (0, 2)  # closed: nothing more


def test_seconds_array_equals_seconds():
    n = np.concatenate([np.arange(0, 5000), np.arange(10**9, 10**9 + 3001), [2**40 + 1]])
    assert _seconds_array(n).tolist() == [_seconds(int(v)) for v in n]


def test_trend_token_timeline_and_stream_equal_direct_pooling(trend_models):
    """Each token-timeline row is the head on its window's attention pooling and trend pooling
    of the one-pass maps; a stream fed uneven blocks gives the offline rows."""
    import torch

    from wav2small.models.wav2small import trend_pool
    from wav2small.tokens import OnlinePool

    p = Predictor(trend_models["onnx"])
    x = speechy(4.1, 15)
    rows = _token_timeline(p, x, None, 0.5, 1.5)
    _, lin, sof, trd = p.backend.session.run(None, {"signal": x[None]})
    for _, start, end, row in rows:
        j0, j1 = -(-round(start * SR) // 64), round(end * SR) // 64
        if end == rows[-1][2]:
            j1 = lin.shape[2]
        pool = OnlinePool()
        pool.add(lin[0, :, j0:j1], sof[0, :, j0:j1])
        trend = trend_pool(torch.from_numpy(trd[:, :, j0:j1].astype(np.float64)))[..., 0]
        got = p.staged.head(pool.pooled()[None], trend.numpy())[0]
        assert np.abs(got - row).max() <= 1e-4
    stream = p.stream(step=0.5, context=1.5)
    rng = np.random.default_rng(1)
    parts, i = [], 0
    while i < len(x):
        n = int(rng.choice([1, 300, 4000, 9000]))
        parts.append(stream.push(x[i : i + n]))
        i += n
    parts.append(stream.close())
    streamed = pd.concat(parts).to_numpy()
    assert np.abs(streamed - np.stack([r[3] for r in rows])).max() <= 1e-4
    with pytest.raises(ValueError, match="needs the trend poolings"):
        p.staged.head(pool.pooled()[None])
