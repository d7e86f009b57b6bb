"""wav2small.runs: run folder, resume checks, split, schedule, NaN policy, finite checks."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from wav2small.config import StudentConfig
from wav2small.errors import NonFiniteError, UserError
from wav2small.runs import (
    check_loss,
    check_targets,
    check_wave,
    format_score,
    lr_factor,
    lr_lambda,
    mean_score,
    merge_metrics,
    open_run,
    split_indices,
    usable_clips,
    warmup_length,
    write_skipped,
)


def test_warmup_is_a_fraction_or_capped_steps():
    assert warmup_length(100, 100) == 10  # a 100-step run is not all warm-up
    assert warmup_length(100, 3000) == 100
    assert warmup_length(0.05, 1000) == 50
    assert warmup_length(0, 1000) == 0
    f = lr_lambda(100, 100)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(99) < 0.01  # cosine decay reaches (almost) 0 at the end
    assert lr_factor(50, warmup=0, total=100, schedule="constant") == 1.0
    assert lr_factor(55, warmup=10, total=100) == pytest.approx(0.5)


def test_one_nan_policy_for_the_mean_score():
    assert mean_score([0.2, np.nan, 0.4]) == pytest.approx(0.3)
    assert math.isnan(mean_score([np.nan, np.nan, np.nan]))  # never 0
    assert format_score(math.nan).startswith("undefined")
    assert format_score(0.12345) == "0.1235"


def test_split_is_seeded_and_disjoint():
    tr, va = split_indices(20, 0.25, seed=3)
    assert len(va) == 5 and len(tr) == 15 and not set(tr) & set(va)
    assert (split_indices(20, 0.25, seed=3)[1] == va).all()
    assert not (split_indices(20, 0.25, seed=4)[1] == va).all()
    assert len(split_indices(20, 0.0, seed=0)[1]) == 0
    with pytest.raises(UserError, match="cannot hold out"):
        split_indices(1, 0.5, seed=0)


def test_resume_refuses_a_changed_config(tmp_path):
    base = {"mode": "train", "data": "x.csv", "out": str(tmp_path / "run")}
    run_dir, ckpt = open_run(StudentConfig(**base))
    assert ckpt is None and (run_dir / "config.yaml").is_file()
    (run_dir / "last.ckpt").write_bytes(b"x")
    # more steps and another progress setting are fine; another learning rate is not
    run_dir, ckpt = open_run(StudentConfig(**base, resume="last", max_steps=9000, progress=False))
    assert ckpt == run_dir / "last.ckpt"
    with pytest.raises(UserError, match=r"lr: 0.002 → 0.1"):
        open_run(StudentConfig(**base, resume="last", lr=0.1))
    with pytest.raises(FileNotFoundError, match="nothing.ckpt"):
        open_run(StudentConfig(**base, resume=str(tmp_path / "nothing.ckpt")))


def test_finite_checks_name_the_file_or_step():
    with pytest.raises(NonFiniteError, match="a.wav: contains NaN"):
        check_wave(np.array([0.0, np.nan], np.float32), "a.wav")
    with pytest.raises(NonFiniteError, match="b.wav: samples up to 1e\\+20"):
        check_wave(np.array([0.0, 1e20], np.float32), "b.wav")
    assert check_wave(np.array([0.5, -1.2], np.float32), "ok.wav") is not None
    targets = np.array([[0.1, 0.2, 0.3], [0.1, np.inf, 0.3]], np.float32)
    with pytest.raises(NonFiniteError, match="t.csv: row 1 \\(y.wav\\)"):
        check_targets(targets, ["x.wav", "y.wav"], "t.csv")
    with pytest.raises(NonFiniteError, match="loss is nan at step 7 .*a.wav.*lower learning"):
        check_loss(float("nan"), step=7, files=["a.wav"], lr=1e6)
    check_loss(1.5, step=1)


def test_short_clips_are_rejected_or_skipped_by_name(tmp_path):
    table = pd.DataFrame({"file": ["long.wav", "tiny.wav"], "duration": [1.0, 1 / 16000]})
    with pytest.raises(UserError, match="tiny.wav: 1 samples, shorter"):
        usable_clips(table, shortest=64, on_error="raise", name="m.csv")
    kept, skipped = usable_clips(table, shortest=64, on_error="skip", name="m.csv")
    assert kept["file"].tolist() == ["long.wav"] and skipped[0][0] == "tiny.wav"
    write_skipped(tmp_path, skipped)
    assert pd.read_csv(tmp_path / "skipped.csv")["file"].tolist() == ["tiny.wav"]
    with pytest.raises(UserError, match="no usable clips"):
        usable_clips(table.iloc[1:], shortest=64, on_error="skip", name="m.csv")


def test_metrics_of_a_resumed_session_replace_the_rest(tmp_path):
    for version, steps in ((0, [1, 2, 3, 4]), (1, [3, 4, 5])):
        folder = tmp_path / "logs" / f"version_{version}"
        folder.mkdir(parents=True)
        pd.DataFrame({"step": steps, "v": version}).to_csv(folder / "metrics.csv", index=False)
    merge_metrics(tmp_path)
    table = pd.read_csv(tmp_path / "metrics.csv")
    assert table["step"].tolist() == [1, 2, 3, 4, 5]
    assert table["v"].tolist() == [0, 0, 1, 1, 1]


@pytest.mark.parametrize(
    "argv",
    [
        ["distill", "--audio", "missing.csv", "--labels", "missing.parquet"],
        ["train", "--data", "missing.csv"],
        ["selfdistill", "--data", "missing.csv"],
        ["train-teacher", "--data", "missing.csv"],
    ],
    ids=lambda a: a[0],
)
def test_a_second_trainer_on_one_run_folder_fails_fast(tmp_path, capsys, argv):
    from wav2small.cli import main
    from wav2small.inputs import output_lock

    out = tmp_path / "run"
    with output_lock(out):  # another trainer holds the run folder
        code = main([*argv, "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and "another wav2small process" in err[0] and str(out) in err[0]
    assert not (out / "config.yaml").exists()  # nothing of the held run was touched
