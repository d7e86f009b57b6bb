"""The self-distillation study's pure functions: grid, resumability, aggregation, pairing."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "study_selfdistill.py"


@pytest.fixture(scope="module")
def study():
    spec = importlib.util.spec_from_file_location("study_selfdistill", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def scores_of(rows):
    cols = ["task", "fraction", "seed", "method", "exit", "uar"]
    return pd.DataFrame(rows, columns=cols).assign(n=700)


def test_grid_is_seed_major_with_both_methods_per_cell(study):
    runs = study.grid([0, 1], [1.0, 0.1], [(0, 1.0)])
    names = [study.run_name(**r) for r in runs]
    assert names[:4] == [
        "classes-f1-s0-self-distillation",
        "classes-f1-s0-fine-tuning",
        "classes-f0.1-s0-self-distillation",
        "classes-f0.1-s0-fine-tuning",
    ]
    assert names[-2:] == ["adv-f1-s0-self-distillation", "adv-f1-s0-fine-tuning"]
    assert len(runs) == 2 * (2 * 2 + 1)


def test_todo_skips_scored_runs_and_append_is_resumable(study, tmp_path):
    runs = study.grid([0, 1], [1.0], [])
    assert study.todo(runs, None) == runs
    path = tmp_path / "scores.csv"
    block = scores_of([("classes", 1.0, 0, "fine-tuning", "deepest", 0.4)])
    study.append_scores(path, block)
    table = pd.read_csv(path)  # read back from disk, as a restarted study does
    left = study.todo(runs, table)
    assert [study.run_name(**r) for r in left] == [
        "classes-f1-s0-self-distillation",
        "classes-f1-s1-self-distillation",
        "classes-f1-s1-fine-tuning",
    ]
    table = study.append_scores(
        path, scores_of([("classes", 1.0, 1, "fine-tuning", "deepest", 0.5)])
    )
    assert len(table) == 2 and not (tmp_path / "scores.csv.tmp").exists()


def test_summarise_mean_sd_n(study):
    scores = scores_of(
        [
            ("classes", 1.0, 0, "self-distillation", "2", 0.40),
            ("classes", 1.0, 1, "self-distillation", "2", 0.50),
            ("classes", 1.0, 2, "self-distillation", "2", 0.60),
            ("classes", 0.1, 0, "self-distillation", "2", 0.30),
        ]
    )
    s = study.summarise(scores).set_index(["fraction", "exit", "metric"])
    full = s.loc[(1.0, "2", "uar")]
    assert full["mean"] == pytest.approx(0.5) and full["sd"] == pytest.approx(0.1)
    assert full["n"] == 3
    one = s.loc[(0.1, "2", "uar")]
    assert one["n"] == 1 and math.isnan(one["sd"])  # one seed: no spread, never 0


def test_paired_differences_per_seed_against_fine_tuning_deepest(study):
    scores = scores_of(
        [
            ("classes", 1.0, 0, "self-distillation", "2", 0.45),
            ("classes", 1.0, 0, "self-distillation", "deepest", 0.50),
            ("classes", 1.0, 0, "fine-tuning", "deepest", 0.40),
            ("classes", 1.0, 1, "self-distillation", "2", 0.35),
            ("classes", 1.0, 1, "fine-tuning", "deepest", 0.40),
            ("classes", 1.0, 2, "self-distillation", "2", 0.90),  # no FT run: left out
        ]
    )
    d = study.paired(scores)
    got = {(r.seed, r.exit): r.uar for r in d.itertuples()}
    assert got == pytest.approx({(0, "2"): 0.05, (0, "deepest"): 0.10, (1, "2"): -0.05})
    ps = study.paired_summary(d).set_index("exit")
    assert ps.at["2", "mean"] == pytest.approx(0.0)
    assert ps.at["2", "sd"] == pytest.approx(np.std([0.05, -0.05], ddof=1))
    assert ps.at["2", "n"] == 2 and ps.at["2", "positive"] == 1


def test_stratified_subset(study):
    labels = pd.Series(["a"] * 50 + ["b"] * 30 + ["c"] * 3)
    keep = study.stratified_subset(labels, 0.1, seed=0)
    counts = labels.iloc[keep].value_counts()
    assert counts.to_dict() == {"a": 5, "b": 3, "c": 1}
    assert list(keep) == sorted(set(keep.tolist()))
    assert (keep == study.stratified_subset(labels, 0.1, seed=0)).all()
    assert not (keep == study.stratified_subset(labels, 0.1, seed=1)).all()
    with pytest.raises(ValueError, match="fraction"):
        study.stratified_subset(labels, 0.0, seed=0)


def test_fmt(study):
    assert study.fmt(0.41234, 0.0131, 3) == "0.412 ± 0.013"
    assert study.fmt(0.4, float("nan"), 1) == "0.400 ± – (n=1)"


def test_versus_pretrained_minus_control_per_seed_method_and_head(study):
    pre = scores_of(
        [
            ("classes", 1.0, 0, "self-distillation", "2", 0.30),
            ("classes", 1.0, 0, "fine-tuning", "deepest", 0.28),
            ("classes", 1.0, 1, "self-distillation", "2", 0.26),
            ("classes", 1.0, 1, "fine-tuning", "deepest", 0.27),
            ("classes", 0.1, 0, "fine-tuning", "deepest", 0.50),  # not in the control
        ]
    )
    ctrl = scores_of(
        [
            ("classes", 1.0, 0, "self-distillation", "2", 0.25),
            ("classes", 1.0, 0, "fine-tuning", "deepest", 0.30),
            ("classes", 1.0, 1, "self-distillation", "2", 0.24),
            ("classes", 1.0, 1, "fine-tuning", "deepest", 0.25),
        ]
    )
    d = study.versus(pre, ctrl)
    got = {(r.seed, r.method, r.exit): r.uar for r in d.itertuples()}
    assert got == pytest.approx(
        {
            (0, "self-distillation", "2"): 0.05,
            (0, "fine-tuning", "deepest"): -0.02,
            (1, "self-distillation", "2"): 0.02,
            (1, "fine-tuning", "deepest"): 0.02,
        }
    )
    ps = study.paired_summary(d).set_index(["method", "exit"])  # grouped per method too
    assert ps.at[("self-distillation", "2"), "mean"] == pytest.approx(0.035)
    assert ps.at[("fine-tuning", "deepest"), "positive"] == 1
    md = study.pretraining_table(ctrl, pre)
    assert (
        "| self-distillation | 2 | 0.280 ± 0.028 (n=2) | 0.245 ± 0.007 (n=2) "
        "| +0.035 ± 0.021 | 2/2 |" in md
    )
    assert "10%" not in md  # a cell only one side ran is left out
    named = study.pretraining_table(ctrl, pre, names=("supervised", "self-supervised"))
    assert (
        "| method | head | supervised | self-supervised | Δ supervised − self-supervised |" in named
    )
    with pytest.raises(ValueError, match="share no run"):
        study.pretraining_table(ctrl.assign(seed=5), pre)


def test_latency_only_when_wanted_and_seed0_runs_exist(study, tmp_path):
    args = study.parse_args(["--corpus", "x"])
    assert not study.wants_latency(args, tmp_path)
    for m in study.METHODS:
        folder = tmp_path / "runs" / study.run_name("classes", 1.0, 0, m)
        folder.mkdir(parents=True)
        (folder / "best.safetensors").write_bytes(b"")
    assert study.wants_latency(args, tmp_path)
    assert not study.wants_latency(study.parse_args(["--corpus", "x", "--no-latency"]), tmp_path)


def test_publish_refused_for_another_backbone(study, capsys):
    argv = ["--corpus", "x", "--backbone", "/tmp/random-twin", "--publish", "--report-only"]
    assert study.main(argv) == 2
    assert "--publish" in capsys.readouterr().err


def test_baseline_scores_write_this_study_minus_the_other_backbone(study, tmp_path):
    """`--baseline-scores` (two pretrainings compared): versus.csv/md hold this study minus the
    other, per seed, under the given names."""
    rows = [
        ("classes", 1.0, s, m, e, 0.25 + 0.01 * s)
        for s in (0, 1)
        for m, e in (("self-distillation", "2"), ("fine-tuning", "deepest"))
    ]
    out = tmp_path / "sup"
    out.mkdir()
    sup = scores_of([r[:5] + (r[5] + 0.04,) for r in rows]).assign(layers=8)
    sup.to_csv(out / "scores.csv", index=False)
    scores_of(rows).assign(layers=8).to_csv(tmp_path / "ssl.csv", index=False)
    argv = [
        "--corpus",
        "x",
        "--out",
        str(out),
        "--report-only",
        "--seeds",
        "0,1",
        "--fractions",
        "1",
        "--adv-cells",
        "",
        "--baseline-scores",
        str(tmp_path / "ssl.csv"),
        "--names",
        "supervised,self-supervised",
    ]
    assert study.main(argv) == 0
    diffs = pd.read_csv(out / "versus.csv")
    assert len(diffs) == 4 and np.allclose(diffs.uar, 0.04)
    md = (out / "versus.md").read_text()
    assert (
        "| self-distillation | 2 | 0.295 ± 0.007 (n=2) | 0.255 ± 0.007 (n=2) "
        "| +0.040 ± 0.000 | 2/2 |" in md
    )
