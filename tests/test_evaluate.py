"""Tests for wav2small.evaluate (and the evaluation plots of wav2small.report)."""

from __future__ import annotations

import json

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
        rows = [self.table[int(signal.shape[1])] for _ in range(signal.shape[0])]
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
    from wav2small.report import plot_ccc_bars, plot_scatter

    with pytest.raises(ValueError, match=r"\(n, 3\)"):
        plot_scatter(np.zeros((4, 2)), np.zeros((4, 2)), tmp_path / "x.png")
    empty = Evaluation(pd.DataFrame(columns=["model", "reference", *LABELS, "mean"]), {}, {})
    with pytest.raises(ValueError, match="against 'gold'"):
        plot_ccc_bars(empty.metrics, tmp_path / "y.png")
