"""wav2small.pretrain: cluster targets, masking, the masked-prediction run, the shipped backbone."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch

from wav2small.config import PretrainConfig
from wav2small.errors import UserError
from wav2small.ops import receptive_field
from wav2small.pretrain import (
    BACKBONE_ASSET,
    BACKBONE_DIR,
    BACKBONE_FIELDS,
    FRAME_HOP,
    IGNORE,
    RECIPE_FILE,
    Targets,
    assign,
    backbone_asset,
    fit_targets,
    frame_targets,
    kmeans,
    masked_loss,
    pretrain,
    span_mask,
    target_front_end,
)
from wav2small.signals import pseudo_speech

#: A tiny backbone for tests (the shipped shape is BACKBONE_FIELDS).
TINY = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "conv_dim": [16] * 7,
    "num_conv_pos_embeddings": 16,
    "num_conv_pos_embedding_groups": 4,
}
CODEBOOKS = {"mel": 6, "pitch": 4}


@pytest.fixture(scope="module")
def audio(tmp_path_factory):
    """Ten pseudo-speech clips of 1.2–2.1 s and a CSV listing them."""
    root = tmp_path_factory.mktemp("pretrain_audio")
    rng = np.random.default_rng(0)
    names = []
    for i in range(10):
        name = f"c{i}.wav"
        sf.write(root / name, pseudo_speech(1.2 + 0.1 * i, rng=rng), 16000, subtype="PCM_16")
        names.append(name)
    pd.DataFrame({"file": names}).to_csv(root / "clips.csv", index=False)
    return root


def config(root, out, **kw) -> PretrainConfig:
    base = {
        "audio": (str(root / "clips.csv"),),
        "out": str(out),
        "model": TINY,
        "codebooks": CODEBOOKS,
        "batch_size": 4,
        "crop_seconds": 1.0,
        "max_steps": 6,
        "kmeans_frames": 2000,
        "kmeans_iters": 10,
        "save_every": 3,
        "log_every": 1,
        "progress": False,
        "threads": 1,
    }
    return PretrainConfig(**(base | kw))


# --- targets --------------------------------------------------------------------------------
def test_kmeans_finds_separated_clusters():
    gen = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    x = torch.cat([c + 0.1 * torch.randn(200, 2, generator=gen) for c in centres])
    found = kmeans(x, 3, iters=20, seed=1)
    nearest = assign(centres, found)
    assert sorted(nearest.tolist()) == [0, 1, 2]  # one centroid per true centre
    assert torch.allclose(found[nearest], centres, atol=0.05)
    codes = assign(x, found)
    assert (codes.view(3, 200) == nearest[:, None]).all()


def test_kmeans_needs_as_many_frames_as_clusters():
    with pytest.raises(UserError, match="at least 5 frames"):
        kmeans(torch.zeros(3, 2), 5)


def test_encoder_frames_meet_target_frames_eight_samples_apart():
    # encoder frame g: receptive field 400, stride 320 → centre 320 g + 200; target frame g − 1:
    # 1024-sample window, hop 320 → centre 320 (g − 1) + 512
    front = target_front_end()
    field = receptive_field(BACKBONE_FIELDS["conv_kernel"], BACKBONE_FIELDS["conv_stride"])
    assert (front.hop, int(np.prod(BACKBONE_FIELDS["conv_stride"]))) == (FRAME_HOP, FRAME_HOP)
    g = 7
    assert abs((FRAME_HOP * g + field / 2) - (FRAME_HOP * (g - 1) + front.win / 2)) == 8


def test_frame_targets_shift_by_one_frame_and_ignore_what_has_no_target():
    codes = torch.arange(10).repeat(2, 1).T  # 10 target frames, two codebooks
    out = frame_targets(codes, first=0, n_frames=6, valid=6)
    assert out[0].tolist() == [IGNORE, IGNORE] and out[1:, 0].tolist() == [0, 1, 2, 3, 4]
    out = frame_targets(codes, first=8, n_frames=5, valid=5)  # runs past the last target frame
    assert out[:, 1].tolist() == [7, 8, 9, IGNORE, IGNORE]
    out = frame_targets(codes, first=2, n_frames=5, valid=3)  # padded crop
    assert out[:, 0].tolist() == [1, 2, 3, IGNORE, IGNORE]


def test_fit_targets_gives_codes_for_every_frame_and_round_trips(tmp_path):
    rng = np.random.default_rng(0)
    waves = [pseudo_speech(s, rng=rng) for s in (0.5, 1.0, 1.3)]
    targets = fit_targets(waves, {"mel": 5, "pitch": 3}, kmeans_frames=500, kmeans_iters=5)
    frames = [(len(w) - 1024) // FRAME_HOP + 1 for w in waves]
    assert [len(c) for c in targets.codes] == frames
    assert targets.codes[0].shape[1] == 2 and targets.names == ("mel", "pitch")
    for j, k in enumerate((5, 3)):
        used = torch.cat(targets.codes)[:, j]
        assert 0 <= int(used.min()) and int(used.max()) < k and len(used.unique()) > 1
    targets.save(tmp_path / "t.safetensors")
    back = Targets.load(tmp_path / "t.safetensors")
    assert back.names == targets.names
    assert all(torch.equal(a, b) for a, b in zip(back.codes, targets.codes, strict=True))
    assert torch.equal(back.centroids["pitch"], targets.centroids["pitch"])


def test_targets_ignore_the_level_of_the_clip():
    # the backbone sees per-utterance normalised audio, so the targets do too
    wave = pseudo_speech(1.0, rng=np.random.default_rng(1))
    a = fit_targets([wave, 0.3 * wave], {"mel": 4}, kmeans_frames=200, kmeans_iters=5)
    assert torch.equal(a.codes[0], a.codes[1])


def test_span_mask_covers_about_half_the_valid_frames_and_no_padding():
    gen = torch.Generator().manual_seed(0)
    frames = torch.tensor([200, 120, 15])
    mask = span_mask(frames, 200, prob=0.65, length=10, gen=gen)
    assert not mask[1, 120:].any() and not mask[2, 15:].any()
    share = mask[0].float().mean()
    assert 0.35 < share < 0.65  # 13 spans of 10 over 200 frames, overlapping
    assert mask[2].any()  # at least one span even in a short crop
    again = span_mask(frames, 200, prob=0.65, length=10, gen=torch.Generator().manual_seed(0))
    assert torch.equal(mask, again)


def test_masked_loss_counts_masked_frames_with_targets_only():
    logits = {"mel": torch.zeros(1, 4, 3), "pitch": torch.zeros(1, 4, 2)}
    logits["mel"][0, 0, 2] = 50.0  # frame 0 predicts code 2 for sure
    targets = torch.tensor([[[2, 0], [1, IGNORE], [0, 1], [0, 1]]])
    mask = torch.tensor([[True, True, False, False]])
    terms = masked_loss(logits, targets, mask)
    assert terms["acc_mel"] == pytest.approx(0.5)  # frame 0 right; frame 1 uniform → argmax 0
    assert float(terms["loss_pitch"]) == pytest.approx(np.log(2), abs=1e-6)  # frame 0 only
    assert float(terms["loss"]) == pytest.approx((float(terms["loss_mel"]) + np.log(2)) / 2)


def test_unmasked_frames_count_with_their_weight():
    gen = torch.Generator().manual_seed(0)
    logits = {"mel": torch.randn(2, 6, 4, generator=gen)}
    targets = torch.randint(0, 4, (2, 6, 1), generator=gen)
    mask = torch.zeros(2, 6, dtype=torch.bool)
    mask[:, :3] = True
    plain = masked_loss(logits, targets, mask)
    both = masked_loss(logits, targets, mask, unmasked_weight=0.5)
    seen = torch.nn.functional.cross_entropy(
        logits["mel"][:, 3:].reshape(-1, 4), targets[:, 3:, 0].flatten()
    )
    assert float(both["unmasked_mel"]) == pytest.approx(float(seen))
    assert float(both["loss"]) == pytest.approx(float(plain["loss"]) + 0.5 * float(seen))
    assert "unmasked_mel" not in plain and float(both["loss_mel"]) == float(plain["loss_mel"])


# --- the run --------------------------------------------------------------------------------
def test_pretrain_writes_a_hub_layout_backbone(audio, tmp_path):
    from transformers import AutoFeatureExtractor, AutoModel

    from wav2small.models.exits import create_exits_model

    result = pretrain(config(audio, tmp_path / "run"))
    folder = tmp_path / "run" / BACKBONE_DIR
    assert result.backbone == folder and result.steps == 6
    assert {p.name for p in folder.iterdir()} == {
        "config.json",
        "model.safetensors",
        "preprocessor_config.json",
        RECIPE_FILE,
    }
    loaded = AutoModel.from_pretrained(folder)
    assert type(loaded).__name__ == "Wav2Vec2Model"
    assert loaded.config.hidden_size == 32 and loaded.config.do_stable_layer_norm
    features = AutoFeatureExtractor.from_pretrained(folder)
    assert features.sampling_rate == 16000 and features.do_normalize
    recipe = json.loads((folder / RECIPE_FILE).read_text())
    assert recipe["steps"] == 6 and recipe["clips"] == 10
    assert set(recipe["final"]) == {"loss", "loss_mel", "loss_pitch", "acc_mel", "acc_pitch"}
    metrics = pd.read_csv(tmp_path / "run" / "metrics.csv")
    assert metrics["step"].tolist() == [1, 2, 3, 4, 5, 6] and np.isfinite(metrics["loss"]).all()
    model = create_exits_model(folder, task="adv", exits=[1]).eval()
    assert torch.isfinite(model(torch.randn(2, 16000), exit=1)).all()


def test_pretraining_learns_the_targets(audio, tmp_path):
    # below the entropy of the codes' frequencies: the model predicts masked frames from context
    result = pretrain(
        config(audio, tmp_path / "run", max_steps=80, lr=3e-3, log_every=10, save_every=80)
    )
    codes = torch.cat(Targets.load(result.out / "targets.safetensors").codes)
    entropies = []
    for j in range(codes.shape[1]):
        p = torch.bincount(codes[:, j]).float()
        p = p[p > 0] / p.sum()
        entropies.append(float(-(p * p.log()).sum()))
    masked = pd.read_csv(result.out / "metrics.csv")[["loss_mel", "loss_pitch"]].mean(axis=1)
    assert masked.iloc[-1] < np.mean(entropies) - 0.1 < masked.iloc[0]


def test_an_interrupted_run_resumes_to_the_same_weights(audio, tmp_path, monkeypatch):
    import wav2small.pretrain as pt

    whole = pretrain(config(audio, tmp_path / "whole"))
    calls = {"n": 0}
    loss = pt.masked_loss

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:  # after the step-3 checkpoint
            raise KeyboardInterrupt
        return loss(*args, **kwargs)

    monkeypatch.setattr(pt, "masked_loss", failing)
    with pytest.raises(KeyboardInterrupt):
        pretrain(config(audio, tmp_path / "cut"))
    monkeypatch.setattr(pt, "masked_loss", loss)
    resumed = pretrain(config(audio, tmp_path / "cut", resume="last"))
    from safetensors.torch import load_file

    a = load_file(whole.backbone / "model.safetensors")
    b = load_file(resumed.backbone / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    steps = pd.read_csv(resumed.out / "metrics.csv")["step"].tolist()
    assert steps == [1, 2, 3, 4, 5, 6]


def test_a_resumed_run_refuses_changed_settings(audio, tmp_path):
    pretrain(config(audio, tmp_path / "run", max_steps=3))
    with pytest.raises(UserError, match="lr"):
        pretrain(config(audio, tmp_path / "run", lr=0.5, resume="last"))


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"audio": ()}, "needs `audio`"),
        ({"codebooks": {"words": 10}}, "codebooks must name"),
        ({"codebooks": {"mel": 1}}, "at least 2 clusters"),
        ({"mask_prob": 1.0}, "mask_prob"),
        ({"crop_seconds": None}, "crop_seconds"),
    ],
)
def test_bad_settings_are_named(audio, tmp_path, settings, message):
    with pytest.raises(UserError, match=message):
        config(audio, tmp_path, **settings).validate()


def test_cli_pretrain_without_audio_is_one_line_exit_2(tmp_path, capsys):
    from wav2small.cli import main

    assert main(["pretrain", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "audio" in err[0]


def test_cli_pretrain_runs(audio, tmp_path):
    from wav2small.cli import main

    args = ["pretrain", "--audio", str(audio / "clips.csv"), "--out", str(tmp_path / "run")]
    args += ["--max-steps", "2", "--batch-size", "2", "--crop-seconds", "1", "--no-progress"]
    args += ["--set", f"model={json.dumps(TINY)}", f"codebooks={json.dumps(CODEBOOKS)}"]
    args += ["kmeans_frames=500"]
    assert main(args) == 0
    assert (tmp_path / "run" / BACKBONE_DIR / "model.safetensors").is_file()


# --- the shipped backbone -------------------------------------------------------------------
def test_the_shipped_backbone_loads_like_a_hub_backbone():
    from transformers import AutoModel, Wav2Vec2Config

    from wav2small.models.exits import load_backbone

    folder = backbone_asset()
    assert (folder / "preprocessor_config.json").is_file()
    size = (folder / "model.safetensors").stat().st_size
    assert size < 10e6  # a few MB
    model = AutoModel.from_pretrained(folder)
    expected = Wav2Vec2Config(**BACKBONE_FIELDS)
    for key in ("hidden_size", "num_hidden_layers", "conv_dim", "do_stable_layer_norm"):
        assert getattr(model.config, key) == getattr(expected, key)
    by_name = load_backbone(BACKBONE_ASSET)
    a, b = model.state_dict(), by_name.state_dict()
    assert all(torch.equal(a[k], b[k]) and torch.isfinite(a[k]).all() for k in a)
    recipe = json.loads((folder / RECIPE_FILE).read_text())
    assert recipe["steps"] > 0 and recipe["final"]["acc_mel"] > 0
