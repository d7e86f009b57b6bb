"""wav2small: speech emotion recognition (arousal, dominance, valence) on small hardware.

Heavy dependencies (torch, transformers, timm) are imported lazily so that the ONNX runtime
path needs only numpy, onnxruntime, soundfile and soxr.
"""

from __future__ import annotations

__version__ = "0.1.0"

#: Output order of every model in this package; also stored in model metadata.
LABELS = ("arousal", "dominance", "valence")
#: Internal sample rate.
SAMPLE_RATE = 16000

__all__ = [
    "LABELS",
    "SAMPLE_RATE",
    "Predictor",
    "__version__",
    "create_model",
    "list_models",
    "load",
    "load_teacher",
]


def create_model(name: str, *, kind: str = "student", **kwargs):
    """Build a model by registered name (see :func:`list_models`); students by default.

    ``kind="teacher"`` loads a teacher by alias (as :func:`load_teacher`), ``kind="backbone"``
    builds a random early-exit backbone. The one registry is :mod:`wav2small.models`.
    """
    from wav2small.models import create_model as _create

    return _create(name, kind=kind, **kwargs)


def list_models(kind: str = "student") -> list[str]:
    """Names accepted by :func:`create_model` for a kind: student, teacher or backbone."""
    from wav2small.models import list_models as _list

    return _list(kind)


def load(model, **kwargs):
    """A :class:`wav2small.infer.Predictor` for an ONNX file, a checkpoint, a preset name, or a
    student folder / Hugging Face id written by ``wav2small export`` (:mod:`wav2small.hub`).

    ``.onnx`` files and student folders run on ONNX Runtime without importing torch (the int8
    model when the folder has one; ``variant="fp32"`` for fp32). Keyword arguments go to the
    Predictor (``backend``, ``threads``, ``max_seconds``, ...).

    Example:
        >>> import wav2small
        >>> wav2small.load("model.int8.onnx").predict("clips/")  # doctest: +SKIP
        >>> wav2small.load("org/wav2small-paper").predict("clips/")  # doctest: +SKIP
    """
    from wav2small.infer import load as _load

    return _load(model, **kwargs)


def load_teacher(name_or_path, **kwargs):
    """Load a teacher (needs torch): an alias (``dawn``, ``odyssey``, ``ensemble``, ``synth``),
    a local folder, a Hugging Face id, or ``ensemble:A+B``.

    Keyword arguments go to :func:`wav2small.teachers.load_teacher` (``device``,
    ``clip``). The teacher maps ``(wave, lengths)`` to (batch, 3) arousal, dominance, valence;
    :func:`wav2small.backends.teacher_predict` runs it on waveforms and
    :func:`wav2small.backends.teacher_predict_files` on audio files.

    Raises:
        wav2small.teachers.TeacherError: unknown name, missing or corrupt files (named).

    Example:
        >>> import wav2small
        >>> teacher = wav2small.load_teacher("synth")  # doctest: +SKIP
    """
    from wav2small.teachers import load_teacher as _load_teacher

    return _load_teacher(name_or_path, **kwargs)


def __getattr__(name: str):
    """Lazy access to ``wav2small.Predictor`` (imports pandas, never torch)."""
    if name == "Predictor":
        from wav2small.infer import Predictor as _Predictor

        return _Predictor
    raise AttributeError(f"module 'wav2small' has no attribute {name!r}")
