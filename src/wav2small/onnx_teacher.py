"""Former home of the ONNX teachers, kept for old imports: use :mod:`wav2small.teachers.onnx`."""

from wav2small.teachers.onnx import *  # noqa: F403
from wav2small.teachers.onnx import __all__  # noqa: F401
