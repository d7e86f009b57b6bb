"""Distillation with DDP: sharding of the pool, two CPU processes (gloo), exact resume.

The end-to-end runs start `wav2small distill --devices 2 --strategy ddp` in a subprocess (Lightning
then starts the second rank itself); they are marked slow (each run imports torch and Lightning in
two processes: ~20-40 s on a loaded 2-core machine).
"""

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

from wav2small import LABELS, SAMPLE_RATE
from wav2small.data import SeededSampler
from wav2small.signals import pseudo_speech

N_TRAIN, N_VAL = 12, 2
#: 12 clips / 2 processes / batch 2 = 3 steps per epoch.
DDP = ["--devices", "2", "--strategy", "ddp", "--accelerator", "cpu"]
TIMEOUT = 600


# --- sharding -----------------------------------------------------------------------------------
@pytest.mark.parametrize("n", [8, 9, 11])
def test_ranks_split_every_epoch_without_overlap(n):
    one = SeededSampler(n, seed=3)
    for epoch in (0, 1):
        one.set_epoch(epoch)
        ranks = [SeededSampler(n, seed=3, rank=r, world_size=2) for r in (0, 1)]
        for sampler in ranks:
            sampler.set_epoch(epoch)
        shares = [list(s) for s in ranks]
        assert len(shares[0]) == len(shares[1]) == len(ranks[0]) == n // 2  # lock-step
        indices = [i for share in shares for i, _ in share]
        assert len(set(indices)) == len(indices)  # no clip twice in an epoch
        # the ranks interleave one process's epoch: same clips, same crop/augmentation seeds
        single = list(one)[: 2 * (n // 2)]
        assert shares[0] == single[0::2] and shares[1] == single[1::2]
    epochs = []
    for epoch in (0, 1):
        one.set_epoch(epoch)
        epochs.append(list(one))
    assert epochs[0] != epochs[1]  # a new permutation and new seeds every epoch


def test_resume_at_continues_inside_the_epoch_whatever_lightning_counts():
    straight = SeededSampler(9, seed=1, rank=1, world_size=2)
    epochs = []
    for epoch in (0, 1, 2):
        straight.set_epoch(epoch)
        epochs.append(list(straight))
    resumed = SeededSampler(9, seed=1, rank=1, world_size=2)
    resumed.resume_at(1, 3)  # step 3 of a batch-1 run: 1 epoch of 4 done, 3 pairs of the next
    resumed.set_epoch(5)  # Lightning's counter after a mid-epoch stop: any number
    assert list(resumed) == epochs[1][3:]
    resumed.set_epoch(6)
    assert list(resumed) == epochs[2]


def test_cli_options_reach_the_trainer_config():
    from wav2small.cli import build_parser
    from wav2small.train import cli_config

    args = build_parser().parse_args(["distill", "--teacher", "t", "--audio", "a", *DDP])
    cfg = cli_config(args, mode="distill")
    assert (cfg.devices, cfg.strategy, cfg.accelerator) == (2, "ddp", "cpu")
    args = build_parser().parse_args(["distill", "--teacher", "t", "--audio", "a"])
    assert cli_config(args, mode="distill").strategy == "auto"


# --- two processes ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Train/val CSVs of 1 s clips and a tiny teacher whose outputs vary across clips."""
    from wav2small.teachers import SYNTH_DEFAULTS, SynthTeacher, save_teacher

    root = tmp_path_factory.mktemp("ddp_corpus")
    rng = np.random.default_rng(0)
    for split, n in (("train", N_TRAIN), ("val", N_VAL)):
        (root / split).mkdir()
        for i in range(n):
            sf.write(root / split / f"{i}.wav", pseudo_speech(1.0, rng=rng), SAMPLE_RATE)
        pd.DataFrame({"file": [f"{split}/{i}.wav" for i in range(n)]}).to_csv(
            root / f"{split}.csv", index=False
        )
    torch.manual_seed(0)
    blocks = len(SYNTH_DEFAULTS["channels"])
    teacher = SynthTeacher(
        {"channels": [4] * blocks, "gru_hidden": 8, "n_mels": 32, "n_fft": 512}
    ).eval()
    head = [m for m in teacher.modules() if isinstance(m, torch.nn.Linear)][-1]
    probe = torch.from_numpy(np.stack([pseudo_speech(1.0, rng=rng) for _ in range(8)]))
    with torch.no_grad():  # spread the random outputs so that the CCC loss has a signal
        head.weight.mul_(100)
        head.bias.sub_(teacher(probe).mean(0) - 0.5)
    save_teacher(teacher, root / "teacher")
    return root


def _distill(corpus, out, *extra: str, sets: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    argv = [
        sys.executable, "-m", "wav2small.cli", "distill",
        "--teacher", str(corpus / "teacher"), "--audio", str(corpus / "train.csv"),
        "--val", str(corpus / "val.csv"), "--out", str(out), "--student", "wav2small-tiny",
        "--batch-size", "2", "--num-workers", "0", "--no-progress",
        "--set", "warmup_steps=0", "crop_seconds=1.0", "log_every=1", *sets, *extra,
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    env.pop("MASTER_PORT", None)  # Lightning picks a free port
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=TIMEOUT)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def _weights(path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


@pytest.mark.slow
def test_two_processes_train_and_save_a_checkpoint_that_loads(corpus, tmp_path):
    from wav2small.models import load_model

    run = tmp_path / "run"
    _distill(corpus, run, "--max-steps", "3", *DDP)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["global_step"] == 3 and summary["start_step"] == 0
    steps = pd.read_csv(run / "metrics.csv").dropna(subset=["train/loss"])["step"]
    assert len(steps) == 3 == steps.nunique()  # rank 0 logs each step once
    x = torch.from_numpy(pseudo_speech(1.0, rng=np.random.default_rng(5)))[None]
    for path in (run / "last.ckpt", run / "best.safetensors"):
        model = load_model(path).eval()
        with torch.no_grad():
            y = model(x)
        assert y.shape == (1, len(LABELS)) and torch.isfinite(y).all()
    assert not list(run.glob("*.tmp"))


@pytest.mark.slow
def test_resumed_ddp_run_equals_an_uninterrupted_one(corpus, tmp_path):
    # stop mid-epoch (step 2 of 3) and resume into the next epoch; a constant learning rate,
    # since the cosine schedule depends on max_steps, which differs between the two sessions
    constant = ("scheduler=constant",)
    _distill(corpus, tmp_path / "straight", "--max-steps", "5", *DDP, sets=constant)
    _distill(corpus, tmp_path / "resumed", "--max-steps", "2", *DDP, sets=constant)
    _distill(
        corpus, tmp_path / "resumed", "--max-steps", "5", "--resume", "last", *DDP, sets=constant
    )
    a = _weights(tmp_path / "straight" / "last.ckpt")
    b = _weights(tmp_path / "resumed" / "last.ckpt")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)
    summary = json.loads((tmp_path / "resumed" / "summary.json").read_text())
    assert (summary["start_step"], summary["global_step"]) == (2, 5)
    losses = [
        pd.read_csv(tmp_path / run / "metrics.csv").dropna(subset=["train/loss"])
        for run in ("straight", "resumed")
    ]
    assert losses[0]["step"].tolist() == losses[1]["step"].tolist() == [0, 1, 2, 3, 4]
    np.testing.assert_array_equal(losses[0]["train/loss"], losses[1]["train/loss"])
