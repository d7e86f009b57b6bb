"""Tests for wav2small.train: online/cached distillation, the gold baseline, resume, configs.

Everything is tiny: 1 s procedural clips, a ~1.5K-parameter stand-in teacher, wav2small-tiny,
a handful of steps, no data-loader workers.
"""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch
import yaml

from wav2small import LABELS, SAMPLE_RATE
from wav2small.cli import main
from wav2small.models import load_model
from wav2small.signals import pseudo_speech
from wav2small.train import (
    TrainConfig,
    fit,
    lr_lambda,
    parse_overrides,
    resolve_config,
)

N_TRAIN, N_VAL = 8, 4
#: Settings every test run shares: small, quiet, single-process.
TINY = {
    "student": "wav2small-tiny",
    "batch_size": 4,
    "num_workers": 0,
    "progress": False,
    "warmup_steps": 0,
    "log_every": 1,
    "crop_seconds": 1.0,
    "aug_ratio": 0.5,
}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Labelled train/val CSVs of 1 s clips, a tiny teacher folder, and cached labels."""
    from wav2small.teachers import SYNTH_DEFAULTS, SynthTeacher, save_teacher

    root = tmp_path_factory.mktemp("train_corpus")
    rng = np.random.default_rng(0)
    for split, n in (("train", N_TRAIN), ("val", N_VAL)):
        (root / split).mkdir()
        rows = []
        for i in range(n):
            sf.write(root / split / f"{i}.wav", pseudo_speech(1.0, rng=rng), SAMPLE_RATE)
            rows.append(
                {"file": f"{split}/{i}.wav", **dict(zip(LABELS, rng.random(3), strict=True))}
            )
        pd.DataFrame(rows).to_csv(root / f"{split}.csv", index=False)
    torch.manual_seed(0)
    blocks = len(SYNTH_DEFAULTS["channels"])
    teacher = SynthTeacher(
        {"channels": [4] * blocks, "gru_hidden": 8, "n_mels": 32, "n_fft": 512}
    ).eval()
    # a random network's outputs hardly vary (std ≈ 0.002): spread them to ≈ 0.5 ± 0.2
    head = [m for m in teacher.modules() if isinstance(m, torch.nn.Linear)][-1]
    probe = torch.from_numpy(np.stack([pseudo_speech(1.0, rng=rng) for _ in range(8)]))
    with torch.no_grad():
        head.weight.mul_(100)
        head.bias.sub_(teacher(probe).mean(0) - 0.5)
        assert (teacher(probe).std(0) > 0.05).all()
    save_teacher(teacher, root / "teacher")
    labels = pd.read_csv(root / "train.csv")  # stand-in cached labels: 1 - gold
    labels["file"] = [str(root / f) for f in labels["file"]]
    labels[list(LABELS)] = 1 - labels[list(LABELS)]
    labels.assign(start=0.0, end=1.0, teacher="t").to_parquet(root / "labels.parquet")
    return root


def _config(corpus, out, **overrides) -> TrainConfig:
    base = {
        "mode": "distill",
        "teacher": str(corpus / "teacher"),
        "audio": str(corpus / "train.csv"),
        "val": str(corpus / "val.csv"),
        "out": str(out),
        "max_steps": 2,
    }
    return resolve_config(TINY, base, overrides)


def _losses(run_dir) -> np.ndarray:
    table = pd.read_csv(run_dir / "metrics.csv")
    return table.dropna(subset=["train/loss"]).sort_values("step")["train/loss"].to_numpy()


def test_online_distillation_loss_falls_and_writes_the_run(corpus, tmp_path):
    # one fixed batch (all 8 clips of exactly the crop length, no augmentation): the student
    # must fit the teacher's outputs on it
    cfg = _config(
        corpus,
        tmp_path / "run",
        max_steps=12,
        batch_size=N_TRAIN,
        aug_ratio=0.0,
        lr=3e-3,
        scheduler="constant",
    )
    result = fit(cfg)
    losses = _losses(result.run_dir)
    assert len(losses) == 12
    assert losses[-3:].mean() < 0.75 * losses[:3].mean()
    for name in (
        "best.ckpt",
        "last.ckpt",
        "best.safetensors",
        "config.yaml",
        "summary.json",
        "metrics.csv",
    ):
        assert (result.run_dir / name).is_file(), name
    saved = yaml.safe_load((result.run_dir / "config.yaml").read_text())
    assert resolve_config(saved) == cfg
    assert result.global_step == 12 and result.start_step == 0
    # validated against the teacher at the last step; best.safetensors = best.ckpt
    assert result.history[-1]["step"] == 12 and np.isfinite(result.best_score)
    assert cfg.val_target == "teacher"
    a, b = load_model(result.weights), load_model(result.best_checkpoint)
    x = torch.from_numpy(pseudo_speech(1.0, rng=np.random.default_rng(5)))[None]
    with torch.no_grad():
        torch.testing.assert_close(a(x), b(x))
    summary = json.loads((result.run_dir / "summary.json").read_text())
    assert summary["global_step"] == 12 and summary["targets"] == "online"


def test_resume_continues_from_the_saved_step(corpus, tmp_path):
    first = fit(_config(corpus, tmp_path / "run", max_steps=2))
    assert first.global_step == 2
    second = fit(_config(corpus, tmp_path / "run", max_steps=4, resume="last"))
    assert second.start_step == 2 and second.global_step == 4
    steps = pd.read_csv(tmp_path / "run" / "metrics.csv").dropna(subset=["train/loss"])["step"]
    assert len(steps) == 4  # both sessions' rows, merged
    with pytest.raises(FileNotFoundError, match="nothing.ckpt"):
        fit(_config(corpus, tmp_path / "run", resume=str(tmp_path / "nothing.ckpt")))


def test_cached_labels_via_the_cli(corpus, tmp_path, capsys):
    out = tmp_path / "cached"
    code = main(
        [
            "distill",
            "--audio",
            str(corpus / "train.csv"),
            "--labels",
            str(corpus / "labels.parquet"),
            "--student",
            "wav2small-tiny",
            "--out",
            str(out),
            "--max-steps",
            "2",
            "--batch-size",
            "4",
            "--num-workers",
            "0",
            "--no-progress",
            "--set",
            "crop_seconds=1.0",
            "val_fraction=0.25",
        ]
    )
    assert code == 0
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["targets"] == "cached" and saved["crop_seconds"] == 1.0
    assert "val CCC mean" in capsys.readouterr().out
    # the held-out clips are validated against their cached labels: no teacher was needed
    assert json.loads((out / "summary.json").read_text())["val_target"] == "teacher"


def test_embedding_hints_fit_a_training_only_map(corpus, tmp_path):
    table = pd.read_parquet(corpus / "labels.parquet")
    table["embedding"] = list(np.random.default_rng(1).normal(size=(len(table), 6)))
    table.to_parquet(tmp_path / "hints.parquet")
    cfg = _config(
        corpus,
        tmp_path / "run",
        labels=str(tmp_path / "hints.parquet"),
        targets="cached",
        hint_weight=1.0,
        max_steps=12,
        batch_size=N_TRAIN,
        aug_ratio=0.0,
        lr=1e-2,
        scheduler="constant",
    )
    result = fit(cfg)
    metrics = pd.read_csv(result.run_dir / "metrics.csv").dropna(subset=["train/hint"])
    hint = metrics.sort_values("step")["train/hint"].to_numpy()
    assert len(hint) == 12 and hint[-3:].mean() < 0.8 * hint[:3].mean()
    from safetensors.torch import load_file

    state = torch.load(result.best_checkpoint, weights_only=True)["state_dict"]
    assert {"hint_proj.weight", "hint_mean", "hint_std"} <= set(state)
    assert not any(k.startswith("hint") for k in load_file(result.weights))  # not shipped
    resumed = fit(replace(cfg, max_steps=14, resume="last"))  # the map is restored, too
    assert resumed.global_step == 14
    with pytest.raises(ValueError, match="no 'embedding' column"):
        fit(replace(cfg, labels=str(corpus / "labels.parquet"), out=str(tmp_path / "r2")))


def _gold_run(corpus, out, **settings) -> TrainConfig:
    """A gold-label run on the corpus's train split without a validation set."""
    base = {"mode": "train", "data": str(corpus / "train.csv"), "val_fraction": 0.0}
    return resolve_config(TINY, base, {"out": str(out), **settings})


def test_gold_baseline_is_reproducible_from_its_seed(corpus, tmp_path):
    def weights(out, seed):
        cfg = _gold_run(corpus, out, max_steps=2, seed=seed, aug_ratio=1.0, shift_prob=0.5)
        result = fit(cfg)
        assert cfg.targets == "gold" and np.isnan(result.best_score)  # no validation set
        return load_model(result.weights).state_dict()

    a, b = weights(tmp_path / "a", 0), weights(tmp_path / "b", 0)
    c = weights(tmp_path / "c", 1)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_frozen_batch_norm_stops_updating_its_running_statistics(corpus, tmp_path):
    """``freeze_bn_step``: from that step a MobileNet's BatchNorm layers normalise with their
    running statistics (as at inference) and stop updating them; before it they learn them."""

    def running_means(out, steps, freeze):
        cfg = _gold_run(
            corpus, out, student="mobilenetv4-small", max_steps=steps, freeze_bn_step=freeze
        )
        model = load_model(fit(cfg).weights)
        norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
        return torch.cat([m.running_mean for m in norms])

    one_step = running_means(tmp_path / "one", 1, 0)
    frozen = running_means(tmp_path / "frozen", 3, 1)
    free = running_means(tmp_path / "free", 3, 0)
    assert one_step.abs().sum() > 0  # the first step learned statistics
    torch.testing.assert_close(frozen, one_step, rtol=0, atol=0)
    assert not torch.allclose(free, one_step)


# --- configuration --------------------------------------------------------------------------
def test_config_layers_and_type_checks(tmp_path):
    cfg = resolve_config(
        {"lr": "0.01", "max_steps": 5},
        {"max_steps": None},
        parse_overrides(["batch_size=4", "noise_dir=null"]),
    )
    assert cfg.lr == 0.01 and cfg.max_steps == 5 and cfg.batch_size == 4
    assert cfg.noise_dir is None
    with pytest.raises(ValueError, match="unknown setting 'learning_rate'"):
        resolve_config({"learning_rate": 1})
    with pytest.raises(ValueError, match="max_steps"):
        resolve_config({"max_steps": "many"})
    with pytest.raises(ValueError, match="key=value"):
        parse_overrides(["lr"])


def test_config_validation_names_the_problem():
    with pytest.raises(ValueError, match="teacher"):
        TrainConfig(audio="x").validate()
    with pytest.raises(ValueError, match="--labels"):
        TrainConfig(audio="x", targets="cached").validate()
    with pytest.raises(ValueError, match="--data"):
        TrainConfig(mode="train").validate()
    with pytest.raises(ValueError, match="batch_size"):
        TrainConfig(mode="train", data="x", batch_size=1).validate()
    with pytest.raises(ValueError, match="aug"):
        TrainConfig(mode="train", data="x", aug_ratio=2).validate()
    cfg = TrainConfig(mode="train", data="x", targets="online").validate()
    assert cfg.targets == "gold" and cfg.val_target == "gold"
    with pytest.raises(ValueError, match="hint_weight needs cached labels"):
        TrainConfig(audio="x", teacher="t", hint_weight=1.0).validate()
    with pytest.raises(ValueError, match="hint_weight must be >= 0"):
        TrainConfig(audio="x", labels="l", targets="cached", hint_weight=float("nan")).validate()


def test_batch_norm_freezes_by_default_for_mobilenets_only(tmp_path):
    base = {"mode": "train", "data": str(tmp_path / "x.csv"), "max_steps": 2000}
    mobile = resolve_config({**base, "student": "mobilenetv4-small"}).validate()
    assert mobile.freeze_bn_step == 300  # 15 % of the run
    assert resolve_config({**base, "student": "wav2small-paper"}).validate().freeze_bn_step == 0
    explicit = resolve_config({**base, "student": "mobilenetv3-large", "freeze_bn_step": 0})
    assert explicit.validate().freeze_bn_step == 0


def test_default_yaml_matches_the_dataclass():
    from pathlib import Path

    path = Path(__file__).parents[1] / "configs" / "distill.yaml"
    values = yaml.safe_load(path.read_text())
    defaults = TrainConfig().to_dict()
    assert {k: defaults[k] for k in values} == values


def test_learning_rate_schedule():
    f = lr_lambda(TrainConfig(warmup_steps=10, max_steps=110))
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(60) == pytest.approx(0.5) and f(110) == pytest.approx(0.0, abs=1e-12)


def test_training_data_errors(corpus, tmp_path):
    unlabelled = pd.read_csv(corpus / "train.csv")[["file"]]
    unlabelled["file"] = [str(corpus / f) for f in unlabelled["file"]]
    unlabelled.to_csv(tmp_path / "unlabelled.csv", index=False)
    with pytest.raises(ValueError, match="unlabelled.csv.*label columns"):
        fit(
            resolve_config(
                TINY,
                {
                    "mode": "train",
                    "data": str(tmp_path / "unlabelled.csv"),
                    "out": str(tmp_path / "r1"),
                },
            )
        )
    with pytest.raises(ValueError, match="fewer than one batch"):
        fit(_config(corpus, tmp_path / "r2", batch_size=16))


def test_clip_mixing_defaults_to_off_for_whole_clip_targets():
    online = TrainConfig(audio="x", teacher="synth").validate()
    cached = TrainConfig(audio="x", targets="cached", labels="l.parquet").validate()
    gold = TrainConfig(mode="train", data="x").validate()
    assert (online.aug_mix_clip, cached.aug_mix_clip, gold.aug_mix_clip) == (0.5, 0.0, 0.0)
    chosen = resolve_config({"mode": "train", "data": "x"}, {"aug_mix_clip": "0.3"}).validate()
    assert chosen.aug_mix_clip == 0.3


# --- nothing silently wrong: finite inputs, targets, losses and weights (issue 16) -----------
def _gold_csv(corpus, tmp_path, name="bad.csv", *, extra=None, label=None):
    """The labelled training CSV (absolute paths) plus one extra clip, optionally bad."""
    table = pd.read_csv(corpus / "train.csv")
    table["file"] = [str(corpus / f) for f in table["file"]]
    if extra is not None:
        table.loc[len(table)] = {"file": str(extra), **dict.fromkeys(LABELS, 0.5)}
    if label is not None:
        table.loc[label[0], label[1]] = label[2]
    table.to_csv(tmp_path / name, index=False)
    return tmp_path / name


def _gold(csv, out, **overrides) -> TrainConfig:
    base = {"mode": "train", "data": str(csv), "val_fraction": 0.25, "out": str(out)}
    return resolve_config(TINY, base, {"max_steps": 2, **overrides})


def test_a_one_sample_clip_is_rejected_by_name_or_skipped(corpus, tmp_path):
    from wav2small.errors import UserError

    sf.write(tmp_path / "one.wav", np.array([0.1], np.float32), SAMPLE_RATE)
    csv = _gold_csv(corpus, tmp_path, extra=tmp_path / "one.wav")
    with pytest.raises(UserError, match="one.wav: 1 samples, shorter"):
        fit(_gold(csv, tmp_path / "r1"))
    result = fit(_gold(csv, tmp_path / "r2", on_error="skip"))
    skipped = pd.read_csv(result.run_dir / "skipped.csv")
    assert skipped["file"].str.endswith("one.wav").tolist() == [True]
    assert np.isfinite(result.best_score)
    state = load_model(result.weights).state_dict()
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


def test_an_inf_label_stops_the_run_naming_the_file(corpus, tmp_path):
    from wav2small.errors import NonFiniteError

    csv = _gold_csv(corpus, tmp_path, label=(2, "valence", np.inf))
    with pytest.raises(NonFiniteError, match="bad.csv.*non-finite labels, e.g. .*2.wav"):
        fit(_gold(csv, tmp_path / "r"))
    assert not (tmp_path / "r" / "best.safetensors").exists()


def test_absurd_float_samples_stop_the_run_naming_the_file(corpus, tmp_path):
    from wav2small.errors import NonFiniteError

    loud = pseudo_speech(1.0, rng=np.random.default_rng(9)) * np.float32(1e20)
    sf.write(tmp_path / "loud.wav", loud.astype(np.float32), SAMPLE_RATE, subtype="FLOAT")
    csv = _gold_csv(corpus, tmp_path, extra=tmp_path / "loud.wav")
    with pytest.raises(NonFiniteError, match="loud.wav: samples up to 5e\\+19"):
        fit(_gold(csv, tmp_path / "r1", val_fraction=0.0, max_steps=6))
    assert not (tmp_path / "r1" / "best.safetensors").exists()
    result = fit(_gold(csv, tmp_path / "r2", on_error="skip", val_fraction=0.0))
    assert "loud.wav" in (result.run_dir / "skipped.csv").read_text()


def test_divergence_stops_with_a_named_error_and_exit_code_2(corpus, tmp_path):
    from wav2small.errors import NonFiniteError, UserError

    csv = _gold_csv(corpus, tmp_path)
    diverged = "(loss is nan at step|output is not finite).*lower learning rate"
    with pytest.raises(NonFiniteError, match=diverged):
        fit(_gold(csv, tmp_path / "r1", lr=1e6, max_steps=20, scheduler="constant"))
    assert not (tmp_path / "r1" / "best.safetensors").exists()
    args = ["train", "--data", str(csv), "--out", str(tmp_path / "r2"), "--lr", "1e6"]
    args += ["--student", "wav2small-tiny", "--max-steps", "20", "--batch-size", "4"]
    args += ["--num-workers", "0", "--no-progress", "--set", "crop_seconds=1.0"]
    args += ["--set", "warmup_steps=0", "scheduler=constant"]
    try:
        code = main(args)
    except UserError:  # main() without the CLI error contract lets it through
        code = 2
    assert code == 2
