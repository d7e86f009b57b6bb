"""A minimal ctypes binding to eSpeak NG, used only by the corpus generator :mod:`wav2small.synth`.

eSpeak NG is GPL-3.0 and ships in the optional ``espeakng-loader`` wheel (``pip install
'wav2small[synth]'``); nothing else in wav2small loads it.  The library keeps hidden
wave-generator state between utterances and seeds its breath noise per process, so an
:class:`Engine` must be created in a process that has never synthesised before, and used for
exactly one utterance (see :func:`wav2small.synth.render`).

Voice variants are written as files into a private copy of ``espeak-ng-data`` (made of symbolic
links, see :func:`make_data_dir`), never into the installed package.
"""

from __future__ import annotations

import ctypes
import os
import shutil
from pathlib import Path

import numpy as np

#: eSpeak NG's native output rate.
NATIVE_RATE = 22050

# espeak_ng_OUTPUT_MODE, espeak_PARAMETER, espeak_POSITION_TYPE and synthesis flags (speak_lib.h).
_OUTPUT_SYNCHRONOUS = 0x0001
_PARAM_RATE = 1
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_SSML = 0x10
_BUFFER_MS = 1000
_MAX_DATA_PATH = 150  # eSpeak NG copies the data path into a fixed 160-byte buffer

#: Project language code -> language file inside ``espeak-ng-data/lang``.  The private data dir
#: exposes each under its lowercase code so that eSpeak finds it without scanning all voices.
LANGUAGE_FILES = {
    "en-us": "gmw/en-US",
    "en": "gmw/en",
    "de": "gmw/de",
    "es": "roa/es",
    "fr": "roa/fr",
    "it": "roa/it",
    "nl": "gmw/nl",
    "pt": "roa/pt",
    "pl": "zlw/pl",
    "sv": "gmq/sv",
}

_SYNTH_CALLBACK = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p
)
_used_in_this_process = False
_library: ctypes.CDLL | None = None


class ESpeakError(RuntimeError):
    """eSpeak NG is missing or refused a request."""


def library_paths() -> tuple[Path, Path]:
    """Paths of ``libespeak-ng.so`` and ``espeak-ng-data`` from the ``espeakng-loader`` wheel.

    Raises:
        ESpeakError: the wheel is not installed or incomplete.
    """
    try:
        import espeakng_loader
    except ImportError as err:
        raise ESpeakError(
            "the corpus generator needs eSpeak NG: pip install 'wav2small[synth]' "
            "(the espeakng-loader wheel, GPL-3.0)"
        ) from err
    lib, data = Path(espeakng_loader.get_library_path()), Path(espeakng_loader.get_data_path())
    if not lib.is_file():
        raise ESpeakError(f"{lib}: eSpeak NG library missing from the espeakng-loader wheel")
    return lib, data


def preload() -> ctypes.CDLL:
    """Map the eSpeak NG library into this process without initialising it (idempotent).

    A process that preloads and then forks gives every child a fresh, never-used library.
    """
    global _library
    if _library is None:
        lib = ctypes.CDLL(str(library_paths()[0]))
        lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
        _library = lib
    return _library


def variant_dir() -> Path:
    """The wheel's folder of voice variants (``espeak-ng-data/voices/!v``)."""
    return library_paths()[1] / "voices" / "!v"


def make_data_dir(root: str | os.PathLike) -> Path:
    """Build a private ``espeak-ng-data`` under ``root`` (symbolic links to the wheel's files).

    It has a writable ``voices/!v`` for per-clip variant files and the language files of
    :data:`LANGUAGE_FILES` under ``voices/<code>``.

    Returns:
        The new data directory (pass it to :class:`Engine`).
    """
    _, data = library_paths()
    out = Path(root).resolve() / "espeak-ng-data"
    if len(str(out)) > _MAX_DATA_PATH:
        raise ESpeakError(
            f"{out}: path too long for eSpeak NG (max {_MAX_DATA_PATH} chars); set TMPDIR"
        )
    (out / "voices" / "!v").mkdir(parents=True, exist_ok=True)
    for entry in data.iterdir():
        if entry.name != "voices" and not (out / entry.name).exists():
            os.symlink(entry, out / entry.name)
    for code, rel in LANGUAGE_FILES.items():
        shutil.copyfile(data / "lang" / rel, out / "voices" / code)
    return out


class Engine:
    """One eSpeak NG instance for one utterance, in a process that has not synthesised before.

    Args:
        data_dir: a private data directory from :func:`make_data_dir`.

    Raises:
        ESpeakError: this process already synthesised, or eSpeak failed to start.
    """

    def __init__(self, data_dir: str | os.PathLike) -> None:
        if _used_in_this_process:
            raise ESpeakError(
                "eSpeak NG already synthesised in this process; render each clip in a fresh "
                "process (wav2small.synth.render) or output is not reproducible"
            )
        self._data_dir = Path(data_dir)
        self._lib = preload()
        self._lib.espeak_ng_InitializePath(str(self._data_dir).encode())
        self._check(self._lib.espeak_ng_Initialize(None), "initialise")
        self._check(
            self._lib.espeak_ng_InitializeOutput(_OUTPUT_SYNCHRONOUS, _BUFFER_MS, None), "output"
        )
        self._chunks: list[bytes] = []
        self._callback = _SYNTH_CALLBACK(self._collect)  # keep a reference while in use
        self._lib.espeak_SetSynthCallback(self._callback)

    def _collect(self, wav, n_samples: int, _events) -> int:
        if n_samples > 0:
            self._chunks.append(ctypes.string_at(wav, n_samples * 2))
        return 0

    @staticmethod
    def _check(status: int, what: str) -> None:
        if status != 0:
            raise ESpeakError(f"eSpeak NG failed to {what} (status 0x{status & 0xFFFFFFFF:x})")

    def synthesize(
        self, ssml: str, *, language: str, variant: str, rate: int, seed: int
    ) -> np.ndarray:
        """Speak an SSML document once.

        Args:
            ssml: a ``<speak>`` document.
            language: a key of :data:`LANGUAGE_FILES`.
            variant: text of an eSpeak voice-variant file (``formant``, ``pitch``, ``tone`` ...).
            rate: words per minute (eSpeak's ``espeakRATE``, 80-450).
            seed: seed of eSpeak's random generator (breath noise, flutter).

        Returns:
            int16 samples at :data:`NATIVE_RATE`.
        """
        global _used_in_this_process
        if language not in LANGUAGE_FILES:
            raise ESpeakError(f"unknown language {language!r}; known: {sorted(LANGUAGE_FILES)}")
        _used_in_this_process = True
        self._lib.espeak_ng_SetRandSeed(int(seed) & 0x7FFFFFFF)
        name = f"w2s{os.getpid()}"
        variant_path = self._data_dir / "voices" / "!v" / name
        variant_path.write_text(variant, encoding="ascii")
        try:
            self._check(
                self._lib.espeak_ng_SetVoiceByName(f"{language}+{name}".encode()), "set voice"
            )
        finally:
            variant_path.unlink()
        self._check(self._lib.espeak_ng_SetParameter(_PARAM_RATE, int(rate), 0), "set rate")
        text = ssml.encode("utf-8")
        self._chunks.clear()
        status = self._lib.espeak_ng_Synthesize(
            text, len(text) + 1, 0, _POS_CHARACTER, 0, _CHARS_UTF8 | _SSML, None, None
        )
        self._check(status, "synthesise")
        self._check(self._lib.espeak_ng_Synchronize(), "synchronise")
        return np.frombuffer(b"".join(self._chunks), dtype="<i2").copy()
