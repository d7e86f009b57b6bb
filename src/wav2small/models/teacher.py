"""Former home of the teachers, kept for old imports: use :mod:`wav2small.teachers`."""

from wav2small.teachers import *  # noqa: F403
from wav2small.teachers import __all__  # noqa: F401
