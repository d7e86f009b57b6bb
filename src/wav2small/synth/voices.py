"""Speakers and eSpeak NG voices: the speaker pool, its splits, voice formants."""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from wav2small.synth.constants import (
    _SPEAKER_KEY,
    FEMALE_VOICES,
    HELD_OUT_EVERY,
    LANGUAGE_WEIGHTS,
    LANGUAGES,
    MALE_VOICES,
    OOD_LANGUAGES,
    SPEAKER_BREATH,
    SPEAKER_F0,
    SPEAKER_FLUTTER,
    SPEAKER_RANGES,
    SPEAKER_ROUGH,
    SPEAKER_SPAN_ST,
    SPEAKER_TILT_DB,
    SPEAKER_TRACT,
    SPEAKER_WPM,
)


# --- speakers and voices ----------------------------------------------------------------------
@dataclass(frozen=True)
class Speaker:
    """A simulated speaker; every field is a deterministic function of ``id``."""

    id: int
    gender: str  # "m" or "f"
    voice: str  # eSpeak variant whose formant lines are used
    f0: float  # habitual median F0, Hz
    span: float  # habitual F0 span, semitones
    wpm: float  # habitual tempo, words per minute
    tract: float  # vocal-tract scale applied to all formant frequencies
    tilt_db: float  # habitual spectral tilt offset
    breath: float  # baseline breathiness
    flutter: float  # baseline F0 flutter
    rough: float  # baseline roughness
    language: str  # preferred language
    ood_language: str  # preferred held-out language (used in test-ood)


def _parse_variant(path: Path) -> tuple[str, ...]:
    lines = []
    for raw in path.read_text(encoding="latin-1").splitlines():
        line = raw.split("//")[0].strip()
        if line.startswith("formant"):
            fields = line.split()[1:]
            if len(fields) >= 2 and all(re.fullmatch(r"-?\d+", f) for f in fields):
                lines.append(" ".join(fields))
    return tuple(lines)


@lru_cache(maxsize=1)
def voice_formants() -> dict[str, dict[int, tuple[int, ...]]]:
    """Formant lines of the selected eSpeak variants: name -> {formant: (freq%, height%, ...)}."""
    from wav2small.synth.espeak import variant_dir

    root = variant_dir()
    out: dict[str, dict[int, tuple[int, ...]]] = {}
    seen: set[tuple[str, ...]] = set()
    for name in MALE_VOICES + FEMALE_VOICES:
        path = root / name
        if not path.is_file():
            raise FileNotFoundError(
                f"{path}: eSpeak NG voice variant missing (espeakng-loader 0.2.4?)"
            )
        lines = _parse_variant(path)
        if lines in seen:
            continue
        seen.add(lines)
        table = {}
        for line in lines:
            k, *vals = (int(f) for f in line.split())
            if 0 <= k <= 8:
                table[k] = tuple(vals)
        out[name] = table
    return out


@lru_cache(maxsize=1)
def voice_sets() -> dict[str, dict[str, tuple[str, ...]]]:
    """Voice sets ``{"A": {"m": ..., "f": ...}, "B": {...}}``; B is held out for ``test-ood``."""
    names = voice_formants()
    sets: dict[str, dict[str, tuple[str, ...]]] = {"A": {}, "B": {}}
    for gender, pool in (("m", MALE_VOICES), ("f", FEMALE_VOICES)):
        kept = sorted((v for v in pool if v in names), key=str.lower)
        sets["B"][gender] = tuple(v for i, v in enumerate(kept) if i % HELD_OUT_EVERY == 3)
        sets["A"][gender] = tuple(v for i, v in enumerate(kept) if i % HELD_OUT_EVERY != 3)
    return sets


def split_of_speaker(speaker_id: int) -> str:
    """The split whose speaker-id range holds ``speaker_id``."""
    for split, (first, count) in SPEAKER_RANGES.items():
        if first <= speaker_id < first + count:
            return split
    raise ValueError(f"speaker id {speaker_id} is outside every split's range {SPEAKER_RANGES}")


@lru_cache(maxsize=8192)
def speaker(speaker_id: int) -> Speaker:
    """The speaker with this id (deterministic; the id range fixes the split and voice set)."""
    split = split_of_speaker(int(speaker_id))
    rng = np.random.default_rng([_SPEAKER_KEY, int(speaker_id)])
    gender = "m" if rng.random() < 0.5 else "f"
    pool = voice_sets()["B" if split == "test-ood" else "A"][gender]
    voice = pool[int(rng.integers(len(pool)))]
    f0 = rng.uniform(*SPEAKER_F0[gender])
    return Speaker(
        id=int(speaker_id),
        gender=gender,
        voice=voice,
        f0=float(f0),
        span=float(rng.uniform(*SPEAKER_SPAN_ST)),
        wpm=float(rng.uniform(*SPEAKER_WPM)),
        tract=float(rng.uniform(*SPEAKER_TRACT)),
        tilt_db=float(rng.uniform(-SPEAKER_TILT_DB, SPEAKER_TILT_DB)),
        breath=float(rng.uniform(0, SPEAKER_BREATH)),
        flutter=float(rng.uniform(0, SPEAKER_FLUTTER)),
        rough=float(rng.uniform(0, SPEAKER_ROUGH)),
        language=LANGUAGES[int(rng.choice(len(LANGUAGES), p=LANGUAGE_WEIGHTS))],
        ood_language=OOD_LANGUAGES[int(rng.integers(len(OOD_LANGUAGES)))],
    )
