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

__all__ = ["LABELS", "SAMPLE_RATE", "__version__", "create_model", "list_models"]


def create_model(name: str, **kwargs):
    """Build a student model by preset name (see :func:`list_models`)."""
    from wav2small.models import create_model as _create

    return _create(name, **kwargs)


def list_models() -> list[str]:
    """Names accepted by :func:`create_model`."""
    from wav2small.models import list_models as _list

    return _list()
