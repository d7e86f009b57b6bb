"""wav2small.probe: ridge read-outs and per-layer features of a frozen backbone."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch

from wav2small import LABELS
from wav2small.models.exits import load_backbone
from wav2small.probe import ALPHAS, fit_probe, layer_features, probe_backbone, probe_layers, ridge
from wav2small.signals import pseudo_speech

CLASSES = ["neutral", "happy", "angry", "sad", "calm"]


def test_ridge_recovers_a_linear_map_and_honours_weights():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 4))
    w = rng.normal(size=(4, 2))
    y = x @ w + 3.0
    coef, b = ridge(x, y, 1e-8)
    np.testing.assert_allclose(coef, w, atol=1e-6)
    np.testing.assert_allclose(b, [3.0, 3.0], atol=1e-6)
    # zero weight on the second half: its (different) targets do not count
    y2 = np.where(np.arange(200)[:, None] < 100, y, -y)
    weights = (np.arange(200) < 100).astype(float)
    coef, b = ridge(x, y2, 1e-8, weights)
    np.testing.assert_allclose(coef, w, atol=1e-6)


def test_fit_probe_separates_classes_and_picks_a_penalty_from_the_grid():
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 40)
    x = np.eye(3)[y] * 5 + rng.normal(size=(120, 3))
    x = np.concatenate([x, rng.normal(size=(120, 5))], axis=1)  # noise dimensions
    pred, alpha = fit_probe("classes", x[::2], y[::2], x[1::2], n_classes=3)
    assert (pred == y[1::2]).mean() > 0.95 and alpha in ALPHAS


def test_probe_layers_finds_the_layer_that_holds_the_labels():
    rng = np.random.default_rng(0)
    n_train, n_test = 150, 80
    tables, feats = [], []
    projection = rng.normal(size=(8, 8))  # the same for both splits
    for n in (n_train, n_test):
        adv = rng.random((n, 3))
        emotion = rng.integers(0, 5, n)
        informative = np.concatenate([adv, np.eye(5)[emotion]], axis=1) @ projection
        informative += 0.01 * rng.normal(size=(n, 8))
        noise = rng.normal(size=(n, 8))
        feats.append(np.stack([noise, informative], axis=1))  # layer 1 noise, layer 2 labels
        table = pd.DataFrame(adv, columns=list(LABELS))
        table["emotion"] = [CLASSES[e] for e in emotion]
        table["file"] = [f"{i}.wav" for i in range(n)]
        tables.append(table)
    table = probe_layers(feats[0], feats[1], tables[0], tables[1])
    assert table["layer"].tolist() == [1, 2]
    assert list(table.columns[:6]) == ["layer", *[f"ccc_{d}" for d in LABELS], "ccc_mean", "uar"]
    assert abs(table.loc[0, "ccc_mean"]) < 0.3 and table.loc[0, "uar"] < 0.4
    assert table.loc[1, "ccc_mean"] > 0.95 and table.loc[1, "uar"] > 0.95


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    root = tmp_path_factory.mktemp("probe")
    rng = np.random.default_rng(0)
    for split, n in (("train", 10), ("test", 5)):
        rows = []
        for i in range(n):
            name = f"{split}_{i}.wav"
            sf.write(root / name, pseudo_speech(rng.uniform(0.6, 1.4), rng=rng), 16000)
            adv = dict(zip(LABELS, rng.random(3), strict=True))
            rows.append({"file": name, "emotion": CLASSES[i % 5], **adv})
        pd.DataFrame(rows).to_csv(root / f"{split}.csv", index=False)
    return root


def test_layer_features_are_the_mean_of_each_hidden_state(labelled):
    from wav2small.audio import read_audio
    from wav2small.ops import prenorm

    torch.manual_seed(0)
    backbone = load_backbone("random:wav2vec2-tiny").eval()
    files = [str(labelled / f"train_{i}.wav") for i in range(4)]
    feats = layer_features(backbone, files, pooling="mean+std")
    assert feats.shape == (4, 4, 64) and np.isfinite(feats).all()
    np.testing.assert_allclose(layer_features(backbone, files), feats[..., :32], atol=1e-6)
    wave = torch.from_numpy(read_audio(files[2]))[None]
    with torch.no_grad():
        states = backbone(prenorm(wave), output_hidden_states=True).hidden_states
    for k in range(1, 5):  # batched with padding, one clip alone: the same numbers
        np.testing.assert_allclose(feats[2, k - 1, :32], states[k][0].mean(0).numpy(), atol=1e-4)
        std = states[k][0].std(0, unbiased=False).numpy()
        np.testing.assert_allclose(feats[2, k - 1, 32:], std, atol=1e-4)
    with pytest.raises(ValueError, match="pooling"):
        layer_features(backbone, files, pooling="max")


def test_probe_backbone_gives_one_row_per_layer(labelled):
    torch.manual_seed(0)
    backbone = load_backbone("random:wav2vec2-tiny")
    train, test = labelled / "train.csv", labelled / "test.csv"
    table = probe_backbone(backbone, train, test, poolings=("mean", "mean+std"))
    assert table["layer"].tolist() == [1, 2, 3, 4] * 2
    assert table["pooling"].tolist() == ["mean"] * 4 + ["mean+std"] * 4
    assert table[["ccc_mean", "uar"]].notna().all().all()
    alone = probe_backbone(backbone, train, test)  # the mean rows do not depend on the std ones
    pd.testing.assert_frame_equal(alone, table.iloc[:4], check_exact=False, atol=1e-6)
