"""train-teacher: learns a tiny labelled corpus, saves a loadable teacher, resumes exactly."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch
import yaml
from safetensors.torch import load_file

from wav2small import LABELS, SAMPLE_RATE
from wav2small.audio import AudioError
from wav2small.signals import pseudo_speech_set
from wav2small.teacher_train import TrainConfig, read_labelled, train_teacher
from wav2small.teachers import SynthTeacher, load_teacher

TINY = {"channels": [8, 8], "gru_hidden": 8, "n_mels": 32, "pitch_bins": 16, "win": 512, "hop": 160}
N_CLIPS = 64


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Clips whose arousal is their level and dominance their SNR; valence is noise."""
    root = tmp_path_factory.mktemp("labelled")
    rng = np.random.default_rng(0)
    rows = []
    for i, clip in enumerate(pseudo_speech_set(N_CLIPS, seed=5, seconds=(0.8, 1.2))):
        gain_db, snr_db = rng.uniform(-20, 0), rng.uniform(0, 30)
        noise = rng.normal(0, 1, len(clip)) * np.std(clip) * 10 ** (-snr_db / 20)
        wave = (clip + noise) * 10 ** (gain_db / 20)
        sf.write(root / f"c{i:02d}.wav", wave.astype(np.float32), SAMPLE_RATE, subtype="FLOAT")
        rows.append((f"c{i:02d}.wav", (gain_db + 20) / 20, snr_db / 30, rng.uniform()))
    table = pd.DataFrame(rows, columns=["file", *LABELS])
    table.to_csv(root / "data.csv", index=False)
    return root


def _cfg(corpus, out, **kw):
    base = dict(
        data=str(corpus / "data.csv"),
        out=str(out),
        model=TINY,
        epochs=10,
        batch_size=8,
        lr=1e-2,
        crop_seconds=None,
        gain_db=0.0,
        val_fraction=0.25,
        threads=1,
        progress=False,
    )
    return TrainConfig(**{**base, **kw})


def test_training_improves_ccc_and_saves_a_loadable_teacher(tmp_path, corpus):
    result = train_teacher(_cfg(corpus, tmp_path / "t"))
    history = result.history
    assert len(history) == 10 and list(history["epoch"]) == list(range(1, 11))
    assert result.best_ccc["arousal"] > 0.7
    assert history["val_ccc_arousal"].max() > history["val_ccc_arousal"].iloc[0] + 0.1
    assert history["val_ccc_mean"].max() == pytest.approx(np.mean(list(result.best_ccc.values())))
    teacher = load_teacher(result.out)
    assert isinstance(teacher, SynthTeacher) and not teacher.training
    assert (tmp_path / "t" / "metrics.csv").is_file()
    saved = yaml.safe_load((tmp_path / "t" / "config.yaml").read_text())
    assert saved["epochs"] == 10 and saved["model"] == TINY
    # the saved teacher scores what training reported on the held-out clips
    files, gold = read_labelled(corpus / "data.csv")
    from wav2small.runs import split_indices
    from wav2small.teacher_train import load_waves, predict_waves

    _, val = split_indices(len(files), 0.25, seed=0)
    pred = predict_waves(teacher, load_waves([files[i] for i in val]))
    from wav2small.metrics import ccc

    np.testing.assert_allclose(
        ccc(pred, gold[val]), [result.best_ccc[k] for k in LABELS], atol=1e-4
    )
    assert not list((tmp_path / "t").rglob("*.tmp"))


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(tmp_path, corpus):
    train_teacher(_cfg(corpus, tmp_path / "a", epochs=3, gain_db=2.0, crop_seconds=0.6))
    first = train_teacher(
        _cfg(corpus, tmp_path / "b", epochs=3, gain_db=2.0, crop_seconds=0.6, max_minutes=0.0)
    )
    assert len(first.history) == 1  # stopped by the time limit after epoch 1
    resumed = train_teacher(
        _cfg(corpus, tmp_path / "b", epochs=3, gain_db=2.0, crop_seconds=0.6, resume=True)
    )
    assert list(resumed.history["epoch"]) == [1, 2, 3]
    a = load_file(str(tmp_path / "a" / "checkpoint" / "model.safetensors"))
    b = load_file(str(tmp_path / "b" / "checkpoint" / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6), k


def test_bad_data_is_named(tmp_path, corpus):
    pd.DataFrame({"file": ["a.wav"], "arousal": [0.5]}).to_csv(tmp_path / "m.csv", index=False)
    with pytest.raises(ValueError, match=r"m.csv: missing column\(s\) \['dominance', 'valence'\]"):
        read_labelled(tmp_path / "m.csv")
    table = pd.read_csv(corpus / "data.csv")
    table.loc[3, "valence"] = np.nan
    table.to_csv(corpus / "nan.csv", index=False)
    with pytest.raises(ValueError, match="row 3 .*c03.wav.* missing label"):
        read_labelled(corpus / "nan.csv")
    table = pd.read_csv(corpus / "data.csv")
    table.loc[5, "file"] = "missing.wav"
    table.to_csv(corpus / "gone.csv", index=False)
    with pytest.raises(AudioError, match="missing.wav"):
        train_teacher(_cfg(corpus, tmp_path / "x", data=str(corpus / "gone.csv"), epochs=1))
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        read_labelled(tmp_path / "nope.csv")


def test_cli_train_teacher_with_test_split(tmp_path, corpus, capsys):
    from wav2small.cli import main

    out = tmp_path / "cli"
    args = [
        "train-teacher",
        "--data",
        str(corpus / "data.csv"),
        "--out",
        str(out),
        "--model",
        json.dumps(TINY),
        "--epochs",
        "1",
        "--batch-size",
        "16",
        "--crop-seconds",
        "0",
        "--threads",
        "1",
        "--test",
        str(corpus / "data.csv"),
    ]
    assert main(args) == 0
    test = json.loads((out / "test_ccc.json").read_text())
    assert set(test) == set(LABELS)
    assert "test CCC" in capsys.readouterr().out


def test_a_one_clip_validation_set_still_saves_a_teacher(tmp_path, corpus):
    # 64 clips × 0.01 → one validation clip: its CCC is undefined (NaN) every epoch
    result = train_teacher(_cfg(corpus, tmp_path / "t", epochs=2, val_fraction=0.01))
    assert result.best_epoch == 1
    assert (tmp_path / "t" / "model.safetensors").is_file()


def test_bad_clips_are_rejected_by_name_or_skipped_and_divergence_stops(tmp_path, corpus):
    from wav2small.errors import NonFiniteError, UserError

    sf.write(corpus / "one.wav", np.array([0.1], np.float32), SAMPLE_RATE)
    table = pd.read_csv(corpus / "data.csv")
    table.loc[len(table)] = {"file": "one.wav", **dict.fromkeys(LABELS, 0.5)}
    table.to_csv(corpus / "short.csv", index=False)
    with pytest.raises(UserError, match="one.wav: 1 samples, shorter than the teacher's"):
        train_teacher(_cfg(corpus, tmp_path / "a", data=str(corpus / "short.csv"), epochs=1))
    result = train_teacher(
        _cfg(corpus, tmp_path / "b", data=str(corpus / "short.csv"), epochs=1, on_error="skip")
    )
    assert "one.wav" in (tmp_path / "b" / "skipped.csv").read_text()
    assert all(np.isfinite(v) for v in result.best_ccc.values())
    table = pd.read_csv(corpus / "data.csv")
    table.loc[4, "arousal"] = np.inf
    table.to_csv(corpus / "inf.csv", index=False)
    with pytest.raises(UserError, match="inf.csv: row 4 .*c04.wav.* missing label .*inf"):
        train_teacher(_cfg(corpus, tmp_path / "c", data=str(corpus / "inf.csv"), epochs=1))
    with pytest.raises(NonFiniteError, match="(loss is nan|not finite).*lower learning rate"):
        train_teacher(_cfg(corpus, tmp_path / "d", lr=1e8, epochs=3))
    assert not (tmp_path / "d" / "model.safetensors").exists()


def test_resume_refuses_changed_settings(tmp_path, corpus):
    from wav2small.errors import UserError

    train_teacher(_cfg(corpus, tmp_path / "t", epochs=1))
    with pytest.raises(UserError, match="config.yaml: the run was started with other settings"):
        train_teacher(_cfg(corpus, tmp_path / "t", epochs=2, lr=0.5, resume=True))
    assert len(train_teacher(_cfg(corpus, tmp_path / "t", epochs=2, resume=True)).history) == 2
