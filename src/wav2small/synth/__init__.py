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

Package layout (one concern per module, each importing only earlier ones): ``constants`` ->
``labels`` (label model, raters, categorical view) -> ``voices`` (speakers) -> ``texts`` ->
``plan`` (clip plans) -> ``render`` (one clip, runs in the worker) -> ``pool`` (fresh processes,
:func:`render`) -> ``corpus`` (files, :func:`generate`) -> ``analysis``; ``espeak`` is the
ctypes binding to the (GPL, optional) eSpeak NG engine.
"""

from __future__ import annotations

from wav2small.synth.analysis import (
    acoustic_correlates,
    f0_track,
)
from wav2small.synth.constants import (
    CLEAN_SILENCE_S,
    CONTOUR_PCT,
    CONTROL_CLIP,
    CONTROLS,
    CSV_COLUMNS,
    DEFAULT_RATER_BIAS_SD,
    DEFAULT_RATER_NOISE_SD,
    DEFAULT_RATERS,
    DITHER_DBFS,
    DRR_DB,
    EFFORT_DB_PER_U,
    EMOTION_CLASSES,
    ESPEAK_MEDIAN_POS,
    F0_ST_PER_U,
    FEMALE_VOICES,
    GAIN_DB,
    GENERATOR_VERSION,
    HELD_OUT_EVERY,
    HESITATION_FACTOR,
    HIGHPASS_HZ,
    LANGUAGE_WEIGHTS,
    LANGUAGES,
    LEVEL_DBFS,
    LOWPASS_HZ,
    LOWPASS_P,
    MALE_VOICES,
    NEUTRAL_RADIUS,
    NOISE_TYPES,
    OOD_LANGUAGES,
    PAUSE_MS,
    PRIMARY_LANGUAGE_P,
    ROOM_P,
    RT60_S,
    SHELF_DB,
    SHELF_HZ,
    SILENCE_S,
    SMILE_PCT,
    SNR_DB,
    SPEAKER_BREATH,
    SPEAKER_F0,
    SPEAKER_FLUTTER,
    SPEAKER_RANGES,
    SPEAKER_ROUGH,
    SPEAKER_SPAN_ST,
    SPEAKER_TILT_DB,
    SPEAKER_TRACT,
    SPEAKER_WPM,
    SPLITS,
    SYLLABLES_PER_WORD_AT_WPM,
    TARGET_SPEECH_S,
    TEXT_HALF,
    TREMOR_DEPTH,
    TREMOR_HZ,
    WEIGHTS,
)
from wav2small.synth.corpus import (
    generate,
)
from wav2small.synth.labels import (
    RaterPanel,
    emotion_class,
    labels_from_controls,
    rater_biases,
    sample_controls,
    simulate_raters,
)
from wav2small.synth.plan import (
    ClipPlan,
    Nuisance,
    plan_clip,
)
from wav2small.synth.pool import (
    render,
)
from wav2small.synth.render import (
    render_plan,
    samples_hash,
)
from wav2small.synth.texts import (
    FUNCTION_WORDS,
    vocabulary,
)
from wav2small.synth.voices import (
    Speaker,
    speaker,
    split_of_speaker,
    voice_formants,
    voice_sets,
)

__all__ = [
    "CLEAN_SILENCE_S",
    "CONTOUR_PCT",
    "CONTROLS",
    "CONTROL_CLIP",
    "CSV_COLUMNS",
    "ClipPlan",
    "DEFAULT_RATERS",
    "DEFAULT_RATER_BIAS_SD",
    "DEFAULT_RATER_NOISE_SD",
    "DITHER_DBFS",
    "DRR_DB",
    "EFFORT_DB_PER_U",
    "EMOTION_CLASSES",
    "ESPEAK_MEDIAN_POS",
    "F0_ST_PER_U",
    "FEMALE_VOICES",
    "FUNCTION_WORDS",
    "GAIN_DB",
    "GENERATOR_VERSION",
    "HELD_OUT_EVERY",
    "HESITATION_FACTOR",
    "HIGHPASS_HZ",
    "LANGUAGES",
    "LANGUAGE_WEIGHTS",
    "LEVEL_DBFS",
    "LOWPASS_HZ",
    "LOWPASS_P",
    "MALE_VOICES",
    "NEUTRAL_RADIUS",
    "NOISE_TYPES",
    "Nuisance",
    "OOD_LANGUAGES",
    "PAUSE_MS",
    "PRIMARY_LANGUAGE_P",
    "ROOM_P",
    "RT60_S",
    "RaterPanel",
    "SHELF_DB",
    "SHELF_HZ",
    "SILENCE_S",
    "SMILE_PCT",
    "SNR_DB",
    "SPEAKER_BREATH",
    "SPEAKER_F0",
    "SPEAKER_FLUTTER",
    "SPEAKER_RANGES",
    "SPEAKER_ROUGH",
    "SPEAKER_SPAN_ST",
    "SPEAKER_TILT_DB",
    "SPEAKER_TRACT",
    "SPEAKER_WPM",
    "SPLITS",
    "SYLLABLES_PER_WORD_AT_WPM",
    "Speaker",
    "TARGET_SPEECH_S",
    "TEXT_HALF",
    "TREMOR_DEPTH",
    "TREMOR_HZ",
    "WEIGHTS",
    "acoustic_correlates",
    "emotion_class",
    "f0_track",
    "generate",
    "labels_from_controls",
    "plan_clip",
    "rater_biases",
    "render",
    "render_plan",
    "sample_controls",
    "samples_hash",
    "simulate_raters",
    "speaker",
    "split_of_speaker",
    "vocabulary",
    "voice_formants",
    "voice_sets",
]
