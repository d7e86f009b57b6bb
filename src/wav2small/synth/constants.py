"""Corpus constants: splits, controls and label weights, voices, nuisance ranges (SYNTH.md)."""

from __future__ import annotations

import numpy as np

from wav2small import LABELS
from wav2small.config import SynthOptions

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
DEFAULT_RATERS = SynthOptions.raters
DEFAULT_RATER_BIAS_SD = SynthOptions.rater_bias
DEFAULT_RATER_NOISE_SD = SynthOptions.rater_noise

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
