"""The way in and out: audio extensions, folder listing, manifests, atomic writes, locks, reports.

Every command reads its inputs and writes its outputs through this module, so they all agree:

* :data:`AUDIO_EXTENSIONS` — the file endings picked up from folders (formats libsndfile reads);
* :func:`list_audio` — a folder's audio files, recursively, sorted; :func:`expand_paths` — files
  and folders given on a command line, in order;
* :func:`read_manifest` — a CSV manifest with a ``file`` column. **The path rule**: a relative
  ``file`` is resolved against the folder of the manifest (never the working directory), an
  absolute one is used as is. The same CSV therefore names the same audio in every command, run
  from any folder;
* :func:`atomic_write` — write to a unique temporary name in the destination folder, then
  ``os.replace`` (a crash or a full disk leaves the old file or nothing, never half a file; two
  writers never share a temporary name);
* :func:`output_lock` — an advisory lock (``fcntl.flock`` on ``<out>.lock``) held by one writer of
  an output at a time; a second writer fails at once with :class:`LockedError`;
* :func:`write_skipped` — the ``<out stem>.skipped.csv`` report of inputs a batch job skipped.

Errors derive from :class:`wav2small.errors.UserError` (re-exported here): the message names the
file and the problem, and the command line prints it as one line with exit code 2.

Only the standard library is imported at module level (pandas when a table is read or written).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from wav2small.errors import UserError

if TYPE_CHECKING:
    import pandas as pd

logger = logging.getLogger(__name__)

#: File endings picked up when a folder is listed: the containers libsndfile (≥ 1.1, as shipped
#: with the soundfile wheels) reads — WAV/WAVEX/RF64/W64, FLAC, Ogg (Vorbis, Opus), MP3, AIFF,
#: AU and CAF. A file given by name is read whatever its ending.
AUDIO_EXTENSIONS = (
    ".wav",
    ".flac",
    ".ogg",
    ".oga",
    ".opus",
    ".mp3",
    ".aif",
    ".aiff",
    ".aifc",
    ".au",
    ".snd",
    ".caf",
    ".w64",
    ".rf64",
)
#: libsndfile format (``soundfile.available_formats()``) of each extension.
EXTENSION_FORMATS = {
    ".wav": "WAV",
    ".flac": "FLAC",
    ".ogg": "OGG",
    ".oga": "OGG",
    ".opus": "OGG",
    ".mp3": "MP3",
    ".aif": "AIFF",
    ".aiff": "AIFF",
    ".aifc": "AIFF",
    ".au": "AU",
    ".snd": "AU",
    ".caf": "CAF",
    ".w64": "W64",
    ".rf64": "RF64",
}
#: Suffix of the advisory lock file next to an output.
LOCK_SUFFIX = ".lock"


# --- errors -----------------------------------------------------------------------------------
# UserError (wav2small.errors; a ValueError) is the base: the CLI prints its message as one line
# ``wav2small <command>: error: <message>`` and exits with code 2.
class InputError(UserError):
    """A bad input that is not audio: a manifest, a folder without audio, an option value."""


class MissingInputError(InputError, FileNotFoundError):
    """A file or folder the user named does not exist."""


class LockedError(UserError):
    """Another process is writing the same output."""


class ResumeError(UserError, ValueError):
    """A resumed job's configuration (teacher, model, settings) differs from its start."""


# --- folders ----------------------------------------------------------------------------------
def is_audio(path: str | os.PathLike) -> bool:
    """Whether a file name ends in one of :data:`AUDIO_EXTENSIONS` (case-insensitive)."""
    return Path(path).suffix.lower() in AUDIO_EXTENSIONS


def list_audio(folder: str | os.PathLike) -> list[Path]:
    """Audio files of a folder and its subfolders, sorted by path.

    Hidden files and folders (names starting with ``.``) are left out.

    Raises:
        InputError: ``folder`` is not a folder, or holds no audio file.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise MissingInputError(f"{folder}: no such folder")
    files = sorted(
        p
        for p in folder.rglob("*")
        if is_audio(p)
        and p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )
    if not files:
        raise InputError(f"{folder}: no audio files ({', '.join(AUDIO_EXTENSIONS)}) found")
    return files


def expand_paths(paths: Iterable[str | os.PathLike]) -> list[str]:
    """Files and folders → files, in the given order (folders listed by :func:`list_audio`).

    A path that is not a folder is returned as given (missing files are reported when read).
    """
    files: list[str] = []
    for p in paths:
        files += [str(f) for f in list_audio(p)] if Path(p).is_dir() else [os.fspath(p)]
    return files


# --- manifests --------------------------------------------------------------------------------
def resolve(file: str, manifest: str | os.PathLike) -> str:
    """The path rule: ``file`` relative to the manifest's folder, or as is when absolute.

    Never looks at the working directory or at whether the file exists.
    """
    file = os.path.expanduser(str(file))
    return file if os.path.isabs(file) else str(Path(manifest).parent / file)


def read_manifest(path: str | os.PathLike, *, required: Sequence[str] = ("file",)) -> pd.DataFrame:
    """Read a CSV manifest: its rows, plus a ``path`` column of the files to read.

    **Path rule**: relative ``file`` entries are resolved against the folder that holds the CSV
    (not the working directory); absolute entries are used as is. ``file`` keeps the text of the
    CSV (what tables report), ``path`` (inserted after it) is what is opened.

    Args:
        path: the CSV file.
        required: columns that must be present (``file`` always is).

    Returns:
        A DataFrame with the CSV's columns, ``file`` as str and ``path`` inserted after it.

    Raises:
        InputError: no such file, not a CSV, missing columns, no rows, or empty ``file`` cells.
    """
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"{path}: no such manifest file")
    try:
        table = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        reason = " ".join(str(e).split())
        raise InputError(f"{path}: not a readable CSV manifest ({reason})") from e
    missing = [c for c in dict.fromkeys(("file", *required)) if c not in table.columns]
    if missing:
        need = (
            "a manifest needs a 'file' column"
            if "file" in missing
            else f"missing column(s) {missing}"
        )
        raise InputError(f"{path}: {need}; it has {list(table.columns)}")
    if table.empty:
        raise InputError(f"{path}: the manifest has no rows")
    empty = table["file"].isna() | (table["file"].astype(str).str.strip() == "")
    if empty.any():
        row = int(empty.to_numpy().nonzero()[0][0])
        raise InputError(f"{path}: line {row + 2} has an empty 'file'")
    table["file"] = table["file"].astype(str)
    table = table.drop(columns=["path"], errors="ignore")
    table.insert(
        table.columns.get_loc("file") + 1, "path", [resolve(f, path) for f in table["file"]]
    )
    return table


# --- atomic writes ----------------------------------------------------------------------------
@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, *, suffix: str | None = None) -> Iterator[Path]:
    """Yield a unique temporary path next to ``path``; on success rename it to ``path``.

    The temporary file lives in the destination's folder (so the rename is atomic) and has a
    unique name (``.<name>.<random>.tmp<suffix>``), so concurrent writers never clobber each
    other's temporary files. On any error the temporary file is removed and ``path`` is left as
    it was; an ``OSError`` that names no file (a full disk) is re-raised naming ``path``. The
    file gets the usual permissions (``0o666`` minus the umask). The temporary name
    ends in ``suffix`` (default: the suffix of ``path``) for writers that pick the format from it.

    Example::

        with atomic_write("table.csv") as tmp:
            frame.to_csv(tmp, index=False)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(
        prefix=f".{path.name}.",
        suffix=".tmp" + (path.suffix if suffix is None else suffix),
        dir=path.parent,
    )
    os.close(fd)
    tmp = Path(name)
    try:
        try:
            yield tmp
        except OSError as e:  # a full disk names no file: name the output
            if e.filename is None and e.errno is not None:
                raise OSError(e.errno, e.strerror or str(e), os.fspath(path)) from e
            raise
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp (and safetensors) create owner-only files
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write text (UTF-8) atomically; see :func:`atomic_write`."""
    path = Path(path)
    with atomic_write(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write bytes atomically; see :func:`atomic_write`."""
    path = Path(path)
    with atomic_write(path) as tmp:
        tmp.write_bytes(data)
    return path


# --- locks ------------------------------------------------------------------------------------
def lock_path(out: str | os.PathLike) -> Path:
    """The lock file of an output: ``<out>.lock``."""
    out = Path(out)
    return out.with_name(out.name + LOCK_SUFFIX)


@contextlib.contextmanager
def output_lock(out: str | os.PathLike) -> Iterator[Path]:
    """Hold an exclusive advisory lock on ``out`` (``fcntl.flock`` on ``<out>.lock``).

    A second writer of the same output (another process, or another lock in this one) fails at
    once with :class:`LockedError` instead of waiting or interleaving. The lock dies with its
    process, so a killed writer never blocks the next run; the ``.lock`` file itself is left in
    place (removing it would race with a writer that just opened it). On systems without
    ``fcntl`` (Windows) no lock is taken.

    Raises:
        LockedError: another writer holds the lock.
    """
    path = lock_path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield path
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise
            raise LockedError(
                f"{out}: another wav2small process is writing this output (lock {path}); "
                "wait for it to finish or choose another --out"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        try:
            yield path
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


# --- skipped-file reports ---------------------------------------------------------------------
def skipped_path(out: str | os.PathLike) -> Path:
    """Where the inputs skipped while writing ``out`` are listed: ``<out stem>.skipped.csv``."""
    out = Path(out)
    return out.with_name(out.stem + ".skipped.csv")


def write_skipped(out: str | os.PathLike, skipped: Iterable[tuple[str, str]]) -> Path | None:
    """Write (file, reason) rows to :func:`skipped_path` of ``out``, or remove a stale report.

    Returns:
        The report's path, or None when nothing was skipped.
    """
    import pandas as pd

    path, rows = skipped_path(out), list(skipped)
    if not rows:
        path.unlink(missing_ok=True)
        return None
    with atomic_write(path) as tmp:
        pd.DataFrame(rows, columns=["file", "reason"]).to_csv(tmp, index=False)
    return path


def check_any_good(n_good: int, skipped: Sequence[tuple[str, str]]) -> None:
    """Raise when a job that skips bad inputs (``--on-error skip``) has nothing good left.

    Raises:
        InputError: ``n_good == 0`` and something was skipped (the message names the first).
    """
    if n_good == 0 and skipped:
        file, reason = skipped[0]
        first = reason if str(reason).startswith(str(file)) else f"{file}: {reason}"
        raise InputError(
            f"{first} (and every other input: {len(skipped)} skipped, nothing to write)"
            if len(skipped) > 1
            else f"{first} (the only input was skipped, nothing to write)"
        )


__all__ = [
    "AUDIO_EXTENSIONS",
    "InputError",
    "LockedError",
    "MissingInputError",
    "ResumeError",
    "UserError",
    "atomic_write",
    "check_any_good",
    "expand_paths",
    "is_audio",
    "list_audio",
    "lock_path",
    "output_lock",
    "read_manifest",
    "resolve",
    "skipped_path",
    "write_bytes",
    "write_skipped",
    "write_text",
]
