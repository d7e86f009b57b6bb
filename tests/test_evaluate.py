"""Tests for wav2small.evaluate (and the evaluation plots of wav2small.report)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch
from torch import nn

from wav2small import LABELS, SAMPLE_RATE
from wav2small.cli import main
from wav2small.evaluate import Evaluation, evaluate, model_name, predict, resolve_model_path
from wav2small.signals import pseudo_speech

N_CLIPS = 12
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class LookupModel(nn.Module):
    """A "model" that returns fixed values per clip, recognised by its length in samples."""

    def __init__(self, table: dict[int, np.ndarray]) -> None:
        super().__init__()
        self.table = table

    def forward(self, signal: torch.Tensor, lengths=None) -> torch.Tensor:
        if lengths is None:
            lengths = [signal.shape[1]] * signal.shape[0]
        rows = [self.table[int(n)] for n in lengths]
        return torch.tensor(np.stack(rows), dtype=torch.float32)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Clips of distinct lengths with gold and truth labels; models keyed by clip length."""
    root = tmp_path_factory.mktemp("eval_corpus")
    rng = np.random.default_rng(0)
    gold = rng.random((N_CLIPS, 3))
    truth = np.clip(gold + rng.normal(0, 0.1, gold.shape), 0, 1)
    rows, lengths = [], []
    for i in range(N_CLIPS):
        n = SAMPLE_RATE // 2 + 160 * i
        sf.write(root / f"{i}.wav", pseudo_speech(n / SAMPLE_RATE, rng=rng), SAMPLE_RATE)
        rows.append(
            {
                "file": f"{i}.wav",
                **dict(zip(LABELS, gold[i], strict=True)),
                **{f"{k}_true": truth[i, j] for j, k in enumerate(LABELS)},
            }
        )
        lengths.append(n)
    pd.DataFrame(rows).to_csv(root / "data.csv", index=False)
    return root, gold, truth, lengths


def _model(lengths, values) -> LookupModel:
    return LookupModel({n: v for n, v in zip(lengths, values, strict=True)})


def test_scores_come_from_the_predictions(corpus):
    root, gold, truth, lengths = corpus
    mirrored = 2 * gold.mean(0) - gold  # same mean and spread, opposite order: CCC −1
    models = {
        "perfect": _model(lengths, gold),
        "inverted": _model(lengths, mirrored),
        "constant": _model(lengths, np.full_like(gold, 0.5)),
    }
    result = evaluate(models, root / "data.csv", teacher=_model(lengths, gold))
    assert result.ccc("perfect") == pytest.approx(dict.fromkeys([*LABELS, "mean"], 1.0))
    assert result.ccc("inverted")["mean"] == pytest.approx(-1.0)
    assert result.ccc("constant")["mean"] == 0.0
    assert result.ccc("perfect", "teacher")["mean"] == pytest.approx(1.0)
    assert result.ccc("teacher", "gold")["mean"] == pytest.approx(1.0)
    # against the latent truth: the gold labels' own agreement with it, from the metric itself
    from wav2small.metrics import ccc

    expected = ccc(gold, truth)
    got = result.ccc("perfect", "truth")
    assert [got[k] for k in LABELS] == pytest.approx(expected.tolist())
    ratio = result.relative_to_teacher()
    assert ratio.loc["perfect", "mean"] == pytest.approx(1.0)
    assert ratio.loc["inverted", "arousal"] == pytest.approx(-1.0)
    assert "student CCC ÷ teacher CCC" in result.table()
    assert set(result.metrics.reference) == {"gold", "truth", "teacher"}
    with pytest.raises(KeyError, match="nobody"):
        result.ccc("nobody")


def test_files_json_csv_and_plots(corpus, tmp_path):
    root, gold, _, lengths = corpus
    result = evaluate(
        {"good": _model(lengths, gold), "bad": _model(lengths, gold[::-1])},
        root / "data.csv",
        teacher=_model(lengths, gold),
    )
    written = result.save(tmp_path / "out")
    names = {p.name for p in written}
    assert {
        "metrics.csv",
        "metrics.json",
        "predictions.csv",
        "scatter_good.png",
        "scatter_bad.png",
        "ccc_gold.png",
        "ccc_truth.png",
        "ccc_teacher.png",
    } <= names
    for path in written:
        if path.suffix == ".png":
            assert path.read_bytes()[:8] == PNG_MAGIC and path.stat().st_size > 5000
    data = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert data["n_clips"] == N_CLIPS and data["relative_to_teacher"]["good"]["mean"] == 1.0
    table = pd.read_csv(tmp_path / "out" / "metrics.csv")
    assert len(table) == 3 * 3 - 1  # 2 students × 3 references + teacher × (gold, truth)
    preds = pd.read_csv(tmp_path / "out" / "predictions.csv")
    good = preds[preds.model == "good"][list(LABELS)].to_numpy()
    np.testing.assert_allclose(good, gold, atol=1e-6)
    assert not list(tmp_path.glob("out/*.tmp"))
    assert result.cues is None and "cues.csv" not in names  # no hidden controls in this CSV
    assert result.groups is None and "groups.csv" not in names  # no gender column either


def test_cues_on_the_built_in_corpus(corpus, tmp_path):
    """A CSV with the corpus's hidden controls gets r(outputs, control) per model and reference."""
    from wav2small.synth import CONTROLS

    root, gold, _, lengths = corpus
    table = pd.read_csv(root / "data.csv")
    rng = np.random.default_rng(1)
    for k in CONTROLS:
        table[k] = rng.normal(size=len(table))
    table.to_csv(tmp_path / "with_controls.csv", index=False)
    for f in table["file"]:
        (tmp_path / f).symlink_to(root / f)
    follows = np.repeat(table[["rough"]].to_numpy(), 3, axis=1)  # every output follows `rough`
    result = evaluate({"rough-follower": _model(lengths, -follows)}, tmp_path / "with_controls.csv")
    cues = result.cues.set_index(["model", "dimension"])
    assert list(cues.columns) == list(CONTROLS)
    assert set(cues.index.get_level_values(0)) == {"gold", "truth", "rough-follower"}
    assert cues.loc[("rough-follower", "valence"), "rough"] == pytest.approx(-1.0)
    expected = np.corrcoef(gold[:, 0], table["f0"])[0, 1]
    assert cues.loc[("gold", "arousal"), "f0"] == pytest.approx(expected)
    names = {p.name for p in result.save(tmp_path / "out")}
    assert {"cues.csv", "cues.png"} <= names
    saved = pd.read_csv(tmp_path / "out" / "cues.csv")
    assert len(saved) == 3 * 3  # (gold, truth, model) × 3 dimensions
    table.loc[0, "tremor"] = np.nan  # not the corpus's controls after all: no cue table
    table.to_csv(tmp_path / "with_controls.csv", index=False)
    assert evaluate({"m": _model(lengths, gold)}, tmp_path / "with_controls.csv").cues is None


def test_mean_error_and_ccc_per_gender(corpus, tmp_path):
    """A model that rates women higher and men lower than gold shows opposite mean errors."""
    root, gold, _, lengths = corpus
    table = pd.read_csv(root / "data.csv")
    table["gender"] = ["f", "m"] * (N_CLIPS // 2)
    table.to_csv(tmp_path / "with_gender.csv", index=False)
    for f in table["file"]:
        (tmp_path / f).symlink_to(root / f)
    shift = np.where(table["gender"].to_numpy() == "f", 0.1, -0.1)[:, None] * [0, 0, 1]
    models = {"shortcut": _model(lengths, gold + shift)}
    result = evaluate(models, tmp_path / "with_gender.csv", teacher=_model(lengths, gold))
    groups = result.groups.set_index(["model", "group"])
    assert set(groups["reference"]) == {"gold"} and set(groups["column"]) == {"gender"}
    assert groups.loc[("shortcut", "f"), "error_valence"] == pytest.approx(0.1, abs=1e-6)
    assert groups.loc[("shortcut", "m"), "error_valence"] == pytest.approx(-0.1, abs=1e-6)
    assert groups.loc[("shortcut", "m"), "error_arousal"] == pytest.approx(0.0, abs=1e-6)
    assert groups.loc[("teacher", "f"), "error_valence"] == pytest.approx(0.0, abs=1e-6)
    assert groups.loc[("teacher", "m"), "ccc_valence"] == pytest.approx(1.0)
    assert groups.loc[("shortcut", "f"), "n"] == N_CLIPS // 2
    from wav2small.metrics import ccc

    women = table["gender"].to_numpy() == "f"
    expected = ccc(gold[women, 2] + 0.1, gold[women, 2])
    assert groups.loc[("shortcut", "f"), "ccc_valence"] == pytest.approx(expected)
    assert "mean error (prediction − gold) by gender" in result.table()
    result.save(tmp_path / "out", plots=False)
    saved = pd.read_csv(tmp_path / "out" / "groups.csv")
    assert len(saved) == 2 * 2  # (shortcut, teacher) × (f, m)
    table["gender"] = "f"  # one group: nothing to compare
    table.to_csv(tmp_path / "with_gender.csv", index=False)
    assert evaluate(models, tmp_path / "with_gender.csv").groups is None


def test_checkpoint_and_onnx_give_the_same_numbers(corpus, tmp_path):
    from wav2small.export import export_onnx
    from wav2small.models import create_model, save_model

    root, *_ = corpus
    torch.manual_seed(0)
    model = create_model("wav2small-tiny").eval()
    (tmp_path / "run").mkdir()
    save_model(model, tmp_path / "run" / "best.safetensors")
    (tmp_path / "onnx").mkdir()
    export_onnx(model, tmp_path / "onnx" / "model.onnx")
    result = evaluate([tmp_path / "run", tmp_path / "onnx" / "model.onnx"], root / "data.csv")
    assert list(result.predictions) == ["run", "onnx"]
    np.testing.assert_allclose(result.predictions["run"], result.predictions["onnx"], atol=1e-4)
    direct = predict(model, [str(root / "0.wav")])
    np.testing.assert_allclose(direct, result.predictions["run"][:1], atol=1e-6)


def test_teacher_from_a_label_table_and_without_gold(corpus, tmp_path):
    root, gold, _, lengths = corpus
    labels = pd.DataFrame(
        {
            "file": [str(root / f"{i}.wav") for i in range(N_CLIPS)],
            "start": 0.0,
            "end": 1.0,
            "teacher": "t",
            **{k: 2 * gold[:, j].mean() - gold[:, j] for j, k in enumerate(LABELS)},
        }
    )
    labels.to_parquet(tmp_path / "labels.parquet")
    unlabelled = pd.DataFrame({"file": [str(root / f"{i}.wav") for i in range(N_CLIPS)]})
    unlabelled.to_csv(tmp_path / "unlabelled.csv", index=False)
    result = evaluate(
        [_model(lengths, gold)], tmp_path / "unlabelled.csv", teacher=tmp_path / "labels.parquet"
    )
    assert set(result.metrics.reference) == {"teacher"}
    assert result.ccc("model0", "teacher")["mean"] == pytest.approx(-1.0)
    with pytest.raises(ValueError, match="nothing to compare with"):
        evaluate([_model(lengths, gold)], tmp_path / "unlabelled.csv")


def test_cli_prints_the_table_and_writes_json(corpus, tmp_path, capsys):
    from wav2small.models import create_model, save_model

    root, *_ = corpus
    torch.manual_seed(0)
    save_model(create_model("wav2small-tiny"), tmp_path / "tiny.safetensors")
    code = main(
        [
            "evaluate",
            str(tmp_path / "tiny.safetensors"),
            "--data",
            str(root / "data.csv"),
            "--json",
            str(tmp_path / "m.json"),
            "--no-progress",
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "tiny" in out and "arousal" in out and "truth" in out
    rows = json.loads((tmp_path / "m.json").read_text())["metrics"]
    assert {r["reference"] for r in rows} == {"gold", "truth"}


def test_model_paths_and_names(tmp_path):
    assert model_name("runs/distill-paper/best.safetensors") == "distill-paper"
    assert model_name("exports/model.int8.onnx") == "exports"
    assert model_name("students/v4s.ckpt") == "v4s"
    with pytest.raises(FileNotFoundError, match="no such model"):
        resolve_model_path(tmp_path / "missing.ckpt")
    with pytest.raises(FileNotFoundError, match="run folder without"):
        resolve_model_path(tmp_path)


def test_report_plot_errors(tmp_path):
    from wav2small.report import plot_ccc_bars, plot_cues, plot_scatter

    with pytest.raises(ValueError, match=r"\(n, 3\)"):
        plot_scatter(np.zeros((4, 2)), np.zeros((4, 2)), tmp_path / "x.png")
    empty = Evaluation(pd.DataFrame(columns=["model", "reference", *LABELS, "mean"]), {}, {})
    with pytest.raises(ValueError, match="against 'gold'"):
        plot_ccc_bars(empty.metrics, tmp_path / "y.png")
    with pytest.raises(ValueError, match="no control correlations"):
        plot_cues(pd.DataFrame(columns=["model", "dimension", "f0"]), tmp_path / "z.png")


# --- evaluate = predict --------------------------------------------------------------------------
HEAD_GAIN = 100.0  # untrained outputs barely move; amplify so that comparisons bite


@pytest.fixture(scope="module")
def shipped(tmp_path_factory):
    """One tiny model as checkpoint, fp32 ONNX, int8 ONNX and an ONNX whose metadata names its
    outputs in another order; and a CSV of clips including one longer than Predictor's 20 s."""
    import onnx

    from wav2small.export import export_onnx, quantize_int8
    from wav2small.models import create_model, save_model

    root = tmp_path_factory.mktemp("shipped")
    torch.manual_seed(0)
    model = create_model("wav2small-tiny").eval()
    with torch.no_grad():
        model.adv.weight.mul_(HEAD_GAIN)
    save_model(model, root / "tiny.safetensors")
    export_onnx(model, root / "tiny.onnx")
    rng = np.random.default_rng(1)
    quantize_int8(
        root / "tiny.onnx",
        root / "tiny.int8.onnx",
        calibration=[pseudo_speech(2.0, rng=rng) for _ in range(4)],
    )
    proto = onnx.load(str(root / "tiny.onnx"))
    for entry in proto.metadata_props:
        if entry.key == "labels":
            entry.value = "valence,arousal,dominance"
    onnx.save(proto, str(root / "swapped.onnx"))
    (root / "clips").mkdir()
    rows = []
    for i, seconds in enumerate([0.7, 1.9, 3.1, 24.5]):  # the last is cut into two pieces
        sf.write(root / "clips" / f"{i}.wav", pseudo_speech(seconds, rng=rng), SAMPLE_RATE)
        rows.append({"file": f"clips/{i}.wav", **dict(zip(LABELS, rng.random(3), strict=True))})
    sf.write(root / "clips" / "8k.wav", pseudo_speech(1.3, rng=rng)[::2], SAMPLE_RATE // 2)
    rows.append({"file": "clips/8k.wav", **dict(zip(LABELS, rng.random(3), strict=True))})
    pd.DataFrame(rows).to_csv(root / "data.csv", index=False)
    models = {
        "checkpoint": root / "tiny.safetensors",
        "fp32": root / "tiny.onnx",
        "int8": root / "tiny.int8.onnx",
        "swapped": root / "swapped.onnx",
    }
    return root, models


def test_evaluate_gives_the_numbers_predict_gives(shipped, tmp_path, capsys):
    """`wav2small evaluate` scores exactly the table `wav2small predict` writes, per model."""
    from wav2small.infer import read_table

    root, models = shipped
    manifest = pd.read_csv(root / "data.csv")
    paths = [str(root / f) for f in manifest["file"]]
    argv = ["evaluate", *map(str, models.values()), "--data", str(root / "data.csv")]
    assert main([*argv, "--out", str(tmp_path / "eval"), "--no-plots", "--no-progress"]) == 0
    evaluated = pd.read_csv(tmp_path / "eval" / "predictions.csv")
    names = {"checkpoint": "tiny", "fp32": "tiny-2", "int8": "tiny.int8", "swapped": "swapped"}
    by_model = {}
    for kind, path in models.items():
        out = tmp_path / f"{kind}.csv"
        assert main(["predict", str(path), *paths, "--out", str(out)]) == 0
        predicted = read_table(out)
        assert predicted.index.get_level_values("file").tolist() == paths
        assert predicted.index.get_level_values("end")[3] == pytest.approx(24.5)
        got = evaluated[evaluated.model == names[kind]]
        assert got["file"].tolist() == manifest["file"].tolist()
        np.testing.assert_array_equal(
            got[list(LABELS)].to_numpy(np.float32), predicted.to_numpy(np.float32)
        )
        by_model[kind] = predicted.to_numpy()
    capsys.readouterr()
    # the cases differ where they should: int8 is not fp32, the swapped model is reordered
    assert np.abs(by_model["int8"] - by_model["fp32"]).max() > 1e-6
    np.testing.assert_allclose(by_model["checkpoint"], by_model["fp32"], atol=1e-4 * HEAD_GAIN)
    np.testing.assert_allclose(by_model["swapped"][:, 2], by_model["fp32"][:, 0], rtol=1e-6)
    np.testing.assert_allclose(by_model["swapped"][:, 0], by_model["fp32"][:, 1], rtol=1e-6)
    # and the long file is one exact pass (a Wav2Small ONNX model runs chunked, bounded memory)
    from wav2small.infer import Predictor

    one_pass = Predictor(models["fp32"], max_seconds=30).predict(paths[3]).to_numpy()[0]
    assert np.abs(one_pass - by_model["fp32"][3]).max() <= 1e-4


def test_evaluate_of_a_torch_module_equals_its_checkpoint(shipped):
    from wav2small.models import load_model

    root, models = shipped
    module = load_model(models["checkpoint"])
    result = evaluate({"file": models["checkpoint"], "module": module}, root / "data.csv")
    np.testing.assert_array_equal(result.predictions["file"], result.predictions["module"])
    paths = [str(root / f) for f in pd.read_csv(root / "data.csv")["file"]]
    np.testing.assert_array_equal(predict(models["checkpoint"], paths), result.predictions["file"])
    repeated = predict(models["fp32"], [paths[1], paths[0], paths[1]])
    np.testing.assert_array_equal(repeated[0], repeated[2])


def test_bad_clips_and_non_finite_outputs_name_the_file(shipped, tmp_path):
    from wav2small.audio import AudioError
    from wav2small.evaluate import by_file

    root, models = shipped
    sf.write(tmp_path / "short.wav", np.zeros(10, np.float32), SAMPLE_RATE)
    pd.DataFrame({"file": ["short.wav"], **dict.fromkeys(LABELS, [0.5])}).to_csv(
        tmp_path / "short.csv", index=False
    )
    with pytest.raises(AudioError, match="short.wav: too short"):
        evaluate([models["fp32"]], tmp_path / "short.csv")
    frame = pd.DataFrame(
        [[0.1, 0.2, 0.3], [np.nan, 0.2, 0.3]],
        index=pd.MultiIndex.from_tuples([("a.wav", 0.0, 1.0), ("b.wav", 0.0, 1.0)]),
        columns=list(LABELS),
    )
    frame.index.names = ["file", "start", "end"]
    np.testing.assert_allclose(by_file(frame, ["a.wav", "a.wav"]), [[0.1, 0.2, 0.3]] * 2)
    with pytest.raises(ValueError, match="b.wav: m gave non-finite outputs"):
        by_file(frame, ["a.wav", "b.wav"], model="m")
    with pytest.raises(ValueError, match="c.wav: no single prediction row"):
        by_file(frame, ["c.wav"])


def test_teacher_runs_through_the_teacher_helper(corpus, monkeypatch):
    from wav2small import backends

    root, gold, _, lengths = corpus
    calls = []
    original = backends.teacher_predict_files
    monkeypatch.setattr(
        backends, "teacher_predict_files", lambda *a, **k: calls.append(a[1]) or original(*a, **k)
    )
    result = evaluate([_model(lengths, gold)], root / "data.csv", teacher=_model(lengths, gold))
    assert len(calls) == 1 and len(calls[0]) == N_CLIPS
    assert result.ccc("teacher", "gold")["mean"] == pytest.approx(1.0)
    nan_teacher = _model(lengths, np.full_like(gold, np.nan))
    with pytest.raises(ValueError, match=r"\.wav: teacher .* non-finite"):
        evaluate([_model(lengths, gold)], root / "data.csv", teacher=nan_teacher)


def _write_long(path, minutes: float) -> None:
    """Stream a long 16-bit file to disk, 10 s at a time."""
    rng = np.random.default_rng(0)
    block = pseudo_speech(10.0, rng=rng)
    with sf.SoundFile(path, "w", SAMPLE_RATE, 1, "PCM_16") as f:
        for _ in range(round(minutes * 6)):
            f.write(block * rng.uniform(0.5, 1.0))


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs Linux /proc")
def test_evaluate_memory_does_not_grow_with_file_length(shipped, tmp_path):
    """Peak RSS of `evaluate` (fresh process, no torch imported) on a 1- and an 8-minute file.

    Reading the 8-minute file whole would take 31 MB as float32 and a one-pass model call far
    more; through Predictor's pieces the peak must not grow with the length.
    """
    _, models = shipped
    peaks = []
    for minutes in (1, 8):
        folder = tmp_path / f"m{minutes}"
        folder.mkdir()
        _write_long(folder / "long.wav", minutes)
        pd.DataFrame({"file": ["long.wav"], **dict.fromkeys(LABELS, [0.5])}).to_csv(
            folder / "data.csv", index=False
        )
        code = f"""
import sys
from wav2small.evaluate import evaluate
from wav2small.infer import Predictor

def peak():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM"))

Predictor({str(models["int8"])!r})  # the first session's fixed cost, before measuring
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
before = peak()
evaluate({{"m": {str(models["int8"])!r}}}, {str(folder / "data.csv")!r}, teacher=None)
assert "torch" not in sys.modules
print((peak() - before) / 1024)
"""
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=600
        )
        # a CSV with one row has no spread: CCC of one clip is 0, but it must not fail
        assert out.returncode == 0, out.stderr
        peaks.append(float(out.stdout.split()[-1]))
    assert peaks[1] < peaks[0] + 10, peaks
