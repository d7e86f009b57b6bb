"""The end-to-end demo on a micro plan: every stage runs, every artefact lands in the run folder."""

import json
from dataclasses import replace

import pytest

from wav2small.card import CARD_NAME
from wav2small.demo import QUICK, run_demo
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
    for png in ("size_vs_ccc.png", "timeline.png", "eval/test/ccc_gold.png"):
        assert (out / png).stat().st_size > 1000, png
        assert png.split("/")[-1] in report
    for name in ("distilled", "labelled-only"):
        card = (out / "export" / name / CARD_NAME).read_text()
        assert "test (12 clips) · gold" in card and "## Limits" in card
    assert "teacher outputs only" in (out / "export" / "distilled" / CARD_NAME).read_text()
    assert (out / "labelled-only.log").is_file()  # the baseline trained in a second process


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
