"""The end-to-end demo on a micro plan: every stage runs, every artefact lands in the run folder."""

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from wav2small import LABELS, SAMPLE_RATE
from wav2small.card import CARD_NAME
from wav2small.demo import QUICK, run_demo, score_shipped
from wav2small.models import count_parameters, create_model

MICRO = replace(
    QUICK,
    n_train=16,
    n_pool=24,
    n_test=12,
    n_ood=8,
    distill_steps=4,
    train_steps=4,
    batch_size=4,
    crop_seconds=1.0,
    long_file_clips=3,
)


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    with pytest.MonkeyPatch.context() as mp:
        # 4-step students rarely hold int8 vs fp32 CCC ≥ 0.99; with a lower gate the int8 file
        # ships, so the table's source (it, not the torch checkpoint) is visible in the numbers
        mp.setattr("wav2small.export.INT8_MIN_CCC", 0.5)
        code = run_demo(out=out, plan=MICRO, jobs=2)
    return out, code


@pytest.mark.slow
def test_demo_writes_report_table_plots_and_cards(demo_run, capsys):
    out, code = demo_run
    rows = json.loads((out / "table.json").read_text())
    # exit 1 exactly when a student's gate failed (possible on 4-step students); files are written
    gates_passed = all(r["parity gate"] == "passed" for r in rows[1:])
    assert code == (0 if gates_passed else 1)
    assert [r["model"] for r in rows] == ["teacher (torch)", "distilled", "labelled-only"]
    paper = count_parameters(create_model("wav2small-paper"))
    assert abs(paper - 72_000) <= 0.02 * 72_000
    for row in rows[1:]:
        assert row["params"] == paper
        assert 0 < row["int8 KB"] <= 120
        assert row["tokens/s"] == 250
    report = (out / "report.md").read_text()
    assert "| model | params | int8 KB |" in report
    assert "What the models' valence follows on test" in report  # the corpus's hidden controls
    for png in ("size_vs_ccc.png", "timeline.png", "eval/test/ccc_gold.png", "eval/test/cues.png"):
        assert (out / png).stat().st_size > 1000, png
        assert png.split("/")[-1] in report
    for name in ("distilled", "labelled-only"):
        card = (out / "export" / name / CARD_NAME).read_text()
        assert "test (12 clips) · gold" in card and "## Limits" in card
    assert "teacher outputs only" in (out / "export" / "distilled" / CARD_NAME).read_text()
    assert (out / "labelled-only.log").is_file()  # the baseline trained in a second process


@pytest.mark.slow
def test_demo_scores_the_exported_files_through_predict(demo_run):
    """The table's CCCs are those of `wav2small predict`'s output for the shipped ONNX file,
    not of the torch checkpoint it was exported from; the cards carry the same scores."""
    from wav2small.cli import main
    from wav2small.infer import Predictor, read_table
    from wav2small.metrics import ccc

    out, _ = demo_run
    rows = {r["model"]: r for r in json.loads((out / "table.json").read_text())}
    test = pd.read_csv(out / "corpus" / "test.csv")
    paths = [str(out / "corpus" / f) for f in test["file"]]
    scored = pd.read_csv(out / "eval" / "test" / "predictions.csv")
    for name in ("distilled", "labelled-only"):
        shipped = Path(rows[name]["shipped"])
        assert shipped == out / "export" / name / "model.int8.onnx"  # the gate passed (patched)
        written = out / f"{name}-predict.csv"
        assert main(["predict", str(shipped), *paths, "--out", str(written)]) == 0
        predicted = read_table(written).to_numpy(np.float64)
        got = scored[scored.model == name][list(LABELS)].to_numpy(np.float64)
        np.testing.assert_allclose(got, predicted, rtol=1e-6, atol=1e-7)
        gold = test[list(LABELS)].to_numpy(np.float64)
        for i, k in enumerate(LABELS):
            assert rows[name][f"CCC {k[0].upper()} gold"] == pytest.approx(
                float(ccc(predicted[:, i], gold[:, i])), abs=1e-9
            )
        torch_out = Predictor(out / name / "best.safetensors").predict(paths, progress=False)
        assert np.abs(torch_out.to_numpy() - predicted).max() > 1e-5  # int8, not the checkpoint
        card = (out / "export" / name / CARD_NAME).read_text()
        metrics = json.loads((out / "eval" / "test" / "metrics.json").read_text())["metrics"]
        row = next(m for m in metrics if m["model"] == name and m["reference"] == "gold")
        assert f"{row['arousal']:.3f} | {row['dominance']:.3f} | {row['valence']:.3f}" in card


def test_score_shipped_runs_the_onnx_file_even_when_rejected(tmp_path):
    """score_shipped scores each file exactly as `Predictor` (`wav2small predict`) does, as ONNX
    even under a gate's ``.rejected`` name."""
    import torch

    from wav2small.export import export_onnx
    from wav2small.infer import Predictor
    from wav2small.signals import pseudo_speech

    torch.manual_seed(0)
    onnx = export_onnx(create_model("wav2small-tiny").eval(), tmp_path / "model.onnx")
    rejected = shutil.copy(onnx, tmp_path / "model.onnx.rejected")
    rng = np.random.default_rng(0)
    rows = []
    for i, seconds in enumerate([0.8, 1.5, 2.2, 3.0]):
        sf.write(tmp_path / f"{i}.wav", pseudo_speech(seconds, rng=rng), SAMPLE_RATE)
        rows.append({"file": f"{i}.wav", **dict(zip(LABELS, rng.random(3), strict=True))})
    pd.DataFrame(rows).to_csv(tmp_path / "data.csv", index=False)
    teacher = pd.DataFrame(rows).assign(file=lambda f: [str(tmp_path / p) for p in f.file])
    ev = score_shipped(
        {"ok": onnx, "rejected": rejected}, tmp_path / "data.csv", teacher=teacher, progress=False
    )
    paths = [str(tmp_path / r["file"]) for r in rows]
    expected = Predictor(onnx).predict(paths, progress=False).to_numpy(np.float64)
    np.testing.assert_allclose(ev.predictions["ok"], expected, rtol=1e-6)
    np.testing.assert_allclose(ev.predictions["rejected"], expected, rtol=1e-6)
    assert set(ev.metrics.model) == {"ok", "rejected", "teacher"}


@pytest.mark.slow
def test_demo_rerun_resumes_without_retraining(demo_run):
    out, _ = demo_run
    run_demo(out=out, plan=MICRO, jobs=1)
    for name in ("distilled", "labelled-only"):
        summary = json.loads((out / name / "summary.json").read_text())
        assert summary["start_step"] == summary["global_step"] == 4  # resumed at its end


@pytest.mark.slow
def test_demo_can_train_its_own_teacher(tmp_path):
    code = run_demo(out=tmp_path, plan=MICRO, jobs=1, train_teacher_minutes=0.5)
    rows = json.loads((tmp_path / "table.json").read_text())
    assert code == (0 if all(r["parity gate"] == "passed" for r in rows[1:]) else 1)
    assert (tmp_path / "teacher" / "model.safetensors").is_file()
    card = (tmp_path / "export" / "distilled" / CARD_NAME).read_text()
    assert str(tmp_path / "teacher") in card  # the card names the teacher it learned from
