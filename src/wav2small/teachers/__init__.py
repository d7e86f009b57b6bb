"""Teachers: large A/D/V regressors used as annotators (SPEC §1.1) and a small synthetic-world one.

Every teacher is a :class:`Teacher` — a ``torch.nn.Module`` that maps a batch of 16 kHz float
waveforms ``(batch, samples)`` (plus optional ``lengths`` or a ``mask``) to ``(batch, 3)``
arousal, dominance, valence. Shared behaviour lives in the base class:

* **padding invariance** — each clip's output does not depend on the batch it sits in: the
  transformer teachers use attention masks (their feature extractors use per-frame layer norm),
  group-norm wav2vec2 variants run clip by clip, the synthetic teacher masks every layer;
* **long audio** — a clip longer than ``window_seconds`` (20 s) is cut into equal windows of at
  most that length whose outputs are averaged, so a 10-minute file never builds a 10-minute
  attention matrix; windows are run in sub-batches of at most ``max_batch_seconds`` of padded audio.

Checkpoint layouts (all read by :func:`load_teacher`, written by :func:`save_teacher`):

* **Dawn** — ``audeering/wav2vec2-large-robust-12-ft-emotion-msp-dim``: ``config.json``
  (architecture ``Wav2Vec2ForSpeechClassification``, id2label arousal/dominance/valence) and
  ``model.safetensors`` or ``pytorch_model.bin`` with keys ``wav2vec2.*``, ``classifier.dense.*``,
  ``classifier.out_proj.*``. The model card's code: per-utterance normalisation (Wav2Vec2Processor,
  ``(x − mean) / sqrt(var + 1e-7)``), ``Wav2Vec2Model``, mean of ``last_hidden_state`` over time,
  ``dense`` → tanh → ``out_proj``.
* **WavLM-Odyssey** — ``3loi/SER-Odyssey-Baseline-WavLM-Multi-Attributes``: ``config.json``
  with ``model_type`` "ser", ``ssl_type`` "microsoft/wavlm-large", ``hidden_size``,
  ``num_hidden_layers``, ``num_attention_heads``, ``classifier_hidden_layers``,
  ``classifier_dropout_prob``, ``num_classes``, ``mean``, ``std``, ``sampling_rate``; weights
  ``ssl_model.*`` (WavLM), ``pool_model.sap_linear.*``, ``pool_model.attention``,
  ``ser_model.fc.0.0.*`` (Linear), ``ser_model.fc.0.1.*`` (LayerNorm), ``ser_model.out.0.*``.
  Input ``(x − mean) / (std + 1e-6)``.
  Sources: the repository's ``config.json`` (commits 45e6e02 and e0676f5 on huggingface.co) and
  ``pipeline_utils.py``, whose pooling/head are the Odyssey 2024 challenge baseline's
  ``net/pooling.py`` (``AttentiveStatisticsPooling``) and ``net/ser.py`` (``EmotionRegression``)
  in github.com/msplabresearch/MSP-Podcast_Challenge; usage from the model card (``mean``/``std``
  from the config, an all-ones mask). The WavLM backbone config is not in the repository (it is
  ``microsoft/wavlm-large``'s); we carry those values in :data:`WAVLM_LARGE`. An optional
  ``ssl_config`` dict in ``config.json`` (our extension) overrides them, for small test models.
* **Ensemble** — ``ensemble:A+B``: the mean of the members' outputs (SPEC: the paper's teacher;
  equal weights are our reading), optionally clipped to [0, 1]. Saved as a folder with
  ``config.json`` (``model_type`` "wav2small-ensemble") and one sub-folder per member.
* **Synthetic-world teacher** — ``model_type`` "wav2small-synth-teacher": a log-mel CNN + GRU
  (see :class:`SynthTeacher`), trained here by ``wav2small train-teacher`` and shipped as the
  package asset ``teacher-synth`` (alias ``synth``).

Weights are read from safetensors, or from ``pytorch_model.bin`` with ``weights_only=True``
(never unpickled). Names that are not local folders are Hugging Face hub ids, resolved through
huggingface_hub's cache (``local_files_only`` when ``HF_HUB_OFFLINE`` is set or the hub cannot be
reached); when that fails the error names the id.

Modules: :mod:`~wav2small.teachers.base` (the :class:`Teacher` base class, constants, weights
I/O), :mod:`~wav2small.teachers.dawn`, :mod:`~wav2small.teachers.odyssey`,
:mod:`~wav2small.teachers.ensemble`, :mod:`~wav2small.teachers.synth`,
:mod:`~wav2small.teachers.resolve` (names → folders), :mod:`~wav2small.teachers.loader`
(:func:`load_teacher`, :func:`save_teacher`) and :mod:`~wav2small.teachers.onnx` (audonnx/ONNX
teachers on ONNX Runtime, no torch). Names are loaded lazily: ``wav2small.teachers.onnx`` stays
torch-free, every other name needs torch.
"""

from __future__ import annotations

import importlib
from typing import Any

#: Public name → the module that defines it (imported on first use).
_WHERE = {
    "teacher_embedding_dim": "wav2small.backends",
    "teacher_predict": "wav2small.backends",
    "teacher_predict_files": "wav2small.backends",
    "masked_mean": "wav2small.ops",
    "time_mask": "wav2small.ops",
    "ALIASES": "wav2small.teachers.base",
    "BIN_FILE": "wav2small.teachers.base",
    "CONFIG_FILE": "wav2small.teachers.base",
    "DAWN_ID": "wav2small.teachers.base",
    "DAWN_NORM_EPS": "wav2small.teachers.base",
    "ENSEMBLE_PREFIX": "wav2small.teachers.base",
    "MAX_BATCH_SECONDS": "wav2small.teachers.base",
    "ODYSSEY_ID": "wav2small.teachers.base",
    "ODYSSEY_STD_EPS": "wav2small.teachers.base",
    "ODYSSEY_VAR_FLOOR": "wav2small.teachers.base",
    "SAFETENSORS_FILE": "wav2small.teachers.base",
    "SYNTH_ASSET": "wav2small.teachers.base",
    "Teacher": "wav2small.teachers.base",
    "TeacherError": "wav2small.teachers.base",
    "WINDOW_SECONDS": "wav2small.teachers.base",
    "lengths_from": "wav2small.teachers.base",
    "load_weights": "wav2small.teachers.base",
    "pad_batch": "wav2small.teachers.base",
    "read_weights": "wav2small.teachers.base",
    "DAWN_ARCHITECTURE": "wav2small.teachers.dawn",
    "RegressionHead": "wav2small.teachers.dawn",
    "Wav2Vec2Teacher": "wav2small.teachers.dawn",
    "normalise_per_utterance": "wav2small.teachers.dawn",
    "EnsembleTeacher": "wav2small.teachers.ensemble",
    "load_teacher": "wav2small.teachers.loader",
    "save_teacher": "wav2small.teachers.loader",
    "teacher_kind": "wav2small.teachers.loader",
    "teacher_min_samples": "wav2small.teachers.loader",
    "AttentiveStatisticsPooling": "wav2small.teachers.odyssey",
    "EmotionRegression": "wav2small.teachers.odyssey",
    "WAVLM_LARGE": "wav2small.teachers.odyssey",
    "WavLMTeacher": "wav2small.teachers.odyssey",
    "wavlm_config": "wav2small.teachers.odyssey",
    "OnnxTeacher": "wav2small.teachers.onnx",
    "OnnxTeacherError": "wav2small.teachers.onnx",
    "export_dawn_onnx": "wav2small.teachers.onnx",
    "is_onnx_teacher": "wav2small.teachers.onnx",
    "resolve": "wav2small.teachers.resolve",
    "resolve_hub": "wav2small.teachers.resolve",
    "OCTAVE_COST": "wav2small.teachers.synth",
    "SYNTH_DEFAULTS": "wav2small.teachers.synth",
    "SynthTeacher": "wav2small.teachers.synth",
    "reverse_padded": "wav2small.teachers.synth",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_WHERE[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_WHERE))
