"""Model cards: written next to every export, with facts from the checkpoint and its run folder."""

import json

import pytest
import torch
import yaml

from wav2small.card import CARD_NAME, model_card, run_facts
from wav2small.cli import main
from wav2small.export import ExportReport, export
from wav2small.models import create_model, model_info, save_model


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return create_model("wav2small-tiny").eval()


def _run_folder(tmp_path, model, mode: str):
    """A checkpoint inside a run folder shaped like the trainers' (config + summary)."""
    run = tmp_path / "run"
    run.mkdir()
    save_model(model, run / "best.safetensors", extra={"mode": mode, "teacher": "dawn"})
    config = {
        "mode": mode,
        "teacher": "dawn",
        "audio": "pool.csv",
        "data": None,
        "targets": "online",
        "max_steps": 123,
        "batch_size": 8,
        "crop_seconds": 2.0,
        "lr": 0.002,
        "seed": 7,
    }
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    (run / "summary.json").write_text(
        json.dumps({"best_val_ccc_mean": 0.4321, "val_target": "teacher"})
    )
    return run / "best.safetensors"


def test_export_writes_a_card_with_size_order_and_limits(tiny, tmp_path):
    report = export(tiny, tmp_path, card={"untrained": True})
    text = (tmp_path / CARD_NAME).read_text()
    assert "# Model card: wav2small-tiny" in text
    assert "arousal,dominance,valence" in text
    assert f"{report.fp32_bytes / 1024:.1f} KB" in text
    assert "Untrained random weights" in text
    for section in ("## Training data and teacher", "## Metrics", "## Intended use", "## Limits"):
        assert section in text
    assert not list(tmp_path.glob("*.tmp"))


@pytest.mark.slow  # CI time (≈ 10–40 s); `make test-slow` runs it
def test_card_reads_the_training_run_folder(tiny, tmp_path):
    ckpt = _run_folder(tmp_path, tiny, "distill")
    code = main(["export", str(ckpt), "--int8", "--out", str(tmp_path / "out")])
    text = (tmp_path / "out" / CARD_NAME).read_text()
    assert "**distilled**" in text and "`dawn`" in text and "`pool.csv`" in text
    assert "123 steps" in text and "seed 7" in text and "0.432" in text
    # a random "trained" model usually fails the int8 gate (8-bit, then 16-bit activations):
    # then no model.int8*.onnx remains, only the last attempt as .rejected
    kept = sorted((tmp_path / "out").glob("model.int8*.onnx"))
    rejected = sorted((tmp_path / "out").glob("model.int8*.onnx.rejected"))
    if code == 0:
        assert len(kept) == 1 and not rejected
    else:
        assert code == 1 and not kept and len(rejected) == 1
    int8 = (kept or rejected)[0]
    size = int8.stat().st_size
    assert f"{size / 1024:.1f} KB" in text
    assert "Untrained" not in text


def test_card_without_run_folder_says_training_is_unknown(tiny, tmp_path):
    save_model(tiny, tmp_path / "w.safetensors")
    facts = run_facts(tmp_path / "w.safetensors")
    assert "config" not in facts and "summary" not in facts
    report = ExportReport("model.onnx", 2048, max_abs_diff={"1 s": 1e-7})
    text = model_card(info=model_info(tiny), report=report, facts=facts)
    assert "Training: unknown" in text
    assert "Not evaluated" in text


def test_card_metrics_table_and_synthetic_warning(tiny):
    report = ExportReport("model.onnx", 2048, max_abs_diff={"1 s": 1e-7})
    metrics = {"test · gold": {"arousal": 0.712, "dominance": 0.654, "valence": 0.101}}
    text = model_card(
        info=model_info(tiny),
        report=report,
        metrics=metrics,
        data="built-in synthetic corpus, 2000 pool clips",
    )
    assert "| test · gold | 0.712 | 0.654 | 0.101 |" in text
    assert "must NOT be used on real speech" in text
    real = model_card(info=model_info(tiny), report=report, data="MSP-Podcast train")
    assert "must NOT be used on real speech" not in real


def test_card_recipe_names_crops_or_whole_clips(tiny):
    report = ExportReport("model.onnx", 2048, max_abs_diff={"1 s": 1e-7})
    recipe = {"mode": "distill", "max_steps": 10, "batch_size": 8, "lr": 0.002, "seed": 0}

    def card(crop):
        facts = {"config": recipe | {"crop_seconds": crop}}
        return model_card(info=model_info(tiny), report=report, facts=facts)

    assert "10 steps of 8 × ≤ 2 s crops" in card(2.0)
    assert "10 steps of 8 × whole clips" in card(None)
