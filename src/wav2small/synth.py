"""Built-in synthetic speech corpus whose arousal, dominance and valence are known by construction.

Implements ``SYNTH.md`` (the project's corpus specification): ten label-bearing controls per clip
drive an eSpeak NG formant voice (pitch, range, rate, effort, pauses, breathiness, contour,
"smile" formant shift, roughness, tremor); labels are ``Phi(w . u / |w|)``; published gold labels
are the mean of simulated disagreeing raters; speakers, texts, languages and the recording
channel are random nuisance.  Four disjoint splits: ``train``, ``pool``, ``test``, ``test-ood``.

Every clip is rendered in a fresh process (eSpeak keeps hidden state between utterances), and all
randomness of clip ``i`` derives from ``(seed, split, i)``, so output is identical across runs and
job counts.  Python API: :func:`generate` (files), :func:`plan_clip` + :func:`render` (arrays);
command line: ``wav2small synth``.  User documentation: ``docs/SYNTH.md``.

Module layout: constants -> label model and raters -> categorical view -> speakers and voices ->
texts -> clip plans -> rendering (runs in the worker) -> process pool -> files -> analysis.
"""

from __future__ import annotations

import csv
import gc
import hashlib
import io
import json
import math
import os
import re
import tempfile
import traceback
import wave
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import cache, lru_cache
from pathlib import Path

import numpy as np

from wav2small import LABELS, SAMPLE_RATE

# --- constants ------------------------------------------------------------------------------
SPLITS = ("train", "pool", "test", "test-ood")
#: The ten label-bearing controls, in SYNTH.md order.
CONTROLS = ("f0", "range", "rate", "effort", "pause", "breath", "contour", "smile", "rough",
            "tremor")  # fmt: skip
CONTROL_CLIP = 2.5
#: Label weights w_j (rows: arousal, dominance, valence; columns: CONTROLS).
WEIGHTS = np.array(
    [
        [0.45, 0.20, 0.45, 0.75, -0.15, -0.15, 0.0, 0.0, 0.0, 0.0],
        [-0.40, -0.10, -0.30, 0.65, -0.35, -0.30, -0.15, 0.0, 0.20, -0.30],
        [0.0, 0.10, 0.0, 0.0, 0.0, 0.0, 0.65, 0.35, -0.55, -0.20],
    ]
)
DEFAULT_RATERS = 5
DEFAULT_RATER_BIAS_SD = 0.08
DEFAULT_RATER_NOISE_SD = 0.25

#: Categorical view of (arousal, valence): a neutral disc around the centre, then quadrants.
EMOTION_CLASSES = ("neutral", "happy", "angry", "sad", "calm")
NEUTRAL_RADIUS = 0.25

LANGUAGES = ("en-us", "en", "de", "es", "fr", "it")
LANGUAGE_WEIGHTS = (0.3, 0.2, 0.125, 0.125, 0.125, 0.125)
OOD_LANGUAGES = ("nl", "pt", "pl", "sv")
PRIMARY_LANGUAGE_P = 0.8
#: Speaker id ranges (first id, count) per split; disjoint by construction.
SPEAKER_RANGES = {
    "train": (100_000, 400),
    "pool": (200_000, 800),
    "test": (300_000, 120),
    "test-ood": (400_000, 120),
}
#: Vocabulary half used by each split.
TEXT_HALF = {"train": 0, "pool": 0, "test": 1, "test-ood": 1}
_SPLIT_CODE = {"train": 1, "pool": 2, "test": 3, "test-ood": 4}
_RATER_PANEL_KEY = 7_919
_SPEAKER_KEY = 104_729

#: Hand-picked eSpeak NG variants (formant lines only are kept); every fourth one (sorted, per
#: gender) is held out as voice set B for ``test-ood``.  Duplicated formant sets are dropped.
MALE_VOICES = (
    "Alex", "Denis", "Diogo", "Gene", "Marco", "Mario", "Mike", "Nguyen", "Storm", "antonio",
    "ed", "grandpa", "iven", "john", "m1", "m2", "m3", "m4", "m5", "m6", "m7", "max",
    "norbert", "pablo", "paul", "pedro", "quincy", "rob", "robert", "sandro", "victor",
)  # fmt: skip
FEMALE_VOICES = (
    "Alicia", "Andrea", "Annie", "anika", "aunty", "f1", "f2", "f3", "f4", "f5", "grandma",
    "linda", "shelby", "steph", "steph2",
)  # fmt: skip
HELD_OUT_EVERY = 4

# Speaker nuisance ranges (SYNTH.md).
SPEAKER_F0 = {"m": (92.0, 135.0), "f": (170.0, 235.0)}
SPEAKER_SPAN_ST = (5.0, 9.0)
SPEAKER_WPM = (150.0, 195.0)
SPEAKER_TRACT = (0.95, 1.06)
SPEAKER_TILT_DB = 1.5
SPEAKER_BREATH, SPEAKER_FLUTTER, SPEAKER_ROUGH = 6.0, 3.0, 1.0

# Control -> acoustics constants (SYNTH.md).
F0_ST_PER_U = 2.6
ESPEAK_MEDIAN_POS = 0.65  # where eSpeak's median F0 sits in the `pitch base top` span
EFFORT_DB_PER_U = 4.0
PAUSE_MS = 170.0
HESITATION_FACTOR = 0.6
CONTOUR_PCT = 14.0
SMILE_PCT = (2.0, 4.0, 3.0)
TREMOR_DEPTH = 0.06
TREMOR_HZ = (4.0, 7.0)
LEVEL_DBFS = -30.0
TARGET_SPEECH_S = (2.8, 5.0)
SYLLABLES_PER_WORD_AT_WPM = 1.45  # eSpeak's rate is calibrated on English words of ~1.45 syllables

# Channel nuisance (SYNTH.md).
ROOM_P = 0.6
RT60_S = (0.15, 0.8)
DRR_DB = (0.0, 12.0)
HIGHPASS_HZ = (50.0, 200.0)
LOWPASS_HZ = (3800.0, 7600.0)
LOWPASS_P = 0.5
SHELF_DB, SHELF_HZ = 3.0, 1500.0
GAIN_DB = 4.0
NOISE_TYPES = ("white", "pink", "brown", "hum", "none")
SNR_DB = (12.0, 40.0)
SILENCE_S = (0.1, 0.4)
CLEAN_SILENCE_S = 0.15
DITHER_DBFS = -85.0

#: Bump when the audio of a given (seed, split, index) changes; stored beside the files.
GENERATOR_VERSION = 1
CSV_COLUMNS = (
    ("file", "split", *LABELS, *(f"{k}_true" for k in LABELS), "emotion", "emotion_true")
    + CONTROLS
    + ("speaker", "gender", "voice", "language", "text", "duration", "hash")
)


# --- label model and raters -----------------------------------------------------------------
def sample_controls(rng: np.random.Generator, n: int | None = None) -> np.ndarray:
    """Draw controls u ~ N(0, 1) clipped to +-2.5: shape (10,) or (n, 10)."""
    shape = (len(CONTROLS),) if n is None else (n, len(CONTROLS))
    return np.clip(rng.standard_normal(shape), -CONTROL_CLIP, CONTROL_CLIP)


def _phi(z: np.ndarray) -> np.ndarray:
    erf = np.frompyfunc(math.erf, 1, 1)
    return 0.5 * (1.0 + erf(np.asarray(z, dtype=np.float64) / math.sqrt(2.0)).astype(np.float64))


def labels_from_controls(controls: np.ndarray) -> np.ndarray:
    """True labels y_j = Phi(w_j . u / |w_j|), shape (..., 3) in LABELS order, each in (0, 1)."""
    u = np.asarray(controls, dtype=np.float64)
    if u.shape[-1] != len(CONTROLS):
        raise ValueError(f"controls must have {len(CONTROLS)} columns ({CONTROLS}), got {u.shape}")
    w = WEIGHTS / np.linalg.norm(WEIGHTS, axis=1, keepdims=True)
    return _phi(u @ w.T)


def rater_biases(seed: int, n_raters: int, bias_sd: float) -> np.ndarray:
    """Per-rater, per-dimension biases b_r ~ N(0, bias_sd) of the corpus' rater panel, (R, 3)."""
    return _rater_biases(int(seed), int(n_raters), float(bias_sd)).copy()


@lru_cache(maxsize=16)
def _rater_biases(seed: int, n_raters: int, bias_sd: float) -> np.ndarray:
    rng = np.random.default_rng([seed, _RATER_PANEL_KEY])
    return bias_sd * rng.standard_normal((n_raters, len(LABELS)))


def simulate_raters(
    y_true: np.ndarray, biases: np.ndarray, noise: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Scores of simulated raters and their mean (the published gold label).

    Rater r scores clip i as clip(y_i + b_r + e_ri, 0, 1).

    Args:
        y_true: true labels, (n, 3).
        biases: per-rater biases, (R, 3) (see :func:`rater_biases`).
        noise: per-clip, per-rater noise e_ri, (n, R, 3) (already scaled by its sd).

    Returns:
        ``(gold, scores)``: gold (n, 3) is the rater mean, or ``y_true`` itself when R = 0;
        scores is (n, R, 3).
    """
    y = np.asarray(y_true, dtype=np.float64)
    b, e = np.asarray(biases, dtype=np.float64), np.asarray(noise, dtype=np.float64)
    if e.shape != (y.shape[0], b.shape[0], y.shape[1]):
        raise ValueError(f"noise must be (n, R, 3) = {(y.shape[0], b.shape[0], 3)}, got {e.shape}")
    scores = np.clip(y[:, None, :] + b[None] + e, 0.0, 1.0)
    gold = y.copy() if b.shape[0] == 0 else scores.mean(axis=1)
    return gold, scores


@dataclass(frozen=True)
class RaterPanel:
    """Simulated annotators: ``n_raters`` (0 publishes the true labels), bias and noise sd."""

    n_raters: int = DEFAULT_RATERS
    bias_sd: float = DEFAULT_RATER_BIAS_SD
    noise_sd: float = DEFAULT_RATER_NOISE_SD

    def __post_init__(self) -> None:
        if self.n_raters < 0 or self.bias_sd < 0 or self.noise_sd < 0:
            raise ValueError(f"rater settings must be >= 0, got {self}")


# --- categorical view -------------------------------------------------------------------------
def emotion_class(arousal: float | np.ndarray, valence: float | np.ndarray) -> str | np.ndarray:
    """Map (arousal, valence) in [0, 1] to one of :data:`EMOTION_CLASSES`.

    ``neutral`` inside a disc of radius 0.25 around (0.5, 0.5) (about 20 % of uniform labels);
    otherwise the quadrant: ``happy`` (A >= .5, V >= .5), ``angry`` (A >= .5, V < .5),
    ``sad`` (A < .5, V < .5), ``calm`` (A < .5, V >= .5).
    """
    a, v = np.asarray(arousal, dtype=np.float64), np.asarray(valence, dtype=np.float64)
    high_a, high_v = a >= 0.5, v >= 0.5
    quadrant = np.where(high_a, np.where(high_v, 1, 2), np.where(high_v, 4, 3))
    idx = np.where(np.hypot(a - 0.5, v - 0.5) < NEUTRAL_RADIUS, 0, quadrant)
    if np.ndim(idx) == 0:
        return EMOTION_CLASSES[int(idx)]
    return np.asarray(EMOTION_CLASSES, dtype=object)[idx]


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
    from wav2small.espeak import variant_dir

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


# --- texts ----------------------------------------------------------------------------------
_EN_WORDS = {
    "noun": """table window paper garden river kettle pencil ladder bottle blanket basket bridge
        bucket button candle carpet chair clock cloud corner cottage curtain desk door drawer
        engine fence field folder forest garage gate hammer harbour hill jacket key kitchen lamp
        lane letter map market meadow mirror mountain needle notebook orchard painting parcel path
        pillow plate pocket pond road roof saucer shelf shoe spoon staircase station stone street
        suitcase teapot ticket towel tower train tray tunnel umbrella valley village wagon wall
        wheel yard cabinet ribbon barrel compass lantern platform sofa mailbox printer cushion
        library factory ferry island canal chimney""",
    "adj": """small large wooden metal narrow wide round square old new plain heavy light long
        short tall flat thin thick empty full open closed blue green grey brown yellow white black
        red plastic northern southern eastern western upper lower middle second third usual
        common simple ordinary distant nearby local public striped folded painted""",
    "vt": """opened closed carried checked counted lifted placed cleaned measured found held
        brought took kept passed pulled pushed fixed packed sorted wrapped filled emptied marked
        shifted covered crossed reached watched noted copied printed labelled stacked stored
        moved""",
    "vi": """stood waited stayed rested remained sat leaned appeared stopped started returned
        arrived turned paused lingered""",
    "name": """Anna Ben Clara David Elena Frank Greta Hugo Ida Jonas Karl Lena Martin Nora Oscar
        Paula Quinn Rosa Simon Tara Ulrich Vera Walter Xenia Yusuf Zoe Alan Beth Carl Dora Emil
        Fiona Gustav Hanna Igor Julia Kevin Laura Milo Nina""",
    "day": "monday tuesday wednesday thursday friday saturday sunday",
    "month": """january february march april may june july august september october november
        december""",
    "time": "morning evening afternoon winter summer spring autumn",
}
_EN_PREP = ("near", "behind", "beside", "under", "above", "past", "along", "inside", "outside",
            "across", "by")  # fmt: skip
#: Function words shared by both vocabulary halves.
FUNCTION_WORDS = frozenset(("the", "a", "and", "on", "in", *_EN_PREP))
_EN_TEMPLATES = (
    "the {adj} {noun} {vi} {prep} the {noun}",
    "{name} {vt} the {adj} {noun}",
    "{name} {vt} a {noun} on {day}",
    "a {adj} {noun} {vi} {prep} the {noun} in {month}",
    "the {noun} {vi} {prep} the {adj} {noun}",
    "{name} and {name} {vt} the {noun}",
    "the {noun} and the {noun} {vi} {prep} the {noun}",
    "{name} {vi} {prep} the {noun} in the {time}",
)
# Pseudo-word phonotactics per language: onsets, nuclei, codas.
_PSEUDO = {
    "de": ("b d f g h k l m n p r s t w sch st br gr kl pf z", "a e i o u ä ö ü ei au",
           "n r l t s ch ng m"),
    "es": ("b c d f g l m n p r s t v ch ll br pl", "a e i o u", "n s l r"),
    "fr": ("b d f g j l m n p r s t v ch gr pl", "a e i o u ou eu on an é", "l r s"),
    "it": ("b c d f g l m n p r s t v z gl sc tr", "a e i o u", "n l r"),
    "nl": ("b d f g h k l m n p r s t v w z sch gr", "a e i o u aa ee oo ij ui oe",
           "n k t s l r m"),
    "pt": ("b c d f g l m n p r s t v ch lh nh", "a e i o u ão é ê", "s r m l"),
    "pl": ("b d g k m n p r s t w z sz cz ch dz pr kr st", "a e i o u y ą ę ó", "k m n s sz ł j"),
    "sv": ("b d f g h j k l m n p r s t v sk st tr bl", "a e i o u y å ä ö", "n k t s l r m g"),
}  # fmt: skip
_PSEUDO_LEXICON_SIZE = 400
_VOWEL_GROUPS = re.compile(r"[aeiouyäöüåéèêąęóãõ]+")


def _half(word: str) -> int:
    """Vocabulary half of a word: a hash of its spelling, so the same string lands in the same
    half in every language and the halves are disjoint by construction."""
    return zlib.crc32(word.encode("utf-8")) % 2


def _split_halves(words: Iterable[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    items = tuple(dict.fromkeys(words))
    return tuple(w for w in items if _half(w) == 0), tuple(w for w in items if _half(w) == 1)


@cache
def _english_halves() -> dict[str, tuple[tuple[str, ...], tuple[str, ...]]]:
    return {slot: _split_halves(words.lower().split()) for slot, words in _EN_WORDS.items()}


@cache
def _pseudo_halves(language: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    onsets, nuclei, codas = (s.split() for s in _PSEUDO[language])
    codas = ["", "", *codas]  # open syllables twice as likely
    rng = np.random.default_rng([zlib.crc32(language.encode()), 11])
    words: dict[str, None] = {}
    while len(words) < _PSEUDO_LEXICON_SIZE:
        syllables = (
            onsets[rng.integers(len(onsets))]
            + nuclei[rng.integers(len(nuclei))]
            + codas[rng.integers(len(codas))]
            for _ in range(int(rng.choice([1, 2, 2, 3])))
        )
        word = "".join(syllables)
        if word not in FUNCTION_WORDS and word not in _english_words():
            words.setdefault(word)
    return _split_halves(words)


@cache
def _english_words() -> frozenset[str]:
    return frozenset(w for text in _EN_WORDS.values() for w in text.lower().split())


def vocabulary(language: str, half: int) -> frozenset[str]:
    """Content words of one vocabulary half (0: train/pool, 1: test/test-ood) of a language."""
    if half not in (0, 1):
        raise ValueError(f"half must be 0 or 1, got {half}")
    if language in ("en", "en-us"):
        return frozenset(w for halves in _english_halves().values() for w in halves[half])
    if language not in _PSEUDO:
        raise ValueError(f"unknown language {language!r}; known: {LANGUAGES + OOD_LANGUAGES}")
    return frozenset(_pseudo_halves(language)[half])


def _syllables(word: str) -> int:
    return max(1, len(_VOWEL_GROUPS.findall(word.lower())))


def _phrase_stream(language: str, half: int, rng: np.random.Generator) -> Iterator[list[str]]:
    """Endless random phrases (lists of words) over one vocabulary half of a language."""
    if language in ("en", "en-us"):
        slots = {k: v[half] for k, v in _english_halves().items()}
        slots["prep"] = _EN_PREP
        while True:
            template = _EN_TEMPLATES[int(rng.integers(len(_EN_TEMPLATES)))]
            yield [
                slots[tok[1:-1]][int(rng.integers(len(slots[tok[1:-1]])))]
                if tok.startswith("{")
                else tok
                for tok in template.split()
            ]
    lexicon = _pseudo_halves(language)[half]
    while True:
        picks = rng.integers(len(lexicon), size=int(rng.integers(3, 7)))
        yield [lexicon[i] for i in picks]


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


# --- rendering (runs in a fresh process) ------------------------------------------------------
def _frame_power(x: np.ndarray, frame: int) -> np.ndarray:
    n = len(x) // frame
    seg = x[: n * frame].reshape(n, frame)
    return np.einsum("ij,ij->i", seg, seg, dtype=np.float64) / frame + 1e-20


def _active_rms(x: np.ndarray, *, floor_db: float = 40.0) -> float:
    """RMS over 20 ms frames within ``floor_db`` of the loudest frame (active speech)."""
    p = _frame_power(x, SAMPLE_RATE // 50)
    act = p > p.max() * 10 ** (-floor_db / 10)
    return float(np.sqrt(p[act].mean()))


def _trim(x: np.ndarray, *, floor_db: float = 50.0) -> np.ndarray:
    frame = SAMPLE_RATE // 100
    p = _frame_power(x, frame)
    idx = np.flatnonzero(p > p.max() * 10 ** (-floor_db / 10))
    return x[idx[0] * frame : (idx[-1] + 1) * frame]


def _fast_len(n: int) -> int:
    """Smallest 2^a 3^b 5^c >= n (pocketfft is slow on lengths with large prime factors)."""
    best = 1 << int(math.ceil(math.log2(max(n, 1))))
    p5 = 1
    while p5 < best:
        p35 = p5
        while p35 < best:
            m = p35 << max(0, int(math.ceil(math.log2(n / p35))))
            best = min(best, m)
            p35 *= 3
        p5 *= 5
    return best


def _shaped_noise(kind: str, n: int, rng: np.random.Generator) -> np.ndarray:
    """Unit-free float32 noise: white, pink (1/f power), brown (1/f^2 power) or mains hum."""
    if kind == "hum":  # 50 or 60 Hz and 5 harmonics: one period (of 3 for 60 Hz), tiled
        mains, period = (50.0, 320) if rng.random() < 0.5 else (60.0, 800)
        t = np.arange(period) / SAMPLE_RATE
        cycle = sum(
            np.sin(2 * np.pi * mains * k * t + rng.uniform(0, 2 * np.pi)) / k for k in range(1, 7)
        )
        hum = np.tile(cycle.astype(np.float32), n // period + 1)[:n]
        hum += 0.05 * rng.standard_normal(n, dtype=np.float32)
        return hum
    if kind == "white":
        return rng.standard_normal(n, dtype=np.float32)
    m = _fast_len(n)  # coloured noise: a random spectrum shaped by f^-1/2 or f^-1
    f = np.maximum(np.fft.rfftfreq(m, 1 / SAMPLE_RATE).astype(np.float32), 20.0)
    spec = rng.standard_normal(len(f), dtype=np.float32) + 1j * rng.standard_normal(
        len(f), dtype=np.float32
    )
    spec *= f**-0.5 if kind == "pink" else 1 / f
    return np.fft.irfft(spec, m)[:n]


def _room(nz: Nuisance, rng: np.random.Generator) -> np.ndarray:
    """Exponential-decay impulse response: a unit direct path plus a noise tail at DRR."""
    m = int(nz.rt60_s * SAMPLE_RATE)
    t = np.arange(1, m, dtype=np.float32) / SAMPLE_RATE
    tail = rng.standard_normal(m - 1, dtype=np.float32) * np.exp(-6.908 * t / nz.rt60_s)
    tail *= math.sqrt(10 ** (-nz.drr_db / 10) / float(np.sum(tail.astype(np.float64) ** 2)))
    return np.concatenate([np.ones(1, np.float32), tail])


def _filter_response(nz: Nuisance, f: np.ndarray) -> np.ndarray:
    """Zero-phase magnitude: Butterworth-shaped high-pass (4th order), low-pass (6th), shelf."""
    h = np.ones_like(f)
    f = np.maximum(f, 1.0)  # float32: (200 Hz / 1 Hz)^8 still fits
    if nz.highpass_hz > 0:
        h /= np.sqrt(1 + (nz.highpass_hz / f) ** 8)
    if nz.lowpass_hz > 0:
        h /= np.sqrt(1 + (f / nz.lowpass_hz) ** 12)
    if nz.shelf_db != 0:
        above = 1 / np.sqrt(1 + (SHELF_HZ / f) ** 4)
        h *= 1 + (10 ** (nz.shelf_db / 20) - 1) * above
    return h


def _channel(x: np.ndarray, nz: Nuisance, rng: np.random.Generator) -> np.ndarray:
    """Room, high-/low-pass and shelf (one FFT filter), then gain, noise and dither (float32)."""
    n = len(x)
    rir = _room(nz, rng) if nz.rt60_s > 0 else None
    nfft = _fast_len(n + (0 if rir is None else len(rir)))
    spec = np.fft.rfft(x, nfft)
    spec *= _filter_response(nz, np.fft.rfftfreq(nfft, 1 / SAMPLE_RATE).astype(np.float32))
    if rir is not None:
        spec *= np.fft.rfft(rir, nfft)
    y = np.fft.irfft(spec, nfft)[:n]
    y *= 10 ** (nz.gain_db / 20)
    if nz.noise != "none":
        noise = _shaped_noise(nz.noise, n, rng)
        level = _active_rms(y) / 10 ** (nz.snr_db / 20)
        noise *= level / (float(np.sqrt(np.mean(noise.astype(np.float64) ** 2))) + 1e-20)
        y += noise
    dither = rng.random(n, dtype=np.float32)  # rectangular dither, RMS = DITHER_DBFS
    dither -= 0.5
    dither *= math.sqrt(12) * 10 ** (DITHER_DBFS / 20)
    y += dither
    return y


def render_plan(plan: ClipPlan, data_dir: str | os.PathLike) -> np.ndarray:
    """Render one planned clip to int16 samples at 16 kHz.

    Must run in a process that has never synthesised (see :func:`render`); ``data_dir`` comes
    from :func:`wav2small.espeak.make_data_dir`.
    """
    import soxr

    from wav2small.espeak import NATIVE_RATE, Engine

    raw = Engine(data_dir).synthesize(
        plan.ssml, language=plan.language, variant=plan.variant, rate=plan.wpm,
        seed=plan.espeak_seed,
    )  # fmt: skip
    if raw.size == 0 or not np.any(raw):
        raise RuntimeError(f"eSpeak NG produced no audio for {plan.split} clip {plan.index}")
    x = _trim(soxr.resample(raw.astype(np.float32) / 32768, NATIVE_RATE, SAMPLE_RATE))
    nz, u = plan.nuisance, plan.controls
    phase = np.arange(len(x), dtype=np.float32) * np.float32(2 * np.pi * nz.tremor_hz / SAMPLE_RATE)
    tremolo = np.sin(phase + np.float32(nz.tremor_phase))
    tremolo *= TREMOR_DEPTH * 2.0 ** (0.9 * u[9])
    tremolo += 1
    x *= tremolo
    x *= 10 ** ((LEVEL_DBFS + EFFORT_DB_PER_U * u[3]) / 20) / _active_rms(x)
    lead, trail = (round(s * SAMPLE_RATE) for s in (nz.lead_s, nz.trail_s))
    x = np.concatenate([np.zeros(lead, np.float32), x, np.zeros(trail, np.float32)])
    if not plan.clean:
        x = _channel(x, nz, np.random.default_rng(nz.seed))
    np.clip(x, -1.0, 32767 / 32768, out=x)
    x *= 32768
    return np.round(x).astype(np.int16)


def samples_hash(samples: np.ndarray) -> str:
    """Hash of int16 samples (first 16 hex digits of SHA-256 of the little-endian bytes)."""
    return hashlib.sha256(np.asarray(samples, dtype="<i2").tobytes()).hexdigest()[:16]


def _wav_bytes(samples: np.ndarray) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SAMPLE_RATE)
        w.writeframes(np.asarray(samples, dtype="<i2").tobytes())
    return buf.getvalue()


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@dataclass(frozen=True)
class _ClipJob:
    """A clip of :func:`generate`: planned inside the worker, written to ``out_dir/split``."""

    split: str
    index: int
    seed: int
    clean: bool
    raters: RaterPanel
    out_dir: str


def _render_task(plan: ClipPlan, job: _ClipJob | None, data_dir: str) -> bytes:
    """Render one clip: raw int16 bytes, or (for a job) write its WAV and return its CSV row."""
    samples = render_plan(plan, data_dir)
    if job is None:
        return samples.tobytes()
    _atomic_write(Path(job.out_dir) / plan.split / plan.name, _wav_bytes(samples))
    meta = {"hash": samples_hash(samples), "samples": int(samples.size)}
    return json.dumps(_row(plan, meta)).encode()


# --- process pool: every clip in a fresh forked process -------------------------------------
def _read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 1 << 16):
        chunks.append(chunk)
    return b"".join(chunks)


def _in_fresh_process(task: tuple[ClipPlan | _ClipJob, str]) -> bytes:
    """Run :func:`_render_task` in a forked child of this (never-synthesising) pool worker."""
    job, data_dir = task
    if isinstance(job, ClipPlan):
        plan, job = job, None
    else:  # planned here: cheaper in this long-lived process than in the fresh child
        plan = plan_clip(job.split, job.index, seed=job.seed, clean=job.clean, raters=job.raters)
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: render, report, exit without running any cleanup of the parent
        gc.disable()  # short-lived: collection would only copy shared pages
        code = 0
        try:
            os.close(read_fd)
            payload = b"K" + _render_task(plan, job, data_dir)
        except BaseException:  # noqa: BLE001 - everything is reported to the parent
            payload, code = b"E" + traceback.format_exc().encode(), 1
        try:
            view = memoryview(payload)
            while view:
                view = view[os.write(write_fd, view) :]
        finally:
            os._exit(code)
    os.close(write_fd)
    try:
        data = _read_all(read_fd)
    finally:
        os.close(read_fd)
    _, status = os.waitpid(pid, 0)
    if status != 0 or not data.startswith(b"K"):
        detail = data[1:].decode(errors="replace") or f"exit status {status}"
        raise RuntimeError(f"rendering {plan.split} clip {plan.index} failed:\n{detail}")
    return data[1:]


def _warm_worker() -> None:
    """Pool initialiser: import and cache everything a clip needs, so forked children start
    fast.  The eSpeak library is only mapped (dlopen), never initialised: children stay fresh."""
    import soxr  # noqa: F401

    from wav2small import espeak

    espeak.preload()
    for split in SPLITS:  # fills the caches (voices, lexicons) and numpy's first-call state
        plan_clip(split, 0)
    gc.freeze()  # the children never scan (and so never copy) the objects made so far


def _pool_map(tasks: list, jobs: int, *, desc: str, progress: bool) -> Iterator[bytes]:
    """Results of :func:`_in_fresh_process` in task order, from ``jobs`` spawned workers."""
    import multiprocessing

    from tqdm import tqdm

    if not tasks:
        return
    ctx = multiprocessing.get_context("spawn")  # light workers: numpy only; they never synthesise
    with ctx.Pool(min(jobs, len(tasks)), initializer=_warm_worker) as pool:
        results = pool.imap(_in_fresh_process, tasks, chunksize=1)
        yield from tqdm(results, total=len(tasks), desc=desc, unit="clip", disable=not progress)


def _check_jobs(jobs: int) -> None:
    if os.name != "posix":
        raise RuntimeError("the corpus generator needs os.fork (Linux or macOS)")
    if jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}")


def render(plans: Iterable[ClipPlan], *, jobs: int = 1, progress: bool = False) -> list[np.ndarray]:
    """Render planned clips to int16 arrays (16 kHz), each in a fresh process.

    Args:
        plans: from :func:`plan_clip`.
        jobs: worker processes.
        progress: show a progress bar.
    """
    from wav2small.espeak import make_data_dir

    _check_jobs(jobs)
    plans = list(plans)
    with tempfile.TemporaryDirectory(prefix="w2s-espeak-") as tmp:
        data_dir = str(make_data_dir(tmp))
        tasks = [(p, data_dir) for p in plans]
        return [
            np.frombuffer(b, dtype=np.int16).copy()
            for b in _pool_map(tasks, jobs, desc="synth", progress=progress)
        ]


# --- files ------------------------------------------------------------------------------------
def _wav_meta(path: Path) -> dict | None:
    """Hash and length of a complete 16 kHz mono int16 WAV written by us, else None."""
    try:
        with wave.open(str(path), "rb") as w:
            if (w.getnchannels(), w.getsampwidth(), w.getframerate()) != (1, 2, SAMPLE_RATE):
                return None
            n = w.getnframes()
            frames = w.readframes(n)
    except (OSError, EOFError, wave.Error):
        return None
    if n == 0 or len(frames) != 2 * n:
        return None
    return {"hash": samples_hash(np.frombuffer(frames, dtype="<i2")), "samples": n}


def _previous_hashes(csv_path: Path) -> dict[str, str]:
    try:
        with csv_path.open(newline="", encoding="utf-8") as f:
            return {row["file"]: row["hash"] for row in csv.DictReader(f)}
    except (OSError, KeyError, csv.Error):
        return {}


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


def _write_csv(path: Path, rows: list[dict]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    _atomic_write(path, buf.getvalue().encode("utf-8"))


def _prepare_dir(wav_dir: Path, split: str, settings: dict) -> bool:
    """Create the clip folder; True if existing clips were made with the same settings."""
    wav_dir.mkdir(parents=True, exist_ok=True)
    settings_path = wav_dir / ".settings.json"
    try:
        same = json.loads(settings_path.read_text()) == settings
    except (OSError, ValueError):
        same = False
    if not same:  # clips of other settings must not be mistaken for finished ones later
        for stale in wav_dir.glob(f"{split}_[0-9][0-9][0-9][0-9][0-9][0-9].wav"):
            stale.unlink()
        _atomic_write(settings_path, json.dumps(settings, sort_keys=True).encode())
    return same


def generate(
    split: str,
    n: int,
    out: str | os.PathLike,
    *,
    seed: int = 0,
    jobs: int = 1,
    raters: int = DEFAULT_RATERS,
    rater_bias_sd: float = DEFAULT_RATER_BIAS_SD,
    rater_noise_sd: float = DEFAULT_RATER_NOISE_SD,
    clean: bool = False,
    progress: bool = True,
) -> Path:
    """Generate clips ``0 .. n-1`` of a split as WAV files plus a CSV of labels and metadata.

    Layout: ``out/<split>/<split>_000000.wav`` ... and ``out/<split>.csv`` (``file`` is relative
    to ``out``).  Resumable: valid clips already on disk (same seed, split and generator
    version; hash equal to the previous CSV's when there is one) are kept; new files are
    written under a temporary name and renamed, the CSV last.  The same seed gives identical
    files whatever ``jobs``.

    Args:
        split: one of :data:`SPLITS`.
        n: number of clips (>= 1).
        out: output folder.
        seed: corpus seed.
        jobs: worker processes.
        raters: simulated raters per clip; 0 publishes the true labels.
        rater_bias_sd: sd of each rater's bias.
        rater_noise_sd: sd of each rating's noise.
        clean: no channel nuisance (see :func:`plan_clip`).
        progress: show a progress bar.

    Returns:
        Path of the CSV.
    """
    from wav2small.espeak import make_data_dir

    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose from {SPLITS}")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    _check_jobs(jobs)
    panel = RaterPanel(raters, rater_bias_sd, rater_noise_sd)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"{out}: --out must be a folder")
    wav_dir, csv_path = out / split, out / f"{split}.csv"
    settings = {"generator": GENERATOR_VERSION, "split": split, "seed": int(seed), "clean": clean}
    reuse = _prepare_dir(wav_dir, split, settings)
    previous = _previous_hashes(csv_path) if reuse else {}

    rows: dict[int, dict] = {}
    for i in range(n):  # resume: keep complete clips whose hash matches the previous CSV's
        name = f"{split}/{split}_{i:06d}.wav"
        meta = _wav_meta(out / name) if reuse else None
        if meta and previous.get(name, meta["hash"]) == meta["hash"]:
            rows[i] = _row(plan_clip(split, i, seed=seed, clean=clean, raters=panel), meta)
    todo = [i for i in range(n) if i not in rows]
    jobs_todo = [_ClipJob(split, i, int(seed), clean, panel, str(out)) for i in todo]
    with tempfile.TemporaryDirectory(prefix="w2s-espeak-") as tmp:
        data_dir = str(make_data_dir(tmp))
        tasks = [(job, data_dir) for job in jobs_todo]
        results = _pool_map(tasks, jobs, desc=f"synth {split}", progress=progress)
        for job, result in zip(jobs_todo, results, strict=True):
            rows[job.index] = json.loads(result)
    _write_csv(csv_path, [rows[i] for i in range(n)])
    return csv_path


# --- analysis: simple acoustic correlates (tests, learnability benchmark) ---------------------
def _frames(x: np.ndarray, frame: int, hop: int) -> np.ndarray:
    if len(x) < frame:
        x = np.pad(x, (0, frame - len(x)))
    return np.lib.stride_tricks.sliding_window_view(x, frame)[::hop]


def f0_track(x: np.ndarray, sr: int = SAMPLE_RATE) -> tuple[np.ndarray, np.ndarray]:
    """Autocorrelation F0 track (40 ms frames, 10 ms hop, 60-450 Hz).

    Returns:
        ``(f0, strength)`` per frame: F0 in Hz (NaN when unvoiced) and the normalised
        autocorrelation peak (a periodicity / harmonicity measure).
    """
    x = np.asarray(x, dtype=np.float64)
    frame, hop = int(0.04 * sr), int(0.01 * sr)
    fr = _frames(x, frame, hop)
    fr = fr - fr.mean(axis=1, keepdims=True)
    win = np.hanning(frame)
    nfft = 1 << int(math.ceil(math.log2(2 * frame)))
    ac = np.fft.irfft(np.abs(np.fft.rfft(fr * win, nfft)) ** 2, nfft)[:, :frame]
    wac = np.fft.irfft(np.abs(np.fft.rfft(win, nfft)) ** 2, nfft)[:frame]
    r = ac / (ac[:, :1] + 1e-20) / (wac / wac[0])
    lo, hi = int(sr / 450), int(sr / 60)
    seg = r[:, lo : hi + 1]
    is_peak = (seg[:, 1:-1] > seg[:, :-2]) & (seg[:, 1:-1] >= seg[:, 2:])
    good = is_peak & (seg[:, 1:-1] >= 0.85 * seg.max(axis=1, keepdims=True))
    k = np.argmax(good, axis=1) + 1
    rows = np.arange(len(seg))
    a, b, c = seg[rows, k - 1], seg[rows, k], seg[rows, k + 1]
    shift = np.clip(0.5 * (a - c) / (a - 2 * b + c - 1e-12), -0.5, 0.5)
    f0 = sr / (lo + k + shift)
    power = np.mean(fr**2, axis=1) + 1e-20
    voiced = good.any(axis=1) & (b > 0.5) & (power > power.max() * 10 ** (-35 / 10))
    return np.where(voiced, f0, np.nan), np.where(voiced, b, 0.0)


def _f0_measures(x: np.ndarray, sr: int) -> dict[str, float]:
    f0, strength = f0_track(x, sr)
    voiced = ~np.isnan(f0)
    out = {"voiced_frac": float(voiced.mean())}
    if voiced.sum() < 3:
        return out | {"f0_median": math.nan, "f0_iqr_st": 0.0, "f0_slope": 0.0, "harmonicity": 0.0}
    st = 12 * np.log2(f0[voiced] / np.median(f0[voiced]))
    t = np.flatnonzero(voiced) * 0.01
    keep = np.abs(st) < 12  # drop octave errors
    slope = np.polyfit(t[keep], st[keep], 1)[0] if keep.sum() >= 3 else 0.0
    q75, q25 = np.percentile(st, [75, 25])
    return out | {
        "f0_median": float(np.median(f0[voiced])),
        "f0_iqr_st": float(q75 - q25),
        "f0_slope": float(slope),
        "harmonicity": float(strength[voiced].mean()),
    }


def _spectral_measures(x: np.ndarray, sr: int) -> dict[str, float]:
    spec = np.abs(np.fft.rfft(_frames(x, 512, 256) * np.hanning(512), axis=1)) ** 2
    freqs = np.fft.rfftfreq(512, 1 / sr)
    total = spec.sum(axis=1) + 1e-20
    loud = total > total.max() * 10 ** (-35 / 10)
    high, low = spec[loud][:, freqs >= 1000].sum(), spec[loud][:, freqs < 1000].sum()
    signs = np.signbit(x[np.abs(x) > 1e-4])
    return {
        "tilt_db": float(10 * np.log10((high + 1e-20) / (low + 1e-20))),
        "centroid_hz": float(np.mean((spec[loud] @ freqs) / total[loud])),
        "zcr": float(np.mean(signs[1:] != signs[:-1])) if signs.size > 1 else 0.0,
    }


def _envelope_measures(db: np.ndarray, span: slice, span_s: float) -> dict[str, float]:
    """Syllable rate (peaks of the smoothed 10 ms energy envelope) and 4-7 Hz modulation."""
    env = np.convolve(db, np.ones(5) / 5, mode="same")
    is_peak = (env[1:-1] > env[:-2]) & (env[1:-1] >= env[2:]) & (env[1:-1] > db.max() - 25)
    peaks = np.flatnonzero(is_peak)
    kept = [q for i, q in enumerate(peaks) if i == 0 or q - peaks[i - 1] >= 8]
    amp = 10 ** (db[span] / 20)
    mod = np.abs(np.fft.rfft(amp - amp.mean())) ** 2
    mf = np.fft.rfftfreq(len(amp), 0.01)
    share = mod[(mf >= 4) & (mf <= 7)].sum() / (mod[(mf >= 1) & (mf <= 20)].sum() + 1e-20)
    return {"syllable_rate": len(kept) / max(span_s, 1e-3), "am_4_7hz": float(share)}


def acoustic_correlates(x: np.ndarray, sr: int = SAMPLE_RATE) -> dict[str, float]:
    """Utterance-level acoustic measures of a clip (int16, or float in [-1, 1]).

    Keys: ``rms_db`` (active-speech level, dBFS), ``level_sd_db``, ``f0_median`` (Hz),
    ``f0_iqr_st``, ``f0_slope`` (semitones/s over the utterance), ``voiced_frac``,
    ``harmonicity`` (mean autocorrelation peak of voiced frames), ``syllable_rate``
    (energy peaks per second of speech), ``silence_frac`` (pauses inside the speech span),
    ``speech_s`` (first to last active frame, seconds), ``tilt_db`` (energy above 1 kHz minus
    below, active frames), ``centroid_hz``, ``zcr``, ``am_4_7hz`` (share of the energy
    envelope's modulation at 4-7 Hz) and ``duration``.  Used by the tests and the learnability
    benchmark; a diagnostic, not a feature extractor for models.
    """
    arr = np.asarray(x)
    x = arr.astype(np.float64) / (32768.0 if arr.dtype.kind in "iu" else 1.0)
    hop = sr // 100
    p = _frame_power(x, hop)
    db = 10 * np.log10(p)
    active = db > db.max() - 35
    idx = np.flatnonzero(active)
    span = slice(idx[0], idx[-1] + 1)
    span_s = (idx[-1] + 1 - idx[0]) * hop / sr
    out: dict[str, float] = {
        "rms_db": float(10 * np.log10(p[active].mean())),
        "level_sd_db": float(np.std(db[active])),
        "silence_frac": float(1.0 - active[span].mean()),
        "speech_s": span_s,
        "duration": len(x) / sr,
    }
    out.update(_f0_measures(x, sr))
    out.update(_spectral_measures(x, sr))
    out.update(_envelope_measures(db, span, span_s))
    return out
