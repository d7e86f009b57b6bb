"""Tests of the built-in synthetic corpus generator (wav2small.synth, wav2small.espeak)."""

from __future__ import annotations

import csv
import math
import wave
from pathlib import Path

import numpy as np
import pytest

from wav2small import LABELS, SAMPLE_RATE
from wav2small.cli import main as cli_main
from wav2small.metrics import ccc

synth = pytest.importorskip("wav2small.synth")
syllables = pytest.importorskip("wav2small.synth.texts")._syllables
pytest.importorskip("espeakng_loader")

C = synth.CONTROLS


def _read_wav(path: Path) -> tuple[np.ndarray, tuple[int, int, int]]:
    with wave.open(str(path), "rb") as w:
        fmt = (w.getnchannels(), w.getsampwidth(), w.getframerate())
        return np.frombuffer(w.readframes(w.getnframes()), dtype="<i2"), fmt


def _read_csv(path: Path) -> list[dict]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _files(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


# --- label model ------------------------------------------------------------------------------
def test_labels_follow_the_formula():
    u = np.zeros((2, len(C)))
    u[1, C.index("effort")] = 1.0
    y = synth.labels_from_controls(u)
    np.testing.assert_allclose(y[0], 0.5)
    for j in range(3):
        w = synth.WEIGHTS[j]
        z = w[C.index("effort")] / np.linalg.norm(w)
        assert y[1, j] == pytest.approx(0.5 * (1 + math.erf(z / math.sqrt(2))))
    assert y[1, 0] > y[1, 1] > 0.5 and y[1, 2] == pytest.approx(0.5)  # effort: A, D up; V not


def test_label_marginals_are_roughly_uniform_and_a_d_correlated():
    y = synth.labels_from_controls(synth.sample_controls(np.random.default_rng(0), 20000))
    assert np.all((y > 0) & (y < 1))
    np.testing.assert_allclose(y.mean(axis=0), 0.5, atol=0.01)
    np.testing.assert_allclose(y.std(axis=0), 1 / math.sqrt(12), atol=0.01)
    for j in range(3):
        counts = np.histogram(y[:, j], bins=10, range=(0, 1))[0] / len(y)
        np.testing.assert_allclose(counts, 0.1, atol=0.015)
    assert 0.15 < np.corrcoef(y[:, 0], y[:, 1])[0, 1] < 0.35  # weaker than in real corpora


def test_controls_are_clipped_standard_normal():
    u = synth.sample_controls(np.random.default_rng(1), 5000)
    assert u.shape == (5000, len(C)) and np.abs(u).max() <= synth.CONTROL_CLIP
    assert abs(u.std() - 1) < 0.03


def test_labels_reject_wrong_shape():
    with pytest.raises(ValueError, match="10 columns"):
        synth.labels_from_controls(np.zeros(3))


# --- simulated raters -------------------------------------------------------------------------
def test_rater_noise_and_bias_have_the_configured_spread():
    n, r, bias_sd, noise_sd = 2000, 400, 0.05, 0.04
    y = np.full((n, 3), 0.5)  # mid-scale: clipping to [0, 1] never bites
    biases = synth.rater_biases(0, r, bias_sd)
    noise = noise_sd * np.random.default_rng(2).standard_normal((n, r, 3))
    gold, scores = synth.simulate_raters(y, biases, noise)
    per_rater_mean = (scores - y[:, None]).mean(axis=0)  # ~ b_r
    assert per_rater_mean.std() == pytest.approx(bias_sd, rel=0.1)
    assert (scores - y[:, None] - biases[None]).std() == pytest.approx(noise_sd, rel=0.05)
    np.testing.assert_allclose(gold, scores.mean(axis=1))


def test_default_raters_agree_with_truth_as_specified():
    y = synth.labels_from_controls(synth.sample_controls(np.random.default_rng(3), 4000))
    b = synth.rater_biases(0, 5, synth.DEFAULT_RATER_BIAS_SD)
    e = synth.DEFAULT_RATER_NOISE_SD * np.random.default_rng(4).standard_normal((4000, 5, 3))
    gold, scores = synth.simulate_raters(y, b, e)
    assert np.all((scores >= 0) & (scores <= 1))
    assert 0.6 < np.mean(ccc(scores[:, 0], y)) < 0.8  # one rater: about 0.7
    assert 0.85 < np.mean(ccc(gold, y)) < 0.95  # five-rater mean: about 0.9


def test_zero_raters_publish_the_true_labels():
    p0 = synth.plan_clip("train", 5, seed=1, raters=synth.RaterPanel(n_raters=0))
    p5 = synth.plan_clip("train", 5, seed=1)
    assert p0.labels == p0.labels_true == p5.labels_true
    assert p5.labels != p5.labels_true
    # the rater panel does not change the audio
    assert (p0.ssml, p0.variant, p0.nuisance) == (p5.ssml, p5.variant, p5.nuisance)


def test_rater_errors():
    with pytest.raises(ValueError, match=">= 0"):
        synth.RaterPanel(n_raters=-1)
    with pytest.raises(ValueError, match="noise must be"):
        synth.simulate_raters(np.zeros((4, 3)), np.zeros((5, 3)), np.zeros((4, 3, 3)))


# --- categorical view -------------------------------------------------------------------------
def test_emotion_classes():
    assert synth.emotion_class(0.5, 0.55) == "neutral"
    assert synth.emotion_class(0.9, 0.9) == "happy"
    assert synth.emotion_class(0.9, 0.1) == "angry"
    assert synth.emotion_class(0.1, 0.1) == "sad"
    assert synth.emotion_class(0.1, 0.9) == "calm"
    a, v = np.random.default_rng(5).random((2, 20000))
    classes = synth.emotion_class(a, v)
    shares = [np.mean(classes == k) for k in synth.EMOTION_CLASSES]
    np.testing.assert_allclose(shares, 0.2, atol=0.02)  # balanced for uniform labels


# --- splits, speakers, texts ------------------------------------------------------------------
@pytest.fixture(scope="module")
def plans_by_split():
    return {s: [synth.plan_clip(s, i, seed=0) for i in range(150)] for s in synth.SPLITS}


def test_splits_are_disjoint(plans_by_split):
    speakers = {s: {p.speaker.id for p in ps} for s, ps in plans_by_split.items()}
    for a in synth.SPLITS:
        for b in synth.SPLITS:
            if a < b:
                assert not speakers[a] & speakers[b], (a, b)
    voices = {s: {p.speaker.voice for p in ps} for s, ps in plans_by_split.items()}
    in_domain = voices["train"] | voices["pool"] | voices["test"]
    assert voices["test-ood"] and not voices["test-ood"] & in_domain
    sets = synth.voice_sets()
    assert not set(sum(sets["A"].values(), ())) & set(sum(sets["B"].values(), ()))

    def content(split_names):
        words = {w for s in split_names for p in plans_by_split[s] for w in p.words}
        return words - synth.FUNCTION_WORDS

    assert not content(["train", "pool"]) & content(["test", "test-ood"])


def test_texts_use_their_vocabulary_half(plans_by_split):
    for split, plans in plans_by_split.items():
        half = synth.TEXT_HALF[split]
        for p in plans:
            allowed = synth.vocabulary(p.language, half) | synth.FUNCTION_WORDS
            assert set(p.words) <= allowed, (split, p.index, p.text)
    for lang in synth.LANGUAGES + synth.OOD_LANGUAGES:
        assert not synth.vocabulary(lang, 0) & synth.vocabulary(lang, 1)


def test_languages_per_split(plans_by_split):
    ood = plans_by_split["test-ood"]
    assert all(p.language in synth.OOD_LANGUAGES for p in ood if p.index % 2 == 1)
    assert all(p.language in synth.LANGUAGES for p in ood if p.index % 2 == 0)
    for split in ("train", "pool", "test"):
        langs = {p.language for p in plans_by_split[split]}
        assert langs <= set(synth.LANGUAGES) and len(langs) >= 4


def test_speakers_are_deterministic_and_plausible():
    a, b = synth.speaker(100_007), synth.speaker(100_007)
    assert a == b
    lo, hi = synth.SPEAKER_F0[a.gender]
    assert lo <= a.f0 <= hi and a.voice in synth.voice_sets()["A"][a.gender]
    with pytest.raises(ValueError, match="outside every split"):
        synth.speaker(5)


def test_plan_is_deterministic_and_independent_of_the_other_splits():
    p, q = synth.plan_clip("pool", 3, seed=2), synth.plan_clip("pool", 3, seed=2)
    assert p == q
    assert synth.plan_clip("pool", 3, seed=3) != p
    assert synth.plan_clip("train", 3, seed=2).speaker.id != p.speaker.id


def test_plan_errors():
    with pytest.raises(ValueError, match="unknown split"):
        synth.plan_clip("dev", 0)
    with pytest.raises(ValueError, match="index"):
        synth.plan_clip("train", -1)
    with pytest.raises(ValueError, match="seed"):
        synth.plan_clip("train", 0, seed=-1)
    with pytest.raises(ValueError, match="10 numbers"):
        synth.plan_clip("train", 0, controls=[0.0, 1.0])
    with pytest.raises(ValueError, match="does not belong"):
        synth.plan_clip("train", 0, speaker_id=300_000)


# --- audio --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """The same three test clips made through the CLI (1 job) and the API (2 jobs)."""
    a, b = tmp_path_factory.mktemp("synth_a"), tmp_path_factory.mktemp("synth_b")
    assert cli_main(["synth", "--split", "test", "--n", "3", "--out", str(a), "--no-progress"]) == 0
    synth.generate("test", 3, b, seed=0, jobs=2, progress=False)
    return a, b


def test_generation_is_deterministic_across_runs_and_jobs(corpus):
    a, b = corpus
    files_a, files_b = _files(a), _files(b)
    assert len([k for k in files_a if k.endswith(".wav")]) == 3
    assert files_a == files_b


def test_csv_and_wav_format(corpus):
    out = corpus[0]
    rows = _read_csv(out / "test.csv")
    assert list(rows[0]) == list(synth.CSV_COLUMNS) and len(rows) == 3
    for i, row in enumerate(rows):
        plan = synth.plan_clip("test", i, seed=0)
        x, fmt = _read_wav(out / row["file"])
        assert fmt == (1, 2, SAMPLE_RATE)
        assert row["hash"] == synth.samples_hash(x)
        assert float(row["duration"]) == pytest.approx(len(x) / SAMPLE_RATE, abs=1e-3)
        assert 2.5 < len(x) / SAMPLE_RATE < 7.5
        for k, gold, true in zip(LABELS, plan.labels, plan.labels_true, strict=True):
            assert float(row[k]) == pytest.approx(gold, abs=1e-6)
            assert float(row[f"{k}_true"]) == pytest.approx(true, abs=1e-6)
        assert row["emotion"] == synth.emotion_class(plan.labels[0], plan.labels[2])
        assert row["text"] == plan.text and int(row["speaker"]) == plan.speaker.id


def test_resume_keeps_finished_clips_and_replaces_broken_ones(corpus, tmp_path):
    src = corpus[0]
    out = tmp_path / "resume"
    for rel, data in _files(src).items():
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_bytes(data)
    kept = out / "test" / "test_000000.wav"
    mtime = kept.stat().st_mtime_ns
    (out / "test" / "test_000001.wav").unlink()
    broken = out / "test" / "test_000002.wav"
    broken.write_bytes(broken.read_bytes()[:500])  # truncated
    synth.generate("test", 3, out, seed=0, jobs=1, progress=False)
    assert _files(out) == _files(src)
    assert kept.stat().st_mtime_ns == mtime
    assert not list(out.rglob("*.tmp"))


def test_render_matches_generate(corpus):
    (x,) = synth.render([synth.plan_clip("test", 1, seed=0)])
    file_x, _ = _read_wav(corpus[0] / "test" / "test_000001.wav")
    np.testing.assert_array_equal(x, file_x)


@pytest.fixture(scope="module")
def control_sweep():
    """Clean clips: one control at -1.5 / +1.5, the others at 0, two base clips each."""
    keys, plans = [], []
    for name in ("effort", "f0", "rate", "contour", "pause"):
        for base in (0, 1):
            for value in (-1.5, 1.5):
                u = np.zeros(len(C))
                u[C.index(name)] = value
                plans.append(synth.plan_clip("train", base, seed=7, clean=True, controls=u))
                keys.append((name, base, value))
    audio = synth.render(plans, jobs=2)
    return {
        k: (p, synth.acoustic_correlates(x)) for k, p, x in zip(keys, plans, audio, strict=True)
    }


@pytest.mark.parametrize(
    ("control", "measure", "min_change"),
    [
        ("effort", "rms_db", 9.0),  # 4 dB per unit
        ("f0", "f0_median", None),  # ratio checked below
        ("rate", "syllables_per_s", 0.5),
        ("contour", "f0_slope", 1.0),  # semitones per second
        ("pause", "silence_frac", 0.05),
    ],
)
def test_each_control_moves_its_acoustic_correlate(control_sweep, control, measure, min_change):
    for base in (0, 1):
        (p_lo, lo), (p_hi, hi) = (control_sweep[(control, base, v)] for v in (-1.5, 1.5))
        for p, c in ((p_lo, lo), (p_hi, hi)):
            c["syllables_per_s"] = sum(syllables(w) for w in p.words) / c["speech_s"]
        if control == "f0":
            assert hi["f0_median"] / lo["f0_median"] > 1.4  # 2^(2.6*3/12) = 1.57
        else:
            assert hi[measure] - lo[measure] > min_change, (base, lo[measure], hi[measure])


# --- eSpeak binding and errors ----------------------------------------------------------------
def test_engine_refuses_a_second_utterance_in_one_process(tmp_path):
    from wav2small import espeak

    data_dir = espeak.make_data_dir(tmp_path)
    engine = espeak.Engine(data_dir)
    plan = synth.plan_clip("train", 0)
    with pytest.raises(espeak.ESpeakError, match="unknown language"):
        engine.synthesize(plan.ssml, language="xx", variant=plan.variant, rate=170, seed=1)
    raw = engine.synthesize(plan.ssml, language="en", variant=plan.variant, rate=170, seed=1)
    assert raw.dtype == np.int16 and raw.size > espeak.NATIVE_RATE and np.abs(raw).max() > 1000
    with pytest.raises(espeak.ESpeakError, match="fresh process"):
        espeak.Engine(data_dir)


def test_generate_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown split"):
        synth.generate("dev", 1, tmp_path)
    with pytest.raises(ValueError, match="n must be"):
        synth.generate("test", 0, tmp_path)
    with pytest.raises(ValueError, match="jobs"):
        synth.generate("test", 1, tmp_path, jobs=0)
    with pytest.raises(ValueError, match="seed"):
        synth.generate("test", 1, tmp_path, seed=-3)
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    with pytest.raises(NotADirectoryError, match="file"):
        synth.generate("test", 1, not_a_dir)


def test_package_layout_keeps_the_old_names():
    from wav2small import espeak as old_espeak
    from wav2small.synth import corpus, espeak, labels, plan

    assert old_espeak is espeak  # one module object: the binding's state is shared
    assert synth.generate is corpus.generate and synth.plan_clip is plan.plan_clip
    assert synth.emotion_class is labels.emotion_class
    assert set(synth.__all__) <= set(dir(synth))


# --- stages without a test of their own (synth/analysis.py, synth/voices.py) -----------------
def test_f0_track_finds_the_pitch_of_a_harmonic_tone_and_nothing_in_silence():
    from wav2small.synth.analysis import f0_track

    t = np.arange(SAMPLE_RATE) / SAMPLE_RATE
    for f0 in (110.0, 220.0):
        tone = sum(np.sin(2 * np.pi * f0 * k * t) / k for k in range(1, 6))
        x = np.concatenate([tone, np.zeros(SAMPLE_RATE // 2)])
        track, strength = f0_track(x)
        assert abs(np.nanmedian(track[:80]) - f0) < 1.0
        assert np.isnan(track[-20:]).all() and (strength[-20:] < 0.5).all()


def test_speaker_ids_belong_to_exactly_one_split():
    from wav2small.synth.voices import SPEAKER_RANGES, speaker, split_of_speaker

    for split, (first, count) in SPEAKER_RANGES.items():
        assert split_of_speaker(first) == split == split_of_speaker(first + count - 1)
        assert speaker(first) == speaker(first)  # deterministic
    with pytest.raises(ValueError, match="outside every split"):
        split_of_speaker(0)


def test_control_correlations():
    from wav2small.synth.analysis import control_correlations

    rng = np.random.default_rng(0)
    controls = rng.normal(size=(50, 4))
    values = np.stack([2 * controls[:, 1] + 1, -controls[:, 3], np.full(50, 0.5)], 1)
    r = control_correlations(values, controls)
    assert r.shape == (3, 4)
    assert r[0, 1] == pytest.approx(1.0) and r[1, 3] == pytest.approx(-1.0)
    assert np.isnan(r[2]).all()  # a constant output: no correlation defined
    np.testing.assert_allclose(r[0, 0], np.corrcoef(values[:, 0], controls[:, 0])[0, 1])
    with pytest.raises(ValueError, match="n >= 2"):
        control_correlations(values[:, 0], controls)
    with pytest.raises(ValueError, match="finite"):
        control_correlations(np.where(values == 0.5, np.nan, values), controls)
