"""Former home of the eSpeak NG binding, kept for old imports: use :mod:`wav2small.synth.espeak`.

The alias is the same module object (the binding keeps state: the loaded library).
"""

import sys

from wav2small.synth import espeak as _espeak

sys.modules[__name__] = _espeak
