"""Tests for wav2small.data: manifests, cached labels, crops, augmentation, sampler, batches."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from wav2small import LABELS, SAMPLE_RATE
from wav2small.audio import AudioError
from wav2small.data import (
    Augment,
    CropDataset,
    SeededSampler,
    UtteranceDataset,
    attach_hints,
    attach_labels,
    collate,
    coloured_noise,
    load_manifest,
    mix_at_snr,
    pad_collate,
    rms,
    split_manifest,
)
from wav2small.signals import pseudo_speech

N_CLIPS = 8


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Eight clips of 1.0–1.7 s in <root>/wav, a labelled CSV with relative paths."""
    root = tmp_path_factory.mktemp("corpus")
    (root / "wav").mkdir()
    rng = np.random.default_rng(0)
    rows = []
    for i in range(N_CLIPS):
        wave = pseudo_speech(1.0 + 0.1 * i, rng=rng)
        sf.write(root / "wav" / f"c{i}.wav", wave, SAMPLE_RATE, subtype="PCM_16")
        rows.append({"file": f"wav/c{i}.wav", **dict(zip(LABELS, rng.random(3), strict=True))})
    pd.DataFrame(rows).to_csv(root / "data.csv", index=False)
    return root


# --- manifests ------------------------------------------------------------------------------
def test_manifest_from_csv_resolves_relative_paths_and_reads_durations(corpus):
    table = load_manifest(corpus / "data.csv", require_labels=True)
    assert list(table.columns[:3]) == ["file", "path", "duration"]
    assert table["file"][0] == "wav/c0.wav"
    assert table["path"][0] == str(corpus / "wav" / "c0.wav")
    np.testing.assert_allclose(table["duration"], 1.0 + 0.1 * np.arange(N_CLIPS), atol=1e-3)
    assert set(LABELS) <= set(table.columns)


def test_manifest_from_folder_and_list(corpus):
    folder = load_manifest(corpus / "wav")
    assert len(folder) == N_CLIPS and not set(LABELS) & set(folder.columns)
    listed = load_manifest([corpus / "wav" / "c1.wav", corpus / "wav" / "c2.wav"])
    assert listed["duration"].round(2).tolist() == [1.1, 1.2]


def test_manifest_errors_name_the_problem(corpus, tmp_path):
    with pytest.raises(FileNotFoundError, match="nope"):
        load_manifest(tmp_path / "nope")
    (tmp_path / "bad.csv").write_text("name\nx.wav\n")
    with pytest.raises(ValueError, match="'file' column"):
        load_manifest(tmp_path / "bad.csv")
    unlabelled = tmp_path / "unlabelled.csv"
    pd.DataFrame({"file": [str(corpus / "wav" / "c0.wav")]}).to_csv(unlabelled, index=False)
    with pytest.raises(ValueError, match="label columns"):
        load_manifest(unlabelled, require_labels=True)
    broken = tmp_path / "broken.csv"
    (tmp_path / "junk.wav").write_bytes(b"not audio at all")
    pd.DataFrame({"file": ["junk.wav", str(corpus / "wav" / "c0.wav")]}).to_csv(broken, index=False)
    with pytest.raises(AudioError, match="junk.wav"):
        load_manifest(broken)
    assert len(load_manifest(broken, on_error="skip")) == 1


def test_attach_labels_matches_paths_and_averages_segments(corpus, tmp_path):
    manifest = load_manifest(corpus / "data.csv")
    labels = pd.DataFrame(
        {
            "file": [str(corpus / "wav" / f"c{i}.wav") for i in range(N_CLIPS)]
            + [str(corpus / "wav" / "c0.wav")],
            "start": [0.0] * N_CLIPS + [1.0],
            "end": [1.0] * N_CLIPS + [4.0],
            "arousal": [0.0] * N_CLIPS + [1.0],
            "dominance": 0.5,
            "valence": 0.25,
            "teacher": "t",
        }
    )
    labels.to_parquet(tmp_path / "labels.parquet")
    out = attach_labels(manifest, tmp_path / "labels.parquet")
    assert out["arousal"][0] == pytest.approx(0.75)  # 1 s of 0.0 and 3 s of 1.0
    assert out["arousal"][1] == 0.0 and (out["dominance"] == 0.5).all()
    assert manifest["arousal"][0] != out["arousal"][0]  # a copy; the manifest is unchanged
    with pytest.raises(ValueError, match="no labels for 1 of 8 files"):
        attach_labels(manifest, labels[labels.file != str(corpus / "wav" / "c3.wav")])


def test_attach_hints_matches_files_averages_segments_and_names_bad_tables(corpus, tmp_path):
    manifest = load_manifest(corpus / "data.csv")
    files = [str(corpus / "wav" / f"c{i}.wav") for i in range(N_CLIPS)]
    labels = pd.DataFrame(
        {
            "file": files + [files[0]],
            "start": [0.0] * N_CLIPS + [1.0],
            "end": [1.0] * N_CLIPS + [4.0],
            **dict.fromkeys(LABELS, 0.5),
            "embedding": [np.full(4, float(i), np.float32) for i in range(N_CLIPS)]
            + [np.full(4, 4.0, np.float32)],
        }
    )
    hints = attach_hints(manifest, labels)
    assert hints.shape == (N_CLIPS, 4) and hints.dtype == np.float32
    np.testing.assert_allclose(hints[0], 3.0)  # 1 s of 0.0 and 3 s of 4.0
    np.testing.assert_allclose(hints[1:, 0], np.arange(1, N_CLIPS))
    with pytest.raises(ValueError, match="label the audio with `wav2small label --embeddings`"):
        attach_hints(manifest, labels.drop(columns="embedding"), name="t.parquet")
    ragged = labels.copy()
    ragged.at[2, "embedding"] = np.zeros(3, np.float32)
    with pytest.raises(ValueError, match="embedding rows have lengths"):
        attach_hints(manifest, ragged)
    bad = labels.copy()
    bad.at[2, "embedding"] = np.array([0, np.nan, 0, 0], np.float32)
    with pytest.raises(ValueError, match="non-finite embedding for .*c2.wav"):
        attach_hints(manifest, bad)
    with pytest.raises(ValueError, match="no labels for 1 of 8 files"):
        attach_hints(manifest, labels[labels.file != files[3]])


def test_split_is_seeded_disjoint_and_complete(corpus):
    manifest = load_manifest(corpus / "data.csv")
    train, val = split_manifest(manifest, 0.25, seed=1)
    assert len(val) == 2 and len(train) == 6
    assert not set(train.file) & set(val.file)
    assert split_manifest(manifest, 0.25, seed=1)[1].file.tolist() == val.file.tolist()
    assert len(split_manifest(manifest, 0.0, seed=1)[1]) == 0
    with pytest.raises(ValueError, match="fraction"):
        split_manifest(manifest, 1.0, seed=1)


# --- augmentation ---------------------------------------------------------------------------
def test_mix_at_snr_gives_the_requested_snr():
    rng = np.random.default_rng(3)
    speech = pseudo_speech(1.0, rng=rng)
    noise = coloured_noise(8000, "white", rng)  # tiled to the signal's length
    mixed = mix_at_snr(speech, noise, 10.0)
    snr = 20 * np.log10(rms(speech) / rms(mixed - speech))
    assert snr == pytest.approx(10.0, abs=1e-3)


def test_coloured_noise_slopes():
    rng = np.random.default_rng(0)
    power = {}
    for colour in ("white", "pink", "brown"):
        x = coloured_noise(SAMPLE_RATE, colour, rng)
        assert rms(x) == pytest.approx(1.0, rel=1e-3)
        spec = np.abs(np.fft.rfft(x)) ** 2
        f = np.fft.rfftfreq(len(x), 1 / SAMPLE_RATE)
        power[colour] = spec[(f > 100) & (f < 400)].mean() / spec[(f > 3200) & (f < 6400)].mean()
    assert 0.5 < power["white"] < 2 < power["pink"] < power["brown"]
    with pytest.raises(ValueError, match="colour"):
        coloured_noise(10, "purple", rng)


def test_augment_settings_are_checked():
    with pytest.raises(ValueError, match="ratio"):
        Augment(ratio=1.5)
    with pytest.raises(ValueError, match="snr_db"):
        Augment(snr_db=(20.0, 10.0))


# --- dataset, sampler, batches --------------------------------------------------------------
def test_crops_are_bounded_reproducible_and_augmented(corpus):
    manifest = load_manifest(corpus / "data.csv")
    clean = CropDataset(manifest, crop_seconds=0.5)
    item = clean[(3, 42)]
    assert len(item["wave"]) == SAMPLE_RATE // 2 and item["target"] is None
    np.testing.assert_array_equal(item["wave"], clean[(3, 42)]["wave"])
    assert not np.array_equal(item["wave"], clean[(3, 43)]["wave"])  # another crop
    always = CropDataset(manifest, crop_seconds=0.5, augment=Augment(ratio=1.0), with_targets=True)
    mixed = always[(3, 42)]
    assert not np.allclose(mixed["wave"], item["wave"])  # same crop, plus an interferer
    assert mixed["target"] == pytest.approx(manifest.loc[3, list(LABELS)].to_numpy(float))
    whole = CropDataset(manifest, crop_seconds=None)[(7, 0)]
    assert len(whole["wave"]) == round(1.7 * SAMPLE_RATE)


def test_noise_dir_gain_and_shift(corpus):
    manifest = load_manifest(corpus / "data.csv")
    base = CropDataset(manifest, crop_seconds=None)[(0, 5)]["wave"]
    noisy = CropDataset(
        manifest,
        crop_seconds=None,
        augment=Augment(ratio=1.0, mix_clip_prob=0.0, noise_dir=str(corpus / "wav"), snr_db=(0, 0)),
    )[(0, 5)]
    snr = 20 * np.log10(rms(base) / rms(noisy["wave"] - base))
    assert snr == pytest.approx(0.0, abs=1e-3)
    shifted = CropDataset(manifest, crop_seconds=None, augment=Augment(ratio=0.0, shift_prob=1.0))[
        (0, 5)
    ]["wave"]
    assert not np.array_equal(shifted, base)
    np.testing.assert_array_equal(np.sort(shifted), np.sort(base))  # a circular shift
    gains = [
        rms(
            CropDataset(manifest, crop_seconds=None, augment=Augment(ratio=0.0, gain_db=6.0))[
                (0, seed)
            ]["wave"]
        )
        / rms(base)
        for seed in range(4)
    ]
    assert all(10 ** (-6 / 20) - 1e-4 <= g <= 10 ** (6 / 20) + 1e-4 for g in gains)
    assert len(set(np.round(gains, 4))) == 4


def test_sampler_is_seeded_per_epoch_and_shards():
    sampler = SeededSampler(10, seed=0)
    first = list(sampler)
    assert sorted(i for i, _ in first) == list(range(10))
    assert list(sampler) == first
    sampler.set_epoch(1)
    assert list(sampler) != first
    halves = [list(SeededSampler(10, seed=0, rank=r, world_size=2)) for r in (0, 1)]
    assert sorted(halves[0] + halves[1]) == sorted(first)


def test_collate_cuts_to_shortest_and_pads_below_minimum():
    items = [
        {
            "wave": np.full(n, float(n), np.float32),
            "target": np.ones(3, np.float32),
            "index": k,
            "u": 0.5,
        }
        for k, n in enumerate([16000, 24000, 20000])
    ]
    batch = collate(items)
    assert batch["wave"].shape == (3, 16000) and batch["lengths"].tolist() == [16000] * 3
    assert batch["target"].shape == (3, 3) and batch["index"].tolist() == [0, 1, 2]
    short = [
        {"wave": np.ones(n, np.float32), "target": None, "index": 0, "u": 0.0}
        for n in (8000, 32000)
    ]
    batch = collate(short, min_seconds=1.0)
    assert batch["wave"].shape == (2, 16000) and batch["lengths"].tolist() == [8000, 16000]
    assert batch["target"] is None and batch["wave"][0, 8000:].abs().sum() == 0
    padded = pad_collate(short)
    assert padded["wave"].shape == (2, 32000) and padded["lengths"].tolist() == [8000, 32000]


def test_utterance_dataset_reads_whole_clips(corpus):
    manifest = load_manifest(corpus / "data.csv")
    targets = manifest[list(LABELS)].to_numpy()
    item = UtteranceDataset(manifest, targets)[2]
    assert len(item["wave"]) == round(1.2 * SAMPLE_RATE)
    assert item["target"] == pytest.approx(targets[2])


def test_whole_clip_batches_are_padded_to_the_longest_never_cut():
    """crop_seconds=None: each clip is whole (its label describes it); crops are cut."""
    from wav2small.data import train_collate

    items = [
        {"wave": np.full(n, 1.0, np.float32), "target": None, "index": k, "u": 0.9}
        for k, n in enumerate([40000, 91000, 64000])
    ]
    whole = train_collate(None, min_seconds=1.0)(items)
    assert whole["wave"].shape == (3, 91000) and whole["lengths"].tolist() == [40000, 91000, 64000]
    assert whole["wave"][0, :40000].min() == 1 and whole["wave"][0, 40000:].abs().sum() == 0
    cropped = train_collate(4.0, min_seconds=1.0)(items)
    assert cropped["wave"].shape == (3, 40000) and cropped["lengths"].tolist() == [40000] * 3


def test_whole_clip_sampler_batches_similar_lengths_and_draws_each_clip_once():
    from wav2small.data import BUCKET_BATCHES, train_sampler

    rng = np.random.default_rng(0)
    n, batch = 8 * BUCKET_BATCHES * 3 + 5, 8
    durations = rng.uniform(2.4, 5.7, n)
    manifest = pd.DataFrame({"path": [f"{i}.wav" for i in range(n)], "duration": durations})
    whole = train_sampler(CropDataset(manifest, crop_seconds=None), seed=1, batch_size=batch)
    crops = train_sampler(CropDataset(manifest, crop_seconds=4.0), seed=1, batch_size=batch)
    for sampler in (whole, crops):
        sampler.set_epoch(0)
        pairs = list(sampler)
        assert sorted(i for i, _ in pairs) == list(range(n))  # each clip once per epoch
    assert list(crops) == list(SeededSampler(n, seed=1))  # crops: the plain shuffled order
    order = np.array([i for i, _ in whole])
    assert order.tolist() == [i for i, _ in whole]  # reproducible
    full = order[: n // batch * batch].reshape(-1, batch)
    padded = durations[full].max(1).sum() * batch / durations[full].sum()
    shuffled = np.array([i for i, _ in crops])[: n // batch * batch].reshape(-1, batch)
    padded_random = durations[shuffled].max(1).sum() * batch / durations[shuffled].sum()
    assert padded < 1.1 < padded_random  # ≤ 10 % padding instead of ≈ 25 %
    whole.set_epoch(1)
    assert [i for i, _ in whole] != order.tolist()  # another epoch, other batches


def test_fast_fft_length_is_the_smallest_5_smooth_length_not_below_n():
    from wav2small.data import fast_fft_length

    def smooth(m: int) -> bool:
        for p in (2, 3, 5):
            while m % p == 0:
                m //= p
        return m == 1

    for n in (1, 2, 7, 97, 1000, 63_001, 96_017):
        m = fast_fft_length(n)
        assert m >= n and smooth(m)
        assert not any(smooth(k) for k in range(n, m))
