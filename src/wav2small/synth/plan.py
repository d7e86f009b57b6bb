"""Clip plans: everything random about clip ``i`` of a split, from ``(seed, split, i)``."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from wav2small import LABELS, SAMPLE_RATE
from wav2small.synth.constants import (
    _SPLIT_CODE,
    CLEAN_SILENCE_S,
    CONTOUR_PCT,
    CONTROLS,
    DRR_DB,
    EFFORT_DB_PER_U,
    ESPEAK_MEDIAN_POS,
    F0_ST_PER_U,
    GAIN_DB,
    HESITATION_FACTOR,
    HIGHPASS_HZ,
    LANGUAGES,
    LOWPASS_HZ,
    LOWPASS_P,
    NOISE_TYPES,
    PAUSE_MS,
    PRIMARY_LANGUAGE_P,
    ROOM_P,
    RT60_S,
    SHELF_DB,
    SILENCE_S,
    SMILE_PCT,
    SNR_DB,
    SPEAKER_RANGES,
    SPLITS,
    SYLLABLES_PER_WORD_AT_WPM,
    TARGET_SPEECH_S,
    TEXT_HALF,
    TREMOR_HZ,
)
from wav2small.synth.labels import (
    RaterPanel,
    emotion_class,
    labels_from_controls,
    rater_biases,
    sample_controls,
    simulate_raters,
)
from wav2small.synth.texts import FUNCTION_WORDS, _phrase_stream, _syllables
from wav2small.synth.voices import Speaker, speaker, split_of_speaker, voice_formants


# --- clip plans -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Nuisance:
    """Per-clip random nuisance that carries no label."""

    lead_s: float
    trail_s: float
    tremor_hz: float
    tremor_phase: float
    rt60_s: float  # 0: no room
    drr_db: float
    highpass_hz: float  # 0: none
    lowpass_hz: float  # 0: none
    shelf_db: float
    gain_db: float
    noise: str
    snr_db: float
    seed: int  # for noise, room impulse response and dither samples


@dataclass(frozen=True)
class ClipPlan:
    """Everything needed to render one clip and write its CSV row (picklable, no audio)."""

    split: str
    index: int
    seed: int
    clean: bool
    controls: tuple[float, ...]
    labels_true: tuple[float, ...]
    labels: tuple[float, ...]  # published gold: rater mean (true labels when raters = 0)
    speaker: Speaker
    language: str
    words: tuple[str, ...]
    ssml: str
    variant: str
    wpm: int
    espeak_seed: int
    nuisance: Nuisance

    @property
    def name(self) -> str:
        """WAV file name of this clip."""
        return f"{self.split}_{self.index:06d}.wav"

    @property
    def text(self) -> str:
        """The words spoken."""
        return " ".join(self.words)


def _streams(seed: int, split: str, index: int) -> list[np.random.Generator]:
    ss = np.random.SeedSequence([int(seed), _SPLIT_CODE[split], int(index)])
    return [np.random.default_rng(s) for s in ss.spawn(4)]


def _choose_language(spk: Speaker, split: str, index: int, rng: np.random.Generator) -> str:
    primary = rng.random() < PRIMARY_LANGUAGE_P
    other = LANGUAGES[int(rng.integers(len(LANGUAGES)))]
    if split == "test-ood" and index % 2 == 1:
        return spk.ood_language
    return spk.language if primary else other


def _arrange_text(
    phrases: Iterator[list[str]],
    u: np.ndarray,
    spk: Speaker,
    target_s: float,
    hes_draws: np.ndarray,
) -> tuple[list[str], list[float]]:
    """Choose the word count for ``target_s`` of speech and the pause (ms) after each word."""
    wpm = spk.wpm * 2.0 ** (0.25 * u[2])
    sec_per_syl = 60.0 / (wpm * SYLLABLES_PER_WORD_AT_WPM)
    pause_ms = PAUSE_MS * 2.0 ** u[4]
    p_hes = min(0.25, max(0.0, 0.04 + 0.06 * u[4]))
    words: list[str] = []
    breaks: list[float] = []
    elapsed = 0.0
    for phrase in phrases:
        for j, word in enumerate(phrase):
            gap = len(words)
            if words:  # pause after the previous word
                if j == 0:
                    breaks[-1] = pause_ms
                elif hes_draws[gap % len(hes_draws)] < p_hes:
                    breaks[-1] = HESITATION_FACTOR * pause_ms
                elapsed += breaks[-1] / 1000.0
            words.append(word)
            breaks.append(0.0)
            elapsed += _syllables(word) * sec_per_syl
            if elapsed >= target_s and len(words) >= 3 and word not in FUNCTION_WORDS:
                breaks[-1] = 0.0
                return words, breaks
    raise AssertionError("unreachable: the phrase stream is endless")


def _ssml(words: Sequence[str], breaks: Sequence[float], contour_u: float) -> str:
    k = len(words)
    parts = ["<speak>"]
    for i, (word, pause) in enumerate(zip(words, breaks, strict=True)):
        position = i / (k - 1) if k > 1 else 0.5  # 0 first word .. 1 last word
        pct = CONTOUR_PCT * contour_u * (2 * position - 1)
        parts.append(f'<prosody pitch="{round(pct):+d}%">{word}</prosody>')
        if pause > 0:
            parts.append(f'<break time="{round(pause)}ms"/>')
    parts.append("</speak>")
    return " ".join(parts)


def _clamp(x: float, lo: float, hi: float) -> float:
    return min(hi, max(lo, float(x)))


def _variant_text(u: np.ndarray, spk: Speaker) -> str:
    """The eSpeak variant file for these controls on this speaker (SYNTH.md mapping)."""
    target = spk.f0 * 2.0 ** (F0_ST_PER_U * u[0] / 12.0)
    span_st = spk.span * 2.0 ** (0.5 * u[1])
    ratio = 2.0 ** (span_st / 12.0)
    base = target / (1.0 + ESPEAK_MEDIAN_POS * (ratio - 1.0))
    top = base * ratio
    effort_db = EFFORT_DB_PER_U * u[3]
    tone_a = _clamp(135 * 10 ** ((0.9 * effort_db + 0.5 * spk.tilt_db) / 20), 1, 255)
    tone_b = _clamp(110 * 10 ** ((1.6 * effort_db + spk.tilt_db) / 20), 1, 255)
    breath = min(45.0, 4.0 * 2.0 ** (1.2 * u[5]) + spk.breath)
    voicing = 100 - min(45.0, 1.5 * max(0.0, breath - 10.0))
    rough = int(_clamp(round(1.5 + 1.4 * u[8] + spk.rough), 0, 6))
    flutter = int(_clamp(round(3.0 + 3.5 * u[8] + spk.flutter), 0, 14))
    formants = voice_formants()[spk.voice]
    pitch = f"pitch {round(base)} {max(round(top), round(base) + 1)}"
    lines = ["language variant", "name w2s", pitch]
    for k in range(9):
        freq, *rest = formants.get(k, (100, 100, 100))
        scale = spk.tract * (1.0 + SMILE_PCT[k - 1] * u[7] / 100.0 if 1 <= k <= 3 else 1.0)
        lines.append(" ".join(str(v) for v in ("formant", k, round(freq * scale), *rest)))
    lines.append(f"tone 600 170 1200 {round(tone_a)} 2000 {round(tone_b)}")
    b = breath
    lines.append("breath " + " ".join(str(round(b * f)) for f in (1, 1, 0.7, 0.5, 0.25, 0.15)))
    lines += [f"voicing {round(voicing)}", f"roughness {rough}", f"flutter {flutter}"]
    return "\n".join(lines) + "\n"


def _nuisance(rng: np.random.Generator, clean: bool) -> Nuisance:
    room = rng.random() < ROOM_P
    rt60, drr = rng.uniform(*RT60_S), rng.uniform(*DRR_DB)
    lowpass = rng.random() < LOWPASS_P
    values = dict(
        lead_s=rng.uniform(*SILENCE_S), trail_s=rng.uniform(*SILENCE_S),
        tremor_hz=rng.uniform(*TREMOR_HZ), tremor_phase=rng.uniform(0, 2 * math.pi),
        rt60_s=rt60 if room else 0.0, drr_db=drr if room else 0.0,
        highpass_hz=rng.uniform(*HIGHPASS_HZ),
        lowpass_hz=rng.uniform(*LOWPASS_HZ) if lowpass else 0.0,
        shelf_db=rng.uniform(-SHELF_DB, SHELF_DB), gain_db=rng.uniform(-GAIN_DB, GAIN_DB),
        noise=NOISE_TYPES[int(rng.integers(len(NOISE_TYPES)))], snr_db=rng.uniform(*SNR_DB),
        seed=int(rng.integers(2**31)),
    )  # fmt: skip
    if clean:  # same draws, channel switched off
        values.update(rt60_s=0.0, drr_db=0.0, highpass_hz=0.0, lowpass_hz=0.0, shelf_db=0.0)
        values.update(gain_db=0.0, noise="none", lead_s=CLEAN_SILENCE_S, trail_s=CLEAN_SILENCE_S)
    return Nuisance(**{k: (float(v) if isinstance(v, float) else v) for k, v in values.items()})


def plan_clip(
    split: str,
    index: int,
    *,
    seed: int = 0,
    clean: bool = False,
    raters: RaterPanel | None = None,
    controls: Sequence[float] | None = None,
    speaker_id: int | None = None,
) -> ClipPlan:
    """Plan clip ``index`` of ``split``: controls, labels, speaker, text, voice and nuisance.

    Everything derives from ``(seed, split, index)``; separate random streams for controls,
    text, nuisance and raters mean that overriding ``controls`` or the rater panel leaves the
    other draws unchanged.

    Args:
        split: one of :data:`SPLITS`.
        index: clip number (>= 0).
        seed: corpus seed.
        clean: no channel nuisance (no room, filters, gain, noise or dither; fixed silences).
        raters: simulated annotators (default: 5 raters, bias sd 0.08, noise sd 0.25).
        controls: override the ten controls (in :data:`CONTROLS` order), e.g. for tests.
        speaker_id: override the speaker (must lie in the split's range).
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose from {SPLITS}")
    if index < 0:
        raise ValueError(f"clip index must be >= 0, got {index}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    raters = raters or RaterPanel()
    r_ctl, r_txt, r_nui, r_rat = _streams(seed, split, index)
    u = sample_controls(r_ctl)
    first, count = SPEAKER_RANGES[split]
    spk_id = first + int(r_ctl.integers(count))
    if controls is not None:
        u = np.asarray(controls, dtype=np.float64)
        if u.shape != (len(CONTROLS),):
            raise ValueError(f"controls must be {len(CONTROLS)} numbers {CONTROLS}, got {u.shape}")
    if speaker_id is not None:
        if split_of_speaker(speaker_id) != split:
            raise ValueError(f"speaker {speaker_id} does not belong to split {split!r}")
        spk_id = int(speaker_id)
    spk = speaker(spk_id)
    y_true = labels_from_controls(u[None])
    biases = rater_biases(seed, raters.n_raters, raters.bias_sd)
    noise = raters.noise_sd * r_rat.standard_normal((1, raters.n_raters, len(LABELS)))
    gold, _ = simulate_raters(y_true, biases, noise)

    language = _choose_language(spk, split, index, r_txt)
    target_s = r_txt.uniform(*TARGET_SPEECH_S)
    hes_draws = r_txt.random(64)
    phrases = _phrase_stream(language, TEXT_HALF[split], r_txt)  # drawn last, lazily
    words, breaks = _arrange_text(phrases, u, spk, target_s, hes_draws)
    return ClipPlan(
        split=split,
        index=int(index),
        seed=int(seed),
        clean=bool(clean),
        controls=tuple(float(x) for x in u),
        labels_true=tuple(float(x) for x in y_true[0]),
        labels=tuple(float(x) for x in gold[0]),
        speaker=spk,
        language=language,
        words=tuple(words),
        ssml=_ssml(words, breaks, float(u[6])),
        variant=_variant_text(u, spk),
        wpm=int(np.clip(round(spk.wpm * 2.0 ** (0.25 * u[2])), 80, 450)),
        espeak_seed=int(r_nui.integers(1, 2**31)),
        nuisance=_nuisance(r_nui, clean),
    )


def _row(plan: ClipPlan, meta: dict) -> dict:
    gold, true = plan.labels, plan.labels_true
    row: dict = {"file": f"{plan.split}/{plan.name}", "split": plan.split}
    row.update({k: f"{v:.6f}" for k, v in zip(LABELS, gold, strict=True)})
    row.update({f"{k}_true": f"{v:.6f}" for k, v in zip(LABELS, true, strict=True)})
    row["emotion"] = emotion_class(gold[0], gold[2])
    row["emotion_true"] = emotion_class(true[0], true[2])
    row.update({k: f"{v:.6f}" for k, v in zip(CONTROLS, plan.controls, strict=True)})
    spk = plan.speaker
    row.update(speaker=spk.id, gender=spk.gender, voice=spk.voice, language=plan.language)
    row.update(text=plan.text, duration=f"{meta['samples'] / SAMPLE_RATE:.4f}", hash=meta["hash"])
    return row
